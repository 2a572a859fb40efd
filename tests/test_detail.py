"""fingerprint/detail.py on synthetic speech-like signals whose right answer is known: a copy's
distortion is spread over the recording, a changed syllable concentrates it, a missing syllable
is speech with no counterpart, and a limiter compresses the levels."""

import numpy as np
import pytest
import soxr

from earmark.fingerprint.detail import (
    BANDS,
    COMPRESSION_DB,
    DetailSpectrum,
    PHASES,
    compare_detail,
    compare_detail_phased,
    detail_from_bytes,
    detail_phases,
    detail_spectrum,
    speech_durations_s,
)

RATE = 16000
SYLLABLE_S, GAP_S = 0.2, 0.06
# (F1, F2) of the vowels: a syllable's spectrum, as the formants of a voice shape its harmonics
VOWELS = [(700, 1200), (300, 2300), (500, 1500), (400, 900), (650, 1700), (350, 2000)]


def syllable(formants: tuple[int, int], f0: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(SYLLABLE_S * RATE)) / RATE
    wave = np.zeros_like(t)
    for k in range(1, int(3800 / f0)):
        hz = k * f0
        gain = sum(np.exp(-0.5 * ((hz - f) / 90.0) ** 2) for f in formants) + 0.02
        wave += gain * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))
    return wave * np.hanning(t.size)


def utterance(vowels: list[int], seed: int = 0, longer_gaps: dict[int, float] | None = None) -> np.ndarray:
    """Syllables with short pauses and a faint noise floor, peaking near -6 dBFS; `longer_gaps`:
    the pause after syllable i lengthened by so many seconds (what comes after it drifts)."""
    rng = np.random.default_rng(seed)
    pieces = [np.zeros(int(0.3 * RATE))]
    for i, vowel in enumerate(vowels):
        gap = GAP_S + (longer_gaps or {}).get(i, 0.0)
        pieces += [syllable(VOWELS[vowel], 120.0 + 4 * (i % 5), rng), np.zeros(int(gap * RATE))]
    pieces.append(np.zeros(int(0.3 * RATE)))
    signal = np.concatenate(pieces)
    signal = 0.5 * signal / np.abs(signal).max()
    return (signal + np.random.default_rng(99).normal(0, 1e-4, signal.size)).astype(np.float32)


SENTENCE = [0, 1, 2, 3, 4, 5, 0, 2, 1, 3]


def telephone_copy(signal: np.ndarray) -> np.ndarray:
    """Through 8 kHz and back at another level, with a little noise: a channel, the same recording."""
    narrow = soxr.resample(soxr.resample(signal, RATE, 8000), 8000, RATE)[: signal.size]
    noise = np.random.default_rng(5).normal(0, 3e-4, narrow.size)
    return (0.6 * narrow + noise).astype(np.float32)


def test_a_copy_through_a_channel_has_no_burst_of_difference():
    original = detail_spectrum(utterance(SENTENCE))
    verdict = compare_detail(detail_spectrum(telephone_copy(utterance(SENTENCE))), original, 0.0)
    assert verdict.excess_db < 3.0, verdict
    assert not verdict.limited


def test_one_changed_syllable_concentrates_the_difference_where_it_is():
    changed = list(SENTENCE)
    changed[6] = 1  # one vowel of ten: a minimal pair
    verdict = compare_detail(detail_spectrum(utterance(changed)), detail_spectrum(utterance(SENTENCE)), 0.0)
    assert verdict.excess_db > 8.0, verdict
    start = 0.3 + 6 * (SYLLABLE_S + GAP_S)
    assert start - 0.1 <= verdict.query_s <= start + SYLLABLE_S


def test_the_changed_syllable_is_seen_through_the_channel_too():
    changed = list(SENTENCE)
    changed[6] = 1
    verdict = compare_detail(detail_spectrum(telephone_copy(utterance(changed))), detail_spectrum(utterance(SENTENCE)), 0.0)
    assert verdict.excess_db > 8.0, verdict


def test_the_drift_after_a_changed_syllable_is_not_excused_as_a_codec_s_distortion():
    """A changed phone is a little longer or shorter, so everything after it drifts: at one
    alignment that drift raises the recording's median difference, which excuses the changed
    syllable as if it were a codec's distortion. Each 0.2 s at its own alignment, it does not;
    a copy, whose timing no channel moves, keeps its allowance."""
    changed = list(SENTENCE)
    changed[4] = 1
    original = detail_spectrum(utterance(SENTENCE))
    drifting = compare_detail(detail_spectrum(utterance(changed, longer_gaps={4: 0.02})), original, 0.0)
    assert drifting.median_db > 0.5, drifting
    assert drifting.rest_db < 0.5 * drifting.median_db, drifting
    copy = compare_detail(detail_spectrum(telephone_copy(utterance(SENTENCE))), original, 0.0)
    assert copy.rest_db == pytest.approx(copy.median_db, abs=0.15), copy


def test_a_delay_of_a_fraction_of_the_hop_is_undone_by_the_query_s_finer_phase():
    """A copy delayed by 7.5 ms (an encoder's delay, a pad: rarely whole 10 ms hops) is compared
    at the stored phase with every frame straddling its transitions differently; at the
    query's phase that starts its frames 120 samples later, frame for frame the same."""
    original = utterance(SENTENCE)
    delayed = np.concatenate([np.zeros(PHASES[-1], dtype=np.float32), original])
    stored, aligned = compare_detail_phased(detail_spectrum(delayed), detail_phases(delayed),
                                            detail_spectrum(original), PHASES[-1] / RATE)
    assert aligned.median_db == pytest.approx(0.0, abs=0.01), aligned
    assert stored.median_db > aligned.median_db, (stored, aligned)
    assert aligned.offset_frames == 0, aligned
    # A query without phases (an entry judged by the audit) is judged at the stored phase alone.
    assert compare_detail_phased(detail_spectrum(delayed), (), detail_spectrum(original), PHASES[-1] / RATE)[1] == stored


def test_a_missing_last_syllable_is_speech_without_a_counterpart():
    whole = utterance(SENTENCE)
    cut = whole[: int((0.3 + 9 * (SYLLABLE_S + GAP_S)) * RATE)]
    verdict = compare_detail(detail_spectrum(cut), detail_spectrum(whole), 0.0)
    assert verdict.excess_db > 8.0, verdict
    durations = speech_durations_s(detail_spectrum(cut), detail_spectrum(whole))
    assert durations[1] - durations[0] == pytest.approx(SYLLABLE_S + GAP_S, abs=0.08)


def test_the_alignment_is_found_within_its_search_range():
    original = utterance(SENTENCE)
    padded = np.concatenate([np.zeros(int(0.5 * RATE), dtype=np.float32), original])
    verdict = compare_detail(detail_spectrum(padded), detail_spectrum(original), -0.52)  # the hash's offset, 20 ms off
    assert verdict.offset_frames == -50
    assert verdict.excess_db < 1.0, verdict
    assert speech_durations_s(detail_spectrum(padded), detail_spectrum(original)) == pytest.approx(
        speech_durations_s(detail_spectrum(original), detail_spectrum(original)), abs=0.02)


def compressed(signal: np.ndarray, ratio: float = 6.0, threshold_db: float = -30.0) -> np.ndarray:
    """A compressor: a smooth gain (20 ms envelope) that brings loud stretches down towards quiet ones."""
    envelope = np.sqrt(np.convolve(signal.astype(np.float64) ** 2, np.ones(320) / 320, mode="same")) + 1e-9
    over_db = np.maximum(0.0, 20 * np.log10(envelope) - threshold_db)
    gain = 10 ** (-over_db * (1 - 1 / ratio) / 20)
    out = signal * gain
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def test_a_limiter_is_recognised_by_its_compressed_levels_and_still_a_copy():
    original = utterance(SENTENCE)
    # loud syllables alternate with quiet ones, and a hard limiter then flattens the difference
    levels = np.ones_like(original)
    for i in range(0, len(SENTENCE), 2):
        start = int((0.3 + i * (SYLLABLE_S + GAP_S)) * RATE)
        levels[start:start + int(SYLLABLE_S * RATE)] = 0.1
    quiet_and_loud = original * levels
    limited = compressed(quiet_and_loud)
    verdict = compare_detail(detail_spectrum(limited), detail_spectrum(quiet_and_loud), 0.0)
    assert verdict.compression_db >= COMPRESSION_DB and verdict.limited, verdict
    assert verdict.excess_db < 3.4, verdict  # LIMITED_EXCESS: what a limited copy must stay under
    reverse = compare_detail(detail_spectrum(quiet_and_loud), detail_spectrum(limited), 0.0)
    assert reverse.compression_db <= -COMPRESSION_DB and reverse.limited, reverse


def test_pushed_in_pieces_the_spectrum_is_the_same_as_in_one_go():
    signal = utterance(SENTENCE)
    stream = DetailSpectrum()
    for piece in np.array_split(signal, [1, 999, 1000, 17_001, 30_000]):
        stream.push(piece)
    assert np.array_equal(stream.finish(), detail_spectrum(signal))


def test_a_stored_spectrum_reads_back_and_a_damaged_one_is_refused():
    spectrum = detail_spectrum(utterance(SENTENCE))
    assert spectrum.dtype == np.uint8 and spectrum.shape[1] == BANDS
    assert np.array_equal(detail_from_bytes(spectrum.tobytes()), spectrum)
    assert detail_from_bytes(spectrum.tobytes()[:-1]) is None


def test_a_changed_syllable_behind_a_compressor_is_still_a_burst():
    changed = list(SENTENCE)
    changed[6] = 1
    levels = np.where(np.arange(utterance(SENTENCE).size) % int(0.52 * RATE) < int(0.26 * RATE), 1.0, 0.1).astype(np.float32)
    original, pair = utterance(SENTENCE) * levels, compressed(utterance(changed) * levels)
    verdict = compare_detail(detail_spectrum(pair), detail_spectrum(original), 0.0)
    assert verdict.limited and verdict.excess_db > 8.0, verdict


@pytest.mark.parametrize("snr_db", [20, 10])
def test_a_word_cut_off_the_end_of_a_noisy_copy_is_still_missing(snr_db):
    """A real reading (LibriVox 0930) with white noise added: the whole copy has no burst, but
    the copy with its last 0.4 s cut off (the end of the last word) lacks speech the entry has,
    however loud the noise. The entry's frames past the copy's end are judged over the entry's
    own floor: over the pair's common floor, the noise hid them (excess 3.6 dB at 20 dB SNR and
    0 at 10 dB before)."""
    from earmark.fingerprint.decode import decode_audio
    from tests.audio_tools import encode, fixture_bytes, read_pcm

    samples, rate = read_pcm(fixture_bytes("librivox_0930.flac"))

    def spectrum(pcm: np.ndarray) -> np.ndarray:
        return detail_spectrum(decode_audio(encode(pcm, rate, fmt="wav", codec="pcm_s16le"), 60).pcm_16k)

    def noisy(pcm: np.ndarray) -> np.ndarray:
        speech = samples.astype(np.float64)[np.abs(samples) > 300]
        noise = np.random.default_rng(1).normal(0.0, np.sqrt(np.mean(speech**2)) * 10 ** (-snr_db / 20), pcm.size)
        return np.clip(np.round(pcm + noise), -32768, 32767).astype(np.int16)

    entry = spectrum(samples)
    whole = compare_detail(spectrum(noisy(samples.astype(np.float64))), entry, 0.0)
    cut = compare_detail(spectrum(noisy(samples[: samples.size - int(0.4 * rate)].astype(np.float64))), entry, 0.0)
    assert whole.excess_db < 5.0
    assert cut.excess_db > 15.0
