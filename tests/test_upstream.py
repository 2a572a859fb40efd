"""The `openai` upstream engine against a real OpenAI-compatible server: a second earmark
process (`python -m earmark serve --engine pocketsphinx`, its own data dir, store and API key).

A miss is forwarded; a re-encoded copy is answered from the first earmark's cache and never
reaches the upstream (counted by the upstream's own /metrics); the upstream's refusal of a
request (a prompt or language it does not take, a body over its size limit) is the client's 422
or 413 naming what to change; a wrong upstream key and an upstream that is down become 502s;
nothing is cached for any of them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from earmark.service.api.app import create_app
from tests.audio_tools import encode, read_pcm
from tests.conftest import _free_port
from tests.test_app import keys_under
from tests.waiting import wait_for
from tests.test_cli import EARMARK, serving

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)

UPSTREAM_KEY = "upstream-key-0123456789abcdef"


def transcribe(client, data: bytes, name: str = "a.wav", **fields):
    return client.post("/v1/audio/transcriptions", files={"file": (name, data, "application/octet-stream")},
                       data={"model": "whisper-1", **fields})


def upstream_arrivals(url: str) -> float:
    """Transcription requests the upstream earmark received (answered or refused), from its /metrics."""
    text = httpx.get(f"{url}/metrics").text
    pattern = re.compile(r'^earmark_(?:requests|errors)_total\{endpoint="transcriptions",[^}]*\} (\S+)$', re.M)
    return sum(float(value) for value in pattern.findall(text))


def metric(client, name: str) -> float:
    """A sample's value in the first earmark's /metrics (0 when absent)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> str:
    """A second earmark process (pocketsphinx, keyed) as the OpenAI-compatible upstream."""
    workdir = tmp_path_factory.mktemp("upstream-earmark")
    keys = workdir / "keys"
    keys.write_text(f"{UPSTREAM_KEY} downstream\n")
    with serving(workdir, "--engine", "pocketsphinx", "--data-dir", str(workdir / "data"),
                 "--api-keys", str(keys)) as url:
        yield url


@pytest.fixture
def upstream_settings(settings, upstream):
    return replace(settings, engine="openai", upstream_url=upstream, upstream_api_key=UPSTREAM_KEY,
                   upstream_model="whisper-1")


@pytest.fixture
def front(upstream_settings):
    """The first earmark, engine `openai` on the upstream earmark."""
    with TestClient(create_app(upstream_settings)) as client:
        yield client


def test_a_miss_is_forwarded_and_a_reencoded_copy_never_reaches_the_upstream(front, upstream, recorded, mp3_copy):
    before = upstream_arrivals(upstream)
    first = transcribe(front, recorded, response_format="verbose_json")
    assert first.status_code == 200, first.text
    assert first.headers["x-cache-tier"] == "miss" and "recorded" in first.json()["text"]
    assert first.json()["segments"], "the upstream's segment times are kept"
    assert upstream_arrivals(upstream) == before + 1
    direct = httpx.post(f"{upstream}/v1/audio/transcriptions", files={"file": ("a.wav", recorded)},
                        headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}).json()
    assert first.json()["text"] == direct["text"]  # the upstream's own transcript, unchanged
    arrived = upstream_arrivals(upstream)

    wait_for(lambda: front.get("/health").json()["index_size"] >= 1)  # the entry reached the vector index
    copy = transcribe(front, mp3_copy, name="a.mp3")
    assert copy.status_code == 200 and copy.headers["x-cache-tier"] in ("canonical", "fuzzy")
    assert copy.json()["text"] == first.json()["text"]
    again = front.post("/recognize", files={"file": ("a.wav", recorded)})
    assert again.json()["cache"]["tier"] == "exact"
    assert upstream_arrivals(upstream) == arrived, "a cached answer must not reach the upstream"
    assert metric(front, 'earmark_upstream_requests_total{outcome="ok"}') == 1


def test_language_and_prompt_are_part_of_the_profile(front, upstream, recorded):
    first = transcribe(front, recorded)
    assert first.headers["x-cache-tier"] == "miss"
    arrived = upstream_arrivals(upstream)
    english = transcribe(front, recorded, language="en")
    assert english.status_code == 200 and english.headers["x-cache-tier"] == "miss"
    assert upstream_arrivals(upstream) == arrived + 1
    assert transcribe(front, recorded, language="en").headers["x-cache-tier"] == "exact"
    # Hotwords have no OpenAI field: refused here, before anything is sent.
    refused = transcribe(front, recorded, hotwords="training")
    assert refused.status_code == 422 and "hotwords" in refused.json()["error"]["message"]
    assert upstream_arrivals(upstream) == arrived + 1


def test_an_upstream_refusal_of_the_prompt_is_a_422_naming_it_and_nothing_is_cached(front, upstream, recorded,
                                                                                  upstream_settings, redis_client):
    # The pocketsphinx upstream refuses a prompt with a 422: the request's fault, not the upstream's.
    arrived = upstream_arrivals(upstream)
    for attempt in range(2):
        refused = transcribe(front, recorded, prompt="a call about training")
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "422" and refused.json()["code"] == 422
        assert error["message"].startswith("the upstream ASR server refused this request (HTTP 422: ")
        assert "change or leave out 'prompt'" in error["message"]
        assert upstream_arrivals(upstream) == arrived + attempt + 1, "not cached: the second one is forwarded too"
    assert keys_under(redis_client, upstream_settings.key_prefix) == set()
    assert metric(front, 'earmark_upstream_requests_total{outcome="refused"}') == 2
    assert metric(front, 'earmark_upstream_requests_total{outcome="error"}') == 0
    assert metric(front, 'earmark_errors_total{endpoint="transcriptions",status="422"}') == 2
    upstream_state = front.get("/health").json()["upstream"]
    assert upstream_state["state"] == "up" and upstream_state["last_error"] == "", "the upstream is not to blame"
    assert metric(front, "earmark_upstream_up") == 1


def test_an_upstream_refusal_of_the_language_is_a_422_on_recognize_naming_it(front, upstream, recorded,
                                                                              upstream_settings, redis_client):
    arrived = upstream_arrivals(upstream)
    refused = front.post("/recognize", files={"file": ("a.wav", recorded)}, data={"language": "fr"})
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["code"] == 422 and "error" not in body, "the native error object, as for any 422"
    assert "refused this request (HTTP 422: \"language 'fr'" in body["msg"] and "'language'" in body["msg"]
    assert upstream_arrivals(upstream) == arrived + 1
    assert keys_under(redis_client, upstream_settings.key_prefix) == set()
    assert front.get("/health").json()["upstream"]["state"] == "up"
    assert front.post("/recognize", files={"file": ("a.wav", recorded)}).json()["cache"]["tier"] == "miss"


def test_an_upstream_whose_size_limit_is_lower_answers_413_and_so_does_earmark(tmp_path, upstream_settings, recorded,
                                                                             redis_client):
    """A real earmark upstream with a 100 kB upload limit: the 4 s recording is a 128 kB WAV (refused
    as it arrives), a 161 s one a 5.2 MB WAV (refused on its Content-Length, before it is read)."""
    pcm, rate = read_pcm(recorded)
    longer = encode(np.tile(pcm, 40), rate, fmt="flac", codec="flac")
    config = tmp_path / "small.toml"
    config.write_text("max_upload_bytes = 100000\n")
    with serving(tmp_path, "--engine", "pocketsphinx", "--data-dir", str(tmp_path / "data"),
                 "--config", str(config)) as small:
        with TestClient(create_app(replace(upstream_settings, upstream_url=small, upstream_api_key=""))) as client:
            for endpoint in ("/recognize", "/v1/audio/transcriptions"):
                refused = client.post(endpoint, files={"file": ("a.wav", recorded)}, data={"model": "whisper-1"})
                assert refused.status_code == 413, refused.text
                assert "refused this request (HTTP 413: " in refused.json()["msg"]
                assert "over the upstream's size limit" in refused.json()["msg"]
                assert "send shorter audio" in refused.json()["msg"]
            assert refused.json()["error"]["type"] == "invalid_request_error"
            refused = client.post("/recognize", files={"file": ("a.flac", longer)})
            assert refused.status_code == 413 and "a 5.2 MB 16 kHz mono WAV of 161 s" in refused.json()["msg"]
            assert metric(client, 'earmark_upstream_requests_total{outcome="refused"}') == 3
            assert client.get("/health").json()["upstream"]["state"] == "up"
    assert keys_under(redis_client, upstream_settings.key_prefix) == set()


def test_a_wrong_upstream_key_is_a_502_naming_the_upstreams_401(upstream_settings, recorded, redis_client):
    wrong = "wrong-key-0123456789abcdef"
    with TestClient(create_app(replace(upstream_settings, upstream_api_key=wrong))) as client:
        failed = transcribe(client, recorded)
        shown = client.get("/health").text + client.get("/metrics").text + failed.text
        assert metric(client, 'earmark_upstream_requests_total{outcome="error"}') == 1
        assert metric(client, 'earmark_upstream_requests_total{outcome="refused"}') == 0
    assert failed.status_code == 502 and "HTTP 401" in failed.json()["error"]["message"]
    assert failed.json()["error"]["type"] == "server_error", "the operator's key: not the client's to change"
    assert wrong not in shown, "the upstream key is never shown"
    assert keys_under(redis_client, upstream_settings.key_prefix) == set()


def test_an_upstream_that_is_down_is_a_502_after_bounded_retries(settings, recorded, redis_client):
    closed = f"http://127.0.0.1:{_free_port()}"
    down = replace(settings, engine="openai", upstream_url=closed, upstream_retries=2, upstream_health_interval_s=0.2)
    with TestClient(create_app(down)) as client:
        failed = transcribe(client, recorded)
        assert failed.status_code == 502 and "cannot connect" in failed.json()["error"]["message"]
        assert "3 attempts" in failed.json()["error"]["message"]
        assert metric(client, "earmark_upstream_retries_total") == 2
        assert metric(client, 'earmark_upstream_requests_total{outcome="unreachable"}') == 1
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["upstream"]["state"] == "down"
        assert health["upstream"]["url"] == closed and metric(client, "earmark_upstream_up") == 0
        assert metric(client, 'earmark_upstream_health_checks_total{result="down"}') >= 1
    assert keys_under(redis_client, down.key_prefix) == set()


def test_health_and_metrics_show_the_upstream_up(front, upstream):
    deadline = time.monotonic() + 30
    while front.get("/health").json()["upstream"]["state"] != "up":  # the first check runs at start
        assert time.monotonic() < deadline, "the health check never ran"
        time.sleep(0.1)
    health = front.get("/health").json()
    assert health["engine"] == "openai"
    assert health["upstream"]["endpoint"] == f"{upstream}/v1/audio/transcriptions"
    assert health["upstream"]["model"] == "whisper-1"
    assert metric(front, "earmark_upstream_up") == 1
    assert metric(front, 'earmark_upstream_health_checks_total{result="up"}') >= 1
    assert "whisper-1" in [model["id"] for model in front.get("/v1/models").json()["data"]]


def test_serve_as_the_readme_says_with_the_key_from_the_environment(tmp_path, upstream, recorded):
    """`earmark serve --engine openai --upstream-url ...`, the upstream key in its variable."""
    arrived = upstream_arrivals(upstream)
    with serving(tmp_path, "--engine", "openai", "--upstream-url", upstream, "--data-dir", str(tmp_path / "data"),
                 env={"EARMARK_UPSTREAM_API_KEY": UPSTREAM_KEY}) as url:
        answer = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", recorded)},
                            data={"model": "whisper-1"}, timeout=120)
        assert answer.status_code == 200 and "recorded" in answer.json()["text"]
        assert answer.headers["x-cache-tier"] == "miss" and upstream_arrivals(upstream) == arrived + 1


def test_serve_refuses_an_upstream_engine_without_a_url(tmp_path):
    result = subprocess.run([*EARMARK, "serve", "--engine", "funasr-http", "--data-dir", str(tmp_path / "d")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert result.returncode == 2 and "upstream_url" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("configured,endpoint,health", [
    ("http://asr:8000", "http://asr:8000/v1/audio/transcriptions", "http://asr:8000/v1/models"),
    ("http://asr:8000/v1/", "http://asr:8000/v1/audio/transcriptions", "http://asr:8000/v1/models"),
    ("https://asr/openai/v1/audio/transcriptions", "https://asr/openai/v1/audio/transcriptions",
     "https://asr/openai/v1/models"),
])
def test_the_upstream_url_may_be_the_server_the_base_url_or_the_endpoint(configured, endpoint, health):
    from earmark.service.engines.upstream.openai import OpenAIUpstreamEngine
    from earmark.service.engines.upstream.base import UpstreamConfig

    engine = OpenAIUpstreamEngine(UpstreamConfig(url=configured))
    assert (engine.endpoint, engine.health_url()) == (endpoint, health)


def test_retry_after_is_read_as_seconds_or_a_date_and_kept_in_bounds():
    from email.utils import formatdate

    from earmark.service.engines.upstream.base import _retry_after_s

    assert _retry_after_s("7") == 7 and _retry_after_s(None) == 5 and _retry_after_s("soon") == 5
    assert _retry_after_s("0") == 1 and _retry_after_s("86400") == 300
    assert 25 <= _retry_after_s(formatdate(time.time() + 30, usegmt=True)) <= 30


def test_a_json_only_upstream_gives_the_text_without_times_under_its_own_profile(upstream_settings, upstream,
                                                                                   recorded):
    with TestClient(create_app(upstream_settings)) as client:
        verbose = client.post("/recognize", files={"file": ("a.wav", recorded)}).json()
    plain_settings = replace(upstream_settings, upstream_response_format="json")
    with TestClient(create_app(plain_settings)) as client:
        arrived = upstream_arrivals(upstream)
        plain = client.post("/recognize", files={"file": ("a.wav", recorded)}).json()
        assert upstream_arrivals(upstream) == arrived + 1, "another profile: forwarded, not served from verbose_json's entry"
    assert plain["cache"]["tier"] == "miss" and plain["result"]["text"] == verbose["result"]["text"]
    # No upstream times: the result's one segment is the whole audio (as for any engine without them).
    whole = plain["result"]["segments"]
    assert len(whole) == 1 and (whole[0]["start"], whole[0]["end"]) == (0.0, plain["result"]["duration_s"])
    assert verbose["result"]["segments"][0]["start"] > 0.0, "verbose_json's segment times are the upstream's"
    assert plain["cache"]["entry"] != verbose["cache"]["entry"]


class _FixedAnswer:
    """A real OpenAI-shaped server that answers every transcription with one fixed body:
    answers a well-behaved server never gives, but a broken one can."""

    def __init__(self, body: str, status: int = 200) -> None:
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        self.requests = 0

        async def transcriptions(request):
            await request.body()
            self.requests += 1
            return Response(body, status_code=status, media_type="application/json")

        self.app = Starlette(routes=[Route("/v1/audio/transcriptions", transcriptions, methods=["POST"])])


@pytest.mark.parametrize("body", [
    '{"text": "hello", "segments": [{"start": NaN, "end": 1.0, "text": "hello"}]}',
    '{"text": "hello", "segments": [{"start": 0.0, "end": "inf", "text": "hello"}]}',
    '{"text": "", "error": "model overloaded"}',
])
def test_an_answer_with_a_non_finite_time_or_an_error_is_a_502_never_cached(settings, recorded, redis_client, body):
    from tests.funasr_protocol_server import _Running

    with _Running(_FixedAnswer(body)) as url:
        broken = replace(settings, engine="openai", upstream_url=url, upstream_model="whisper-1")
        with TestClient(create_app(broken)) as client:
            for _ in range(2):  # the second is forwarded again: nothing was cached
                answer = transcribe(client, recorded)
                assert answer.status_code == 502, answer.text
    assert keys_under(redis_client, settings.key_prefix) == set()


def test_without_a_revision_label_the_upstreams_address_is_in_the_profile():
    from earmark.service.engines.upstream.openai import OpenAIUpstreamEngine
    from earmark.service.engines.upstream.base import UpstreamConfig

    small = OpenAIUpstreamEngine(UpstreamConfig(url="http://small:8000"))
    large = OpenAIUpstreamEngine(UpstreamConfig(url="http://user:secret@large:8000/v1"))
    assert small.revision != large.revision
    assert "secret" not in large.revision and "large:8000" in large.revision
    labelled = OpenAIUpstreamEngine(UpstreamConfig(url="http://small:8000", revision="v2"))
    assert labelled.revision == OpenAIUpstreamEngine(UpstreamConfig(url="http://large:8000", revision="v2")).revision


# OpenAI's own answers (its API's error object), as a server sends them.
OPENAI_BAD_LANGUAGE = json.dumps({"error": {
    "message": "Invalid language 'xx'. Language parameter must be specified in ISO-639-1 format.",
    "type": "invalid_request_error", "param": "language", "code": "invalid_language_format"}})
OPENAI_BAD_FORMAT = json.dumps({"error": {
    "message": "This model does not support verbose_json; use json or text.",
    "type": "invalid_request_error", "param": "response_format", "code": "unsupported_value"}})


def test_an_openai_400_about_the_language_is_a_422_naming_it_and_the_upstream_stays_healthy(settings, recorded,
                                                                                             redis_client):
    from tests.funasr_protocol_server import _Running

    server = _FixedAnswer(OPENAI_BAD_LANGUAGE, status=400)
    with _Running(server) as url:
        with TestClient(create_app(replace(settings, engine="openai", upstream_url=url))) as client:
            for attempt in range(2):
                refused = transcribe(client, recorded, language="xx")
                assert refused.status_code == 422, refused.text
                message = refused.json()["error"]["message"]
                assert "(HTTP 400: \"Invalid language 'xx'. Language parameter must be" in message
                assert "change or leave out 'language'" in message
                assert server.requests == attempt + 1, "nothing cached: forwarded again"
            upstream = client.get("/health").json()["upstream"]
            assert upstream["state"] == "up" and upstream["last_error"] == ""
            assert metric(client, 'earmark_upstream_requests_total{outcome="refused"}') == 2
    assert keys_under(redis_client, settings.key_prefix) == set()


def test_a_400_about_what_earmarks_configuration_sends_is_the_operators_502(settings, recorded, redis_client):
    from tests.funasr_protocol_server import _Running

    with _Running(_FixedAnswer(OPENAI_BAD_FORMAT, status=400)) as url:
        with TestClient(create_app(replace(settings, engine="openai", upstream_url=url))) as client:
            failed = transcribe(client, recorded, language="en")
            assert failed.status_code == 502, failed.text
            message = failed.json()["error"]["message"]
            assert "HTTP 400" in message and "'response_format' (upstream_response_format)" in message
            assert metric(client, 'earmark_upstream_requests_total{outcome="error"}') == 1
            assert "HTTP 400" in client.get("/health").json()["upstream"]["last_error"]
    assert keys_under(redis_client, settings.key_prefix) == set()


@pytest.mark.parametrize("credential", ["key", "password"])
def test_credentials_an_upstream_echoes_are_never_shown(settings, recorded, credential):
    """A 401 quoting the key it was sent, or a URL with a password: neither reaches the client,
    /health or /metrics. (Both at once are refused at start: tests/test_upstream_credentials.py.)"""
    from tests.funasr_protocol_server import _Running

    key = "sk-proj-" + "k3y" * 20
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {key}. Also tried Bearer abc.def.ghi "
                                            "and a password pa55word-secret", "type": "invalid_request_error",
                                 "param": None, "code": "invalid_api_key"}})
    with _Running(_FixedAnswer(echo, status=401)) as url:
        if credential == "key":
            configured = replace(settings, engine="openai", upstream_url=url, upstream_api_key=key)
        else:
            configured = replace(settings, engine="openai",
                                 upstream_url=url.replace("http://", "http://operator:pa55word-secret@"))
        with TestClient(create_app(configured)) as client:
            failed = transcribe(client, recorded)
            shown = failed.text + client.get("/health").text + client.get("/metrics").text
    assert failed.status_code == 502
    # The configured key is replaced whole; an unconfigured one as anything reading as a key.
    assert f"Incorrect API key provided: {'***' if credential == 'key' else 'sk-***'}" in failed.json()["msg"]
    assert key not in shown and key[:12] not in shown and "abc.def" not in shown
    if credential == "password":
        assert "pa55word" not in shown and "a password ***" in failed.json()["msg"]
