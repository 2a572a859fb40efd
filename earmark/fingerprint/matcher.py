"""Verification: is the query the same recording as a candidate, from first second to last?

Equality, not similarity. The two hashes are aligned at the offset that best matches their
speech, then every stretch (about a second) of the union of both recordings' speech is scored,
and the worst stretch decides. Frames that have speech on one side only, or no counterpart at
all (a clip cut from a longer recording, a recording with more speech), count as mismatches,
so containment never passes for equality. One exception: where the candidate has no speech, a
query frame far quieter than the query's loud speech (`added_sound_below_loud_db`) is noise
that filled a pause (babble, hiss at 10 dB SNR), not a word the query added, and is not
counted; what the query lacks always is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earmark.fingerprint.config import FingerprintConfig
from earmark.fingerprint.robust_hash import RobustHash

# Search this far either side of the offset that lines up the two speech onsets: onsets are
# found from levels, which codecs and noise nudge by a few frames.
ALIGN_SEARCH_S = 0.5


@dataclass(frozen=True)
class Verification:
    """The verdict's evidence: stretch scores (1 - error rate over strong bits)."""

    worst_score: float  # worst ~1 s stretch over the union of both recordings' speech
    mean_score: float
    offset_s: float
    windows: int
    worst_short_score: float = 0.0  # worst ~0.25 s stretch where both recordings have audio
    worst_at_s: float = 0.0  # where the worst ~1 s stretch starts, in query time
    worst_short_at_s: float = 0.0  # where the worst ~0.25 s stretch starts, in query time
    # Every ~1 s stretch as (where it starts in query time, its score): the curve whose minimum
    # is worst_score, for showing a verdict (the console draws it).
    stretches: tuple[tuple[float, float], ...] = ()


def speech_mask(hash_: RobustHash, config: FingerprintConfig) -> np.ndarray:
    """Frames loud enough, relative to the recording's loudest, to count as speech."""
    levels = hash_.level_db.astype(np.float32)
    if levels.size == 0:
        return np.zeros(0, dtype=bool)
    return levels > max(float(levels.max()) - config.silence_below_peak_db, 30.0)


def verify(query: RobustHash, reference: RobustHash, config: FingerprintConfig) -> Verification:
    """Score the query against a reference over the whole of both; see the module docstring.

    Two scales: ~1 s stretches over the union of both timelines (speech with no counterpart
    counts as wrong, so containment fails), and ~0.25 s stretches where both have audio (a
    single substituted word cannot hide in an otherwise identical second). Stretches run over
    speech frames only, so pauses never dilute a difference.
    """
    aligned = _align(query, reference, config)
    if aligned is None:
        return Verification(0.0, 0.0, 0.0, 0)
    offset, errors, counted, shared, q_index = aligned
    long_scores, long_starts = _window_scores(errors[counted], config.window_frames)
    short_scores, short_starts = _window_scores(errors[counted & shared], config.short_window_frames)
    # The frames each scale's stretches run over, found once (an hour has thousands of stretches).
    counted_frames, shared_frames = np.flatnonzero(counted), np.flatnonzero(counted & shared)

    def start_time(frames: np.ndarray, start: int) -> float:
        return _query_seconds(q_index[frames[start]], config)

    def query_time(frames: np.ndarray, starts: np.ndarray, scores: np.ndarray) -> float:
        if scores.size == 0:
            return 0.0
        return start_time(frames, int(starts[int(np.argmin(scores))]))

    return Verification(
        worst_score=float(long_scores.min()),
        mean_score=float(long_scores.mean()),
        offset_s=offset / config.frames_per_second,
        windows=len(long_scores),
        worst_short_score=float(short_scores.min()) if short_scores.size else 1.0,
        worst_at_s=query_time(counted_frames, long_starts, long_scores),
        worst_short_at_s=query_time(shared_frames, short_starts, short_scores),
        stretches=tuple((start_time(counted_frames, int(start)), round(float(score), 4))
                        for start, score in zip(long_starts, long_scores, strict=True)),
    )


def stretch_scores(query: RobustHash, reference: RobustHash, config: FingerprintConfig) -> tuple[np.ndarray, np.ndarray]:
    """`verify`'s ~1 s stretch scores one by one, with where each stretch starts in query
    seconds: the curve an audit draws to show which second of a match was the worst (its
    minimum is `verify(...).worst_score`). Empty when the two have no speech to compare."""
    aligned = _align(query, reference, config)
    if aligned is None:
        return np.zeros(0), np.zeros(0)
    _, errors, counted, _, q_index = aligned
    scores, starts = _window_scores(errors[counted], config.window_frames)
    frames = q_index[np.flatnonzero(counted)[starts]] if scores.size else np.zeros(0, dtype=int)
    return np.array([_query_seconds(frame, config) for frame in frames]), scores


def _align(query: RobustHash, reference: RobustHash, config: FingerprintConfig):
    """(offset, per-frame errors, counted mask, shared mask, query frame index) of the two
    aligned at their best offset; None when either has no speech."""
    q_voiced, r_voiced = speech_mask(query, config), speech_mask(reference, config)
    if not q_voiced.any() or not r_voiced.any():
        return None
    q_first, r_first = int(np.argmax(q_voiced)), int(np.argmax(r_voiced))
    search = int(ALIGN_SEARCH_S * config.frames_per_second)
    offset = _best_offset(query, reference, q_voiced, r_voiced, r_first - q_first, search)
    q_added = _loud_enough_to_add(query, q_voiced, config)
    return (offset, *_aligned_errors(query, reference, q_voiced, r_voiced, offset, q_added))


def _loud_enough_to_add(query: RobustHash, q_voiced: np.ndarray, config: FingerprintConfig) -> np.ndarray:
    """The query's speech frames loud enough to be words it added where the candidate has none:
    within `config.added_sound_below_loud_db` of its loud speech frames (their 95th percentile)."""
    levels = query.level_db.astype(np.float32)
    loud = float(np.percentile(levels[q_voiced], 95))
    return q_voiced & (levels >= loud - config.added_sound_below_loud_db)


def _query_seconds(frame, config: FingerprintConfig) -> float:
    """A query frame's start in seconds (band_energies pads by frame - hop samples)."""
    edge = config.frame_length - config.hop_length
    return round(max(0.0, (int(frame) * config.hop_length - edge) / config.sample_rate), 3)


def _window_scores(frame_errors: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """1 - mean error of every `window`-frame stretch, stepping by half a window (the whole
    sequence when it is shorter than a window; the last stretch ends at the last frame), with
    each stretch's first index."""
    if frame_errors.size == 0:
        return np.zeros(0), np.zeros(0, dtype=int)
    if frame_errors.size <= window:
        return np.array([1.0 - frame_errors.mean()]), np.zeros(1, dtype=int)
    sums = np.convolve(frame_errors, np.ones(window), mode="valid")
    starts = np.unique(np.append(np.arange(0, sums.size, max(1, window // 2)), sums.size - 1))
    return 1.0 - sums[starts] / window, starts


def _best_offset(query: RobustHash, reference: RobustHash, q_voiced, r_voiced, center: int, search: int) -> int:
    """Offset d (query frame i ~ reference frame i + d) with the lowest strong-bit error rate."""
    best, best_rate = center, 2.0
    for offset in range(center - search, center + search + 1):
        q_lo, q_hi = max(0, -offset), min(len(query.bits), len(reference.bits) - offset)
        if q_hi - q_lo < 8:
            continue
        both = q_voiced[q_lo:q_hi] & r_voiced[q_lo + offset : q_hi + offset]
        if both.sum() < 8:
            continue
        q_slice, r_slice = slice(q_lo, q_hi), slice(q_lo + offset, q_hi + offset)
        mask = (query.strong[q_slice] & reference.strong[r_slice])[both]
        wrong = (query.bits[q_slice] ^ reference.bits[r_slice])[both] & mask
        rate = np.bitwise_count(wrong).sum() / max(1, np.bitwise_count(mask).sum())
        if rate < best_rate:
            best, best_rate = offset, rate
    return best


def _aligned_errors(query: RobustHash, reference: RobustHash, q_voiced, r_voiced, offset: int, q_added):
    """Per-frame error rates over bits strong on both sides, over the union of both timelines,
    with masks of the counted frames (the candidate's speech, and the query's where the
    candidate has none only when `q_added` says it is loud enough to be added words) and of
    the frames both share, and each position's query frame index.

    A side with no frame at that time contributes a half-wrong frame (what unrelated audio
    scores), so unmatched speech fails.
    """
    q_len, r_len = len(query.bits), len(reference.bits)
    q_idx = np.arange(min(0, -offset), max(q_len, r_len - offset))
    r_idx = q_idx + offset
    q_ok = (q_idx >= 0) & (q_idx < q_len)
    r_ok = (r_idx >= 0) & (r_idx < r_len)
    q_speech = np.zeros(q_idx.size, dtype=bool)
    r_speech = np.zeros(q_idx.size, dtype=bool)
    q_speech[q_ok] = q_added[q_idx[q_ok]]
    r_speech[r_ok] = r_voiced[r_idx[r_ok]]
    both = q_ok & r_ok
    errors = np.full(q_idx.size, 0.5, dtype=np.float64)
    mask = query.strong[q_idx[both]] & reference.strong[r_idx[both]]
    wrong = (query.bits[q_idx[both]] ^ reference.bits[r_idx[both]]) & mask
    compared = np.bitwise_count(mask).astype(np.float64)
    errors[both] = np.where(compared > 0, np.bitwise_count(wrong) / np.maximum(compared, 1.0), 0.5)
    return errors, q_speech | r_speech, both, q_idx
