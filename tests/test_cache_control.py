"""Per-request Cache-Control on a real store with the real engine: no-cache runs the engine,
no-store writes nothing, max-age shortens the written entry's life; unknown directives are ignored."""

from __future__ import annotations

import pytest

from earmark.index.keys import Keys
from earmark.service.api.cache_control import parse_cache_control
from earmark.service.pipeline.cache_directives import CacheControl
from tests.audio_tools import encode, fixture_bytes, read_pcm
from tests.http_helpers import recognize
from tests.test_app import keys_under

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)

DAY_S = 24 * 3600


def post(client, data: bytes, cache_control: str | None = None, path: str = "/recognize"):
    """http_helpers.recognize with `cache_control` sent as the Cache-Control header."""
    return recognize(client, data, path, {"Cache-Control": cache_control} if cache_control else None)


def engine_runs(client) -> float:
    return client.app.state.services.metrics.engine_runs._value.get()


@pytest.mark.parametrize("header,expected", [
    (None, CacheControl()),
    ("", CacheControl()),
    ("no-cache", CacheControl(no_cache=True)),
    ("No-Store", CacheControl(no_store=True)),
    ("no-cache, no-store", CacheControl(no_cache=True, no_store=True)),
    ("max-age=60", CacheControl(max_age_s=60)),
    ('max-age="60", private', CacheControl(max_age_s=60)),
    ("max-age=600, max-age=60", CacheControl(max_age_s=60)),
    ("max-age=soon, must-revalidate, x-whatever=1", CacheControl()),
    ("max-age=-5", CacheControl()),
])
def test_parse_cache_control(header, expected):
    assert parse_cache_control(header) == expected


def test_ttl_is_never_longer_than_configured():
    assert CacheControl(max_age_s=60).ttl_s(3600) == 60
    assert CacheControl(max_age_s=10**9).ttl_s(3600) == 3600
    assert CacheControl().ttl_s(3600) == 3600
    assert not CacheControl(max_age_s=0).writes and not CacheControl(no_store=True).writes


def test_no_cache_runs_the_engine_on_an_exact_repeat_and_replaces_the_entry(client, recorded, redis_client, settings):
    first = post(client, recorded)
    entry = first["cache"]["entry"]
    entry_key = Keys(settings.key_prefix).entry(entry)
    generation = redis_client.hget(entry_key, "gen")
    assert engine_runs(client) == 1

    fresh = post(client, recorded, "no-cache")
    assert (fresh["cache"]["tier"], fresh["cache"]["entry"]) == ("miss", entry)
    assert fresh["result"]["text"] == first["result"]["text"]
    assert engine_runs(client) == 2
    assert redis_client.hget(entry_key, "gen") != generation  # the new entry replaced the old one

    again = post(client, recorded)["cache"]
    assert (again["tier"], again["entry"]) == ("exact", entry)
    flac = encode(*read_pcm(recorded), fmt="flac", codec="flac")
    assert post(client, flac)["cache"]["tier"] == "canonical"  # the replaced entry serves every tier
    assert engine_runs(client) == 2

    answer = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", recorded)}, data={"model": "whisper-1"},
                         headers={"Cache-Control": "no-cache"})
    assert answer.headers["X-Cache-Tier"] == "miss" and engine_runs(client) == 3


def test_no_store_answers_from_cache_but_never_writes(client, recorded, redis_client, settings):
    before = keys_under(redis_client, settings.key_prefix)
    uncached = post(client, recorded, "no-store")
    assert (uncached["cache"]["tier"], uncached["cache"]["entry"]) == ("bypass", None)
    assert "recorded" in uncached["result"]["text"]
    assert keys_under(redis_client, settings.key_prefix) == before
    assert post(client, recorded, path="/lookup")["cache"]["tier"] == "miss"

    entry = post(client, recorded)["cache"]["entry"]
    before = {key: redis_client.dump(key) for key in keys_under(redis_client, settings.key_prefix)}
    runs = engine_runs(client)
    assert post(client, recorded, "no-store")["cache"]["tier"] == "exact"
    flac = encode(*read_pcm(recorded), fmt="flac", codec="flac")
    hit = post(client, flac, "no-store")["cache"]
    assert (hit["tier"], hit["entry"]) == ("canonical", entry)
    assert post(client, flac, "no-store")["cache"]["tier"] == "canonical"  # its bytes were not remembered
    both = post(client, recorded, "no-cache, no-store")["cache"]  # the engine runs, nothing is kept
    assert both["tier"] == "bypass"
    answer = client.post("/v1/audio/transcriptions", files={"file": ("a.flac", flac)}, data={"model": "whisper-1"},
                         headers={"Cache-Control": "no-store"})
    assert answer.headers["X-Cache-Tier"] == "canonical"
    after = {key: redis_client.dump(key) for key in keys_under(redis_client, settings.key_prefix)}
    assert after == before
    assert engine_runs(client) == runs + 1

    metrics = client.get("/metrics").text
    assert 'earmark_cache_control_total{directive="no-store",endpoint="recognize"} 5.0' in metrics
    assert 'earmark_cache_control_total{directive="no-cache",endpoint="recognize"} 1.0' in metrics
    assert 'earmark_cache_control_total{directive="no-store",endpoint="transcriptions"} 1.0' in metrics
    assert 'earmark_cache_control_total{directive="none",endpoint="recognize"} 1.0' in metrics


def test_max_age_sets_the_written_entrys_ttl_never_longer_than_configured(client, recorded, redis_client, settings):
    keys = Keys(settings.key_prefix)
    entry = post(client, recorded, "max-age=120")["cache"]["entry"]
    assert 100 < redis_client.ttl(keys.entry(entry)) <= 120
    for key in keys_under(redis_client, settings.key_prefix):
        if redis_client.type(key) != b"stream":
            assert 0 < redis_client.ttl(key) <= 120, key
    # A hit writes no entry: max-age leaves the existing one's life alone.
    assert post(client, recorded, "max-age=10")["cache"]["tier"] == "exact"
    assert redis_client.ttl(keys.entry(entry)) > 100

    post(client, recorded, "no-cache, max-age=999999999")  # longer than ttl_s: capped at it
    assert DAY_S * 7 - 60 < redis_client.ttl(keys.entry(entry)) <= DAY_S * 7

    weather = fixture_bytes("weather.wav")
    before = keys_under(redis_client, settings.key_prefix)
    assert post(client, weather, "max-age=0")["cache"]["tier"] == "bypass"  # an entry that would expire at once
    assert keys_under(redis_client, settings.key_prefix) == before
    ignored = post(client, weather, "private, stale-if-error=5, max-age=later")["cache"]
    assert ignored["tier"] == "miss"
    assert DAY_S * 7 - 60 < redis_client.ttl(keys.entry(ignored["entry"])) <= DAY_S * 7


def test_lookup_ignores_cache_control(client, recorded, redis_client, settings):
    post(client, recorded)
    before = keys_under(redis_client, settings.key_prefix)
    assert post(client, recorded, "no-cache", path="/lookup")["cache"]["tier"] == "exact"
    assert keys_under(redis_client, settings.key_prefix) == before
