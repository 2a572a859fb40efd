"""Hard clipping: the decoder marks runs of samples at full scale at the source's own rate, and
the fuzzy tier compares the frames over them by their peaks, so that a clipped copy is served
while a clipped minimal pair is still refused (issue 23, verification revision 13)."""

from __future__ import annotations

import numpy as np
import pytest

from earmark.fingerprint.clipping import BLOCKS_PER_S, MIN_RUNS, ClippingMarks, clipped_blocks
from earmark.fingerprint.decode import decode_audio
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.verification import Verifier
from tests.audio_tools import encode, fixture_bytes, read_pcm
from tests.test_minimal_pairs import PAIRS, _judge
from tests.test_upstream import metric

RATE = 22_050


def _clipped(data: bytes, gain_db: float) -> bytes:
    """`data` made `gain_db` louder and clipped at full scale, as 16-bit WAV at its own rate."""
    samples, rate = read_pcm(data)
    louder = np.clip(np.rint(samples.astype(np.float64) * 10 ** (gain_db / 20)), -32768, 32767).astype(np.int16)
    return encode(louder, rate, fmt="wav", codec="pcm_s16le")


def _tone(seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32)


def _pinned(x: np.ndarray) -> np.ndarray:
    """`x` clipped as 16-bit PCM read back as float is: at -1 and 32767 / 32768."""
    return np.clip(x, -1.0, 32767 / 32768).astype(np.float32)


def test_runs_at_full_scale_are_marked_where_they_lie():
    signal = _tone(2.0, 0.5)
    start, end = int(1.0 * RATE), int(1.2 * RATE)
    signal[start:end] = _pinned(signal[start:end] * 4)
    blocks = clipped_blocks(signal, RATE)
    assert blocks.size > 10
    assert blocks.min() >= 1.0 * BLOCKS_PER_S and blocks.max() < 1.2 * BLOCKS_PER_S


def test_a_recording_that_touches_full_scale_a_few_times_is_not_marked():
    signal = _tone(2.0, 0.5)
    for second in np.linspace(0.2, 1.6, MIN_RUNS - 1):  # one run in each: fewer than MIN_RUNS
        at = int(second * RATE)
        signal[at:at + 3] = 32767 / 32768
    assert clipped_blocks(signal, RATE).size == 0
    signal[int(1.8 * RATE):int(1.8 * RATE) + 3] = 32767 / 32768  # the MIN_RUNS-th run
    assert clipped_blocks(signal, RATE).size == MIN_RUNS


def test_a_peak_at_full_scale_alone_is_not_a_run():
    signal = _tone(2.0, 0.5)
    signal[np.arange(100, 40_000, 1_000)] = 32767 / 32768  # 40 single samples at full scale
    assert clipped_blocks(signal, RATE).size == 0


def test_a_source_decoded_in_pieces_is_marked_as_a_whole():
    signal = _tone(3.0, 0.5)
    signal[RATE:2 * RATE] = _pinned(signal[RATE:2 * RATE] * 3)
    marks = ClippingMarks()
    for piece in np.array_split(signal, [4_000, 9_000, 30_000, 50_000]):  # cut outside the clipped second
        marks.push(piece, RATE)
    assert np.array_equal(marks.blocks(), clipped_blocks(signal, RATE))


def test_the_decoder_marks_a_clipped_recording_at_its_own_rate():
    data = fixture_bytes("recorded.wav")  # a real recording at 22,050 Hz
    assert decode_audio(data, 3600).clipped_blocks.size == 0
    decoded = decode_audio(_clipped(data, 9.0), 3600)
    blocks = decoded.clipped_blocks
    assert blocks.size > 20
    assert blocks.max() < decoded.duration_s * BLOCKS_PER_S


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier(FuzzyThresholds())


def _features(verifier: Verifier, data: bytes):
    return verifier.features_of_decoded(decode_audio(data, 3600))


def _unmarked(verifier: Verifier, data: bytes):
    return verifier.features(decode_audio(data, 3600).pcm_16k)


def test_clipped_copies_of_the_recordings_match(verifier):
    refused_unmarked = 0
    for name in ["recorded.wav", "weather.wav", "librivox_0890.flac", *(f"minimal_pairs/{pair}_a.flac" for pair in PAIRS)]:
        data = fixture_bytes(name)
        language = "zh" if "cmn_" in name else "en"
        original, copy = _features(verifier, data), _clipped(data, 6.0)
        marked = _features(verifier, copy)
        accepted, score, reason = _judge(verifier, original, marked, language)
        assert accepted, f"{name}: {reason}"
        assert ("clipped frames compared within 25 dB" in reason) == bool(marked.clipped.size), reason
        refused_unmarked += not _judge(verifier, original, _unmarked(verifier, copy), language)[0]
    assert refused_unmarked >= 3  # what revision 12 refused, the marks now serve


def test_a_recording_clipped_through_most_of_its_speech_is_judged_as_unmarked(verifier):
    data = fixture_bytes("recorded.wav")
    copy = _clipped(data, 18.0)
    marked, unmarked = _features(verifier, copy), _unmarked(verifier, copy)
    assert marked.clipped.size
    original = _features(verifier, data)
    assert _judge(verifier, original, marked) == _judge(verifier, original, unmarked)


@pytest.mark.parametrize("gain_db", [6.0, 9.0, 12.0])
def test_a_clipped_minimal_pair_is_refused_with_a_margin(verifier, gain_db):
    for pair in PAIRS:
        language = "zh" if pair.startswith("cmn_") else "en"
        original = _features(verifier, fixture_bytes(f"minimal_pairs/{pair}_a.flac"))
        changed = _features(verifier, _clipped(fixture_bytes(f"minimal_pairs/{pair}_b.flac"), gain_db))
        accepted, score, reason = _judge(verifier, original, changed, language)
        assert not accepted, f"{pair} +{gain_db} dB: {reason}"
        assert score <= FuzzyThresholds().min_window_score - 0.05, f"{pair} +{gain_db} dB: {reason}"


def test_a_clipped_upload_of_a_cached_recording_is_served_and_counted(client):
    data = fixture_bytes("recorded.wav")
    first = client.post("/recognize", files={"file": ("a.wav", data, "audio/wav")}).json()
    assert first["cache"]["tier"] == "miss"
    counted = metric(client, "earmark_clipped_uploads_total")
    copy = client.post("/recognize", files={"file": ("b.wav", _clipped(data, 6.0), "audio/wav")}).json()
    assert copy["cache"]["tier"] == "fuzzy", copy["cache"]
    assert copy["result"]["text"] == first["result"]["text"]
    assert metric(client, "earmark_clipped_uploads_total") == counted + 1
