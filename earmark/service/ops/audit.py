"""The dedup audit's data: what was reused, whether it was safe, and what reuse was missed.

Read from a deployment's store: its entries and the recognition event log (service/pipeline/events.py).
The tables: entries by profile; answers per tier over time with the engine seconds spent and
saved; the most reused entries; every fuzzy hit near the threshold, each redrawn stretch by
stretch from the stored fingerprints with the service's own matcher (fingerprint/matcher.py);
near-duplicate entries stored separately (clusters of entries the service's own verification,
service/pipeline/verification.py, accepts as copies of each other: reuse that was missed); and the live score
distribution (the best fuzzy candidate's score of each lookup, hits against misses).

`earmark audit` writes it as report.html, audit.json and CSV files (service/ops/audit_report.py);
`GET /audit` serves the same JSON. Everything here is a plain dict of JSON values.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any
from datetime import datetime, timezone

import numpy as np

from earmark.fingerprint.config import DEFAULT as DEFAULT_FINGERPRINT
from earmark.fingerprint.detail import BANDS, detail_from_bytes, wide_from_bytes
from earmark.fingerprint.embedding import EMBEDDING_DIM
from earmark.fingerprint.matcher import stretch_scores
from earmark.fingerprint.robust_hash import RobustHash
from earmark.index.entry import Entry
from earmark.index.operator_reads import all_entry_ids
from earmark.index.store import Store
from earmark.index.vectors import VectorIndex
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.events import HIT_TIERS, RECOGNITION_ENDPOINTS, TIERS, EventLog, RecognitionEvent
from earmark.service.pipeline.verification import QueryFeatures, Verifier

# (stage, done, total): where a long audit is, for a progress bar.
Progress = Callable[[str, int, int], None]
READ_BATCH = 200
# Time buckets of the "over time" table: the smallest giving at most MAX_BUCKETS rows.
BUCKETS_S = (1, 10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 48
SCORE_BIN = 0.02


@dataclass(frozen=True)
class AuditOptions:
    """What the audit lists: hits under threshold + `review_margin` are near it; the `top`
    most reused entries; the newest `hits_limit` hits (the JSON lists each with its entry)."""

    review_margin: float = 0.05
    top: int = 20
    hits_limit: int = 1000


async def collect_audit(store: Store, events: EventLog, thresholds: FuzzyThresholds,
                        options: AuditOptions = AuditOptions(), *, source: str = "",
                        progress: Progress | None = None) -> dict:
    """The whole audit as JSON-ready data. Raises `StoreUnavailable` during an outage.

    CPU work (verifying pairs of entries, redrawing matches) runs in threads, so a service
    answering `GET /audit` keeps serving meanwhile."""
    progress = progress or (lambda stage, done, total: None)
    entries = await _read_entries(store, progress)
    log = [event for _, event in await events.between(0.0, time.time() + 60.0)]
    served = [event for event in log if event.endpoint in RECOGNITION_ENDPOINTS]
    accept = thresholds.min_window_score
    near = await _near_threshold(served, store, events, accept + options.review_margin, progress)
    clusters = await _near_duplicates(entries, store, Verifier(thresholds), progress)
    # The tables are plain Python over up to `events_maxlen` events: off the event loop too.
    return await asyncio.to_thread(_tables, entries, log, served, near, clusters, events.maxlen,
                                   {"accept": accept, "review_margin": options.review_margin, **asdict(thresholds)},
                                   options, source)


def _tables(entries: dict[str, Entry], log: list[RecognitionEvent], served: list[RecognitionEvent], near: list[dict],
            clusters: list[dict], events_cap: int, limits: dict, options: AuditOptions, source: str) -> dict:
    hits = [event for event in served if event.tier in HIT_TIERS and event.entry_id]
    partial = [event for event in served if event.tier == "partial"]
    saved = sum(event.engine_s_saved for event in served)
    spent = sum(event.engine_s_spent for event in served)
    return {
        "generated_at": _iso(time.time()),
        "source": source,
        "thresholds": limits,
        "summary": {
            "entries": len(entries),
            "events": len(log),
            "events_cap": events_cap,
            "first_event": _iso(log[0].time) if log else None,
            "last_event": _iso(log[-1].time) if log else None,
            "answers": len(served),
            "lookups": len(log) - len(served),
            "hits": len(hits),
            "hit_rate": round(len(hits) / len(served), 4) if served else None,
            # Answers that reused cached recordings inside the upload (tier partial), and what they saved.
            "partial_hits": len(partial),
            "partial_engine_seconds_saved": round(sum(event.engine_s_saved for event in partial), 3),
            "engine_seconds_saved": round(saved, 3),
            "engine_seconds_spent": round(spent, 3),
            "near_threshold_hits": len(near),
            "near_duplicate_clusters": len(clusters),
            "entries_in_near_duplicate_clusters": sum(len(cluster["entries"]) for cluster in clusters),
        },
        "entries_by_profile": _entries_by_profile(entries, log),
        "tiers_over_time": _over_time(served),
        "engine_seconds": _engine_seconds(served),
        "most_reused": _most_reused(hits, entries, options.top),
        "near_threshold": near,
        "near_duplicates": clusters,
        "score_distribution": _score_distribution(log),
        "hits_total": len(hits),
        "hits": [_hit_row(event) for event in reversed(hits[-options.hits_limit:])] if options.hits_limit else [],
    }


# ------------------------------------------------------------------------------------------
# Reading the store


async def _read_entries(store: Store, progress: Progress) -> dict[str, Entry]:
    """Every entry, without its fingerprint, detail and pitch (re-read when a pair is verified):
    an audit of a big store holds ids, figures and embeddings only."""
    entry_ids = await all_entry_ids(store)
    entries: dict[str, Entry] = {}
    for start in range(0, len(entry_ids), READ_BATCH):
        batch = entry_ids[start:start + READ_BATCH]
        for entry in await store.get_entries(batch):
            if entry is not None:
                entries[entry.entry_id] = replace(entry, fingerprint=b"", fingerprint_levels=b"", detail=b"", wide=b"",
                                                  pitch=b"", segments=())
        progress("reading entries", min(start + READ_BATCH, len(entry_ids)), len(entry_ids))
    return entries


# ------------------------------------------------------------------------------------------
# Tables from the event log


def _entries_by_profile(entries: dict[str, Entry], log: list[RecognitionEvent]) -> list[dict]:
    namespaces = {event.profile_id: event.namespace for event in log}
    groups: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries.values():
        groups[entry.profile_id].append(entry)
    rows = []
    for profile_id, members in groups.items():
        rows.append({
            "profile": profile_id,
            "namespace": namespaces.get(profile_id),
            "engine": Counter(entry.engine for entry in members).most_common(1)[0][0],
            "entries": len(members),
            "negative": sum(entry.negative for entry in members),
            "fingerprinted": sum(bool(entry.embedding) for entry in members),
            "audio_s": round(sum(entry.duration_s for entry in members), 3),
            "engine_s": round(sum(entry.engine_seconds for entry in members), 3),
        })
    return sorted(rows, key=lambda row: -row["entries"])


def _over_time(served: list[RecognitionEvent]) -> dict:
    """Answers per tier, and engine seconds spent and saved, per time bucket."""
    if not served:
        return {"bucket_s": BUCKETS_S[0], "tiers": [], "rows": []}
    # Not the stream's first and last: each event's time is its process's clock before its
    # XADD, so concurrent requests, replicas' skew or a clock step can land them out of order.
    first, last = min(event.time for event in served), max(event.time for event in served)
    bucket_s = next((size for size in BUCKETS_S if (last - first) / size < MAX_BUCKETS), BUCKETS_S[-1])
    tiers = sorted({event.tier for event in served}, key=_tier_order)
    # Every bucket from the first to the last, quiet ones too: the time axis stays true.
    rows: dict[int, dict[str, Any]] = {start: {"start": _iso(start), **{tier: 0 for tier in tiers}, "engine_s_saved": 0.0, "engine_s_spent": 0.0}
            for start in range(int(first // bucket_s * bucket_s), int(last) + 1, bucket_s)}
    for event in served:
        row = rows[int(event.time // bucket_s * bucket_s)]
        row[event.tier] += 1
        row["engine_s_saved"] = round(row["engine_s_saved"] + event.engine_s_saved, 3)
        row["engine_s_spent"] = round(row["engine_s_spent"] + event.engine_s_spent, 3)
    return {"bucket_s": bucket_s, "tiers": tiers, "rows": [rows[start] for start in sorted(rows)]}


def _engine_seconds(served: list[RecognitionEvent]) -> list[dict]:
    """Engine seconds saved and spent, and answers, by endpoint and tier."""
    rows: dict[tuple[str, str], dict] = {}
    for event in served:
        row = rows.setdefault((event.endpoint, event.tier), {"endpoint": event.endpoint, "tier": event.tier,
                                                             "answers": 0, "engine_s_saved": 0.0,
                                                             "engine_s_spent": 0.0, "audio_s": 0.0})
        row["answers"] += 1
        row["engine_s_saved"] = round(row["engine_s_saved"] + event.engine_s_saved, 3)
        row["engine_s_spent"] = round(row["engine_s_spent"] + event.engine_s_spent, 3)
        row["audio_s"] = round(row["audio_s"] + event.duration_s, 3)
    return sorted(rows.values(), key=lambda row: (row["endpoint"], _tier_order(row["tier"])))


def _most_reused(hits: list[RecognitionEvent], entries: dict[str, Entry], top: int) -> list[dict]:
    by_entry: dict[str, list[RecognitionEvent]] = defaultdict(list)
    for event in hits:
        by_entry[event.entry_id or ""].append(event)
    ranked = sorted(by_entry.items(), key=lambda item: (-len(item[1]), item[0]))[:top]
    rows = []
    for entry_id, events in ranked:
        entry = entries.get(entry_id)
        tiers = Counter(event.tier for event in events)
        rows.append({
            "entry": entry_id,
            "hits": len(events),
            **{f"{tier}_hits": tiers.get(tier, 0) for tier in HIT_TIERS},
            "engine_s_saved": round(sum(event.engine_s_saved for event in events), 3),
            "last_hit": _iso(events[-1].time),
            "text": (None if entry is None else "(no speech)" if entry.negative else entry.text[:120]),
            "stored": entry is not None,
        })
    return rows


def _score_distribution(log: list[RecognitionEvent]) -> dict:
    """The best fuzzy candidate's score of every answer the fuzzy tier decided (a fuzzy hit,
    or a miss with candidates), lookups included: how close misses came, how close hits were."""
    judged = [(event.tier, event.best_score) for event in log
              if event.best_score is not None and event.tier in ("fuzzy", "miss", "bypass")]
    hit_scores = [score for tier, score in judged if tier == "fuzzy"]
    miss_scores = [score for tier, score in judged if tier != "fuzzy"]
    edges = np.round(np.arange(0.0, 1.0 + SCORE_BIN / 2, SCORE_BIN), 4)
    hit_counts = np.histogram(hit_scores, bins=edges)[0] if hit_scores else np.zeros(len(edges) - 1, dtype=int)
    miss_counts = np.histogram(miss_scores, bins=edges)[0] if miss_scores else np.zeros(len(edges) - 1, dtype=int)
    # Why misses were misses: the best candidate's refusal, or why no candidate was examined.
    rejections = Counter(event.rejection.split(":")[0] for event in log
                         if event.tier in ("miss", "bypass") and event.rejection)
    return {
        "hits": len(hit_scores),
        "misses": len(miss_scores),
        "lowest_hit": min(hit_scores) if hit_scores else None,
        "highest_miss": max(miss_scores) if miss_scores else None,
        "miss_reasons": dict(rejections.most_common()),
        "hit_scores": [round(score, 4) for score in hit_scores],
        "miss_scores": [round(score, 4) for score in miss_scores],
        "rows": [{"from": float(edges[i]), "to": float(edges[i + 1]), "hits": int(hit_counts[i]),
                  "misses": int(miss_counts[i])}
                 for i in range(len(edges) - 1) if hit_counts[i] or miss_counts[i]],
    }


def _hit_row(event: RecognitionEvent) -> dict:
    return {"time": _iso(event.time), "endpoint": event.endpoint, "tier": event.tier, "entry": event.entry_id,
            "score": event.score, "engine_s_saved": round(event.engine_s_saved, 3), "query_digest": event.query_digest,
            "namespace": event.namespace}


# ------------------------------------------------------------------------------------------
# Fuzzy hits near the threshold, redrawn stretch by stretch


async def _near_threshold(served: list[RecognitionEvent], store: Store, events: EventLog, below: float,
                          progress: Progress) -> list[dict]:
    """Each distinct (query bytes, entry) fuzzy hit scoring under `below`, with its ~1 s stretch
    scores: the query fingerprint the service kept for it against the entry's stored one."""
    groups: dict[tuple[str, str, str], list[RecognitionEvent]] = defaultdict(list)
    for event in served:
        if event.tier == "fuzzy" and event.score is not None and event.score < below and event.entry_id:
            groups[(event.profile_id, event.query_digest, event.entry_id)].append(event)
    rows = []
    for number, ((profile_id, query_digest, entry_id), hits) in enumerate(sorted(groups.items(),
                                                                                 key=lambda item: item[1][0].score or 0.0)):
        row: dict[str, Any] = {"entry": entry_id, "query_digest": query_digest, "profile": profile_id, "score": hits[0].score,
               "hits": len(hits), "first_hit": _iso(hits[0].time), "last_hit": _iso(hits[-1].time),
               "curve": [], "worst_at_s": None, "worst_stretch_score": None, "note": ""}
        kept = await events.query_print(profile_id, query_digest)
        entry = await store.get_entry(entry_id)
        if kept is None:
            row["note"] = "the query's fingerprint was not kept (expired, or scored above the review margin then)"
        elif entry is None or not entry.fingerprint:
            row["note"] = "the entry is gone (expired, evicted or deleted)"
        else:
            reference = RobustHash.from_bytes(entry.fingerprint, entry.fingerprint_levels)
            starts, scores = await asyncio.to_thread(stretch_scores, kept[1], reference, DEFAULT_FINGERPRINT)
            if scores.size:
                worst = int(np.argmin(scores))
                row.update(curve=[[float(t), round(float(s), 4)] for t, s in zip(starts, scores, strict=True)],
                           worst_at_s=float(starts[worst]), worst_stretch_score=round(float(scores[worst]), 4))
            row["text"] = entry.text[:120]
        rows.append(row)
        progress("redrawing near-threshold hits", number + 1, len(groups))
    return rows


# ------------------------------------------------------------------------------------------
# Near-duplicate entries: reuse that was missed


def _candidate_pairs(index, candidates: list[Entry], k: int, min_similarity: float) -> list[list[tuple[str, float]]]:
    """For each entry, its nearest stored neighbours (later ids only: each pair once)."""
    for entry in candidates:
        index.add(entry.profile_id, entry.entry_id, np.frombuffer(entry.embedding, dtype="<f4"))
    return [[(other, similarity) for other, similarity in
             index.search(entry.profile_id, np.frombuffer(entry.embedding, dtype="<f4"), k)
             if other > entry.entry_id and similarity >= min_similarity]
            for entry in candidates]


async def _near_duplicates(entries: dict[str, Entry], store: Store, verifier: Verifier,
                           progress: Progress) -> list[dict]:
    """Clusters of entries of one profile that the service's verification accepts as copies of
    one another: candidates from a FAISS index of the stored embeddings, each pair verified
    (Verifier.judge) from the stored fingerprints, detail and pitch."""
    limits = verifier.thresholds
    index = VectorIndex(EMBEDDING_DIM, "flat")
    candidates = [entry for entry in entries.values()
                  if entry.embedding and not entry.negative and entry.fingerprint_version == verifier.config.version]
    # Off the event loop: indexing and searching every stored entry is seconds on a big store,
    # and the service answers hits meanwhile.
    found_of = await asyncio.to_thread(_candidate_pairs, index, candidates, limits.top_k + 1,
                                       limits.min_embedding_similarity)
    parent: dict[str, str] = {}

    def root(entry_id: str) -> str:
        while parent.get(entry_id, entry_id) != entry_id:
            entry_id = parent[entry_id]
        return entry_id

    pairs: list[dict] = []
    for number, (entry, found) in enumerate(zip(candidates, found_of, strict=True)):
        if found:
            full = await store.get_entries([entry.entry_id, *(other for other, _ in found)])
            if full[0] is not None:
                features = _features_of_entry(full[0])
                judged = await asyncio.to_thread(_judge_all, verifier, features, entry.profile_id, found, full[1:])
                for (other_id, _), (accepted, score, reason) in zip(found, judged, strict=True):
                    if accepted:
                        pairs.append({"a": entry.entry_id, "b": other_id, "score": round(score, 4), "reason": reason})
                        parent[root(other_id)] = root(entry.entry_id)
        progress("checking entries for near-duplicates", number + 1, len(candidates))
    members: dict[str, list[str]] = defaultdict(list)
    for entry_id in {pair["a"] for pair in pairs} | {pair["b"] for pair in pairs}:
        members[root(entry_id)].append(entry_id)
    clusters = []
    for group in members.values():
        group.sort(key=lambda entry_id: entries[entry_id].created_at)
        inside = set(group)
        clusters.append({
            "profile": entries[group[0]].profile_id,
            "entries": [{"entry": entry_id, "created_at": _iso(entries[entry_id].created_at),
                         "duration_s": round(entries[entry_id].duration_s, 3),
                         "engine_s": round(entries[entry_id].engine_seconds, 3),
                         "text": entries[entry_id].text[:120]} for entry_id in group],
            "pairs": [pair for pair in pairs if pair["a"] in inside],
            # Every entry after the first was a run the engine need not have made.
            "engine_s_missed": round(sum(entries[entry_id].engine_seconds for entry_id in group[1:]), 3),
        })
    return sorted(clusters, key=lambda cluster: -len(cluster["entries"]))


def _judge_all(verifier: Verifier, features: QueryFeatures, profile_id: str, found, others) -> list:
    return [verifier.judge(features, profile_id, similarity, other)
            for (_, similarity), other in zip(found, others, strict=True)]


def _features_of_entry(entry: Entry) -> QueryFeatures:
    """A stored entry's evidence in the shape of a query's, so it can be judged against others
    as a request would be: at the stored phase of its detail spectrum only (an entry keeps no
    finer phases, and no PCM to compute them from)."""
    return QueryFeatures(
        hash=RobustHash.from_bytes(entry.fingerprint, entry.fingerprint_levels),
        embedding=np.frombuffer(entry.embedding, dtype="<f4"),
        speech_s=entry.speech_s,
        detail=_detail_or_empty(entry.detail),
        pitch=np.frombuffer(entry.pitch, dtype=np.uint8),
        detail_phases=(),
        wide=wide_from_bytes(entry.wide),  # None for an entry without one: judged without it
    )


def _detail_or_empty(raw: bytes) -> np.ndarray:
    detail = detail_from_bytes(raw)
    return detail if detail is not None else np.zeros((0, BANDS), dtype=np.uint8)


def _tier_order(tier: str) -> tuple[int, str]:
    return (TIERS.index(tier) if tier in TIERS else len(TIERS), tier)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


async def audit_settings_store(settings, options: AuditOptions, *, source: str, progress: Progress | None = None) -> dict:
    """The audit of the store `settings.redis_url` names (`earmark audit --redis-url/--data-dir`),
    with the thresholds and event-log cap those settings carry."""
    from earmark.index.keys import Keys

    store = Store.open(settings.redis_url, Keys(settings.key_prefix), bulk_dir=settings.bulk_dir)
    try:
        return await collect_audit(store, EventLog(store, settings.events_maxlen), settings.fuzzy, options,
                                   source=source, progress=progress)
    finally:
        await store.close()
