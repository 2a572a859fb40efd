"""Which engine hears a miss: the spoken language, identified first, picks it or refuses (issue 26).

A request that names its `language` is resolved as before (by the engine routed that language, or
the configured engine) and never identified. One that does not is, on a miss only (a hit never
pays for it): Whisper base listens to its first seconds of speech
(service/engines/language_id.py), then

- a language with its own route (`language_routes`, e.g. `zh=whisper-base`) goes to that engine;
- a language the configured engine serves goes to it;
- any other goes to the `*` route when there is one, else it is refused: HTTP 422 naming the
  language, its probability and what to configure, and nothing is cached (no entry, no alias,
  no negative entry);
- an identification from under `min_speech_s` of speech, or whose language has a probability
  under `min_probability`, goes to the configured engine, as before identification existed: 0.6 s
  of English was named Hebrew, Arabic, Japanese and even Mandarin (0.96), and 1.4 s of a spoken
  card name Greek (0.55);
- so does speech the configured engine's languages still have `KEEP_PROBABILITY` of, together:
  synthetic English voices were named French (0.59, English 0.29), while real Mandarin left
  English at most 0.02.

The cache's profile: with no routes it is the configured engine's own, unchanged (identification
only refuses; what it lets through is transcribed as before). With routes, a request without a
language is cached under a routed profile whose revision digests every route's engine, model and
revision and the identifier's settings: the engine an entry came from follows from its audio and
that profile, so entries of other engines or other routes never mix with it. Each entry names the
engine that made it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np

from earmark.errors import EarmarkError, Kind
from earmark.service.engines.base import Engine, RecognitionOptions
from earmark.service.engines.language_id import Identification, LanguageIdentifier
from earmark.service.engines.pool import EnginePool
from earmark.service.metrics import Metrics
from earmark.service.pipeline.profile import Profile

ROUTED_ENGINE = "routed"
# The configured engine keeps speech its own languages have at least this probability of
# (bench/README.md, "Language identification": real Mandarin gave English <= 0.02, English
# voices named another language kept English >= 0.17, except one synthetic Caribbean voice).
KEEP_PROBABILITY = 0.1
# Names of the languages a refusal most often names; others are named by their code alone.
LANGUAGE_NAMES = {
    "en": "English", "zh": "Chinese (Mandarin)", "yue": "Cantonese", "ja": "Japanese", "ko": "Korean",
    "de": "German", "fr": "French", "es": "Spanish", "ru": "Russian", "it": "Italian", "pt": "Portuguese",
    "ar": "Arabic", "hi": "Hindi", "vi": "Vietnamese", "th": "Thai", "id": "Indonesian", "nl": "Dutch",
    "fi": "Finnish", "sv": "Swedish", "pl": "Polish", "tr": "Turkish", "uk": "Ukrainian",
}


class LanguageNotServed(EarmarkError, ValueError):
    """Speech in a language no configured engine transcribes (HTTP 422); nothing is cached."""

    kind = Kind.NOT_SUPPORTED

    def __init__(self, identification: Identification, engine: Engine) -> None:
        language = identification.language
        name = LANGUAGE_NAMES.get(language, language)
        served = ", ".join(engine.capabilities.languages)
        hint = (f"to serve it, configure an engine for it: language_routes = \"{language}=whisper-base\" "
                f"(--language-routes {language}=whisper-base: the multilingual Whisper base installed with earmark)")
        if language == "zh":
            hint += ", or zh=funasr-ws (or zh=funasr-http) with --upstream-url (a FunASR server)"
        super().__init__(
            f"the audio is speech in {name} ('{language}', probability {identification.probability:.2f}, from its first "
            f"{identification.speech_s:.1f} s of speech), which engine {engine.name!r} ({engine.model_id}) does not "
            f"transcribe (it serves: {served}); nothing was cached. {hint[0].upper() + hint[1:]}; or, if the audio is in one of "
            f"{served}, send that as 'language' to skip identification")
        self.identification = identification
        # Beside `code` and `msg` in the error body (docs/api.md): what a client can act on.
        self.body_fields = {"detected_language": {"language": language, "probability": round(identification.probability, 3),
                                                  "speech_s": round(identification.speech_s, 2)}}


@dataclass(frozen=True)
class EngineRoute:
    """An engine and the pool its transcriptions run on."""

    engine: Engine
    pool: EnginePool


@dataclass(frozen=True)
class Identify:
    """A request to identify on a miss: the options and namespace each routed engine resolves."""

    options: RecognitionOptions
    namespace: str


class LanguageRouter:
    """Plans each request's profile and, on a miss, picks its engine by the spoken language."""

    def __init__(self, main: EngineRoute, routes: dict[str, EngineRoute], identifier: LanguageIdentifier | None,
                 min_probability: float, metrics: Metrics, min_speech_s: float = 1.5) -> None:
        """`main`: the configured engine; `routes`: engines by language code (`*`: any other);
        `identifier`: None when identification is off (requests then go to `main` unheard)."""
        self.main = main
        self.routes = routes
        self.identifier = identifier
        self.min_probability = min_probability
        self.min_speech_s = min_speech_s
        self.metrics = metrics
        self.revision = self._revision() if routes else ""

    @property
    def identifies(self) -> bool:
        """Whether a miss without a language is identified."""
        return self.identifier is not None and needs_identification(self.main.engine, bool(self.routes))

    def plan(self, options: RecognitionOptions, namespace: str) -> tuple[Profile, Identify | None]:
        """The request's cache profile, and what a miss identifies (None: the profile's engine
        runs unheard). Raises `EngineOptionError` (422) for options the engine cannot honour."""
        language = (options.language or "").strip().lower()
        if language not in ("", "auto"):
            code = _code(language)
            route = self._given(code)
            if route is not self.main and code not in route.engine.capabilities.languages:
                # A route chosen for this language whose engine takes no language option (a
                # FunASR server hears what it was built for: 'auto' only) is not told it.
                options = replace(options, language=None)
            return route.engine.resolve(options, namespace), None
        if not self.identifies:
            return self.main.engine.resolve(options, namespace), None
        profile = self.main.engine.resolve(options, namespace)
        if self.routes:
            profile = replace(profile, engine=ROUTED_ENGINE, model="by-language", revision=self.revision, language="auto")
        return profile, Identify(options, namespace)

    def _given(self, language: str) -> EngineRoute:
        """The engine of a language the client named: its route, else the configured engine
        when it serves it, else the `*` route (the configured engine refuses it when none). A
        variant of a routed language (zh-hant: Chinese in traditional characters) goes to that
        language's route when its engine writes the variant."""
        if language in self.routes:
            return self.routes[language]
        base = self.routes.get(language.split("-")[0])
        if base is not None and language in base.engine.capabilities.languages:
            return base
        if "*" in self.routes and not serves(self.main.engine, language):
            return self.routes["*"]
        return self.main

    def pool_for(self, profile: Profile) -> EnginePool:
        """The pool of a profile resolved without identification (`plan`'s None)."""
        for route in self.routes.values():
            if route.engine.name == profile.engine and route.engine.model_id == profile.model:
                return route.pool
        return self.main.pool

    async def choose(self, pcm_16k: np.ndarray, request: Identify) -> tuple[EngineRoute, Profile]:
        """The route and engine profile for this audio; raises `LanguageNotServed` (nothing is
        cached) for speech no engine serves."""
        assert self.identifier is not None
        identification = await asyncio.to_thread(self.identifier.identify, pcm_16k)
        if identification is None:
            return self._counted(self.main, request, None, "no_speech")
        self.metrics.language_id_seconds.observe(identification.seconds)
        language = identification.language
        if identification.speech_s < self.min_speech_s:
            return self._counted(self.main, request, identification, "too_short")
        if identification.probability < self.min_probability:
            return self._counted(self.main, request, identification, "uncertain")
        if language in self.routes:
            return self._counted(self.routes[language], request, identification, "routed")
        if serves(self.main.engine, language):
            return self._counted(self.main, request, identification, "served")
        if identification.probability_of(self.main.engine.capabilities.languages) >= KEEP_PROBABILITY:
            return self._counted(self.main, request, identification, "kept")
        if "*" in self.routes:
            return self._counted(self.routes["*"], request, identification, "routed")
        self._count(identification.language, "refused")
        raise LanguageNotServed(identification, self.main.engine)

    def _counted(self, route: EngineRoute, request: Identify, identification: Identification | None,
                 outcome: str) -> tuple[EngineRoute, Profile]:
        language = identification.language if identification is not None else ""
        self._count(language or "none", outcome)
        told = language if outcome in ("served", "routed") and language in route.engine.capabilities.languages else None
        return route, route.engine.resolve(replace(request.options, language=told), request.namespace)

    def _count(self, language: str, outcome: str) -> None:
        # Whisper knows 100 codes: a bounded label.
        self.metrics.language_identifications.labels(language=language, outcome=outcome).inc()

    def _revision(self) -> str:
        """Everything that decides which engine hears an audio and how: each route's engine,
        the configured one's, and the identifier's settings."""
        described = {code: [route.engine.name, route.engine.model_id, route.engine.revision]
                     for code, route in sorted(self.routes.items())}
        described["(configured)"] = [self.main.engine.name, self.main.engine.model_id, self.main.engine.revision]
        identifier = self.identifier.revision if self.identifier is not None else "off"
        document = {"routes": described, "identifier": identifier, "min_probability": self.min_probability,
                    "min_speech_s": self.min_speech_s, "keep_probability": KEEP_PROBABILITY}
        return hashlib.blake2b(json.dumps(document, sort_keys=True).encode(), digest_size=8).hexdigest()


def needs_identification(engine: Engine, routed: bool) -> bool:
    """Whether identifying the language can change how a miss is heard: with routes, or when
    the configured engine does not serve every language Whisper names (a multilingual engine
    with no routes serves whatever is said, and is never made to wait)."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return routed or not all(serves(engine, code) for code in _LANGUAGE_CODES)


def serves(engine: Engine, language: str) -> bool:
    """Whether `engine` transcribes `language` (an engine taking only "auto", an upstream
    server, is trusted with any)."""
    languages = engine.capabilities.languages
    return language in languages or "auto" in languages


def _code(language: str) -> str:
    from earmark.service.engines.base import _LANGUAGE_ALIASES

    return _LANGUAGE_ALIASES.get(language, language)
