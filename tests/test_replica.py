"""The index replica against a real store: index events are notifications, so an event that
arrives before its entry is readable is retried until the entry appears, never dropped."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np

from earmark.fingerprint.config import DEFAULT
from earmark.fingerprint.embedding import EMBEDDING_DIM, at_stored_precision
from earmark.index.connection import open_client
from earmark.index.entry import Entry
from earmark.index.keys import Keys
from earmark.index.replica import IndexReplica
from earmark.index.store import Store
from earmark.index.vectors import VectorIndex


def test_an_add_event_ahead_of_its_entry_is_retried_until_the_entry_appears(store_url, redis_client, tmp_path):
    keys = Keys(f"earmark-replica-{uuid.uuid4().hex[:8]}:")
    entry_id, profile = uuid.uuid4().hex, "profile-1"
    vector = np.zeros(EMBEDDING_DIM, dtype="<f4")
    vector[0] = 1.0

    async def run() -> None:
        index = VectorIndex(EMBEDDING_DIM, "flat")
        replica = IndexReplica(open_client(store_url, max_connections=4), keys, index, tmp_path, DEFAULT.version)
        replica.start()
        await asyncio.wait_for(replica.ready.wait(), 20)
        # The event lands first (another shard, a lagging write): nothing to read yet.
        redis_client.xadd(keys.index_stream(), {"op": "add", "entry": entry_id, "profile": profile})
        await asyncio.sleep(1.5)
        assert entry_id not in index.entry_ids()
        # Then the entry becomes readable, with no new event to announce it.
        redis_client.hset(keys.entry(entry_id), mapping={"profile": profile, "emb": vector.tobytes(),
                                                          "fp_version": DEFAULT.version})
        deadline = time.monotonic() + 10
        while entry_id not in index.entry_ids():
            assert time.monotonic() < deadline, "the replica dropped the early event"
            await asyncio.sleep(0.1)
        await replica.stop()

    asyncio.run(run())


def test_an_entry_stored_by_the_service_is_indexed_by_a_replica_with_the_writers_vector(store_url, tmp_path):
    """Issue 25: an entry keeps its embedding in half precision (`e16`, 128 bytes). The vector a
    replica reads back is the one the writing process indexed (`Entry.embedding_vector`), bit
    for bit, so every process ranks candidates alike."""
    keys = Keys(f"earmark-replica-{uuid.uuid4().hex[:8]}:")
    vector = np.random.default_rng(5).normal(size=EMBEDDING_DIM).astype("<f4")
    written = Entry(entry_id=uuid.uuid4().hex, profile_id="p", pcm_digest="00", text="t", normalized_text="t",
                    language="en", duration_s=1.0, speech_s=1.0, engine_seconds=0.1,
                    embedding=at_stored_precision(vector / np.linalg.norm(vector)).tobytes(),
                    fingerprint_version=DEFAULT.version)

    async def run() -> list[tuple[str, float]]:
        client = open_client(store_url, max_connections=4)
        stored = await Store(client, keys).put_entry(written, "ab" * 20, 600, stream_maxlen=100)
        fields = await client.hgetall(keys.entry(stored.entry_id))
        assert len(fields[b"e16"]) == 2 * EMBEDDING_DIM and b"emb" not in fields
        assert Entry.from_fields(stored.entry_id, fields).embedding == written.embedding
        index = VectorIndex(EMBEDDING_DIM, "flat")
        replica = IndexReplica(client, keys, index, tmp_path, DEFAULT.version)
        replica.start()
        await asyncio.wait_for(replica.ready.wait(), 20)
        deadline = time.monotonic() + 10
        while stored.entry_id not in index.entry_ids():
            assert time.monotonic() < deadline, "the replica never indexed the entry"
            await asyncio.sleep(0.1)
        found = index.search("p", written.embedding_vector, 1)
        await replica.stop()
        return found

    ((entry_id, similarity),) = asyncio.run(run())
    assert entry_id == written.entry_id and abs(similarity - 1.0) < 1e-3


def test_a_replica_moves_a_grown_profile_to_an_inverted_file_and_restarts_from_its_snapshot(
        store_url, redis_client, tmp_path, monkeypatch):
    """Past its threshold a profile's index becomes an inverted file, built beside the stream
    tail from the vectors it holds; the snapshot a stop writes brings it back as it was."""
    import earmark.index.vectors as vectors_module

    monkeypatch.setattr(vectors_module, "IVF_MIN_ROWS", 200)
    keys = Keys(f"earmark-replica-{uuid.uuid4().hex[:8]}:")
    vectors = np.random.default_rng(3).normal(size=(300, EMBEDDING_DIM)).astype("<f4")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [uuid.uuid4().hex for _ in range(300)]

    async def replica_of(index: VectorIndex) -> IndexReplica:
        replica = IndexReplica(open_client(store_url, max_connections=4), keys, index, tmp_path, DEFAULT.version)
        replica.start()
        await asyncio.wait_for(replica.ready.wait(), 20)
        return replica

    async def run() -> None:
        index = VectorIndex(EMBEDDING_DIM, "ivf")
        replica = await replica_of(index)
        pipe = redis_client.pipeline()
        for entry_id, vector in zip(ids, vectors, strict=True):
            pipe.hset(keys.entry(entry_id), mapping={"profile": "p", "emb": vector.tobytes(), "fp_version": DEFAULT.version})
            pipe.xadd(keys.index_stream(), {"op": "add", "entry": entry_id, "profile": "p"})
        pipe.execute()
        deadline = time.monotonic() + 30
        while not (len(index) == 300 and index._profiles["p"].kind == "ivf"):
            assert time.monotonic() < deadline, "the replica never moved the profile to an inverted file"
            await asyncio.sleep(0.1)
        assert index.search("p", vectors[42], 1)[0][0] == ids[42]
        await replica.stop()

        async def not_from_the_store(self) -> None:
            raise AssertionError("the restarted replica rebuilt from the store instead of loading its snapshot")

        monkeypatch.setattr(IndexReplica, "_rebuild_from_store", not_from_the_store)
        restarted = VectorIndex(EMBEDDING_DIM, "ivf")
        replica = await replica_of(restarted)
        assert len(restarted) == 300 and restarted._profiles["p"].kind == "ivf"
        assert restarted.search("p", vectors[7], 1)[0][0] == ids[7]
        await replica.stop()

    asyncio.run(run())
