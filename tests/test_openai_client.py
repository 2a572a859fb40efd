"""The official `openai` Python client against earmark, unchanged: plain, raw-response,
streaming and async calls, every response_format, errors with the reason, and the model list."""

from __future__ import annotations

import asyncio

import openai
import pytest

from earmark.service.api.errors import ApiError
from earmark.service.api.openai_compat import (check_response_format, check_stream, check_timestamp_granularities,
                                              transcription_response)
from earmark.service.pipeline.recognition import Outcome
from tests.conftest import live_server

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)


@pytest.fixture
def base_url(settings, engine):
    with live_server(settings, engine) as url:
        yield url + "/v1"


def test_plain_raw_and_every_format(base_url, recorded):
    client = openai.OpenAI(base_url=base_url, api_key="unused")
    first = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", recorded))
    assert "recorded" in first.text
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("a.wav", recorded))
    assert raw.headers["x-cache-tier"] == "exact" and len(raw.headers["x-cache-entry"]) == 32
    assert raw.parse().text == first.text
    verbose = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", recorded), response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"])
    assert verbose.text == first.text and verbose.segments and verbose.words
    for response_format in ("text", "srt", "vtt"):
        body = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", recorded), response_format=response_format)
        assert "recorded" in str(body)


def test_streaming_sends_deltas_then_the_whole_text(base_url, recorded):
    client = openai.OpenAI(base_url=base_url, api_key="unused")
    for attempt in ("miss", "cached"):
        events = list(client.audio.transcriptions.create(model="whisper-1", file=("a.wav", recorded), stream=True))
        assert [event.type for event in events][-1] == "transcript.text.done", attempt
        deltas = "".join(event.delta for event in events if event.type == "transcript.text.delta")
        assert deltas == events[-1].text and "recorded" in deltas


def test_async_client_and_streaming(base_url, recorded):
    async def run():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused")
        plain = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", recorded))
        stream = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", recorded), stream=True)
        events = [event async for event in stream]
        await client.close()
        return plain.text, events[-1].text

    plain, streamed = asyncio.run(run())
    assert plain == streamed and "recorded" in plain


def test_errors_show_the_reason_and_models_are_listed(base_url, recorded):
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", recorded), response_format="srt", stream=True)
    assert "stream=true sends text events" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as bad:  # a WAV header with no audio after it
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", recorded[:44]))
    assert bad.value.status_code == 400 and "send" in str(bad.value)
    assert "whisper-1" in [model.id for model in client.models.list()]


def test_the_formats_and_options_are_checked_before_any_work():
    """api/openai_compat.py refuses what it cannot render with a 422, before the audio is read."""
    assert check_response_format(None) == check_response_format("") == "json"
    assert check_timestamp_granularities(["word", "segment", "word"], "verbose_json") == {"word", "segment"}
    assert check_stream("", "srt") is False and check_stream("True", "text") is True
    for refused_call in (lambda: check_response_format("xml"), lambda: check_timestamp_granularities(["char"], "json"),
                         lambda: check_stream("maybe", "json"), lambda: check_stream("true", "verbose_json")):
        with pytest.raises(ApiError) as refused:
            refused_call()
        assert refused.value.status == 422


def test_srt_and_vtt_cues_stay_in_order_inside_the_audio():
    """One cue per non-empty segment; a segment that starts before the last or ends past the
    audio (the decoder's rounding) is kept inside [previous start, duration]."""
    outcome = Outcome(tier="exact", result={"text": "hello there world", "duration_s": 2.5, "segments": [
        {"start": 0.3, "end": 1.24, "text": " hello there"}, {"start": 1.5, "end": 1.6, "text": "  "},
        {"start": 0.1, "end": 2.91, "text": "world"}]})
    srt = transcription_response(outcome, "srt").body.decode()
    assert srt == "1\n00:00:00,300 --> 00:00:01,240\nhello there\n\n2\n00:00:00,300 --> 00:00:02,500\nworld\n"
    vtt = transcription_response(outcome, "vtt")
    assert vtt.media_type == "text/vtt" and vtt.body.decode().splitlines()[:4] == [
        "WEBVTT", "", "00:00:00.300 --> 00:00:01.240", "hello there"]
    no_segments = Outcome(tier="miss", result={"text": "hello", "duration_s": 61.0})
    assert transcription_response(no_segments, "srt").body.decode() == "1\n00:00:00,000 --> 00:01:01,000\nhello\n"
