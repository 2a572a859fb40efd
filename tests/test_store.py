"""The entry store against real servers: what a DELETE removed stays removed, writes are
all-or-nothing, a refused command is not an outage, and a restarted store is reconnected to."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest
import redis

from earmark.index.breaker import StoreRefused
from earmark.index.connection import open_client
from earmark.index.embedded import EmbeddedServer
from earmark.index.entry import Entry, make_entry_id
from earmark.index.keys import Keys
from earmark.index.store import FuzzyVerdict, Store
from tests.conftest import RedisServerProcess

TTL_S = 3600
MAXLEN = 1000


def _entry(text: str = "hello there", pcm: str = "pcm-digest") -> Entry:
    profile = "profile-1"
    return Entry(entry_id=make_entry_id(profile, pcm), profile_id=profile, pcm_digest=pcm, text=text,
                 normalized_text=text, language="en", duration_s=2.0, speech_s=1.8, engine_seconds=1.0)


def _run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def keys() -> Keys:
    return Keys(f"earmark-store-{uuid.uuid4().hex[:8]}:")


async def _with_store(url: str, keys: Keys, body):
    store = Store(open_client(url), keys)
    try:
        return await body(store)
    finally:
        await store.close()


def test_an_alias_that_escaped_a_delete_never_revives(store_url, keys, redis_client):
    """The entry no longer lists an alias before a DELETE (a listing lost in a failover): the
    DELETE cannot see the fuzzy alias, the original is cached again under the same id, and the
    copy's bytes must still not be served from the old verdict."""

    async def body(store: Store):
        first = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        verdict = FuzzyVerdict(0.91, "judge")
        assert await store.add_alias(first, "copy-bytes", verdict) == "added"
        copy_alias = keys.exact(first.profile_id, "copy-bytes")
        assert (await store.entry_and_verdict(copy_alias))[0] is not None
        redis_client.hdel(keys.entry(first.entry_id), keys.alias_member(copy_alias))
        assert await store.delete_entry(first.entry_id, stream_maxlen=MAXLEN)
        assert redis_client.exists(copy_alias)  # the DELETE could not know of it...
        second = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        assert second.entry_id == first.entry_id and second.generation != first.generation
        assert await store.entry_and_verdict(copy_alias) == (None, None)  # ...and it is dead
        assert not redis_client.exists(copy_alias)  # and cleaned up on the way
        # The re-created entry's own aliases work.
        found, _ = await store.entry_and_verdict(keys.exact(second.profile_id, "original-bytes"))
        assert found is not None and found.generation == second.generation

    _run(_with_store(store_url, keys, body))


def test_an_alias_written_while_a_delete_runs_is_dead(store_url, keys, redis_client):
    """A DELETE racing an alias write: the alias lands after the DELETE read the alias set."""

    async def body(store: Store):
        first = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        assert await store.delete_entry(first.entry_id, stream_maxlen=MAXLEN)
        # The losing side of the race: the fuzzy hit read the entry before the DELETE.
        assert await store.add_alias(first, "copy-bytes", FuzzyVerdict(0.9, "judge")) == "gone"
        assert not redis_client.exists(keys.exact(first.profile_id, "copy-bytes"))
        # Worse interleaving: its SET landed and it was listed in the entry after the DELETE read
        # the entry's listing, so the alias survives the DELETE.
        copy_alias = keys.exact(first.profile_id, "copy-bytes")
        again = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        assert await store.add_alias(again, "copy-bytes", FuzzyVerdict(0.9, "judge")) == "added"
        redis_client.hdel(keys.entry(again.entry_id), keys.alias_member(copy_alias))
        assert await store.delete_entry(again.entry_id, stream_maxlen=MAXLEN)
        await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        assert await store.entry_and_verdict(copy_alias) == (None, None)

    _run(_with_store(store_url, keys, body))


def test_old_format_aliases_are_not_followed(store_url, keys, redis_client):
    async def body(store: Store):
        entry = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        legacy = keys.exact(entry.profile_id, "legacy-bytes")
        redis_client.set(legacy, f"{entry.entry_id}|fuzzy:0.9000:judge")
        assert await store.entry_and_verdict(legacy) == (None, None)

    _run(_with_store(store_url, keys, body))


def test_an_entry_and_its_aliases_always_carry_a_ttl(store_url, keys, redis_client):
    async def body(store: Store):
        entry = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        for key in (keys.entry(entry.entry_id), keys.exact(entry.profile_id, "original-bytes")):
            assert 0 < redis_client.ttl(key) <= TTL_S, key

    _run(_with_store(store_url, keys, body))


def test_an_entry_lists_its_aliases_among_its_own_fields_and_a_delete_removes_them(store_url, keys, redis_client):
    """Issue 25: no alias set beside the entry; its aliases are fields of its hash (34 bytes
    each), so they go with it under eviction or expiry, and a DELETE removes every key they
    name, an alias set of an entry written before included."""

    async def body(store: Store):
        entry = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        assert await store.add_alias(entry, "copy-bytes", FuzzyVerdict(0.9, "judge")) == "added"
        assert await store.add_alias(entry, "copy-bytes", FuzzyVerdict(0.9, "judge")) == "seen"
        assert not redis_client.exists(keys.entry_aliases(entry.entry_id))
        aliases = [keys.exact(entry.profile_id, name) for name in ("original-bytes", "copy-bytes")]
        listed = [field for field in redis_client.hkeys(keys.entry(entry.entry_id)) if keys.is_alias_member(field)]
        assert sorted(keys.alias_key_of(field) for field in listed) == sorted(aliases)
        assert (await store.get_entry(entry.entry_id)) == entry  # the listing is not part of the entry
        legacy = keys.exact_before_records(entry.profile_id, "ab" * 20)  # listed in a set, as before
        redis_client.set(legacy, f"{entry.entry_id}|{entry.generation}")
        redis_client.sadd(keys.entry_aliases(entry.entry_id), keys.alias_member(legacy))
        assert await store.delete_entry(entry.entry_id, stream_maxlen=MAXLEN)
        assert not any(redis_client.exists(key) for key in (*aliases, legacy, keys.entry_aliases(entry.entry_id)))
        # An alias to the deleted entry is never listed: no hash is made that is no entry.
        assert await store.add_alias(entry, "late-bytes") == "gone"
        assert not redis_client.exists(keys.entry(entry.entry_id))

    _run(_with_store(store_url, keys, body))


def test_the_canonical_tier_reads_the_entry_by_its_id_without_an_alias(store_url, keys, redis_client):
    """The entry id is made from the profile and the decoded audio's digest: no canonical alias
    is written (one key less per entry), and one written before issue 25 is still deleted with
    its entry."""

    async def body(store: Store):
        entry = await store.put_entry(_entry(pcm="ab" * 32), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        assert not redis_client.exists(keys.canonical(entry.profile_id, entry.pcm_digest))
        found = await store.entry_by_canonical(entry.profile_id, entry.pcm_digest)
        assert found is not None and found.generation == entry.generation and not found.has_evidence
        assert await store.entry_by_canonical("profile-2", entry.pcm_digest) is None
        assert await store.entry_by_canonical(entry.profile_id, "cd" * 32) is None
        legacy = keys.canonical(entry.profile_id, entry.pcm_digest)  # as entries before issue 25 had
        redis_client.set(legacy, f"{entry.entry_id}|{entry.generation}")
        redis_client.sadd(keys.entry_aliases(entry.entry_id), legacy)
        assert await store.delete_entry(entry.entry_id, stream_maxlen=MAXLEN)
        assert not redis_client.exists(legacy)
        assert await store.entry_by_canonical(entry.profile_id, entry.pcm_digest) is None

    _run(_with_store(store_url, keys, body))


def test_deleting_an_unknown_entry_writes_no_event(store_url, keys, redis_client):
    async def body(store: Store):
        await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        before = redis_client.xlen(keys.index_stream())
        for _ in range(5):
            assert not await store.delete_entry(uuid.uuid4().hex, stream_maxlen=MAXLEN)
        assert redis_client.xlen(keys.index_stream()) == before

    _run(_with_store(store_url, keys, body))


def test_a_refused_command_is_not_an_outage(store_url, keys, redis_client):
    """WRONGTYPE from a foreign key in our namespace refuses that call only."""
    refused: list[str] = []

    async def body(store: Store):
        entry_id = uuid.uuid4().hex
        redis_client.set(keys.entry(entry_id), "not a hash")
        with pytest.raises(StoreRefused):
            await store.get_entry(entry_id)
        assert store.up and refused == ["WRONGTYPE"]
        stored = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        assert (await store.get_entry(stored.entry_id)).text == "hello there"

    async def run():
        store = Store(open_client(store_url), keys, on_refused=refused.append)
        try:
            await body(store)
        finally:
            await store.close()

    _run(run())


def test_a_write_refused_for_memory_destroys_nothing(tmp_path, keys):
    """Under OOM, re-writing an entry leaves the existing one whole, with its TTL, and the
    store stays up for reads."""
    server = EmbeddedServer(tmp_path / "oom")
    server.start()
    admin = redis.Redis.from_url(server.url)
    try:
        async def body(store: Store):
            entry = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")
            with pytest.raises(StoreRefused):
                await store.put_entry(_entry("a different text"), "other-bytes", TTL_S, stream_maxlen=MAXLEN)
            assert store.up
            kept = await store.get_entry(entry.entry_id)
            assert kept is not None and kept.text == "hello there" and kept.generation == entry.generation
            assert 0 < admin.ttl(keys.entry(entry.entry_id)) <= TTL_S
            found, _ = await store.entry_and_verdict(keys.exact(entry.profile_id, "original-bytes"))
            assert found is not None and found.text == "hello there"

        _run(_with_store(server.url, keys, body))
    finally:
        admin.close()
        server.stop()


def test_a_restarted_store_is_reconnected_without_an_outage(tmp_path, keys):
    """Pooled connections die with the server; the next call retries on a fresh one."""
    server = RedisServerProcess(tmp_path / "restart") if _has_redis_server() else None
    if server is None:
        pytest.skip("needs Debian's redis-server (installed by .ci/run)")
    server.start()
    outages: list[bool] = []
    try:
        async def run():
            store = Store(open_client(server.url), keys, on_state=outages.append)
            try:
                entry = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
                for _ in range(3):
                    server.stop()
                    server.start()  # same port, no data: the entry is gone, the store is not down
                    assert await store.get_entry(entry.entry_id) is None
                    entry = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
                assert store.up and outages == []
            finally:
                await store.close()

        _run(run())
    finally:
        server.stop()


def _has_redis_server() -> bool:
    import shutil

    return shutil.which("redis-server") is not None


def test_segments_are_stored_and_entries_without_them_stay_readable(store_url, keys, redis_client):
    """An entry keeps its timed segments and words; one written before segments were kept
    (no `seg` field) or with a damaged one reads as one segment over the whole audio; one whose
    record is damaged reads as no entry."""
    words = [{"word": "hello", "start": 0.1, "end": 0.5, "probability": 0.9}, {"word": "there", "start": 0.6, "end": 1.2}]
    segments = ({"id": 0, "start": 0.1, "end": 1.2, "text": "hello there", "words": words, "tokens": [1, 2], "seek": 0,
                 "avg_logprob": -0.2},)

    async def body(store: Store):
        written = await store.put_entry(replace(_entry(), segments=segments), "bytes-1", TTL_S, stream_maxlen=MAXLEN)
        assert (await store.get_entry(written.entry_id)).result()["segments"] == list(segments)
        # An entry written before records (one field each) with no segments, or damaged ones.
        key = keys.entry(written.entry_id)
        redis_client.hdel(key, "rec")
        redis_client.hset(key, mapping={"text": "hello there", "normalized_text": "hello there", "duration_s": "2.0"})
        for raw in (None, b"[{not json"):
            if raw is not None:
                redis_client.hset(key, "seg", raw)
            old = await store.get_entry(written.entry_id)
            assert old.result()["segments"] == [{"id": 0, "start": 0.0, "end": 2.0, "text": "hello there"}]
        # A damaged record is no entry: nothing of it is served.
        redis_client.hset(key, "rec", b"\x28\xb5\x2f\xfd damaged")
        assert await store.get_entry(written.entry_id) is None
        assert await store.get_entries([written.entry_id]) == [None]

    _run(_with_store(store_url, keys, body))


def test_an_older_earmark_never_reaches_an_entry_of_the_record_layout_by_its_exact_alias(store_url, keys, redis_client):
    """An earmark from before the record layout (issue 25) reads such an entry as an empty
    transcript. It looks exact aliases up under "exact3"; this version writes them under
    compact names ("x"), so during a rolling upgrade the older process misses and runs its
    engine instead of serving an empty answer. This version still follows the "exact3" and
    "exact4" aliases older ones wrote, to the entries they wrote."""
    async def body(store: Store):
        entry = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
        assert not redis_client.exists(keys.exact_before_records(entry.profile_id, "original-bytes"))
        assert redis_client.exists(keys.exact(entry.profile_id, "original-bytes"))
        found, _ = await store.entry_and_verdict_of_bytes(entry.profile_id, "original-bytes")
        assert found is not None and found.text == entry.text
        # Aliases older processes wrote (hex values, "exact3" and "exact4") are still followed.
        for older in (keys.exact_before_records(entry.profile_id, "older-bytes"),
                      keys.exact_before_compact(entry.profile_id, "older-bytes")):
            redis_client.set(older, f"{entry.entry_id}|{entry.generation}")
            found, _ = await store.entry_and_verdict_of_bytes(entry.profile_id, "older-bytes")
            assert found is not None and found.entry_id == entry.entry_id
            redis_client.delete(older)
        assert await store.entry_and_verdict_of_bytes(entry.profile_id, "unknown-bytes") == (None, None)

    _run(_with_store(store_url, keys, body))


def test_an_exact_alias_is_named_and_valued_compactly(store_url, keys, redis_client):
    """Issue 25: with real digests (hex), the alias key is the two digests' bytes in base64url
    and its value the entry id's and generation's, a fuzzy verdict after them; listed among the
    entry's fields by the same bytes, and followed, and deleted, like any alias."""
    profile, original, copy = "bf" * 12, "2e" * 20, "f2" * 20

    async def body(store: Store):
        entry = await store.put_entry(replace(_entry(), profile_id=profile), original, TTL_S, stream_maxlen=MAXLEN)
        assert await store.add_alias(entry, copy, FuzzyVerdict(0.9391, "db591f4277c0")) == "added"
        name = keys.exact(profile, original)
        assert len(name) - len(keys.prefix) == 46 and ":" not in name[len(keys.prefix) + 2:]
        assert len(redis_client.get(name)) == 32
        assert redis_client.get(keys.exact(profile, copy)).decode().endswith("|fuzzy:0.9391:db591f4277c0")
        assert (await store.entry_and_verdict_of_bytes(profile, original)) == (entry, None)
        found, verdict = await store.entry_and_verdict_of_bytes(profile, copy)
        assert found == entry and verdict == FuzzyVerdict(0.9391, "db591f4277c0")
        listed = {keys.alias_key_of(field) for field in redis_client.hkeys(keys.entry(entry.entry_id))
                  if keys.is_alias_member(field)}
        assert listed == {name, keys.exact(profile, copy)}
        assert await store.delete_entry(entry.entry_id, stream_maxlen=MAXLEN)
        assert not redis_client.exists(name) and not redis_client.exists(keys.exact(profile, copy))

    _run(_with_store(store_url, keys, body))
