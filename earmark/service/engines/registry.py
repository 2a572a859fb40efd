"""Engine construction by name, so the configured engine is one setting."""

from __future__ import annotations

from pathlib import Path

from earmark.service.config import ENGINE_NAMES, UPSTREAM_ENGINES
from earmark.service.engines.base import Engine
from earmark.service.engines.errors import EngineUnavailable

__all__ = ["ENGINE_NAMES", "UPSTREAM_ENGINES", "create_engine", "engine_for", "upstream_config"]


def create_engine(name: str, *, funasr_model: str = "", device: str = "cpu", whisper_model: str = "",
                  workers: int = 0, whisper_beam_size: int = 5, whisper_condition_on_previous_text: bool = False,
                  digest_cache: Path | None = None, upstream=None, model_cache_dir: str = "") -> Engine:
    """Build the engine called `name`; raise `EngineUnavailable` with what to do when it cannot.

    `workers` is how many calls the service runs at once, 0 for the engine's choice (whisper
    shares the cores among them); `digest_cache` remembers the SHA-256 of a user's whisper model files;
    `upstream` is the `UpstreamConfig` of the upstream engines; `model_cache_dir` is where the
    multilingual Whisper base of `whisper-base` is assembled from its wheels (empty: the user's cache)."""
    if name in ("whisper", "whisper-base"):
        try:
            from earmark.service.engines.whisper_engine import Decoding, WhisperEngine
        except ImportError as exc:  # numpy or the like: faster-whisper itself is imported lazily
            raise EngineUnavailable(f"the whisper engine cannot be imported: {exc}") from exc
        decoding = Decoding(beam_size=whisper_beam_size, condition_on_previous_text=whisper_condition_on_previous_text)
        if name == "whisper-base":  # Whisper base, multilingual, from the wheels language identification uses
            from earmark.service.engines.language_id import assemble_base_model

            whisper_model = str(assemble_base_model(Path(model_cache_dir) if model_cache_dir else None))
        engine = WhisperEngine(whisper_model, device=device, num_workers=workers, decoding=decoding,
                               digest_cache=digest_cache)
        engine.name = name  # entries, profiles and refusals say which of the two it was
        return engine
    if name == "pocketsphinx":
        from earmark.service.engines.pocketsphinx_engine import PocketSphinxEngine

        return PocketSphinxEngine()
    if name == "funasr":
        try:
            from earmark.service.engines.funasr_engine import FunASREngine
        except ImportError as exc:
            raise EngineUnavailable(
                "the funasr engine needs the optional extra: pip install torch==2.13.0 'earmark[funasr]'"
            ) from exc
        return FunASREngine(funasr_model, device=device)
    if name in UPSTREAM_ENGINES:
        if upstream is None or not upstream.url:
            raise EngineUnavailable(f"engine {name!r} needs --upstream-url, the recognition server to forward misses to")
        if name == "openai":
            from earmark.service.engines.upstream.openai import OpenAIUpstreamEngine

            return OpenAIUpstreamEngine(upstream)
        if name == "funasr-ws":
            from earmark.service.engines.upstream.funasr_ws import FunASRWebSocketEngine

            return FunASRWebSocketEngine(upstream)
        from earmark.service.engines.upstream.funasr_http import FunASRHttpEngine

        return FunASRHttpEngine(upstream)
    raise EngineUnavailable(f"unknown engine {name!r}; choose one of: {', '.join(ENGINE_NAMES)}")


def engine_for(settings, name: str = "") -> Engine:
    """The engine `settings` (a `service.config.Settings`) configure, or the one called `name`
    (a language route's) with the same settings."""
    return create_engine(
        name or settings.engine, funasr_model=settings.funasr_model, device=settings.device,
        whisper_model=settings.whisper_model, workers=settings.engine_workers,
        whisper_beam_size=settings.whisper_beam_size,
        whisper_condition_on_previous_text=settings.whisper_condition_on_previous_text,
        digest_cache=Path(settings.data_dir) / "model-digests.json",
        upstream=upstream_config(settings), model_cache_dir=settings.model_cache_dir,
    )


def upstream_config(settings):
    """The upstream engines' `UpstreamConfig` from `settings`."""
    from earmark.service.engines.transcript_limit import TranscriptLimit
    from earmark.service.engines.upstream.base import UpstreamConfig

    return UpstreamConfig(
        url=settings.upstream_url, api_key=settings.upstream_api_key, model=settings.upstream_model,
        revision=settings.upstream_revision, response_format=settings.upstream_response_format,
        max_connections=settings.upstream_max_connections,
        connect_timeout_s=settings.upstream_connect_timeout_s, retries=settings.upstream_retries,
        health_interval_s=settings.upstream_health_interval_s,
        transcript_limit=TranscriptLimit.from_settings(settings),
        tls_verify=settings.upstream_tls_verify, ca_file=settings.upstream_ca_file,
    )
