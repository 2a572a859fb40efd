"""service/config.py, the one gate every setting passes at start: each bad value, from the
command line, the environment or a --config TOML alike, stops the start with one line naming
the setting, its value and what is allowed, exit status 2 and no traceback; every setting of
the typed config object is either checked or listed as taking any value of its type."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest

from earmark.service.config import (
    FREE_SETTINGS,
    REFERENCE_SETTINGS,
    ConfigError,
    FuzzyThresholds,
    Settings,
    _rules,
    load_settings,
)
from earmark.index.connection import redact_url

# A value the gate must refuse for every setting it checks: the test below fails when a setting
# gains a rule without an entry here, or an entry here is accepted.
BAD = {
    "host": "", "port": 0, "key_prefix": "", "maxmemory": "1.5gb", "engine": "whisper-large", "device": "tpu",
    "whisper_beam_size": 0, "language_id_window_s": 31.0, "language_id_min_probability": 1.5, "min_span_s": 0.5,
    "language_id_min_speech_s": 4.0,
    "language_routes": "zh=whisper-large", "console_session_s": 0.0, "api_keys_check_s": -1.0, "upstream_url": "ftp://asr.internal",
    "upstream_response_format": "text", "upstream_max_connections": 0, "upstream_connect_timeout_s": 0.0,
    "upstream_retries": 11, "upstream_health_interval_s": -5.0, "upstream_ca_file": "/nonexistent/ca.pem", "ttl_s": 0, "negative_ttl_s": -1,
    "max_upload_bytes": 0, "max_duration_s": -60.0, "max_transcript_chars_per_s": 0.0, "max_transcript_chars_floor": 0, "upload_timeout_s": 0.0, "upload_min_bytes_per_s": 0,
    "max_uploads_in_progress": 0, "decode_budget_s": 0.0, "engine_workers": -1, "engine_queue": -1,
    "engine_timeout_s": 0.0, "lock_ttl_ms": 10, "stream_maxlen": 0, "events_maxlen": -1, "review_margin": 1.5,
    "audit_cache_s": -1.0, "index_type": "ivf-pq", "log_level": "loud",
    "thresholds.min_embedding_similarity": -1.5, "thresholds.min_window_score": 1.2,
    "thresholds.min_short_window_score": -0.1, "thresholds.min_detail_score": 2.0, "thresholds.min_pitch_score": -1.0,
    "thresholds.duration_tolerance_s": -0.1, "thresholds.duration_tolerance_ratio": 1.0,
    "thresholds.min_speech_s": -0.5, "thresholds.top_k": 0,
}


def _load(tmp_path: Path, name: str, value) -> Settings:
    """Load settings with one value set as an operator would: a threshold in the TOML's
    [thresholds] table, any other setting as an override (what the CLI's flags and environment become)."""
    if name.startswith("thresholds."):
        config = tmp_path / "earmark.toml"
        config.write_text(f"[thresholds]\n{name.split('.', 1)[1]} = {_toml(value)}\n")
        return load_settings(config)
    return load_settings(**{name: value})


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def test_every_setting_is_checked_or_declared_free():
    checked = {name for name, _, _, _ in _rules(Settings())}
    every = {f.name for f in fields(Settings)} | {f"thresholds.{f.name}" for f in fields(FuzzyThresholds)}
    assert every == checked | FREE_SETTINGS | REFERENCE_SETTINGS, "a setting nobody checks, or a rule for no setting"
    assert not checked & FREE_SETTINGS and set(BAD) == checked, "each checked setting needs a bad value in BAD"


def test_the_defaults_pass():
    assert load_settings() == replace(Settings(), data_dir=Path(".earmark").resolve())


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_value_is_refused_naming_the_setting_its_value_and_what_is_allowed(tmp_path, name):
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, name, BAD[name])
    message = str(refused.value)
    assert message.count("\n") == 0, message
    assert message.startswith(f"{name} = {BAD[name]!r} is not allowed: use "), message


@pytest.mark.parametrize("name, value, allowed", [
    ("port", "eighty", "a whole number"),
    ("port", 80.5, "a whole number"),
    ("port", True, "a whole number"),
    ("ttl_s", "1e3", "a whole number"),
    ("max_duration_s", "nan", "a finite number"),
    ("decode_budget_s", "inf", "a finite number"),
    ("metrics_namespace_labels", "maybe", "true or false"),
    ("thresholds.top_k", 2.5, "a whole number"),
    ("thresholds.top_k", -1, "a whole number of candidates from 1 to 1024"),
    ("thresholds.min_speech_s", "short", "a number"),
    ("thresholds.enabled", "sometimes", "true or false"),
])
def test_values_of_the_wrong_kind_are_refused(tmp_path, name, value, allowed):
    with pytest.raises(ConfigError, match=f"^{name.replace('.', '[.]')} = .* is not allowed: use {allowed}$"):
        _load(tmp_path, name, value)


def test_every_bad_setting_is_reported_at_once_one_a_line(tmp_path):
    config = tmp_path / "earmark.toml"
    config.write_text('log_level = "loud"\n[thresholds]\ntop_k = -1\nmin_speech_s = -1\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(config, engine_queue=-1)
    lines = str(refused.value).splitlines()
    assert [line.split(" = ")[0] for line in lines] == ["engine_queue", "log_level", "thresholds.min_speech_s",
                                                        "thresholds.top_k"]


def test_settings_built_in_code_pass_the_same_gate():
    with pytest.raises(ConfigError, match="^thresholds.top_k = 0 is not allowed"):
        replace(Settings(), fuzzy=FuzzyThresholds(top_k=0)).validated()
    with pytest.raises(ConfigError, match=r"^max_duration_s = inf is not allowed: use a finite number$"):
        Settings(max_duration_s=math.inf).validated()
    with pytest.raises(ConfigError, match=r"^port = '8000' is not allowed: use a whole number$"):
        Settings(port="8000").validated()  # type: ignore[arg-type]


def test_what_the_values_name_is_checked_and_the_level_is_taken_in_any_case(tmp_path):
    with pytest.raises(ConfigError, match=r"^redis_url = 'http://127.0.0.1:6379' is not allowed: unsupported store URL"):
        load_settings(redis_url="http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match=r"^redis_url = 'redis://\*\*\*@127.0.0.1:port/0' is not allowed"):
        load_settings(redis_url="redis://:s3cret@127.0.0.1:port/0")  # the password is not repeated
    with pytest.raises(ConfigError, match=r"^api_keys_file = '.*missing' is not usable: cannot read the API keys file"):
        load_settings(api_keys_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"^upstream_url = '' is not allowed: .*engine openai forwards misses there"):
        load_settings(engine="openai")
    with pytest.raises(ConfigError) as refused:
        load_settings(engine="openai", upstream_url="ftp://asr:s3cret@asr.internal")
    assert str(refused.value).startswith("upstream_url = 'ftp://***@asr.internal' is not allowed")
    with pytest.raises(ConfigError) as refused:
        Settings(admin_token=12345).validated()  # type: ignore[arg-type]
    assert str(refused.value) == "admin_token = (hidden) is not allowed: use text"
    assert load_settings(engine="openai", upstream_url="http://asr.internal:8000").upstream_url
    assert load_settings(log_level="WARNING").log_level == "warning"
    assert load_settings(maxmemory="512MB").maxmemory == "512MB"
    with pytest.raises(ConfigError, match="fuzzy tier's settings go in a \\[thresholds\\] table"):
        load_settings(fuzzy={"top_k": 3})


def _earmark(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EARMARK_") and k != "REDIS_URL"}
    environment.update(PYTHONPATH=str(Path(__file__).parent.parent), **(env or {}))
    return subprocess.run([sys.executable, "-m", "earmark", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=environment)


def _refused(result: subprocess.CompletedProcess, *reasons: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"earmark: {reason}" for reason in reasons], lines


def test_the_command_line_refuses_bad_flags_environment_and_config_files_alike(tmp_path):
    """As a user runs it: `earmark serve` with a bad flag, a bad environment variable and a bad
    --config, and `earmark recognize` (in-process) with the same file: one line a setting,
    exit status 2, no traceback, nothing started."""
    levels = "use one of critical, error, warning, info, debug"
    _refused(_earmark("serve", "--log-level", "loud", cwd=tmp_path), f"log_level = 'loud' is not allowed: {levels}")
    _refused(_earmark("serve", cwd=tmp_path, env={"EARMARK_LOG_LEVEL": "loud", "EARMARK_ENGINE_QUEUE": "-1"}),
             "engine_queue = -1 is not allowed: use 0 or more", f"log_level = 'loud' is not allowed: {levels}")
    config = tmp_path / "earmark.toml"
    config.write_text("[thresholds]\ntop_k = 0\nmin_speech_s = -1\nduration_tolerance_s = -0.1\n")
    reasons = ("thresholds.duration_tolerance_s = -0.1 is not allowed: use 0 seconds or more",
               "thresholds.min_speech_s = -1.0 is not allowed: use 0 seconds or more",
               "thresholds.top_k = 0 is not allowed: use a whole number of candidates from 1 to 1024")
    _refused(_earmark("serve", "--config", str(config), cwd=tmp_path), *reasons)
    _refused(_earmark("recognize", str(Path(__file__).parent / "fixtures" / "recorded.wav"), "--config", str(config),
                      cwd=tmp_path), *reasons)
    _refused(_earmark("serve", "--index-type", "ivf-pq", cwd=tmp_path),
             "index_type = 'ivf-pq' is not allowed: use one of auto, flat, hnsw, ivf")
    assert not (tmp_path / ".earmark").exists()  # refused before the embedded store was started


def test_redact_url_hides_the_user_and_password_and_keeps_the_rest():
    assert redact_url("redis://user:s3cret@store:6379/0") == "redis://***@store:6379/0"
    assert redact_url("unix://:s3cret@/run/redis.sock?db=1") == "unix://***@/run/redis.sock?db=1"
    assert redact_url("https://u:p%40ss@asr.internal:8000/v1?x=1", mask="") == "https://asr.internal:8000/v1?x=1"
    assert redact_url("redis://store:6379/0") == "redis://store:6379/0"
