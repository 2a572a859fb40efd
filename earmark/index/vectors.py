"""The vector index: entry embeddings in FAISS, one sub-index per profile.

Derived data: Redis holds every entry's embedding, so this index can always be rebuilt, and a
search result is only a candidate (the caller re-reads the entry from Redis before trusting
it). Small indexes use exact inner-product search, larger ones HNSW, and the largest an
inverted file of 8-bit codes (IVF-SQ8: 72 bytes an entry in FAISS against HNSW's 550, built in
under a minute at a million where HNSW takes several; bench/README.md, "The vector index at
ten million entries"). Removals are tombstones filtered at search time until the next rebuild: HNSW cannot
remove vectors (faiss #3339, #1784), and a flat index's `remove_ids` compacts the whole array
(478 ms at 1M entries, bench/README.md), far too slow to run per expired candidate; an inverted
file drops its tombstones in place, in one pass over its lists.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import faiss
import numpy as np

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
# Exact search stays under a millisecond up to here on 2 cores (d=64); past it HNSW.
AUTO_HNSW_FROM = 50_000
# Past here an inverted file: HNSW's graph costs 550 bytes an entry and a rebuild at this size
# takes several minutes on 2 cores; IVF-SQ8 costs 72 and trains and fills in under a minute.
AUTO_IVF_FROM = 1_000_000
HNSW_M = 32
HNSW_EF_SEARCH = 64
HNSW_EF_CONSTRUCTION = 80
# An inverted file needs this many vectors to train on (type "ivf" stays exact until then).
IVF_MIN_ROWS = 10_000
IVF_MAX_LISTS = 4_096  # more lists train and fill too slowly here (16,384 at 10M: over 20 min)
IVF_TRAIN_PER_LIST = 32  # k-means sample per list (FAISS warns under 39; 32 loses nothing here)
IVF_TRAIN_ITERATIONS = 10
IVF_PROBE_SHARE = 1 / 32  # lists searched per query (at least IVF_MIN_PROBES): 128 of 4,096
IVF_MIN_PROBES = 16
IVF_RETRAIN_GROWTH = 4  # retrain (with more lists) once a profile holds this many times what it trained on
SNAPSHOT_VERSION = 2  # 1: one pickle (FAISS blob, id dict); 2: FAISS file and numpy row arrays
ENTRY_ID_LENGTH = 32
ENTRY_ID_DTYPE = np.dtype(f"S{ENTRY_ID_LENGTH}")
_KIND_RANK = {"flat": 0, "hnsw": 1, "ivf": 2}

log = logging.getLogger(__name__)


def vector_id(entry_id: str) -> int:
    """A stable 60-bit FAISS id for an entry id (hex digest), the same on every replica."""
    return int(entry_id[:15], 16)


class _RowMap:
    """Each live vid's row, for up to tens of millions of vids: a sorted array of the vids known
    at the last compaction (16 bytes a vid) and a dict of those added since. A dict of every
    vid cost about 75 bytes each (750 MB at 10M entries; bench/README.md, "ten million")."""

    COMPACT_FROM = 65_536  # vids added since the last compaction before one is considered

    def __init__(self) -> None:
        self._vids = np.zeros(0, dtype=np.int64)  # sorted
        self._rows = np.zeros(0, dtype=np.int64)  # -1: removed since
        self._recent: dict[int, int] = {}  # overrides the arrays
        self._count = 0

    @classmethod
    def of(cls, vids: np.ndarray, rows: np.ndarray) -> _RowMap:
        """The map of these (unique) vids at these rows."""
        made = cls()
        order = np.argsort(vids)
        made._vids = np.ascontiguousarray(vids[order], dtype=np.int64)
        made._rows = np.ascontiguousarray(rows[order], dtype=np.int64)
        made._count = len(vids)
        return made

    def __len__(self) -> int:
        return self._count

    def __contains__(self, vid: int) -> bool:
        return self.get(vid) is not None

    def get(self, vid: int) -> int | None:
        """The vid's live row, or None."""
        row = self._recent.get(vid)
        if row is None:
            at = self._at(vid)
            row = int(self._rows[at]) if at >= 0 else -1
        return None if row < 0 else row

    def contains_many(self, vids: np.ndarray) -> np.ndarray:
        """For each vid, whether it has a live row."""
        vids = np.asarray(vids, dtype=np.int64)
        found = np.zeros(len(vids), dtype=np.bool_)
        if len(self._vids):  # binary searches: np.isin would sort both sides (9 s at 10M)
            at = np.searchsorted(self._vids, vids).clip(max=len(self._vids) - 1)
            found = (self._vids[at] == vids) & (self._rows[at] >= 0)
        if self._recent:
            found |= np.isin(vids, np.fromiter(self._recent.keys(), dtype=np.int64, count=len(self._recent)))
        return found

    def set(self, vid: int, row: int) -> None:
        """The vid is now at `row` (a new vid, or a re-added one)."""
        if self.get(vid) is None:
            self._count += 1
        self._recent[vid] = row
        if len(self._recent) > max(self.COMPACT_FROM, len(self._vids) // 4):
            self._compact()

    def pop(self, vid: int) -> int | None:
        """Forget the vid; its row, or None if it had none."""
        row = self.get(vid)
        if row is not None:
            self._count -= 1
            self._recent.pop(vid, None)
            at = self._at(vid)
            if at >= 0:
                self._rows[at] = -1
        return row

    def _at(self, vid: int) -> int:
        at = int(np.searchsorted(self._vids, vid))
        return at if at < len(self._vids) and self._vids[at] == vid else -1

    def _compact(self) -> None:
        recent_vids = np.fromiter(self._recent.keys(), dtype=np.int64, count=len(self._recent))
        recent_rows = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
        kept = self._rows >= 0
        at = np.searchsorted(self._vids, recent_vids).clip(max=max(0, len(self._vids) - 1))
        if len(self._vids):
            kept[at[self._vids[at] == recent_vids]] = False  # superseded by a recent row
        merged = _RowMap.of(np.concatenate([self._vids[kept], recent_vids]),
                            np.concatenate([self._rows[kept], recent_rows]))
        self._vids, self._rows, self._recent = merged._vids, merged._rows, {}


@dataclass
class _ProfileIndex:
    """One profile's FAISS index and, row for row, what each of its vectors belongs to.

    Row r of `vids`/`eids`/`live` describes row r of `index` (both are appended to in the same
    order). Rows below `rows` are never rewritten except their `live` flag, so a snapshot can
    take views of `vids` and `eids` and copy only `live` (1 byte a row) under the lock, and
    write them with numpy outside it; a Python dict of 1M ids took 44 ms to copy and 0.3 s to
    pickle, holding the GIL all along (bench/README.md, snapshot pause).
    """

    index: faiss.Index  # flat or HNSW inside an id map (ids: vids), or IVF (ids: rows)
    kind: str
    vids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    eids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=ENTRY_ID_DTYPE))
    live: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))
    rows: int = 0
    row_of: _RowMap = field(default_factory=_RowMap)  # vid -> its live row (for searches)
    tombstones: set[int] = field(default_factory=set)
    trained_rows: int = 0  # IVF: how many vectors its lists were trained for
    stale: int = 0  # IVF: dead rows still inside its lists (removed or replaced)

    @property
    def ids_are_rows(self) -> bool:
        """An inverted file's FAISS ids are row numbers (a re-added vid is two rows, and a
        row names its vector unambiguously when the lists are read back or purged)."""
        return self.kind == "ivf"

    def add(self, vectors: np.ndarray, vids: np.ndarray, eids: np.ndarray) -> None:
        """Add vectors to the FAISS index and their rows here, in the same order."""
        if self.ids_are_rows:
            self.index.add_with_ids(vectors, np.arange(self.rows, self.rows + len(vids), dtype=np.int64))
        else:
            self.index.add_with_ids(vectors, vids)
        self.append(vids, eids)

    @property
    def live_count(self) -> int:
        return len(self.row_of)

    def entry_id(self, vid: int) -> str:
        row = self.row_of.get(vid)
        assert row is not None, "only a live vid has an entry id"
        return self.eids[row].decode("ascii")

    def live_vids(self) -> np.ndarray:
        """The vids of the live rows."""
        return self.vids[: self.rows][self.live[: self.rows]]

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
        if len(self.row_of) == 0 and not self.tombstones and len(np.unique(vids)) == len(vids):
            # A new index filled at once (a rebuild, a load): the map in one step.
            self.row_of = _RowMap.of(np.asarray(vids, dtype=np.int64), np.arange(first, needed, dtype=np.int64))
            return
        for row, vid in enumerate(vids.tolist(), start=first):
            previous = self.row_of.get(vid)
            if previous is not None:  # the same vid twice in one batch: the last row wins
                self.live[previous] = False
                self.stale += 1
            self.row_of.set(vid, row)
            self.tombstones.discard(vid)

    def remove(self, vids: list[int]) -> None:
        """Tombstone these vids (filtered at search time until the next rebuild)."""
        for vid in vids:
            row = self.row_of.pop(vid)
            if row is not None:
                self.live[row] = False
                self.stale += 1
        self.tombstones.update(vids)

    def purge(self) -> None:
        """IVF: drop the dead rows' vectors from the lists, in place (one pass over them)."""
        dead = np.flatnonzero(~self.live[: self.rows]).astype(np.int64)
        if len(dead):
            self.index.remove_ids(faiss.IDSelectorBatch(dead))
        self.stale = 0
        self.tombstones.clear()


class VectorIndex:
    """Embeddings of all profiles; thread-safe (searches run beside the stream applier)."""

    def __init__(self, dim: int, index_type: str = "auto",
                 on_rebuild: Callable[[str, str], None] | None = None) -> None:
        """`on_rebuild(reason, kind)` is told of each profile's rebuild: why (`purge`, `kind`,
        `tombstones`, or `requested` when called with none due) and the kind it now is."""
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}")
        self.dim = dim
        self.index_type = index_type
        self._on_rebuild = on_rebuild or (lambda reason, kind: None)
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
                part = self._profiles[profile_id] = self._new_part(len(entry_ids), vectors)
            existing = ids[part.row_of.contains_many(ids)].tolist() if len(part.row_of) else []
            if existing:
                part.remove(existing)
            part.add(vectors, ids, eids)

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
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if part.ids_are_rows:
                return [self._search_rows(part, vector.reshape(1, -1), k) for vector in vectors]
            fetch = min(part.index.ntotal, k + len(part.tombstones))
            scores, ids = part.index.search(vectors, fetch)
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

    @staticmethod
    def _search_rows(part: _ProfileIndex, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """`search` in an index whose ids are rows: dead rows are skipped, and the search is
        widened (twice as many, up to every stale row) only when they crowd out live ones."""
        fetch = min(part.index.ntotal, k + min(part.stale, k))
        while True:
            scores, rows = part.index.search(vector, fetch)
            hits = [(part.eids[row].decode("ascii"), float(score))
                    for row, score in zip(rows[0].tolist(), scores[0].tolist(), strict=True)
                    if row >= 0 and part.live[row]][:k]
            if len(hits) == k or fetch >= min(part.index.ntotal, k + part.stale) or rows[0][-1] < 0:
                return hits
            fetch = min(part.index.ntotal, 2 * fetch, k + part.stale)

    def entry_ids(self) -> list[str]:
        """Every indexed entry id (a copy)."""
        with self._lock:
            chunks = [part.eids[: part.rows][part.live[: part.rows]] for part in self._profiles.values()]
        return [e.decode("ascii") for chunk in chunks for e in chunk.tolist()]

    def needs_rebuild(self) -> bool:
        """True when tombstones pile up or a profile outgrew exact search."""
        with self._lock:
            return any(self._rebuild_reason(part) for part in self._profiles.values())

    def _rebuild_reason(self, part: _ProfileIndex) -> str | None:
        """Why this profile's index should be rebuilt now: `purge` (an inverted file's dead rows
        dropped in place), `kind` (it outgrew its kind, or its lists), `tombstones`; or None."""
        if part.ids_are_rows and part.stale > max(1000, part.live_count // 10):
            return "purge"
        if _KIND_RANK[self._kind_for(part.live_count)] > _KIND_RANK[part.kind]:
            return "kind"
        if (part.kind == "ivf" and part.live_count >= IVF_RETRAIN_GROWTH * max(1, part.trained_rows)
                and _lists_for(part.live_count) > _ivf(part.index).nlist):
            return "kind"
        if not part.ids_are_rows and len(part.tombstones) > max(1000, part.live_count // 10):
            return "tombstones"
        return None

    def _kind_for(self, rows: int) -> str:
        """The kind of index this many vectors should be in."""
        if self.index_type == "ivf":
            return "ivf" if rows >= IVF_MIN_ROWS else "flat"
        if self.index_type != "auto":
            return self.index_type
        if rows >= AUTO_IVF_FROM:
            return "ivf"
        return "hnsw" if rows >= AUTO_HNSW_FROM else "flat"

    def rebuild(self) -> None:
        """Rebuild each profile's index from its live vectors (drops tombstones; a profile that
        outgrew its kind gets the next). An inverted file that keeps its lists is not rebuilt:
        its dead rows are dropped in place, and it is retrained only as it grows."""
        with self._lock:
            purged = [part for part in self._profiles.values()
                      if part.ids_are_rows and self._rebuild_reason(part) in (None, "purge")]
        for part in purged:
            with self._faiss_writes, self._lock:
                reason = "purge" if part.stale else "requested"
                part.purge()
            self._on_rebuild(reason, part.kind)
        with self._lock:
            plans = []
            for profile_id, part in self._profiles.items():
                if any(part is done for done in purged):
                    continue
                rows = np.flatnonzero(part.live[: part.rows])
                plans.append((profile_id, self._rebuild_reason(part) or "requested", part.rows, rows, part.vids[rows],
                              part.eids[rows], self._vectors(part, rows)))
        for profile_id, reason, rows_then, planned, vids, eids, vectors in plans:
            fresh = self._new_part(len(vids), vectors)
            if len(vids):
                fresh.add(vectors, vids, eids)
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
                        fresh.add(self._vectors(current, new_rows), new_vids, current.eids[new_rows])
                # Removed since the plan: its rows dead now, unless re-added (a new row, above).
                dead = current.vids[planned[~current.live[planned]]].tolist()
                removed = [vid for vid in dead if vid not in current.row_of]
                if removed:
                    fresh.remove(removed)
                self._profiles[profile_id] = fresh
            self._on_rebuild(reason, fresh.kind)

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
                          part.live[: part.rows].copy(), part.trained_rows) for profile_id, part in self._profiles.items()]
                entries = sum(part.live_count for part in self._profiles.values())
            listing = []
            for number, (profile_id, kind, index, *_, trained_rows) in enumerate(parts):
                faiss.write_index(index, str(staging / f"{number}.faiss"))  # adds wait for this
                listing.append({"profile": profile_id, "kind": kind, "file": str(number), "trained_rows": trained_rows})
        for number, (_, _, _, vids, eids, live, _) in enumerate(parts):
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
            # An inverted file holds a row's vector until its dead rows are purged; the others every row's.
            held = index.ntotal <= len(vids) if item["kind"] == "ivf" else index.ntotal == len(vids)
            if not (len(vids) == len(eids) == len(live) and held) or vids.dtype != np.int64:
                raise ValueError(f"profile {item['profile']}: rows do not match the index")
            live_rows = np.flatnonzero(live)
            row_of = _RowMap.of(vids[live_rows], live_rows)
            # Tombstones are the vids of dead rows that have no live row (a re-add is live).
            dead = vids[~live]
            tombstones = set(dead[~row_of.contains_many(dead)].tolist())
            part = _ProfileIndex(index, item["kind"], vids, eids.astype(ENTRY_ID_DTYPE), live, len(vids), row_of,
                                 tombstones, trained_rows=int(item.get("trained_rows", 0)))
            if part.ids_are_rows:
                part.stale = index.ntotal - len(row_of)
            profiles[item["profile"]] = part
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
            last_row = {vid: row for row, vid in enumerate(vids.tolist()) if vid in entry_ids}  # the last row wins
            eids = np.zeros(len(vids), dtype=ENTRY_ID_DTYPE)
            live = np.zeros(len(vids), dtype=np.bool_)
            rows = np.fromiter(last_row.values(), dtype=np.int64, count=len(last_row))
            eids[rows] = _entry_id_array([entry_ids[vid] for vid in last_row])
            live[rows] = True
            row_of = _RowMap.of(np.fromiter(last_row.keys(), dtype=np.int64, count=len(last_row)), rows)
            profiles[profile_id] = _ProfileIndex(index, kind, vids, eids, live, len(vids), row_of, set(tombstones))
        return profiles

    def _read_faiss(self, path: Path, kind: str) -> faiss.Index:
        index = faiss.read_index(str(path))
        if kind == "hnsw":
            _hnsw_of(cast(faiss.IndexIDMap, index)).hnsw.efSearch = HNSW_EF_SEARCH
        elif kind == "ivf":
            _ivf(index).nprobe = _probes(_ivf(index).nlist)
        return index

    def clear(self) -> None:
        """Drop everything (before a rebuild from the store)."""
        with self._lock:
            self._profiles = {}

    def _new_part(self, expected: int, vectors: np.ndarray | None = None) -> _ProfileIndex:
        """An empty index for `expected` vectors, of the kind that many should be in; an
        inverted file is trained on `vectors` (without them, or too few, exact search)."""
        kind = self._kind_for(expected)
        if kind == "ivf" and (vectors is None or len(vectors) < IVF_MIN_ROWS):
            kind = "flat"
        if kind == "flat":
            return _ProfileIndex(faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim)), "flat")
        if kind == "ivf":
            assert vectors is not None
            return _ProfileIndex(self._trained_ivf(vectors), "ivf", trained_rows=len(vectors))
        hnsw = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return _ProfileIndex(faiss.IndexIDMap2(hnsw), "hnsw")

    def _trained_ivf(self, vectors: np.ndarray) -> faiss.IndexIVFScalarQuantizer:
        """An inverted file of 8-bit codes, its lists (about 4 sqrt(n)) and code ranges trained
        on a sample of `vectors`. Codes are of the vectors themselves, not of their residuals,
        so that the lists can be read back as vectors for a later rebuild."""
        lists = _lists_for(len(vectors))
        index = _ivf(faiss.index_factory(self.dim, f"IVF{lists},SQ8", faiss.METRIC_INNER_PRODUCT))
        index.by_residual = False
        index.cp.niter = IVF_TRAIN_ITERATIONS
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
        index.cp.min_points_per_centroid = min(IVF_TRAIN_PER_LIST, len(vectors) // lists)  # no warning for few
        sample = np.random.default_rng(len(vectors)).choice(len(vectors), min(len(vectors), IVF_TRAIN_PER_LIST * lists),
                                                             replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
        index.nprobe = _probes(lists)
        return index

    def _vectors(self, part: _ProfileIndex, rows: np.ndarray) -> np.ndarray:
        """The stored vectors at these rows, read in bulk from the index's own storage."""
        if len(rows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if part.ids_are_rows:
            return _ivf_vectors(_ivf(part.index), rows, part.rows, self.dim)
        stored = cast(faiss.IndexIDMap, part.index).index.reconstruct_n(0, part.index.ntotal)
        return np.ascontiguousarray(stored[rows], dtype=np.float32)


def _lists_for(count: int) -> int:
    """Inverted lists for `count` vectors: the power of two nearest 4 sqrt(count), within bounds."""
    return int(min(IVF_MAX_LISTS, max(64, 2 ** round(np.log2(4 * np.sqrt(max(1, count)))))))


def _probes(lists: int) -> int:
    """How many of `lists` a search visits."""
    return min(lists, max(IVF_MIN_PROBES, round(lists * IVF_PROBE_SHARE)))


def _ivf(index: faiss.Index) -> faiss.IndexIVFScalarQuantizer:
    """An index known to be an inverted file of 8-bit codes, as one."""
    return cast(faiss.IndexIVFScalarQuantizer, index)


def _ivf_vectors(index: faiss.IndexIVFScalarQuantizer, rows: np.ndarray, total_rows: int, dim: int) -> np.ndarray:
    """The vectors of these rows decoded from an inverted file's lists (its ids are rows): one
    pass over the lists, decoding only the codes asked for."""
    out = np.zeros((len(rows), dim), dtype=np.float32)
    position = np.full(total_rows, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    lists = index.invlists
    assert lists is not None, "a trained inverted file has its lists"
    for number in range(index.nlist):
        size = lists.list_size(number)
        if size == 0:
            continue
        at = position[faiss.rev_swig_ptr(lists.get_ids(number), size)]
        wanted = at >= 0
        if wanted.any():
            codes = faiss.rev_swig_ptr(lists.get_codes(number), size * index.code_size).reshape(size, index.code_size)
            out[at[wanted]] = index.sq.decode(np.ascontiguousarray(codes[wanted]))
    return out


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
