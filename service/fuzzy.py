"""The fuzzy tier: find candidates by embedding, then verify each as the same recording.

A candidate is served only when all of these hold, each a named reason in /lookup's evidence
when it does not: the entry still exists in the store (the index is derived and may lag), it
was made by this fingerprint version, it is not a "no speech" entry, both recordings have
enough speech to judge, their speech durations agree within the contract's tolerance in both
directions, and every stretch of the aligned recordings matches (the worst decides).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field, replace

import numpy as np

from fingerprint.config import DEFAULT, FingerprintConfig
from fingerprint.embedding import embedding_from_energies
from fingerprint.matcher import verify
from fingerprint.robust_hash import RobustHash, robust_hash_from_energies
from fingerprint.spectrum import band_energies
from fingerprint.speech import speech_extent
from index.entry import Entry
from index.store import Store
from index.vectors import VectorIndex
from service.config import FuzzyThresholds
from service.metrics import Metrics
from service.profile import Profile


@dataclass(frozen=True)
class QueryFeatures:
    """What the fuzzy tier knows of one recording."""

    hash: RobustHash
    embedding: np.ndarray
    speech_s: float


@dataclass
class FuzzyMatch:
    """The accepted entry (or None) and every candidate's evidence."""

    entry: Entry | None
    score: float | None
    candidates: list[dict] = field(default_factory=list)


class FuzzyMatcher:
    """Candidate search in the vector index plus verification against stored hashes."""

    def __init__(self, thresholds: FuzzyThresholds, store: Store, index: VectorIndex, metrics: Metrics,
                 config: FingerprintConfig = DEFAULT) -> None:
        self.thresholds = thresholds
        self.store = store
        self.index = index
        self.metrics = metrics
        self.config = config
        # Who judged a match: verdicts recorded under other thresholds or another fingerprint
        # version are not reused (bytes once matched are judged again after `earmark tune`).
        self.judged_by = hashlib.blake2b(f"{config.version}|{thresholds!r}".encode(), digest_size=6).hexdigest()

    def features(self, pcm_16k: np.ndarray) -> QueryFeatures:
        """Hash, embedding and speech duration of a recording (CPU work: call off the loop)."""
        energies = band_energies(pcm_16k, self.config)
        return QueryFeatures(
            hash=robust_hash_from_energies(energies),
            embedding=embedding_from_energies(energies, self.config),
            speech_s=speech_extent(pcm_16k).duration_s,
        )

    def attach(self, entry: Entry, features: QueryFeatures) -> Entry:
        """The entry with its perceptual evidence, ready to store."""
        bits, levels = features.hash.to_bytes()
        return replace(
            entry,
            fingerprint=bits,
            fingerprint_levels=levels,
            embedding=features.embedding.astype("<f4").tobytes(),
            fingerprint_version=self.config.version,
        )

    async def match(self, features: QueryFeatures, profile: Profile) -> FuzzyMatch:
        """Find the entry this recording is a copy of, if any, with the evidence."""
        limits = self.thresholds
        if not limits.enabled:
            return FuzzyMatch(None, None)
        if features.speech_s < limits.min_speech_s:
            self.metrics.fuzzy_rejected.labels(reason="query_too_short").inc()
            return FuzzyMatch(None, None)
        found = self.index.search(profile.digest, features.embedding, limits.top_k)
        if not found:
            return FuzzyMatch(None, None)
        entries = await self.store.get_entries([entry_id for entry_id, _ in found])
        started = time.perf_counter()
        judged = await asyncio.to_thread(self._judge_all, features, profile.digest, found, entries)
        self.metrics.lookup_seconds.labels(stage="verify").observe(time.perf_counter() - started)
        best: tuple[float, Entry] | None = None
        candidates = []
        for (entry_id, similarity), entry, (accepted, score, reason) in zip(found, entries, judged):
            self.metrics.fuzzy_candidates.inc()
            if entry is None:
                self.index.remove(entry_id)  # expired, evicted or deleted: prune as we go
            if accepted:
                self.metrics.fuzzy_accepted.inc()
                if best is None or score > best[0]:
                    best = (score, entry)
            else:
                self.metrics.fuzzy_rejected.labels(reason=reason.split(":")[0]).inc()
            candidates.append({"entry": entry_id, "score": round(score, 4), "embedding_similarity": round(similarity, 4),
                               "accepted": accepted, "reason": reason})
        if best is None:
            return FuzzyMatch(None, None, candidates)
        return FuzzyMatch(best[1], best[0], candidates)

    def _judge_all(self, features: QueryFeatures, profile_id: str, found, entries) -> list[tuple[bool, float, str]]:
        return [self._judge(features, profile_id, similarity, entry) for (_, similarity), entry in zip(found, entries)]

    def _judge(self, features: QueryFeatures, profile_id: str, similarity: float, entry: Entry | None) -> tuple[bool, float, str]:
        """(accepted, score, reason) for one candidate; the score is the worst stretch's."""
        limits = self.thresholds
        if entry is None:
            return False, 0.0, "gone: the entry expired, was evicted or deleted"
        if entry.fingerprint_version != self.config.version or not entry.fingerprint:
            return False, 0.0, f"fingerprint_version: entry has {entry.fingerprint_version or 'none'}"
        if entry.profile_id != profile_id:
            return False, 0.0, "profile_mismatch: the entry belongs to another profile"
        if entry.negative:
            return False, 0.0, "negative_entry: no-speech entries are never fuzzy-matched"
        if entry.speech_s < limits.min_speech_s:
            return False, 0.0, f"too_short: entry has {entry.speech_s:.2f} s of speech"
        longer = max(entry.speech_s, features.speech_s)
        tolerance = max(limits.duration_tolerance_s, limits.duration_tolerance_ratio * longer)
        if abs(entry.speech_s - features.speech_s) > tolerance:
            return False, 0.0, (f"duration_mismatch: speech {features.speech_s:.2f} s vs entry {entry.speech_s:.2f} s "
                                f"(tolerance {tolerance:.2f} s)")
        if similarity < limits.min_embedding_similarity:
            return False, 0.0, f"embedding_below_threshold: {similarity:.3f} < {limits.min_embedding_similarity}"
        reference = RobustHash.from_bytes(entry.fingerprint, entry.fingerprint_levels)
        verdict = verify(features.hash, reference, self.config)
        if verdict.windows == 0:
            return False, 0.0, "no_comparable_stretch"
        if verdict.worst_score < limits.min_window_score:
            return False, verdict.worst_score, (f"window_below_threshold: worst stretch {verdict.worst_score:.3f} "
                                                f"< {limits.min_window_score} (mean {verdict.mean_score:.3f})")
        if verdict.worst_short_score < limits.min_short_window_score:
            return False, verdict.worst_score, (f"short_window_below_threshold: worst 0.25 s stretch "
                                                f"{verdict.worst_short_score:.3f} < {limits.min_short_window_score}")
        return True, verdict.worst_score, (f"accepted: worst stretch {verdict.worst_score:.3f} over {verdict.windows} "
                                           f"stretches (worst 0.25 s stretch {verdict.worst_short_score:.3f}), "
                                           f"offset {verdict.offset_s:+.3f} s")
