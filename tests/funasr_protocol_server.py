"""A server speaking the FunASR runtime's HTTP protocol exactly, for the `funasr-http` tests.

The protocol is that of FunASR's runtime/python/http/server.py (modelscope/FunASR): `POST
/recognition` with the audio in the multipart field `audio`; the audio is decoded to 16 kHz mono
16-bit PCM; the answer is HTTP 200 with `{"text": "", "sentences": [], "code": 0}` when nothing
was heard, `{"text", "sentences": [{"text", "start", "end"}], "code": 0}` (times in ms) when
something was, and `{"msg": "读取音频文件发生错误", "code": 1}` when the audio cannot be read.
Only POST is routed, so a GET on /recognition answers 405, as FastAPI does.

Backing: the real server runs `funasr.AutoModel` (paraformer-zh with VAD and punctuation). This
environment has neither torch nor funasr installed, so this server is backed by a real engine of
this project instead, PocketSphinx (`service.engines.pocketsphinx_engine`): it really
transcribes, and its segment times become the sentences. The decoding is earmark's own
(PyAV), where the real server shells out to ffmpeg.

What a test may switch (`FunASRProtocolServer.mode`), to produce the upstream failures that a real
server produces under conditions a test cannot arrange on demand:
- `ok`: the protocol above;
- `code`: HTTP 200 with `{"msg": "读取音频文件发生错误", "code": 1}` (the server's own answer
  to audio ffmpeg cannot read);
- `busy`: 503 with `Retry-After: 7` (an nginx in front of a saturated pool, as the runtime's
  README sets up);
- `slow`: the answer waits until `release` is set (or 60 s);
- `crash`: HTTP 500 with uvicorn's plain-text "Internal Server Error", what the real server sends
  when `model.generate` raises (its result lacks `sentence_info` without a VAD and punctuation
  model, for one);
- `too_large`: HTTP 413 with nginx's own HTML page, what the nginx in front of it sends for a
  body over its `client_max_body_size` (1 MB unless set);
- `unauthorized`: HTTP 401 with nginx's HTML page, an nginx in front asking for credentials.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route

from earmark.fingerprint.decode import decode_audio
from earmark.service.engines.base import RecognitionOptions
from tests.conftest import _free_port

NGINX_PAGES = {"too_large": (413, "Request Entity Too Large"), "unauthorized": (401, "Authorization Required")}
NGINX_PAGE = ("<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
              "<hr><center>nginx/1.18.0 (Ubuntu)</center>\r\n</body>\r\n</html>\r\n")


class FunASRProtocolServer:
    """The app, its switches and its request counter."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.profile = engine.resolve(RecognitionOptions())
        self.mode = "ok"
        self.requests = 0
        self.in_progress = 0
        self.max_in_progress = 0  # the most requests it held at once
        self.release = threading.Event()
        self.app = Starlette(routes=[Route("/recognition", self.recognition, methods=["POST"])])

    async def recognition(self, request: Request) -> JSONResponse:
        """The runtime's `api_recognition` (counted: requests, and how many at once)."""
        self.requests += 1
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            return await self._recognition(request)
        finally:
            self.in_progress -= 1

    async def _recognition(self, request: Request):
        form = await request.form()
        audio = form.get("audio")
        if audio is None or isinstance(audio, str):
            # FastAPI's answer to a missing required File(...) field.
            return JSONResponse({"detail": [{"loc": ["body", "audio"], "msg": "field required"}]}, status_code=422)
        content = await audio.read()
        if self.mode == "busy":
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "7"})
        if self.mode == "crash":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if self.mode in NGINX_PAGES:
            status, title = NGINX_PAGES[self.mode]
            return HTMLResponse(NGINX_PAGE.format(title=f"{status} {title}"), status_code=status)
        if self.mode == "slow":
            await asyncio.to_thread(self.release.wait, 60)
        try:
            if self.mode == "code":
                raise ValueError("the test asked for the decoding-failure answer")
            pcm = decode_audio(io.BytesIO(content), 3600.0).pcm_16k
        except Exception:  # noqa: BLE001 - the real server catches everything ffmpeg raises
            return JSONResponse({"msg": "读取音频文件发生错误", "code": 1})
        transcript = await asyncio.to_thread(self.engine.transcribe, pcm, self.profile)
        if not transcript.text:
            return JSONResponse({"text": "", "sentences": [], "code": 0})
        sentences = [{"text": s.text, "start": int(round(s.start * 1000)), "end": int(round(s.end * 1000))}
                     for s in transcript.segments]
        return JSONResponse({"text": transcript.text, "sentences": sentences, "code": 0})

    def serve(self):
        """Run under uvicorn on a free port in a thread; a context manager yielding its URL."""
        return _Running(self)


class _Running:
    def __init__(self, server: FunASRProtocolServer) -> None:
        self.port = _free_port()
        config = uvicorn.Config(server.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.uvicorn.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the FunASR-protocol server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(10)
