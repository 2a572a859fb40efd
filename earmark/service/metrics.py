"""Prometheus metrics, with the names the contract fixes.

Each service instance owns its registry, so several apps in one process (tests, replicas)
do not share counters.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """All of earmark's metrics in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("earmark_requests_total", "Requests answered, by endpoint and tier.", ["endpoint", "tier"], registry=r)
        self.errors = Counter("earmark_errors_total", "Requests refused or failed, by endpoint and HTTP status.", ["endpoint", "status"], registry=r)
        self.engine_seconds = Counter("earmark_engine_seconds_total", "Seconds spent running the engine.", registry=r)
        self.engine_seconds_saved = Counter(
            "earmark_engine_seconds_saved_total", "Engine seconds avoided by cache hits (the original run's time).", registry=r
        )
        self.engine_runs = Counter("earmark_engine_runs_total", "Engine runs (one per miss that reached the engine).", registry=r)
        self.transcripts_too_long = Counter(
            "earmark_engine_transcripts_too_long_total",
            "Engine answers refused (502, not cached) as longer than the audio can hold (max_transcript_chars_per_s).",
            registry=r,
        )
        self.engine_queue = Gauge("earmark_engine_queue_depth", "Requests waiting for or running on the engine.", registry=r)
        self.lookup_seconds = Histogram(
            "earmark_lookup_seconds", "Time spent per lookup stage.", ["stage"], buckets=_LOOKUP_BUCKETS, registry=r
        )
        # Segment reuse (service/pipeline/segments.py; issue 24): stretches of misses looked up, candidates
        # judged, and the partial answers with the audio and engine seconds they reused.
        self.segment_stretches = Counter(
            "earmark_segment_stretches_total", "Stretches of uploads (cut at pauses) looked up for cached recordings inside them.",
            registry=r,
        )
        self.segment_candidates = Counter(
            "earmark_segment_candidates_total", "Cached entries verified against a stretch of an upload, by verdict.",
            ["accepted"], registry=r,
        )
        self.segment_screened = Counter(
            "earmark_segment_screened_total",
            "Cached entries set aside for a stretch of an upload by their hashes alone (far under the window threshold).",
            registry=r,
        )
        self.segment_excerpts = Counter(
            "earmark_segment_excerpts_total",
            "Stretches of cached entries tried inside uploads (found by their hash frames), by outcome: accepted, "
            "refused (by the verification), uncuttable (a word across an end, or too little speech), skipped (a try "
            "differing from a refused wider one only at its ends, still holding where that one was refused).",
            ["outcome"], registry=r,
        )
        self.segment_slips = Counter(
            "earmark_segment_slips_total",
            "Runs of an upload's hash frames cut where their offset in a cached entry slips by a few frames (a word "
            "said a little shorter or longer in an edited copy): each side judged at its own alignment.",
            registry=r,
        )
        self.partial_hits = Counter(
            "earmark_partial_hits_total", "Answers (tier partial) that reused cached recordings inside the upload.", registry=r,
        )
        self.partial_seconds_reused = Counter(
            "earmark_partial_seconds_reused_total", "Seconds of uploaded audio answered from cached recordings inside it.",
            registry=r,
        )
        # Issue 25: a request computes only the features it uses. hash: the hash, embedding and speech
        # duration (every fuzzy lookup, and a miss's entry); detail, pitch: the last checks' features, for the
        # first candidate that reaches them (use "lookup") or for a miss's entry while the engine runs ("entry"),
        # else never ("skipped"). An exact or canonical hit computes none.
        self.query_features = Counter(
            "earmark_query_features_total",
            "Perceptual features computed for a request's audio, by feature (hash, detail, pitch, detail_phases) and use: lookup "
            "(the fuzzy tier, or the first candidate that reached the check), entry (a miss's new entry, while the "
            "engine runs) or skipped (deferred and never needed).",
            ["feature", "use"], registry=r,
        )
        # Issue 23: uploads whose source clipped (runs at full scale, fingerprint/clipping.py), whose clipped
        # frames the fuzzy tier compares by their peaks alone.
        self.clipped_uploads = Counter(
            "earmark_clipped_uploads_total",
            "Uploads looked up by the fuzzy tier whose source held runs of samples at full scale (hard clipping).",
            registry=r,
        )
        # Language identification on misses (service/pipeline/routing.py; issue 26). Outcomes: served (by the
        # configured engine), routed (to another), refused (422, nothing cached); and to the configured engine:
        # uncertain (under the minimum probability), too_short (under the minimum speech), kept (its own
        # languages still plausible), no_speech (the VAD heard none).
        self.language_identifications = Counter(
            "earmark_language_identifications_total",
            "Spoken-language identifications run on misses, by detected language and outcome.", ["language", "outcome"],
            registry=r,
        )
        self.language_id_seconds = Histogram(
            "earmark_language_id_seconds", "Time spent identifying the spoken language of a miss (VAD, features, encoder).",
            buckets=_LOOKUP_BUCKETS, registry=r,
        )
        self.index_entries = Gauge("earmark_index_entries", "Entries in this replica's vector index.", registry=r)
        self.index_rebuilds = Counter(
            "earmark_index_rebuilds_total",
            "Profiles of this replica's vector index rebuilt, by reason (purge, kind, tombstones, requested) and the "
            "kind of index after it (flat, hnsw, ivf).", ["reason", "kind"], registry=r,
        )
        self.store_errors = Counter("earmark_store_errors_total", "Store calls that failed (connection, timeout).", registry=r)
        self.store_refused = Counter(
            "earmark_store_refused_total",
            "Store commands refused while the store was up (OOM, WRONGTYPE...), by error; that request went uncached.",
            ["reason"], registry=r,
        )
        self.store_up = Gauge("earmark_store_up", "1 while the store is reachable, 0 during an outage.", registry=r)
        self.store_bytes_per_audio_second = Gauge(
            "earmark_store_bytes_per_audio_second",
            "Store memory per second of cached audio: every key of a sample of entries (hash, aliases, remembered "
            "verdicts, kept prints) and the capped streams, estimated every few minutes (index/footprint.py).",
            registry=r,
        )
        self.bulk_bytes_per_audio_second = Gauge(
            "earmark_bulk_bytes_per_audio_second",
            "Bulk store disk per second of cached audio (the sampled entries' verification bytes; 0 without one).",
            registry=r,
        )
        self.bulk_operations = Counter(
            "earmark_bulk_operations_total",
            "Bulk store reads and writes of entries' verification bytes, by result (a read 'missing' or 'damaged' "
            "leaves its entry unverifiable: never fuzzy-matched).",
            ["operation", "result"], registry=r,
        )
        self.bulk_swept = Counter(
            "earmark_bulk_swept_total", "Bulk store values removed because their entry was gone (expired, evicted, deleted).",
            registry=r,
        )
        self.single_flight_waits = Counter(
            "earmark_single_flight_waits_total", "Misses that waited for another request's engine run instead of running it.", ["scope"], registry=r
        )
        self.fuzzy_candidates = Counter("earmark_fuzzy_candidates_total", "Fuzzy candidates examined.", registry=r)
        self.fuzzy_accepted = Counter("earmark_fuzzy_accepted_total", "Fuzzy candidates accepted after verification.", registry=r)
        self.fuzzy_rejected = Counter("earmark_fuzzy_rejected_total", "Fuzzy candidates rejected, by reason.", ["reason"], registry=r)
        self.fuzzy_level_compressed = Counter(
            "earmark_fuzzy_level_compressed_total",
            "Fuzzy candidates the detail check judged as level-compressed (a limiter or compressor on one side), by outcome.",
            ["accepted"], registry=r,
        )
        self.fuzzy_coarse_line_excused = Counter(
            "earmark_fuzzy_coarse_line_excused_total",
            "Fuzzy candidates on a line coarser than 2 dB that the detail check vouched for as a low-rate codec's, by outcome.",
            ["accepted"], registry=r,
        )
        self.store_info = StoreInfoCollector()
        r.register(self.store_info)
        self.breaker_trips = Counter(
            "earmark_store_breaker_trips_total", "Times the store's circuit breaker opened (an outage began).", registry=r
        )
        self.uploads_in_progress = Gauge("earmark_uploads_in_progress", "Request bodies being received now.", registry=r)
        self.uploads_aborted = Counter(
            "earmark_uploads_aborted_total", "Uploads the client abandoned before the body arrived, by endpoint.", ["endpoint"], registry=r
        )
        self.decode_budget_in_use = Gauge(
            "earmark_decode_budget_seconds_in_use", "Seconds of audio being decoded (or held as PCM) now.", registry=r
        )
        self.decode_budget_refused = Counter(
            "earmark_decode_budget_refused_total", "Requests answered 503 because the decode budget stayed full.", registry=r
        )
        self.memory_trims = Counter(
            "earmark_memory_trims_total",
            "Times a request over a minute of audio gave the allocator's free memory back to the OS (glibc only).",
            registry=r,
        )
        self.memory_trimmed_bytes = Counter(
            "earmark_memory_trimmed_bytes_total", "Bytes the resident set shrank by in those trims.", registry=r
        )
        self.decode_budget_grown = Counter(
            "earmark_decode_budget_grown_seconds_total",
            "Seconds of audio added to decode reservations while decoding, beyond the estimate made before it "
            "(a header that said no length, or too short a one).", registry=r,
        )
        self.cache_control = Counter(
            "earmark_cache_control_total",
            "Recognition requests by Cache-Control directive honoured (none, no-cache, no-store, max-age); "
            "a request with two directives counts under both.",
            ["endpoint", "directive"], registry=r,
        )
        self.console_pages = Counter(
            "earmark_console_pages_total", "Web console pages served (and console deletes), by page.", ["page"], registry=r
        )
        self.console_logins = Counter(
            "earmark_console_logins_total", "Web console sign-in forms posted, by outcome (ok, wrong_token).", ["outcome"], registry=r
        )
        self.console_sessions_refused = Counter(
            "earmark_console_sessions_refused_total",
            "Web console requests whose session cookie was refused (expired, invalid), answered with the sign-in form.",
            ["reason"], registry=r,
        )
        self.events_recorded = Counter(
            "earmark_events_recorded_total", "Recognition events written to the event stream, by endpoint and tier.",
            ["endpoint", "tier"], registry=r,
        )
        self.events_dropped = Counter(
            "earmark_events_dropped_total", "Recognition events lost because the store was unreachable or refused them.",
            registry=r,
        )
        self.events_unreadable = Counter(
            "earmark_events_unreadable_total",
            "Recognition events read back that this earmark could not read (damaged, or a newer earmark's format): "
            "left out of audits and the history.",
            registry=r,
        )
        self.audits = Counter("earmark_audits_total", "Dedup audits served by GET /audit.", registry=r)
        self.audit_reports = Counter(
            "earmark_audit_reports_total",
            "Audit reports asked for (GET /audit, the console's audit page), by result: computed, kept "
            "(a recent one reused, audit_cache_s) or shared (another viewer's computation awaited).",
            ["result"], registry=r,
        )
        self.api_keys_reloads = Counter(
            "earmark_api_keys_reloads_total", "Reads of a changed API keys file, by result: ok (applied), error (kept the old keys).",
            ["result"], registry=r,
        )
        self.store_up.set(1)
        self._store_was_up = True
        self.upstream: UpstreamMetrics | None = None
        self.namespace_requests: Counter | None = None

    def enable_upstream(self) -> "UpstreamMetrics":
        """Register the upstream metrics (only a service with an upstream engine has them, so a
        local engine's service exports no `earmark_upstream_up 0` to alert on)."""
        if self.upstream is None:
            self.upstream = UpstreamMetrics(self.registry)
        return self.upstream

    def enable_namespace_labels(self) -> Counter:
        """Register `earmark_namespace_requests_total{namespace,...}`: opt-in
        (`metrics_namespace_labels`), since namespaces are unbounded in number and every one
        is a time series of its own."""
        if self.namespace_requests is None:
            self.namespace_requests = Counter(
                "earmark_namespace_requests_total", "Answered requests, by API-key namespace, endpoint and tier.",
                ["namespace", "endpoint", "tier"], registry=self.registry,
            )
        return self.namespace_requests

    def observe_store_info(self, info: dict | None) -> None:
        """Keep the store's INFO figures for this scrape; None (the store did not answer) exports none."""
        self.store_info.info = info

    def observe_store_state(self, up: bool) -> None:
        """Follow the store breaker: `earmark_store_up`, and one trip counted per outage begun."""
        if self._store_was_up and not up:
            self.breaker_trips.inc()
        self._store_was_up = up
        self.store_up.set(1 if up else 0)


class UpstreamMetrics:
    """The upstream recognition server, as the upstream engines see it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.up = Gauge("earmark_upstream_up", "1 while the upstream answers (health check or request), 0 while it does not.", registry=r)
        self.requests = Counter(
            "earmark_upstream_requests_total",
            "Transcription requests sent upstream, by outcome: ok, refused, error, too_large, overloaded, timeout, unreachable, "
            "cancelled.",
            ["outcome"], registry=r,
        )
        self.retries = Counter("earmark_upstream_retries_total", "Upstream requests retried after a connect failure.", registry=r)
        self.seconds = Histogram(
            "earmark_upstream_seconds", "Time from sending a transcription request upstream to its answer (every outcome).",
            buckets=_UPSTREAM_BUCKETS, registry=r,
        )
        self.health_checks = Counter(
            "earmark_upstream_health_checks_total", "Periodic upstream health checks, by result: up, down.", ["result"], registry=r
        )


# INFO field -> (metric name, help). Counters keep the store's own count since it started: a
# store restart resets them, which Prometheus' rate() and increase() treat as a counter reset.
STORE_INFO_GAUGES = {
    "used_memory": ("earmark_store_used_memory_bytes", "Memory the store reports in use (INFO memory)."),
    "maxmemory": ("earmark_store_maxmemory_bytes", "The store's maxmemory (0: unbounded)."),
}
STORE_INFO_COUNTERS = {
    "evicted_keys": ("earmark_store_evicted_keys", "Keys the store evicted under memory pressure since it started (INFO stats)."),
    "expired_keys": ("earmark_store_expired_keys", "Keys the store expired since it started (INFO stats)."),
    "keyspace_hits": ("earmark_store_keyspace_hits", "Key lookups that found their key, since the store started (INFO stats)."),
    "keyspace_misses": ("earmark_store_keyspace_misses", "Key lookups that found no key, since the store started (INFO stats)."),
}


class StoreInfoCollector(Collector):
    """The store's own figures, read from INFO at each scrape: memory as gauges, its running
    counts (evictions, expirations, keyspace hits and misses) as counters with `_total`, since
    the store, not earmark, does the counting. Nothing is exported for a scrape at which the
    store did not answer (stale figures would look live; `earmark_store_up` says why)."""

    def __init__(self) -> None:
        self.info: dict | None = None

    def collect(self) -> Iterator[Metric]:
        """Yield the families of the last INFO read (none when it failed)."""
        info = self.info
        if info is None:
            return
        for field, (name, documentation) in STORE_INFO_GAUGES.items():
            yield GaugeMetricFamily(name, documentation, value=float(info.get(field, 0)))
        for field, (name, documentation) in STORE_INFO_COUNTERS.items():
            yield CounterMetricFamily(name, documentation, value=float(info.get(field, 0)))

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: the families depend on the store's answer at scrape time."""
        return iter(())
