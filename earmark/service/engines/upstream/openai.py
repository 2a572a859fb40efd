"""The `openai` engine: any OpenAI-compatible `/v1/audio/transcriptions` server upstream
(OpenAI, speaches / faster-whisper-server, whisper.cpp's server, vLLM, another earmark).

Each miss is sent as OpenAI's client sends it: the WAV as `file`, the configured
`upstream_model` as `model`, `temperature=0` (a cache wants the one most likely transcript, not a
sample), `response_format=verbose_json` with segment timestamps (or `json`, text only, for a
server without verbose_json: setting `upstream_response_format`), and the request's `language`
and `prompt` when given. The model name, the operator's revision label, the language and the
prompt are all in the profile, so a transcript is only served for the options that made it.
Hotwords have no OpenAI field and are refused (422). The shared machinery (pooled connections,
retries, failure statuses, health) is service/engines/upstream/base.py.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from earmark.service.engines.base import _LANGUAGE_ALIASES, Capabilities, Segment, Transcript, Word
from earmark.errors import quoted
from earmark.service.engines.upstream.base import UpstreamConfig, UpstreamEngine, UpstreamError, with_path
from earmark.service.pipeline.profile import Profile

TRANSCRIPTIONS = "/audio/transcriptions"
# OpenAI's verbose_json names the language in full ("english"); the profile uses codes.
LANGUAGE_NAMES = {"english": "en", "chinese": "zh", "japanese": "ja", "korean": "ko", "cantonese": "yue",
                  "german": "de", "french": "fr", "spanish": "es", "italian": "it", "portuguese": "pt",
                  "russian": "ru", "dutch": "nl", "arabic": "ar", "hindi": "hi", "turkish": "tr", "polish": "pl"}


class OpenAIUpstreamEngine(UpstreamEngine):
    """An OpenAI-compatible transcription server as the engine."""

    name = "openai"
    default_model = "whisper-1"
    client_fields = ("language", "prompt")

    def __init__(self, config: UpstreamConfig) -> None:
        super().__init__(config)
        self.capabilities = Capabilities(
            languages=("auto",), default_language="auto",
            # The upstream formats numbers, casing and punctuation as it does; it cannot be told.
            itn=(True,), default_itn=True, hotwords=False, prompt=True,
            extra={"any_language": True, "upstream": self.endpoint},
        )

    def request_details(self) -> str:
        """The request version and the response format asked for (json has no segments)."""
        return f"{self.request_version}-{self.config.response_format}"

    def endpoint_url(self, url: str) -> str:
        """`http://host:8000`, `http://host:8000/v1` or the full transcriptions URL."""
        path = urlsplit(url).path.rstrip("/")
        if not path.endswith(TRANSCRIPTIONS):
            path = path + TRANSCRIPTIONS if path.endswith("/v1") else path + "/v1" + TRANSCRIPTIONS
        return with_path(url, path)

    def health_url(self) -> str:
        """`GET .../v1/models`: OpenAI's own cheap call (a server without it answers 404: up)."""
        path = urlsplit(self.endpoint).path
        return with_path(self.endpoint, path[: -len(TRANSCRIPTIONS)] + "/models")

    def request_fields(self, wav: bytes, profile: Profile) -> tuple[dict, dict]:
        """OpenAI's multipart form for this profile."""
        data = {"model": self.model_id, "response_format": self.config.response_format, "temperature": "0"}
        if self.config.response_format == "verbose_json":
            # Segments only: some servers refuse `word` (and OpenAI charges latency for it).
            data["timestamp_granularities[]"] = "segment"
        if profile.language != "auto":
            data["language"] = profile.language
        if profile.prompt:
            data["prompt"] = profile.prompt
        return {"file": ("audio.wav", wav, "audio/wav")}, data

    def parse(self, answer: bytes, profile: Profile) -> Transcript:
        """verbose_json (or plain json: text only) into a transcript with its segments."""
        body = json.loads(answer)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise UpstreamError("the upstream's answer has no 'text'")
        if body.get("error"):  # some servers answer 200 with an error beside an empty text
            raise UpstreamError(f"the upstream answered an error: {quoted(str(body['error']))}")
        text = body["text"].strip()
        words = [Word(word=str(w["word"]).strip(), start=float(w["start"]), end=float(w["end"]))
                 for w in body.get("words") or []]
        segments = []
        for raw in body.get("segments") or []:
            start, end = float(raw["start"]), float(raw["end"])
            inside = tuple(w for w in words if start <= w.start < end)
            segments.append(Segment(
                start=start, end=end, text=str(raw["text"]), words=inside,
                tokens=tuple(int(t) for t in raw.get("tokens") or ()), seek=int(raw.get("seek") or 0),
                avg_logprob=_number(raw.get("avg_logprob")), compression_ratio=_number(raw.get("compression_ratio")),
                no_speech_prob=_number(raw.get("no_speech_prob")),
            ))
        return Transcript(text=text, normalized_text=text, language=self._language(body, profile),
                          segments=tuple(s for s in segments if s.text.strip()))

    @staticmethod
    def _language(body: dict, profile: Profile) -> str:
        if profile.language != "auto":
            return profile.language
        named = str(body.get("language") or "").strip().lower()
        return LANGUAGE_NAMES.get(named, _LANGUAGE_ALIASES.get(named, named))


def _number(value) -> float | None:
    return None if value is None else float(value)
