"""The bulk store (index/bulk.py): entries' verification bytes in files, outside the store's
memory, read back exactly; never used for an entry they were not written for; removed with
their entry (DELETE at once, expiry and eviction by the sweep); and the service serves fuzzy
copies with it and reports its footprint on /metrics (index/footprint.py)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import numpy as np
from starlette.testclient import TestClient

from earmark.fingerprint.decode import decode_audio
from earmark.index.bulk import BulkStore
from earmark.index.connection import open_client
from earmark.index.entry import Entry, make_entry_id
from earmark.index.keys import Keys
from earmark.index.store import Store
from earmark.service.api.app import create_app
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.verification import Verifier
from tests.audio_tools import fixture_bytes
from tests.http_helpers import recognize

TTL_S = 3600
MAXLEN = 100


def _entry(pcm: str = "pcm-digest") -> Entry:
    """An entry with the real features of a recording."""
    verifier = Verifier(FuzzyThresholds())
    features = verifier.features(decode_audio(fixture_bytes("minimal_pairs/teen_ty_010_a.flac"), 3600).pcm_16k)
    entry = Entry(entry_id=make_entry_id("profile-1", pcm), profile_id="profile-1", pcm_digest=pcm,
                  text="The train departs from platform thirteen.", normalized_text="", language="en",
                  duration_s=2.5, speech_s=features.speech_s, engine_seconds=1.0)
    return verifier.attach(entry, features)


def _with_store(url: str, root, body, keys: Keys | None = None):
    events: list[tuple[str, str]] = []

    async def run():
        store = Store(open_client(url), keys or Keys(f"earmark-bulk-{uuid.uuid4().hex[:8]}:"),
                      bulk=BulkStore(root, "any"), on_bulk=lambda operation, result: events.append((operation, result)))
        try:
            return await body(store), events
        finally:
            await store.close()

    return asyncio.run(run())


def test_verification_bytes_live_in_the_bulk_store_and_read_back_exactly(store_url, tmp_path, redis_client):
    entry = _entry()

    async def body(store: Store):
        stored = await store.put_entry(entry, "bytes-1", TTL_S, stream_maxlen=MAXLEN)
        fields = redis_client.hgetall(store.keys.entry(entry.entry_id))
        read = await store.get_entry(entry.entry_id)
        by_alias = await store.entry_by_alias(store.keys.exact(entry.profile_id, "bytes-1"))
        return stored, fields, read, by_alias

    (stored, fields, read, by_alias), events = _with_store(store_url, tmp_path, body)
    assert b"ev" not in fields and fields[b"evb"] == stored.evidence_digest.encode()
    assert read == stored and read.evidence == entry.evidence
    # An answer by alias needs no verification: no file is read for it.
    assert by_alias is not None and by_alias.text == entry.text and not by_alias.has_evidence
    assert events == [("write", "ok"), ("read", "ok")]


def test_missing_or_foreign_bytes_leave_the_entry_unverifiable(store_url, tmp_path):
    """A file of another write (a generation the entry does not hold, damaged bytes) or none at
    all reads as no evidence: the entry is never fuzzy-matched, and still exists."""
    entry = _entry()

    async def body(store: Store):
        stored = await store.put_entry(entry, "bytes-1", TTL_S, stream_maxlen=MAXLEN)
        path = store.bulk._path(entry.entry_id, stored.generation)
        path.write_bytes(path.read_bytes()[:-1] + b"\x00")
        damaged = await store.get_entry(entry.entry_id)
        path.unlink()
        missing = await store.get_entry(entry.entry_id)
        return damaged, missing

    (damaged, missing), events = _with_store(store_url, tmp_path, body)
    verifier = Verifier(FuzzyThresholds())
    query = verifier.features(decode_audio(fixture_bytes("minimal_pairs/teen_ty_010_a.flac"), 3600).pcm_16k)
    for read in (damaged, missing):
        assert read is not None and read.text == entry.text and not read.has_evidence
        accepted, _, _ = verifier.judge(query, entry.profile_id, float(np.dot(query.embedding, query.embedding)), read)
        assert not accepted
    assert events[1:] == [("read", "damaged"), ("read", "missing")]


def test_a_refused_bulk_write_keeps_the_bytes_in_the_store(store_url, tmp_path, redis_client):
    (tmp_path / "full").write_text("not a directory")
    entry = _entry()

    async def body(store: Store):
        await store.put_entry(entry, "bytes-1", TTL_S, stream_maxlen=MAXLEN)
        return await store.get_entry(entry.entry_id), redis_client.hgetall(store.keys.entry(entry.entry_id))

    (read, fields), events = _with_store(store_url, tmp_path / "full", body)
    assert b"ev" in fields and b"evb" not in fields and read.evidence == entry.evidence
    assert events == [("write", "failed")]


def test_bulk_bytes_go_with_their_entry(store_url, tmp_path, redis_client):
    """DELETE removes them at once; a rewrite of the entry removes the generation it replaced;
    the sweep removes those of an entry evicted or expired, and keeps a live entry's."""
    first, second = _entry("pcm-1"), _entry("pcm-2")

    async def body(store: Store):
        bulk = store.bulk
        await store.put_entry(first, "bytes-1", TTL_S, stream_maxlen=MAXLEN)
        rewritten = await store.put_entry(first, "bytes-1", TTL_S, stream_maxlen=MAXLEN)
        after_rewrite = sorted(path.name for path in bulk._paths_of(first.entry_id))
        await store.delete_entry(first.entry_id, stream_maxlen=MAXLEN)
        after_delete = bulk._paths_of(first.entry_id)
        kept = await store.put_entry(second, "bytes-2", TTL_S, stream_maxlen=MAXLEN)
        evicted = await store.put_entry(_entry("pcm-3"), "bytes-3", TTL_S, stream_maxlen=MAXLEN)
        redis_client.delete(store.keys.entry(evicted.entry_id))  # what eviction or expiry does
        young = await store.sweep_bulk()  # the grace period: a file this young may be mid-write
        swept = await store.sweep_bulk(older_than_s=0)
        return (rewritten, after_rewrite, after_delete, young, swept, bulk._paths_of(kept.entry_id),
                bulk._paths_of(evicted.entry_id), kept)

    (rewritten, after_rewrite, after_delete, young, swept, kept_paths, evicted_paths, kept), _ = \
        _with_store(store_url, tmp_path, body)
    assert after_rewrite == [f"{first.entry_id}.{rewritten.generation}"]
    assert after_delete == [] and young == 0 and swept == 1
    assert [path.name for path in kept_paths] == [f"{kept.entry_id}.{kept.generation}"] and evicted_paths == []


def test_the_service_serves_copies_from_bulk_bytes_and_reports_its_footprint(settings, engine, recorded, mp3_copy,
                                                                               redis_client, tmp_path):
    with TestClient(create_app(replace(settings, bulk_dir=str(tmp_path / "bulk")), engine=engine)) as client:
        assert recognize(client, recorded)["cache"]["tier"] == "miss"
        answer = recognize(client, mp3_copy)
        metrics = client.get("/metrics").text
    assert answer["cache"]["tier"] == "fuzzy"
    keys = [key for key in redis_client.scan_iter(match=f"{settings.key_prefix}entry:*")]
    assert keys and all(b"ev" not in redis_client.hgetall(key) for key in keys)
    gauge = next(line for line in metrics.splitlines() if line.startswith("earmark_store_bytes_per_audio_second "))
    assert 0 < float(gauge.split()[1]) < 5000
    assert 'earmark_bulk_operations_total{operation="read",result="ok"}' in metrics
    disk = next(line for line in metrics.splitlines() if line.startswith("earmark_bulk_bytes_per_audio_second "))
    assert float(disk.split()[1]) > 0


def test_the_embedded_store_keeps_its_bulk_bytes_in_the_data_directory(tmp_path, store_url):
    """One host, one store: `earmark serve` without --redis-url keeps entries' verification
    bytes under its data directory; with --redis-url, only where --bulk-dir says."""
    from earmark.service.cli import _with_store
    from earmark.service.config import Settings

    settings, server = _with_store(Settings(data_dir=tmp_path / "data"))
    try:
        assert settings.bulk_dir == str(tmp_path / "data" / "bulk")
    finally:
        server.stop()
    external, none = _with_store(Settings(data_dir=tmp_path / "data", redis_url=store_url))
    assert none is None and external.bulk_dir == ""
