"""The vector index: entry embeddings in FAISS, one sub-index per profile.

Derived data: Redis holds every entry's embedding, so this index can always be rebuilt, and a
search result is only a candidate (the caller re-reads the entry from Redis before trusting
it). Small indexes use exact inner-product search; large ones HNSW. Removals are tombstones
filtered at search time until the next rebuild: HNSW cannot remove vectors (faiss #3339,
#1784), and a flat index's `remove_ids` compacts the whole array (478 ms at 1M entries,
bench/README.md), far too slow to run per expired candidate.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
from dataclasses import dataclass, field
from pathlib import Path

from typing import cast

import faiss
import numpy as np

INDEX_TYPES = ("auto", "flat", "hnsw")
# Exact search stays under a millisecond up to here on 2 cores (d=64); past it HNSW.
AUTO_HNSW_FROM = 50_000
HNSW_M = 32
HNSW_EF_SEARCH = 64
HNSW_EF_CONSTRUCTION = 80
SNAPSHOT_VERSION = 1


def vector_id(entry_id: str) -> int:
    """A stable 60-bit FAISS id for an entry id (hex digest), the same on every replica."""
    return int(entry_id[:15], 16)


@dataclass
class _ProfileIndex:
    index: faiss.IndexIDMap  # flat or HNSW inside an id map
    kind: str
    entry_ids: dict[int, str] = field(default_factory=dict)
    tombstones: set[int] = field(default_factory=set)

    @property
    def live(self) -> int:
        return len(self.entry_ids)


class VectorIndex:
    """Embeddings of all profiles; thread-safe (searches run beside the stream applier)."""

    def __init__(self, dim: int, index_type: str = "auto") -> None:
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}")
        self.dim = dim
        self.index_type = index_type
        self._profiles: dict[str, _ProfileIndex] = {}
        self._lock = threading.RLock()
        # Held by whatever adds to a FAISS index in place, and by `save` while it serialises:
        # searches (reads, as serialising is) never wait for a snapshot, only adds do.
        self._faiss_writes = threading.Lock()
        faiss.omp_set_num_threads(1)  # one query at a time per request; keep the other core free

    def __len__(self) -> int:
        with self._lock:
            return sum(p.live for p in self._profiles.values())

    @property
    def tombstones(self) -> int:
        """Removed vectors still inside HNSW graphs (filtered at search time)."""
        with self._lock:
            return sum(len(p.tombstones) for p in self._profiles.values())

    def add(self, profile_id: str, entry_id: str, vector: np.ndarray) -> None:
        """Add (or replace) an entry's vector."""
        self.add_many(profile_id, [entry_id], vector.reshape(1, -1))

    def add_many(self, profile_id: str, entry_ids: list[str], vectors: np.ndarray) -> None:
        """Add a batch of one profile's vectors."""
        if not entry_ids:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(entry_ids), self.dim)
        ids = np.array([vector_id(e) for e in entry_ids], dtype=np.int64)
        with self._faiss_writes, self._lock:
            part = self._profiles.get(profile_id)
            if part is None:
                part = self._profiles[profile_id] = self._new_part(len(entry_ids))
            existing = [i for i in ids.tolist() if i in part.entry_ids]
            if existing:
                self._remove_ids(part, existing)
            part.index.add_with_ids(vectors, ids)
            for vid, entry_id in zip(ids.tolist(), entry_ids, strict=True):
                part.entry_ids[vid] = entry_id
                part.tombstones.discard(vid)

    def remove(self, entry_id: str) -> bool:
        """Forget an entry (in every profile it may be in); True if it was indexed."""
        vid = vector_id(entry_id)
        with self._lock:
            found = False
            for part in self._profiles.values():
                if vid in part.entry_ids:
                    self._remove_ids(part, [vid])
                    found = True
            return found

    def search(self, profile_id: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Up to k (entry id, cosine similarity) nearest to `vector` in this profile."""
        with self._lock:
            part = self._profiles.get(profile_id)
            if part is None or part.live == 0:
                return []
            fetch = min(part.index.ntotal, k + len(part.tombstones))
            scores, ids = part.index.search(np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1), fetch)
            hits, seen = [], set()
            for vid, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True):
                if vid < 0 or vid in part.tombstones or vid not in part.entry_ids or vid in seen:
                    continue
                seen.add(vid)
                hits.append((part.entry_ids[vid], float(score)))
                if len(hits) == k:
                    break
            return hits

    def entry_ids(self) -> list[str]:
        """Every indexed entry id (a copy)."""
        with self._lock:
            return [e for part in self._profiles.values() for e in part.entry_ids.values()]

    def needs_rebuild(self) -> bool:
        """True when tombstones pile up or a profile outgrew exact search."""
        with self._lock:
            for part in self._profiles.values():
                if len(part.tombstones) > max(1000, part.live // 10):
                    return True
                if self.index_type == "auto" and part.kind == "flat" and part.live >= AUTO_HNSW_FROM:
                    return True
            return False

    def rebuild(self) -> None:
        """Rebuild sub-indexes that need it from their live vectors (drops tombstones)."""
        with self._lock:
            plans = []
            for profile_id, part in self._profiles.items():
                ids = np.array(sorted(part.entry_ids), dtype=np.int64)
                plans.append((profile_id, ids, self._vectors(part, ids), dict(part.entry_ids)))
        for profile_id, ids, vectors, entry_ids in plans:
            fresh = self._new_part(len(ids))
            if len(ids):
                fresh.index.add_with_ids(vectors, ids)
            fresh.entry_ids = entry_ids
            with self._lock:
                current = self._profiles.get(profile_id)
                if current is None:
                    continue
                # Apply what changed while we built without the lock.
                added = [v for v in current.entry_ids if v not in entry_ids]
                removed = [v for v in entry_ids if v not in current.entry_ids]
                if added:
                    add_ids = np.array(added, dtype=np.int64)
                    fresh.index.add_with_ids(self._vectors(current, add_ids), add_ids)
                    fresh.entry_ids.update({v: current.entry_ids[v] for v in added})
                if removed:
                    self._remove_ids(fresh, removed)
                self._profiles[profile_id] = fresh

    def save(self, directory: Path, stream_offset: str, fingerprint_version: str) -> None:
        """Write a snapshot atomically, with the stream offset it reflects.

        Searches go on while it serialises (2.9 s for HNSW at 1M entries); only adds wait.
        """
        directory.mkdir(parents=True, exist_ok=True)
        with self._faiss_writes:
            with self._lock:  # a consistent view: the indexes, their ids and tombstones
                parts = {profile_id: (part.kind, part.index, dict(part.entry_ids), set(part.tombstones))
                         for profile_id, part in self._profiles.items()}
            state = {profile_id: (kind, faiss.serialize_index(index), entry_ids, tombstones)
                     for profile_id, (kind, index, entry_ids, tombstones) in parts.items()}
        temporary = directory / "index.pkl.tmp"
        with open(temporary, "wb") as handle:
            pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, directory / "index.pkl")
        meta = {"version": SNAPSHOT_VERSION, "dim": self.dim, "stream_offset": stream_offset,
                "fingerprint_version": fingerprint_version, "entries": len(self)}
        (directory / "meta.json.tmp").write_text(json.dumps(meta))
        os.replace(directory / "meta.json.tmp", directory / "meta.json")

    def load(self, directory: Path, fingerprint_version: str) -> str | None:
        """Load a snapshot; returns its stream offset, or None when there is no usable one."""
        try:
            meta = json.loads((directory / "meta.json").read_text())
            if (meta.get("version"), meta.get("dim"), meta.get("fingerprint_version")) != (
                SNAPSHOT_VERSION, self.dim, fingerprint_version,
            ):
                return None
            with open(directory / "index.pkl", "rb") as handle:
                state = pickle.load(handle)
        except (OSError, ValueError, pickle.UnpicklingError, EOFError, KeyError):
            return None
        profiles = {}
        for profile_id, (kind, blob, entry_ids, tombstones) in state.items():
            try:
                index = cast(faiss.IndexIDMap, faiss.deserialize_index(blob))
            except RuntimeError:  # a damaged snapshot: rebuild from the store instead
                return None
            if kind == "hnsw":
                _hnsw_of(index).hnsw.efSearch = HNSW_EF_SEARCH
            profiles[profile_id] = _ProfileIndex(index, kind, entry_ids, tombstones)
        with self._lock:
            self._profiles = profiles
        return meta["stream_offset"]

    def clear(self) -> None:
        """Drop everything (before a rebuild from the store)."""
        with self._lock:
            self._profiles = {}

    def _new_part(self, expected: int) -> _ProfileIndex:
        kind = self.index_type
        if kind == "auto":
            kind = "hnsw" if expected >= AUTO_HNSW_FROM else "flat"
        if kind == "flat":
            return _ProfileIndex(faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim)), "flat")
        hnsw = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return _ProfileIndex(faiss.IndexIDMap2(hnsw), "hnsw")

    def _remove_ids(self, part: _ProfileIndex, ids: list[int]) -> None:
        for vid in ids:
            part.entry_ids.pop(vid, None)
        part.tombstones.update(ids)

    def _vectors(self, part: _ProfileIndex, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids`, read in bulk from the index's own storage."""
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        stored_ids = faiss.vector_to_array(part.index.id_map)
        stored = part.index.index.reconstruct_n(0, part.index.ntotal)
        row_of = {vid: row for row, vid in enumerate(stored_ids.tolist())}  # a re-add's last row wins
        return np.ascontiguousarray(stored[[row_of[int(v)] for v in ids]], dtype=np.float32)


def _hnsw_of(index: faiss.IndexIDMap):
    return faiss.downcast_index(cast(faiss.IndexIDMap, faiss.downcast_index(index)).index)
