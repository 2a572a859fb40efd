"""Hostile uploads over real HTTP: limits hold while the bytes arrive, every refusal has the
contract's shape, nothing is kept or cached for a refused request, and the service stays up."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import threading
import time
from dataclasses import replace

import httpx
import numpy as np
import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from earmark.service.api.app import create_app
from earmark.service.api.errors import ApiError, error_answer
from earmark.service.api.uploads import UploadLimits, read_upload
from tests.audio_tools import EXTRA_CONTAINERS, encode, flac_without_length, in_container, read_pcm
from tests.conftest import live_server
from tests.http_helpers import post
from tests.test_app import keys_under
from tests.waiting import wait_for

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)

BOUNDARY = "earmarkTestBoundary"


def multipart(*parts: tuple[str, bytes, str | None], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """A multipart body from (name, value, filename or None) parts."""
    body = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def post_raw(client, body: bytes, path: str = "/recognize"):
    return client.post(path, content=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


class RawUpload:
    """A request written by hand on a socket, to send a body as slowly or as partly as a test needs."""

    def __init__(self, base_url: str, path: str = "/recognize", *, chunked: bool = False, length: int = 0) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.chunked = chunked
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"{framing}\r\n\r\n".encode()
        )

    def send(self, data: bytes) -> bool:
        """Send a piece of the body; False once the server has stopped listening."""
        try:
            self.sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if self.chunked else data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def answered(self) -> bool:
        """Whether the server has answered already (without waiting)."""
        self.sock.setblocking(False)
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK))
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.setblocking(True)

    def response(self) -> tuple[int, bytes]:
        """The status and body of the answer."""
        data = b""
        while b"\r\n\r\n" not in data:
            piece = self.sock.recv(65536)
            if not piece:
                break
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        while length and len(body) < int(length.group(1)):
            piece = self.sock.recv(65536)
            if not piece:
                break
            body += piece
        return int(head.split(b" ")[1]), body

    def close(self) -> None:
        self.sock.close()


def metric(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_a_chunked_body_is_cut_off_at_the_limit_and_nothing_is_kept(settings, engine, redis_client):
    limit = 1024 * 1024
    with live_server(replace(settings, max_upload_bytes=limit), engine) as base_url:
        upload = RawUpload(base_url, chunked=True)
        upload.send(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode())
        sent = 0
        piece = b"\0" * 65536
        # 64 MB offered against a 1 MB limit: the answer must come long before it is all sent.
        while sent < 64 * limit and not upload.answered() and upload.send(piece):
            sent += len(piece)
        status, body = upload.response()
        upload.close()
        assert status == 413 and b'"code":413' in body.replace(b" ", b"")
        assert sent < 32 * limit
        assert httpx.get(f"{base_url}/health").json()["status"] == "ok"
    assert keys_under(redis_client, settings.key_prefix) == set()


def test_a_stalled_body_gets_408_and_frees_its_slot(settings, engine, recorded):
    with live_server(replace(settings, upload_timeout_s=2.0, max_uploads_in_progress=2), engine) as base_url:
        stalled = [RawUpload(base_url, length=10_000) for _ in range(2)]
        for upload in stalled:
            upload.send(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nRIFF'.encode())
        deadline = time.monotonic() + 10
        while metric(base_url, "earmark_uploads_in_progress") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = httpx.post(f"{base_url}/recognize", files={"file": ("a.wav", recorded)}, timeout=120)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "2" and busy.json()["code"] == 503
        for upload in stalled:
            status, body = upload.response()
            upload.close()
            assert status == 408 and b"did not arrive within 2 s" in body
        assert metric(base_url, "earmark_uploads_in_progress") == 0
        # httpx's default 5 s is a timing assumption: a miss runs the engine, slower on a busy machine.
        assert httpx.post(f"{base_url}/recognize", files={"file": ("a.wav", recorded)}, timeout=120).status_code == 200


def test_a_client_hanging_up_mid_upload_is_counted_not_an_error(settings, engine, caplog):
    with live_server(settings, engine) as base_url:
        for _ in range(3):
            upload = RawUpload(base_url, length=100_000)
            upload.send(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nRIFF'.encode())
            time.sleep(0.1)
            upload.close()
        deadline = time.monotonic() + 10
        while metric(base_url, "earmark_uploads_aborted_total") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(base_url, "earmark_uploads_aborted_total") == 3
        assert metric(base_url, 'earmark_errors_total{endpoint="recognize",status="500"}') == 0
    assert "Traceback" not in caplog.text and "unhandled" not in caplog.text


def test_a_trickling_body_is_cut_off_by_the_minimum_rate():
    async def trickle():
        chunks = [b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n"] + [b"x" * 10] * 100
        request = Request({"type": "http", "method": "POST", "path": "/recognize",
                           "headers": [(b"content-type", b"multipart/form-data; boundary=b")]}, _receiver(chunks, 0.05))
        started = time.monotonic()
        with pytest.raises(ApiError) as refused:
            await read_upload(request, UploadLimits(1 << 20, timeout_s=60, min_bytes_per_s=1000, grace_s=0.3))
        return refused.value, time.monotonic() - started

    error, elapsed = asyncio.run(trickle())
    assert error.status == 408 and "stalled" in error.msg and "KiB/s" in error.msg
    assert elapsed < 5  # cut off soon after the grace period, not after the 60 s timeout


def _receiver(chunks: list[bytes], pause_s: float):
    """An ASGI receive callable sending `chunks` with a pause before each."""
    pending = list(chunks)

    async def receive():
        await asyncio.sleep(pause_s)
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    return receive


@pytest.mark.parametrize("path, method, status", [
    ("/nowhere", "GET", 404), ("/recognize", "GET", 405), ("/health", "DELETE", 405),
    ("/entries/..%2F..", "GET", 404), ("/entries/....%2F%2F", "GET", 404), ("/entries/", "GET", 404),
])
def test_unknown_routes_and_methods_answer_in_the_contract_shape(client, path, method, status):
    response = client.request(method, path, follow_redirects=False)
    assert response.status_code == status
    body = response.json()
    assert body["code"] == status and body["msg"]
    if status == 405:
        assert "GET" in response.headers["allow"] or "POST" in response.headers["allow"]


def test_an_error_quotes_only_a_short_prefix_of_a_value(client, recorded):
    response = post(client, recorded, language="x" * 60_000)
    assert response.status_code == 422 and len(response.content) < 400
    assert "60000 characters" in response.json()["msg"]
    oversized = post(client, recorded, prompt="y" * 70_000)
    assert oversized.status_code == 422 and "over 64 KiB" in oversized.json()["msg"] and len(oversized.content) < 400


def test_two_file_parts_are_refused(client, recorded, redis_client, settings):
    response = post_raw(client, multipart(("file", recorded, "a.wav"), ("file", recorded, "b.wav")))
    assert response.status_code == 422 and "more than one 'file' part" in response.json()["msg"]
    assert keys_under(redis_client, settings.key_prefix) == set()


@pytest.mark.parametrize("extra, message", [
    ((("language", b"en", None), ("language", b"zh", None)), "sent more than once"),
    ((("language", b"\xff\xfe", None),), "not UTF-8"),
    ((("language", b"en", "language.txt"),), "must be a plain form field"),
])
def test_ambiguous_or_garbled_fields_are_422(client, recorded, extra, message):
    response = post_raw(client, multipart(("file", recorded, "a.wav"), *extra))
    assert response.status_code == 422 and message in response.json()["msg"]


@pytest.mark.parametrize("name", ["model", "temperature", "language", "response_format", "timestamp_granularities[]"])
@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/recognize"])
def test_a_text_field_sent_as_a_file_part_is_422_naming_it(client, recorded, redis_client, settings, name, path):
    """The contract's text fields must be plain fields: one sent as a file part is a 422 that
    names it, on every endpoint, whether or not that endpoint uses the field; nothing is written."""
    response = post_raw(client, multipart(("file", recorded, "a.wav"), (name, b"whisper-1", "part.txt")), path)
    assert response.status_code == 422, response.text
    assert response.json()["msg"] == f"'{name}' must be a plain form field, not a file"
    assert keys_under(redis_client, settings.key_prefix) == set()


def test_repeatable_fields_may_repeat(client, recorded):
    body = multipart(("file", recorded, "a.wav"), ("timestamp_granularities[]", b"word", None),
                     ("timestamp_granularities[]", b"segment", None))
    assert post_raw(client, body, "/v1/audio/transcriptions").status_code == 200


@pytest.mark.parametrize("body, message", [
    (multipart(("file", b"RIFF" + b"\0" * 100, "a.wav"), close=False), "before its closing boundary"),
    (multipart(("language", b"en", None)), "no file in the form"),
    (b"garbage without any boundary", "could not be read"),
    (multipart(*[(f"f{i}", b"1", None) for i in range(40)], ("file", b"RIFF", "a")), "more than 36 parts"),
])
def test_malformed_forms_are_400(client, body, message):
    response = post_raw(client, body)
    assert response.status_code == 400 and message in response.json()["msg"]


def test_openai_errors_carry_the_openai_error_object(client, recorded):
    response = post(client, recorded, "/v1/audio/transcriptions", response_format="docx")
    body = response.json()
    assert response.status_code == 422 and body["code"] == 422
    assert body["error"]["message"] == body["msg"] and body["error"]["type"] == "invalid_request_error"


def test_the_exact_tier_uses_the_digest_taken_while_the_body_arrived(client, recorded):
    first = post(client, recorded).json()
    again = post_raw(client, multipart(("file", recorded, "other-name.bin"))).json()
    assert again["cache"]["tier"] == "exact" and again["cache"]["entry"] == first["cache"]["entry"]


def test_the_decode_budget_makes_requests_wait_then_refuses_with_retry_after():
    from earmark.service.pipeline.decode_budget import DecodeBudget, DecodeBudgetFull

    async def scenario():
        budget = DecodeBudget(5.0, wait_s=0.2)
        order = []
        async with budget.reserve(3.0):
            with pytest.raises(DecodeBudgetFull) as refused:
                async with budget.reserve(3.0):
                    pass
            answer = error_answer(refused.value)
            assert answer.status == 503 and answer.headers["Retry-After"] == "1"

            async def later():
                async with budget.reserve(3.0):
                    order.append("second")
            waiting = asyncio.create_task(later())
            await asyncio.sleep(0.05)
            order.append("first done")
        await asyncio.wait_for(waiting, 1)
        async with budget.reserve(60.0):  # longer than the whole budget: runs alone
            assert budget.in_use == 5.0
        return order, budget.in_use

    order, in_use = asyncio.run(scenario())
    assert order == ["first done", "second"] and in_use == 0


def test_a_recording_longer_than_the_decode_budget_still_runs_alone(settings, engine, recorded):
    with live_server(replace(settings, decode_budget_s=0.5), engine) as base_url:
        answer = httpx.post(f"{base_url}/recognize", files={"file": ("a.wav", recorded)}, timeout=60)
        assert answer.status_code == 200 and answer.json()["cache"]["tier"] == "miss"
        assert metric(base_url, "earmark_decode_budget_seconds_in_use") == 0


def _looped_flac_without_length(recorded: bytes, seconds: float, *, silent: bool = False) -> bytes:
    """`recorded` looped to `seconds` (or that much silence), as a FLAC whose STREAMINFO
    declares no length."""
    pcm, rate = read_pcm(recorded)
    if silent:  # at 16 kHz: no resampling to pay for in the test
        pcm, rate = np.zeros(int(seconds * 16000), np.int16), 16000
    else:
        pcm = np.tile(pcm, int(seconds * rate) // len(pcm) + 1)
    return flac_without_length(encode(pcm[:int(seconds * rate)], rate, fmt="flac", codec="flac"))


def test_a_flac_that_declares_no_length_gets_the_413_once_it_decodes_past_the_limit(settings, engine, recorded,
                                                                                   redis_client):
    flac = _looped_flac_without_length(recorded, 60.0)
    with TestClient(create_app(replace(settings, max_duration_s=10.0), engine=engine)) as client:
        for path in ("/recognize", "/lookup", "/v1/audio/transcriptions"):
            answer = post(client, flac, path)
            assert answer.status_code == 413, (path, answer.text)
            assert "10 s limit" in answer.text
        assert keys_under(redis_client, settings.key_prefix) == set()
        # The decoding passes let go of their reservations.
        assert client.app.state.services.cache.budget.in_use == 0


def test_the_decode_budget_is_charged_for_what_decodes_and_refuses_growth_it_has_no_room_for(settings, engine,
                                                                                           recorded, redis_client):
    """Five minutes of silence in a FLAC that declares no length is a few KB: the estimate from
    its size is seconds, the decoding is five minutes."""
    flac = _looped_flac_without_length(recorded, 300.0, silent=True)
    estimate = len(flac) / 1000  # the 8 kbps bound from the size (fingerprint/decode.py)
    assert estimate < 90  # fits in the 100 s left below
    with TestClient(create_app(replace(settings, decode_budget_s=400.0), engine=engine)) as client:
        budget = client.app.state.services.cache.budget
        # Another request holds 300 s of the 400: the estimate fits in what is left, the five
        # minutes do not. The upload waits, then gets the budget's 503, and keeps nothing.
        budget.wait_s = 0.3
        held, release = threading.Event(), threading.Event()

        async def hold() -> None:
            async with budget.reserve(300.0):
                held.set()
                while not release.is_set():
                    await asyncio.sleep(0.01)

        client.portal.start_task_soon(hold)
        try:
            assert held.wait(10)
            refused = post(client, flac)
        finally:
            release.set()
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", refused.text
        assert "being decoded" in refused.json()["msg"]
        assert metric_of(client, "earmark_decode_budget_refused_total") == 1
        assert keys_under(redis_client, settings.key_prefix) == set()
        wait_for(lambda: budget.in_use == 0)

        # With the budget free, the same upload runs, charged for the five minutes it decodes to.
        answer = post(client, flac)
        assert answer.status_code == 200 and answer.json()["cache"]["tier"] in ("negative", "miss"), answer.text
        assert metric_of(client, "earmark_decode_budget_grown_seconds_total") >= 300 - estimate
        assert budget.in_use == 0


def metric_of(client, name: str) -> float:
    """An unlabelled metric's value, read from /metrics through a TestClient."""
    line = next(line for line in client.get("/metrics").text.splitlines() if line.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


def test_the_further_containers_speech_comes_in_are_recognised_over_http(client, recorded, redis_client, settings):
    """Flash video, raw AC-3, TTA, Wave64, Creative VOC and the rest (tests/audio_tools.py):
    each is sniffed, decoded and answered 200 by /recognize; bytes that are not audio still
    get the 415, and nothing is cached for them."""
    pcm, rate = read_pcm(recorded)
    for name in sorted(EXTRA_CONTAINERS):
        if name == "nist sphere" and not shutil.which("sox"):
            continue  # written by Debian's sox; tests/test_decode.py reports the skip
        answer = post(client, in_container(name, pcm, rate))
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json()["cache"]["tier"] in ("miss", "canonical", "fuzzy"), name
    entries = keys_under(redis_client, settings.key_prefix)
    refused = post(client, b"\x0b\x77" + bytes(range(256)) * 8)
    assert refused.status_code == 415 and "not a recognised audio format" in refused.json()["msg"]
    assert keys_under(redis_client, settings.key_prefix) == entries
