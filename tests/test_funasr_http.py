"""The `funasr-http` engine against a server speaking the FunASR runtime's HTTP protocol
(tests/funasr_protocol_server.py: a real uvicorn server, backed by PocketSphinx here since
torch and funasr are not installed; see its docstring).

A miss is forwarded as the `audio` field and its sentences' millisecond times become segments;
a re-encoded copy is answered from cache without reaching the server; an HTTP 200 with a
non-zero `code` is a 502 and nothing is cached; a busy server's 503 is a 503 with its
Retry-After; a server that does not answer in time is a 504; a 413 from the nginx in front is
the client's 413, its 401 a 502."""

from __future__ import annotations

from dataclasses import replace

import pytest
from starlette.testclient import TestClient

from earmark.service.api.app import create_app
from earmark.service.engines.base import RecognitionOptions, Segment
from earmark.service.engines.upstream.base import UpstreamConfig, UpstreamError
from earmark.service.engines.upstream.funasr_http import FunASRHttpEngine
from tests.audio_tools import encode, fixture_bytes, read_pcm
from tests.funasr_protocol_server import FunASRProtocolServer
from tests.test_app import keys_under
from tests.waiting import wait_for
from tests.test_upstream import metric

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)


def recognize(client, data: bytes, name: str = "a.wav", **fields):
    return client.post("/recognize", files={"file": (name, data, "application/octet-stream")}, data=fields)


@pytest.fixture(scope="module")
def funasr_server(engine):
    server = FunASRProtocolServer(engine)
    with server.serve() as url:
        server.url = url
        yield server


@pytest.fixture
def funasr(funasr_server):
    """The server, reset to its normal answers after each test."""
    funasr_server.mode = "ok"
    funasr_server.release.clear()
    yield funasr_server
    funasr_server.mode = "ok"
    funasr_server.release.set()


@pytest.fixture
def funasr_settings(settings, funasr):
    return replace(settings, engine="funasr-http", upstream_url=funasr.url, upstream_model="paraformer-zh",
                   upstream_revision="v2.0.4")


@pytest.fixture
def front(funasr_settings):
    with TestClient(create_app(funasr_settings)) as client:
        yield client


def test_a_miss_is_forwarded_with_sentence_times_and_a_copy_is_cached(front, funasr, recorded):
    before = funasr.requests
    first = recognize(front, recorded)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["cache"]["tier"] == "miss" and "recorded" in body["result"]["text"]
    assert funasr.requests == before + 1
    segment = body["result"]["segments"][0]
    assert 0.0 <= segment["start"] < segment["end"] <= 4.1, "milliseconds became seconds"
    copy = encode(*read_pcm(recorded), fmt="mp3", codec="libmp3lame", bitrate=64000)
    wait_for(lambda: front.get("/health").json()["index_size"] >= 1)  # the entry reached the vector index
    again = recognize(front, copy, name="a.mp3")
    assert again.json()["cache"]["tier"] in ("canonical", "fuzzy")
    assert again.json()["result"]["text"] == body["result"]["text"]
    assert funasr.requests == before + 1, "a cached answer must not reach the server"
    verbose = front.post("/v1/audio/transcriptions", files={"file": ("a.wav", recorded)},
                         data={"model": "whisper-1", "response_format": "srt"})
    assert verbose.status_code == 200 and "recorded" in verbose.text and funasr.requests == before + 1


def test_options_the_server_cannot_take_are_refused_before_sending(front, funasr, recorded):
    before = funasr.requests
    for fields, named in (({"language": "zh"}, "language"), ({"hotwords": "魔搭"}, "hotwords"),
                          ({"prompt": "hello"}, "prompt")):
        refused = recognize(front, recorded, **fields)
        assert refused.status_code == 422 and named in refused.json()["msg"]
    assert funasr.requests == before


def test_http_200_with_a_non_zero_code_is_a_502_and_nothing_is_cached(front, funasr, funasr_settings, recorded,
                                                                        redis_client):
    funasr.mode = "code"
    before = funasr.requests
    for attempt in range(2):
        failed = recognize(front, recorded)
        assert failed.status_code == 502, failed.text
        assert "code 1" in failed.json()["msg"] and "读取音频文件发生错误" in failed.json()["msg"]
        assert funasr.requests == before + attempt + 1
    assert keys_under(redis_client, funasr_settings.key_prefix) == set()
    assert metric(front, 'earmark_upstream_requests_total{outcome="error"}') == 2
    funasr.mode = "ok"
    assert recognize(front, recorded).json()["cache"]["tier"] == "miss"  # nothing was cached before


def test_a_server_error_is_a_502_the_server_counts_as_down_and_nothing_is_cached(front, funasr, funasr_settings,
                                                                                recorded, redis_client):
    funasr.mode = "crash"
    failed = recognize(front, recorded)
    assert failed.status_code == 502 and "HTTP 500" in failed.json()["msg"] and "Internal Server Error" in failed.json()["msg"]
    upstream = front.get("/health").json()["upstream"]
    assert upstream["state"] == "down" and "HTTP 500" in upstream["last_error"]
    assert metric(front, "earmark_upstream_up") == 0
    assert keys_under(redis_client, funasr_settings.key_prefix) == set()
    funasr.mode = "ok"
    assert recognize(front, recorded).json()["cache"]["tier"] == "miss"
    assert front.get("/health").json()["upstream"]["state"] == "up", "an answer brings it back up"


def test_a_body_over_the_servers_size_limit_is_the_clients_413_and_the_server_stays_up(front, funasr, funasr_settings,
                                                                                       recorded, redis_client):
    funasr.mode = "too_large"
    before = funasr.requests
    for attempt in range(2):
        refused = recognize(front, recorded)
        assert refused.status_code == 413, refused.text
        msg = refused.json()["msg"]
        assert msg.startswith("the upstream ASR server refused this request (HTTP 413: '413 Request Entity Too Large'): ")
        assert "a 0.1 MB 16 kHz mono WAV of 4 s" in msg and "send shorter audio" in msg
        assert funasr.requests == before + attempt + 1, "not cached: forwarded again"
    upstream = front.get("/health").json()["upstream"]
    assert upstream["state"] == "up" and upstream["last_error"] == ""
    assert metric(front, 'earmark_upstream_requests_total{outcome="refused"}') == 2
    assert metric(front, 'earmark_errors_total{endpoint="recognize",status="413"}') == 2
    assert keys_under(redis_client, funasr_settings.key_prefix) == set()


def test_a_401_from_a_proxy_in_front_stays_a_502(front, funasr, funasr_settings, recorded, redis_client):
    funasr.mode = "unauthorized"
    failed = recognize(front, recorded)
    assert failed.status_code == 502 and "HTTP 401" in failed.json()["msg"], failed.text
    assert "HTTP 401" in front.get("/health").json()["upstream"]["last_error"]
    assert metric(front, 'earmark_upstream_requests_total{outcome="error"}') == 1
    assert keys_under(redis_client, funasr_settings.key_prefix) == set()


def test_a_busy_server_is_a_503_with_its_retry_after(front, funasr, funasr_settings, recorded, redis_client):
    funasr.mode = "busy"
    busy = front.post("/v1/audio/transcriptions", files={"file": ("a.wav", recorded)}, data={"model": "whisper-1"})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "7"
    assert busy.json()["error"]["type"] == "server_error"
    assert busy.json()["msg"] == "the upstream is overloaded (HTTP 503); retry after 7 s"
    assert metric(front, 'earmark_upstream_requests_total{outcome="overloaded"}') == 1
    assert keys_under(redis_client, funasr_settings.key_prefix) == set()


def test_a_server_that_does_not_answer_in_time_is_a_504(funasr_settings, funasr, recorded, redis_client):
    funasr.mode = "slow"
    short = encode(read_pcm(recorded)[0][:22050], 22050, fmt="wav", codec="pcm_s16le")  # 1 s: allowance 0.5 + 2 s
    with TestClient(create_app(replace(funasr_settings, engine_timeout_s=0.5))) as client:
        late = recognize(client, short)
        assert late.status_code == 504, late.text
        assert "did not" in late.json()["msg"] and "within" in late.json()["msg"]
        # The pool's allowance or the request's own timeout ran out first: either way, counted once.
        assert metric(client, 'earmark_upstream_requests_total{outcome="timeout"}') + \
            metric(client, 'earmark_upstream_requests_total{outcome="cancelled"}') == 1
    funasr.release.set()
    assert keys_under(redis_client, funasr_settings.key_prefix) == set()


def test_health_shows_the_funasr_server(front, funasr):
    import time

    deadline = time.monotonic() + 30
    while front.get("/health").json()["upstream"]["state"] != "up":  # GET /recognition answers 405: up
        assert time.monotonic() < deadline, "the health check never ran"
        time.sleep(0.1)
    upstream = front.get("/health").json()["upstream"]
    assert upstream["endpoint"] == f"{funasr.url}/recognition" and upstream["model"] == "paraformer-zh"


def test_misses_go_upstream_at_most_max_connections_at_once_and_hits_do_not_wait(funasr_settings, funasr, recorded):
    """Three different recordings at once with 2 connections and no queue: 2 reach the server
    and are held there, the 3rd is refused at once (503); meanwhile a cached answer is served."""
    import asyncio

    import httpx

    from tests.conftest import live_server

    others = [fixture_bytes(name) for name in ("weather.wav", "librivox_0890.flac", "librivox_0930.flac")]
    limited = replace(funasr_settings, upstream_max_connections=2, engine_queue=0)
    funasr.max_in_progress = 0
    with live_server(limited) as url:
        cached = httpx.post(f"{url}/recognize", files={"file": ("a.wav", recorded)}, timeout=120)
        assert cached.json()["cache"]["tier"] == "miss"
        funasr.mode = "slow"

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                async def post(data):
                    return await client.post("/recognize", files={"file": ("x", data)})
                tasks = [asyncio.create_task(post(data)) for data in others]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)  # the refused one
                for _ in range(3000):  # the other two reach the server, and are held there
                    if funasr.in_progress == 2:
                        break
                    await asyncio.sleep(0.02)
                assert funasr.in_progress == 2
                hit = await post(recorded)  # answered while the upstream holds both connections
                funasr.release.set()
                return hit, await asyncio.gather(*tasks)

        hit, answers = asyncio.run(burst())
    assert hit.json()["cache"]["tier"] == "exact"
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200, 200, 503], [answer.text for answer in answers]
    refused = next(answer for answer in answers if answer.status_code == 503)
    assert int(refused.headers["retry-after"]) >= 1 and "busy" in refused.json()["msg"]
    assert funasr.max_in_progress == 2


def test_the_protocol_reads_code_0_and_refuses_anything_else():
    """engines/upstream/funasr_http.py on the server's own answers: sentence times in ms become
    seconds (empty sentences dropped); any `code` but 0 is a failure, even under HTTP 200."""
    engine = FunASRHttpEngine(UpstreamConfig(url="http://127.0.0.1:9/asr/"))
    assert engine.endpoint == "http://127.0.0.1:9/asr/recognition"
    assert FunASRHttpEngine(UpstreamConfig(url="http://127.0.0.1:9/recognition")).endpoint == "http://127.0.0.1:9/recognition"
    profile = engine.resolve(RecognitionOptions())
    heard = engine.parse(b'{"text": " hello world ", "code": 0, "sentences": [{"text": "hello", "start": 120, "end": 980},'
                         b' {"text": " ", "start": 980, "end": 1000}, {"text": "world", "start": 1000, "end": 1850}]}', profile)
    assert heard.text == "hello world" and heard.segments == (Segment(0.12, 0.98, "hello"), Segment(1.0, 1.85, "world"))
    for answer, says in [(b'{"msg": "bad audio", "code": 1}', "code 1"), (b'{"text": "x"}', "code None"),
                         (b'[]', "not a JSON object"), (b'{"code": 0}', "no 'text'")]:
        with pytest.raises(UpstreamError, match=says):
            engine.parse(answer, profile)
