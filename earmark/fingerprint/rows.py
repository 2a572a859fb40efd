"""Rows a feature stream keeps until the recording ends, in memory given back as soon as they are read.

Some features are relative to the whole recording (the detail spectrum's codes to its loud
frames), so their per-frame values must be kept until the last frame has come: for an hour,
tens of megabytes a stream. Kept as many small arrays, that memory stays in the allocator's heap
after it is freed, and the whole-recording arrays made next (the hash's) come on top of it: the
lookup path of an hour held 2.5 to 2.9 times its PCM (issue 8's limit is 2x; bench/README.md,
"Long uploads"). Rows kept here live in anonymous memory maps of `SEGMENT_BYTES`, each unmapped as
soon as its rows have been read out and let go, whatever the allocator's thresholds have become.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

SEGMENT_BYTES = 1 << 20  # a map per MiB of rows: a short clip touches a page or two of one


class RowStore:
    """Rows of `width` values of `dtype`, appended in blocks and read out once, in order."""

    def __init__(self, width: int, dtype: np.dtype | type = np.float32) -> None:
        self.width = width
        self.dtype = np.dtype(dtype)
        self._rows_per_segment = max(1, SEGMENT_BYTES // (width * self.dtype.itemsize))
        self._segments: list[tuple[mmap.mmap, np.ndarray]] = []
        self._filled = 0  # rows used in the last segment
        self.rows = 0

    def append(self, block: np.ndarray) -> None:
        """Copy the (rows, width) `block` in, exactly: a block of another type is refused, not rounded."""
        if block.dtype != self.dtype or block.ndim != 2 or block.shape[1] != self.width:
            raise ValueError(f"rows of {self.width} {self.dtype} values expected, got {block.shape} {block.dtype}")
        start = 0
        while start < len(block):
            if not self._segments or self._filled == self._rows_per_segment:
                buffer = mmap.mmap(-1, self._rows_per_segment * self.width * self.dtype.itemsize)
                view = np.frombuffer(buffer, dtype=self.dtype).reshape(self._rows_per_segment, self.width)
                self._segments.append((buffer, view))
                self._filled = 0
            view = self._segments[-1][1]
            count = min(len(block) - start, self._rows_per_segment - self._filled)
            view[self._filled:self._filled + count] = block[start:start + count]
            self._filled += count
            self.rows += count
            start += count

    def peek(self) -> Iterator[np.ndarray]:
        """The rows in order, segment by segment, as views into the store's maps (kept)."""
        for index, (_, view) in enumerate(self._segments):
            yield view if index < len(self._segments) - 1 else view[:self._filled]

    def drain(self) -> Iterator[np.ndarray]:
        """The rows in order, segment by segment; the store keeps none of them, so each segment
        is unmapped as soon as the caller lets go of its view. The store is empty afterwards."""
        segments, self._segments = self._segments, []
        filled, self._filled, self.rows = self._filled, 0, 0
        while segments:
            _, view = segments.pop(0)  # the view holds its map: unmapped with the last view
            yield view if segments else view[:filled]
