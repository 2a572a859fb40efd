"""The pitch contour, to tell a copy from a tone minimal pair.

Mandarin 买 (mǎi, buy) and 卖 (mài, sell) differ only in their tone: same consonant, same vowel,
the same spectrum to within what a codec changes, so neither the robust hash nor the detail
spectrum can tell them apart. Their pitch contours can: a falling tone against a dipping one is
apart for a syllable. A copy keeps its pitch (codecs, resampling and gain leave F0 alone):
on frames both recordings voice, a copy's contour differs only by the tracker's errors, which
are short and go either way, so over a syllable they average out. A changed tone moves the
pitch one way for the whole syllable: espeak-ng's 卖 / 买 differ by 1.5 to 2.5 semitones
held over 150 to 200 ms.

F0 is estimated every 10 ms from the normalised autocorrelation of a 40 ms frame (the peak
between 60 and 400 Hz); a frame counts as voiced when that peak is strong. Octave errors, the
classic failure of any pitch tracker on a codec's output, are forgiven by comparing pitch
classes (semitones modulo an octave).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
import soxr

from earmark.fingerprint import detail
from earmark.fingerprint.decode import SAMPLE_RATE
from earmark.fingerprint.framing import Framer

# RATE, FRAME, MIN_HZ, MAX_HZ, VOICED_PEAK, SUBHARMONIC_RATIO and _STEPS_PER_SEMITONE shape the
# stored contour (and detail.HOP and WINDOW its grid): changing one needs a new
# FingerprintConfig.version (fingerprint/config.py). The constants after them only judge.
RATE = 8000  # pitch lives well under 4 kHz: half the samples, a quarter of the work
# The detail spectrum's grid and padding, at this rate: frame k covers the same time in both.
HOP = detail.HOP * RATE // SAMPLE_RATE
PAD = detail.WINDOW * RATE // SAMPLE_RATE
FRAME = 320  # 40 ms: two periods of the lowest pitch
MIN_HZ, MAX_HZ = 60.0, 400.0
VOICED_PEAK = 0.6  # normalised autocorrelation peak for a frame to count as voiced
SUBHARMONIC_RATIO = 0.9  # a shorter lag within this fraction of the best peak wins
# Stored as uint8: 0 = unvoiced, else 1 + quarter-semitones above MIN_HZ (up to ~63 semitones).
_STEPS_PER_SEMITONE = 4.0
BURST_FRAMES = 20  # ~200 ms: a tone's syllable
# A 200 ms stretch is judged on as few as this many frames voiced on both sides: a low tone
# (Mandarin 买 in a low male voice) is often voiced in only a few frames of its syllable.
MIN_BURST_FRAMES = 6
MIN_SHARED_FRAMES = 20  # fewer frames voiced on both sides say nothing either way
# A frame this far from its recording's median pitch may be the tracker's, not the voice's: a
# harmonic taken for F0 at a voicing onset (a 3:1 error is 19 semitones, which pitch classes do
# not forgive). One utterance's F0 stays within about an octave of its median. Such a frame is
# left out when it sits about a harmonic away from the median (2:1 to 6:1) or belongs to a run
# of at most MAX_GLITCH_FRAMES: a longer excursion elsewhere is the voice's, and is judged.
OUTLIER_SEMITONES = 7.0
HARMONIC_SEMITONES = np.array([12.0, 19.02, 24.0, 27.86, 31.02])
HARMONIC_TOLERANCE = 1.0
MAX_GLITCH_FRAMES = 6
# A frame within this of the tracker's ceiling (MAX_HZ) is pinned there, not measured: a voice
# above 400 Hz (a child's, a high call) reads as 400 Hz in one copy and, under noise, as a lower
# peak in another. (The floor is kept: Mandarin's low tones read there, and judging them is the
# point; a real voice under 60 Hz is rare.)
CEILING_SEMITONES = 0.5
_CEILING_CODE = 1 + (12.0 * np.log2(MAX_HZ / MIN_HZ) - CEILING_SEMITONES) * _STEPS_PER_SEMITONE
# Band-limited speech (a telephone line passes nothing under 300 Hz, so a voice's fundamental is
# gone) makes the tracker lock onto a harmonic for a stretch: the third (19 semitones up), a
# fourth or a fifth above (3:2 or 4:3 of the shortest lag), the fourth or fifth harmonic. Two
# marks of it, neither of which a changed tone has (channel benchmark, bench/README.md):
# - the tracker jumps onto and off the harmonic: a voiced piece of at most MAX_GLITCH_FRAMES
#   that the contour enters or leaves by more than JUMP_SEMITONES in 10 ms (a voice's pitch
#   moves well under a semitone per 10 ms, a Mandarin falling tone included) is not judged;
# - the two contours differ by more than HARMONIC_ERROR_SEMITONES on a frame: no tone or
#   intonation change moves that far, a harmonic (3:1 = 19 semitones, which pitch classes would
#   read as a 5-semitone tone change) does. Such a frame is not judged either.
JUMP_SEMITONES = 3.0
HARMONIC_ERROR_SEMITONES = 10.0


@dataclass(frozen=True)
class PitchVerdict:
    """The worst 200 ms: the size of the mean signed pitch difference over its frames both
    recordings voice (a consistent shift, which tracker errors of either sign do not build),
    and where it starts in each recording."""

    burst_semitones: float
    query_s: float
    shared_frames: int
    entry_s: float = 0.0
    # The smallest share of the entry's trusted voiced frames, over any 200 ms that has at least
    # MIN_BURST_FRAMES of them, that the query's contour could be compared with there: low where
    # a line hid a syllable's pitch from the tracker (a low tone on a telephone band), so that
    # nothing was judged where a changed tone would be.
    least_covered: float = 1.0


class PitchContour:
    """`pitch_contour` of a signal pushed in pieces: resampled to 8 kHz as it comes (soxr's
    stream gives the same samples as one call), then framed block by block. Only the loudness
    gate needs the whole recording, so each block keeps its frames' level, peak and lag."""

    def __init__(self) -> None:
        self._resampler = soxr.ResampleStream(SAMPLE_RATE, RATE, 1, dtype="float32", quality="LQ")
        self._framer = Framer(FRAME, HOP, PAD, PAD + FRAME)
        self._blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def push(self, pcm_16k: np.ndarray) -> None:
        """Add the next samples (16 kHz mono float)."""
        if pcm_16k.size:
            self._frames(self._resampler.resample_chunk(np.asarray(pcm_16k, dtype=np.float32)), final=False)

    def finish(self) -> np.ndarray:
        """One uint8 per 10 ms frame: 0 unvoiced, else pitch."""
        self._frames(self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True), final=True)
        level, peak, lag = (np.concatenate(parts) for parts in zip(*self._blocks, strict=True))
        loud = level > np.percentile(level, 99) - 35.0 if level.size else np.zeros(0, dtype=bool)
        voiced = (peak > VOICED_PEAK) & loud
        semitones = 12.0 * np.log2(RATE / lag / MIN_HZ)
        codes = np.where(voiced, 1 + np.clip(np.round(semitones * _STEPS_PER_SEMITONE), 0, 254), 0)
        return codes.astype(np.uint8)

    def _frames(self, pcm_8k: np.ndarray, *, final: bool) -> None:
        blocks = list(self._framer.push(pcm_8k))
        if final:
            blocks += list(self._framer.finish())
        self._blocks.extend(_analyse(block) for block in blocks)


def pitch_contour(pcm_16k: np.ndarray) -> np.ndarray:
    """One uint8 per 10 ms frame (aligned with fingerprint/detail.py): 0 unvoiced, else pitch."""
    stream = PitchContour()
    stream.push(pcm_16k)
    return stream.finish()


def _analyse(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each frame's level (dB), autocorrelation peak and lag (samples, to a fraction)."""
    frames = frames - frames.mean(axis=1, keepdims=True)
    spectrum = scipy.fft.rfft(frames, n=2 * FRAME, axis=1, workers=1)
    autocorrelation = scipy.fft.irfft(spectrum.real**2 + spectrum.imag**2, axis=1, workers=1)[:, :FRAME]
    energy = autocorrelation[:, :1]
    low, high = int(RATE / MAX_HZ), int(RATE / MIN_HZ)
    # Normalise by the overlap that shrinks with the lag, so long lags are not penalised.
    overlap = (FRAME - np.arange(low, high + 1)) / FRAME
    normalised = autocorrelation[:, low : high + 1] / np.maximum(energy, 1e-9) / overlap
    # The shortest lag whose peak comes close to the strongest: a periodic signal correlates as
    # well at two or three periods, and taking those would halve or third the pitch.
    strongest = normalised.max(axis=1, keepdims=True) if normalised.size else normalised
    local_max = np.zeros_like(normalised, dtype=bool)
    local_max[:, 1:-1] = (normalised[:, 1:-1] >= normalised[:, :-2]) & (normalised[:, 1:-1] >= normalised[:, 2:])
    candidates = local_max & (normalised >= SUBHARMONIC_RATIO * strongest)
    best = np.where(candidates.any(axis=1), np.argmax(candidates, axis=1), np.argmax(normalised, axis=1))
    peak = normalised[np.arange(len(best)), best]
    level = 10.0 * np.log10(energy[:, 0] / FRAME + 1e-12)
    # A parabola through the peak and its neighbours: the lag to a fraction of a sample (at
    # 8 kHz one sample is half a semitone at 250 Hz).
    rows = np.arange(len(best))
    inner = np.clip(best, 1, normalised.shape[1] - 2)
    before, at, after = normalised[rows, inner - 1], normalised[rows, inner], normalised[rows, inner + 1]
    curvature = before - 2.0 * at + after
    shift = np.where(curvature < 0, 0.5 * (before - after) / np.where(curvature < 0, curvature, -1.0), 0.0)
    return level, peak, inner + np.clip(shift, -0.5, 0.5) + low


def compare_pitch(query: np.ndarray, entry: np.ndarray, offset_frames: int) -> PitchVerdict:
    """Judge two contours aligned at `offset_frames` (query frame k ~ entry frame k + offset).

    The burst is the worst 200 ms of time (not of shared frames), judged on the mean *signed*
    difference: a copy's tracker errors are short and of either sign, so they cancel over a
    syllable, while a changed tone shifts every frame of it the same way. Measured on the
    minimal-pair corpus (bench/README.md): copies' bursts stay at or under 1.0 semitone (the
    highest through a limiter, whose distortion biases the tracker), tone pairs' start at 1.5;
    the unsigned mean over 100 ms left 2.2 for a tone pair against 1.7 for a copy."""
    q_index = np.arange(max(0, -offset_frames), min(len(query), len(entry) - offset_frames))
    if q_index.size == 0:
        return PitchVerdict(0.0, 0.0, 0)
    q, r = query[q_index].astype(np.float32), entry[q_index + offset_frames].astype(np.float32)
    entry_trusted = _trusted(r)
    both = _trusted(q) & entry_trusted & (np.abs(q - r) <= HARMONIC_ERROR_SEMITONES * _STEPS_PER_SEMITONE)
    shared = int(both.sum())
    covered = _least_covered(entry_trusted, both)
    if shared < MIN_SHARED_FRAMES:
        return PitchVerdict(0.0, 0.0, shared, least_covered=covered)
    # Signed pitch-class difference in [-6, 6): an octave error is no error.
    difference = ((q[both] - r[both]) / _STEPS_PER_SEMITONE + 6.0) % 12.0 - 6.0
    # Median over three shared frames: one frame's wrong peak is the tracker, not the speech.
    difference = np.median(np.lib.stride_tricks.sliding_window_view(np.pad(difference, 1, mode="edge"), 3), axis=1)
    per_frame = np.zeros(q.size, dtype=np.float64)
    per_frame[both] = difference
    window = min(BURST_FRAMES, q.size)
    sums = np.convolve(per_frame, np.ones(window), mode="valid")
    counts = np.convolve(both.astype(np.float64), np.ones(window), mode="valid")
    means = np.where(counts >= MIN_BURST_FRAMES, np.abs(sums) / np.maximum(counts, 1.0), 0.0)
    start = int(np.argmax(means))
    frame = int(q_index[start + int(np.argmax(both[start : start + window]))])
    query_s = (frame * HOP - PAD) / RATE
    return PitchVerdict(float(means[start]), round(query_s, 3), shared, round(query_s + offset_frames * HOP / RATE, 3),
                        covered)


def _least_covered(entry_trusted: np.ndarray, both: np.ndarray) -> float:
    """`PitchVerdict.least_covered` of the aligned frames (at least one)."""
    window = min(BURST_FRAMES, entry_trusted.size)
    entry_counts = np.convolve(entry_trusted.astype(np.float64), np.ones(window), mode="valid")
    shared_counts = np.convolve(both.astype(np.float64), np.ones(window), mode="valid")
    judged = entry_counts >= MIN_BURST_FRAMES
    if not judged.any():
        return 1.0
    return float(np.min(shared_counts[judged] / entry_counts[judged]))


def _trusted(codes: np.ndarray) -> np.ndarray:
    """Voiced frames, less those a pitch tracker's error explains (see OUTLIER_SEMITONES and
    JUMP_SEMITONES) and those pinned at its ceiling (CEILING_SEMITONES)."""
    voiced = (codes > 0) & (codes < _CEILING_CODE)
    if not voiced.any():
        return voiced
    deviation = np.abs(codes.astype(np.float64) - float(np.median(codes[voiced]))) / _STEPS_PER_SEMITONE
    far = voiced & (deviation > OUTLIER_SEMITONES)
    if far.any():
        harmonic = np.min(np.abs(deviation[:, None] - HARMONIC_SEMITONES[None, :]), axis=1) <= HARMONIC_TOLERANCE
        voiced = voiced & ~(far & (harmonic | _in_short_run(far)))
    return voiced & ~_in_jumped_piece(codes, voiced)


def _in_jumped_piece(codes: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """True on the frames of a short piece of contour the tracker jumped into or out of: at most
    MAX_GLITCH_FRAMES voiced frames with no step over JUMP_SEMITONES inside, entered or left by
    such a step from a voiced neighbour (a piece bounded by unvoiced frames alone is a syllable)."""
    steps = np.abs(np.diff(codes.astype(np.float64))) > JUMP_SEMITONES * _STEPS_PER_SEMITONE
    jump = voiced[:-1] & voiced[1:] & steps  # jump[i]: between frames i and i + 1
    # Pieces: runs of voiced frames cut wherever the contour jumps.
    starts = voiced & ~np.concatenate([[False], voiced[:-1] & ~jump])
    piece = np.cumsum(starts) * voiced
    bad = np.zeros(codes.size, dtype=bool)
    if not jump.any():
        return bad
    ids, sizes = np.unique(piece[voiced], return_counts=True)
    jumped = np.zeros(int(piece.max()) + 1, dtype=bool)
    jumped[piece[:-1][jump]] = True  # a piece left by a jump...
    jumped[piece[1:][jump]] = True  # ...or entered by one
    short = np.zeros_like(jumped)
    short[ids] = sizes <= MAX_GLITCH_FRAMES
    bad[voiced] = (jumped & short)[piece[voiced]]
    return bad


def _in_short_run(flags: np.ndarray) -> np.ndarray:
    """True where `flags` is set within a run of at most MAX_GLITCH_FRAMES consecutive frames."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    short = np.zeros(flags.size, dtype=bool)
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        short[start:end] = end - start <= MAX_GLITCH_FRAMES
    return short
