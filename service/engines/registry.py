"""Engine construction by name, so the configured engine is one setting."""

from __future__ import annotations

from service.engines.base import Engine, EngineUnavailable

ENGINE_NAMES = ("pocketsphinx", "funasr")


def create_engine(name: str, *, funasr_model: str = "", device: str = "cpu") -> Engine:
    """Build the engine called `name`; raise `EngineUnavailable` with what to do when it cannot."""
    if name == "pocketsphinx":
        from service.engines.pocketsphinx_engine import PocketSphinxEngine

        return PocketSphinxEngine()
    if name == "funasr":
        try:
            from service.engines.funasr_engine import FunASREngine
        except ImportError as exc:
            raise EngineUnavailable(
                "the funasr engine needs the optional extra: pip install torch==2.13.0 'earmark[funasr]'"
            ) from exc
        return FunASREngine(funasr_model, device=device)
    raise EngineUnavailable(f"unknown engine {name!r}; choose one of: {', '.join(ENGINE_NAMES)}")
