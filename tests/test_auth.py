"""API keys and namespaces on a real store with the real engine: keys are required and checked,
and a namespace is a hard partition (exact, canonical, fuzzy, negative, /lookup's evidence)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import openai
import pytest
from starlette.testclient import TestClient

from earmark.service.api.app import create_app
from earmark.service.api.auth import ApiKeys, is_admin_bearer, is_admin_token, keys_without_admin
from earmark.service.config import ConfigError
from earmark.service.engines.base import RecognitionOptions
from tests.waiting import wait_for
from tests.audio_tools import encode, read_pcm, silence_wav
from tests import http_helpers
from tests.conftest import live_server
from tests.test_app import keys_under

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)

KEY_A = "alpha-key-0123456789abcdef"
KEY_B = "beta-key-0123456789abcdef0"
KEYS_FILE = f"""# earmark API keys: <key> <namespace>
{KEY_A} alpha   # team alpha

{KEY_B} beta
"""


def post(client, data: bytes, path: str = "/recognize", key: str | None = None, **fields):
    """http_helpers.post with `key` sent as `Authorization: Bearer <key>`."""
    return http_helpers.post(client, data, path, {"Authorization": f"Bearer {key}"} if key else None, **fields)


@pytest.fixture
def keyed_settings(settings, tmp_path):
    path = tmp_path / "api-keys"
    path.write_text(KEYS_FILE)
    return replace(settings, api_keys_file=str(path))


@pytest.fixture
def keyed(keyed_settings, engine):
    with TestClient(create_app(keyed_settings, engine=engine)) as client:
        yield client


def test_keys_file_is_parsed_and_keys_are_kept_only_as_digests():
    keys = ApiKeys.from_text(KEYS_FILE)
    assert keys.namespaces == {"alpha", "beta"}
    assert (keys.namespace_of(KEY_A), keys.namespace_of(KEY_B)) == ("alpha", "beta")
    assert KEY_A not in repr(keys) and KEY_A.encode() not in b"".join(d for d, _ in keys.entries)
    # Near misses (same length, one character changed, a prefix, an extension) open nothing.
    for guess in (KEY_A[:-1] + "X", KEY_A[:-1], KEY_A + "0", KEY_A.upper(), ""):
        assert keys.namespace_of(guess) is None
    assert keys.authenticate(f"Bearer {KEY_B}") == "beta"
    assert keys.authenticate(f"bearer   {KEY_B} ") == "beta"


@pytest.mark.parametrize("text,reason", [
    ("onlyakeywithoutnamespace\n", "expected '<key> <namespace>'"),
    (f"{KEY_A} alpha extra\n", "expected '<key> <namespace>'"),
    ("short alpha\n", "shorter than 16"),
    (f"{KEY_A} al/pha\n", "namespace"),
    (f"{KEY_A} alpha\n{KEY_A} beta\n", "listed twice"),
    ("# nothing but a comment\n\n", "lists no keys"),
])
def test_a_bad_keys_file_is_refused_naming_the_line_and_never_the_key(text, reason):
    with pytest.raises(ConfigError) as refused:
        ApiKeys.from_text(text)
    assert reason in str(refused.value) and KEY_A not in str(refused.value)


def test_an_unreadable_keys_file_stops_the_app(settings, engine, tmp_path):
    with pytest.raises(ConfigError, match="cannot read the API keys file"):
        create_app(replace(settings, api_keys_file=str(tmp_path / "missing")), engine=engine)


def test_keys_are_required_and_checked_with_the_contract_error_shapes(keyed, recorded, redis_client, settings):
    before = keys_under(redis_client, settings.key_prefix)
    for path in ("/recognize", "/lookup"):
        for key in (None, "not-a-configured-key-at-all", KEY_A[:-1] + "X"):
            answer = post(keyed, recorded, path, key=key)
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
            body = answer.json()
            assert body["code"] == 401 and "Authorization: Bearer <key>" in body["msg"] and "error" not in body
    basic = keyed.post("/recognize", files={"file": ("a.wav", recorded)}, headers={"Authorization": f"Basic {KEY_A}"})
    assert basic.status_code == 401
    for key in (None, "wrong-key-0123456789abcdef"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for answer in (keyed.post("/v1/audio/transcriptions", files={"file": ("a.wav", recorded)},
                                  data={"model": "whisper-1"}, headers=headers),
                       keyed.get("/v1/models", headers=headers)):
            assert answer.status_code == 401
            error = answer.json()["error"]
            assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
            assert "Bearer" in error["message"]
    assert keys_under(redis_client, settings.key_prefix) == before  # refused before any work
    metrics = keyed.get("/metrics").text  # /health and /metrics stay open; no namespace in labels
    assert keyed.get("/health").status_code == 200
    assert 'earmark_errors_total{endpoint="recognize",status="401"}' in metrics
    assert 'earmark_errors_total{endpoint="models",status="401"}' in metrics

    answer = post(keyed, recorded, key=KEY_A)
    assert answer.status_code == 200 and answer.json()["cache"]["tier"] == "miss"
    assert keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY_B}"}).status_code == 200
    metrics = keyed.get("/metrics").text
    assert "alpha" not in metrics and "beta" not in metrics


def test_the_admin_token_still_guards_entries_whatever_the_api_keys(keyed_settings, engine, recorded):
    with TestClient(create_app(replace(keyed_settings, admin_token="s3cret"), engine=engine)) as client:
        entry = post(client, recorded, key=KEY_A).json()["cache"]["entry"]
        assert client.get(f"/entries/{entry}", headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 401
        assert client.get(f"/entries/{entry}", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_a_namespace_never_sees_another_namespaces_entries_by_any_tier(keyed, recorded, mp3_copy):
    first = post(keyed, recorded, key=KEY_A).json()
    entry_a = first["cache"]["entry"]
    silence = silence_wav(2.0)
    assert post(keyed, silence, key=KEY_A).json()["cache"]["tier"] == "miss"
    wait_for(lambda: keyed.get("/health").json()["index_size"] >= 1)
    flac = encode(*read_pcm(recorded), fmt="flac", codec="flac")

    # In alpha every tier answers...
    assert post(keyed, recorded, "/lookup", key=KEY_A).json()["cache"]["tier"] == "exact"
    assert post(keyed, flac, "/lookup", key=KEY_A).json()["cache"]["tier"] == "canonical"
    fuzzy = post(keyed, mp3_copy, "/lookup", key=KEY_A).json()["cache"]
    assert (fuzzy["tier"], fuzzy["entry"]) == ("fuzzy", entry_a) and fuzzy["candidates"]
    assert post(keyed, silence, "/lookup", key=KEY_A).json()["cache"]["tier"] == "negative"

    # ...and in beta none does, and /lookup shows none of alpha's candidates.
    for data in (recorded, flac, mp3_copy, silence):
        cache = post(keyed, data, "/lookup", key=KEY_B).json()["cache"]
        assert (cache["tier"], cache["entry"], cache["candidates"]) == ("miss", None, [])

    # beta's own run makes beta's own entry; each namespace then hits its own.
    own = post(keyed, recorded, key=KEY_B).json()
    assert own["cache"]["tier"] == "miss" and own["cache"]["entry"] != entry_a
    assert own["result"]["text"] == first["result"]["text"]
    wait_for(lambda: keyed.get("/health").json()["index_size"] >= 2)
    for key, entry in ((KEY_A, entry_a), (KEY_B, own["cache"]["entry"])):
        evidence = post(keyed, mp3_copy, "/lookup", key=key).json()["cache"]
        assert {c["entry"] for c in evidence["candidates"]} == {entry}
        cache = post(keyed, mp3_copy, key=key).json()["cache"]
        assert (cache["tier"], cache["entry"]) == ("fuzzy", entry)
        cache = post(keyed, recorded, key=key).json()["cache"]
        assert (cache["tier"], cache["entry"]) == ("exact", entry)
    # The OpenAI endpoint partitions the same way.
    headers = {"Authorization": f"Bearer {KEY_B}"}
    answer = keyed.post("/v1/audio/transcriptions", files={"file": ("a.mp3", mp3_copy)}, data={"model": "whisper-1"},
                        headers=headers)
    assert answer.headers["X-Cache-Entry"] == own["cache"]["entry"]


def test_without_keys_everyone_shares_the_empty_namespace(client, recorded):
    entry = post(client, recorded, key="anything-at-all-is-ignored").json()["cache"]["entry"]
    again = post(client, recorded).json()["cache"]
    assert (again["tier"], again["entry"]) == ("exact", entry)


def test_the_openai_client_works_with_a_real_key(keyed_settings, engine, recorded):
    with live_server(keyed_settings, engine) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY_A, max_retries=0)
        first = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", recorded))
        assert "recorded" in first.text
        raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("a.wav", recorded))
        assert raw.headers["x-cache-tier"] == "exact"
        assert "whisper-1" in [model.id for model in client.models.list()]
        other = openai.OpenAI(base_url=url + "/v1", api_key=KEY_B, max_retries=0)
        raw = other.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("a.wav", recorded))
        assert raw.headers["x-cache-tier"] == "miss"  # beta's first sight of it
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="wrong-key-0123456789abcdef", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.audio.transcriptions.create(model="whisper-1", file=("a.wav", recorded))
        assert refused.value.status_code == 401 and "API key is not valid" in str(refused.value)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_identical_requests_of_two_namespaces_at_once_never_share_a_run(client, engine, recorded):
    cache = client.app.state.services.cache
    alpha, beta = (engine.resolve(RecognitionOptions(), namespace) for namespace in ("alpha", "beta"))

    async def both():
        return await asyncio.gather(cache.recognize(recorded, alpha), cache.recognize(recorded, beta))

    first, second = client.portal.call(both)
    assert (first.tier, second.tier) == ("miss", "miss")
    assert first.entry.entry_id != second.entry.entry_id
    assert first.entry.profile_id == alpha.digest and second.entry.profile_id == beta.digest
    assert client.app.state.services.metrics.engine_runs._value.get() == 2


def test_the_admin_token_checks_shared_by_the_api_and_the_console():
    keys = ApiKeys.from_text(f"{KEY_A} team-a\n")
    assert is_admin_token("s3cret", "s3cret") and not is_admin_token("s3cre", "s3cret")
    assert not is_admin_token("", "")  # no admin token configured: nothing is the admin token
    assert is_admin_bearer("Bearer s3cret", "s3cret")
    assert not is_admin_bearer("bearer s3cret", "s3cret") and not is_admin_bearer("s3cret", "s3cret")
    assert not is_admin_bearer(None, "s3cret") and not is_admin_bearer("Bearer ", "")
    assert keys_without_admin(keys, "") and not keys_without_admin(keys, "s3cret") and not keys_without_admin(None, "")
