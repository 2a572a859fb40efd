"""The HTTP contract end to end on a real store and the real engine: tiers, errors, entries."""

from __future__ import annotations

from dataclasses import replace

import pytest
from starlette.testclient import TestClient

from earmark.index.keys import Keys
from earmark.service.api.app import create_app
from earmark.service.engines.base import RecognitionOptions
from tests.audio_tools import encode, read_pcm, silence_wav, wav_with_extra_chunk
from tests.http_helpers import post

DAY_S = 24 * 3600


def keys_under(redis_client, prefix: str) -> set[bytes]:
    """Keys requests wrote into the cache (the store identity, written by the index replica at
    start, and the audit's event stream, which every answer appends to, aside)."""
    events = Keys(prefix).events().encode()
    return {key for key in redis_client.scan_iter(match=f"{prefix}*", count=1000)
            if not key.endswith(b"store-id") and key != events}


def test_miss_then_exact_then_canonical_share_one_entry(client, recorded):
    first = post(client, recorded).json()
    assert first["code"] == 0 and first["cache"]["tier"] == "miss"
    entry = first["cache"]["entry"]
    words = set(first["result"]["text"].split())
    assert len(words & {"your", "call", "is", "being", "recorded", "for", "quality", "and", "training", "purposes"}) >= 5

    again = post(client, recorded).json()
    assert again["cache"] == {**again["cache"], "tier": "exact", "entry": entry, "score": None}
    assert again["result"] == first["result"]

    for copy in (encode(*read_pcm(recorded), fmt="flac", codec="flac"), wav_with_extra_chunk(recorded)):
        answer = post(client, copy).json()
        assert (answer["cache"]["tier"], answer["cache"]["entry"]) == ("canonical", entry)
        assert answer["result"]["text"] == first["result"]["text"]
        # the new bytes are remembered: next time they are an exact hit
        assert post(client, copy).json()["cache"]["tier"] == "exact"


def test_entries_carry_the_configured_ttl(client, recorded, redis_client, settings):
    entry = post(client, recorded).json()["cache"]["entry"]
    ttl = redis_client.ttl(Keys(settings.key_prefix).entry(entry))
    assert DAY_S * 7 - 60 < ttl <= DAY_S * 7
    for key in keys_under(redis_client, settings.key_prefix):
        if redis_client.type(key) == b"stream" or key.endswith(b"store-id"):  # kept: capped or tiny
            assert redis_client.ttl(key) == -1
        else:
            assert redis_client.ttl(key) > 0, key


def test_silence_is_cached_as_a_negative_entry_for_an_hour(client, redis_client, settings):
    silence = silence_wav(2.0)
    first = post(client, silence).json()
    assert first["result"] == {**first["result"], "text": "", "error": "no_speech"}
    entry = first["cache"]["entry"]
    assert entry is not None
    assert 3500 < redis_client.ttl(Keys(settings.key_prefix).entry(entry)) <= 3600
    again = post(client, silence).json()
    assert (again["cache"]["tier"], again["cache"]["entry"]) == ("negative", entry)
    flac = encode(*read_pcm(silence), fmt="flac", codec="flac")
    assert post(client, flac).json()["cache"]["tier"] == "negative"


def test_another_profile_never_reuses_a_result(client, engine, recorded):
    cache = client.app.state.services.cache
    profile = engine.resolve(RecognitionOptions())
    upgraded = replace(profile, revision=profile.revision + "-upgraded")  # say, new model weights
    outcome_a = client.portal.call(cache.recognize, recorded, profile)
    outcome_b = client.portal.call(cache.recognize, recorded, upgraded)
    assert outcome_a.tier == "miss" and outcome_b.tier == "miss"
    assert outcome_a.entry.entry_id != outcome_b.entry.entry_id
    assert client.portal.call(cache.recognize, recorded, upgraded).tier == "exact"


def test_lookup_never_runs_the_engine_nor_writes(client, recorded, redis_client, settings):
    before = keys_under(redis_client, settings.key_prefix)
    answer = post(client, recorded, "/lookup").json()
    assert answer["cache"]["tier"] == "miss" and answer["result"] is None and answer["cache"]["candidates"] == []
    assert keys_under(redis_client, settings.key_prefix) == before
    assert client.app.state.services.metrics.engine_runs._value.get() == 0
    post(client, recorded)
    hit = post(client, recorded, "/lookup").json()
    assert hit["cache"]["tier"] == "exact" and hit["result"]["text"]


def test_unsupported_options_are_422_naming_what_is_supported(client, recorded):
    answer = post(client, recorded, language="zh")
    assert answer.status_code == 422 and "supports: en" in answer.json()["msg"]
    assert post(client, recorded, use_itn="true").status_code == 422
    assert post(client, recorded, use_itn="maybe").status_code == 422
    assert post(client, recorded, hotwords="budget").status_code == 422
    assert post(client, recorded, language="en-US", use_itn="false").status_code == 200


@pytest.mark.parametrize(
    "data,status",
    [
        (b"", 400),
        (b"just some text, not audio at all\n" * 20, 415),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", 400),
        (b"\xff\xfb\x90\x64" + bytes(range(256)) * 10, 400),
    ],
)
def test_bad_input_is_a_clear_4xx_and_writes_nothing(client, redis_client, settings, data, status):
    before = keys_under(redis_client, settings.key_prefix)
    answer = post(client, data)
    assert answer.status_code == status
    body = answer.json()
    assert body["code"] != 0 and len(body["msg"]) > 20
    assert keys_under(redis_client, settings.key_prefix) == before


def test_missing_file_field_and_non_multipart_are_400(client):
    assert client.post("/recognize", data={"language": "en"}).status_code == 400
    assert client.post("/recognize", content=b"RIFF....", headers={"content-type": "audio/wav"}).status_code == 400


def test_size_and_duration_limits_are_413(settings, engine, recorded, redis_client):
    before = keys_under(redis_client, settings.key_prefix)
    small = replace(settings, max_upload_bytes=50_000)
    with TestClient(create_app(small, engine=engine)) as client:
        answer = post(client, recorded)
        assert answer.status_code == 413 and "limit" in answer.json()["msg"]
    short = replace(settings, max_duration_s=2.0)
    with TestClient(create_app(short, engine=engine)) as client:
        answer = post(client, recorded)
        assert answer.status_code == 413 and "limit" in answer.json()["msg"]
    assert keys_under(redis_client, settings.key_prefix) == before


def test_errors_are_counted_in_metrics(client):
    post(client, b"")
    text = client.get("/metrics").text
    assert 'earmark_errors_total{endpoint="recognize",status="400"} 1.0' in text


def test_entries_read_and_delete_behind_the_admin_token(settings, engine, recorded):
    with TestClient(create_app(replace(settings, admin_token="s3cret"), engine=engine)) as client:
        entry = post(client, recorded).json()["cache"]["entry"]
        assert client.get(f"/entries/{entry}").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        shown = client.get(f"/entries/{entry}", headers=auth).json()["entry"]
        assert shown["entry"] == entry and shown["result"]["text"]
        assert client.delete(f"/entries/{entry}").status_code == 401
        assert client.delete(f"/entries/{entry}", headers=auth).status_code == 200
        assert client.get(f"/entries/{entry}", headers=auth).status_code == 404
        flac = encode(*read_pcm(recorded), fmt="flac", codec="flac")
        assert post(client, recorded, "/lookup").json()["cache"]["tier"] == "miss"
        assert post(client, flac, "/lookup").json()["cache"]["tier"] == "miss"
        assert client.delete(f"/entries/{entry}", headers=auth).status_code == 404


def test_entry_ids_of_another_shape_are_404(client, recorded):
    entry = post(client, recorded).json()["cache"]["entry"]
    for odd in (f"{entry}:aliases", "not-an-id", entry.upper()):
        assert client.get(f"/entries/{odd}").status_code == 404
        assert client.delete(f"/entries/{odd}").status_code == 404
    assert post(client, recorded).json()["cache"]["tier"] == "exact"


def test_openai_bad_response_format_is_refused_before_any_work(client, recorded, redis_client, settings):
    before = keys_under(redis_client, settings.key_prefix)
    answer = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", recorded, "application/octet-stream")},
                         data={"model": "whisper-1", "response_format": "xml"})
    assert answer.status_code == 422 and "response_format" in answer.json()["msg"]
    assert keys_under(redis_client, settings.key_prefix) == before


def test_health_and_metrics_names(client, recorded):
    health = client.get("/health").json()
    assert (health["status"], health["store"], health["engine"]) == ("ok", "up", "pocketsphinx")
    assert isinstance(health["index_size"], int)
    post(client, recorded)
    post(client, recorded)
    text = client.get("/metrics").text
    for name in ("earmark_requests_total", "earmark_errors_total", "earmark_engine_seconds_total",
                 "earmark_engine_seconds_saved_total", "earmark_lookup_seconds_bucket", "earmark_index_entries",
                 "earmark_store_errors_total", "earmark_store_up", "earmark_store_used_memory_bytes",
                 "earmark_fuzzy_candidates_total", "earmark_index_rebuilds_total"):
        assert name in text, name
    assert 'earmark_requests_total{endpoint="recognize",tier="exact"} 1.0' in text
    used = next(line for line in text.splitlines() if line.startswith("earmark_store_used_memory_bytes "))
    assert float(used.split()[1]) > 0


@pytest.mark.parametrize("response_format", ["json", "text", "verbose_json", "srt", "vtt"])
def test_openai_transcriptions_formats_and_cache_headers(client, recorded, response_format):
    answer = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", recorded, "application/octet-stream")},
        data={"model": "whisper-1", "response_format": response_format},
    )
    assert answer.status_code == 200
    assert answer.headers["X-Cache-Tier"] in ("miss", "exact")
    assert answer.headers["X-Cache-Entry"]
    if response_format in ("json", "verbose_json"):
        assert answer.json()["text"]
    else:
        assert "call" in answer.text or "recorded" in answer.text
