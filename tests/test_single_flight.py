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

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx

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
