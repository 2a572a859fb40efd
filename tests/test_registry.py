"""service/engines/registry.py: the configured engine is one setting; an unknown name, or an
upstream engine without a server to forward to, is refused with what to do, before anything runs."""

from __future__ import annotations

import ssl
from dataclasses import replace

import pytest

from earmark.service.config import Settings
from earmark.service.engines.errors import EngineUnavailable
from earmark.service.engines.pocketsphinx_engine import PocketSphinxEngine
from earmark.service.engines.registry import ENGINE_NAMES, create_engine, engine_for, upstream_config
from earmark.service.engines.upstream.funasr_http import FunASRHttpEngine
from earmark.service.engines.upstream.funasr_ws import FunASRWebSocketEngine
from earmark.service.engines.upstream.openai import OpenAIUpstreamEngine


def test_an_unknown_engine_is_refused_naming_the_known_ones():
    with pytest.raises(EngineUnavailable) as refused:
        create_engine("sphinx")
    assert "unknown engine 'sphinx'" in str(refused.value)
    assert all(name in str(refused.value) for name in ENGINE_NAMES)


@pytest.mark.parametrize("name", ["openai", "funasr-http", "funasr-ws"])
def test_an_upstream_engine_needs_an_upstream_url(name):
    with pytest.raises(EngineUnavailable, match="needs --upstream-url"):
        engine_for(Settings(engine=name))


def test_each_upstream_engine_is_built_from_the_settings(tmp_path):
    settings = Settings(engine="openai", upstream_url="http://127.0.0.1:9/v1", upstream_model="whisper-large",
                        upstream_max_connections=3, upstream_retries=0, max_transcript_chars_per_s=50.0,
                        data_dir=tmp_path)
    config = upstream_config(settings)
    assert (config.url, config.model, config.max_connections, config.retries) == ("http://127.0.0.1:9/v1", "whisper-large", 3, 0)
    assert config.transcript_limit.chars_per_s == 50.0
    openai = engine_for(settings)
    assert isinstance(openai, OpenAIUpstreamEngine) and openai.model_id == "whisper-large"
    funasr = engine_for(replace(settings, engine="funasr-http", upstream_url="http://127.0.0.1:9"))
    assert isinstance(funasr, FunASRHttpEngine) and funasr.endpoint == "http://127.0.0.1:9/recognition"
    websocket = engine_for(replace(settings, engine="funasr-ws", upstream_url="wss://127.0.0.1:10095",
                                   upstream_tls_verify=False))
    assert isinstance(websocket, FunASRWebSocketEngine) and websocket.endpoint == "wss://127.0.0.1:10095/"
    assert websocket._tls is not None and websocket._tls.verify_mode == ssl.CERT_NONE


def test_pocketsphinx_is_built_by_name(tmp_path):
    assert isinstance(engine_for(Settings(engine="pocketsphinx", data_dir=tmp_path)), PocketSphinxEngine)
