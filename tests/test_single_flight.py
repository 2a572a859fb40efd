"""Concurrent identical misses run the engine once, in one process and across processes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.audio_tools import fixture_bytes
from tests.conftest import live_server


def _recognize(url: str, data: bytes) -> dict:
    response = httpx.post(f"{url}/recognize", files={"file": ("a.wav", data, "application/octet-stream")}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _engine_runs(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("earmark_engine_runs_total "):
            return float(line.split()[1])
    raise AssertionError("earmark_engine_runs_total missing")


def test_twenty_concurrent_identical_misses_run_the_engine_once(settings, engine):
    data = fixture_bytes("recorded.wav")
    with live_server(settings, engine) as url, ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: _recognize(url, data), range(20)))
        assert _engine_runs(url) == 1
    tiers = sorted(a["cache"]["tier"] for a in answers)
    assert tiers.count("miss") == 1 and set(tiers) <= {"miss", "exact"}
    assert len({a["cache"]["entry"] for a in answers}) == 1
    assert len({a["result"]["text"] for a in answers}) == 1


def test_two_processes_sharing_the_store_run_the_engine_once(settings, engine):
    from service.engines.pocketsphinx_engine import PocketSphinxEngine

    data = fixture_bytes("weather.wav")
    with live_server(settings, engine) as first, live_server(settings, PocketSphinxEngine()) as second:
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda i: _recognize((first, second)[i % 2], data), range(10)))
        assert _engine_runs(first) + _engine_runs(second) == 1
    assert len({a["cache"]["entry"] for a in answers}) == 1
    assert [a["cache"]["tier"] for a in answers].count("miss") == 1


def test_a_full_engine_queue_answers_503_with_retry_after(settings, engine):
    from dataclasses import replace

    from tests.audio_tools import encode, read_pcm

    pcm, rate = read_pcm(fixture_bytes("recorded.wav"))
    uploads = [encode((pcm * (0.5 + 0.1 * i)).astype("int16"), rate, fmt="wav", codec="pcm_s16le") for i in range(4)]
    with live_server(replace(settings, engine_workers=1, engine_queue=0), engine) as url, ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(
            lambda d: httpx.post(f"{url}/recognize", files={"file": ("a.wav", d, "application/octet-stream")}, timeout=120),
            uploads,
        ))
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and statuses[-1] == 503
    busy = next(r for r in responses if r.status_code == 503)
    assert int(busy.headers["Retry-After"]) >= 1 and "busy" in busy.json()["msg"]
