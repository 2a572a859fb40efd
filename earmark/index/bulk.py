"""The bulk store: entries' verification bytes on disk, outside the store's memory.

An entry's verification bytes (index/evidence.py: about 1,600 bytes per second of audio even
compressed) are most of what it costs, and they are read only when a fuzzy lookup verifies a
candidate, a few at a time. Redis keeps them in memory for ever; a file keeps them on disk,
where a gigabyte costs a hundredth as much. With a bulk store the entry hash keeps everything
else (the transcript, the segments, the embedding the index is built from) and, in place of
the bytes, their digest (`evb`).

Consistency, with Redis the truth:
- A value is written (to a temporary name, then renamed: never read half-written) before the
  entry that names it, under the entry's id and its generation (random per write, index/store.py).
  It is read only for an entry that names it, by that generation, and only when its digest is the
  one the entry holds: a file of another write, a damaged file or a missing one reads as no
  evidence, and such an entry is never fuzzy-matched (its exact and canonical aliases still
  serve it; a miss costs an engine run, never a wrong transcript).
- A DELETE removes the entry's files after the entry; expiry, eviction, a failover that lost
  a write, a snapshot restored from before a DELETE: a file whose entry (at that generation) is
  gone is found by `sweep`, which the service runs every hour, and removed. Files younger
  than SWEEP_GRACE_S are left alone: their entry may be being written.
- A restored snapshot whose files were swept since reads as entries without evidence (above).

It is a directory: a local disk with one service and its embedded store; with several service
processes on several hosts (a Redis Cluster deployment) one directory all of them share (NFS,
EFS, or an object store mounted as files), since any of them may verify any entry. Each key
prefix has a subdirectory of its own, so deployments sharing a disk never sweep each other's.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

# A file younger than this may belong to an entry being written: never swept.
SWEEP_GRACE_S = 600.0


def value_digest(value: bytes) -> str:
    """The digest an entry holds for its bulk value (`evb`)."""
    return hashlib.blake2b(value, digest_size=12).hexdigest()


class BulkStore:
    """Values by (entry id, generation) under `root`/<digest of the key prefix>/."""

    def __init__(self, root: str | os.PathLike, key_prefix: str) -> None:
        self.directory = Path(root) / hashlib.blake2b(key_prefix.encode(), digest_size=6).hexdigest()

    def _path(self, entry_id: str, generation: str) -> Path:
        return self.directory / entry_id[:2] / f"{entry_id}.{generation}"

    def put(self, entry_id: str, generation: str, value: bytes) -> None:
        """Write a value; raises OSError when the disk refuses (full, read-only, gone)."""
        path = self._path(entry_id, generation)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            temporary.write_bytes(value)
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise

    def get(self, entry_id: str, generation: str) -> bytes | None:
        """The value written for this entry and generation; None when there is none."""
        try:
            return self._path(entry_id, generation).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def stored_size(self, entry_id: str, generation: str) -> int:
        """Bytes the value of this entry and generation takes on disk (0 when there is none)."""
        try:
            return self._path(entry_id, generation).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return 0

    def delete(self, entry_id: str, keep: str = "") -> int:
        """Remove the entry's values, of every generation but `keep`; how many were removed."""
        removed = 0
        for path in self._paths_of(entry_id):
            if path.name != f"{entry_id}.{keep}":
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _paths_of(self, entry_id: str) -> list[Path]:
        directory = self.directory / entry_id[:2]
        return list(directory.glob(f"{entry_id}.*")) if directory.is_dir() else []

    def files(self, older_than_s: float = SWEEP_GRACE_S) -> Iterator[tuple[str, str, Path]]:
        """(entry id, generation, path) of every value written more than `older_than_s` ago
        (temporary files of an interrupted write included, as generation "")."""
        if not self.directory.is_dir():
            return
        cutoff = time.time() - older_than_s
        for shard in self.directory.iterdir():
            if not shard.is_dir():
                continue
            for path in shard.iterdir():
                try:
                    if path.stat().st_mtime > cutoff:
                        continue
                except FileNotFoundError:
                    continue
                entry_id, _, generation = path.name.partition(".")
                yield (entry_id, "", path) if path.name.startswith(".") else (entry_id, generation, path)
