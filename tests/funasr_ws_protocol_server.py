"""A server speaking the FunASR runtime's WebSocket protocol (offline mode) exactly, for the
`funasr-ws` tests.

The protocol is FunASR's runtime/docs/websocket_protocol.md as its servers implement it
(modelscope/FunASR at 3c58cb5), served by `websockets` with subprotocol `binary` and no pings,
over ws:// or (given an SSL context) wss://. Three flavours, one per real server:
- `python`: runtime/python/websocket/funasr_wss_server.py as of 2026-07 (#3440). Text messages
  set the connection's state (`mode`, default 2pass; `wav_name`; `chunk_size`, without which
  every audio frame is dropped and an error recorded; `audio_fs`; `hotwords`); binary messages
  are PCM. At `{"is_speaking": false}` the audio left is recognised and sent as `{"mode":
  "offline", "spk_name", "spk_score", "text", "wav_name", "is_final": true, "timestamp":
  [[ms, ms], ...]}` (the timestamp a JSON list, counted from the stretch's start; no message
  when no audio is left), and, when that message also held `"is_end": true`, the
  acknowledgement `{"mode", "wav_name", "is_final": <no errors>, "is_end": true}` with an
  `error` when something failed. A mode other than online/offline/2pass is an error too.
- `python-2024`: the same server before #3440: its answer to the end of input has `is_final`
  set to `is_speaking`, so false; no timestamp, no acknowledgement, and a message even for no audio.
- `cpp`: runtime/websocket/bin/websocket-server.cpp (funasr-wss-server, the Docker images'):
  the audio is collected whatever the messages say; at `is_speaking: false` one message
  `{"mode": "offline", "text", "is_final": false, "timestamp": "[[ms,ms],...]", "stamp_sents":
  [{"text_seg": "w1 w2", "punc", "start", "end", "ts_list"}], "wav_name"}` (`{"text": "", ...}`
  without the times for silence), over the whole recording; the connection stays open.
- `cpp-2pass`: runtime/websocket/bin/websocket-server-2pass.cpp (funasr-wss-server-2pass) asked
  for offline mode: a message per stretch, `{"text", "mode": "2pass-offline", "start_time",
  "end_time", "slice_type": 2, "index", "timestamp", "stamp_sents", "wav_name", "is_final":
  false}`, the one answering the end of input `is_final: true`; when that one has no text, it is
  `{"text": "", "timestamp": <the connection's start, ms since the epoch>, "wav_name",
  "is_final": true}`, without a mode.

Backing: the real servers run Paraformer (with FSMN VAD and CT-Transformer punctuation); torch
and funasr are not installed here, so a real engine of this project transcribes instead,
PocketSphinx (`service.engines.pocketsphinx_engine`): its words and their times become the
timestamps, and its one segment the one sentence (no punctuation model, so `punc` is "").
The Python server's VAD cuts the audio at pauses and answers each stretch as it ends; here the
whole input is one stretch unless `mode` is `split`.

What a test may switch (`FunASRWebSocketServer.mode`):
- `ok`: the protocol above;
- `split` (python and 2pass flavours): a stretch is answered once 2 s of audio have arrived, as the VAD
  does at a pause, and the rest at the end of input;
- `error` (python): the model raises; the acknowledgement says `is_final: false` with the
  server's own `error` ("offline inference failed: ...");
- `close`: the connection is closed at the end of input without an answer (the Python server's
  handler on an unexpected exception);
- `slow`: the answer waits until `release` is set (or 60 s);
- `runaway`: the answer's text is 50,000 characters (a model in a repetition loop);
- `nothing`: the model hears nothing (PocketSphinx names a word even in digital silence,
  depending on what it heard before);
- `huge`: the answer is one 300 KB message;
- `unauthorized`, `busy`: the handshake is answered 401 (an nginx in front asking for
  credentials, its HTML page) or 503 with `Retry-After: 7`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http import HTTPStatus

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from earmark.service.engines.base import RecognitionOptions
from tests.funasr_protocol_server import NGINX_PAGE

FLAVOURS = ("python", "python-2024", "cpp", "cpp-2pass")
SPLIT_BYTES = 2 * 16000 * 2  # `split`: 2 s of 16 kHz 16-bit audio


class FunASRWebSocketServer:
    """The handler, its switches, and what it received."""

    def __init__(self, engine, flavour: str = "python") -> None:
        assert flavour in FLAVOURS
        self.engine = engine
        self.profile = engine.resolve(RecognitionOptions())
        self.flavour = flavour
        self.mode = "ok"
        self.handshakes = 0
        self.requests = 0  # ends of input received
        self.opening: list[dict] = []  # each connection's first text message
        self.frame_sizes: list[int] = []  # the last request's binary messages
        self.sent: list[dict] = []  # the last request's result messages
        self.release = threading.Event()
        self.authorization: list[str | None] = []  # each handshake's Authorization header
        self.extensions: list[str | None] = []  # ... and the extensions it offered

    # --- the handshake ------------------------------------------------------------------

    def process_request(self, connection: ServerConnection, request):
        """The proxy in front: a 401 or a 503 instead of the upgrade, when switched so."""
        self.authorization.append(request.headers.get("Authorization"))
        self.extensions.append(request.headers.get("Sec-WebSocket-Extensions"))
        if self.mode == "unauthorized":
            title = "401 Authorization Required"
            return connection.respond(HTTPStatus.UNAUTHORIZED, NGINX_PAGE.format(title=title))
        if self.mode == "busy":
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
            response.headers["Retry-After"] = "7"
            return response
        return None

    # --- a connection -------------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        """One connection, as the flavour's server handles it."""
        self.handshakes += 1
        state = {"mode": "2pass" if self.flavour != "cpp" else "offline", "wav_name": "microphone",
                 "chunk_size": None, "audio_fs": 16000, "errors": [], "frames": [], "opened": False}
        try:
            async for message in ws:
                if isinstance(message, str):
                    body = json.loads(message)
                    if not state["opened"]:
                        state["opened"] = True
                        self.opening.append(body)
                        self.frame_sizes = []
                        self.sent = []
                    state["wav_name"] = body.get("wav_name") or state["wav_name"]
                    if "chunk_size" in body:
                        state["chunk_size"] = body["chunk_size"]
                    if "audio_fs" in body:
                        state["audio_fs"] = int(body["audio_fs"])
                    if "mode" in body and self.flavour in ("python", "python-2024"):
                        if body["mode"] not in ("online", "offline", "2pass"):
                            state["errors"].append(f"unsupported mode: {body['mode']!r}")
                        state["mode"] = body["mode"]
                    if body.get("is_speaking") is False or (self.flavour == "cpp" and body.get("is_finished") is True):
                        self.requests += 1
                        await self._finish(ws, state, ack=bool(body.get("is_end")))
                    continue
                self.frame_sizes.append(len(message))
                if self.flavour in ("python", "python-2024") and state["chunk_size"] is None:
                    state["errors"].append("audio frame discarded: chunk_size is not configured")
                    continue
                state["frames"].append(message)
                if self.mode == "split" and self.flavour != "cpp" and sum(map(len, state["frames"])) >= SPLIT_BYTES:
                    if self.flavour == "cpp-2pass":
                        await self._two_pass_result(ws, state, b"".join(state["frames"]), is_final=False)
                    else:
                        await self._result(ws, state, b"".join(state["frames"]), is_final=True)
                    state["frames"] = []
        except ConnectionClosed:
            pass

    async def _finish(self, ws: ServerConnection, state: dict, *, ack: bool) -> None:
        audio = b"".join(state["frames"])
        state["frames"] = []
        if self.mode == "close":
            await ws.close()
            return
        if self.mode == "slow":
            await asyncio.to_thread(self.release.wait, 60)
        if self.flavour == "cpp":
            await self._cpp_result(ws, state, audio)
            return
        if self.flavour == "cpp-2pass":
            await self._two_pass_result(ws, state, audio, is_final=True)
            return
        if self.mode == "error":
            state["errors"].append("offline inference failed: CUDA out of memory")
        elif audio or self.flavour == "python-2024":
            await self._result(ws, state, audio, is_final=self.flavour == "python")
        if ack and self.flavour == "python":
            acknowledgement = {"mode": state["mode"], "wav_name": state["wav_name"], "is_final": not state["errors"],
                               "is_end": True}
            if state["errors"]:
                acknowledgement["error"] = "; ".join(state["errors"])
            await ws.send(json.dumps(acknowledgement, ensure_ascii=False))
            state["errors"] = []

    async def _recognise(self, audio: bytes):
        pcm = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
        transcript = await asyncio.to_thread(self.engine.transcribe, pcm, self.profile)
        words = [word for segment in transcript.segments for word in segment.words]
        text = transcript.text
        if self.mode == "runaway":
            text = "ha " * 16_667
        if self.mode == "nothing":
            text, words = "", []
        return text, words

    async def _result(self, ws: ServerConnection, state: dict, audio: bytes, *, is_final: bool) -> None:
        """The Python server's `async_asr` message for one stretch."""
        mode = "2pass-offline" if "2pass" in state["mode"] else state["mode"]
        text, words = await self._recognise(audio) if audio else ("", [])
        message: dict = {"mode": mode, "text": text, "wav_name": state["wav_name"], "is_final": is_final}
        if self.flavour == "python":
            message = {"mode": mode, "spk_name": "unknown", "spk_score": 0.0, **message}
            if text and words:
                message["timestamp"] = [[_ms(w.start), _ms(w.end)] for w in words]
        await self._send(ws, message)

    async def _cpp_result(self, ws: ServerConnection, state: dict, audio: bytes) -> None:
        """`WebSocketServer::do_decoder`'s message."""
        message: dict = {"text": "", "mode": "offline", "is_final": False, "wav_name": state["wav_name"]}
        if audio:
            text, words = await self._recognise(audio)
            message["text"] = text
            if words:
                stamps = [[_ms(w.start), _ms(w.end)] for w in words]
                message["timestamp"] = json.dumps(stamps, separators=(",", ":"))
                message["stamp_sents"] = [{"text_seg": " ".join(w.word for w in words), "punc": "",
                                           "start": stamps[0][0], "end": stamps[-1][1], "ts_list": stamps}]
        await self._send(ws, message)

    async def _two_pass_result(self, ws: ServerConnection, state: dict, audio: bytes, *, is_final: bool) -> None:
        """`handle_result`'s message for a stretch; at the end, with no text, the bare final one."""
        text, words = await self._recognise(audio) if audio else ("", [])
        if not text:
            if is_final:
                await self._send(ws, {"text": "", "timestamp": 1_765_000_000_000, "wav_name": state["wav_name"], "is_final": True})
            return
        stamps = [[_ms(w.start), _ms(w.end)] for w in words]
        state["index"] = state.get("index", 0) + 1
        await self._send(ws, {"text": text, "mode": "2pass-offline", "start_time": stamps[0][0] if stamps else 0,
                              "end_time": stamps[-1][1] if stamps else 0, "slice_type": 2, "index": state["index"] - 1,
                              "timestamp": json.dumps(stamps, separators=(",", ":")),
                              "stamp_sents": [{"text_seg": " ".join(w.word for w in words), "punc": "", "start": stamps[0][0],
                                               "end": stamps[-1][1], "ts_list": stamps}] if stamps else "",
                              "wav_name": state["wav_name"], "is_final": is_final})

    async def _send(self, ws: ServerConnection, message: dict) -> None:
        if self.mode == "huge":
            message["text"] = "x" * 300_000
        self.sent.append(message)
        await ws.send(json.dumps(message, ensure_ascii=False))

    def serve(self, ssl_context=None):
        """Run on a free port in a thread of its own; a context manager yielding its ws:// (or,
        with `ssl_context`, wss://) URL."""
        return _Running(self, ssl_context)


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


class _Running:
    def __init__(self, server: FunASRWebSocketServer, ssl_context) -> None:
        self.server = server
        self.ssl_context = ssl_context
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()

        async def start():
            return await serve(self.server.handle, "127.0.0.1", 0, subprotocols=[Subprotocol("binary")],
                               ping_interval=None, ssl=self.ssl_context, process_request=self.server.process_request)

        self.running = asyncio.run_coroutine_threadsafe(start(), self.loop).result(15)
        port = self.running.sockets[0].getsockname()[1]
        return f"{'wss' if self.ssl_context else 'ws'}://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.release.set()

        async def stop():
            self.running.close()
            await self.running.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
