"""What an engine may answer is bounded (issue 21, item 3): an upstream's answer is read only up
to a size sized from the audio's duration, and no engine's transcript may be longer than
`max_transcript_chars_per_s` x the audio's duration (at least `max_transcript_chars_floor`).
Over it is a 502 naming the limit, counted, and never cached; the service keeps answering
meanwhile. The upstreams are real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from earmark.service.api.app import create_app
from earmark.service.config import ConfigError, load_settings
from earmark.service.engines.base import Segment, Transcript, Word
from earmark.service.engines.transcript_limit import TranscriptLimit, TranscriptTooLong
from tests.conftest import live_server
from tests.funasr_protocol_server import _Running
from tests.test_app import keys_under
from tests.test_upstream import metric, transcribe
from tests.waiting import wait_for

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)

HUGE_BYTES = 64 * 1024 * 1024  # far over any limit for a 4 s clip, small enough to be quick when fully read
CHUNK = b"a" * 65536


class _HugeAnswer:
    """An OpenAI-shaped server answering every transcription 200 with `{"text": "aaaa...` of
    `size` bytes, generated as it is sent (the server never holds it). It pauses after its first
    chunk until `resume` is set, so that a test can look at the service while the answer is
    arriving. `sent` counts the bytes handed to the connection until the client closed it
    (`hung_up`); `finished` is set when the server stops sending, either way."""

    def __init__(self, size: int, *, declared: bool) -> None:
        self.size = size
        self.sent = 0
        self.hung_up = False
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.finished = threading.Event()

        async def body(request):
            try:
                yield b'{"text": "'
                while self.sent < size:
                    yield CHUNK
                    self.sent += len(CHUNK)
                    if not self.paused.is_set():
                        self.paused.set()
                        await asyncio.to_thread(self.resume.wait, 60)
                    if await request.is_disconnected():  # uvicorn drops what is sent after a hang-up
                        self.hung_up = True
                        return
                yield b'"}'
            finally:
                self.finished.set()

        async def transcriptions(request):
            await request.body()
            total = len(b'{"text": "') + -(-size // len(CHUNK)) * len(CHUNK) + 2
            headers = {"content-length": str(total)} if declared else {}
            return StreamingResponse(body(request), media_type="application/json", headers=headers)

        self.app = Starlette(routes=[Route("/v1/audio/transcriptions", transcriptions, methods=["POST"])])


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_a_huge_upstream_answer_is_a_502_read_no_further_never_cached_and_health_answers(settings, recorded,
                                                                                        redis_client, declared):
    huge = _HugeAnswer(HUGE_BYTES, declared=declared)
    with _Running(huge) as url, live_server(replace(settings, engine="openai", upstream_url=url)) as front:
        with ThreadPoolExecutor(1) as background:
            sent = background.submit(httpx.post, f"{front}/v1/audio/transcriptions", timeout=300,
                                     files={"file": ("a.wav", recorded)}, data={"model": "whisper-1"})
            if not declared:  # the first 64 KiB have arrived (under the limit) and the rest is on its way
                assert huge.paused.wait(60), "the upstream never got the request"
                assert httpx.get(f"{front}/health", timeout=30).status_code == 200
            huge.resume.set()
            failed = sent.result(timeout=300)
            assert httpx.get(f"{front}/health", timeout=30).status_code == 200
        metrics = httpx.get(f"{front}/metrics", timeout=30).text
    assert failed.status_code == 502, failed.text[:300]
    message = failed.json()["error"]["message"]
    assert "over earmark's limit" in message and "max_transcript_chars_per_s" in message, message
    assert failed.json()["error"]["type"] == "server_error"
    assert huge.finished.wait(60)
    assert huge.hung_up and huge.sent < HUGE_BYTES // 2, f"the answer was read on: {huge.sent} of {HUGE_BYTES} bytes"
    assert 'earmark_upstream_requests_total{outcome="too_large"} 1.0' in metrics
    assert 'earmark_upstream_requests_total{outcome="ok"}' not in metrics
    assert keys_under(redis_client, settings.key_prefix) == set()


class _HugeModels:
    """An OpenAI-shaped server whose `GET /v1/models` (the health check's call) answers 200 with
    `size` bytes, generated as sent; `checks` holds (bytes sent, whether the client hung up) of
    each answer that ended."""

    def __init__(self, size: int) -> None:
        self.checks: list[tuple[int, bool]] = []

        async def body(request):
            sent = 0
            try:
                yield b'{"data": ["'
                while sent < size:
                    yield CHUNK
                    sent += len(CHUNK)
                    if await request.is_disconnected():
                        self.checks.append((sent, True))
                        return
                yield b'"]}'
                self.checks.append((sent, False))
            except BaseException:
                self.checks.append((sent, True))
                raise

        async def models(request):
            return StreamingResponse(body(request), media_type="application/json")

        self.app = Starlette(routes=[Route("/v1/models", models)])


def test_a_huge_health_check_answer_is_not_read(settings):
    """The health check needs only the status: it reads none of the body."""
    server = _HugeModels(HUGE_BYTES)
    with _Running(server) as url:
        with TestClient(create_app(replace(settings, engine="openai", upstream_url=url,
                                           upstream_health_interval_s=0.2))) as client:
            wait_for(lambda: len(server.checks) >= 3, timeout_s=60)
            assert client.get("/health").json()["upstream"]["state"] == "up"
    assert all(hung_up and sent < HUGE_BYTES // 2 for sent, hung_up in server.checks[:3]), server.checks


class _FixedAnswer:
    """An OpenAI-shaped server answering every transcription with one fixed 200 body."""

    def __init__(self, body: str) -> None:
        self.requests = 0

        async def transcriptions(request):
            await request.body()
            self.requests += 1
            return Response(body, media_type="application/json")

        self.app = Starlette(routes=[Route("/v1/audio/transcriptions", transcriptions, methods=["POST"])])


SEGMENT = {"start": 0.0, "end": 1.0, "text": "a"}


@pytest.mark.parametrize("answer", [
    {"text": "word " * 600},  # 3,000 characters for 4 s of audio, in a 3 kB body
    {"text": "a", "segments": [SEGMENT] * 2500},  # a short text, but 2,500 segments
    {"text": "a", "segments": [{**SEGMENT, "tokens": list(range(2500))}]},
], ids=["text", "segments", "tokens"])
def test_a_transcript_over_the_limit_in_a_small_answer_is_a_502_never_cached(settings, recorded, redis_client,
                                                                             answer):
    server = _FixedAnswer(json.dumps(answer))
    with _Running(server) as url:
        with TestClient(create_app(replace(settings, engine="openai", upstream_url=url))) as client:
            for attempt in range(2):
                failed = transcribe(client, recorded)
                assert failed.status_code == 502, failed.text[:300]
                assert "max_transcript_chars_floor = 2000" in failed.json()["error"]["message"]
                assert server.requests == attempt + 1, "nothing cached: the second one is forwarded too"
            assert metric(client, 'earmark_upstream_requests_total{outcome="too_large"}') == 2
            assert "over earmark's limit" in client.get("/health").json()["upstream"]["last_error"]
    assert keys_under(redis_client, settings.key_prefix) == set()


def test_a_transcript_at_the_limit_is_served(settings, recorded):
    answer = {"text": "word " * 399 + "word", "segments": [{"start": 0.0, "end": 4.0, "text": "word " * 399 + "word"}]}
    with _Running(_FixedAnswer(json.dumps(answer))) as url:
        with TestClient(create_app(replace(settings, engine="openai", upstream_url=url))) as client:
            served = transcribe(client, recorded)
    assert served.status_code == 200 and len(served.json()["text"]) == 1999


def test_a_local_engines_transcript_over_the_limit_is_a_502_never_cached(settings, engine, recorded, redis_client):
    """The limit holds for every engine: real pocketsphinx on the real recording, whose
    transcript is longer than the 1 character allowed here."""
    tight = replace(settings, max_transcript_chars_per_s=0.01, max_transcript_chars_floor=1)
    with TestClient(create_app(tight, engine=engine)) as client:
        failed = client.post("/recognize", files={"file": ("a.wav", recorded)})
        assert failed.status_code == 502, failed.text
        assert "over earmark's limit of 1 character" in failed.json()["msg"]
        assert metric(client, "earmark_engine_transcripts_too_long_total") == 1
    assert keys_under(redis_client, settings.key_prefix) == set()


@pytest.mark.parametrize("setting,value", [("max_transcript_chars_per_s", 0), ("max_transcript_chars_per_s", -5),
                                           ("max_transcript_chars_floor", 0)])
def test_the_transcript_limit_must_be_positive(setting, value):
    with pytest.raises(ConfigError, match=setting):
        load_settings(**{setting: value})


def test_the_transcript_limit_grows_with_the_audio_and_applies_to_each_part():
    """engines/transcript_limit.py: `chars_per_s` a second, at least `floor_chars`; each part of a
    transcript (text, segments' text, words, tokens) is measured on its own."""
    limit = TranscriptLimit(chars_per_s=10.0, floor_chars=30)
    assert (limit.chars_for(1.0), limit.chars_for(4.01)) == (30, 41)
    limit.check(Transcript(text="a" * 30, normalized_text="", language="en"), 1.0)  # at the limit: kept
    parts = {
        "its text": Transcript(text="a" * 31, normalized_text="", language="en"),
        "its segments' text": Transcript(text="", normalized_text="", language="en",
                                         segments=(Segment(0.0, 1.0, "b" * 20), Segment(1.0, 2.0, "c" * 11))),
        "its words": Transcript(text="", normalized_text="", language="en",
                                segments=(Segment(0.0, 1.0, "", words=tuple(Word("", 0.0, 0.1) for _ in range(31))),)),
        "its tokens": Transcript(text="", normalized_text="", language="en",
                                 segments=(Segment(0.0, 1.0, "", tokens=tuple(range(31))),)),
    }
    for part, transcript in parts.items():
        with pytest.raises(TranscriptTooLong) as refused:
            limit.check(transcript, 1.0)
        assert f"over earmark's limit of 30 characters for 1.0 s of audio ({part}: 31;" in str(refused.value)
