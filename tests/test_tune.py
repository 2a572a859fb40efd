"""`earmark tune` on real recordings: its thresholds separate the copies it made from the
pairs that must not match, the service reads the file it writes, and its report stands alone."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from earmark.service.cli import main
from earmark.service.config import FuzzyThresholds, load_settings
from earmark.service.ops.tune import choose_threshold, thresholds_for
from tests.audio_tools import FIXTURES, encode, fixture_bytes, read_pcm

RECORDINGS = ("recorded.wav", "weather.wav", "librivox_0890.flac", "librivox_0930.flac")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recordings")
    for name in RECORDINGS:
        shutil.copy(FIXTURES / name, folder / name)
    (folder / "notes.txt").write_text("not audio: skipped")
    return folder


@pytest.fixture(scope="module")
def tuned(recordings, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("tuned")
    result = CliRunner().invoke(main, ["tune", str(recordings), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_the_chosen_thresholds_separate_copies_from_what_must_not_match(tuned):
    out, output = tuned
    summary = json.loads((out / "summary.json").read_text())
    assert summary["false_accept_rate"] == 0.0 and summary["recall"] >= 0.9
    assert summary["positives"] == 4 * 7 and summary["negatives"] == 4 * (3 + 3)
    # These recordings hold no minimal pairs: the built-in threshold stays the floor.
    assert summary["threshold"] == FuzzyThresholds().min_window_score >= summary["threshold_the_pairs_allow"]
    assert summary["hardest_negative"]["score"] < summary["threshold"]
    assert "false accepts 0.00%" in output


def test_the_service_reads_the_thresholds_file(tuned):
    out, _ = tuned
    settings = load_settings(out / "thresholds.toml")
    assert settings.fuzzy.min_window_score == pytest.approx(0.74)
    assert settings.fuzzy.min_short_window_score == pytest.approx(FuzzyThresholds().min_short_window_score)


def test_the_report_stands_alone(tuned):
    out, _ = tuned
    page = (out / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)) == 2
    assert "http://" not in page and "https://" not in page
    assert "The hardest negatives" in page and "librivox" in page


def test_allow_lower_takes_what_the_pairs_allow(recordings, tmp_path):
    result = CliRunner().invoke(main, ["tune", str(recordings), "--out", str(tmp_path), "--allow-lower"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert result.exit_code == 0 and summary["threshold"] == summary["threshold_the_pairs_allow"] < 0.74
    assert summary["false_accept_rate"] == 0.0


def test_labelled_pairs_from_a_csv(tmp_path):
    recorded = fixture_bytes("recorded.wav")
    (tmp_path / "a.wav").write_bytes(recorded)
    (tmp_path / "a.mp3").write_bytes(encode(*read_pcm(recorded), fmt="mp3", codec="libmp3lame", bitrate=32000))
    (tmp_path / "b.wav").write_bytes(fixture_bytes("weather.wav"))
    (tmp_path / "pairs.csv").write_text("query,original\na.mp3,a.wav\nb.wav,none\n")
    result = CliRunner().invoke(main, ["tune", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert result.exit_code == 0, result.output
    assert (summary["positives"], summary["negatives"], summary["recall"]) == (1, 1, 1.0)


def test_threshold_arithmetic():
    assert choose_threshold([0.1, 0.5, 0.3], 0.0, 0.02) == pytest.approx(0.52)
    assert choose_threshold([0.1, 0.5, 0.3], 0.34, 0.02) == pytest.approx(0.32)  # one false accept allowed
    assert choose_threshold([0.1, 0.5], 0.0, 0.02, floor=0.74) == 0.74
    assert thresholds_for(0.74)["min_short_window_score"] == pytest.approx(0.65)


def test_health_reports_the_thresholds_in_force(tuned, settings, engine):
    from dataclasses import replace

    from starlette.testclient import TestClient

    from earmark.service.api.app import create_app

    out, _ = tuned
    tuned_settings = replace(settings, fuzzy=load_settings(out / "thresholds.toml").fuzzy)
    with TestClient(create_app(tuned_settings, engine=engine)) as client:
        reported = client.get("/health").json()["thresholds"]
    assert reported["min_window_score"] == pytest.approx(0.74) and reported["enabled"] is True


def test_the_clip_negative_cuts_into_the_speech_even_with_silence_at_the_end():
    # 70% of a file whose last second is silence would hold all of its speech: a copy, not a
    # negative (on the benchmark corpus one such clip scored 1.0 and drove the threshold to 1).
    from earmark.fingerprint.decode import decode_audio
    from earmark.fingerprint.speech import speech_extent
    from earmark.service.ops.tune import negatives_of

    speech = decode_audio(fixture_bytes("recorded.wav"), 3600).pcm_16k
    padded = np.concatenate([speech, np.zeros(3 * 16000, np.float32)])
    other = decode_audio(fixture_bytes("weather.wav"), 3600).pcm_16k
    edits = negatives_of(padded, other)
    whole = speech_extent(padded)
    assert speech_extent(edits["clip_70pct"]).end_s < whole.end_s - 0.5
    changed = np.flatnonzero(edits["stretch_replaced"] != padded) / 16000
    assert whole.start_s < changed.min() and changed.max() < whole.end_s
