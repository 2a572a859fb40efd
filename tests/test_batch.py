"""`earmark batch`: one line a file, bad files do not stop the run, a run resumes, and the
summary adds up; in-process on a real store and engine, and against a running server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from earmark.service.cli import main
from tests.audio_tools import encode, fixture_bytes, read_pcm
from tests.conftest import live_server


@pytest.fixture
def batch_dir(tmp_path) -> Path:
    """Two recordings, a FLAC and a byte copy of one, a file that is not audio, a hidden file."""
    folder = tmp_path / "calls"
    (folder / "sub").mkdir(parents=True)
    recorded = fixture_bytes("recorded.wav")
    (folder / "a_recorded.wav").write_bytes(recorded)
    (folder / "b_weather.wav").write_bytes(fixture_bytes("weather.wav"))
    (folder / "sub" / "c_recorded.flac").write_bytes(encode(*read_pcm(recorded), fmt="flac", codec="flac"))
    (folder / "sub" / "d_notes.txt").write_text("not audio")
    (folder / ".hidden.wav").write_bytes(recorded)
    return folder


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_batch_answers_every_file_and_resumes(batch_dir, tmp_path, settings):
    out = tmp_path / "results.jsonl"
    args = ["batch", str(batch_dir), "--out", str(out), "--concurrency", "1",
            "--redis-url", settings.redis_url, "--data-dir", str(tmp_path / "data")]
    env = {"EARMARK_CONFIG": ""}
    first = CliRunner().invoke(main, args, env=env)
    assert first.exit_code == 1, first.output  # one file is not audio
    records = {Path(record["path"]).name: record for record in lines(out)}
    assert set(records) == {"a_recorded.wav", "b_weather.wav", "c_recorded.flac", "d_notes.txt"}
    assert records["a_recorded.wav"]["tier"] == "miss" and "recorded" in records["a_recorded.wav"]["text"]
    assert records["c_recorded.flac"]["tier"] == "canonical"
    assert records["c_recorded.flac"]["entry"] == records["a_recorded.wav"]["entry"]
    assert records["d_notes.txt"]["status"] == 415 and "not a recognised audio format" in records["d_notes.txt"]["error"]
    assert records["a_recorded.wav"]["engine_seconds"] > 0
    assert "miss 2" in first.output and "canonical 1" in first.output and "1 errors" in first.output

    again = CliRunner().invoke(main, args, env=env)
    assert "4 already done" in again.output and len(lines(out)) == 4  # nothing redone

    shutil.copy(batch_dir / "a_recorded.wav", batch_dir / "e_copy.wav")
    retry = CliRunner().invoke(main, [*args, "--retry-failed"], env=env)
    new = lines(out)[4:]
    assert sorted(Path(record["path"]).name for record in new) == ["d_notes.txt", "e_copy.wav"]
    assert next(record for record in new if record["path"].endswith("e_copy.wav"))["tier"] == "exact"
    assert retry.exit_code == 1 and "saved" in retry.output


def test_a_batch_against_a_running_server_from_a_list(batch_dir, tmp_path, settings, engine):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# the two recordings\n{batch_dir / 'a_recorded.wav'}\n\n{batch_dir / 'missing.wav'}\n")
    out = tmp_path / "out.jsonl"
    with live_server(settings, engine) as base_url:
        result = CliRunner().invoke(main, ["batch", str(listing), "--out", str(out), "--url", base_url])
    records = lines(out)
    assert [Path(record["path"]).name for record in sorted(records, key=lambda r: r["path"])] == ["a_recorded.wav", "missing.wav"]
    assert next(r for r in records if r["path"].endswith("missing.wav"))["error"].startswith("cannot read the file")
    assert result.exit_code == 1
