"""Whose fault an upstream's error answer is: the request's (a 4xx for the client) or the
upstream's and its operator's (a 502), and the answer's reason made safe to show.

An upstream answers 400, 413, 415 or 422 when it will not take *this request*: a language or
prompt it does not know, audio over its own size limit (lower than earmark's), audio it will not
read. That is the client's to change, so it gets a 4xx saying so, not a 5xx it cannot act on:

| upstream      | client | why                                                                      |
|---------------|--------|--------------------------------------------------------------------------|
| 413           | 413    | as earmark's own "too large": send shorter audio                         |
| 400, 422, 415 | 422    | the request was well formed; its options or audio were refused. Not 415: |
|               |        | earmark read the audio (earmark's 415 says "not audio"), the upstream    |
|               |        | refused the WAV earmark made of it. Not 400: the client's request to     |
|               |        | earmark was not malformed.                                               |

Except when the answer names only fields earmark's configuration sets (`model`,
`response_format`, `timestamp_granularities`, `temperature`): a server without verbose_json
refuses every request, whatever the client sends, so that stays a 502 naming the setting for the
operator. 401, 403, 404, 405 and the rest stay 502 too: a wrong key or URL is the operator's.

Fields are named by the answer's structure where it has one (OpenAI's `error.param`, FastAPI's
`detail[].loc`), else found as words in its message (`language`, `prompt`, and the operator's
fields with an underscore; not `model`, a word many messages use loosely).

Reasons are quoted to the client, logged and shown in /health: each is cut to 200 characters and
stripped of credentials first (the configured key, the URL's password, anything that reads as a
bearer token, HTTP Basic credentials or an `sk-` key), since an upstream may echo what it was sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from earmark.errors import Kind, quoted
from earmark.service.engines.errors import EngineOptionError

# Upstream status -> the kind of the client's refusal (422 and 413 in the table above, through
# service/api/errors.py), for a refusal of the request itself.
REFUSAL_KIND = {400: Kind.NOT_SUPPORTED, 413: Kind.TOO_LARGE, 415: Kind.NOT_SUPPORTED, 422: Kind.NOT_SUPPORTED}
# Fields earmark's configuration sets, and the setting that sets each.
OPERATOR_FIELDS = {"model": "upstream_model", "response_format": "upstream_response_format",
                   "timestamp_granularities": "upstream_response_format", "temperature": "none: earmark sends 0"}
# Named in a message's words: the client's fields, and the operator's unmistakable ones.
NAMED_IN_TEXT = re.compile(r"\b(language|prompt|response_format|timestamp_granularities|temperature)\b", re.I)
REASON_LIMIT = 200
WAV_BYTES_PER_S = 32000  # 16 kHz, 16-bit, mono
_HTML_TITLE = re.compile(r"<title>(.*?)</title>", re.I | re.S)
_HTML_TAG = re.compile(r"<[^>]*>")
_TOKEN_LIKE = re.compile(r"(?i)((?:bearer|basic)\s+)\S+|\bsk-[\w*.-]{4,}")


class UpstreamRefused(EngineOptionError):
    """The upstream refused this request for something in it: `NOT_SUPPORTED` (a 422), or
    `TOO_LARGE` (a 413) for its size limit."""

    def __init__(self, msg: str, kind: Kind) -> None:
        super().__init__(msg)
        self.kind = kind


@dataclass(frozen=True)
class ErrorAnswer:
    """An upstream's error answer: its status, its reason (quoted, bounded, credential-free) and
    the request fields it names."""

    status: int
    reason: str
    fields: tuple[str, ...]

    def described(self) -> str:
        """`HTTP 400: 'reason'`."""
        return f"HTTP {self.status}: {self.reason}"


def read_error(response: httpx.Response, secrets: tuple[str, ...]) -> ErrorAnswer:
    """The reason in an upstream's error answer (OpenAI's `error.message`, earmark's `msg`,
    FastAPI's `detail`), else the start of its body; and the fields it names."""
    structured: list[str] = []
    try:
        body = response.json()
    except ValueError:
        message = _plain(response.text)
    else:
        message = str(body)
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict) and isinstance(error.get("param"), str):
                structured.append(error["param"])
            detail = body.get("detail")
            if isinstance(detail, list):  # FastAPI's validation errors: [{"loc": [..., field], "msg"}]
                structured += [str(item["loc"][-1]) for item in detail
                               if isinstance(item, dict) and isinstance(item.get("loc"), list) and item["loc"]]
                # "body.prompt: too long" rather than the list's repr
                detail = "; ".join(f"{'.'.join(map(str, item.get('loc') or []))}: {item.get('msg')}"
                                   if isinstance(item, dict) else str(item) for item in detail)
            for candidate in (error.get("message") if isinstance(error, dict) else error, body.get("msg"),
                              detail, body.get("message")):
                if candidate:
                    message = candidate if isinstance(candidate, str) else str(candidate)
                    break
    message = without_secrets(message, secrets)
    named = [field.lower() for field in structured] + [word.lower() for word in NAMED_IN_TEXT.findall(message)]
    fields = tuple(dict.fromkeys(field.removesuffix("[]") for field in named))
    return ErrorAnswer(response.status_code, quoted(message, REASON_LIMIT), fields)


def refusal(answer: ErrorAnswer, client_fields: tuple[str, ...], audio_s: float) -> UpstreamRefused | None:
    """The client's 4xx when the upstream refused something in this request; None when the
    failure is the upstream's or its operator's (a 502)."""
    kind = REFUSAL_KIND.get(answer.status)
    if kind is None or operator_fields(answer, client_fields):
        return None
    refused = f"the upstream ASR server refused this request ({answer.described()})"
    sent = f"a {audio_s * WAV_BYTES_PER_S / 1e6:.1f} MB 16 kHz mono WAV of {audio_s:.0f} s"
    named = [field for field in answer.fields if field in client_fields]
    if answer.status == 413:
        advice = (f"the audio, sent upstream as {sent}, is over the upstream's size limit (lower than "
                  "earmark's); send shorter audio")
    elif named:
        advice = f"change or leave out {', '.join(repr(field) for field in named)}: the upstream decides which values it takes"
    elif answer.status == 415:
        advice = (f"it does not take this audio as earmark sends it ({sent}); check its reason and send other "
                  "audio (if every request is refused so, the upstream does not read WAV: tell the operator)")
    else:
        options = f"this request's options ({', '.join(client_fields)}) or its audio" if client_fields else "this audio"
        advice = f"it did not take {options}; change what its reason names"
    return UpstreamRefused(f"{refused}: {advice}", kind)


def operator_fields(answer: ErrorAnswer, client_fields: tuple[str, ...]) -> tuple[str, ...]:
    """The fields of earmark's configuration an answer names, when it names none of the client's."""
    if any(field in client_fields for field in answer.fields):
        return ()
    return tuple(field for field in answer.fields if field in OPERATOR_FIELDS)


def operator_hint(answer: ErrorAnswer, client_fields: tuple[str, ...]) -> str:
    """For a 502: the settings behind the configured fields an answer names ("" if none)."""
    fields = operator_fields(answer, client_fields)
    if not fields:
        return ""
    named = ", ".join(f"{field!r} ({OPERATOR_FIELDS[field]})" for field in fields)
    return f"; it refused what earmark's configuration sends, not this request: {named}"


def _plain(text: str) -> str:
    """A non-JSON body as one line: an HTML error page's title (a proxy's, say), else its text."""
    title = _HTML_TITLE.search(text)
    return " ".join((title.group(1) if title else _HTML_TAG.sub(" ", text)).split())


def without_secrets(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every configured secret and anything that reads as a token replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _TOKEN_LIKE.sub(lambda match: (match.group(1) or "sk-") + "***", text)
