"""A request's audio file as it reaches the pipeline: the bytes, spooled as they arrived, and
their digest, taken as they arrived so the exact tier needs no second pass over them.

The HTTP side (service/api/uploads.py) receives the multipart body into a `Spool` and hands the
pipeline an `Upload`; the CLI and tests make one from bytes already in memory. Living here, below
the API, the pipeline takes an upload without importing the layer that reads HTTP.
"""

from __future__ import annotations

import io
import tempfile
from typing import BinaryIO

from earmark.fingerprint.canonical import bytes_digest

SPOOL_IN_MEMORY_BYTES = 2 * 1024 * 1024  # larger files go to a temporary file as they arrive


class Spool:
    """Bytes as they arrive: the pieces themselves while small (an exact hit never needs them
    joined), a temporary file once over `SPOOL_IN_MEMORY_BYTES`."""

    def __init__(self) -> None:
        self._pieces: list[bytes | memoryview] = []
        self._size = 0
        self._file: BinaryIO | None = None

    def write(self, piece: bytes | memoryview) -> None:
        """Add the next bytes (kept by reference while in memory: do not modify them)."""
        self._size += len(piece)
        if self._file is None and self._size > SPOOL_IN_MEMORY_BYTES:
            self._file = tempfile.TemporaryFile()
            self._file.writelines(self._pieces)
            self._pieces = []
        if self._file is not None:
            self._file.write(piece)
        else:
            self._pieces.append(piece)

    def open(self) -> BinaryIO:
        """The bytes as a file, from the start (one reader at a time)."""
        if self._file is None:
            self._file = io.BytesIO(b"".join(self._pieces))
            self._pieces = []
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        """Drop the bytes (a temporary file is deleted)."""
        self._pieces = []
        if self._file is not None:
            self._file.close()


class Upload:
    """The audio file of a request: its digest, taken as the bytes arrived, and the bytes."""

    def __init__(self, spool: Spool, digest: str, size: int) -> None:
        self._spool = spool
        self.digest = digest
        self.size = size

    @classmethod
    def from_bytes(cls, data: bytes) -> Upload:
        """An upload that is already in memory (the CLI, tests)."""
        spool = Spool()
        spool.write(data)
        return cls(spool, bytes_digest(data), len(data))

    def open(self) -> BinaryIO:
        """The bytes as a file, from the start (one reader at a time)."""
        return self._spool.open()

    def close(self) -> None:
        """Drop the bytes (a temporary file is deleted)."""
        self._spool.close()
