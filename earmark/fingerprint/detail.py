"""Syllable-scale spectral detail, to tell a copy from a minimal pair.

The robust hash is built to survive codecs, so it is nearly blind to what separates "Ben" from
"Ken" or "eighteen" from "eighty": a 30 to 150 ms change in one word of an otherwise identical
utterance (same voice, same timing). Those are the pairs a cache must never confuse. This
module keeps, beside the hash, a fine log-mel spectrum (16 bands over the telephone band,
25 ms frames every 10 ms) and compares two aligned recordings frame by frame:

- both spectra are clamped at a common per-band floor (the louder of the two recordings' noise
  floors), so a noisy copy is compared only where its original rises above that noise;
- the per-frame distance is the mean absolute dB difference over the bands;
- a copy spreads its codec's distortion over the whole recording, so its distance varies around
  its own median; a changed syllable, a dropped word or a cut end concentrates a burst of
  distance in under a tenth of a second. The verdict is the worst ~80 ms stretch's distance
  above the recording's median (`burst_db`), less what the codec's own level of distortion
  explains (`excess_db`); each band's steady offset (the line's frequency response) is
  equalised away first.

A limiter or compressor (a "louder" copy held under full scale) is the exception: it fills the
spectrum's valleys in the loud syllables, which both bursts a copy's loudest syllable and
raises the median that excuses a pair's changed one. It also compresses the level: quiet frames
come up against the loud ones, which no codec does. When the two recordings' levels disagree
that way, only the top 30 dB under each frame's peak are compared (where the fill does not
reach), each frame's own gain is taken out (a compressor's gain moves within a syllable, and
lifts quiet sounds out of the noise floor), and the burst is held to a stricter limit.

Measured on the minimal-pair corpus (bench/README.md): re-encoded copies, telephone codecs
included, stay under about 6 dB of excess, pairs differing in one vowel start at 7 dB.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

import numpy as np
import scipy.fft

from earmark.fingerprint.clipping import BLOCKS_PER_S
from earmark.fingerprint.decode import SAMPLE_RATE
from earmark.fingerprint.framing import Framer
from earmark.fingerprint.medians import median as median_of
from earmark.fingerprint.medians import row_medians
from earmark.fingerprint.rows import RowStore
from earmark.fingerprint.mel import mel_filter_bank

# These shape the stored bytes (with _STEPS_PER_DB and _OFFSET_DB below): changing one needs a new
# FingerprintConfig.version (fingerprint/config.py). The constants after them only judge.
HOP = 160  # 10 ms: the grid fingerprint/pitch.py shares
WINDOW = 400  # 25 ms, also the padding before frame 0
N_FFT = 512
BANDS = 16
LOW_HZ, HIGH_HZ = 250.0, 3800.0  # what an 8 kHz telephone copy keeps
# The band above it, stored beside it on the same frames (`wide_spectrum`): where a cut end may
# lie that the telephone band does not reach (the final /s/ of "seven of hearts"), for the
# missing-speech check (fingerprint/missing_speech.py, `missing_wide_speech`). Codes as the
# detail spectrum's, relative to its own loud frames.
WIDE_BANDS = 6
WIDE_LOW_HZ, WIDE_HIGH_HZ = 3800.0, 7900.0
# Stored as uint8 in half-dB steps, relative to the recording's loud frames (0 dB); anything
# more than 120 dB down is digital silence.
_STEPS_PER_DB = 2.0
_OFFSET_DB = 120.0
# A band is compared only above the louder of the two recordings' floors (its 10th percentile
# over time) plus this margin, and never below this level under the loud frames.
FLOOR_MARGIN_DB = 3.0
LOWEST_FLOOR_DB = -60.0
# Frames of one recording with no counterpart in the other count as this distance: about what
# a syllable scores against silence.
UNMATCHED_DB = 20.0
# ...when it rises this far above the common floor in some band: speech, not room tone (real
# recordings, bench/README.md: 10 dB let a cut through that took 60 ms of a weak /f/).
UNMATCHED_ABOVE_FLOOR_DB = 8.0
BURST_FRAMES = 8  # ~80 ms: the core of a syllable
# How much of a burst the recording's median difference explains (bench/README.md: 1.5 kept
# every G.726 and 16 kbps MP3 copy but 11 of 5,200 under the threshold, and every pair above).
MEDIAN_WEIGHT = 1.5
REFINE_FRAMES = 4  # +-40 ms around the hash's alignment
# The allowance (the median distance) is taken with each 0.2 s at its own alignment, within
# +-20 ms of the recording's (`_locally_aligned_median`): 137 of the 588 weak-consonant pairs
# served before are refused, and none of 7,740 copies on three benchmarks (bench/README.md).
LOCAL_BLOCK_FRAMES = 20
LOCAL_REACH_FRAMES = 2
# A burst whose loudest frame, on either side, is more than this under the recording's loud
# frames (their 98th percentile) is a quiet one (`DetailVerdict.loud_burst`).
LOUD_BURST_DB = -1.0
# The query's detail spectrum is also compared with its frames started this many samples later
# (2.5, 5 and 7.5 ms: `compare_detail_phased`), and judged at the phase that aligns best.
PHASES = (40, 80, 120)
# Level compression: how much more the frames 12 to 30 dB under the loud ones gained than the
# loud ones did, either way round (bench/README.md: sox's limiter 1.4 to 2.9 dB; G.726 up to
# 0.9 and 16 kbps MP3 up to 0.7, whose distortion the stricter judgement would not forgive;
# Opus 8k and G.723.1 up to 1.5 and 2.4, which pass it).
COMPRESSION_DB = 0.8
_QUIET_DB, _MIDDLE_DB, _LOUD_DB = -30.0, -12.0, -3.0
# A level-compressed pair of recordings is compared only this far under each frame's peak...
LIMITED_RANGE_DB = 30.0
# ...with the codec allowance of a clean line and the excess counted this many times: limited
# copies stay under 2.4 dB there, limited minimal pairs start at 4.4 (threshold 3.4 dB).
LIMITED_MEDIAN_WEIGHT = 1.0
LIMITED_EXCESS_WEIGHT = 1.7
# A compressor moves a frame's level by up to about its compression, plus this.
GAIN_SLACK_DB = 6.0
# Loud added noise lifts a copy's quiet frames against its loud ones as a compressor does, and
# the level-compressed comparison (each frame's top 30 dB, its gain taken out) then compares
# noise with noise: a reading whose final /s/ was cut off scored 0.78 there under white noise
# at 10 dB SNR. Where the query's noise floor rose this much over the entry's (mean over bands),
# the pair is also judged plainly and the worse verdict decides (`DetailVerdict.unlevelled`).
# At 25 dB no verdict of the channel or minimal-pair benchmarks changed (bench/README.md, sixth
# pass); at 10, copies through a real compressor or compander under noise were refused too.
NOISE_RISE_DB = 25.0
# Frames over a source's runs at full scale (hard clipping: fingerprint/clipping.py) are
# compared by their peaks alone: each band raised to at least this far under the frame's
# loudest, on both sides, so that the harmonics clipping adds between the formants are out of
# the comparison, while the formants themselves (a changed vowel's) are still compared.
CLIPPED_RANGE_DB = 25.0
# ...but only where at most this share of the query's speech frames lie over its clipping: with
# more, too little of each syllable is left unclipped to tell a copy from a changed one, and the
# recording is judged as if unmarked.
MAX_CLIPPED_SHARE = 0.5


@dataclass(frozen=True)
class DetailVerdict:
    """The worst syllable-sized stretch: how far its distance rises above the recording's own."""

    burst_db: float  # the worst ~80 ms stretch's distance above the allowance
    median_db: float  # the recording's own level of difference at one alignment: how coarse its line is
    query_s: float  # where that stretch starts in the query
    entry_s: float  # ...and in the entry
    offset_frames: int = 0  # the refined alignment: query frame k ~ entry frame k + offset_frames
    compression_db: float = 0.0  # how much more the query's quiet frames gained than its loud ones
    limited: bool = False  # judged as a level-compressed pair: the top LIMITED_RANGE_DB of each frame
    # The codec's own distortion, which the burst is measured over and excused by: the median
    # with each 0.2 s at its own alignment (`_locally_aligned_median`); None: median_db.
    allowance_db: float | None = None
    # Whether the burst reaches, on both sides, within LOUD_BURST_DB of the recording's loud
    # frames: where clipping and limiting distort a copy. A quieter burst (a weak consonant) is
    # held to a stricter limit (service/pipeline/verification.py, `detail_score_of`).
    loud_burst: bool = True
    # A level-compressed pair whose query's noise floor rose over NOISE_RISE_DB: the same pair
    # judged without levelling, which the verification takes when it scores lower. None otherwise.
    unlevelled: DetailVerdict | None = None
    # Whether the query's frames over its hard clipping were compared by their peaks alone
    # (`CLIPPED_RANGE_DB`).
    clipped: bool = False

    @property
    def rest_db(self) -> float:
        """The level of difference the burst is measured over and excused by."""
        return self.median_db if self.allowance_db is None else self.allowance_db

    @property
    def excess_db(self) -> float:
        """The burst beyond what the codec's own distortion explains: a coarse codec (G.726,
        16 kbps MP3) also distorts more at onsets, in proportion to its median. A limited
        comparison has no coarse codec to excuse and counts its excess more."""
        if self.limited:
            return LIMITED_EXCESS_WEIGHT * max(0.0, self.burst_db - LIMITED_MEDIAN_WEIGHT * self.rest_db)
        return max(0.0, self.burst_db - MEDIAN_WEIGHT * self.rest_db)


@lru_cache(maxsize=1)
def _mel_matrix() -> np.ndarray:
    return mel_filter_bank(SAMPLE_RATE, N_FFT, BANDS, LOW_HZ, HIGH_HZ).T


@lru_cache(maxsize=1)
def _wide_mel_matrix() -> np.ndarray:
    return mel_filter_bank(SAMPLE_RATE, N_FFT, WIDE_BANDS, WIDE_LOW_HZ, WIDE_HIGH_HZ).T


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    return np.hanning(WINDOW).astype(np.float32)


class DetailSpectrum:
    """`detail_spectrum` of a signal pushed in pieces; with `phase`, its frames start so many
    samples later (`detail_phases`); with `wide`, the `wide_spectrum` too, from the same frames
    (`finish` leaves it in `wide`)."""

    def __init__(self, phase: int = 0, wide: bool = False) -> None:
        self.phase = phase
        self._framer = Framer(WINDOW, HOP, WINDOW - phase, WINDOW)
        self._levels = RowStore(BANDS, np.float32)  # every frame's, until the loud frames' level is known
        self._wide_levels = RowStore(WIDE_BANDS, np.float32) if wide else None
        self.wide: np.ndarray | None = None

    def push(self, pcm_16k: np.ndarray) -> None:
        """Add the next samples (16 kHz mono float)."""
        for block in self._framer.push(pcm_16k):
            self._add(block)

    def finish(self) -> np.ndarray:
        """(frames, BANDS) uint8 log-mel levels in half-dB steps relative to the loud frames."""
        for block in self._framer.finish():
            self._add(block)
        if self._wide_levels is not None:
            self.wide = _codes(self._wide_levels)
        return _codes(self._levels)

    def _add(self, frames: np.ndarray) -> None:
        spectrum = scipy.fft.rfft(frames * _window(), n=N_FFT, axis=1, workers=1)
        power = spectrum.real**2 + spectrum.imag**2
        self._levels.append(10.0 * np.log10(power @ _mel_matrix() + 1e-12))
        if self._wide_levels is not None:
            self._wide_levels.append(10.0 * np.log10(power @ _wide_mel_matrix() + 1e-12))


def _codes(levels: RowStore) -> np.ndarray:
    """Every row of `levels` (dB) in half-dB uint8 steps relative to the loud frames (the 99th
    percentile of the frames' loudest bands); the store is emptied."""
    if levels.rows == 0:
        return np.zeros((0, levels.width), dtype=np.uint8)
    reference = float(np.percentile(np.concatenate([rows.max(axis=1) for rows in levels.peek()]), 99))
    codes = [np.clip(np.round((rows - reference + _OFFSET_DB) * _STEPS_PER_DB), 0, 255).astype(np.uint8)
             for rows in levels.drain()]
    return np.concatenate(codes)


def detail_spectrum(pcm_16k: np.ndarray) -> np.ndarray:
    """(frames, BANDS) uint8 log-mel levels in half-dB steps relative to the loud frames."""
    stream = DetailSpectrum()
    stream.push(pcm_16k)
    return stream.finish()


def wide_spectrum(pcm_16k: np.ndarray) -> np.ndarray:
    """(frames, WIDE_BANDS) uint8 levels of the band above the detail spectrum's, on its frames
    and in its codes (relative to this band's own loud frames)."""
    return detail_and_wide_spectra(pcm_16k)[1]


def detail_and_wide_spectra(pcm_16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`detail_spectrum` and `wide_spectrum`, from one pass over the same frames (the FFT is
    most of either)."""
    stream = DetailSpectrum(wide=True)
    stream.push(pcm_16k)
    detail = stream.finish()
    assert stream.wide is not None
    return detail, stream.wide


def wide_band_name() -> str:
    """How a reason names the wide spectrum's band."""
    return f"above the telephone band ({WIDE_LOW_HZ / 1000:.1f}-{WIDE_HIGH_HZ / 1000:.1f} kHz)"


def detail_phases(pcm_16k: np.ndarray) -> tuple[np.ndarray, ...]:
    """The detail spectrum with its frames started PHASES samples later (one spectrum per phase):
    the query's side of a comparison at a finer alignment than the 10 ms hop
    (`compare_detail_phased`). Never stored."""
    streams = [DetailSpectrum(phase) for phase in PHASES]
    for stream in streams:
        stream.push(pcm_16k)
    return tuple(stream.finish() for stream in streams)


def clipped_frames(blocks: np.ndarray, frames: int) -> np.ndarray | None:
    """Which of a recording's `frames` detail frames lie over its clipped 10 ms blocks (a
    boolean mask; fingerprint/clipping.py), with a frame either side for the resampler's
    spread; None when none do."""
    if blocks.size == 0:
        return None
    # Frame k spans the samples [k * HOP - WINDOW, k * HOP): a 10 ms block b lies in frames b + 1 to b + 3.
    first = blocks * SAMPLE_RATE // (BLOCKS_PER_S * HOP)
    spread = (first[:, None] + np.arange(0, WINDOW // HOP + 3)[None, :]).reshape(-1)
    mask = np.zeros(frames, dtype=bool)
    mask[spread[spread < frames]] = True
    return mask if mask.any() else None


def compare_detail_phased(query: np.ndarray, phases: tuple[np.ndarray, ...], entry: np.ndarray,
                          offset_s: float, clipped: np.ndarray | None = None) -> tuple[DetailVerdict, DetailVerdict]:
    """`compare_detail` at the stored phase and at the query's `phases` (`detail_phases`):
    (the verdict at the stored phase, the verdict at the phase whose median distance is the
    least). A copy keeps its timing to the sample, but its delay (an encoder's, a pad's) is
    rarely a whole 10 ms hop; neither is a minimal pair's drift after its changed phone, and
    at the wrong phase the frames straddle every transition differently, which raises the
    median that excuses the pair's changed syllable (bench/README.md, "Weak consonants").
    `clipped`: the query's clipped 10 ms blocks (`clipped_frames`), compared by their peaks."""
    r = _Levels(decibels(entry))  # the entry's side, the same at every phase
    q = _Levels(decibels(query))
    mask = None if clipped is None else clipped_frames(clipped, len(query))
    if mask is not None:
        speech = _speech_frames(q.db, q.floor)
        if not speech.any() or (mask & speech).sum() > MAX_CLIPPED_SHARE * speech.sum():
            mask = None
    stored = _compare(q, r, offset_s, mask)
    best = stored
    for phase, spectrum in zip(PHASES[:len(phases)], phases, strict=True):  # none: the stored phase alone
        verdict = _compare(_Levels(decibels(spectrum)), r, offset_s + phase / SAMPLE_RATE, mask)
        if verdict.median_db < best.median_db:
            shift = phase / SAMPLE_RATE  # a phased frame k starts this much after frame k
            best = replace(verdict, query_s=round(verdict.query_s + shift, 3))
    return stored, best


def detail_from_bytes(raw: bytes) -> np.ndarray | None:
    """Inverse of `ndarray.tobytes()` on a `detail_spectrum` result; None for a damaged value."""
    if len(raw) % BANDS:
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, BANDS)


def wide_from_bytes(raw: bytes) -> np.ndarray | None:
    """Inverse of `ndarray.tobytes()` on a `wide_spectrum` result; None for a damaged value, and
    for none at all (an entry stored before the wide spectrum was)."""
    if not raw or len(raw) % WIDE_BANDS:
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, WIDE_BANDS)


def compare_detail(query: np.ndarray, entry: np.ndarray, offset_s: float) -> DetailVerdict:
    """Judge two detail spectra aligned at `offset_s` (query time t ~ entry time t + offset_s)."""
    return _compare(_Levels(decibels(query)), _Levels(decibels(entry)), offset_s)


class _Levels:
    """A detail spectrum in dB (`db`) with what a comparison derives from it alone, each
    computed on first use and kept: an entry's are the same at every phase of the query."""

    def __init__(self, db: np.ndarray) -> None:
        self.db = db

    @cached_property
    def floor(self) -> np.ndarray:
        """`noise_floor`."""
        return noise_floor(self.db)

    @cached_property
    def frame_levels(self) -> np.ndarray:
        """`frame_levels`."""
        return frame_levels(self.db)

    @cached_property
    def relative(self) -> np.ndarray:
        """Each frame's level relative to the recording's loud frames (their 98th percentile)."""
        return self.frame_levels - np.percentile(self.frame_levels, 98)

    @cached_property
    def top_range(self) -> _Levels:
        """`_top_range`."""
        return _Levels(_top_range(self.db))


def _compare(q: _Levels, r: _Levels, offset_s: float, clipped: np.ndarray | None = None) -> DetailVerdict:
    """`compare_detail` of two spectra in dB; `clipped`, a mask over the query's frames
    (`clipped_frames`), or None."""
    if len(q.db) == 0 or len(r.db) == 0:
        return DetailVerdict(UNMATCHED_DB, 0.0, 0.0, 0.0)
    verdict = _worst_stretch(q, r, offset_s, clipped=clipped)
    compression = _compression_db(q, r, verdict.offset_frames, verdict.query_s)
    if abs(compression) < COMPRESSION_DB:
        return replace(verdict, compression_db=round(compression, 2))
    # Each query frame brought to its counterpart's level before the floors are applied, and
    # the floor raised by the compression: what the compressor lifted out of the noise stays
    # under it on both sides.
    gains = _frame_gains(q.db, r.db, verdict.offset_frames, abs(compression) + GAIN_SLACK_DB)
    levelled = _Levels(q.top_range.db - gains[:, None])
    limited = _worst_stretch(levelled, r.top_range, offset_s, compression_db=abs(compression), clipped=clipped)
    noisy = float(np.mean(q.floor - r.floor)) > NOISE_RISE_DB
    unlevelled = replace(verdict, compression_db=round(compression, 2)) if noisy else None
    return replace(limited, compression_db=round(compression, 2), limited=True, unlevelled=unlevelled)


def decibels(codes: np.ndarray) -> np.ndarray:
    """A stored detail spectrum's levels in dB relative to its loud frames."""
    return codes.astype(np.float32) / _STEPS_PER_DB - _OFFSET_DB


def _worst_stretch(q_levels: _Levels, r_levels: _Levels, offset_s: float, compression_db: float = 0.0,
                   clipped: np.ndarray | None = None) -> DetailVerdict:
    """The worst ~80 ms stretch of two dB spectra, over the alignment (within REFINE_FRAMES of
    `offset_s`) that makes their median distance smallest. For a level-compressed pair
    (`compression_db` > 0) the floor is raised by the compression and each frame's own gain is
    taken out (`_aligned_distances`); the query's `clipped` frames are compared by their peaks."""
    q, r = q_levels.db, r_levels.db
    q_floor, r_floor = q_levels.floor + compression_db, r_levels.floor + compression_db
    floor = np.maximum(q_floor, r_floor)
    # Only speech without a counterpart is a missing word: room tone trimmed off an end is not.
    # Where one recording has no frames at all, the other's noise hides nothing, so its frames
    # there are judged against its own floor: a word cut off the end of a noisy copy is still
    # speech missing from it, however loud the copy's noise.
    q_alone, r_alone = _speech_frames(q, q_floor), _speech_frames(r, r_floor)
    q, r = np.maximum(q, floor), np.maximum(r, floor)
    q_sound, r_sound = (q > floor).any(axis=1), (r > floor).any(axis=1)
    q_speech, r_speech = _speech_frames(q, floor), _speech_frames(r, floor)
    frame_gain = compression_db > 0
    center = int(round(offset_s * SAMPLE_RATE / HOP))
    best: tuple[float, np.ndarray, np.ndarray, int] | None = None
    aligned: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for offset in range(center - REFINE_FRAMES, center + REFINE_FRAMES + 1):
        distances, q_index = _aligned_distances(q, r, (q_sound, q_speech, q_alone), (r_sound, r_speech, r_alone),
                                                offset, frame_gain, clipped)
        if distances.size == 0:
            continue
        aligned[offset] = (distances, q_index)
        median = float(median_of(distances))
        if best is None or median < best[0]:
            best = (median, distances, q_index, offset)
    if best is None:
        return DetailVerdict(UNMATCHED_DB, 0.0, 0.0, 0.0)
    median, distances, q_index, offset = best
    # The allowance: never more than the one alignment's median, so that this can only refuse.
    allowance = median if frame_gain else min(median, _locally_aligned_median(aligned, offset))
    if distances.size <= BURST_FRAMES:
        start, worst = 0, float(distances.mean())
    else:
        sums = np.convolve(distances, np.ones(BURST_FRAMES) / BURST_FRAMES, mode="valid")
        start, worst = int(np.argmax(sums)), float(sums.max())
    seconds = (int(q_index[start]) * HOP - WINDOW) / SAMPLE_RATE  # frame k starts WINDOW samples early
    burst = q_index[start:start + BURST_FRAMES]
    # The burst's loudness is judged on the spectra before the floors.
    loud = frame_gain or min(_loudest(q_levels.relative, burst),
                             _loudest(r_levels.relative, burst + offset)) >= LOUD_BURST_DB
    return DetailVerdict(
        burst_db=max(0.0, worst - allowance),
        median_db=median,
        query_s=round(seconds, 3),
        entry_s=round(seconds + offset * HOP / SAMPLE_RATE, 3),
        offset_frames=offset,
        allowance_db=allowance,
        loud_burst=bool(loud),
        clipped=clipped is not None,
    )


def _locally_aligned_median(aligned: dict[int, tuple[np.ndarray, np.ndarray]], offset: int) -> float:
    """The median distance with each LOCAL_BLOCK_FRAMES of `offset`'s compared frames taken at
    its own best alignment within LOCAL_REACH_FRAMES of `offset`: a copy's distortion, not
    the drift an edit leaves behind it.

    A codec keeps a recording's timing to the sample, so one offset aligns a copy everywhere.
    A minimal pair does not: a changed phone is a few milliseconds longer or shorter, and
    everything after it is misaligned by that much, which raises the median distance and, with
    it, the allowance the changed syllable is judged with (bench/README.md, "Weak
    consonants"). `aligned` maps each offset tried to its (distances, query frame indices);
    a frame an offset does not compare counts as UNMATCHED_DB there."""
    reference = aligned[offset][1]
    lookup = {}
    for candidate, (distances, q_index) in aligned.items():
        if abs(candidate - offset) <= LOCAL_REACH_FRAMES:
            dense = np.full(reference.size, UNMATCHED_DB, dtype=np.float32)
            position = np.searchsorted(reference, q_index)
            found = (position < reference.size) & (reference[np.minimum(position, reference.size - 1)] == q_index)
            dense[position[found]] = distances[found]
            lookup[candidate] = dense
    stacked = np.stack(list(lookup.values()))  # (offsets, frames)
    blocks = np.arange(reference.size) // LOCAL_BLOCK_FRAMES
    # Each block's sum per offset, its frames added in order (zeros pad the last block).
    padded = np.zeros((stacked.shape[0], (int(blocks[-1]) + 1) * LOCAL_BLOCK_FRAMES), dtype=np.float64)
    padded[:, :reference.size] = stacked
    framed = padded.reshape(stacked.shape[0], -1, LOCAL_BLOCK_FRAMES)
    sums = framed[:, :, 0].copy()
    for column in range(1, LOCAL_BLOCK_FRAMES):
        sums += framed[:, :, column]
    chosen = np.argmin(sums, axis=0)[blocks]  # each frame's block's best offset (row of `stacked`)
    return float(median_of(stacked[chosen, np.arange(reference.size)]))


def _loudest(levels: np.ndarray, frames: np.ndarray) -> float:
    """The loudest of `frames` (indices, any out of range ignored) in `levels`; -inf for none."""
    inside = frames[(frames >= 0) & (frames < len(levels))]
    return float(levels[inside].max()) if inside.size else float("-inf")


def noise_floor(spectrum: np.ndarray) -> np.ndarray:
    """Per band, a recording's noise floor (10th percentile over time, never under
    LOWEST_FLOOR_DB), plus FLOOR_MARGIN_DB."""
    return np.maximum(np.percentile(spectrum, 10, axis=0), LOWEST_FLOOR_DB) + FLOOR_MARGIN_DB


def _common_floor(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per band, the louder of the two recordings' noise floors (`noise_floor`): only what
    rises above it is compared."""
    return np.maximum(noise_floor(q), noise_floor(r))


def _speech_frames(spectrum: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Frames with a band UNMATCHED_ABOVE_FLOOR_DB over `floor`: speech, not room tone."""
    return np.asarray((spectrum > floor + UNMATCHED_ABOVE_FLOOR_DB).any(axis=1))


def overlap(q: np.ndarray, r: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """The query frames that have a counterpart at `offset` (query k ~ entry k + offset), and
    those counterparts' indices."""
    q_index = np.arange(max(0, -offset), max(0, min(len(q), len(r) - offset)))
    return q_index, q_index + offset


def _compression_db(q: _Levels, r: _Levels, offset: int, burst_s: float | None = None) -> float:
    """How much more the query's quiet speech frames (12 to 30 dB under the loud ones) gained
    against the entry than its loud frames did: positive when the query went through a limiter
    or compressor, negative when the entry did, near 0 for any codec.

    `burst_s`: where the plain comparison's worst ~80 ms starts in the query. Measured again
    without its frames (when enough loud and quiet frames remain), the lesser of the two
    compressions is taken: a compressor's gain holds over the whole recording, while a changed
    loud syllable moves the loud frames' gain by itself ("Don" / "Dan" through Opus at 8 kbit/s
    read as 0.9 dB of compression, 0.5 without it). Leaving frames out can only take a reading
    of compression away, never make one: levelling hides a changed syllable's burst."""
    q_index, r_index = overlap(q.db, r.db, offset)
    q_level, r_level = q.frame_levels[q_index], r.frame_levels[r_index]
    mean = (q_level + r_level) / 2
    relative = mean - np.percentile(mean, 98) if mean.size else mean
    loud = relative > _LOUD_DB
    quiet = (relative > _QUIET_DB) & (relative < _MIDDLE_DB)
    if loud.sum() < 3 or quiet.sum() < 5:
        return 0.0
    gain = q_level - r_level
    compression = float(median_of(gain[quiet]) - median_of(gain[loud]))
    if burst_s is not None:
        first = int(round((burst_s * SAMPLE_RATE + WINDOW) / HOP))  # frame k starts WINDOW samples early
        kept = (q_index < first) | (q_index >= first + BURST_FRAMES)
        if (loud & kept).sum() >= 3 and (quiet & kept).sum() >= 5:
            without = float(median_of(gain[quiet & kept]) - median_of(gain[loud & kept]))
            compression = min(compression, without, key=abs)
    return compression


def _frame_gains(q: np.ndarray, r: np.ndarray, offset: int, limit: float) -> np.ndarray:
    """Per query frame, its level over its counterpart's (the median over the bands), within
    +-limit: the gain a compressor applied there. 0 where either frame is under LOWEST_FLOOR_DB
    (a missing word is not levelled onto the speech it lacks) or has no counterpart."""
    gains = np.zeros(len(q), dtype=np.float32)
    q_index, r_index = overlap(q, r, offset)
    qs, rs = q[q_index], r[r_index]
    audible = (qs.max(axis=1) > LOWEST_FLOOR_DB) & (rs.max(axis=1) > LOWEST_FLOOR_DB)
    gains[q_index[audible]] = np.clip(row_medians(qs[audible] - rs[audible]), -limit, limit)
    return gains


def frame_levels(spectrum: np.ndarray) -> np.ndarray:
    """Each frame's total power over the bands, in dB."""
    return 10.0 * np.log10(np.power(10.0, spectrum / 10.0).sum(axis=1))


def _top_range(spectrum: np.ndarray) -> np.ndarray:
    """Each frame raised to at least LIMITED_RANGE_DB under its own peak: the valleys a limiter
    fills are out of the comparison."""
    return np.maximum(spectrum, spectrum.max(axis=1, keepdims=True) - LIMITED_RANGE_DB)


def _aligned_distances(q, r, q_masks, r_masks, offset: int, frame_gain: bool = False,
                       clipped: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame distance over the frames where either side has sound, with their query index;
    a frame with no counterpart on the other side counts (as UNMATCHED_DB) only when it holds
    speech. `q_masks` and `r_masks` are each (sound, speech, speech over the recording's own
    floor) per frame: the last judges the frames with no counterpart.

    The channel is equalised first: each band's median difference over those frames (a
    codec's or a line's frequency response, a gain) is taken out, so only what changes from
    frame to frame remains. With `frame_gain` (a limiter or compressor on one side), so is each
    frame's own level difference where both sides have sound and one holds speech: its gain
    follows the signal, while a missing word (speech against the floor) still counts in full.
    Where the query's frame is `clipped` (a mask over its frames), both frames are compared by
    their top CLIPPED_RANGE_DB alone.
    """
    q_index = np.arange(min(0, -offset), max(len(q), len(r) - offset))
    r_index = q_index + offset
    q_ok = (q_index >= 0) & (q_index < len(q))
    r_ok = (r_index >= 0) & (r_index < len(r))
    both = q_ok & r_ok
    (q_sound, q_speech, q_alone), (r_sound, r_speech, r_alone) = q_masks, r_masks
    first, last = max(0, -offset), min(len(q), len(r) - offset)  # the query frames in `both`, in order
    q_both, r_both = slice(first, last), slice(first + offset, last + offset)
    sound = np.zeros(q_index.size, dtype=bool)
    sound[both] = q_sound[q_both] | r_sound[r_both]
    q_only, r_only = q_ok & ~r_ok, r_ok & ~q_ok
    sound[q_only] = q_alone[q_index[q_only]]
    sound[r_only] = r_alone[r_index[r_only]]
    difference = q[q_both] - r[r_both]
    if clipped is not None:
        at = np.flatnonzero(clipped[q_both])
        if at.size:
            q_rows, r_rows = q[first + at], r[first + offset + at]
            difference[at] = (np.maximum(q_rows, q_rows.max(axis=1, keepdims=True) - CLIPPED_RANGE_DB)
                              - np.maximum(r_rows, r_rows.max(axis=1, keepdims=True) - CLIPPED_RANGE_DB))
    if sound[both].any():
        difference -= row_medians(difference[sound[both]].T)
    if frame_gain:
        speech = (q_speech[q_both] | r_speech[r_both]) & q_sound[q_both] & r_sound[r_both]
        if speech.any():
            difference[speech] -= row_medians(difference[speech])[:, None]
    distances = np.full(q_index.size, UNMATCHED_DB, dtype=np.float32)
    distances[both] = np.abs(difference, out=difference).mean(axis=1)
    return distances[sound], q_index[sound]


def speech_durations_s(query: np.ndarray, entry: np.ndarray) -> tuple[float, float]:
    """Each recording's speech duration, first to last frame with a band UNMATCHED_ABOVE_FLOOR_DB
    over the pair's common floor: measured alike on both, where each recording's own speech
    extent (fingerprint/speech.py) follows its own noise floor, which a codec's noise in a
    quiet room tone can move by half a second."""
    q, r = decibels(query), decibels(entry)
    if len(q) == 0 or len(r) == 0:
        return 0.0, 0.0
    floor = _common_floor(q, r)
    durations = []
    for spectrum in (q, r):
        speech = np.flatnonzero(_speech_frames(spectrum, floor))
        durations.append(0.0 if speech.size == 0 else float(speech[-1] - speech[0] + 1) * HOP / SAMPLE_RATE)
    return durations[0], durations[1]
