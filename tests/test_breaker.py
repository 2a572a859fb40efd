"""index/breaker.py, as the store drives it, against real servers that we refuse, kill and
freeze: only a lost or frozen store is an outage; while it lasts calls fail at once without
touching the store; one background probe (the half-open test) closes the breaker when the store
answers again, with no request needed; a refused command (OOM, WRONGTYPE) never opens it."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
import uuid

import pytest
import redis

from earmark.index.breaker import CircuitBreaker, StoreRefused, StoreUnavailable
from earmark.index.connection import open_client
from earmark.index.embedded import EmbeddedServer
from earmark.index.entry import Entry, make_entry_id
from earmark.index.keys import Keys
from earmark.index.store import PROBE_INTERVAL_S, FuzzyVerdict, Store
from tests.conftest import RedisServerProcess

TTL_S = 3600
MAXLEN = 1000
RECOVERY_TIMEOUT_S = 30.0  # generous: a busy 2-core machine; the probe runs every second


def _entry(pcm: str = "pcm-digest") -> Entry:
    profile = "profile-1"
    return Entry(entry_id=make_entry_id(profile, pcm), profile_id=profile, pcm_digest=pcm, text="hello there",
                 normalized_text="hello there", language="en", duration_s=2.0, speech_s=1.8, engine_seconds=1.0)


class _Recorder:
    """What the store reported through its callbacks (the service turns them into metrics)."""

    def __init__(self) -> None:
        self.errors = 0
        self.states: list[bool] = []
        self.refused: list[str] = []

    def store(self, url: str, keys: Keys) -> Store:
        def count_error() -> None:
            self.errors += 1

        return Store(open_client(url), keys, on_error=count_error, on_state=self.states.append,
                     on_refused=self.refused.append)


async def _wait_until_up(store: Store) -> None:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while not store.up:
        assert time.monotonic() < deadline, "the probe did not close the breaker"
        await asyncio.sleep(0.1)


def test_one_warning_per_outage_and_one_when_it_ends(caplog):
    """Logs say when an outage starts and ends, not once per failed request."""
    breaker = CircuitBreaker("store")
    with caplog.at_level(logging.WARNING, logger="earmark.index.breaker"):
        breaker.allow()
        breaker.record_success()  # closed already: nothing to say
        for _ in range(5):
            breaker.record_failure(ConnectionError("refused"))
        with pytest.raises(StoreUnavailable, match="store is down"):
            breaker.allow()
        breaker.record_success()
        breaker.allow()
        breaker.record_failure(ConnectionError("again"))
    messages = [r.getMessage() for r in caplog.records]
    assert [("unreachable" in m, "is back" in m) for m in messages] == [(True, False), (False, True), (True, False)]


def test_refusals_of_every_kind_never_open_the_breaker(tmp_path):
    """OOM (tiny maxmemory, noeviction) on every kind of write and WRONGTYPE on reads, again and
    again: each refused call costs only itself; reads keep answering; nothing is an outage."""
    server = EmbeddedServer(tmp_path / "refusing")
    server.start()
    admin = redis.Redis.from_url(server.url)
    keys = Keys(f"earmark-breaker-{uuid.uuid4().hex[:8]}:")
    seen = _Recorder()

    async def run() -> None:
        store = seen.store(server.url, keys)
        try:
            kept = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
            foreign = uuid.uuid4().hex
            admin.set(keys.entry(foreign), "not a hash")
            admin.rpush(keys.exact("profile-1", "listed-bytes"), "not an alias")
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")
            refusals = [
                lambda: store.put_entry(_entry("other-pcm"), "other-bytes", TTL_S, stream_maxlen=MAXLEN),
                lambda: store.add_alias(kept, "copy-bytes", FuzzyVerdict(0.9, "judge")),
                lambda: store.acquire_lock(keys.lock("profile-1", "other-pcm"), 1000),
                lambda: store.get_entry(foreign),
                lambda: store.entry_and_verdict(keys.exact("profile-1", "listed-bytes")),
            ]
            for _ in range(4):
                for refused in refusals:
                    with pytest.raises(StoreRefused):
                        await refused()
                    assert store.up
                found, _ = await store.entry_and_verdict(keys.exact(kept.profile_id, "original-bytes"))
                assert found is not None and found.generation == kept.generation
            admin.config_set("maxmemory", "0")
            await store.put_entry(_entry("other-pcm"), "other-bytes", TTL_S, stream_maxlen=MAXLEN)
            assert (await store.get_entry(make_entry_id("profile-1", "other-pcm"))) is not None
        finally:
            await store.close()

    try:
        asyncio.run(run())
    finally:
        admin.close()
        server.stop()
    assert seen.states == [] and seen.errors == 0
    assert len(seen.refused) == 20 and set(seen.refused) == {"OOM", "WRONGTYPE"}
    assert seen.refused.count("OOM") == 12


def test_a_lost_store_opens_the_breaker_and_only_the_probe_closes_it(tmp_path):
    """A killed store: the first call finds out (one error), every later call fails at once
    without trying the store; probes keep it open while the store is gone, and close it by
    themselves, with no request, once the store is back."""
    server = EmbeddedServer(tmp_path / "lost")
    server.start()
    keys = Keys(f"earmark-breaker-{uuid.uuid4().hex[:8]}:")
    seen = _Recorder()

    async def run() -> None:
        store = seen.store(server.url, keys)
        try:
            entry = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
            server.kill()
            with pytest.raises(StoreUnavailable) as lost:
                await store.get_entry(entry.entry_id)
            assert not isinstance(lost.value, StoreRefused)
            assert not store.up and seen.states == [False] and seen.errors == 1
            for _ in range(10):
                with pytest.raises(StoreUnavailable, match="store is down"):
                    await store.entry_and_verdict(keys.exact(entry.profile_id, "original-bytes"))
                with pytest.raises(StoreUnavailable, match="store is down"):
                    await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
            assert not await store.ping()
            assert seen.errors == 1  # nothing above reached for the store
            await asyncio.sleep(3 * PROBE_INTERVAL_S + 0.5)  # let probes run against the dead store
            assert not store.up and seen.states == [False]
            server.start()
            await _wait_until_up(store)  # no request in between: the probe found it
            assert seen.states == [False, True]
            await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
            assert (await store.get_entry(entry.entry_id)) is not None
        finally:
            await store.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs Debian's redis-server (installed by .ci/run)")
def test_a_frozen_store_is_an_outage_with_a_single_probe(tmp_path):
    """A store that stops answering (SIGSTOP) with ten calls in flight: all of them fail as an
    outage (not a refusal); one probe, not ten, closes the breaker once it thaws."""
    server = RedisServerProcess(tmp_path / "frozen")
    server.start()
    keys = Keys(f"earmark-breaker-{uuid.uuid4().hex[:8]}:")
    seen = _Recorder()

    async def run() -> None:
        store = seen.store(server.url, keys)
        try:
            entry = await store.put_entry(_entry(), "original-bytes", TTL_S, stream_maxlen=MAXLEN)
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                results = await asyncio.gather(*(store.get_entry(entry.entry_id) for _ in range(10)),
                                               return_exceptions=True)
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert all(isinstance(r, StoreUnavailable) and not isinstance(r, StoreRefused) for r in results), results
            assert not store.up
            await _wait_until_up(store)
            await asyncio.sleep(3 * PROBE_INTERVAL_S)  # a second probe, had one been started, would report too
            assert seen.states.count(True) == 1 and seen.states[-1] is True
            assert set(seen.states[:-1]) == {False}
            assert (await store.get_entry(entry.entry_id)).text == "hello there"
        finally:
            await store.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()
