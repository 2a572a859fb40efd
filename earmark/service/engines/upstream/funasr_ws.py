"""The `funasr-ws` engine: the FunASR runtime's WebSocket server upstream, in its offline mode
(the protocol of FunASR's runtime/docs/websocket_protocol.md, as its servers speak it: the C++
runtime's funasr-wss-server in the deployed Docker images, runtime/websocket/bin/websocket-server.cpp,
and the Python runtime/python/websocket/funasr_wss_server.py).

One recording, one connection (subprotocol `binary`, no pings, as FunASR's own client):
1. a JSON text message: `{"mode": "offline", "wav_name", "wav_format": "pcm", "audio_fs": 16000,
   "is_speaking": true, "itn", "hotwords", "chunk_size": [5, 10, 5], "chunk_interval": 10, ...}`
   (the Python server drops every audio frame of a connection that set no `chunk_size`, even
   offline, so it is sent as FunASR's client sends it);
2. the 16 kHz mono 16-bit PCM the cache keyed, in binary messages of 60 ms (the client's stride, and the
   Python server's VAD step);
3. `{"is_speaking": false, "is_end": true}`.

What comes back, and when it is complete:
- the C++ server: one message `{"mode": "offline", "text", "is_final": false, "timestamp":
  "[[100,200],...]", "stamp_sents": [{"text_seg": "正 是 因 为", "punc": ",", "start", "end",
  "ts_list"}], "wav_name"}` (times in ms over the whole recording; `is_final` is false there),
  and the connection stays open for the client to close;
- the C++ 2pass server (funasr-wss-server-2pass, the real-time images'), asked for offline mode:
  a message per stretch its VAD cut, `{"mode": "2pass-offline", "text", "is_final": false, ...}`,
  the last with `is_final: true` (and no `mode` when it holds no text);
- the Python server: a message per stretch of speech its VAD cut (`is_final` true), then, for a
  client that sent `is_end`, an acknowledgement `{"is_end": true, "is_final": true}`, or
  `"is_final": false` with an `error` when its inference failed. Before 2026-07 it sent no
  acknowledgement and marked its answer to the end of input `is_final: false`, like the C++
  server. So the answer is complete at the acknowledgement or at the first `is_final: false`.

Times: the C++ server's `stamp_sents` become segments (a sentence each, text and punctuation
joined back) with a word per character (Chinese) or word (English) from its `ts_list`; its
`timestamp` alone becomes one segment. The Python server's times count from the start of the
stretch its VAD cut, which the protocol does not say, so its answers are kept as text only, as
are the 2pass server's.

Failures, mapped as service/engines/upstream/base.py maps the HTTP upstreams' (nothing cached):
no connection (after `upstream_retries`) 502 `unreachable`; a handshake refused with 429/503
503 (its Retry-After), with another status or not a WebSocket server 502 `error`; a wss://
certificate not trusted 502 naming upstream_ca_file and upstream_tls_verify; the server closing
before its answer, an `error` in a message or an acknowledgement with `is_final: false`, or an
answer that is not the protocol's 502 `error`; no answer in time 504 `timeout`; an answer longer
than the audio can hold (a message or all of them over `answer_limit`, or a transcript over
the character limit) 502 `too_large`. A C++ server whose model failed sends an empty `text`,
as for silence: nothing tells the two apart.

Options: `use_itn` (the protocol's `itn`, default true as in FunASR's client) and `hotwords`
(sent space-separated, the form both servers read; a hotword with a space in it is refused,
422) are in the profile; a language other than `auto` and a prompt are refused (422).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import time
from dataclasses import replace
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode
from websockets.typing import Subprotocol

from earmark.errors import quoted
from earmark.service.config import has_credentials
from earmark.service.engines.base import Capabilities, RecognitionOptions, Segment, Transcript, Word
from earmark.service.engines.errors import EngineBusy, EngineOptionError, EngineTimeout
from earmark.service.engines.transcript_limit import TranscriptTooLong
from earmark.service.engines.upstream.base import (
    FIRST_RETRY_DELAY_S,
    UpstreamConfig,
    UpstreamEngine,
    UpstreamError,
    _check_finite,
    _reason,
    _retry_after_s,
    with_path,
)
from earmark.service.engines.upstream.refusal import read_error
from earmark.service.pipeline.profile import Profile

SUBPROTOCOL = Subprotocol("binary")
SAMPLE_RATE = 16000
# FunASR's client sends 60 * chunk_size[1] / chunk_interval ms a message: 60 ms, 1,920 bytes (the Python
# server's VAD takes its audio in steps of that length).
STRIDE_BYTES = 60 * 10 // 10 * SAMPLE_RATE // 1000 * 2
# What FunASR's client sends besides the mode; the Python server needs chunk_size even offline.
STREAMING_FIELDS = {"chunk_size": [5, 10, 5], "chunk_interval": 10, "encoder_chunk_look_back": 4,
                    "decoder_chunk_look_back": 0}
WAV_NAME = "earmark"
# Written without spaces around them: CJK characters and their full-width punctuation.
_WIDE = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff00-\uffef]")


class FunASRWebSocketEngine(UpstreamEngine):
    """A FunASR runtime WebSocket server (offline mode) as the engine."""

    name = "funasr-ws"
    default_model = "funasr-runtime"
    client_fields = ("hotwords",)

    def __init__(self, config: UpstreamConfig) -> None:
        super().__init__(config)
        self.capabilities = Capabilities(
            languages=("auto",), default_language="auto", itn=(True, False), default_itn=True,
            hotwords=True, prompt=False, extra={"any_language": False, "upstream": self.endpoint},
        )
        self._tls = tls_context(config) if self.endpoint.startswith("wss://") else None
        self._headers = _auth_headers(config)

    def endpoint_url(self, url: str) -> str:
        """The URL as given (the servers take any path), without query or fragment."""
        return with_path(url, urlsplit(url).path or "/")

    def health_url(self) -> str:
        """The endpoint: a health check is a WebSocket handshake on it."""
        return self.endpoint

    def resolve(self, options: RecognitionOptions, namespace: str = "") -> Profile:
        """The upstream checks, and hotwords the space-separated form can carry."""
        spaced = [word for word in options.hotwords if any(c.isspace() for c in word.strip())]
        if spaced:
            raise EngineOptionError(f"engine {self.name!r} sends hotwords to the FunASR server separated by spaces, "
                                    f"so a hotword cannot hold one: {quoted(spaced[0])}; send each word as its own hotword")
        profile = super().resolve(options, namespace)
        return replace(profile, hotwords=tuple(word.strip() for word in profile.hotwords))

    # --- life cycle ---------------------------------------------------------------------

    async def start(self, metrics) -> None:
        """Start the periodic health check (each transcription opens its own connection)."""
        self._metrics = metrics.enable_upstream()
        self._health_task = asyncio.create_task(self._watch_health())

    async def aclose(self) -> None:
        """Stop the health check."""
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)

    async def check_health(self) -> bool:
        """One WebSocket handshake, closed at once: up when it succeeds or the server answers
        it with a status below 500 (a proxy's 401, say), as for the HTTP upstreams."""
        assert self._metrics is not None
        try:
            connection = await self._connect(max_size=1024)
            await connection.close()
            up = True
        except InvalidStatus as exc:
            up = exc.response.status_code < 500
            if not up:
                self._last_error = f"health check: HTTP {exc.response.status_code}"
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            up = False
            self._last_error = self._safe(f"health check: {_reason(exc)}")
        self._metrics.health_checks.labels(result="up" if up else "down").inc()
        self._set_state(up)
        return up

    # --- a transcription ----------------------------------------------------------------

    async def transcribe_async(self, pcm_16k: np.ndarray, profile: Profile, timeout_s: float) -> Transcript:
        """Send the audio as the offline protocol's PCM; the transcript, or the failure mapped
        to its status."""
        assert self._metrics is not None, "start() was not called"
        audio_s = len(pcm_16k) / SAMPLE_RATE
        pcm = await asyncio.to_thread(pcm_bytes, pcm_16k)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                results, whole_answer = await self._exchange(pcm, profile, audio_s)
        except asyncio.CancelledError:
            self._metrics.requests.labels(outcome="cancelled").inc()
            raise
        except TimeoutError as exc:
            self._count("timeout", "no answer in time")
            raise EngineTimeout(f"the upstream did not answer within {timeout_s:.0f} s") from exc
        except TranscriptTooLong as exc:
            self._refuse_too_large(str(exc))
            raise
        finally:
            self._observe(started)
        return await self._read_answer(self._checked, results, whole_answer, audio_s)

    def _checked(self, results: list[dict], whole_answer: bool, audio_s: float) -> Transcript:
        transcript = transcript_of(results, whole_answer)
        _check_finite(transcript)
        self.config.transcript_limit.check(transcript, audio_s)
        return transcript

    async def _exchange(self, pcm: bytes, profile: Profile, audio_s: float) -> tuple[list[dict], bool]:
        """Connect, send, and read the answer's messages (see the module's docstring). They are
        read while the audio is sent: the Python server answers each stretch as its VAD cuts it,
        and unread answers would stop it reading the audio."""
        limit = self.answer_limit(audio_s)
        connection = await self._open(limit)
        sending = asyncio.create_task(_send(connection, pcm, profile))
        try:
            try:
                return await self._answer(connection, limit, audio_s)
            except ConnectionClosed as exc:  # the sender sees the same close: the answer tells why
                raise self._closed_early(exc, limit, audio_s) from exc
            except UpstreamError as exc:
                self._count("error", str(exc))
                raise
            except ValueError as exc:  # a message that is not JSON
                self._count("error", f"malformed answer: {exc}")
                raise UpstreamError(f"the FunASR server's message is not JSON: {exc}") from exc
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            await connection.close()

    async def _answer(self, connection: ClientConnection, limit: int, audio_s: float) -> tuple[list[dict], bool]:
        """The result messages up to the end of the answer; and whether they are one answer for
        the whole recording (the C++ server's), whose times count from its start."""
        results: list[dict] = []
        received = 0
        while True:
            message = await connection.recv()
            received += len(message.encode() if isinstance(message, str) else message)
            if received > limit:
                raise TranscriptTooLong(self._too_long(limit, audio_s))
            if not isinstance(message, str):
                raise UpstreamError("the FunASR server sent a binary message; it answers in JSON text")
            body = await asyncio.to_thread(json.loads, message) if len(message) > 65536 else json.loads(message)
            if not isinstance(body, dict):
                raise UpstreamError("the FunASR server's message is not a JSON object")
            if body.get("error") or (body.get("is_end") and body.get("is_final") is False):
                reason = body.get("error") or "no reason given"
                raise UpstreamError(f"the FunASR server reported a failure: {quoted(self._safe(str(reason)), 200)}")
            if body.get("is_end"):
                return results, False
            mode = body.get("mode")
            if mode == "offline":
                results.append(body)
                if body.get("is_final") is False:
                    return results, len(results) == 1
            elif mode == "2pass-offline" or (mode is None and body.get("is_final") is True):
                # The 2pass server: a stretch each, the last `is_final` (without a mode when empty)
                if mode is not None:
                    results.append(body)
                if body.get("is_final") is True:
                    return results, False
            elif mode not in ("2pass-online", "online"):  # a 2pass server's interim guesses are passed over
                raise UpstreamError(f"the FunASR server answered in mode {quoted(str(mode), 40)}, not 'offline'")

    async def _open(self, limit: int) -> ClientConnection:
        """The connection, retrying only failures to connect (nothing was sent)."""
        attempt = 0
        while True:
            try:
                return await self._connect(max_size=limit)
            except ssl.SSLCertVerificationError as exc:
                self._count("error", f"certificate not trusted: {exc.verify_message}", up=False)
                raise UpstreamError(
                    f"the upstream {self.endpoint}'s certificate is not trusted ({exc.verify_message}): give its "
                    "certificate as upstream_ca_file, or set upstream_tls_verify = false to skip the check "
                    "(as FunASR's own client does)") from exc
            except InvalidStatus as exc:
                raise self._handshake_refused(exc) from exc
            except (InvalidHandshake, InvalidURI, ssl.SSLError) as exc:
                self._count("error", f"handshake failed: {_reason(exc)}", up=False)
                raise UpstreamError(f"the WebSocket handshake with the upstream {self.endpoint} failed "
                                    f"(is it the FunASR WebSocket server? ws:// or wss://?): {self._safe(_reason(exc))}") from exc
            except (OSError, TimeoutError) as exc:
                if attempt < self.config.retries:
                    assert self._metrics is not None
                    self._metrics.retries.inc()
                    await asyncio.sleep(FIRST_RETRY_DELAY_S * 2 ** attempt)
                    attempt += 1
                    continue
                self._count("unreachable", f"cannot connect: {_reason(exc)}", up=False)
                raise UpstreamError(f"cannot connect to the upstream {self.endpoint} "
                                    f"({attempt + 1} attempts): {self._safe(_reason(exc))}") from exc

    def _connect(self, max_size: int):
        """websockets' connect, as FunASR's client connects (subprotocol `binary`, no pings), but
        without per-message compression: PCM hardly compresses, and deflating each of an hour's
        60,000 messages took 10 s of the event loop's CPU (1.1 s without; the C++ server never
        takes it anyway)."""
        return connect(self.endpoint, subprotocols=[SUBPROTOCOL], additional_headers=self._headers, ssl=self._tls,
                       open_timeout=self.config.connect_timeout_s, ping_interval=None, close_timeout=2,
                       max_size=max_size, user_agent_header="earmark", compression=None)

    def _handshake_refused(self, exc: InvalidStatus) -> Exception:
        """A handshake answered with an HTTP status: 429/503 busy, anything else the upstream's."""
        response = exc.response
        if response.status_code in (429, 503):
            self._count("overloaded", f"HTTP {response.status_code}", up=response.status_code == 429)
            return EngineBusy(retry_after_s=_retry_after_s(response.headers.get("Retry-After")),
                              reason=f"the upstream is overloaded (HTTP {response.status_code})")
        content_type = response.headers.get("Content-Type")
        answer = read_error(httpx.Response(response.status_code, content=bytes(response.body or b""),
                                           headers={"content-type": content_type} if content_type else {}), self._secrets())
        self._count("error", answer.described(), up=response.status_code < 500)
        return UpstreamError(f"the upstream refused the WebSocket handshake ({answer.described()})")

    def _closed_early(self, exc: ConnectionClosed, limit: int, audio_s: float) -> Exception:
        """The connection closed before the answer was complete: by us, for a message over the
        limit (1009), or by the server."""
        if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
            return TranscriptTooLong(self._too_long(limit, audio_s))
        said = f" (close code {exc.rcvd.code}{': ' + exc.rcvd.reason if exc.rcvd.reason else ''})" if exc.rcvd else ""
        reason = f"the FunASR server closed the connection before its answer was complete{said}"
        self._count("error", reason, up=False)
        return UpstreamError(self._safe(reason))

    def _too_long(self, limit: int, audio_s: float) -> str:
        return (f"the upstream's answer is over earmark's limit of {limit} bytes for {audio_s:.1f} s of audio "
                f"({self.config.transcript_limit.explained()}); it was not read further, nor cached")


async def _send(connection: ClientConnection, pcm: bytes, profile: Profile) -> None:
    """The opening message, the PCM in FunASR's client's strides, and the end of input."""
    await connection.send(json.dumps(first_message(profile), ensure_ascii=False))
    for offset in range(0, len(pcm), STRIDE_BYTES):
        await connection.send(pcm[offset: offset + STRIDE_BYTES])
    await connection.send(json.dumps({"is_speaking": False, "is_end": True}))


def first_message(profile: Profile) -> dict:
    """The offline mode's opening message for `profile`, as FunASR's client writes it."""
    return {"mode": "offline", **STREAMING_FIELDS, "audio_fs": SAMPLE_RATE, "wav_name": WAV_NAME, "wav_format": "pcm",
            "is_speaking": True, "hotwords": " ".join(profile.hotwords), "itn": bool(profile.use_itn)}


def pcm_bytes(pcm_16k: np.ndarray) -> bytes:
    """16 kHz mono float PCM as 16-bit little-endian samples."""
    return np.round(np.clip(np.asarray(pcm_16k, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def transcript_of(results: list[dict], whole_answer: bool) -> Transcript:
    """The transcript in the answer's result messages: their text joined; segments and word
    times only from one answer for the whole recording (the C++ server's)."""
    texts = []
    for body in results:
        if not isinstance(body.get("text", ""), str):
            raise UpstreamError("the FunASR server's message has a 'text' that is not a string")
        if body.get("text", "").strip():
            texts.append(body["text"].strip())
    text = joined(texts)
    segments: tuple[Segment, ...] = ()
    if whole_answer and text:
        segments = _segments(results[0], text)
    # The server does not say which language it heard.
    return Transcript(text=text, normalized_text=text, language="", segments=segments)


def _segments(body: dict, text: str) -> tuple[Segment, ...]:
    """Segments from `stamp_sents` (a sentence each), else one from `timestamp`; () without times."""
    sentences = body.get("stamp_sents")
    if isinstance(sentences, str):  # the C++ server sends "" when its sentences did not parse
        sentences = json.loads(sentences) if sentences.strip() else None
    if isinstance(sentences, list) and sentences:
        segments = []
        for sentence in sentences:
            tokens = str(sentence.get("text_seg") or "").split()
            if not tokens:
                continue  # punctuation after punctuation: no words, times 0
            segments.append(Segment(start=float(sentence["start"]) / 1000.0, end=float(sentence["end"]) / 1000.0,
                                    text=joined(tokens) + str(sentence.get("punc") or ""),
                                    words=_words(tokens, sentence.get("ts_list"))))
        return tuple(segments)
    stamps = body.get("timestamp")
    if isinstance(stamps, str):
        stamps = json.loads(stamps) if stamps.strip() else None
    if isinstance(stamps, list) and stamps:
        pairs = [(float(start) / 1000.0, float(end) / 1000.0) for start, end in stamps]
        tokens = _tokens(text)
        words = tuple(Word(token, start, end) for token, (start, end) in zip(tokens, pairs, strict=True)) if len(tokens) == len(pairs) else ()
        return (Segment(start=pairs[0][0], end=pairs[-1][1], text=text, words=words),)
    return ()


def _words(tokens: list[str], stamps) -> tuple[Word, ...]:
    """A word per token and its [start, end] in ms, when there is one of each."""
    if not isinstance(stamps, list) or len(stamps) != len(tokens):
        return ()
    return tuple(Word(token, float(start) / 1000.0, float(end) / 1000.0) for token, (start, end) in zip(tokens, stamps, strict=True))


def _tokens(text: str) -> list[str]:
    """The units FunASR stamps in a text: each Chinese character, each other word; no punctuation."""
    return re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+(?:'[^\W_]+)*", text)


def joined(parts: list[str]) -> str:
    """Parts joined as text: no space next to a Chinese, Japanese or Korean character, one elsewhere
    (FunASR spaces every character in `text_seg`, and gives the Python server's stretches apart)."""
    text = ""
    for part in parts:
        if text and not (_WIDE.match(text[-1]) or _WIDE.match(part[0])):
            text += " "
        text += part
    return text


def tls_context(config: UpstreamConfig) -> ssl.SSLContext:
    """The client's TLS context: the system's CAs or `ca_file`; no check at all when
    `tls_verify` is off (FunASR's servers make their own self-signed certificate)."""
    context = ssl.create_default_context(cafile=config.ca_file or None)
    if not config.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _auth_headers(config: UpstreamConfig) -> dict[str, str]:
    """The handshake's Authorization: the key as a bearer token, else the URL's user:password as
    HTTP Basic (both at once are refused by UpstreamEngine)."""
    if config.api_key:
        return {"Authorization": f"Bearer {config.api_key}"}
    if has_credentials(config.url):
        parts = urlsplit(config.url)
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {}
