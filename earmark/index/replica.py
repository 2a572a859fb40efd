"""Keep this process's vector index in step with the store.

Start-up loads the newest snapshot and replays the change stream from the snapshot's offset;
with no usable snapshot (first start, another fingerprint version, or a stream trimmed past the
snapshot's offset) the index is rebuilt by scanning the entries in Redis. Afterwards the
stream is tailed, so an entry added or deleted through any replica reaches this one within a
moment, and snapshots are written now and then so the next start is quick.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import redis.exceptions

from earmark.index.connection import open_client, relearn_topology
from earmark.index.entry import embedding_of_fields
from earmark.index.keys import Keys
from earmark.index.vectors import VectorIndex

log = logging.getLogger(__name__)

SCAN_BATCH = 1000
READ_BLOCK_MS = 1000
READ_COUNT = 500
SNAPSHOT_EVERY_S = 60.0
# Expired and evicted entries leave no event; a sweep finds them. Lookups never need it (every
# candidate is re-read from the store), it only keeps the index from filling with the dead.
SWEEP_EVERY_S = 600.0
# An `add` event whose entry is not readable yet (on a Cluster the event and the entry live on
# different shards; a shard paused or failing over lags) is retried this long, never dropped
# at first sight: replicas converge.
PENDING_FOR_S = 120.0
RETRY_AFTER_ERROR_S = 1.0
STOP_WAIT_S = 2.0


class IndexReplica:
    """Owns the derived `VectorIndex`: loads, rebuilds, tails, snapshots."""

    def __init__(self, client, keys: Keys, index: VectorIndex, snapshot_root: Path | None, fingerprint_version: str) -> None:
        """`client` is the replica's own (it closes it on `stop`); snapshots go under
        `snapshot_root`, in a folder per store identity."""
        self.client = client
        self.keys = keys
        self.index = index
        self.snapshot_root = snapshot_root
        self.snapshot_dir: Path | None = None
        self.fingerprint_version = fingerprint_version
        self.offset = "0-0"
        self.ready = asyncio.Event()
        self._changes_since_snapshot = 0
        self._pending: dict[str, float] = {}  # entry id -> until when its add event is retried
        self._task: asyncio.Task | None = None
        self._rebuild: asyncio.Task | None = None
        self._lost_since: float | None = None  # when the store was lost, while it is

    @classmethod
    def open(cls, url: str, keys: Keys, index: VectorIndex, snapshot_root: Path | None,
             fingerprint_version: str) -> IndexReplica:
        """A replica of the store at `url` on connections of its own, apart from requests': its
        stream reads block by design (`READ_BLOCK_MS`), and must not hold a request's up."""
        client = open_client(url, max_connections=4, blocking_s=READ_BLOCK_MS / 1000)
        return cls(client, keys, index, snapshot_root, fingerprint_version)

    def start(self) -> None:
        """Begin loading and tailing in the background; `ready` is set once caught up."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop tailing, write a final snapshot and close the replica's connections."""
        if self._task is not None:
            # Cancel until it sticks: on Python 3.11 a cancel landing while redis-py sends a
            # command can be swallowed (CPython gh-86296).
            deadline = asyncio.get_running_loop().time() + STOP_WAIT_S
            while not self._task.done() and asyncio.get_running_loop().time() < deadline:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.1)
        if self._rebuild is not None:
            self._rebuild.cancel()
        if self.ready.is_set() and self._changes_since_snapshot:
            await asyncio.to_thread(self._save)
        await self.client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self._catch_up()
                self.ready.set()
                await self._tail()
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
                self._lost(exc)
                # A Cluster master may have failed over: the next read must go to the new
                # master of the stream's slot, not to the address that failed.
                await relearn_topology(self.client)
                await asyncio.sleep(RETRY_AFTER_ERROR_S)
            except Exception:  # a bug must not stop the replica for good: log it and go on
                log.exception("index replica failed; retrying")
                await asyncio.sleep(RETRY_AFTER_ERROR_S)

    def _lost(self, error: BaseException) -> None:
        """One warning per outage (the retries meanwhile at debug level), like the store's breaker."""
        if self._lost_since is None:
            self._lost_since = time.monotonic()
            log.warning("index replica lost the store (%s); retrying every %.0f s", error, RETRY_AFTER_ERROR_S)
        else:
            log.debug("index replica still without the store (%s)", error)

    def _found(self) -> None:
        if self._lost_since is not None:
            log.warning("index replica reached the store again after %.1f s", time.monotonic() - self._lost_since)
            self._lost_since = None

    async def _catch_up(self) -> None:
        if not self.ready.is_set():
            offset = None
            if self.snapshot_root is not None:
                self.snapshot_dir = self.snapshot_root / await self._store_identity()
                offset = await asyncio.to_thread(self.index.load, self.snapshot_dir, self.fingerprint_version)
            if offset is not None and await self._stream_reaches_back_to(offset):
                self.offset = offset
                log.info("vector index: loaded snapshot (%d entries) at stream offset %s", len(self.index), offset)
            else:
                await self._rebuild_from_store()

    async def _store_identity(self) -> str:
        """This store's random identity (made by the first replica to ask): snapshots are kept
        per identity, so a flushed or different store never gets another store's snapshot,
        while a restarted embedded store (new port, same data) keeps its own."""
        await self.client.set(self.keys.store_id(), uuid.uuid4().hex, nx=True)
        return (await self.client.get(self.keys.store_id())).decode()

    async def _stream_reaches_back_to(self, offset: str) -> bool:
        """True when no event after `offset` has been trimmed away."""
        first = await self.client.xrange(self.keys.index_stream(), count=1)
        last = await self.client.xrevrange(self.keys.index_stream(), count=1)
        if not first:
            return offset == "0-0"  # a stream that vanished (flushed store) is a new history
        if _id_tuple(last[0][0].decode()) < _id_tuple(offset):
            return False  # the stream was recreated behind our back
        return _id_tuple(first[0][0].decode()) <= _next_id(offset)

    async def _rebuild_from_store(self) -> None:
        """Scan every entry with an embedding; events after the scan began are replayed later."""
        started = time.perf_counter()
        last = await self.client.xrevrange(self.keys.index_stream(), count=1)
        offset = last[0][0].decode() if last else "0-0"
        self.index.clear()
        pattern = self.keys.entry_pattern()
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=pattern, count=SCAN_BATCH):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                await self._index_keys(batch)
                batch = []
        await self._index_keys(batch)
        self.offset = offset
        self._changes_since_snapshot = len(self.index)
        log.info("vector index: rebuilt from the store (%d entries) in %.1f s", len(self.index), time.perf_counter() - started)
        if self.snapshot_dir is not None:
            await asyncio.to_thread(self._save)

    async def _index_keys(self, keys: list[bytes]) -> None:
        if not keys:
            return
        entry_ids = [self.keys.entry_id_of(key) for key in keys]
        await self._index_entries(entry_ids)

    async def _index_entries(self, entry_ids: list[str]) -> list[str]:
        """Read these entries' vectors and add the ones that exist and match our version;
        returns the ids whose entries could not be read (not there, or not yet)."""
        pipe = self.client.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.hmget(self.keys.entry(entry_id), "profile", "e16", "emb", "fp_version")
        rows = await pipe.execute()
        by_profile: dict[str, tuple[list[str], list[np.ndarray]]] = {}
        missing = [entry_id for entry_id, (profile, *_) in zip(entry_ids, rows, strict=True) if profile is None]
        for entry_id, (profile, half, full, version) in zip(entry_ids, rows, strict=True):
            embedding = embedding_of_fields(half, full)
            if not embedding or version is None or version.decode() != self.fingerprint_version:
                continue
            ids, vectors = by_profile.setdefault(profile.decode(), ([], []))
            ids.append(entry_id)
            vectors.append(np.frombuffer(embedding, dtype="<f4"))
        for profile, (ids, vectors) in by_profile.items():
            # Off the event loop: an add waits while a snapshot is being serialised.
            await asyncio.to_thread(self.index.add_many, profile, ids, np.vstack(vectors))
        return missing

    async def _tail(self) -> None:
        last_snapshot = last_sweep = time.monotonic()
        while True:
            response = await self.client.xread({self.keys.index_stream(): self.offset}, count=READ_COUNT, block=READ_BLOCK_MS)
            self._found()
            for _, events in response or []:
                await self.apply(events)
            if self._pending:
                await self._retry_pending()
            if self.snapshot_dir is not None and self._changes_since_snapshot and time.monotonic() - last_snapshot > SNAPSHOT_EVERY_S:
                await asyncio.to_thread(self._save)
                last_snapshot = time.monotonic()
            if self.index.needs_rebuild() and (self._rebuild is None or self._rebuild.done()):
                # In the background: building HNSW for a large index takes minutes, and the
                # stream must keep flowing meanwhile (rebuild applies what changed during it).
                self._rebuild = asyncio.get_running_loop().create_task(asyncio.to_thread(self.index.rebuild))
            if time.monotonic() - last_sweep > SWEEP_EVERY_S:
                await self._sweep()
                last_sweep = time.monotonic()

    async def _sweep(self) -> None:
        """Drop vectors whose entries expired or were evicted (no stream event tells us)."""
        entry_ids = self.index.entry_ids()
        for start in range(0, len(entry_ids), SCAN_BATCH):
            batch = entry_ids[start : start + SCAN_BATCH]
            pipe = self.client.pipeline(transaction=False)
            for entry_id in batch:
                pipe.exists(self.keys.entry(entry_id))
            for entry_id, exists in zip(batch, await pipe.execute(), strict=True):
                if not exists:
                    self.index.remove(entry_id)
                    self._changes_since_snapshot += 1
            await asyncio.sleep(0)

    async def _retry_pending(self) -> None:
        """Index the entries whose add events came before the entries were readable."""
        now = time.monotonic()
        self._pending = {e: until for e, until in self._pending.items() if until >= now}
        if self._pending:
            still_missing = set(await self._index_entries(list(self._pending)))
            self._pending = {e: until for e, until in self._pending.items() if e in still_missing}

    async def apply(self, events: list) -> None:
        """Apply stream events (id, fields) in order; the offset moves only once they are in,
        so a store error mid-batch replays the batch (applying an event twice is harmless).
        An added entry that cannot be read yet is retried later (`PENDING_FOR_S`)."""
        added: list[str] = []
        missing: list[str] = []
        for _, fields in events:
            op = fields.get(b"op")
            entry_id = fields.get(b"entry", b"").decode()
            if op == b"add":
                added.append(entry_id)
            elif op == b"del":
                if added:
                    missing += await self._index_entries(added)
                    added = []
                self.index.remove(entry_id)
                self._pending.pop(entry_id, None)
                missing = [e for e in missing if e != entry_id]
        if added:
            missing += await self._index_entries(added)
        until = time.monotonic() + PENDING_FOR_S
        for entry_id in missing:
            self._pending.setdefault(entry_id, until)
        if events:
            self.offset = events[-1][0].decode()
            self._changes_since_snapshot += len(events)

    def _save(self) -> None:
        assert self.snapshot_dir is not None, "snapshots are saved only once a snapshot directory is known"
        self.index.save(self.snapshot_dir, self.offset, self.fingerprint_version)
        self._changes_since_snapshot = 0


def _id_tuple(stream_id: str) -> tuple[int, int]:
    millis, _, sequence = stream_id.partition("-")
    return int(millis), int(sequence or 0)


def _next_id(stream_id: str) -> tuple[int, int]:
    millis, sequence = _id_tuple(stream_id)
    return millis, sequence + 1
