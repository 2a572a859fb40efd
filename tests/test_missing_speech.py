"""fingerprint/missing_speech.py on synthetic speech-like signals (tests/test_detail.py's): noise
only adds power, so a copy under noise lacks nothing of its original's speech, while the tail of
a syllable cut off under the same noise is found where it was, from either side; above the
telephone band, a final fricative cut off is found too, but not on a line that does not carry
that band, nor in a codec's holes."""

import numpy as np

from earmark.fingerprint.detail import HOP, WINDOW, detail_spectrum, wide_spectrum
from earmark.fingerprint.missing_speech import (
    MISSING_DB,
    MISSING_UNDER_NOISE_DB,
    WIDE_LIMIT_SCALE,
    missing_speech,
    missing_wide_speech,
)
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


# --- above the telephone band (missing_wide_speech) ---

HISS_AFTER = (2, 5, len(SENTENCE) - 1)  # syllables followed by a fricative, the last one's final
HISS_S = 0.12


def hiss(seed: int, low_hz: float = 4200, high_hz: float = 7500) -> np.ndarray:
    """A fricative: noise over 4.2-7.5 kHz (an /s/)."""
    noise = np.random.default_rng(seed).normal(0, 1.0, int(HISS_S * RATE))
    spectrum = np.fft.rfft(noise)
    hz = np.fft.rfftfreq(noise.size, 1 / RATE)
    spectrum[(hz < low_hz) | (hz > high_hz)] = 0
    return (np.fft.irfft(spectrum, noise.size) * np.hanning(noise.size)).astype(np.float32)


def hissing_utterance() -> tuple[np.ndarray, int]:
    """`utterance(SENTENCE)` with a fricative after three syllables, and where its final one starts."""
    signal = utterance(SENTENCE)
    level = np.abs(signal).max()
    final = 0
    for index in HISS_AFTER:
        start = int((0.3 + index * (SYLLABLE_S + GAP_S) + SYLLABLE_S) * RATE)
        piece = hiss(index)
        signal[start: start + piece.size] += 0.5 * level * piece / np.abs(piece).max()
        final = start
    return signal, final


def test_a_final_fricative_cut_off_under_noise_is_missing_above_the_telephone_band():
    """The telephone band's spectrum cannot see an /s/ missing; the wide spectrum can."""
    original, final = hissing_utterance()
    cut = original.copy()
    cut[final: final + int(HISS_S * RATE)] = 0.0
    query = under_noise(cut)
    assert missing_speech(detail_spectrum(query), detail_spectrum(original), 0).excess < 1.0
    found = missing_wide_speech(wide_spectrum(query), wide_spectrum(original), 0, detail_spectrum(query),
                                detail_spectrum(original))
    assert found.wide and not found.in_query and found.noise_added
    assert found.limit_db == WIDE_LIMIT_SCALE * MISSING_UNDER_NOISE_DB
    assert found.excess > 1.0, found
    assert abs(found.query_s - final / RATE) < 0.1


def test_a_final_fricative_the_noisy_entry_lacks_is_missing_from_the_entry():
    """The other way round: the cached recording is the one cut short under noise, the query the
    whole clean reading (its transcript has a word more)."""
    original, final = hissing_utterance()
    cut = original.copy()
    cut[final: final + int(HISS_S * RATE)] = 0.0
    entry = under_noise(cut)
    found = missing_wide_speech(wide_spectrum(original), wide_spectrum(entry), 0, detail_spectrum(original),
                                detail_spectrum(entry))
    assert found.wide and found.in_query and found.noise_added
    assert found.excess > 1.0, found
    assert abs(found.query_s - final / RATE) < 0.1


def test_a_copy_under_noise_lacks_nothing_above_the_telephone_band():
    """Whichever of the two was cached, the noisy copy or the clean original."""
    original, _ = hissing_utterance()
    copy = under_noise(original)
    for query, entry in ((copy, original), (original, copy)):
        found = missing_wide_speech(wide_spectrum(query), wide_spectrum(entry), 0, detail_spectrum(query),
                                    detail_spectrum(entry))
        assert found.excess < 0.5, found


def test_a_line_without_the_band_is_not_judged_above_it():
    """A telephone line carries nothing over 3.4 kHz but its noise, which none of the entry's speech
    there rises 10 dB over: no band of the wide spectrum is judged, and nothing is missing."""
    original, final = hissing_utterance()
    cut = original.copy()
    cut[final: final + int(HISS_S * RATE)] = 0.0
    query = under_noise(telephone_copy(cut))
    found = missing_wide_speech(wide_spectrum(query), wide_spectrum(original), 0, detail_spectrum(query),
                                detail_spectrum(original))
    assert found.excess == 0.0, found


def test_a_codec_hole_is_not_noise():
    """A low-bitrate encoder drops a band in a quiet frame: far under the noise floor there, that
    frame is not noise alone, and the speech it lacks is not counted missing."""
    original, final = hissing_utterance()
    cut = original.copy()
    cut[final: final + int(HISS_S * RATE)] = 0.0
    noisy = under_noise(cut)
    query = wide_spectrum(noisy).copy()
    first, last = (final - WINDOW) // HOP, (final + int(HISS_S * RATE)) // HOP + 3
    query[first:last, 0] = 0  # the lowest band dropped, -120 dB
    assert missing_wide_speech(query, wide_spectrum(original), 0, detail_spectrum(noisy),
                               detail_spectrum(original)).excess < 0.5


def test_a_fricative_whose_upper_band_a_codec_dropped_is_not_missing():
    """A low-rate AAC encoder drops the band over 3.8 kHz from some frames of a fricative and
    keeps its lower part: those frames are not noise alone in the telephone band, as a cut end's
    are, so what they lack above it is not counted (7 AAC 16 kbit/s copies were refused
    otherwise on the channel benchmarks)."""
    original, final = hissing_utterance()
    lower = hiss(11, low_hz=2500, high_hz=3700)  # the fricative's lower part, under the band's top
    level = np.abs(original).max()
    original[final: final + lower.size] += 0.3 * level * lower / np.abs(lower).max()
    copy = original.copy()
    piece = copy[final: final + lower.size]
    spectrum = np.fft.rfft(piece)
    spectrum[np.fft.rfftfreq(piece.size, 1 / RATE) > 3800] = 0
    copy[final: final + lower.size] = np.fft.irfft(spectrum, piece.size)
    query = under_noise(copy)
    found = missing_wide_speech(wide_spectrum(query), wide_spectrum(original), 0, detail_spectrum(query),
                                detail_spectrum(original))
    assert found.excess < 0.5, found
