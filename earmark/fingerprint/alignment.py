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
    single block's offset could be chance); [] when none. A block may lie at several offsets
    (a sentence the entry holds twice), so runs at different offsets may overlap: a run goes on
    through a block that also matches elsewhere."""
    if len(query.bits) < 2 * BLOCK_FRAMES or len(entry.bits) == 0:
        return []
    runs: list[Run] = []
    open_runs: list[int] = []  # indices into runs that reached the previous block
    for block, offsets in enumerate(_block_offsets(query, entry)):
        start, end = block * BLOCK_FRAMES, min(len(query.bits), (block + 1) * BLOCK_FRAMES)
        still_open = []
        for offset, votes in offsets:
            going = next((at for at in open_runs if abs(runs[at].offset - offset) <= OFFSET_SLACK), None)
            if going is None:
                runs.append(Run(start, end, offset, votes))
                still_open.append(len(runs) - 1)
            elif going not in still_open:
                last = runs[going]
                runs[going] = Run(last.query_start, end, last.offset if last.votes >= votes else offset, last.votes + votes)
                still_open.append(going)
        open_runs = still_open
    return sorted((run for run in runs if run.frames >= 2 * BLOCK_FRAMES), key=lambda run: (run.query_start, run.offset))


def frame_agreement(query: RobustHash, entry: RobustHash, offset: int, loudest_db: int | None = None) -> np.ndarray:
    """For each query frame, how well its hash agrees with the entry's frame at `offset` (the
    share of the bits strong on both sides that are equal), averaged over the sounding frames of
    the quarter second around it: a sounding frame with no entry frame there agrees not at all,
    and a frame with no sounding frame around it is NaN (a pause says nothing). Sounding is
    within QUIET_DB of `loudest_db` (default the query's loudest frame; a stretch cut from a
    longer query passes the whole query's)."""
    frames = len(query.bits)
    at = np.arange(frames) + offset
    inside = (at >= 0) & (at < len(entry.bits))
    sounding = np.zeros(frames, dtype=bool)
    sounding[_loud(query, loudest_db)] = True
    counted = inside & sounding
    equal = np.zeros(frames, dtype=np.float64)
    compared = np.zeros(frames, dtype=np.float64)
    mask = query.strong[counted] & entry.strong[at[counted]]
    same = ~(query.bits[counted] ^ entry.bits[at[counted]]) & mask
    equal[counted] = np.bitwise_count(same)
    compared[counted] = np.bitwise_count(mask)
    compared[sounding & ~inside] = 16  # as many bits as a frame's strong half: none equal
    window = np.ones(AGREEMENT_FRAMES)
    totals = np.convolve(compared, window, mode="same")
    return np.where(totals > 0, np.convolve(equal, window, mode="same") / np.maximum(totals, 1), np.nan)


def _block_offsets(query: RobustHash, entry: RobustHash) -> list[list[tuple[int, int]]]:
    """Each query block's offsets with their votes: the best, when it wins clearly over chance
    (MIN_VOTES, and MIN_LEAD times anything that is not within MIN_LEAD of it), and any other
    within MIN_LEAD of it (the same sound elsewhere in the entry); [] for a block with none. The
    votes are counted sparsely: an hour against an hour has millions of possible offsets per
    block, and only the few hundred a block's matching keys name hold any."""
    query_frames, entry_frames = _loud(query), _loud(entry)
    blocks = (len(query.bits) + BLOCK_FRAMES - 1) // BLOCK_FRAMES
    span = len(entry.bits) + len(query.bits) + 2  # offsets shifted to be positive, with room either side
    voted = [_matching_pairs(query, entry, query_frames, entry_frames, shift, mask) for shift, mask in _KEYS]
    matched_query = np.concatenate([pairs[0] for pairs in voted])
    matched_entry = np.concatenate([pairs[1] for pairs in voted])
    best: list[list[tuple[int, int]]] = [[] for _ in range(blocks)]
    if len(matched_query) == 0:
        return best
    codes, counts = np.unique((matched_query // BLOCK_FRAMES) * span + (matched_entry - matched_query + len(query.bits) + 1),
                              return_counts=True)
    # A codec's jitter splits a true offset's votes between neighbours: each offset counts its own and theirs.
    smoothed = counts + _count_at(codes, counts, codes - 1) + _count_at(codes, counts, codes + 1)
    block_of = codes // span
    edges = np.flatnonzero(np.diff(np.concatenate(([-1], block_of, [blocks]))))
    for first, stop in zip(edges[:-1], edges[1:], strict=True):
        offsets, votes = codes[first:stop] % span, smoothed[first:stop]
        chosen: list[tuple[int, int]] = []
        for at in np.argsort(-votes, kind="stable"):
            if votes[at] < MIN_VOTES or (chosen and MIN_LEAD * votes[at] < chosen[0][1]):
                break
            if all(abs(int(offsets[at]) - offset) > 2 * OFFSET_SLACK + 1 for offset, _ in chosen):
                chosen.append((int(offsets[at]), int(votes[at])))
        # Clear of chance by construction: every offset not chosen (nor beside one) has under
        # 1 / MIN_LEAD of the best's votes.
        best[int(block_of[first])] = [(offset - len(query.bits) - 1, count) for offset, count in chosen]
    return best


def _matching_pairs(query: RobustHash, entry: RobustHash, query_frames: np.ndarray, entry_frames: np.ndarray,
                    shift: int, mask: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (query frame, entry frame) pair whose key (the bits at `shift` under `mask`) is
    equal, without a Python loop."""
    entry_keys = (entry.bits[entry_frames] >> shift) & mask
    order = np.argsort(entry_keys, kind="stable")
    sorted_keys, sorted_frames = entry_keys[order], entry_frames[order]
    query_keys = (query.bits[query_frames] >> shift) & mask
    low = np.searchsorted(sorted_keys, query_keys, side="left")
    matches = np.searchsorted(sorted_keys, query_keys, side="right") - low
    which = np.repeat(np.arange(len(query_frames)), matches)
    within = np.arange(len(which)) - np.repeat(np.cumsum(matches) - matches, matches)
    return query_frames[which], sorted_frames[np.repeat(low, matches) + within]


def _count_at(codes: np.ndarray, counts: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The count of each `wanted` code (0 for a code not in the sorted `codes`)."""
    at = np.minimum(np.searchsorted(codes, wanted), len(codes) - 1)
    return np.where(codes[at] == wanted, counts[at], 0)


def _loud(hashed: RobustHash, loudest_db: int | None = None) -> np.ndarray:
    """Indices of the frames that hold sound (within QUIET_DB of the loudest, or of `loudest_db`)."""
    levels = hashed.level_db.astype(np.int16)
    if len(levels) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(levels > (int(levels.max()) if loudest_db is None else loudest_db) - QUIET_DB)
