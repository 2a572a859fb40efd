"""Where a recording's source held runs of samples at full scale: hard clipping.

A copy made louder until it clips (a hot microphone, a gain stage that overflowed) keeps every
word, but its loud syllables gain the harmonics that flattened peaks make: they fill the valleys
between the formants, by 4 to 10 dB over 80 ms, which the detail check reads as a changed
syllable (bench/README.md, "Clipped copies"). The clipping itself is plain to see, but only at
the source's own sample rate: a clipped stretch is a run of samples pinned at the largest value
the format holds, which resampling to 16 kHz turns into ringing. So the decoder marks it as it
goes (fingerprint/decode.py), as the 10 ms blocks of time that hold such runs, and the detail
check compares the frames over them by their peaks alone (fingerprint/detail.py,
`CLIPPED_RANGE_DB`).

Only runs of two samples or more count, and only in a recording with at least MIN_RUNS of them: a recording normalised to full scale touches it once or twice, a clipped one
hundreds of times. A source that clipped and was then encoded lossily keeps runs only where its
decoded samples still reach full scale (the decoder's output is clipped there too); elsewhere it
is not marked, and is judged as before.
"""

from __future__ import annotations

import numpy as np

# A sample this close to full scale is pinned there: 16-bit PCM's largest positive value is
# 32767 / 32768 of it, and a float source over full scale is clipped to it while decoding.
FULL_SCALE = 32767.0 / 32768.0
MIN_RUNS = 8
BLOCKS_PER_S = 100  # 10 ms blocks of time, whatever the source's rate


class ClippingMarks:
    """Runs of full-scale samples in a source decoded in pieces, kept as the 10 ms blocks of
    time that hold them (block b: [b / BLOCKS_PER_S, (b + 1) / BLOCKS_PER_S) seconds)."""

    def __init__(self) -> None:
        self._blocks: list[np.ndarray] = []
        self._runs = 0
        self._samples = 0  # source samples seen so far

    def push(self, mono: np.ndarray, source_rate: int) -> None:
        """Mark the runs in the next piece of the source (mono float, at `source_rate`); a run
        cut in two by the pieces' boundary counts as far as each piece holds it."""
        start = self._samples
        self._samples += mono.size
        pinned = np.abs(mono) >= FULL_SCALE
        if not pinned.any():
            return
        # A run's samples after its first: a sample pinned like the one before it.
        follows = pinned[1:] & pinned[:-1] & (np.sign(mono[1:]) == np.sign(mono[:-1]))
        starts = follows & ~np.concatenate(([False], follows[:-1]))
        self._runs += int(starts.sum())
        at = np.flatnonzero(follows) + start
        self._blocks.append(np.unique(at * BLOCKS_PER_S // source_rate))

    def blocks(self) -> np.ndarray:
        """The marked blocks (int64, sorted); none for a recording with fewer than MIN_RUNS runs."""
        if self._runs < MIN_RUNS or not self._blocks:
            return NO_BLOCKS
        return np.unique(np.concatenate(self._blocks))


NO_BLOCKS = np.zeros(0, dtype=np.int64)


def clipped_blocks(mono: np.ndarray, source_rate: int) -> np.ndarray:
    """`ClippingMarks.blocks` of a whole source at once."""
    marks = ClippingMarks()
    marks.push(mono, source_rate)
    return marks.blocks()
