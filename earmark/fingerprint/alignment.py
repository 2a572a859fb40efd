"""Where stretches of one recording lie in another: runs of frames at one time offset, found by
the robust hash's sub-fingerprints (issue 24, a stretch of a cached entry inside an upload).

An hour's meeting exported again with a stretch cut out, a clip of a cached episode, two cached
recordings joined: each is made of stretches of a cached recording, each at its own offset. The
whole-file verification cannot see them (it aligns two recordings at one offset), so this finds
the offsets first, the way Haitsma and Kalker's search does: half a frame's hash bits (16 of
its 32) is a key, and every frame of the query whose key equals a frame's of the entry votes for
the offset between them. A copy through a codec keeps most keys of most frames (the bits that
flip are the weak ones, near zero), and a true offset gathers votes frame after frame; a chance
match of two 16-bit keys lands on a random offset. The query is cut into blocks of a few
seconds, each block's votes pick its offset, and consecutive blocks at one offset make a run.

Nothing here decides a match: a run only says where to look. Each run, cut at pauses, is then
judged by the whole-file verification against that stretch of the entry (service/pipeline/
segments.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earmark.fingerprint.robust_hash import RobustHash

# A block of the query votes for one offset: ~2 s of frames (16 ms each), long enough for a
# copy's surviving keys to outvote chance, short enough that an edit costs little more.
BLOCK_FRAMES = 128
# Votes a block needs for its offset (chance gives a 2-s block about one vote at any offset
# against an hour's entry), and how far its offset must outvote the block's next best.
MIN_VOTES = 6
MIN_LEAD = 2.0
# Blocks whose offsets differ by at most this many frames belong to one run (a codec's delay
# and the frames' jitter move the best offset by a frame or two, never more).
OFFSET_SLACK = 2
# A frame quieter than the loudest by more than this is a pause: its bits are noise and vote
# for nothing.
QUIET_DB = 35
# Frames averaged for a frame's agreement (`frame_agreement`): a quarter second.
AGREEMENT_FRAMES = 16
# The two keys of a frame: its low and its high 16 bits.
_KEYS = ((0, 0xFFFF), (16, 0xFFFF))


@dataclass(frozen=True)
class Run:
    """Query frames [query_start, query_end) found at entry frame = query frame + offset."""

    query_start: int
    query_end: int
    offset: int
    votes: int

    @property
    def frames(self) -> int:
        """How many query frames the run covers."""
        return self.query_end - self.query_start


def aligned_runs(query: RobustHash, entry: RobustHash) -> list[Run]:
    """The runs of `query` found in `entry`, in query order, each at least two blocks long (a
    single block's offset could be chance); [] when none."""
    if len(query.bits) < 2 * BLOCK_FRAMES or len(entry.bits) == 0:
        return []
    best = _block_offsets(query, entry)
    runs: list[Run] = []
    for block, (offset, votes) in enumerate(best):
        if votes == 0:
            continue
        start, end = block * BLOCK_FRAMES, min(len(query.bits), (block + 1) * BLOCK_FRAMES)
        last = runs[-1] if runs else None
        if last is not None and last.query_end == start and abs(last.offset - offset) <= OFFSET_SLACK:
            runs[-1] = Run(last.query_start, end, last.offset if last.votes >= votes else offset, last.votes + votes)
        else:
            runs.append(Run(start, end, offset, votes))
    return [run for run in runs if run.frames >= 2 * BLOCK_FRAMES]


def frame_agreement(query: RobustHash, entry: RobustHash, offset: int) -> np.ndarray:
    """For each query frame, how well its hash agrees with the entry's frame at `offset` (the
    share of the bits strong on both sides that are equal), averaged over the sounding frames of
    the quarter second around it: a sounding frame with no entry frame there agrees not at all,
    and a frame with no sounding frame around it is NaN (a pause says nothing)."""
    frames = len(query.bits)
    at = np.arange(frames) + offset
    inside = (at >= 0) & (at < len(entry.bits))
    sounding = np.zeros(frames, dtype=bool)
    sounding[_loud(query)] = True
    counted = inside & sounding
    equal = np.zeros(frames, dtype=np.float64)
    compared = np.zeros(frames, dtype=np.float64)
    mask = query.strong[counted] & entry.strong[at[counted]]
    same = ~(query.bits[counted] ^ entry.bits[at[counted]]) & mask
    equal[counted] = _popcount(same)
    compared[counted] = _popcount(mask)
    compared[sounding & ~inside] = 16  # as many bits as a frame's strong half: none equal
    window = np.ones(AGREEMENT_FRAMES)
    totals = np.convolve(compared, window, mode="same")
    return np.where(totals > 0, np.convolve(equal, window, mode="same") / np.maximum(totals, 1), np.nan)


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint32."""
    return np.unpackbits(values.astype("<u4").view(np.uint8).reshape(-1, 4), axis=1).sum(axis=1)


def _block_offsets(query: RobustHash, entry: RobustHash) -> list[tuple[int, int]]:
    """Each query block's winning (offset, votes); votes 0 when no offset wins clearly."""
    query_frames, entry_frames = _loud(query), _loud(entry)
    blocks = (len(query.bits) + BLOCK_FRAMES - 1) // BLOCK_FRAMES
    span = len(entry.bits) + len(query.bits)
    counts = np.zeros((blocks, span), dtype=np.int32)
    for shift, mask in _KEYS:
        entry_keys = (entry.bits[entry_frames] >> shift) & mask
        order = np.argsort(entry_keys, kind="stable")
        sorted_keys, sorted_frames = entry_keys[order], entry_frames[order]
        query_keys = (query.bits[query_frames] >> shift) & mask
        low = np.searchsorted(sorted_keys, query_keys, side="left")
        high = np.searchsorted(sorted_keys, query_keys, side="right")
        matches = high - low
        if not matches.any():
            continue
        # Every (query frame, entry frame) pair with equal keys, without a Python loop.
        which = np.repeat(np.arange(len(query_frames)), matches)
        first = np.repeat(low, matches)
        within = np.arange(len(which)) - np.repeat(np.cumsum(matches) - matches, matches)
        matched_query = query_frames[which]
        matched_entry = sorted_frames[first + within]
        offsets = matched_entry - matched_query + len(query.bits)
        np.add.at(counts, (matched_query // BLOCK_FRAMES, offsets), 1)
    best = []
    for row in counts:
        smoothed = row + np.roll(row, 1) + np.roll(row, -1)  # a codec's jitter splits votes between neighbours
        top = int(np.argmax(smoothed))
        votes = int(smoothed[top])
        rival = smoothed.copy()
        rival[max(0, top - 2 * OFFSET_SLACK - 1) : top + 2 * OFFSET_SLACK + 2] = 0
        if votes >= MIN_VOTES and votes >= MIN_LEAD * max(1, int(rival.max())):
            best.append((top - len(query.bits), votes))
        else:
            best.append((0, 0))
    return best


def _loud(hashed: RobustHash) -> np.ndarray:
    """Indices of the frames that hold sound (within QUIET_DB of the loudest)."""
    levels = hashed.level_db.astype(np.int16)
    if len(levels) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(levels > int(levels.max()) - QUIET_DB)
