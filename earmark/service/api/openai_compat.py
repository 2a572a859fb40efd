"""Response shapes of OpenAI's `audio/transcriptions` endpoint, built from an `Outcome`.

Lets the official `openai` client (and anything written against it) use earmark unchanged;
cache information travels in `X-Cache-*` headers because the body's shape is not ours.
"""

from __future__ import annotations

import json
import time

from starlette.responses import PlainTextResponse, Response, StreamingResponse

from earmark.service.api.responses import JSONResponse
from earmark.errors import quoted
from earmark.service.api.errors import ApiError

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


def check_response_format(value) -> str:
    """The requested format, checked before any work is done (a refused request caches nothing)."""
    response_format = "json" if value is None or value == "" else value
    if not isinstance(response_format, str) or response_format not in RESPONSE_FORMATS:
        raise ApiError(422, f"response_format {quoted(response_format)} is not supported; use one of: {', '.join(RESPONSE_FORMATS)}")
    return response_format


TIMESTAMP_GRANULARITIES = ("segment", "word")


def check_timestamp_granularities(values: list, response_format: str) -> frozenset[str]:
    """The `timestamp_granularities[]` asked for (OpenAI's field), checked before any work is
    done. They shape only a verbose_json answer, not the transcript (every entry keeps word
    times), so with another format they are accepted and change nothing, as they have nothing
    to add there (srt and vtt are timed by segment either way)."""
    wanted = set()
    for value in values:
        if not isinstance(value, str) or value not in TIMESTAMP_GRANULARITIES:
            shown = repr(value) if isinstance(value, str) else "a file"
            raise ApiError(422, f"timestamp_granularities[] {shown} is not supported; use segment and/or word")
        wanted.add(value)
    return frozenset(wanted)


def transcription_response(outcome, response_format: str, granularities: frozenset[str] = frozenset()) -> Response:
    """Render the outcome in a `response_format` that `check_response_format` accepted; srt and
    vtt get one cue per segment, verbose_json the segments (and words when asked for)."""
    result = outcome.result or {}
    text = result.get("text", "")
    duration = float(result.get("duration_s") or 0.0)
    segments = _segments(result, text, duration)
    if response_format == "json":
        return JSONResponse({"text": text})
    if response_format == "text":
        return PlainTextResponse(text)
    if response_format == "verbose_json":
        body = {"task": "transcribe", "language": result.get("language", ""), "duration": duration, "text": text,
                "segments": [_openai_segment(segment) for segment in segments]}
        if "word" in granularities:
            body["words"] = [{"word": word["word"], "start": word["start"], "end": word["end"]}
                             for segment in segments for word in segment.get("words", [])]
        return JSONResponse(body)
    if response_format == "srt":
        cues = [f"{number}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{cue_text}\n"
                for number, (start, end, cue_text) in enumerate(_cues(segments, duration), start=1)]
        return PlainTextResponse("\n".join(cues))
    cues = [f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{cue_text}\n" for start, end, cue_text in _cues(segments, duration)]
    return PlainTextResponse("WEBVTT\n\n" + "\n".join(cues), media_type="text/vtt")


def check_stream(value: str, response_format: str) -> bool:
    """`stream=true` asks for server-sent events (OpenAI's `transcript.text.delta` ... `done`);
    they carry text only, so only the json and text formats can stream."""
    wanted = value.strip().lower()
    if wanted in ("", "false", "0"):
        return False
    if wanted not in ("true", "1"):
        raise ApiError(422, f"stream must be true or false, got {quoted(value)}")
    if response_format not in ("json", "text"):
        raise ApiError(422, f"stream=true sends text events; use response_format json or text, not {response_format!r}")
    return True


def streamed_transcription(outcome) -> StreamingResponse:
    """The transcript as OpenAI streams it: one `transcript.text.delta` event per segment (a
    cached answer streams the same way), then `transcript.text.done` with the whole text."""
    result = outcome.result or {}
    text = result.get("text", "")
    segments = _segments(result, text, float(result.get("duration_s") or 0.0))

    def events():
        pieces = [str(segment.get("text", "")) for segment in segments]
        for number, piece in enumerate(pieces):
            delta = piece.strip() if number == 0 else " " + piece.strip()
            if delta.strip():
                yield _event({"type": "transcript.text.delta", "delta": delta, "logprobs": None})
        yield _event({"type": "transcript.text.done", "text": text, "logprobs": None})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def models_list(names: list[str]) -> JSONResponse:
    """GET /v1/models: the names a client may send as `model` (every one resolves to the
    configured engine)."""
    created = int(time.time())
    return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "earmark"}
                                                      for name in names]})


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _segments(result: dict, text: str, duration: float) -> list[dict]:
    """The result's timed segments (a result without them: one over the whole audio)."""
    if not text:
        return []
    segments = result.get("segments")
    if segments:
        return segments
    return [{"id": 0, "start": 0.0, "end": duration, "text": text}]


def _cues(segments: list[dict], duration: float) -> list[tuple[float, float, str]]:
    """(start, end, text) per non-empty segment, kept in order and inside [0, duration]: the
    decoder's last timestamp may round past the end of the audio."""
    cues, floor = [], 0.0
    for segment in segments:
        cue_text = str(segment.get("text", "")).strip()
        if not cue_text:
            continue
        start = min(max(float(segment["start"]), floor), duration)
        end = min(max(float(segment["end"]), start), duration)
        cues.append((start, end, cue_text))
        floor = start
    return cues


def _openai_segment(segment: dict) -> dict:
    """OpenAI's verbose_json segment; decoder statistics an engine does not report are 0."""
    return {"id": segment.get("id", 0), "seek": segment.get("seek", 0), "start": segment["start"], "end": segment["end"],
            "text": segment["text"], "tokens": segment.get("tokens", []), "temperature": 0.0,
            "avg_logprob": segment.get("avg_logprob", 0.0), "compression_ratio": segment.get("compression_ratio", 0.0),
            "no_speech_prob": segment.get("no_speech_prob", 0.0)}


def _timestamp(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"
