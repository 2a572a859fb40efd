"""Verification: is the query the same recording as a candidate, from first second to last?

Equality, not similarity. The two hashes are aligned at the offset that best matches their
speech, then every stretch (about a second) of the union of both recordings' speech is scored,
and the worst stretch decides. Frames that have speech on one side only, or no counterpart at
all (a clip cut from a longer recording, a recording with more speech), count as mismatches,
so containment never passes for equality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fingerprint.config import FingerprintConfig
from fingerprint.robust_hash import RobustHash

# Search this far either side of the offset that lines up the two speech onsets: onsets are
# found from levels, which codecs and noise nudge by a few frames.
ALIGN_SEARCH_S = 0.5
# A stretch with fewer counted frames than this share of a window is not judged on its own.
MIN_WINDOW_FILL = 0.25


@dataclass(frozen=True)
class Verification:
    """The verdict's evidence: worst and mean stretch scores (1 - bit error rate)."""

    worst_score: float
    mean_score: float
    offset_s: float
    windows: int


def speech_mask(hash_: RobustHash, config: FingerprintConfig) -> np.ndarray:
    """Frames loud enough, relative to the recording's loudest, to count as speech."""
    levels = hash_.level_db.astype(np.float32)
    if levels.size == 0:
        return np.zeros(0, dtype=bool)
    return levels > max(float(levels.max()) - config.silence_below_peak_db, 30.0)


def verify(query: RobustHash, reference: RobustHash, config: FingerprintConfig) -> Verification:
    """Score the query against a reference over the whole of both; see the module docstring."""
    q_voiced, r_voiced = speech_mask(query, config), speech_mask(reference, config)
    if not q_voiced.any() or not r_voiced.any():
        return Verification(0.0, 0.0, 0.0, 0)
    q_first, r_first = int(np.argmax(q_voiced)), int(np.argmax(r_voiced))
    search = int(ALIGN_SEARCH_S * config.frames_per_second)
    offset = _best_offset(query, reference, q_voiced, r_voiced, r_first - q_first, search)
    errors, counted = _aligned_errors(query, reference, q_voiced, r_voiced, offset)
    window = config.window_frames
    scores = []
    for start in range(0, max(1, len(errors) - window // 2), window // 2):
        frames = counted[start : start + window].sum()
        if frames >= window * MIN_WINDOW_FILL:
            scores.append(1.0 - errors[start : start + window].sum() / frames)
    if not scores:
        return Verification(0.0, 0.0, offset / config.frames_per_second, 0)
    return Verification(float(min(scores)), float(np.mean(scores)), offset / config.frames_per_second, len(scores))


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


def _aligned_errors(query: RobustHash, reference: RobustHash, q_voiced, r_voiced, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame error rates (over bits strong on both sides) and a counted-frame mask, over
    the union of both timelines.

    A frame counts when either side has speech there; a side with no frame at that time
    contributes a half-wrong frame (what unrelated audio scores), so unmatched speech fails.
    """
    q_len, r_len = len(query.bits), len(reference.bits)
    start = min(0, -offset)
    end = max(q_len, r_len - offset)
    span = end - start
    q_idx = np.arange(start, end)
    r_idx = q_idx + offset
    q_ok = (q_idx >= 0) & (q_idx < q_len)
    r_ok = (r_idx >= 0) & (r_idx < r_len)
    q_speech = np.zeros(span, dtype=bool)
    r_speech = np.zeros(span, dtype=bool)
    q_speech[q_ok] = q_voiced[q_idx[q_ok]]
    r_speech[r_ok] = r_voiced[r_idx[r_ok]]
    counted = q_speech | r_speech
    errors = np.full(span, 0.5, dtype=np.float64)
    both = q_ok & r_ok
    mask = query.strong[q_idx[both]] & reference.strong[r_idx[both]]
    wrong = (query.bits[q_idx[both]] ^ reference.bits[r_idx[both]]) & mask
    compared = np.bitwise_count(mask).astype(np.float64)
    errors[both] = np.where(compared > 0, np.bitwise_count(wrong) / np.maximum(compared, 1.0), 0.5)
    errors[~counted] = 0.0
    # Trim the span to where speech is, so leading/trailing silence does not dilute windows.
    speech_frames = np.flatnonzero(counted)
    lo, hi = speech_frames[0], speech_frames[-1] + 1
    return errors[lo:hi], counted[lo:hi]
