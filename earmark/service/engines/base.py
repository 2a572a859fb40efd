"""The engine interface: resolve request options into a profile, and transcribe PCM.

An engine states what it supports; an option it cannot honour is refused with a message naming
what it does support (HTTP 422), never silently ignored, because a silently ignored option would
cache a transcript under a profile that did not produce it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from earmark.errors import quoted
from earmark.service.engines.errors import EngineFailure, EngineOptionError
from earmark.service.pipeline.profile import Profile

_LANGUAGE_ALIASES = {
    "en": "en", "en-us": "en", "en_us": "en", "en-gb": "en", "english": "en",
    "zh": "zh", "zh-cn": "zh", "zh-hans": "zh", "zh-sg": "zh", "cmn": "zh", "chinese": "zh", "mandarin": "zh",
    # Chinese in traditional characters (an engine that writes either script offers "zh-hant")
    "zh-hant": "zh-hant", "zh-tw": "zh-hant", "zh-hk": "zh-hant", "zh_tw": "zh-hant",
    "yue": "yue", "cantonese": "yue", "ja": "ja", "japanese": "ja", "ko": "ko", "korean": "ko",
}


def installed_version(package: str) -> str:
    """The installed version of `package` (part of an engine's revision), or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def available_cores() -> int:
    """Cores this process may run on (its affinity, not the machine's count)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RecognitionOptions:
    """Options as the client sent them; None means "not given, use the engine default"."""

    language: str | None = None
    use_itn: bool | None = None
    hotwords: tuple[str, ...] = ()
    prompt: str = ""


@dataclass(frozen=True)
class Word:
    """One recognised word with its start and end in seconds from the start of the audio."""

    word: str
    start: float
    end: float
    probability: float | None = None


@dataclass(frozen=True)
class Segment:
    """A stretch of the transcript with its times, as the engine cut it (Whisper: a phrase or
    sentence; PocketSphinx: the whole utterance). The decoder statistics are None when the
    engine does not report them."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    tokens: tuple[int, ...] = ()
    seek: int = 0
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None

    def as_dict(self, segment_id: int) -> dict:
        """The segment as stored in an entry and returned in `result.segments` (times in
        seconds, rounded to milliseconds; statistics only when the engine reports them)."""
        shaped: dict = {"id": segment_id, "start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}
        if self.words:
            shaped["words"] = [
                {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                | ({} if w.probability is None else {"probability": round(w.probability, 4)})
                for w in self.words
            ]
        if self.tokens:
            shaped["tokens"] = list(self.tokens)
            shaped["seek"] = self.seek
        for name in ("avg_logprob", "compression_ratio", "no_speech_prob"):
            value = getattr(self, name)
            if value is not None:
                shaped[name] = round(value, 4)
        return shaped


@dataclass(frozen=True)
class Transcript:
    """What the engine heard: the text, and its segments with times when the engine gives them."""

    text: str
    normalized_text: str
    language: str
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What an engine can honour, used to validate options and to tell clients."""

    languages: tuple[str, ...]
    default_language: str
    itn: tuple[bool, ...] = (False,)
    default_itn: bool = False
    hotwords: bool = False
    prompt: bool = False
    extra: dict = field(default_factory=dict)


class Engine(ABC):
    """A speech recogniser. `transcribe` may be called from several worker threads at once."""

    name: str
    model_id: str
    revision: str
    capabilities: Capabilities

    def resolve(self, options: RecognitionOptions, namespace: str = "") -> Profile:
        """Validate `options` against the capabilities and return the profile they produce."""
        caps = self.capabilities
        language = caps.default_language
        if options.language is not None and options.language.strip().lower() not in ("", "auto"):
            wanted = _LANGUAGE_ALIASES.get(options.language.strip().lower(), options.language.strip().lower())
            if wanted not in caps.languages:
                raise EngineOptionError(
                    f"language {quoted(options.language)} is not supported by engine {self.name!r}; "
                    f"it supports: {', '.join(caps.languages)} (or 'auto')"
                )
            language = wanted
        use_itn = caps.default_itn if options.use_itn is None else options.use_itn
        if use_itn not in caps.itn:
            supported = " or ".join(f"use_itn={str(v).lower()}" for v in caps.itn)
            raise EngineOptionError(f"engine {self.name!r} does not support use_itn={str(use_itn).lower()}; send {supported}")
        if options.hotwords and not caps.hotwords:
            raise EngineOptionError(f"engine {self.name!r} does not support hotwords; leave 'hotwords' empty")
        if options.prompt and not caps.prompt:
            raise EngineOptionError(f"engine {self.name!r} does not support a prompt; leave 'prompt' empty")
        return Profile(
            engine=self.name,
            model=self.model_id,
            revision=self.revision,
            language=language,
            use_itn=use_itn,
            hotwords=tuple(options.hotwords),
            prompt=options.prompt,
            namespace=namespace,
        )

    def worker_spec(self) -> tuple | None:
        """How to rebuild this engine in a worker process, as (factory, args); None to run it
        in threads. Engines that hold the GIL while they work must return a spec."""
        return None

    @abstractmethod
    def transcribe(self, pcm_16k: np.ndarray, profile: Profile) -> Transcript:
        """Transcribe 16 kHz mono float32 PCM under `profile` (as returned by `resolve`)."""

    def warm_up(self) -> None:  # noqa: B027 - optional hook: most engines need none
        """Run the engine once on a little audio, so that the first request does not pay for
        one-time set-up. Called on the engine's worker threads at start-up."""

    def close(self) -> None:  # noqa: B027 - optional hook: most engines hold nothing to release
        """Release models and threads."""

    def status(self) -> dict | None:
        """What /health shows about the engine beyond its name (an upstream's state); None: nothing."""
        return None


class AsyncEngine(Engine):
    """An engine that waits rather than computes (a remote recognition server): it runs as a
    coroutine on the service's event loop, not on a worker thread or process, so a hundred
    requests in flight cost a hundred sockets, not a hundred threads (service/engines/pool.py)."""

    @abstractmethod
    async def start(self, metrics) -> None:
        """Open connections and start background checks on the running loop; `metrics` is the
        service's `service.metrics.Metrics`."""

    @abstractmethod
    async def transcribe_async(self, pcm_16k: np.ndarray, profile: Profile, timeout_s: float) -> Transcript:
        """Transcribe 16 kHz mono float32 PCM under `profile`, giving up after `timeout_s`."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop background checks and close connections."""

    def transcribe(self, pcm_16k: np.ndarray, profile: Profile) -> Transcript:
        """Not used: the engine pool awaits `transcribe_async` on the service's loop."""
        raise EngineFailure(f"engine {self.name!r} runs on the event loop; use transcribe_async")
