"""The recognition event log: one event per answered request, in a capped Redis Stream.

An auditor must see what was reused and whether it was safe, and an operator how close live
traffic comes to the thresholds; neither needs the audio. So each answered request (hit or
miss, every endpoint) appends what it was answered with: its tier and entry, the fuzzy tier's
verified score and its best candidate's score and rejection reason, a BLAKE3 digest of the
uploaded bytes (never the audio), and the engine seconds it spent or saved. `earmark audit`
and `GET /audit` read it back (service/ops/audit.py).

The stream is capped (`events_maxlen`, trimmed approximately so a cap costs nothing per
request; its storage is index/event_stream.py): it holds the most recent traffic, not all of
history. Each event is one compact record (service/pipeline/event_record.py, about 100 bytes).
Writing an event never fails a request: during a store outage it is counted as dropped and the
answer goes out anyway.
"""

from __future__ import annotations

import logging
import time as clock
from collections.abc import Mapping
from dataclasses import dataclass, fields

from earmark.fingerprint.robust_hash import RobustHash
from earmark.index.event_stream import EventStream, Record
from earmark.index.query_prints import keep_query_print, read_query_print
from earmark.index.store import Store
from earmark.service.pipeline import event_record
from earmark.service.metrics import Metrics

log = logging.getLogger(__name__)

HIT_TIERS = ("exact", "canonical", "fuzzy", "negative")
TIERS = (*HIT_TIERS, "partial", "miss", "bypass")  # every tier an answer can have, in the order reports show them
# The endpoints whose answers are recognitions (history, audit); /lookup only asks.
RECOGNITION_ENDPOINTS = ("recognize", "openai", "batch")
RECORD_FIELD = "e"  # the stream field holding an event's record


@dataclass(frozen=True)
class RecognitionEvent:
    """How one request was answered; no audio, only a digest of its bytes."""

    time: float  # epoch seconds, when the answer was ready
    endpoint: str  # recognize | lookup | openai
    tier: str  # the Outcome's tier: exact, canonical, fuzzy, negative, miss, bypass
    entry_id: str | None
    score: float | None  # verified score of a fuzzy hit
    best_score: float | None  # the best fuzzy candidate's score, hit or miss
    # the best candidate's rejection reason when no candidate was accepted; when the fuzzy tier
    # ran but examined none, why (query_too_short, no_candidates, disabled)
    rejection: str | None
    query_digest: str  # the uploaded bytes' BLAKE3 digest (the exact tier's: fingerprint/canonical.py)
    duration_s: float
    engine_s_spent: float
    engine_s_saved: float
    namespace: str
    profile_id: str

    def to_fields(self) -> dict[str, bytes]:
        """Stream entry fields (XADD): the one compact record of service/pipeline/event_record.py."""
        return {RECORD_FIELD: event_record.pack(self.as_dict())}

    @classmethod
    def from_fields(cls, raw: Mapping[bytes | str, bytes | str]) -> "RecognitionEvent":
        """Inverse of `to_fields`, from XRANGE output (bytes or text keys and values). An event
        written before issue 25 (a text field per value) reads too, a field missing from it as
        empty. Raises ValueError on a damaged record."""
        values = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
        record = values.get(RECORD_FIELD)
        if record is not None:
            return cls(**event_record.unpack(record.encode() if isinstance(record, str) else record))
        return cls._from_text_fields({name: v.decode() if isinstance(v, bytes) else v for name, v in values.items()})

    @classmethod
    def _from_text_fields(cls, values: Mapping[str, str]) -> "RecognitionEvent":
        """An event as written before issue 25: every value as text, None as ""."""

        def number(name: str) -> float:
            return float(values.get(name) or 0.0)

        def optional_number(name: str) -> float | None:
            value = values.get(name, "")
            return float(value) if value else None

        return cls(
            time=number("time"),
            endpoint=values.get("endpoint", ""),
            tier=values.get("tier", ""),
            entry_id=values.get("entry_id") or None,
            score=optional_number("score"),
            best_score=optional_number("best_score"),
            rejection=values.get("rejection") or None,
            query_digest=values.get("query_digest", ""),
            duration_s=number("duration_s"),
            engine_s_spent=number("engine_s_spent"),
            engine_s_saved=number("engine_s_saved"),
            namespace=values.get("namespace", ""),
            profile_id=values.get("profile_id", ""),
        )

    def as_dict(self) -> dict:
        """The event as JSON-ready values (for /audit and the report's tables)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def event_for(outcome, *, endpoint: str, query_digest: str, profile, served: bool) -> RecognitionEvent:
    """The event of one pipeline Outcome (service/pipeline/recognition.py). `served`: the answer went to a
    recognition request, so a hit saved the entry's engine time (a /lookup saves nothing)."""
    entry = outcome.entry
    best = max(outcome.candidates, key=lambda candidate: candidate.get("score") or 0.0, default=None)
    accepted = any(candidate.get("accepted") for candidate in outcome.candidates)
    best_score = best.get("score") if best is not None else None
    if best_score is None and outcome.tier == "fuzzy":
        best_score = outcome.score  # bytes matched before: their recorded verdict is the evidence
    hit = outcome.tier in HIT_TIERS and entry is not None
    duration_s = entry.duration_s if entry is not None else float((outcome.result or {}).get("duration_s") or 0.0)
    return RecognitionEvent(
        time=clock.time(),
        endpoint=endpoint,
        tier=outcome.tier,
        entry_id=entry.entry_id if entry is not None else None,
        score=outcome.score,
        best_score=best_score,
        rejection=best.get("reason") if best is not None and not accepted else outcome.fuzzy_note if best is None else None,
        query_digest=query_digest,
        duration_s=duration_s,
        engine_s_spent=outcome.engine_s_spent,
        # A partial answer saved its reused entries' runs (service/pipeline/segments.py).
        engine_s_saved=(entry.engine_seconds if hit else outcome.engine_s_saved) if served else 0.0,
        namespace=profile.namespace,
        profile_id=profile.digest,
    )


class EventLog:
    """Appends recognition events to the capped stream and reads them back, newest first or by
    time range."""

    def __init__(self, store: Store, maxlen: int, *, metrics: Metrics | None = None,
                 review_below: float = 0.0) -> None:
        self.store = store
        self.maxlen = maxlen
        self.metrics = metrics
        # Fuzzy hits scoring under this keep their query fingerprint for the audit to redraw.
        self.review_below = review_below
        self.stream = EventStream(store)

    async def record_answer(self, outcome, *, endpoint: str, query_digest: str, profile, served: bool) -> None:
        """Record a pipeline Outcome (service/pipeline/recognition.py): its event, and for a served fuzzy
        hit near the threshold the query's fingerprint too. Never raises."""
        event = event_for(outcome, endpoint=endpoint, query_digest=query_digest, profile=profile, served=served)
        await self.record(event)
        if (served and event.tier == "fuzzy" and outcome.query_hash is not None and event.score is not None
                and event.score < self.review_below):
            await self._keep_query_print(profile.digest, query_digest, outcome.entry, outcome.query_hash)

    async def _keep_query_print(self, profile_id: str, query_digest: str, entry, query_hash: RobustHash) -> None:
        """Keep a fuzzy hit's query fingerprint as long as its entry lives (no audio), listed
        among the entry's aliases so that deleting the entry deletes it too."""
        bits, levels = query_hash.to_bytes()
        if not await keep_query_print(self.store, profile_id, query_digest, entry, bits, levels):
            self._dropped()

    async def query_print(self, profile_id: str, query_digest: str) -> tuple[str, RobustHash] | None:
        """(entry id, query fingerprint) kept for a near-threshold fuzzy hit; None when none was
        kept or it expired. Raises `StoreUnavailable` during an outage."""
        kept = await read_query_print(self.store, profile_id, query_digest)
        if kept is None:
            return None
        entry_id, bits, levels = kept
        return entry_id, RobustHash.from_bytes(bits, levels)

    async def record(self, event: RecognitionEvent) -> None:
        """Append one event; never raises (a store outage or refusal is counted and swallowed).
        A cap of 0 keeps no events."""
        if self.maxlen <= 0:
            return
        try:
            written = await self.stream.append(event.to_fields(), self.maxlen)
        except Exception:  # never fail a request over its audit trail; log the bug instead
            log.warning("writing a recognition event failed", exc_info=True)
            written = False
        if not written:
            self._dropped()
            return
        if self.metrics is not None:
            self.metrics.events_recorded.labels(endpoint=event.endpoint, tier=event.tier).inc()

    async def recent(self, count: int, before: str | None = None) -> list[tuple[str, RecognitionEvent]]:
        """Up to `count` events, newest first; `before` (a stream id from an earlier page) pages
        back from there, exclusive. Raises `StoreUnavailable` during an outage."""
        return self._parsed(await self.stream.newest(count, before))

    async def between(self, start_s: float, end_s: float) -> list[tuple[str, RecognitionEvent]]:
        """Every event recorded from `start_s` to `end_s` (epoch seconds, inclusive), oldest
        first, read a page at a time. Raises `StoreUnavailable` during an outage."""
        return self._parsed(await self.stream.between(start_s, end_s))

    async def length(self) -> int:
        """Events the stream holds now."""
        return await self.stream.length()

    def _parsed(self, records: list[Record]) -> list[tuple[str, RecognitionEvent]]:
        """The records' events; one this earmark cannot read (damaged, or a newer format written
        by a newer earmark sharing the store) is left out, logged and counted, never fails the read."""
        events = []
        for stream_id, raw in records:
            try:
                events.append((stream_id, RecognitionEvent.from_fields(raw)))
            except ValueError as exc:
                log.warning("event %s left out: %s", stream_id, exc)
                if self.metrics is not None:
                    self.metrics.events_unreadable.inc()
        return events

    def _dropped(self) -> None:
        if self.metrics is not None:
            self.metrics.events_dropped.inc()
