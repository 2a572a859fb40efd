"""Analysis frames from a signal that arrives in pieces, in blocks of bounded size.

Every feature of the fingerprint is computed frame by frame (a window every hop, with padding
at both ends). Framing the whole signal at once made an hour of audio cost gigabytes: the
framed copy and its spectrum are each frames x frame-length. Here the signal is pushed in any
pieces (a decoder's packets, or one whole array) and the frames come out in blocks of
`BLOCK_FRAMES` rows laid on the frame grid, never on the pieces' boundaries: the blocks, and
hence every result computed from them, are the same however the signal was cut.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Rows per block: 1,024 frames of 2,048 samples are 8 MB of float32, and the spectrum of a
# block about as much again.
BLOCK_FRAMES = 1024


class Framer:
    """Frames of `frame` samples every `hop`, with `pad_before` and `pad_after` zeros around the
    signal; the frame count equals `sliding_window_view(padded, frame)[::hop]`'s."""

    def __init__(self, frame: int, hop: int, pad_before: int = 0, pad_after: int = 0,
                 block_frames: int = BLOCK_FRAMES) -> None:
        self.frame = frame
        self.hop = hop
        self.pad_after = pad_after
        self.block_frames = block_frames
        # Samples not yet fully framed, kept as pieces until a whole block's worth has come, so
        # that small pushes (a decoder's packets) cost no copying of what is already pending.
        self._pieces: list[np.ndarray] = [np.zeros(pad_before, dtype=np.float32)]
        self._length = pad_before
        self._finished = False

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """Add samples; yield every full block of frames they complete, as (rows, frame) views."""
        if self._finished:
            raise RuntimeError("push after finish")
        step = self.block_frames * self.hop  # a long signal goes in block by block: no copy of it
        for start in range(0, samples.size, step):
            self._pieces.append(np.asarray(samples[start:start + step], dtype=np.float32))
            self._length += min(step, samples.size - start)
            if self._length >= (self.block_frames - 1) * self.hop + self.frame:
                yield from self._blocks(final=False)

    def finish(self) -> Iterator[np.ndarray]:
        """Add the trailing padding and yield the remaining frames (the last block may be short)."""
        self._finished = True
        self._pieces.append(np.zeros(self.pad_after, dtype=np.float32))
        self._length += self.pad_after
        yield from self._blocks(final=True)

    def _blocks(self, *, final: bool) -> Iterator[np.ndarray]:
        pending = np.concatenate(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
        while True:
            available = (len(pending) - self.frame) // self.hop + 1 if len(pending) >= self.frame else 0
            rows = min(available, self.block_frames)
            if rows == 0 or (rows < self.block_frames and not final):
                break
            span = (rows - 1) * self.hop + self.frame
            yield np.lib.stride_tricks.sliding_window_view(pending[:span], self.frame)[:: self.hop]
            pending = pending[rows * self.hop:]
        self._pieces = [pending]
        self._length = len(pending)
