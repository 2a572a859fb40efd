"""Response shapes of OpenAI's `audio/transcriptions` endpoint, built from an `Outcome`.

Lets the official `openai` client (and anything written against it) use earmark unchanged;
cache information travels in `X-Cache-*` headers because the body's shape is not ours.
"""

from __future__ import annotations

from starlette.responses import JSONResponse, PlainTextResponse, Response

from service.errors import ApiError, quoted

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


def check_response_format(value) -> str:
    """The requested format, checked before any work is done (a refused request caches nothing)."""
    response_format = "json" if value is None or value == "" else value
    if not isinstance(response_format, str) or response_format not in RESPONSE_FORMATS:
        raise ApiError(422, f"response_format {quoted(response_format)} is not supported; use one of: {', '.join(RESPONSE_FORMATS)}")
    return response_format


def transcription_response(outcome, response_format: str) -> Response:
    """Render the outcome in a `response_format` that `check_response_format` accepted."""
    result = outcome.result or {}
    text = result.get("text", "")
    duration = float(result.get("duration_s") or 0.0)
    if response_format == "json":
        return JSONResponse({"text": text})
    if response_format == "text":
        return PlainTextResponse(text)
    if response_format == "verbose_json":
        segments = [_segment(text, duration)] if text else []
        return JSONResponse(
            {"task": "transcribe", "language": result.get("language", ""), "duration": duration, "text": text, "segments": segments}
        )
    if response_format == "srt":
        body = f"1\n{_timestamp(0.0, ',')} --> {_timestamp(duration, ',')}\n{text}\n" if text else ""
        return PlainTextResponse(body)
    body = "WEBVTT\n\n" + (f"{_timestamp(0.0, '.')} --> {_timestamp(duration, '.')}\n{text}\n" if text else "")
    return PlainTextResponse(body, media_type="text/vtt")


def _segment(text: str, duration: float) -> dict:
    return {"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text, "tokens": [], "temperature": 0.0,
            "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}


def _timestamp(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"
