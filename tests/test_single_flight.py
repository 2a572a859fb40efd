"""Concurrent identical misses run the engine once, in one process and across processes; a full
engine queue answers 503 at once.

The engine is the default one, Whisper tiny.en, behind a gate the test opens
(tests/gated_engine.py), so "while the first request is in the engine" is a certainty: every
other request provably arrives while the engine is still running the first one, however fast or
slow the machine is. Without single flight these tests fail (the followers never show up as
waiting, and more than one engine run is counted), rather than passing because the requests
happened to run one after another. (Whisper, not PocketSphinx: a gated engine runs in a thread
of the test's process, and PocketSphinx holds the GIL for seconds, long enough for the
services' store commands in the same process to time out; the service runs it in worker
processes for that reason, but a gate cannot reach into those.)
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest

from earmark.index.connection import open_client
from earmark.index.entry import Entry, make_entry_id
from earmark.index.keys import Keys
from earmark.index.store import Store
from earmark.service.engines.errors import EngineFailure
from earmark.service.metrics import Metrics
from earmark.service.pipeline.single_flight import MissesInFlight
from tests.audio_tools import fixture_bytes
from tests.conftest import live_server
from tests.gated_engine import WAIT_S, GatedEngine
from tests.waiting import wait_for


def _post(url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/recognize", files={"file": ("a.wav", data, "application/octet-stream")}, timeout=120)


def _recognize(url: str, data: bytes) -> dict:
    response = _post(url, data)
    assert response.status_code == 200, response.text
    return response.json()


def _metric(url: str, sample: str) -> float:
    """The value of one sample line of /metrics (name with its labels, as exported); 0 if absent."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return 0.0


def _runs(url: str) -> float:
    return _metric(url, "earmark_engine_runs_total")


def _waits(url: str, scope: str) -> float:
    return _metric(url, f'earmark_single_flight_waits_total{{scope="{scope}"}}')


def test_twenty_concurrent_identical_misses_run_the_engine_once(settings, whisper_engine):
    """The first request holds the engine (gate closed) while the other 19 arrive: all 19 wait
    on it, then one engine run answers all 20 (one miss, 19 `exact`, one entry)."""
    data = fixture_bytes("recorded.wav")
    gated = GatedEngine(whisper_engine, open_now=False)
    with live_server(settings, gated) as url, ThreadPoolExecutor(20) as pool:
        first = pool.submit(_recognize, url, data)
        assert gated.started.wait(WAIT_S), "the first request never reached the engine"
        others = [pool.submit(_recognize, url, data) for _ in range(19)]
        try:
            wait_for(lambda: _waits(url, "process") == 19, timeout_s=WAIT_S)
            assert _runs(url) == 0  # the first is still in the engine: nobody answered by running it again
        finally:
            gated.gate.set()  # a failure above must not leave the engine waiting for its full minute
        answers = [first.result()] + [f.result() for f in others]
        assert _runs(url) == 1
    assert [a["cache"]["tier"] for a in answers] == ["miss"] + ["exact"] * 19
    assert len({a["cache"]["entry"] for a in answers}) == 1
    assert len({a["result"]["text"] for a in answers}) == 1


def test_two_processes_sharing_the_store_run_the_engine_once(settings, whisper_engine):
    """Two services on one store (each with its own in-process flights). The first holds the
    engine; requests to the second for the same audio wait on the store's lock (one of them)
    and on that one (the rest), then are answered from the first's entry: the second service
    never runs its engine."""
    data = fixture_bytes("weather.wav")
    first_engine, second_engine = GatedEngine(whisper_engine, open_now=False), GatedEngine(whisper_engine)
    with live_server(settings, first_engine) as first, live_server(settings, second_engine) as second, \
            ThreadPoolExecutor(5) as pool:
        leader = pool.submit(_recognize, first, data)
        assert first_engine.started.wait(WAIT_S), "the first service's request never reached its engine"
        followers = [pool.submit(_recognize, second, data) for _ in range(4)]
        try:
            wait_for(lambda: _waits(second, "store") == 1 and _waits(second, "process") == 3, timeout_s=WAIT_S)
        finally:
            first_engine.gate.set()
        answers = [leader.result()] + [f.result() for f in followers]
        assert (_runs(first), _runs(second)) == (1, 0)
    assert not second_engine.started.is_set()
    assert len({a["cache"]["entry"] for a in answers}) == 1
    assert [a["cache"]["tier"] for a in answers][0] == "miss"
    assert {a["cache"]["tier"] for a in answers[1:]} <= {"canonical", "exact"}


def test_a_full_engine_queue_answers_503_with_retry_after(settings, whisper_engine):
    """One worker, no queue: while the engine runs one request, another audio is refused at once
    with 503 and Retry-After, and nothing is cached for it; the running one is answered."""
    gated = GatedEngine(whisper_engine, open_now=False)
    recorded, weather = fixture_bytes("recorded.wav"), fixture_bytes("weather.wav")
    with live_server(replace(settings, engine_workers=1, engine_queue=0), gated) as url, ThreadPoolExecutor(1) as pool:
        running = pool.submit(_recognize, url, recorded)
        assert gated.started.wait(WAIT_S), "the first request never reached the engine"
        try:
            busy = _post(url, weather)
        finally:
            gated.gate.set()
        assert busy.status_code == 503, busy.text
        assert int(busy.headers["Retry-After"]) >= 1 and "busy" in busy.json()["msg"]
        assert running.result()["cache"]["tier"] == "miss"
        refused = httpx.post(f"{url}/lookup", files={"file": ("a.wav", weather, "application/octet-stream")}, timeout=120)
        assert refused.json()["cache"]["tier"] == "miss"
        assert _runs(url) == 1


async def _until(condition, what: str, timeout_s: float = WAIT_S) -> None:
    """Let the loop run until `condition()` holds (a condition, not a pause)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.01)


def _waits_of(metrics: Metrics, scope: str) -> float:
    return metrics.single_flight_waits.labels(scope=scope)._value.get()


def test_misses_in_flight_leads_once_per_audio_in_a_process_and_passes_the_answer_or_failure_on(settings):
    """pipeline/single_flight.py: while one request leads a miss, others for the same (profile,
    audio) wait and are handed its upload digest and answer; another audio leads its own; a
    leader cancelled fails its followers with an EngineFailure they may retry; nothing stays
    in flight after."""
    async def run() -> None:
        store = Store(open_client(settings.redis_url), Keys(settings.key_prefix))
        metrics = Metrics()
        flights = MissesInFlight(store, metrics, settings.lock_ttl_ms)
        release, started, leads = asyncio.Event(), asyncio.Event(), []

        async def lead() -> str:
            leads.append("lead")
            started.set()
            await release.wait()
            return "the answer"

        async def follow(leader_digest: str, answer: str) -> str:
            return f"{leader_digest}: {answer}"

        def miss(audio_digest: str, upload_digest: str) -> asyncio.Task:
            return asyncio.create_task(flights.once_in_process("profile", audio_digest, upload_digest, lead=lead, follow=follow))

        try:
            first = miss("audio-a", "bytes-1")
            await asyncio.wait_for(started.wait(), WAIT_S)
            others = [miss("audio-a", "bytes-2"), miss("audio-a", "bytes-3")]
            await _until(lambda: _waits_of(metrics, "process") == 2, "both followers waiting")
            assert len(leads) == 1
            release.set()
            assert await first == "the answer"
            assert [await task for task in others] == ["bytes-1: the answer"] * 2
            assert await miss("audio-b", "bytes-4") == "the answer" and len(leads) == 2  # another audio leads its own

            release.clear()
            started.clear()
            cancelled = miss("audio-c", "bytes-5")
            await asyncio.wait_for(started.wait(), WAIT_S)
            follower = miss("audio-c", "bytes-6")
            await _until(lambda: _waits_of(metrics, "process") == 3, "the follower waiting")
            cancelled.cancel()
            with pytest.raises(EngineFailure, match="cancelled; retry"):
                await asyncio.wait_for(follower, WAIT_S)
            assert flights._flights == {}
        finally:
            await store.close()

    asyncio.run(run())


def test_misses_in_flight_runs_once_across_processes_on_the_store_lock(settings, redis_client):
    """Two services' MissesInFlight on one real store: the first takes the lock and runs, for
    longer than the lock's expiry (so it must be renewed); the second waits on the lock and
    serves the entry the first writes, never running. Then the lock is gone, and a later miss
    that takes it serves the entry already written rather than running. Without the store,
    the miss runs at once, without a lock."""
    settings = replace(settings, lock_ttl_ms=1000)
    profile_digest, audio_digest = "profile-1", "pcm-1"
    entry = Entry(entry_id=make_entry_id(profile_digest, audio_digest), profile_id=profile_digest, pcm_digest=audio_digest,
                  text="hello", normalized_text="hello", language="en", duration_s=1.0, speech_s=1.0, engine_seconds=0.5)
    lock_key = Keys(settings.key_prefix).lock(profile_digest, audio_digest)

    async def run() -> None:
        stores = [Store(open_client(settings.redis_url), Keys(settings.key_prefix)) for _ in range(3)]
        metrics = [Metrics() for _ in stores]
        first, second, third = (MissesInFlight(store, m, settings.lock_ttl_ms) for store, m in zip(stores, metrics, strict=True))
        runs: list[tuple[str, bool]] = []

        async def serve(found: Entry) -> str:
            return f"served {found.entry_id}"

        def runner(name: str, seconds: float = 0.0):
            async def run_miss(store_ok: bool) -> str:
                runs.append((name, store_ok))
                await asyncio.sleep(seconds)
                if store_ok:
                    await stores[0].put_entry(entry, f"bytes-{name}", 60, stream_maxlen=100)
                return f"ran {name}"
            return run_miss

        try:
            leader = asyncio.create_task(first.under_lock(profile_digest, audio_digest, True, serve=serve,
                                                          run=runner("first", 1.6)))
            await _until(lambda: runs == [("first", True)], "the first running")
            assert redis_client.exists(lock_key)
            follower = asyncio.create_task(second.under_lock(profile_digest, audio_digest, True, serve=serve,
                                                             run=runner("second")))
            await _until(lambda: _waits_of(metrics[1], "store") == 1, "the second waiting on the lock")
            assert await leader == "ran first"
            assert await follower == f"served {entry.entry_id}"
            assert runs == [("first", True)] and _waits_of(metrics[1], "store") == 1
            assert not redis_client.exists(lock_key)

            assert await third.under_lock(profile_digest, audio_digest, True, serve=serve,
                                          run=runner("third")) == f"served {entry.entry_id}"
            assert _waits_of(metrics[2], "store") == 0 and not redis_client.exists(lock_key)

            assert await third.under_lock(profile_digest, "pcm-2", False, serve=serve, run=runner("outage")) == "ran outage"
            assert runs == [("first", True), ("outage", False)]
            assert not redis_client.exists(Keys(settings.key_prefix).lock(profile_digest, "pcm-2"))
        finally:
            for store in stores:
                await store.close()

    asyncio.run(run())

