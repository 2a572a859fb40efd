"""The store's footprint per second of cached audio (index/footprint.py): from a sample that
covers every entry it is MEMORY USAGE summed over every key the service wrote, divided
by the audio's seconds; a bulk store's disk is counted apart."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest

from earmark.index.bulk import BulkStore
from earmark.index.connection import open_client
from earmark.index.entry import Entry, make_entry_id
from earmark.index.footprint import sample_footprint
from earmark.index.keys import Keys
from earmark.index.store import FuzzyVerdict, Store


def _entry(pcm: str, seconds: float) -> Entry:
    return Entry(entry_id=make_entry_id("profile-1", pcm), profile_id="profile-1", pcm_digest=pcm,
                 text="hello there " * int(seconds), normalized_text="", language="en", duration_s=seconds,
                 speech_s=seconds - 0.5, engine_seconds=1.0, embedding=b"\x01" * 256, fingerprint=b"\x02" * 4000,
                 fingerprint_levels=b"\x03" * 500, detail=bytes(range(256)) * 50, pitch=b"\x04" * 800)


@pytest.mark.parametrize("with_bulk", [False, True])
def test_a_sample_of_every_entry_measures_every_key(store_url, redis_client, tmp_path, with_bulk):
    keys = Keys(f"earmark-footprint-{uuid.uuid4().hex[:8]}:")

    async def body():
        store = Store(open_client(store_url), keys, bulk=BulkStore(tmp_path, keys.prefix) if with_bulk else None)
        try:
            first = await store.put_entry(_entry("pcm-1", 4.0), "bytes-1", 3600, stream_maxlen=100)
            await store.put_entry(_entry("pcm-2", 12.0), "bytes-2", 3600, stream_maxlen=100)
            await store.put_entry(replace(_entry("pcm-3", 3.0), negative=True, text=""), "bytes-3", 3600,
                                  stream_maxlen=100)
            await store.add_alias(first, "copy-bytes", FuzzyVerdict(0.9, "judge"))
            return await sample_footprint(store, entry_count=2), await sample_footprint(store, 0, limit=0)
        finally:
            await store.close()

    footprint, nothing = asyncio.run(body())
    every_key = sum(redis_client.memory_usage(key, samples=0) for key in redis_client.scan_iter(f"{keys.prefix}*"))
    every_key -= redis_client.memory_usage(keys.index_stream(), samples=0)  # the stream's usage is sampled:
    every_key += redis_client.memory_usage(keys.index_stream())  # the estimate takes it as MEMORY USAGE does
    assert footprint is not None and nothing is None
    assert footprint.sampled_audio_s == 16.0 and footprint.sampled_entries == 2
    # Within a few percent: a hash's table may be mid-rehash when one of the two is taken.
    assert footprint.memory_bytes_per_s == pytest.approx(every_key / 16.0, rel=0.1)
    files = sum(path.stat().st_size for path in tmp_path.rglob("*") if path.is_file())
    assert footprint.bulk_bytes_per_s == pytest.approx(files / 16.0) and (files > 0) == with_bulk


def test_the_embedded_store_keeps_entry_hashes_compact(tmp_path):
    """The embedded store keeps an entry hash (a record and an embedding, its verification bytes
    in a bulk directory) in its compact encoding: a listpack, not a hash table."""
    import redis

    from earmark.index.embedded import EmbeddedServer

    server = EmbeddedServer(tmp_path / "store")
    server.start()
    try:
        keys = Keys("earmark:")

        async def body():
            store = Store(open_client(server.url), keys, bulk=BulkStore(tmp_path / "bulk", keys.prefix))
            try:
                return await store.put_entry(_entry("pcm-1", 30.0), "bytes-1", 3600, stream_maxlen=100)
            finally:
                await store.close()

        entry = asyncio.run(body())
        client = redis.Redis.from_url(server.url)
        assert client.object("encoding", keys.entry(entry.entry_id)) == b"listpack"
        client.close()
    finally:
        server.stop()
