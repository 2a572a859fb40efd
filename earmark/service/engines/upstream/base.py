"""Upstream engines: a miss is forwarded to a recognition server the operator already runs, and
its answer is cached like any engine's (service/engines/upstream/openai.py,
service/engines/upstream/funasr_http.py; over WebSocket, service/engines/upstream/funasr_ws.py,
which shares the configuration, metrics, failure statuses and health state below).

Where it runs. An upstream engine computes nothing: it sends a WAV and waits for a JSON answer.
So it is an `AsyncEngine`, awaited on the service's own event loop through one pooled
`httpx.AsyncClient` (service/engines/pool.py admits `upstream_max_connections` calls at once
and queues `engine_queue` more, as for a local engine). A worker process would add a pickle of
the audio and a second event loop for nothing; a worker thread per waiting request would add a
thread per socket. Waiting costs the loop nothing, so cache hits are never held up by misses
waiting on the upstream.

What is sent. The canonical 16 kHz mono PCM the cache keyed, as a 16-bit WAV: every server
decodes WAV, it is what every re-encoded copy of the recording shares, and the client's
container (which the upstream might not read) never matters.

Failures, none of them cached (the pipeline writes only a transcript the engine returned):

| upstream                                   | earmark                          | outcome label  |
|--------------------------------------------|----------------------------------|----------------|
| cannot connect (after `upstream_retries`)  | 502                              | `unreachable`  |
| 429 or 503                                 | 503, its `Retry-After` (or 5 s)  | `overloaded`   |
| 413 (its size limit)                       | 413, its reason, "send shorter"  | `refused` (2)  |
| 400, 415, 422 (this request's options or   | 422, its reason and the field it | `refused` (2)  |
| audio)                                     | names (`language`, `prompt`)     |                |
| any other non-2xx, a malformed answer, or  | 502, with the upstream's reason  | `error`        |
| a FunASR answer with a non-zero `code`     |                                  |                |
| an answer longer than the audio can hold   | 502, naming the limit's settings | `too_large`    |
| no answer within the engine's allowance    | 504                              | `timeout` (1)  |

(1) `cancelled` when the engine pool's own allowance (which also counts the wait for a slot) ran
out first, or the client went away: the request upstream is abandoned, its connection closed.
(2) The client's to change, so not a 5xx; the upstream stays up and `last_error` is not set. A
400/422 naming only a field earmark's configuration sets (`model`, `response_format`) is the
operator's: 502, `error`. Why each status: service/engines/upstream/refusal.py.

Every reason shown (to the client, in /health's `last_error`, in the log) is bounded and has the
configured key, the URL's password and anything token-like replaced by `***`.

Answers are bounded. A 2xx answer is streamed and read no further than `ANSWER_BYTES_PER_CHAR`
bytes for each character the transcript may have (service/engines/transcript_limit.py: 100 a
second of audio, at least 2000), plus `ANSWER_ENVELOPE_BYTES`: about 1.6 KB a second of audio,
5 to 100 times what real answers take; a declared Content-Length over it is refused unread. An
error answer is read to `ERROR_BODY_BYTES` at most (its reason is quoted to 200 characters).
The JSON is parsed on a worker thread, not on the event loop that answers hits and /health, and
the parsed transcript is held to the character limit too. Once, a 400 MB `{"text": "aaaa..."}`
read whole took 7.2 GB, silenced /health for 10 s and filled the store.

Credentials. `upstream_api_key` is sent as `Authorization: Bearer <key>` (OpenAI's scheme, and
what the OpenAI-compatible servers check). A user:password in `upstream_url` is sent as HTTP
Basic when no key is configured (what curl and browsers do with it: a server behind a proxy
with basic auth). Both at once are refused at start: they would be the one Authorization
header, and whichever earmark chose, the other credential the operator wrote would be dropped
without a word, to show up only as 401s on misses. The user:password is taken out of the URL
that requests are sent to, so httpx's request log never prints it.

Only a failure to connect is retried: the request never left, so a retry cannot run the
upstream twice. A request that was sent (and may be running upstream) is never repeated.

Health. The upstream is checked every `upstream_health_interval_s` (a GET that any running
server answers, even with a 404 or 405; only its status is read, never its body) and by every
request's outcome: any HTTP answer below 500 means up, no answer or a 5xx means down. The
state is in /health (`upstream`) and /metrics (`earmark_upstream_up`); the engine still tries a
down upstream, since it may be back.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import re
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import numpy as np

from earmark.errors import quoted
from earmark.index.connection import redact_url
from earmark.service.config import AMBIGUOUS_UPSTREAM_CREDENTIALS, has_credentials
from earmark.service.engines.base import (
    _LANGUAGE_ALIASES,
    AsyncEngine,
    RecognitionOptions,
    Transcript,
)
from earmark.service.engines.errors import EngineBusy, EngineFailure, EngineOptionError, EngineTimeout, EngineUnavailable
from earmark.service.engines.transcript_limit import TranscriptLimit, TranscriptTooLong
from earmark.service.engines.upstream.refusal import operator_hint, read_error, refusal, without_secrets
from earmark.service.pipeline.profile import Profile

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_S = 5
MAX_RETRY_AFTER_S = 300
FIRST_RETRY_DELAY_S = 0.2
# A language code as OpenAI's `language` takes it (ISO 639-1, or a 3-letter 639-3 code).
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")
# An answer may have this many bytes for each character its transcript may have: verbose_json
# repeats the text in its segments and adds times, statistics and tokens (about 3 bytes a
# character of English), words when a server sends them unasked (about 12), and `\uXXXX`
# escapes triple non-ASCII text; real answers stay 5 to 100 times under it, since speech is
# far below the character limit.
ANSWER_BYTES_PER_CHAR = 16
ANSWER_ENVELOPE_BYTES = 64 * 1024  # the JSON around the transcript, language, duration, a short clip's segments
# An error answer is read this far: its reason is quoted to 200 characters.
ERROR_BODY_BYTES = 64 * 1024


class UpstreamError(EngineFailure):
    """The upstream failed on this request (HTTP 502): an error status, a malformed answer, a
    FunASR `code` other than 0, or no connection."""


@dataclass(frozen=True)
class UpstreamConfig:
    """Where the upstream is and how to talk to it (from `service.config.Settings`)."""

    url: str
    api_key: str = ""
    model: str = ""
    revision: str = ""
    response_format: str = "verbose_json"  # openai only
    max_connections: int = 8
    connect_timeout_s: float = 5.0
    retries: int = 2
    health_interval_s: float = 10.0
    transcript_limit: TranscriptLimit = TranscriptLimit()
    tls_verify: bool = True  # funasr-ws over wss://: check the server's certificate
    ca_file: str = ""  # ... against these certificates (PEM) rather than the system's


class UpstreamEngine(AsyncEngine):
    """The shared part of the upstream engines: the pooled client, retries, the mapping of
    failures to statuses, health checks and metrics. A protocol supplies `endpoint_url`,
    `health_url`, `request_fields` and `parse`."""

    name: str
    default_model: str
    # What earmark asks of the upstream besides the profile's options (openai: temperature,
    # response format); a change to it changes transcripts, so it is in the revision.
    request_version: str = "1"
    # The request's options the protocol sends upstream: the fields a refusal may name.
    client_fields: tuple[str, ...] = ()

    def __init__(self, config: UpstreamConfig) -> None:
        if config.api_key and has_credentials(config.url):
            raise EngineUnavailable(AMBIGUOUS_UPSTREAM_CREDENTIALS)
        self.config = config
        # Requests go to the URL without its user:password (sent as Basic auth instead), so that
        # nothing that prints the request's URL (httpx's log) prints the password.
        self.endpoint = self.endpoint_url(redact_url(config.url, mask=""))
        self.model_id = config.model or self.default_model
        # Only the operator knows when the upstream's model changes; `revision` is their label.
        # Without one, the server's address stands in: two deployments sharing a store but
        # pointed at different servers must never serve each other's transcripts.
        self.revision = f"{self.name}/{self.request_details()}/{config.revision or 'at ' + _server_of(self.endpoint)}"
        # The engine pool admits this many calls at once (app.py reads it).
        self.recommended_workers = config.max_connections
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task | None = None
        self._metrics = None
        self._state = "unknown"
        self._checked_at: float | None = None
        self._last_error = ""

    # --- what a protocol supplies -------------------------------------------------------

    def request_details(self) -> str:
        """What the requests ask besides the profile's options, for the revision."""
        return self.request_version

    def endpoint_url(self, url: str) -> str:
        """The URL transcription requests are posted to, from the configured `url`."""
        raise NotImplementedError

    def health_url(self) -> str:
        """A URL any running upstream answers to a GET (the answer's status may be 4xx)."""
        raise NotImplementedError

    def request_fields(self, wav: bytes, profile: Profile) -> tuple[dict, dict]:
        """The multipart `files` and `data` of a transcription request."""
        raise NotImplementedError

    def parse(self, answer: bytes, profile: Profile) -> Transcript:
        """The transcript in a 2xx answer's body (JSON; parsed on a worker thread); raise
        `UpstreamError` when it holds none."""
        raise NotImplementedError

    # --- options ------------------------------------------------------------------------

    def resolve(self, options: RecognitionOptions, namespace: str = "") -> Profile:
        """The base checks, but any plain language code is accepted for the upstream to judge
        (it knows its languages, earmark does not), when the protocol can send a language."""
        language = "auto"
        if options.language is not None and options.language.strip().lower() not in ("", "auto"):
            wanted = options.language.strip().lower()
            wanted = _LANGUAGE_ALIASES.get(wanted, wanted)
            if not self.capabilities.extra.get("any_language") or not LANGUAGE_CODE.fullmatch(wanted):
                accepted = "a 2- or 3-letter language code, or 'auto'" if self.capabilities.extra.get("any_language") \
                    else "only 'auto' (the upstream server's model decides)"
                raise EngineOptionError(f"language {quoted(options.language)} is not supported by engine "
                                        f"{self.name!r}; it takes {accepted}")
            language = wanted
        profile = super().resolve(RecognitionOptions(use_itn=options.use_itn, hotwords=options.hotwords,
                                                     prompt=options.prompt), namespace)
        return replace(profile, language=language)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self, metrics) -> None:
        """Open the connection pool and start the periodic health check."""
        self._metrics = metrics.enable_upstream()
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        # One connection more than the calls admitted at once: the health check's.
        pooled = self.config.max_connections + 1
        self._client = httpx.AsyncClient(
            headers=headers, auth=_basic_auth(self.config.url),
            limits=httpx.Limits(max_connections=pooled, max_keepalive_connections=pooled),
            timeout=httpx.Timeout(self.config.connect_timeout_s),
        )
        self._health_task = asyncio.create_task(self._watch_health())

    async def aclose(self) -> None:
        """Stop the health check and close the pool."""
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def status(self) -> dict:
        """/health's `upstream` object."""
        return {"url": redact_url(self.config.url, mask=""), "endpoint": self.endpoint, "model": self.model_id,
                "state": self._state, "checked_at": self._checked_at, "last_error": self._last_error}

    # --- a transcription ----------------------------------------------------------------

    async def transcribe_async(self, pcm_16k: np.ndarray, profile: Profile, timeout_s: float) -> Transcript:
        """Send the audio as a WAV; the transcript, or the failure mapped to its status."""
        # Off the loop: an hour of audio is a 115 MB WAV, and hits must not wait for it.
        files, data = self.request_fields(await asyncio.to_thread(wav_bytes, pcm_16k), profile)
        audio_s = len(pcm_16k) / 16000
        answer = await self._post(files, data, timeout_s, audio_s=audio_s)
        return await self._read_answer(self._transcript, answer, profile, audio_s)

    async def _read_answer(self, read: Callable[..., Transcript], *args: Any) -> Transcript:
        """`read(*args)`, the answer made a transcript, off the loop (an answer may be megabytes):
        a transcript over the limit, an upstream's error or a malformed answer counted and
        raised as the upstream's failure; a transcript counted ok."""
        try:
            transcript = await asyncio.to_thread(read, *args)
        except TranscriptTooLong as exc:
            self._refuse_too_large(str(exc))
            raise
        except UpstreamError as exc:
            self._count("error", str(exc))
            raise
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            self._count("error", f"malformed answer: {exc}")
            raise UpstreamError(f"the upstream's answer is not what {self.name} answers: {type(exc).__name__}: {exc}") from exc
        self._count("ok")
        return transcript

    def _transcript(self, answer: bytes, profile: Profile, audio_s: float) -> Transcript:
        """The checked transcript in an answer's body (run on a worker thread)."""
        transcript = self.parse(answer, profile)
        _check_finite(transcript)
        self.config.transcript_limit.check(transcript, audio_s)
        return transcript

    def answer_limit(self, audio_s: float) -> int:
        """The most bytes of a 2xx answer read for `audio_s` seconds of audio."""
        return ANSWER_BYTES_PER_CHAR * self.config.transcript_limit.chars_for(audio_s) + ANSWER_ENVELOPE_BYTES

    def _refuse_too_large(self, reason: str) -> None:
        """Count and log an answer refused as longer than its audio can hold: the upstream
        answered (it is up), but wrongly."""
        self._count("too_large", reason)
        log.warning("refused the upstream's answer: %s", self._safe(reason))

    async def _post(self, files: dict, data: dict, timeout_s: float, *, audio_s: float) -> bytes:
        """POST, retrying only connect failures, and return the 2xx answer's body; map every
        failure to its exception (a refusal of this request to `UpstreamRefused`, the client's
        4xx: service/engines/upstream/refusal.py; an answer over `answer_limit` to
        `TranscriptTooLong`, unread beyond it)."""
        assert self._client is not None and self._metrics is not None, "start() was not called"
        timeout = httpx.Timeout(timeout_s, connect=self.config.connect_timeout_s)
        limit = self.answer_limit(audio_s)
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                request = self._client.build_request("POST", self.endpoint, files=files, data=data, timeout=timeout)
                response = await self._client.send(request, stream=True)
                try:
                    if response.is_success and _declares_more(response, limit):
                        body, whole = b"", False
                    else:
                        body, whole = await read_at_most(response, limit if response.is_success else ERROR_BODY_BYTES)
                finally:
                    await response.aclose()  # a connection left unread is closed, not pooled
            except asyncio.CancelledError:
                self._observe(started)
                self._metrics.requests.labels(outcome="cancelled").inc()
                raise
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt < self.config.retries:
                    self._metrics.retries.inc()
                    await asyncio.sleep(FIRST_RETRY_DELAY_S * 2 ** attempt)
                    attempt += 1
                    continue
                self._observe(started)
                self._count("unreachable", f"cannot connect: {_reason(exc)}", up=False)
                raise UpstreamError(f"cannot connect to the upstream {self.endpoint} "
                                    f"({attempt + 1} attempts): {self._safe(_reason(exc))}") from exc
            except httpx.TimeoutException as exc:
                self._observe(started)
                self._count("timeout", "no answer in time")
                raise EngineTimeout(f"the upstream did not answer within {timeout_s:.0f} s") from exc
            except httpx.HTTPError as exc:  # the connection broke mid-request, a protocol error
                self._observe(started)
                self._count("error", _reason(exc), up=False)
                raise UpstreamError(f"the upstream request failed: {self._safe(_reason(exc))}") from exc
            self._observe(started)
            break
        if response.status_code in (429, 503):
            retry_after = _retry_after_s(response.headers.get("retry-after"))
            self._count("overloaded", f"HTTP {response.status_code}", up=response.status_code == 429)
            raise EngineBusy(retry_after_s=retry_after,
                             reason=f"the upstream is overloaded (HTTP {response.status_code})")
        if not response.is_success:
            answer = read_error(_with_body(response, body), self._secrets())
            refused = refusal(answer, self.client_fields, audio_s)
            if refused is not None:  # this request's fault, not the upstream's: it is up, and healthy
                self._count("refused")
                log.info("the upstream refused a request: %s", answer.described())
                raise refused
            self._count("error", answer.described(), up=response.status_code < 500)
            raise UpstreamError(f"the upstream answered {answer.described()}{operator_hint(answer, self.client_fields)}")
        if not whole:
            limits = self.config.transcript_limit
            reason = (f"the upstream's answer is over earmark's limit of {limit} bytes for {audio_s:.1f} s of audio "
                      f"({ANSWER_BYTES_PER_CHAR} bytes for each character its transcript may have: {limits.explained()}); "
                      "it was not read further, nor cached")
            self._refuse_too_large(reason)
            raise TranscriptTooLong(reason)
        return body

    def _observe(self, started: float) -> None:
        assert self._metrics is not None
        self._metrics.seconds.observe(time.perf_counter() - started)

    def _count(self, outcome: str, error: str = "", *, up: bool = True) -> None:
        """Count a request's outcome; it also says whether the upstream answers."""
        assert self._metrics is not None
        self._metrics.requests.labels(outcome=outcome).inc()
        if error:
            self._last_error = self._safe(error)
        self._set_state(up)

    def _secrets(self) -> tuple[str, ...]:
        """What must never be shown: the key, and the URL's password as written and decoded
        (and Basic credentials, token-like: service/engines/upstream/refusal.py)."""
        password = urlsplit(self.config.url).password or ""
        return self.config.api_key, password, unquote(password)

    def _safe(self, text: str) -> str:
        """`text` bounded to 300 characters and without credentials: for /health, logs and clients."""
        return without_secrets(text, self._secrets())[:300]

    def _set_state(self, up: bool) -> None:
        assert self._metrics is not None
        if self._state != ("up" if up else "down"):
            log.log(logging.INFO if up else logging.WARNING, "upstream %s is %s%s", self.endpoint,
                    "up" if up else "down", "" if up else f": {self._last_error}")
        self._state = "up" if up else "down"
        self._checked_at = time.time()
        self._metrics.up.set(1 if up else 0)

    # --- health -------------------------------------------------------------------------

    async def check_health(self) -> bool:
        """One health check now: a GET on `health_url`; True when the upstream answers below 500."""
        assert self._client is not None and self._metrics is not None
        try:
            # Only the status counts: the body is never read (the connection is closed instead),
            # so a server answering with gigabytes costs nothing.
            async with self._client.stream("GET", self.health_url()) as response:
                up = response.status_code < 500
            if not up:
                self._last_error = f"health check: HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            up = False
            self._last_error = self._safe(f"health check: {_reason(exc)}")
        self._metrics.health_checks.labels(result="up" if up else "down").inc()
        self._set_state(up)
        return up

    async def _watch_health(self) -> None:
        while True:
            try:
                await self.check_health()
            except Exception:  # noqa: BLE001 - a check must never stop the checking
                log.exception("upstream health check failed")
            await asyncio.sleep(self.config.health_interval_s)


def wav_bytes(pcm_16k: np.ndarray) -> bytes:
    """16 kHz mono float PCM as a 16-bit WAV file."""
    samples = np.round(np.clip(np.asarray(pcm_16k, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


async def read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """A streamed response's body, decoded (gzip counts at its decoded size), read no further
    than `limit` bytes; and whether that is all of it."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk[: limit - len(body) + 1]
        if len(body) > limit:
            return bytes(body[:limit]), False
    return bytes(body), True


def _declares_more(response: httpx.Response, limit: int) -> bool:
    """Whether a response's Content-Length says its body is over `limit` bytes (compressed
    bodies are judged as they are read, decoded)."""
    declared = response.headers.get("content-length", "")
    return declared.isdigit() and int(declared) > limit and "content-encoding" not in response.headers


def _with_body(response: httpx.Response, body: bytes) -> httpx.Response:
    """A response of `response`'s status and content type holding `body` (as read, decoded)."""
    content_type = response.headers.get("content-type")
    return httpx.Response(response.status_code, headers={"content-type": content_type} if content_type else {},
                          content=body)


def with_path(url: str, path: str) -> str:
    """`url` with its path replaced by `path` (query and fragment dropped)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _retry_after_s(value: str | None) -> int:
    """The upstream's Retry-After (seconds or an HTTP date), within 1 to 300 s; 5 s if none."""
    if not value:
        return DEFAULT_RETRY_AFTER_S
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_S
    return int(min(max(seconds, 1), MAX_RETRY_AFTER_S))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _basic_auth(url: str) -> httpx.BasicAuth | None:
    """HTTP Basic auth from a URL's user:password (percent-decoded), None without one."""
    if not has_credentials(url):
        return None
    parts = urlsplit(url)
    return httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))


def _server_of(url: str) -> str:
    """host:port/path of a URL, without credentials or query: what names the server."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme in ('https', 'wss') else 80)}{parts.path}"


def _check_finite(transcript: Transcript) -> None:
    """Refuse an answer with a time or statistic that is not a finite number (JSON's NaN):
    cached, it would make every later answer from that entry fail to serialise."""
    for segment in transcript.segments:
        numbers = [segment.start, segment.end, segment.avg_logprob, segment.compression_ratio,
                   segment.no_speech_prob, *(value for word in segment.words for value in (word.start, word.end, word.probability))]
        if not all(value is None or math.isfinite(value) for value in numbers):
            raise UpstreamError("the upstream's answer holds a time or score that is not a finite number")
