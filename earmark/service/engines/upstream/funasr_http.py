"""The `funasr-http` engine: the FunASR runtime's HTTP server upstream
(FunASR's runtime/python/http/server.py).

Its protocol, as that server implements it: `POST /recognition` with one multipart file field,
`audio` (the server keeps the file name's suffix and decodes with ffmpeg). It answers HTTP 200
with `{"text": ..., "sentences": [{"text", "start", "end"}], "code": 0}`, sentence times in
milliseconds (its model's `sentence_info`); `{"text": "", "sentences": [], "code": 0}` when it
heard nothing; and **also HTTP 200** with `{"msg": ..., "code": 1}` (unreadable audio) or
`code: -1` (anything else) on failure. A non-zero or missing `code` is therefore a failure
(502), never a transcript to cache.

The server takes no options per request: its models, hotwords (its --hotword_path file) and
language are its own. So this engine refuses a language other than `auto`, hotwords and a
prompt (422), and the profile names the upstream by `upstream_model` (a label, default
`funasr-runtime`) and `upstream_revision`: set them to what the server runs, and change one when
that changes. The shared machinery is service/engines/upstream/base.py.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from earmark.service.engines.base import Capabilities, Segment, Transcript
from earmark.service.engines.upstream.base import UpstreamConfig, UpstreamEngine, UpstreamError, with_path
from earmark.errors import quoted
from earmark.service.pipeline.profile import Profile

RECOGNITION = "/recognition"


class FunASRHttpEngine(UpstreamEngine):
    """A FunASR runtime HTTP server as the engine."""

    name = "funasr-http"
    default_model = "funasr-runtime"

    def __init__(self, config: UpstreamConfig) -> None:
        super().__init__(config)
        self.capabilities = Capabilities(
            languages=("auto",), default_language="auto", itn=(False,), default_itn=False,
            hotwords=False, prompt=False, extra={"any_language": False, "upstream": self.endpoint},
        )

    def endpoint_url(self, url: str) -> str:
        """`http://host:8000` or the full `.../recognition` URL."""
        path = urlsplit(url).path.rstrip("/")
        return with_path(url, path if path.endswith(RECOGNITION) else path + RECOGNITION)

    def health_url(self) -> str:
        """A GET on the recognition URL: the server answers 405 (only POST is routed), so it is up."""
        return self.endpoint

    def request_fields(self, wav: bytes, profile: Profile) -> tuple[dict, dict]:
        """The one field the server reads."""
        return {"audio": ("audio.wav", wav, "application/octet-stream")}, {}

    def parse(self, answer: bytes, profile: Profile) -> Transcript:
        """`code` 0: the text and its sentences (ms -> s); anything else is a failure."""
        body = json.loads(answer)
        if not isinstance(body, dict):
            raise UpstreamError("the FunASR server's answer is not a JSON object")
        code = body.get("code")
        if code != 0:
            reason = body.get("msg") or "no message"
            raise UpstreamError(f"the FunASR server reported a failure (code {code!r}): {quoted(reason, 200)}")
        text = body.get("text")
        if not isinstance(text, str):
            raise UpstreamError("the FunASR server's answer has code 0 but no 'text'")
        segments = tuple(
            Segment(start=float(s["start"]) / 1000.0, end=float(s["end"]) / 1000.0, text=str(s["text"]))
            for s in body.get("sentences") or [] if str(s.get("text", "")).strip()
        )
        # The server does not say which language it heard.
        return Transcript(text=text.strip(), normalized_text=text.strip(), language="", segments=segments)
