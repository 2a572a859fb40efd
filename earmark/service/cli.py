"""The `earmark` command line: `serve` runs the service, `recognize` transcribes files.

Every option also reads from an `EARMARK_`-prefixed environment variable. User errors exit
non-zero with a one-line reason, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click
import httpx

from earmark.service.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar


def _option(*names: str, env: str | list[str], **kwargs):
    return click.option(*names, envvar=env, show_envvar=True, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """earmark: a speech-recognition cache that also recognises re-encoded copies."""


@main.command()
@_option("--host", env="EARMARK_HOST", default=None, help="Interface to listen on [127.0.0.1].")
@_option("--port", env="EARMARK_PORT", type=int, default=None, help="Port to listen on [8000].")
@_option("--data-dir", env="EARMARK_DATA_DIR", default=None, help="Embedded store data directory [./.earmark].")
@_option("--redis-url", env=["EARMARK_REDIS_URL", "REDIS_URL"], default=None,
         help="Use an existing Redis/Valkey (redis://, rediss://, unix://, redis+sentinel://, redis+cluster://).")
@_option("--bulk-dir", env="EARMARK_BULK_DIR", default=None,
         help="Directory for entries' verification bytes, outside the store's memory; shared by every instance "
              "[DATA_DIR/bulk with the embedded store; in the store with --redis-url].")
@_option("--engine", env="EARMARK_ENGINE", default=None, help="Recognition engine: whisper, whisper-base (multilingual), pocketsphinx, funasr, or an upstream server: openai, funasr-http, funasr-ws [whisper].")
@_option("--whisper-model", env="EARMARK_WHISPER_MODEL", default=None,
         help="CTranslate2 Whisper model directory (engine whisper) [the bundled tiny.en].")
@_option("--funasr-model", env="EARMARK_FUNASR_MODEL", default=None, help="Local FunASR model directory (engine funasr).")
@_option("--device", env="EARMARK_DEVICE", default=None, help="Device for funasr and whisper: cpu, cuda, cuda:0 [cpu].")
@_option("--config", "config_file", env="EARMARK_CONFIG", default=None, help="TOML settings file (thresholds from `earmark tune`).")
@_option("--admin-token", env="EARMARK_ADMIN_TOKEN", default=None, help="Bearer token required by /entries, GET /audit and the web console's history, entries and audit pages.")
@_option("--api-keys", "api_keys_file", env="EARMARK_API_KEYS", default=None,
         help="File of '<key> <namespace>' lines; when given, /recognize, /lookup and /v1/... need 'Authorization: Bearer <key>'.")
@_option("--upstream-url", env="EARMARK_UPSTREAM_URL", default=None,
         help="Engines openai and funasr-http: the recognition server misses are forwarded to (http://host:port); "
              "funasr-ws: the FunASR runtime's WebSocket server (ws://host:10095 or wss://host:10095).")
@_option("--upstream-ca-file", env="EARMARK_UPSTREAM_CA_FILE", default=None,
         help="funasr-ws over wss://: a PEM file of the certificates the server's is checked against (its self-signed one).")
@_option("--upstream-tls-verify/--no-upstream-tls-verify", env="EARMARK_UPSTREAM_TLS_VERIFY", default=None,
         help="funasr-ws over wss://: check the server's certificate [on]; off as FunASR's own client does.")
@_option("--upstream-api-key", env="EARMARK_UPSTREAM_API_KEY", default=None,
         help="Bearer key sent upstream; prefer the environment variable (the command line is visible to others).")
@_option("--upstream-model", env="EARMARK_UPSTREAM_MODEL", default=None,
         help="Model name sent to an openai upstream [whisper-1], a label for funasr-http and funasr-ws [funasr-runtime]; part of the profile.")
@_option("--upstream-revision", env="EARMARK_UPSTREAM_REVISION", default=None,
         help="Label of the upstream model's version, part of the profile: change it when the upstream's model changes.")
@_option("--upstream-max-connections", env="EARMARK_UPSTREAM_MAX_CONNECTIONS", type=int, default=None,
         help="Requests sent upstream at once [8].")
@_option("--maxmemory", env="EARMARK_MAXMEMORY", default=None, help="Embedded store memory bound [1gb].")
@_option("--engine-workers", env="EARMARK_ENGINE_WORKERS", type=int, default=None, help="Transcriptions at once; 0: the engine's choice (whisper: one per core; pocketsphinx, funasr: 1; openai, funasr-http, funasr-ws: --upstream-max-connections) [0].")
@_option("--engine-queue", env="EARMARK_ENGINE_QUEUE", type=int, default=None, help="Requests that may wait for the engine [16].")
@_option("--index-type", env="EARMARK_INDEX_TYPE", default=None,
         help="Vector index: flat (exact search), hnsw, ivf (an inverted file of 8-bit codes), or auto (exact while "
              "small, HNSW from 50,000 entries a profile, IVF from 1,000,000) [auto].")
@_option("--language-id/--no-language-id", env="EARMARK_LANGUAGE_ID", default=None,
         help="Identify the spoken language of each miss (Whisper base) and refuse (422, nothing cached) or route "
              "speech the engine does not serve [on].")
@_option("--language-routes", env="EARMARK_LANGUAGE_ROUTES", default=None,
         help="One engine per language, e.g. 'zh=whisper-base,*=whisper-base' (*: any language the engine does not serve).")
@_option("--model-cache-dir", env="EARMARK_MODEL_CACHE_DIR", default=None,
         help="Where the multilingual Whisper base is assembled from its wheels [$XDG_CACHE_HOME/earmark or ~/.cache/earmark].")
@_option("--segment-reuse/--no-segment-reuse", env="EARMARK_SEGMENT_REUSE", default=None,
         help="Find cached recordings inside a missed upload (a prompt in a call) and send the engine only the rest [on].")
@_option("--min-span-s", env="EARMARK_MIN_SPAN_S", type=float, default=None,
         help="Cached recordings with less speech than this are not looked for inside uploads [1.5].")
@_option("--log-level", env="EARMARK_LOG_LEVEL", default=None, help="debug, info, warning, error, critical [info].")
def serve(config_file: str | None, **options) -> None:
    """Start the HTTP service (with an embedded store unless --redis-url is given)."""
    from earmark.service import memory

    memory.limit_arenas()  # first, before the engine's and the decoder's threads (service/memory.py)
    settings = _settings(config_file, options)
    _configure_logging(settings.log_level)
    import uvicorn

    from earmark.service.api.app import create_app

    engine, route_engines = _check_startable(settings)
    settings, server = _with_store(settings)
    # uvicorn re-raises SIGTERM/SIGINT once it has shut down; as an exception (not the default
    # handler, which ends the process on the spot) it lets the store below be stopped properly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_on_signal)
    signal.signal(signal.SIGHUP, _reload_on_signal)
    try:
        app = create_app(settings, engine=engine, route_engines=route_engines)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    finally:
        if server is not None:
            for signum in (signal.SIGTERM, signal.SIGINT):  # a second Ctrl-C must not cut the stop short
                signal.signal(signum, signal.SIG_IGN)
            server.stop()


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_option("--url", env="EARMARK_URL", default=None, help="A running earmark server; without it, earmark runs in-process.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
@_option("--language", env="EARMARK_LANGUAGE", default=None, help="Language option sent with each file.")
@_option("--api-key", env="EARMARK_API_KEY", default=None, help="API key sent as 'Authorization: Bearer <key>' (when the server has --api-keys).")
@_option("--data-dir", env="EARMARK_DATA_DIR", default=None, help="In-process mode: store data directory [./.earmark].")
@_option("--redis-url", env=["EARMARK_REDIS_URL", "REDIS_URL"], default=None, help="In-process mode: an existing store.")
@_option("--config", "config_file", env="EARMARK_CONFIG", default=None, help="In-process mode: TOML settings file.")
def recognize(files: tuple[str, ...], url: str | None, as_json: bool, language: str | None, api_key: str | None,
              config_file: str | None, **options) -> None:
    """Transcribe FILES through the cache and print text and tier."""
    for name in files:
        if not Path(name).is_file():
            _fail(f"no such file: {name}")
    fields = {"language": language} if language else {}
    failed = False
    with _recognition_client(url, _auth_headers(api_key), config_file, options) as client:
        for name in files:
            with open(name, "rb") as handle:
                try:
                    response = client.post("/recognize", files={"file": (Path(name).name, handle, "application/octet-stream")}, data=fields)
                except httpx.HTTPError as exc:
                    _fail(f"cannot reach {url}: {exc}")
            body = _json_or_none(response)
            failed |= response.status_code != 200
            if as_json:
                click.echo(json.dumps({"file": name, "status": response.status_code, **(body or {})}, ensure_ascii=False))
            elif response.status_code == 200 and body is not None:
                cache, result = body["cache"], body["result"] or {}
                click.echo(f"{name}\t{cache['tier']}\t{result.get('text', '')}")
            else:
                click.echo(f"{name}\terror {response.status_code}\t{(body or {}).get('msg', response.text)}", err=True)
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSON-lines output, one line a file; a run resumes from it.")
@_option("--url", env="EARMARK_URL", default=None, help="A running earmark server; without it, earmark runs in-process.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True, help="Requests in flight.")
@click.option("--retry-failed", is_flag=True, help="Also redo files whose last line in --out is an error.")
@_option("--language", env="EARMARK_LANGUAGE", default=None, help="Language option sent with each file.")
@_option("--api-key", env="EARMARK_API_KEY", default=None, help="API key sent as 'Authorization: Bearer <key>' (when the server has --api-keys).")
@_option("--data-dir", env="EARMARK_DATA_DIR", default=None, help="In-process mode: store data directory [./.earmark].")
@_option("--redis-url", env=["EARMARK_REDIS_URL", "REDIS_URL"], default=None, help="In-process mode: an existing store.")
@_option("--config", "config_file", env="EARMARK_CONFIG", default=None, help="In-process mode: TOML settings file.")
def batch(source: Path, out: Path, url: str | None, concurrency: int, retry_failed: bool, language: str | None,
          api_key: str | None, config_file: str | None, **options) -> None:
    """Recognize every file of SOURCE (a directory, or a text file listing paths) into --out."""
    from earmark.service.ops.batch import list_inputs, run_batch

    paths = list_inputs(source)
    fields = {"language": language} if language else {}
    headers = {**_auth_headers(api_key), "X-Earmark-Client": "batch"}  # its events say "batch" (docs/api.md)
    with _recognition_client(url, headers, config_file, options) as client:
        if url:
            try:
                client.get("/health").raise_for_status()
            except httpx.HTTPError as exc:
                _fail(f"cannot reach {url}: {exc}")

        def post(path: Path) -> tuple[int, dict | None]:
            with open(path, "rb") as handle:
                try:
                    response = client.post("/recognize", files={"file": (path.name, handle, "application/octet-stream")},
                                           data=fields)
                except httpx.HTTPError as exc:
                    return 0, {"msg": f"request failed: {exc}"}
            return response.status_code, _json_or_none(response)

        started = time.perf_counter()
        tally = run_batch(paths, out, post, concurrency=concurrency, retry_failed=retry_failed)
    click.echo(tally.summary(time.perf_counter() - started))
    sys.exit(1 if tally.errors else 0)


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.html, summary.json and thresholds.toml.")
@click.option("--target-far", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="False-accept rate allowed on the tuning pairs.")
@click.option("--margin", type=click.FloatRange(0.0, 0.5), default=0.02, show_default=True,
              help="Safety margin added to the threshold the pairs allow.")
@click.option("--others", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Directory input: other recordings each file is judged against.")
@click.option("--allow-lower", is_flag=True,
              help="Allow thresholds under the built-in ones (which were set on minimal pairs your audio may lack).")
def tune(source: Path, out: Path, target_far: float, margin: float, others: int, allow_lower: bool) -> None:
    """Choose the fuzzy tier's thresholds on your own audio (a directory, or a CSV of
    query,original pairs) and write a report and a --config file."""
    from earmark.service.config import FuzzyThresholds
    from earmark.service.ops.tune import Scorer, TuneResult, choose_threshold, csv_pairs, directory_pairs, thresholds_toml
    from earmark.service.ops.tune_report import render_report

    scorer = Scorer(FuzzyThresholds())
    try:
        pairs = directory_pairs(source, scorer, others) if source.is_dir() else csv_pairs(source, scorer)
        result = TuneResult(target_far=target_far, margin=margin)
        with click.progressbar(pairs, label="scoring pairs", item_show_func=lambda pair: pair.query[:40] if pair else "") as bar:
            result.pairs.extend(bar)
    except (OSError, ValueError, IndexError) as exc:
        _fail(f"cannot tune on {source}: {exc}")
    if not result.positives or not result.negatives:
        _fail(f"{source} gave {len(result.positives)} copies and {len(result.negatives)} negatives; "
              "tuning needs at least two recordings (or labelled pairs of both kinds)")
    negative_scores = [pair.score for pair in result.negatives]
    result.floor = 0.0 if allow_lower else FuzzyThresholds().min_window_score
    result.allowed_by_pairs = choose_threshold(negative_scores, target_far, margin)
    result.threshold = choose_threshold(negative_scores, target_far, margin, result.floor)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result.summary(), indent=2))
    (out / "thresholds.toml").write_text(thresholds_toml(result))
    (out / "report.html").write_text(render_report(result))
    click.echo(f"threshold {result.threshold:.3f}: recall {result.recall():.1%} of {len(result.positives)} copies, "
               f"false accepts {result.false_accept_rate():.2%} of {len(result.negatives)}; "
               f"wrote {out}/report.html, summary.json, thresholds.toml (earmark serve --config {out}/thresholds.toml)")


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.html, audit.json and the CSV tables.")
@_option("--url", env="EARMARK_URL", default=None, help="A running earmark server: its GET /audit.")
@_option("--admin-token", env="EARMARK_ADMIN_TOKEN", default=None, help="With --url: the server's admin token.")
@_option("--redis-url", env=["EARMARK_REDIS_URL", "REDIS_URL"], default=None, help="The deployment's store.")
@_option("--bulk-dir", env="EARMARK_BULK_DIR", default=None,
         help="With --redis-url: the deployment's bulk directory (entries' verification bytes).")
@_option("--data-dir", env="EARMARK_DATA_DIR", default=None,
         help="A stopped deployment's data directory (its embedded store is started here) [./.earmark].")
@_option("--config", "config_file", env="EARMARK_CONFIG", default=None,
         help="The deployment's TOML settings (key prefix, thresholds, review margin).")
@click.option("--review-margin", type=click.FloatRange(0.0, 1.0), default=None,
              help="List fuzzy hits scoring under the threshold plus this [the setting review_margin, 0.05].")
@click.option("--top", type=click.IntRange(1, 1000), default=20, show_default=True, help="Most reused entries listed.")
def audit(out: Path, url: str | None, admin_token: str | None, config_file: str | None, review_margin: float | None,
          top: int, **options) -> None:
    """Write a dedup audit of a deployment: what was reused, how close fuzzy hits came to the
    threshold, and copies stored twice (report.html, audit.json, CSV files)."""
    from earmark.index.breaker import StoreUnavailable
    from earmark.service.ops.audit import AuditOptions, audit_settings_store
    from earmark.service.ops.audit_report import write_audit

    if url:
        if options.get("redis_url") or options.get("data_dir"):
            _fail("give one of --url, --redis-url or --data-dir")
        params: dict[str, str | int | float] = {"top": top}
        if review_margin is not None:
            params["review_margin"] = review_margin
        click.echo(f"building the audit on {url} ...", err=True)
        try:
            response = httpx.get(f"{url.rstrip('/')}/audit", params=params, headers=_auth_headers(admin_token), timeout=None)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach {url}: {exc}")
        body = _json_or_none(response) or {}
        if response.status_code != 200:
            _fail(f"{url}/audit answered {response.status_code}: {body.get('msg') or response.text[:200]}")
        report = {key: value for key, value in body.items() if key not in ("code", "msg")}
    else:
        settings = _settings(config_file, options)
        if not settings.redis_url and not Path(settings.data_dir).is_dir():
            _fail(f"no earmark data directory at {settings.data_dir}; give --url, --redis-url or --data-dir")
        settings, server = _with_store(settings)
        margin = settings.review_margin if review_margin is None else review_margin
        source = f"the store at {settings.redis_url}" if server is None else f"the data directory {settings.data_dir}"
        bars = _StageBars()
        try:
            report = asyncio.run(audit_settings_store(settings, AuditOptions(review_margin=margin, top=top),
                                                      source=source, progress=bars))
        except StoreUnavailable as exc:  # also a store that refuses (StoreRefused)
            _fail(f"the store is unreachable: {exc}")
        finally:
            bars.close()
            if server is not None:
                server.stop()
    try:
        write_audit(report, out)
    except OSError as exc:
        _fail(f"cannot write the audit into {out}: {exc.strerror or exc}")
    summary = report["summary"]
    rate = "-" if summary["hit_rate"] is None else f"{summary['hit_rate']:.1%}"
    click.echo(f"{summary['answers']} answers, hit rate {rate}, engine time saved {summary['engine_seconds_saved']:.1f} s; "
               f"{summary['entries']} entries, {summary['near_threshold_hits']} fuzzy hits near the threshold, "
               f"{summary['near_duplicate_clusters']} near-duplicate clusters; wrote {out}/report.html, audit.json "
               "and CSV files")


class _StageBars:
    """A progress bar per stage of a long job, fed `(stage, done, total)`."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: ProgressBar[int] | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bar
        if stage != self.stage or bar is None:
            self.close()
            self.stage, self.bar = stage, (bar := click.progressbar(length=total, label=stage, show_pos=True))
            bar.__enter__()
        bar.update(done - bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _auth_headers(api_key: str | None) -> dict[str, str]:
    """The Authorization header a server with --api-keys wants; none without a key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@contextlib.contextmanager
def _recognition_client(url: str | None, headers: dict[str, str], config_file: str | None, options: dict):
    """A client for `/recognize`: against a running server (`url`), or in-process on the
    configured store (the embedded one is started here and stopped on the way out)."""
    if url:
        with httpx.Client(base_url=url.rstrip("/"), timeout=None, headers=headers) as client:
            yield client
        return
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

    from earmark.service.api.app import create_app

    settings, server = _with_store(_settings(config_file, options))
    try:
        with TestClient(create_app(settings), headers=headers) as client:
            yield client
    finally:
        if server is not None:
            server.stop()


def _settings(config_file: str | None, options: dict) -> Settings:
    """The settings from the config file, the environment and the flags, through the one gate
    (service/config.py): a bad value ends the command with its one-line reason, exit status 2."""
    try:
        return load_settings(config_file, **{k: v for k, v in options.items() if v is not None})
    except ConfigError as exc:
        for reason in str(exc).splitlines():  # several bad settings are reported at once, one a line
            click.echo(f"earmark: {reason}", err=True)
        sys.exit(2)


def _check_startable(settings: Settings):
    """Load the engine before the server starts, so that one that cannot load (a missing model,
    a missing extra) stops the start with its one-line reason, and refuse a store that is a
    replica (index/connection.replica_refusal); the settings themselves were checked by
    `_settings`.

    Returns the engine when loading it was the check (the service then uses it: the model is
    loaded once, before the port opens, so no request pays for it), else None, and the language
    routes' engines by language."""
    from earmark.index.connection import replica_refusal
    from earmark.service.engines.errors import EngineUnavailable
    from earmark.service.engines.registry import engine_for

    if settings.redis_url:  # its form was checked with the settings; a replica only shows when asked
        refusal = replica_refusal(settings.redis_url)
        if refusal is not None:
            _fail(refusal)
    try:
        # pocketsphinx loads in its worker processes, which the pool starts at once
        engine = None if settings.engine == "pocketsphinx" else engine_for(settings)
        return engine, _check_language_id(settings, engine)
    except EngineUnavailable as exc:
        _fail(str(exc))


def _check_language_id(settings: Settings, engine) -> dict:
    """Load the language identifier (shared with the service in this process) when a miss will
    use it, and each language route's engine, so that missing wheels or a route's engine that
    cannot load stop the start with their reason (`EngineUnavailable`). Returns the routes'
    engines by language, for the service to use."""
    from earmark.service.config import parse_routes
    from earmark.service.engines.language_id import shared_identifier
    from earmark.service.engines.registry import engine_for
    from earmark.service.pipeline.routing import needs_identification

    routes = parse_routes(settings.language_routes)
    loaded = {name: engine_for(settings, name) for name in sorted(set(routes.values()) - {settings.engine, "pocketsphinx"})}
    if settings.language_id and (engine is None or needs_identification(engine, bool(routes))):
        shared_identifier(Path(settings.model_cache_dir) if settings.model_cache_dir else None,
                          window_s=settings.language_id_window_s)
    return {code: loaded[name] for code, name in routes.items() if name in loaded}


def _with_store(settings: Settings):
    """Start the embedded store when no store URL is configured; returns (settings, server)."""
    from dataclasses import replace

    from earmark.index.embedded import EmbeddedServer, EmbeddedServerError

    if settings.redis_url:
        return settings, None
    server = EmbeddedServer(Path(settings.data_dir), maxmemory=settings.maxmemory)
    try:
        server.start()
    except EmbeddedServerError as exc:
        _fail(str(exc))
    # One host, one store: its entries' verification bytes on its disk (index/bulk.py).
    return replace(settings, redis_url=server.url, bulk_dir=settings.bulk_dir or str(Path(settings.data_dir) / "bulk")), server


def _reload_on_signal(_signum: int, _frame) -> None:
    """SIGHUP: read the API keys file again at the next check (service/api/key_reload.py)."""
    from earmark.service.api.key_reload import reload_requested

    reload_requested.set()


def _exit_on_signal(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news


def _json_or_none(response) -> dict | None:
    try:
        return response.json()
    except ValueError:
        return None


def _fail(message: str):
    click.echo(f"earmark: {message}", err=True)
    sys.exit(2)
