"""The index replica against a real store: index events are notifications, so an event that
arrives before its entry is readable is retried until the entry appears, never dropped."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np

from earmark.fingerprint.config import DEFAULT
from earmark.fingerprint.embedding import EMBEDDING_DIM
from earmark.index.connection import open_client
from earmark.index.keys import Keys
from earmark.index.replica import IndexReplica
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
