"""The `funasr-ws` engine against servers speaking the FunASR runtime's WebSocket protocol in
offline mode (tests/funasr_ws_protocol_server.py: real WebSocket servers in the three flavours
of FunASR's own, backed by PocketSphinx here since torch and funasr are not installed).

The opening message, the 60 ms PCM frames and the end of input are FunASR's client's; the C++
server's one answer gives segments and word times, the Python server's stretches are joined as
text and its acknowledgement ends the answer (before 2026-07, its `is_final: false`); each
failure is the status the HTTP upstreams give it, counted by outcome, and nothing is cached."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace

import numpy as np
import pytest
from starlette.testclient import TestClient

from earmark.service.api.app import create_app
from earmark.service.config import ConfigError, load_settings
from earmark.service.engines.base import RecognitionOptions, Word
from earmark.service.engines.errors import EngineBusy, EngineOptionError, EngineTimeout, EngineUnavailable
from earmark.service.engines.transcript_limit import TranscriptTooLong
from earmark.service.engines.upstream.base import UpstreamConfig, UpstreamError
from earmark.service.engines.upstream.funasr_ws import STRIDE_BYTES, FunASRWebSocketEngine, transcript_of
from earmark.service.metrics import Metrics
from tests.funasr_ws_protocol_server import FunASRWebSocketServer
from tests.test_app import keys_under
from tests.test_upstream import metric

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)


@pytest.fixture(scope="module")
def pcm_16k(recorded):
    """`recorded` as the 16 kHz mono PCM the cache keys (what the engine is given on a miss)."""
    import io

    from earmark.fingerprint.decode import decode_audio

    return decode_audio(io.BytesIO(recorded), 3600.0).pcm_16k


@pytest.fixture(scope="module")
def servers(engine):
    """One running server per flavour."""
    running = {}
    contexts = []
    for flavour in ("python", "python-2024", "cpp", "cpp-2pass"):
        server = FunASRWebSocketServer(engine, flavour)
        context = server.serve()
        server.url = context.__enter__()
        contexts.append(context)
        running[flavour] = server
    yield running
    for context in contexts:
        context.__exit__(None, None, None)


@pytest.fixture
def server(servers, request):
    """The flavour a test names (`python` unless parametrised), reset after the test."""
    chosen = servers[getattr(request, "param", "python")]
    chosen.mode = "ok"
    chosen.release.clear()
    yield chosen
    chosen.mode = "ok"
    chosen.release.set()


def transcribe(url: str, pcm, options: RecognitionOptions | None = None, timeout_s: float = 60.0, **config):
    """One transcription by a started engine; (transcript or exception, metrics).

    The engine's first health check (a handshake, made at start) is awaited before the
    transcription, and the next is an hour away: a check landing after a failed transcription
    would otherwise set `earmark_upstream_up` back to 1 on a busy machine."""
    engine = FunASRWebSocketEngine(UpstreamConfig(url=url, **{"health_interval_s": 3600.0, **config}))
    metrics = Metrics()

    async def run():
        await engine.start(metrics)
        while not sum(sample.value for family in metrics.upstream.health_checks.collect()
                      for sample in family.samples if sample.name.endswith("_total")):
            await asyncio.sleep(0.01)
        try:
            return await engine.transcribe_async(pcm, engine.resolve(options or RecognitionOptions()), timeout_s)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return exc
        finally:
            await engine.aclose()

    return asyncio.run(run()), metrics


def outcomes(metrics: Metrics) -> dict[str, float]:
    return {sample.labels["outcome"]: sample.value for family in metrics.registry.collect()
            if family.name == "earmark_upstream_requests" for sample in family.samples
            if sample.name.endswith("_total")}


def test_the_python_server_is_sent_funasrs_offline_request_and_its_text_is_the_transcript(server, pcm_16k):
    heard, metrics = transcribe(server.url, pcm_16k)
    assert not isinstance(heard, Exception), heard
    assert heard.text == server.sent[-1]["text"] and "recorded" in heard.text  # really transcribed
    assert heard.segments == (), "the Python server's times count from an unlocated stretch: text only"
    opening = server.opening[-1]
    assert opening == {"mode": "offline", "chunk_size": [5, 10, 5], "chunk_interval": 10, "encoder_chunk_look_back": 4,
                       "decoder_chunk_look_back": 0, "audio_fs": 16000, "wav_name": "earmark", "wav_format": "pcm",
                       "is_speaking": True, "hotwords": "", "itn": True}
    assert sum(server.frame_sizes) == 2 * len(pcm_16k) and set(server.frame_sizes[:-1]) == {STRIDE_BYTES} == {1920}
    assert server.sent[-1]["is_final"] is True and "timestamp" in server.sent[-1]
    assert server.extensions[-1] is None, "no permessage-deflate: PCM does not compress, and it cost 9x the CPU"
    assert outcomes(metrics) == {"ok": 1.0}


@pytest.mark.parametrize("server", ["cpp"], indirect=True)
def test_the_cpp_servers_stamp_sents_become_segments_with_word_times(server, pcm_16k):
    heard, _ = transcribe(server.url, pcm_16k)
    assert not isinstance(heard, Exception), heard
    answer = server.sent[-1]
    assert heard.text == answer["text"] and "recorded" in heard.text and answer["is_final"] is False
    assert isinstance(answer["timestamp"], str)
    (segment,) = heard.segments
    assert segment.text == answer["text"] and [w.word for w in segment.words] == answer["text"].split()
    assert 0.0 <= segment.start < segment.end <= len(pcm_16k) / 16000 + 0.05, "milliseconds became seconds"
    stamps = answer["stamp_sents"][0]["ts_list"]
    assert [(w.start, w.end) for w in segment.words] == [(start / 1000, end / 1000) for start, end in stamps]


@pytest.mark.parametrize("server", ["python-2024"], indirect=True)
def test_the_python_server_before_its_acknowledgement_ends_with_is_final_false(server, pcm_16k):
    heard, _ = transcribe(server.url, pcm_16k, timeout_s=30)
    assert not isinstance(heard, Exception), heard
    assert "recorded" in heard.text and server.sent[-1]["is_final"] is False


@pytest.mark.parametrize("server", ["python", "python-2024", "cpp-2pass"], indirect=True)
def test_the_stretches_the_vad_cut_are_joined(server, pcm_16k):
    server.mode = "split"
    heard, _ = transcribe(server.url, pcm_16k)
    assert not isinstance(heard, Exception), heard
    texts = [message["text"].strip() for message in server.sent if message["text"].strip()]
    assert len(server.sent) == 2 and heard.text == " ".join(texts) and heard.segments == ()


@pytest.mark.parametrize("server", ["cpp-2pass"], indirect=True)
def test_the_2pass_server_in_offline_mode_ends_with_is_final_true(server, pcm_16k):
    heard, _ = transcribe(server.url, pcm_16k)
    assert not isinstance(heard, Exception), heard
    assert "recorded" in heard.text and server.sent[-1]["mode"] == "2pass-offline" and server.sent[-1]["is_final"] is True
    server.mode = "nothing"
    silence, _ = transcribe(server.url, np.zeros(16000, dtype=np.float32))
    assert not isinstance(silence, Exception) and silence.text == "" and "mode" not in server.sent[-1]


def test_options_go_in_the_opening_message_and_what_it_cannot_carry_is_refused(server, pcm_16k):
    heard, _ = transcribe(server.url, pcm_16k, RecognitionOptions(use_itn=False, hotwords=("魔搭", "FunASR")))
    assert not isinstance(heard, Exception), heard
    assert server.opening[-1]["itn"] is False and server.opening[-1]["hotwords"] == "魔搭 FunASR"
    engine = FunASRWebSocketEngine(UpstreamConfig(url=server.url))
    for options, named in ((RecognitionOptions(hotwords=("达摩 院",)), "hotword"), (RecognitionOptions(language="zh"), "language"),
                           (RecognitionOptions(prompt="hello"), "prompt")):
        with pytest.raises(EngineOptionError, match=named):
            engine.resolve(options)
    assert engine.resolve(RecognitionOptions(use_itn=False)) != engine.resolve(RecognitionOptions()), "itn is in the profile"


def test_an_error_in_the_acknowledgement_is_a_502(server, pcm_16k):
    server.mode = "error"
    failed, metrics = transcribe(server.url, pcm_16k)
    assert isinstance(failed, UpstreamError) and failed.kind.name == "FAILED"
    assert "reported a failure" in str(failed) and "offline inference failed: CUDA out of memory" in str(failed)
    assert outcomes(metrics) == {"error": 1.0}


@pytest.mark.parametrize("server", ["python", "cpp"], indirect=True)
def test_a_server_closing_before_its_answer_is_a_502(server, pcm_16k):
    server.mode = "close"
    failed, metrics = transcribe(server.url, pcm_16k)
    assert isinstance(failed, UpstreamError) and "closed the connection before its answer was complete" in str(failed)
    assert outcomes(metrics) == {"error": 1.0} and metrics.upstream.up._value.get() == 0
    assert metrics.registry.get_sample_value("earmark_upstream_seconds_count") == 1, "every outcome is timed"


def test_a_server_that_does_not_answer_in_time_is_a_timeout(server, pcm_16k):
    server.mode = "slow"
    late, metrics = transcribe(server.url, pcm_16k[:16000], timeout_s=0.5)
    assert isinstance(late, EngineTimeout) and "within" in str(late)
    assert outcomes(metrics) == {"timeout": 1.0}


@pytest.mark.parametrize("mode", ["runaway", "huge"])
def test_an_answer_longer_than_the_audio_can_hold_is_refused(server, pcm_16k, mode):
    server.mode = mode
    refused, metrics = transcribe(server.url, pcm_16k)
    assert isinstance(refused, TranscriptTooLong), refused
    assert "limit" in str(refused) and ("not cached" in str(refused) or "nor cached" in str(refused))
    assert outcomes(metrics) == {"too_large": 1.0}


def test_a_handshake_refused_by_a_proxy_is_a_502_and_a_busy_one_a_503(server, pcm_16k):
    server.mode = "unauthorized"
    failed, metrics = transcribe(server.url, pcm_16k)
    assert isinstance(failed, UpstreamError) and "refused the WebSocket handshake (HTTP 401" in str(failed)
    assert "401 Authorization Required" in str(failed) and outcomes(metrics) == {"error": 1.0}
    server.mode = "busy"
    busy, metrics = transcribe(server.url, pcm_16k)
    assert isinstance(busy, EngineBusy) and busy.retry_after_s == 7 and outcomes(metrics) == {"overloaded": 1.0}


def test_health_is_a_handshake_and_credentials_go_in_it(server, pcm_16k):
    """Up when the handshake succeeds or is answered below 500 (a proxy's 401), down on a 503 or
    no answer; the URL's user:password goes as HTTP Basic and never in the endpoint shown."""
    from tests.conftest import _free_port

    async def check(url: str) -> bool:
        engine = FunASRWebSocketEngine(UpstreamConfig(url=url))
        engine._metrics = Metrics().enable_upstream()
        return await engine.check_health()

    before = server.handshakes
    assert asyncio.run(check(server.url)) and server.handshakes == before + 1
    server.mode = "unauthorized"
    assert asyncio.run(check(server.url))
    server.mode = "busy"
    assert not asyncio.run(check(server.url))
    assert not asyncio.run(check(f"ws://127.0.0.1:{_free_port()}"))
    server.mode = "ok"
    with_password = server.url.replace("ws://", "ws://earmark:s%40cret@")
    heard, _ = transcribe(with_password, pcm_16k[:16000])
    assert not isinstance(heard, Exception) and server.authorization[-1] == "Basic ZWFybWFyazpzQGNyZXQ="  # earmark:s@cret
    assert FunASRWebSocketEngine(UpstreamConfig(url=with_password)).status()["endpoint"] == server.url + "/"
    transcribe(server.url, pcm_16k[:16000], api_key="k-123")
    assert server.authorization[-1] == "Bearer k-123"
    with pytest.raises(EngineUnavailable):
        FunASRWebSocketEngine(UpstreamConfig(url=with_password, api_key="k-123"))


def test_no_server_is_unreachable_after_the_retries(pcm_16k):
    from tests.conftest import _free_port

    failed, metrics = transcribe(f"ws://127.0.0.1:{_free_port()}", pcm_16k[:16000], retries=1)
    assert isinstance(failed, UpstreamError) and "cannot connect" in str(failed) and "2 attempts" in str(failed)
    assert outcomes(metrics) == {"unreachable": 1.0} and metrics.upstream.retries._value.get() == 1


def test_something_that_does_not_speak_websocket_is_a_handshake_failure(pcm_16k):
    async def run():
        async def hang_up(reader, writer):
            await reader.read(100)
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            await writer.drain()
            writer.close()

        listening = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(transcribe, f"ws://127.0.0.1:{port}", pcm_16k[:16000])
        finally:
            listening.close()

    failed, metrics = asyncio.run(run())
    assert isinstance(failed, UpstreamError) and "handshake" in str(failed) and "failed" in str(failed)
    assert outcomes(metrics) == {"error": 1.0}


def test_wss_with_a_self_signed_certificate(engine, pcm_16k, tmp_path):
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "funasr-ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    server = FunASRWebSocketServer(engine, "cpp")
    with server.serve(context) as url:
        assert url.startswith("wss://")
        untrusted, metrics = transcribe(url, pcm_16k, retries=0)
        assert isinstance(untrusted, UpstreamError) and "certificate is not trusted" in str(untrusted)
        assert "upstream_ca_file" in str(untrusted) and "upstream_tls_verify" in str(untrusted)
        assert server.requests == 0 and outcomes(metrics) == {"error": 1.0}
        for config in ({"ca_file": str(ca_file)}, {"tls_verify": False}):
            heard, _ = transcribe(url, pcm_16k, **config)
            assert not isinstance(heard, Exception), heard
            assert "recorded" in heard.text and heard.segments
        assert server.requests == 2


def test_funasr_ws_needs_a_websocket_url(settings):
    with pytest.raises(ConfigError, match="a ws:// or wss:// URL"):
        load_settings(None, engine="funasr-ws", upstream_url="http://127.0.0.1:10095", redis_url=settings.redis_url)
    with pytest.raises(ConfigError, match="upstream_ca_file"):
        load_settings(None, engine="funasr-ws", upstream_url="wss://127.0.0.1:10095", upstream_ca_file="/nonexistent.pem")
    assert load_settings(None, engine="funasr-ws", upstream_url="wss://127.0.0.1:10095",
                         upstream_tls_verify="false").upstream_tls_verify is False
    routed = load_settings(None, engine="pocketsphinx", language_routes="zh=funasr-ws", upstream_url="ws://127.0.0.1:10095")
    assert routed.upstream_url == "ws://127.0.0.1:10095", "a language routed to funasr-ws takes its ws:// URL"


def test_the_cpp_servers_chinese_sentences_are_joined_back():
    """FunASR spaces each character in `text_seg` and gives the punctuation apart; a sentence of
    punctuation alone has no words."""
    answer = {"mode": "offline", "is_final": False, "text": "正是因为，存在。OK go",
              "timestamp": "[[430,670],[670,810],[810,1030],[1030,1130],[1200,1300],[1300,1500],[1600,1700],[1700,1800]]",
              "stamp_sents": [
                  {"text_seg": "正 是 因 为", "punc": "，", "start": 430, "end": 1130,
                   "ts_list": [[430, 670], [670, 810], [810, 1030], [1030, 1130]]},
                  {"text_seg": "存 在", "punc": "。", "start": 1200, "end": 1500, "ts_list": [[1200, 1300], [1300, 1500]]},
                  {"text_seg": "", "punc": "。", "start": 0, "end": 0, "ts_list": []},
                  {"text_seg": "OK go", "punc": "", "start": 1600, "end": 1800, "ts_list": [[1600, 1700], [1700, 1800]]}]}
    heard = transcript_of([answer], whole_answer=True)
    assert heard.text == "正是因为，存在。OK go"
    assert [s.text for s in heard.segments] == ["正是因为，", "存在。", "OK go"]
    assert heard.segments[0].words[1] == Word("是", 0.67, 0.81) and heard.segments[2].words[0] == Word("OK", 1.6, 1.7)
    without_sentences = transcript_of([{**answer, "stamp_sents": ""}], whole_answer=True)
    (segment,) = without_sentences.segments
    assert (segment.start, segment.end, len(segment.words)) == (0.43, 1.8, 8) and segment.words[7] == Word("go", 1.7, 1.8)
    stretches = transcript_of([{"text": "欢迎大家。"}, {"text": "来体验"}, {"text": "hello"}, {"text": "world"}], whole_answer=False)
    assert stretches.text == "欢迎大家。来体验hello world" and stretches.segments == ()
    assert transcript_of([{**answer, "text": ""}], whole_answer=True).segments == ()


# --- through the HTTP API ----------------------------------------------------------------


@pytest.fixture
def front(settings, servers):
    cpp = servers["cpp"]
    cpp.mode = "ok"
    configured = replace(settings, engine="funasr-ws", upstream_url=cpp.url, upstream_model="paraformer-zh",
                         upstream_revision="v2.0.4")
    with TestClient(create_app(configured)) as client:
        client.settings = configured
        yield client
    cpp.mode = "ok"


def test_recognize_through_funasr_ws_a_miss_then_an_exact_hit(front, servers, recorded, redis_client):
    cpp = servers["cpp"]
    before = cpp.requests
    first = front.post("/recognize", files={"file": ("a.wav", recorded)})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["cache"]["tier"] == "miss" and "recorded" in body["result"]["text"]
    assert body["result"]["segments"][0]["words"], "the C++ server's word times reach the client"
    again = front.post("/recognize", files={"file": ("a.wav", recorded)})
    assert again.json()["cache"]["tier"] == "exact" and again.json()["result"]["text"] == body["result"]["text"]
    assert cpp.requests == before + 1, "a cached answer must not reach the server"
    assert metric(front, 'earmark_upstream_requests_total{outcome="ok"}') == 1
    upstream = front.get("/health").json()["upstream"]
    assert upstream["endpoint"] == f"{cpp.url}/" and upstream["model"] == "paraformer-zh"


def test_a_failure_through_funasr_ws_is_a_502_and_nothing_is_cached(front, servers, recorded, redis_client):
    servers["cpp"].mode = "close"
    failed = front.post("/recognize", files={"file": ("a.wav", recorded)})
    assert failed.status_code == 502 and "closed the connection" in failed.json()["msg"], failed.text
    assert keys_under(redis_client, front.settings.key_prefix) == set()
    assert metric(front, 'earmark_upstream_requests_total{outcome="error"}') == 1
    servers["cpp"].mode = "ok"
    assert front.post("/recognize", files={"file": ("a.wav", recorded)}).json()["cache"]["tier"] == "miss"


def test_pcm_is_sent_as_16_bit_samples():
    """Clipped to [-1, 1] and scaled as the WAV of the HTTP upstreams."""
    from earmark.service.engines.upstream.funasr_ws import pcm_bytes

    assert np.frombuffer(pcm_bytes(np.array([0.0, 1.0, -1.5, 0.5], dtype=np.float32)), "<i2").tolist() == [0, 32767, -32767, 16384]
