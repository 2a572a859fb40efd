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
import logging
import os
import pickle
import shutil
import threading
import uuid
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
SNAPSHOT_VERSION = 2  # 1: one pickle (FAISS blob, id dict); 2: FAISS file and numpy row arrays
ENTRY_ID_LENGTH = 32
ENTRY_ID_DTYPE = np.dtype(f"S{ENTRY_ID_LENGTH}")

log = logging.getLogger(__name__)


def vector_id(entry_id: str) -> int:
    """A stable 60-bit FAISS id for an entry id (hex digest), the same on every replica."""
    return int(entry_id[:15], 16)


@dataclass
class _ProfileIndex:
    """One profile's FAISS index and, row for row, what each of its vectors belongs to.

    Row r of `vids`/`eids`/`live` describes row r of `index` (both are appended to in the same
    order). Rows below `rows` are never rewritten except their `live` flag, so a snapshot can
    take views of `vids` and `eids` and copy only `live` (1 byte a row) under the lock, and
    write them with numpy outside it; a Python dict of 1M ids took 44 ms to copy and 0.3 s to
    pickle, holding the GIL all along (bench/README.md, snapshot pause).
    """

    index: faiss.IndexIDMap  # flat or HNSW inside an id map
    kind: str
    vids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    eids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=ENTRY_ID_DTYPE))
    live: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))
    rows: int = 0
    row_of: dict[int, int] = field(default_factory=dict)  # vid -> its live row (for searches)
    tombstones: set[int] = field(default_factory=set)

    @property
    def live_count(self) -> int:
        return len(self.row_of)

    def entry_id(self, vid: int) -> str:
        return self.eids[self.row_of[vid]].decode("ascii")

    def append(self, vids: np.ndarray, eids: np.ndarray) -> None:
        """Record rows just added to `index` (same order); a vid seen again takes its new row."""
        needed = self.rows + len(vids)
        if needed > len(self.vids):
            capacity = max(needed, 2 * len(self.vids), 64)
            # New arrays, not resized in place: a snapshot may still be writing views of the old.
            for name in ("vids", "eids", "live"):
                old = getattr(self, name)
                grown = np.zeros(capacity, dtype=old.dtype)
                grown[: self.rows] = old[: self.rows]
                setattr(self, name, grown)
        first = self.rows
        self.vids[first:needed] = vids
        self.eids[first:needed] = eids
        self.live[first:needed] = True
        self.rows = needed
        for row, vid in enumerate(vids.tolist(), start=first):
            previous = self.row_of.get(vid)
            if previous is not None:  # the same vid twice in one batch: the last row wins
                self.live[previous] = False
            self.row_of[vid] = row
            self.tombstones.discard(vid)

    def remove(self, vids: list[int]) -> None:
        """Tombstone these vids (filtered at search time until the next rebuild)."""
        for vid in vids:
            row = self.row_of.pop(vid, None)
            if row is not None:
                self.live[row] = False
        self.tombstones.update(vids)


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
        # One save at a time: a save deletes the snapshot folders it supersedes, which must
        # not include another save's half-written one (the replica's stop can save while a
        # cancelled tail's save is still running in its thread).
        self._saving = threading.Lock()
        faiss.omp_set_num_threads(1)  # one query at a time per request; keep the other core free

    def __len__(self) -> int:
        """Live entries. Without the lock (/health and /metrics read it): `list()` of the
        profiles and `len()` of each id map are single steps under the GIL, so this never waits
        for a writer or a snapshot, and is at worst one concurrent change behind."""
        return sum(part.live_count for part in list(self._profiles.values()))

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
        eids = _entry_id_array(entry_ids)
        with self._faiss_writes, self._lock:
            part = self._profiles.get(profile_id)
            if part is None:
                part = self._profiles[profile_id] = self._new_part(len(entry_ids))
            existing = [i for i in ids.tolist() if i in part.row_of]
            if existing:
                part.remove(existing)
            part.index.add_with_ids(vectors, ids)
            part.append(ids, eids)

    def remove(self, entry_id: str) -> bool:
        """Forget an entry (in every profile it may be in); True if it was indexed."""
        vid = vector_id(entry_id)
        with self._lock:
            found = False
            for part in self._profiles.values():
                if vid in part.row_of:
                    part.remove([vid])
                    found = True
            return found

    def search(self, profile_id: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Up to k (entry id, cosine similarity) nearest to `vector` in this profile."""
        return self.search_many(profile_id, np.asarray(vector).reshape(1, -1), k)[0]

    def search_many(self, profile_id: str, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """`search` for each row of `vectors` at once (one pass over the index for all of them):
        the stretches of one upload that segment reuse looks up (service/pipeline/segments.py)."""
        with self._lock:
            part = self._profiles.get(profile_id)
            if part is None or part.live_count == 0 or len(vectors) == 0:
                return [[] for _ in range(len(vectors))]
            fetch = min(part.index.ntotal, k + len(part.tombstones))
            scores, ids = part.index.search(np.ascontiguousarray(vectors, dtype=np.float32), fetch)
            found = []
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True):
                hits: list[tuple[str, float]] = []
                seen: set[int] = set()
                for vid, score in zip(row_ids, row_scores, strict=True):
                    if vid < 0 or vid in part.tombstones or vid not in part.row_of or vid in seen:
                        continue
                    seen.add(vid)
                    hits.append((part.entry_id(vid), float(score)))
                    if len(hits) == k:
                        break
                found.append(hits)
            return found

    def entry_ids(self) -> list[str]:
        """Every indexed entry id (a copy)."""
        with self._lock:
            chunks = [part.eids[: part.rows][part.live[: part.rows]] for part in self._profiles.values()]
        return [e.decode("ascii") for chunk in chunks for e in chunk.tolist()]

    def needs_rebuild(self) -> bool:
        """True when tombstones pile up or a profile outgrew exact search."""
        with self._lock:
            for part in self._profiles.values():
                if len(part.tombstones) > max(1000, part.live_count // 10):
                    return True
                if self.index_type == "auto" and part.kind == "flat" and part.live_count >= AUTO_HNSW_FROM:
                    return True
            return False

    def rebuild(self) -> None:
        """Rebuild sub-indexes that need it from their live vectors (drops tombstones)."""
        with self._lock:
            plans = []
            for profile_id, part in self._profiles.items():
                rows = np.flatnonzero(part.live[: part.rows])
                plans.append((profile_id, part.rows, part.vids[rows], part.eids[rows], self._vectors(part, rows)))
        for profile_id, rows_then, vids, eids, vectors in plans:
            fresh = self._new_part(len(vids))
            if len(vids):
                fresh.index.add_with_ids(vectors, vids)
                fresh.append(vids, eids)
            with self._lock:
                current = self._profiles.get(profile_id)
                if current is None:
                    continue
                # Apply what changed while we built without the lock: rows appended since the
                # plan (new entries, and re-added ones with their new vector), then removals.
                if current.rows > rows_then:
                    new_rows = rows_then + np.flatnonzero(current.live[rows_then : current.rows])
                    if len(new_rows):
                        new_vids = current.vids[new_rows]
                        fresh.remove([v for v in new_vids.tolist() if v in fresh.row_of])
                        fresh.index.add_with_ids(self._vectors(current, new_rows), new_vids)
                        fresh.append(new_vids, current.eids[new_rows])
                removed = [v for v in fresh.row_of if v not in current.row_of]
                if removed:
                    fresh.remove(removed)
                self._profiles[profile_id] = fresh

    def save(self, directory: Path, stream_offset: str, fingerprint_version: str) -> None:
        """Write a snapshot atomically, with the stream offset it reflects.

        Searches go on while it serialises (seconds for HNSW at 1M entries); only adds wait.
        Under the search lock it only takes views of each profile's row arrays and copies their
        `live` flags (1 byte a row); FAISS and numpy then write straight to files, releasing the
        GIL for the bulk of it (measured: the event loop's longest stall 11 to 24 ms at 1M,
        against 76 ms when the id dict was pickled), and no copy of the index is kept in memory.
        Layout (version 2): `meta.json` names a folder holding, per profile, `<n>.faiss`,
        `<n>.vids.npy`, `<n>.eids.npy` and `<n>.live.npy`; it is replaced last, so a crash
        mid-save leaves the previous snapshot in force.
        """
        with self._saving:
            self._save(directory, stream_offset, fingerprint_version)

    def _save(self, directory: Path, stream_offset: str, fingerprint_version: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"snapshot-{uuid.uuid4().hex[:12]}"
        staging = directory / f"{name}.tmp"
        staging.mkdir()
        with self._faiss_writes:
            with self._lock:  # a consistent view: the indexes, their rows and live flags
                parts = [(profile_id, part.kind, part.index, part.vids[: part.rows], part.eids[: part.rows],
                          part.live[: part.rows].copy()) for profile_id, part in self._profiles.items()]
                entries = sum(part.live_count for part in self._profiles.values())
            listing = []
            for number, (profile_id, kind, index, *_) in enumerate(parts):
                faiss.write_index(index, str(staging / f"{number}.faiss"))  # adds wait for this
                listing.append({"profile": profile_id, "kind": kind, "file": str(number)})
        for number, (_, _, _, vids, eids, live) in enumerate(parts):
            np.save(staging / f"{number}.vids.npy", vids)
            np.save(staging / f"{number}.eids.npy", eids)
            np.save(staging / f"{number}.live.npy", live)
        (staging / "profiles.json").write_text(json.dumps(listing))
        os.rename(staging, directory / name)
        meta = {"version": SNAPSHOT_VERSION, "dim": self.dim, "stream_offset": stream_offset,
                "fingerprint_version": fingerprint_version, "entries": entries, "snapshot": name}
        (directory / "meta.json.tmp").write_text(json.dumps(meta))
        os.replace(directory / "meta.json.tmp", directory / "meta.json")
        _remove_other_snapshots(directory, keep=name)

    def load(self, directory: Path, fingerprint_version: str) -> str | None:
        """Load a snapshot; returns its stream offset, or None when there is no usable one
        (the caller then rebuilds from the store). Reads version 2 and the older pickled
        version 1 (`index.pkl`), which the next save replaces."""
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if (meta.get("dim"), meta.get("fingerprint_version")) != (self.dim, fingerprint_version):
            return None
        version = meta.get("version")
        try:
            if version == SNAPSHOT_VERSION:
                profiles = self._load_v2(directory / meta["snapshot"])
            elif version == 1:
                log.info("vector index: reading a version-1 snapshot (pickled id map); the next save writes version %d",
                         SNAPSHOT_VERSION)
                profiles = self._load_v1(directory / "index.pkl")
            else:
                log.warning("vector index: snapshot version %r is not readable here; rebuilding from the store", version)
                return None
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
            # A damaged or partial snapshot: rebuild from the store instead.
            log.warning("vector index: unreadable snapshot in %s (%s); rebuilding from the store", directory, exc)
            return None
        with self._lock:
            self._profiles = profiles
        return meta["stream_offset"]

    def _load_v2(self, folder: Path) -> dict[str, _ProfileIndex]:
        profiles = {}
        for item in json.loads((folder / "profiles.json").read_text()):
            index = self._read_faiss(folder / f"{item['file']}.faiss", item["kind"])
            vids = np.load(folder / f"{item['file']}.vids.npy")
            eids = np.load(folder / f"{item['file']}.eids.npy")
            live = np.load(folder / f"{item['file']}.live.npy")
            if not (len(vids) == len(eids) == len(live) == index.ntotal) or vids.dtype != np.int64:
                raise ValueError(f"profile {item['profile']}: rows do not match the index")
            live_rows = np.flatnonzero(live)
            row_of = dict(zip(vids[live_rows].tolist(), live_rows.tolist(), strict=True))
            # Tombstones are the vids of dead rows that have no live row (a re-add is live).
            tombstones = set(vids[~live].tolist()) - row_of.keys()
            profiles[item["profile"]] = _ProfileIndex(index, item["kind"], vids, eids.astype(ENTRY_ID_DTYPE), live,
                                                      len(vids), row_of, tombstones)
        return profiles

    def _load_v1(self, path: Path) -> dict[str, _ProfileIndex]:
        with open(path, "rb") as handle:
            state = pickle.load(handle)
        profiles = {}
        for profile_id, (kind, blob, entry_ids, tombstones) in state.items():
            index = cast(faiss.IndexIDMap, faiss.deserialize_index(blob))
            if kind == "hnsw":
                _hnsw_of(index).hnsw.efSearch = HNSW_EF_SEARCH
            vids = faiss.vector_to_array(index.id_map).astype(np.int64)
            row_of = {vid: row for row, vid in enumerate(vids.tolist()) if vid in entry_ids}  # the last row wins
            eids = np.zeros(len(vids), dtype=ENTRY_ID_DTYPE)
            live = np.zeros(len(vids), dtype=np.bool_)
            rows = np.fromiter(row_of.values(), dtype=np.int64, count=len(row_of))
            eids[rows] = _entry_id_array([entry_ids[vid] for vid in row_of])
            live[rows] = True
            profiles[profile_id] = _ProfileIndex(index, kind, vids, eids, live, len(vids), row_of, set(tombstones))
        return profiles

    def _read_faiss(self, path: Path, kind: str) -> faiss.IndexIDMap:
        index = cast(faiss.IndexIDMap, faiss.read_index(str(path)))
        if kind == "hnsw":
            _hnsw_of(index).hnsw.efSearch = HNSW_EF_SEARCH
        return index

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

    def _vectors(self, part: _ProfileIndex, rows: np.ndarray) -> np.ndarray:
        """The stored vectors at these rows, read in bulk from the index's own storage."""
        if len(rows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        stored = part.index.index.reconstruct_n(0, part.index.ntotal)
        return np.ascontiguousarray(stored[rows], dtype=np.float32)


def _entry_id_array(entry_ids: list[str]) -> np.ndarray:
    """Entry ids as fixed-width ASCII (32 hex digits; longer ones would be cut, so refused)."""
    if any(len(e) > ENTRY_ID_LENGTH for e in entry_ids):
        raise ValueError(f"entry ids are at most {ENTRY_ID_LENGTH} characters")
    return np.array([e.encode("ascii") for e in entry_ids], dtype=ENTRY_ID_DTYPE)


def _remove_other_snapshots(directory: Path, keep: str) -> None:
    """Delete superseded snapshot folders (and a version-1 `index.pkl`) once `keep` is in force."""
    for path in directory.iterdir():
        if path.name == keep:
            continue
        if path.is_dir() and path.name.startswith("snapshot-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name in ("index.pkl", "index.pkl.tmp"):
            path.unlink(missing_ok=True)


def _hnsw_of(index: faiss.IndexIDMap):
    return faiss.downcast_index(cast(faiss.IndexIDMap, faiss.downcast_index(index)).index)
