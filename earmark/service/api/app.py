"""The HTTP API of the contract (docs/api.md), as a Starlette application.

Routes read top to bottom; each handler checks the caller's API key (when keys are
configured: the key names the caller's namespace), parses input, calls the lookup pipeline and
shapes the answer. Every refusal is an `EarmarkError` (an `ApiError`, or an error of a layer below
naming its kind) turned into `{"code", "msg"}` with a 4xx (or the 5xx the contract allows) by
service/api/errors.py; any other exception is a bug and answers 500 without leaking internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from earmark.fingerprint.config import DEFAULT as DEFAULT_FINGERPRINT
from earmark.errors import EarmarkError
from earmark.fingerprint.embedding import EMBEDDING_DIM
from earmark.index.breaker import StoreRefused, StoreUnavailable
from earmark.index.entry import ENTRY_ID
from earmark.index.footprint import sample_footprint
from earmark.index.connection import redact_url
from earmark.index.keys import Keys
from earmark.index.replica import IndexReplica
from earmark.index.store import Store
from earmark.index.vectors import VectorIndex
from earmark.service.api.auth import ApiKeys, is_admin_bearer, keys_without_admin
from earmark.service.api.cache_control import parse_cache_control
from earmark.service.config import Settings, parse_routes
from earmark.service.console.pages import console_routes
from earmark.service.engines.pool import EnginePool
from earmark.service.engines.base import AsyncEngine, Engine
from earmark.service.engines.registry import engine_for
from earmark.service.ops.audit import collect_audit
from earmark.service.ops.audit_cache import AuditCache, delete_and_forget
from earmark.service.api.audit_params import audit_options
from earmark.service.api.errors import ApiError, error_answer
from earmark.service.api.responses import JSONResponse
from earmark.service.pipeline.events import EventLog
from earmark.service.pipeline.fuzzy import FuzzyMatcher
from earmark.service.pipeline.segments import SpanFinder
from earmark.service.pipeline.verification import Verifier
from earmark.service.api.key_reload import KeysFile, watch_keys_file
from earmark.service.engines.transcript_limit import TranscriptLimit
from earmark.service.metrics import Metrics
from earmark.service.api.openai_compat import (
    check_response_format,
    check_stream,
    check_timestamp_granularities,
    models_list,
    streamed_transcription,
    transcription_response,
)
from earmark.service.pipeline.recognition import Outcome, RecognitionCache
from earmark.service.pipeline.profile import Profile
from earmark.service.pipeline.routing import EngineRoute, Identify, LanguageRouter, needs_identification
from earmark.service.engines.language_id import shared_identifier
from earmark.service.pipeline.cache_directives import CacheControl
from earmark.service.pipeline.upload import Upload
from earmark.service.api.uploads import UploadAborted, UploadForm, UploadGate, UploadLimits, read_upload, recognition_options

log = logging.getLogger(__name__)

STORE_WATCH_INTERVAL_S = 2.0
SHUTDOWN_STEP_TIMEOUT_S = 5.0
OPENAI_ENDPOINTS = ("transcriptions", "models")


@dataclass
class Services:
    """What the handlers use, built once at start-up."""

    settings: Settings
    metrics: Metrics
    store: Store
    engine: Engine
    pool: EnginePool
    cache: RecognitionCache
    vectors: VectorIndex
    replica: IndexReplica
    upload_limits: UploadLimits
    upload_gate: UploadGate
    audits: AuditCache
    api_keys: ApiKeys | None = None  # None: no keys configured, every caller in namespace ""
    events: EventLog | None = None
    router: LanguageRouter | None = None
    footprint_at: float = float("-inf")  # when /metrics last estimated the store's footprint (monotonic)


def create_app(settings: Settings, *, engine: Engine | None = None,
               route_engines: dict[str, Engine] | None = None) -> Starlette:
    """Build the application; `settings.redis_url` must name a reachable-or-not store. `engine`
    and `route_engines` (by language route, see `settings.language_routes`) are engines already
    loaded (the CLI's start-up check, tests); any not given is built from the settings."""
    if not settings.redis_url:
        raise ValueError("settings.redis_url is empty: start the embedded store first (see service.cli)")
    # Read now, not in the lifespan: a bad keys file stops the start with its ConfigError.
    # Its stat is taken first: a change made while it is read is read again at the first check.
    keys_file = KeysFile(settings.api_keys_file) if settings.api_keys_file else None
    api_keys = ApiKeys.from_file(settings.api_keys_file) if settings.api_keys_file else None
    if keys_without_admin(api_keys, settings.admin_token):
        # Entry ids derive from the profile (namespace included) and the audio: anyone who has
        # the audio and knows a namespace's name could compute an id and read it there.
        log.warning("API keys are configured but no admin token: /entries/... is open to every caller; "
                    "set --admin-token to keep namespaces apart there too")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        metrics = Metrics()
        if settings.metrics_namespace_labels:
            metrics.enable_namespace_labels()
        store = Store.open(
            settings.redis_url,
            Keys(settings.key_prefix),
            on_error=metrics.store_errors.inc,
            on_state=metrics.observe_store_state,
            on_refused=lambda reason: metrics.store_refused.labels(reason=reason).inc(),
            bulk_dir=settings.bulk_dir,
            on_bulk=lambda operation, result: metrics.bulk_operations.labels(operation=operation, result=result).inc(),
        )
        chosen = engine or engine_for(settings)
        pool = _pool_for(chosen, settings, metrics)
        router = _router(settings, chosen, pool, metrics, route_engines or {})
        vectors = VectorIndex(EMBEDDING_DIM, settings.index_type,
                              on_rebuild=lambda reason, kind: metrics.index_rebuilds.labels(reason=reason, kind=kind).inc())
        metrics.index_entries.set_function(lambda: len(vectors))
        replica = IndexReplica.open(settings.redis_url, store.keys, vectors, _snapshot_dir(settings),
                                    DEFAULT_FINGERPRINT.version)
        fuzzy = FuzzyMatcher(Verifier(settings.fuzzy), store, vectors, metrics)
        events = EventLog(store, settings.events_maxlen, metrics=metrics,
                          review_below=settings.fuzzy.min_window_score + settings.review_margin)
        spans = (SpanFinder(fuzzy.verifier, store, vectors, metrics, settings.min_span_s)
                 if fuzzy is not None and settings.segment_reuse else None)
        cache = RecognitionCache(settings, store, pool, metrics, fuzzy, events, router, spans)
        limits = UploadLimits(settings.max_upload_bytes, timeout_s=settings.upload_timeout_s,
                              min_bytes_per_s=settings.upload_min_bytes_per_s)
        gate = UploadGate(settings.max_uploads_in_progress, on_change=metrics.uploads_in_progress.set)
        app.state.services = Services(settings, metrics, store, chosen, pool, cache, vectors, replica, limits, gate,
                                      AuditCache(settings.audit_cache_s, metrics.audit_reports), api_keys, events, router)
        routed = _routed_only(router)
        if not await store.ping():
            log.warning("store at %s is unreachable at start-up: serving without the cache", redact_url(settings.redis_url))
        replica.start()
        for started in (chosen, *(route.engine for route in routed)):
            if isinstance(started, AsyncEngine):
                await started.start(metrics)
        for warmed in (pool, *(route.pool for route in routed)):
            warmed.warm_up()
        if router.identifier is not None and router.identifies:
            await asyncio.to_thread(router.identifier.warm_up)
        await asyncio.to_thread(fuzzy.verifier.warm_up)  # before the port opens: no request waits for it
        watchers = [asyncio.create_task(_watch_store(store))]
        if store.bulk is not None:
            watchers.append(asyncio.create_task(_sweep_bulk(store, metrics)))
        if keys_file is not None:
            watchers.append(asyncio.create_task(watch_keys_file(
                keys_file, settings.api_keys_check_s,
                apply=lambda keys: setattr(app.state.services, "api_keys", keys),
                on_result=lambda result: metrics.api_keys_reloads.labels(result=result).inc())))
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            for closed in (pool, *(route.pool for route in routed)):
                closed.close()
            for stopped in (chosen, *(route.engine for route in routed)):
                if isinstance(stopped, AsyncEngine):
                    await stopped.aclose()
            # Bounded: a stuck connection must never keep the service from exiting.
            for step in (replica.stop(), store.close()):
                try:
                    await asyncio.wait_for(step, SHUTDOWN_STEP_TIMEOUT_S)
                except (asyncio.TimeoutError, Exception):  # noqa: B014 - log whatever it was, keep going
                    log.warning("shutdown step did not finish cleanly", exc_info=True)

    routes = [
        Route("/recognize", recognize, methods=["POST"]),
        Route("/lookup", lookup, methods=["POST"]),
        Route("/v1/audio/transcriptions", openai_transcriptions, methods=["POST"]),
        Route("/v1/models", openai_models, methods=["GET"]),
        Route("/entries/{entry_id}", get_entry, methods=["GET"]),
        Route("/entries/{entry_id}", delete_entry, methods=["DELETE"]),
        Route("/audit", audit, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *console_routes(),  # the web console (service/console/pages.py)
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _routing_error})
    # `/entries/x/` is an unknown entry like any other, not a redirect to somewhere else.
    app.router.redirect_slashes = False
    return app


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and methods answer in the contract's shape too."""
    assert isinstance(exc, HTTPException)
    msg = {404: f"no such endpoint {request.url.path[:80]!r}; see docs/api.md for the endpoints",
           405: f"{request.method[:16]} is not allowed on {request.url.path[:80]!r}; allowed: "
                f"{(exc.headers or {}).get('allow', 'see docs/api.md')}"}.get(exc.status_code, str(exc.detail))
    return JSONResponse({"code": exc.status_code, "msg": msg}, status_code=exc.status_code, headers=exc.headers)


async def recognize(request: Request) -> Response:
    """POST /recognize: answer from cache, or run the engine and cache the result."""
    return await _guarded(request, "recognize", _recognize)


async def _recognize(request: Request, services: Services) -> Response:
    started = time.perf_counter()
    namespace = _authenticate(request, services)
    control = _cache_control(request, services, "recognize")
    upload, form = await _receive(request, services)
    # `earmark batch` says so, for the event log (service/pipeline/events.py); any other value is ignored.
    endpoint = "batch" if request.headers.get("x-earmark-client", "").lower() == "batch" else "recognize"
    with contextlib.closing(upload):
        profile, identify = _plan(services, form, namespace)
        outcome = await services.cache.recognize(upload, profile, started=started, control=control, endpoint=endpoint,
                                                 identify=identify)
    response = JSONResponse({"code": 0, "msg": "success", "result": outcome.result, "cache": outcome.cache_info()})
    return _with_cache_headers(response, outcome)


async def lookup(request: Request) -> Response:
    """POST /lookup: what /recognize would answer now, with the evidence; never writes."""
    return await _guarded(request, "lookup", _lookup)


async def _lookup(request: Request, services: Services) -> Response:
    started = time.perf_counter()
    namespace = _authenticate(request, services)
    upload, form = await _receive(request, services)
    with contextlib.closing(upload):
        outcome = await services.cache.lookup(upload, _plan(services, form, namespace)[0], started=started)
    response = JSONResponse(
        {"code": 0, "msg": "success", "cache": outcome.cache_info(with_candidates=True), "result": outcome.result}
    )
    return _with_cache_headers(response, outcome)


async def openai_transcriptions(request: Request) -> Response:
    """POST /v1/audio/transcriptions: the OpenAI-compatible endpoint."""
    return await _guarded(request, "transcriptions", _openai_transcriptions)


async def _openai_transcriptions(request: Request, services: Services) -> Response:
    started = time.perf_counter()
    namespace = _authenticate(request, services)
    control = _cache_control(request, services, "transcriptions")
    upload, form = await _receive(request, services)
    with contextlib.closing(upload):
        response_format = check_response_format(form.text("response_format"))
        granularities = check_timestamp_granularities(
            form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities"), response_format)
        stream = check_stream(form.text("stream"), response_format)
        profile, identify = _plan(services, form, namespace)
        outcome = await services.cache.recognize(upload, profile, started=started, control=control, endpoint="openai",
                                                 identify=identify)
    if stream:
        return _with_cache_headers(streamed_transcription(outcome), outcome)
    return _with_cache_headers(transcription_response(outcome, response_format, granularities), outcome)


async def openai_models(request: Request) -> Response:
    """GET /v1/models: the model names a client may use."""
    return await _guarded(request, "models", _openai_models)


async def _openai_models(request: Request, services: Services) -> Response:
    _authenticate(request, services)
    names = ["whisper-1", services.engine.name, services.engine.model_id]
    return models_list(list(dict.fromkeys(names)))


async def get_entry(request: Request) -> Response:
    """GET /entries/{entry}: one entry's result and metadata."""
    return await _guarded(request, "entries", _get_entry)


async def _get_entry(request: Request, services: Services) -> Response:
    _require_admin(request, services.settings)
    entry_id = _entry_id(request)
    entry = await _store_call(services.store.get_entry(entry_id))
    if entry is None:
        raise ApiError(404, f"no entry {entry_id!r}: it never existed, expired or was deleted")
    return JSONResponse(
        {
            "code": 0,
            "msg": "success",
            "entry": {
                "entry": entry.entry_id,
                "profile": entry.profile_id,
                "engine": entry.engine,
                "negative": entry.negative,
                "result": entry.result(),
                "duration_s": entry.duration_s,
                "speech_s": entry.speech_s,
                "engine_seconds": entry.engine_seconds,
                "created_at": entry.created_at,
                "expires_at": entry.expires_at_ms / 1000.0,
                "fingerprint_version": entry.fingerprint_version or None,
            },
        }
    )


async def delete_entry(request: Request) -> Response:
    """DELETE /entries/{entry}: invalidate an entry everywhere, by every tier."""
    return await _guarded(request, "entries", _delete_entry)


async def _delete_entry(request: Request, services: Services) -> Response:
    _require_admin(request, services.settings)
    entry_id = _entry_id(request)
    deleted = await _store_call(
        delete_and_forget(services.store, services.audits, entry_id, stream_maxlen=services.settings.stream_maxlen)
    )
    if not deleted:
        raise ApiError(404, f"no entry {entry_id!r}: it never existed, expired or was already deleted")
    return JSONResponse({"code": 0, "msg": "deleted", "entry": entry_id})


async def audit(request: Request) -> Response:
    """GET /audit: the dedup audit (service/ops/audit.py) as JSON; admin token when configured."""
    return await _guarded(request, "audit", _audit)


async def _audit(request: Request, services: Services) -> Response:
    if keys_without_admin(services.api_keys, services.settings.admin_token):
        # It covers every namespace (transcripts included): never open to every key holder.
        raise ApiError(403, "GET /audit covers every namespace: with API keys configured it needs an admin token "
                            "(--admin-token)")
    _require_admin(request, services.settings)
    options = audit_options(request.query_params, services.settings.review_margin)
    services.metrics.audits.inc()
    events = services.events
    assert events is not None
    source = f"GET /audit on {request.url.netloc}"
    report = await _store_call(services.audits.get(
        (source, options), lambda: collect_audit(services.store, events, services.settings.fuzzy, options,
                                                 source=source)))
    return JSONResponse({"code": 0, "msg": "success", **report})


async def health(request: Request) -> Response:
    """GET /health: liveness plus the store's state."""
    services: Services = request.app.state.services
    store_up = await services.store.ping()
    return JSONResponse(
        {"status": "ok", "store": "up" if store_up else "down", "index_size": len(services.vectors),
         "index_ready": services.replica.ready.is_set(), "engine": services.engine.name,
         # The fuzzy tier's thresholds in force (from `earmark tune`'s file, or the defaults).
         "thresholds": dataclasses.asdict(services.settings.fuzzy)}
        # An upstream engine's server: its URL, model and state.
        | ({"upstream": status} if (status := services.engine.status()) is not None else {})
    )


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus text format."""
    services: Services = request.app.state.services
    try:
        services.metrics.observe_store_info(await services.store.info())
        if time.monotonic() - services.footprint_at >= FOOTPRINT_MAX_AGE_S:
            services.footprint_at = time.monotonic()
            try:
                await _observe_footprint(services.store, services.metrics, len(services.vectors))
            except StoreRefused:  # a store without MEMORY USAGE: the gauge keeps its last value
                pass
    except StoreUnavailable:
        services.metrics.observe_store_info(None)  # earmark_store_up already says so
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _guarded(request: Request, endpoint: str, handler) -> Response:
    """Run a handler; count the outcome; turn every refusal into the contract's error body."""
    services: Services = request.app.state.services
    try:
        response = await handler(request, services)
    except UploadAborted:
        # The client hung up mid-upload: nobody is there to answer, and it is not our error.
        services.metrics.uploads_aborted.labels(endpoint=endpoint).inc()
        return Response(status_code=400)
    except EarmarkError as exc:  # a refusal: the API's own, or a kind of error from below
        answer = error_answer(exc)
        return _error(services, endpoint, answer.status, answer.msg, answer.headers, getattr(exc, "body_fields", None))
    except Exception:
        log.exception("unhandled error on %s", endpoint)
        return _error(services, endpoint, 500, "internal error; this is a bug, please report it")
    tier = response.headers.get("X-Cache-Tier")
    if tier:
        services.metrics.requests.labels(endpoint=endpoint, tier=tier).inc()
        if services.metrics.namespace_requests is not None:  # opt-in: metrics_namespace_labels
            namespace = getattr(request.state, "namespace", "")
            services.metrics.namespace_requests.labels(namespace=namespace, endpoint=endpoint, tier=tier).inc()
    return response


def _with_cache_headers(response: Response, outcome: Outcome) -> Response:
    """Cache information as headers too: the OpenAI endpoint's only channel for it."""
    response.headers["X-Cache-Tier"] = outcome.tier
    response.headers["X-Cache-Entry"] = outcome.entry.entry_id if outcome.entry else ""
    response.headers["X-Cache-Score"] = "" if outcome.score is None else f"{outcome.score:.4f}"
    return response


def _error(services: Services, endpoint: str, status: int, msg: str, headers: dict | None = None,
           fields: dict | None = None) -> Response:
    """The contract's error body, with an error's own `fields` beside `code` and `msg` (a
    refused language's `detected_language`)."""
    services.metrics.errors.labels(endpoint=endpoint, status=str(status)).inc()
    body: dict = {"code": status, "msg": msg, **(fields or {})}
    if endpoint in OPENAI_ENDPOINTS:
        # OpenAI's clients show `error.message`; earmark's own fields stay beside it.
        kind = "invalid_request_error" if status < 500 else "server_error"
        # OpenAI's own code for a missing or wrong key, which its clients may test for.
        code = "invalid_api_key" if status == 401 else str(status)
        body["error"] = {"message": msg, "type": kind, "param": None, "code": code}
    return JSONResponse(body, status_code=status, headers=headers)


async def _receive(request: Request, services: Services) -> tuple[Upload, UploadForm]:
    return await read_upload(request, services.upload_limits, services.upload_gate)


def _plan(services: Services, form: UploadForm, namespace: str) -> tuple[Profile, Identify | None]:
    """The request's cache profile, and whether a miss identifies its language first
    (service/pipeline/routing.py)."""
    if services.router is None:
        return services.engine.resolve(recognition_options(form), namespace), None
    return services.router.plan(recognition_options(form), namespace)


def _pool_for(engine: Engine, settings: Settings, metrics: Metrics) -> EnginePool:
    """A pool for `engine`: an engine that serialises its own calls (one model behind a lock)
    gains nothing from more workers than it recommends; 0 workers configured means its
    recommendation."""
    recommended = getattr(engine, "recommended_workers", None)
    workers = settings.engine_workers or recommended or 1
    if recommended is not None:
        workers = min(workers, recommended)
    return EnginePool(engine, metrics, workers=workers, max_waiting=settings.engine_queue,
                      timeout_s=settings.engine_timeout_s, transcript_limit=TranscriptLimit.from_settings(settings))


def _router(settings: Settings, main: Engine, pool: EnginePool, metrics: Metrics,
            given: dict[str, Engine]) -> LanguageRouter:
    """The language router of `settings` (its routes' engines built once per name, the
    configured engine reused when a route names it; the identifier loaded only when needed)."""
    built: dict[str, EngineRoute] = {settings.engine: EngineRoute(main, pool)}
    routes: dict[str, EngineRoute] = {}
    for code, name in parse_routes(settings.language_routes).items():
        if code in given:
            routes[code] = EngineRoute(given[code], _pool_for(given[code], settings, metrics))
            continue
        if name not in built:
            engine = engine_for(settings, name)
            built[name] = EngineRoute(engine, _pool_for(engine, settings, metrics))
        routes[code] = built[name]
    identifier = None
    if settings.language_id and needs_identification(main, bool(routes)):
        cache_dir = Path(settings.model_cache_dir) if settings.model_cache_dir else None
        identifier = shared_identifier(cache_dir, window_s=settings.language_id_window_s)
    return LanguageRouter(EngineRoute(main, pool), routes, identifier, settings.language_id_min_probability, metrics,
                          settings.language_id_min_speech_s)


def _routed_only(router: LanguageRouter) -> list[EngineRoute]:
    """The routes' own engines and pools (each once), not the configured engine's."""
    seen: dict[int, EngineRoute] = {}
    for route in router.routes.values():
        if route.pool is not router.main.pool:
            seen.setdefault(id(route.pool), route)
    return list(seen.values())


def _authenticate(request: Request, services: Services) -> str:
    """The caller's namespace: from its API key when keys are configured (raises `AuthError`
    without a valid one), else "" for everyone. Checked before the body is read."""
    if services.api_keys is None:
        return ""
    request.state.namespace = services.api_keys.authenticate(request.headers.get("authorization"))
    return request.state.namespace


def _cache_control(request: Request, services: Services, endpoint: str) -> CacheControl:
    """The request's `Cache-Control` directives, counted by directive (never by namespace)."""
    control = parse_cache_control(request.headers.get("cache-control"))
    for directive in control.directives:
        services.metrics.cache_control.labels(endpoint=endpoint, directive=directive).inc()
    return control


def _entry_id(request: Request) -> str:
    """The path's entry id; anything but the 32 hex digits entry ids are made of is unknown."""
    entry_id = request.path_params["entry_id"]
    if not ENTRY_ID.fullmatch(entry_id):
        raise ApiError(404, f"no entry {entry_id[:80]!r}: entry ids are 32 hexadecimal digits")
    return entry_id


def _require_admin(request: Request, settings: Settings) -> None:
    if settings.admin_token and not is_admin_bearer(request.headers.get("authorization"), settings.admin_token):
        raise ApiError(401, "this endpoint needs the admin token: send 'Authorization: Bearer <token>'")


async def _store_call(awaitable):
    try:
        return await awaitable
    except StoreUnavailable as exc:
        raise ApiError(503, "the cache store is unreachable; retry shortly", headers={"Retry-After": "5"}) from exc


async def _watch_store(store: Store) -> None:
    """Ping the store now and then, so an outage (and its end) is noticed without traffic."""
    while True:
        await asyncio.sleep(STORE_WATCH_INTERVAL_S)
        await store.ping()


# A scrape of /metrics estimates the store's bytes per second of audio (a sample of entries,
# index/footprint.py) at most this often; the bulk store is swept every BULK_SWEEP_INTERVAL_S.
FOOTPRINT_MAX_AGE_S = 60.0
BULK_SWEEP_INTERVAL_S = 3600.0


async def _observe_footprint(store: Store, metrics: Metrics, entry_count: int) -> None:
    """Set the footprint gauges from a fresh sample (left as they were when the store holds no audio)."""
    footprint = await sample_footprint(store, entry_count)
    if footprint is not None:
        metrics.store_bytes_per_audio_second.set(round(footprint.memory_bytes_per_s, 1))
        metrics.bulk_bytes_per_audio_second.set(round(footprint.bulk_bytes_per_s, 1))


async def _sweep_bulk(store: Store, metrics: Metrics, *, first_after_s: float = 60.0) -> None:
    """Every BULK_SWEEP_INTERVAL_S, remove the bulk store's values whose entry is gone
    (index/bulk.py). Never stops the service: a failure waits for the next round."""
    await asyncio.sleep(first_after_s)
    while True:
        try:
            metrics.bulk_swept.inc(await store.sweep_bulk())
        except Exception:  # noqa: BLE001 - a sweep must never end the service
            log.warning("the bulk store sweep failed; trying again later", exc_info=True)
        await asyncio.sleep(BULK_SWEEP_INTERVAL_S)


def _snapshot_dir(settings: Settings) -> Path:
    """Where this replica keeps index snapshots: per key prefix (the replica adds a folder per
    store identity, so another store's snapshot is never loaded)."""
    prefix_id = hashlib.blake2b(settings.key_prefix.encode(), digest_size=8).hexdigest()
    return Path(settings.data_dir) / "index" / prefix_id
