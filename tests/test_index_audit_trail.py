"""The store's side of the audit trail against real servers (index/event_stream.py,
index/query_prints.py, index/operator_reads.py): records appended and read back by time and in
pages, query prints kept in their entry's alias set and expiring with it, the entries an audit
lists, and nothing raised over a store that is down when only a trail is being written."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

import pytest

from earmark.index.connection import open_client
from earmark.index.entry import Entry, make_entry_id
from earmark.index.event_stream import PAGE, EventStream
from earmark.index.keys import Keys
from earmark.index.operator_reads import all_entry_ids, entry_size_bytes
from earmark.index.query_prints import UNEXPIRING_ENTRY_PRINT_TTL_S, keep_query_print, read_query_print
from earmark.index.store import Store

DOWN_URL = "redis://127.0.0.1:9/0"  # a port nothing listens on: every call fails at once


def _entry(pcm: str) -> Entry:
    profile = "profile-1"
    return Entry(entry_id=make_entry_id(profile, pcm), profile_id=profile, pcm_digest=pcm, text="hello",
                 normalized_text="hello", language="en", duration_s=2.0, speech_s=1.8, engine_seconds=1.0)


@pytest.fixture
def keys() -> Keys:
    return Keys(f"earmark-trail-{uuid.uuid4().hex[:8]}:")


def _with_store(url: str, keys: Keys, body):
    async def run():
        store = Store(open_client(url), keys)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def test_records_are_read_back_newest_first_in_pages_and_by_time_past_one_page(store_url, keys):
    async def body(store: Store):
        stream = EventStream(store)
        count = PAGE + 5  # `between` must read a second page
        for number in range(count):
            assert await stream.append({"n": str(number)}, maxlen=10 * PAGE)
        assert await stream.length() == count
        newest = await stream.newest(3)
        assert [fields[b"n"] for _, fields in newest] == [b"1004", b"1003", b"1002"]
        older = await stream.newest(2, before=newest[-1][0])
        assert [fields[b"n"] for _, fields in older] == [b"1001", b"1000"]
        everything = await stream.between(time.time() - 60, time.time() + 60)
        assert [int(fields[b"n"]) for _, fields in everything] == list(range(count))
        assert await stream.between(time.time() + 3600, time.time() + 7200) == []

    _with_store(store_url, keys, body)


def test_appending_to_a_store_that_is_down_says_so_and_raises_nothing(keys):
    async def body(store: Store):
        assert await EventStream(store).append({"n": "1"}, maxlen=100) is False
        assert await keep_query_print(store, "p", "d" * 64, _entry("pcm"), b"fp", b"levels") is False

    _with_store(DOWN_URL, keys, body)


def test_a_query_print_is_listed_among_its_entry_aliases_and_expires_with_it(store_url, keys, redis_client):
    async def body(store: Store):
        entry = await store.put_entry(_entry("pcm-a"), "b" * 64, 3600, stream_maxlen=100)
        assert await keep_query_print(store, entry.profile_id, "c" * 64, entry, b"\x01\x02", b"\x03")
        assert await read_query_print(store, entry.profile_id, "c" * 64) == (entry.entry_id, b"\x01\x02", b"\x03")
        assert await read_query_print(store, entry.profile_id, "e" * 64) is None
        key = keys.query_print(entry.profile_id, "c" * 64)
        assert keys.alias_member(key) in redis_client.hkeys(keys.entry(entry.entry_id))
        assert redis_client.pexpiretime(key) == entry.expires_at_ms
        assert await store.delete_entry(entry.entry_id, stream_maxlen=100)
        assert await read_query_print(store, entry.profile_id, "c" * 64) is None

        unexpiring = replace(_entry("pcm-b"), expires_at_ms=0)
        assert await keep_query_print(store, unexpiring.profile_id, "f" * 64, unexpiring, b"\x01", b"")
        ttl = redis_client.ttl(keys.query_print(unexpiring.profile_id, "f" * 64))
        assert UNEXPIRING_ENTRY_PRINT_TTL_S - 60 < ttl <= UNEXPIRING_ENTRY_PRINT_TTL_S

    _with_store(store_url, keys, body)


def test_the_audit_lists_every_entry_and_the_console_its_size(store_url, keys):
    async def body(store: Store):
        written = [await store.put_entry(_entry(f"pcm-{n}"), f"{n:064x}", 3600, stream_maxlen=100) for n in range(3)]
        assert sorted(await all_entry_ids(store)) == sorted(entry.entry_id for entry in written)
        size = await entry_size_bytes(store, written[0].entry_id)
        assert size is not None and size > 0
        assert await entry_size_bytes(store, "0" * 32) is None

    _with_store(store_url, keys, body)
