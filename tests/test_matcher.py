"""The perceptual hash and its verification, on real encodings of a spoken fixture."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from earmark.fingerprint.config import DEFAULT
from earmark.fingerprint.decode import SAMPLE_RATE, decode_audio
from earmark.fingerprint.embedding import EMBEDDING_DIM, embedding_from_energies
from earmark.fingerprint.matcher import stretch_scores, verify
from earmark.fingerprint.robust_hash import RobustHash, robust_hash
from earmark.fingerprint.spectrum import band_energies
from earmark.service.config import FuzzyThresholds
from tests.audio_tools import encode, fixture_bytes, read_pcm

THRESHOLD = FuzzyThresholds().min_window_score


def pcm_of(data: bytes) -> np.ndarray:
    return decode_audio(data, 3600).pcm_16k


@pytest.fixture(scope="module")
def original():
    return pcm_of(fixture_bytes("recorded.wav"))


def score(query: np.ndarray, reference: np.ndarray) -> float:
    return verify(robust_hash(query, DEFAULT), robust_hash(reference, DEFAULT), DEFAULT).worst_score


def test_hash_is_32_bits_per_16_ms_frame_and_round_trips(original):
    hashed = robust_hash(original, DEFAULT)
    assert len(hashed.bits) == pytest.approx(len(original) / DEFAULT.hop_length, abs=DEFAULT.frame_length / DEFAULT.hop_length + 1)
    assert hashed.bits.dtype == np.uint32 and 0.3 < np.bitwise_count(hashed.bits).mean() / 32 < 0.7
    assert np.all(np.bitwise_count(hashed.strong[1:]) >= 16)  # the stronger half of each frame's bits
    again = RobustHash.from_bytes(*hashed.to_bytes())
    assert np.array_equal(again.bits, hashed.bits) and np.array_equal(again.strong, hashed.strong)
    assert np.array_equal(again.level_db, hashed.level_db)


def test_identical_audio_scores_one(original):
    assert score(original, original) == 1.0


@pytest.mark.parametrize("fmt,codec,bitrate", [("mp3", "libmp3lame", 32000), ("mp3", "libmp3lame", 128000), ("ipod", "aac", 64000)])
def test_lossy_copies_pass(original, fmt, codec, bitrate):
    copy = pcm_of(encode(*read_pcm(fixture_bytes("recorded.wav")), fmt=fmt, codec=codec, bitrate=bitrate))
    assert score(copy, original) >= THRESHOLD


def test_g711_telephone_copy_passes(original):
    narrowband = (soxr.resample(original, SAMPLE_RATE, 8000) * 32767).astype(np.int16)
    copy = pcm_of(encode(narrowband, 8000, fmt="wav", codec="pcm_mulaw"))
    assert score(copy, original) >= THRESHOLD


def test_telephone_band_gain_and_padding_pass(original):
    telephone = soxr.resample(soxr.resample(original, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)
    assert score(telephone, original) >= THRESHOLD
    assert score(original * 0.5, original) >= 0.99
    padded = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), original])
    assert score(padded, original) >= THRESHOLD
    trimmed = original[int(0.3 * SAMPLE_RATE):]
    assert score(trimmed, original) >= THRESHOLD


def test_containment_fails_both_ways(original):
    prefix = original[: int(len(original) * 0.3)]
    assert score(prefix, original) < THRESHOLD
    other = pcm_of(fixture_bytes("weather.wav"))
    longer = np.concatenate([original, np.zeros(SAMPLE_RATE // 4, np.float32), other])
    assert score(longer, original) < THRESHOLD
    assert score(original, longer) < THRESHOLD


def test_same_voice_different_sentence_fails(original):
    assert score(pcm_of(fixture_bytes("weather.wav")), original) < THRESHOLD


def test_half_identical_half_different_fails_on_the_worst_stretch(original):
    other = pcm_of(fixture_bytes("weather.wav"))
    half = len(original) // 2
    spliced = np.concatenate([original[:half], other[half : len(original)]])
    verdict = verify(robust_hash(spliced, DEFAULT), robust_hash(original, DEFAULT), DEFAULT)
    assert verdict.mean_score > verdict.worst_score + 0.1  # an average would have looked fine-ish
    assert verdict.worst_score < THRESHOLD


def test_stretch_scores_show_where_a_splice_goes_wrong(original):
    """The audit's per-stretch curve is verify's: its minimum is the worst stretch, found where
    verify says, and the stretches over the swapped second half score low, the first half high."""
    other = pcm_of(fixture_bytes("weather.wav"))
    half = len(original) // 2
    spliced = np.concatenate([original[:half], other[half : len(original)]])
    query, reference = robust_hash(spliced, DEFAULT), robust_hash(original, DEFAULT)
    verdict = verify(query, reference, DEFAULT)
    starts, scores = stretch_scores(query, reference, DEFAULT)
    assert len(scores) == verdict.windows >= 3 and list(starts) == sorted(starts)
    assert float(scores.min()) == pytest.approx(verdict.worst_score)
    assert float(starts[int(np.argmin(scores))]) == pytest.approx(verdict.worst_at_s)
    half_s = half / SAMPLE_RATE
    assert scores[starts < half_s - 1.0].min() >= THRESHOLD > scores[starts >= half_s].max()
    assert stretch_scores(robust_hash(np.zeros(SAMPLE_RATE, np.float32), DEFAULT), reference, DEFAULT)[1].size == 0


def test_embedding_is_unit_length_gain_invariant_and_pad_tolerant(original):
    def embed(pcm):
        return embedding_from_energies(band_energies(pcm, DEFAULT), DEFAULT)

    vector = embed(original)
    assert vector.shape == (EMBEDDING_DIM,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    assert float(embed(original * 0.25) @ vector) > 0.999
    padded = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), original, np.zeros(SAMPLE_RATE, np.float32)])
    assert float(embed(padded) @ vector) > 0.85
    assert float(embed(pcm_of(fixture_bytes("weather.wav"))) @ vector) < float(embed(padded) @ vector)
    assert not embed(np.zeros(SAMPLE_RATE, np.float32)).any()


def test_one_substituted_word_fails_on_the_short_stretches(original):
    """A third of a second of other speech inside an otherwise identical recording (same
    duration, same everything else) is caught by the ~0.25 s stretches."""
    other = pcm_of(fixture_bytes("weather.wav"))
    start, length = int(1.5 * SAMPLE_RATE), int(0.3 * SAMPLE_RATE)
    spliced = original.copy()
    spliced[start : start + length] = other[start : start + length]
    verdict = verify(robust_hash(spliced, DEFAULT), robust_hash(original, DEFAULT), DEFAULT)
    assert verdict.worst_short_score < FuzzyThresholds().min_short_window_score
    copy = pcm_of(encode(*read_pcm(fixture_bytes("recorded.wav")), fmt="mp3", codec="libmp3lame", bitrate=32000))
    assert verify(robust_hash(copy, DEFAULT), robust_hash(original, DEFAULT), DEFAULT).worst_short_score >= (
        FuzzyThresholds().min_short_window_score
    )


def _with_noise(pcm: np.ndarray, snr_db: float, kind: str) -> np.ndarray:
    """`pcm` with white or pink noise at `snr_db` under its speech (seeded)."""
    noise = np.random.default_rng(7).standard_normal(pcm.size)
    if kind == "pink":
        spectrum = np.fft.rfft(noise)
        spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))
        noise = np.fft.irfft(spectrum, pcm.size)
    speech = pcm[np.abs(pcm) > 0.01 * np.abs(pcm).max()]
    noise *= np.sqrt(np.mean(speech**2) / 10 ** (snr_db / 10) / np.mean(noise**2))
    return (pcm + noise).astype(np.float32)


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_a_copy_under_steady_noise_is_the_same_recording_and_a_word_cut_from_it_is_not(kind):
    """A real reading (LibriVox 0890) under 20 dB of steady noise: its pauses are noise, not
    silence, and its quiet bands are random. With the noise floor taken out before hashing, the
    service's verdict takes the copy for the same recording (before: refused, its worst 0.25 s
    stretch about 0.5); the same copy with a third of a second cut out of its middle is still
    refused."""
    from earmark.service.ops.tune import Scorer

    scorer = Scorer(FuzzyThresholds())
    reading = pcm_of(fixture_bytes("librivox_0890.flac"))
    scorer.original_features("reading", scorer.verifier.features(reading), reading.size / SAMPLE_RATE)
    accepted, score, reason = scorer.judge(scorer.verifier.features(_with_noise(reading, 20.0, kind)), "reading")
    assert accepted, reason
    middle, cut = reading.size // 2, int(0.33 * SAMPLE_RATE)
    edited = np.concatenate([reading[:middle], reading[middle + cut:]])
    accepted, score, reason = scorer.judge(scorer.verifier.features(_with_noise(edited, 20.0, kind)), "reading")
    assert not accepted and score < THRESHOLD - 0.05, reason


def test_a_recording_with_silent_pauses_hashes_as_it_did_before_the_noise_floor_was_taken_out():
    """Steady-noise removal subtracts each band's floor: where the pauses are digital silence
    (a synthetic prompt with silence around it) the floor is zero and the hash is exactly the one
    the energies give as they are; a noisy recording's is not."""
    from earmark.fingerprint.robust_hash import robust_hash_from_energies

    silence = np.zeros(SAMPLE_RATE, np.float32)
    prompt = np.concatenate([silence, pcm_of(fixture_bytes("weather.wav")), silence])
    energies = band_energies(prompt, DEFAULT)
    assert robust_hash(prompt, DEFAULT).bits.tolist() == robust_hash_from_energies(energies).bits.tolist()
    noisy = _with_noise(prompt, 20.0, "white")
    assert robust_hash(noisy, DEFAULT).bits.tolist() != robust_hash_from_energies(band_energies(noisy, DEFAULT)).bits.tolist()


def test_a_quiet_voice_in_a_pause_is_noise_but_a_word_said_there_is_not(original):
    """A cached recording with a second's pause in it; the query has another voice in that pause
    (babble, a television), 25 dB under its loud frames: noise that filled a pause, not words the
    query added, so the hashes take it for the same recording (before, the pause's frames scored
    as half wrong and the second failed). The same voice said there at the recording's own level
    is a word added, and is refused."""
    pause = np.zeros(SAMPLE_RATE, np.float32)
    cached = np.concatenate([original, pause, original])
    other = pcm_of(fixture_bytes("weather.wav"))[SAMPLE_RATE // 4: SAMPLE_RATE // 4 + SAMPLE_RATE]
    loud = np.sqrt(np.mean(original[np.abs(original) > 0.1 * np.abs(original).max()] ** 2))
    voice = other / np.sqrt(np.mean(other[np.abs(other) > 0.1 * np.abs(other).max()] ** 2)) * loud
    murmured = np.concatenate([original, voice * 10 ** (-25 / 20), original]).astype(np.float32)
    said = np.concatenate([original, voice, original]).astype(np.float32)
    limits = FuzzyThresholds()
    heard = verify(robust_hash(murmured, DEFAULT), robust_hash(cached, DEFAULT), DEFAULT)
    assert heard.worst_score >= limits.min_window_score and heard.worst_short_score >= limits.min_short_window_score
    added = verify(robust_hash(said, DEFAULT), robust_hash(cached, DEFAULT), DEFAULT)
    assert added.worst_score < limits.min_window_score - 0.1
    assert added.worst_short_score < limits.min_short_window_score - 0.1
