"""fingerprint/missing_speech.py on synthetic speech-like signals (tests/test_detail.py's): noise
only adds power, so a copy under noise lacks nothing of its original's speech, while the tail of
a syllable cut off under the same noise is found where it was, from either side."""

import numpy as np

from earmark.fingerprint.detail import detail_spectrum
from earmark.fingerprint.missing_speech import MISSING_DB, MISSING_UNDER_NOISE_DB, missing_speech
from tests.test_detail import GAP_S, RATE, SENTENCE, SYLLABLE_S, telephone_copy, utterance

LAST_SYLLABLE_S = 0.3 + (len(SENTENCE) - 1) * (SYLLABLE_S + GAP_S)


def under_noise(signal: np.ndarray, snr_db: float = 20.0, seed: int = 7) -> np.ndarray:
    """`signal` with white noise `snr_db` under its speech's RMS."""
    speech_rms = np.sqrt(np.mean(signal[np.abs(signal) > 0.01] ** 2))
    noise = np.random.default_rng(seed).normal(0, speech_rms / 10 ** (snr_db / 20), signal.size)
    return (signal + noise).astype(np.float32)


def tail_cut(signal: np.ndarray, seconds: float) -> np.ndarray:
    """The last syllable's final `seconds` silenced: an end cut short, the file's length kept."""
    end = int((LAST_SYLLABLE_S + SYLLABLE_S) * RATE)
    cut = signal.copy()
    cut[end - int(seconds * RATE): end] = 0.0
    return cut


def test_a_copy_under_noise_lacks_nothing():
    original = utterance(SENTENCE)
    found = missing_speech(detail_spectrum(under_noise(original)), detail_spectrum(original), 0)
    assert found.noise_added and found.limit_db == MISSING_UNDER_NOISE_DB  # the query's floor rose
    assert found.excess < 0.5, found


def test_a_copy_through_a_telephone_line_under_noise_lacks_nothing():
    """The line's lost bands are its response, not missing speech."""
    original = utterance(SENTENCE)
    found = missing_speech(detail_spectrum(under_noise(telephone_copy(original))), detail_spectrum(original), 0)
    assert found.excess < 0.5, found


def test_a_quieter_syllable_is_not_missing():
    """A limiter or an automatic gain lowers a syllable, but leaves it over the noise floor."""
    original = utterance(SENTENCE)
    quieter = original.copy()
    start = int((0.3 + 4 * (SYLLABLE_S + GAP_S)) * RATE)
    quieter[start: start + int(SYLLABLE_S * RATE)] *= 10 ** (-10 / 20)
    found = missing_speech(detail_spectrum(quieter), detail_spectrum(original), 0)
    assert not found.noise_added and found.limit_db == MISSING_DB
    assert found.excess < 0.5, found


def test_the_tail_of_a_syllable_cut_off_under_noise_is_missing_from_the_query():
    original = utterance(SENTENCE)
    found = missing_speech(detail_spectrum(under_noise(tail_cut(original, 0.08))), detail_spectrum(original), 0)
    assert not found.in_query
    assert found.excess > 1.0, found
    assert LAST_SYLLABLE_S <= found.query_s <= LAST_SYLLABLE_S + SYLLABLE_S
    assert found.entry_s == found.query_s


def test_speech_the_noisy_entry_lacks_is_missing_from_the_entry():
    """The other way round: the cached recording is the one cut short under noise, the query the
    whole clean reading (its transcript has a word more)."""
    original = utterance(SENTENCE)
    found = missing_speech(detail_spectrum(original), detail_spectrum(under_noise(tail_cut(original, 0.08))), 0)
    assert found.in_query
    assert found.excess > 1.0, found
    assert LAST_SYLLABLE_S <= found.query_s <= LAST_SYLLABLE_S + SYLLABLE_S


def test_the_stretch_is_placed_on_both_timelines():
    """Query frame k at entry frame k + offset: a query padded by 0.1 s finds the cut 0.1 s later."""
    original = utterance(SENTENCE)
    padded = np.concatenate([np.zeros(int(0.1 * RATE), dtype=np.float32), tail_cut(original, 0.08)])
    found = missing_speech(detail_spectrum(under_noise(padded)), detail_spectrum(original), -10)
    assert found.excess > 1.0, found
    assert abs(found.query_s - found.entry_s - 0.1) < 1e-6
