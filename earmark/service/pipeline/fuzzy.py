"""The fuzzy tier: find candidates by embedding in the vector index, then verify each as the
same recording (service/pipeline/verification.py); the entry must still exist in the store
(the index is derived and may lag)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from earmark.index.entry import Entry
from earmark.index.store import Store
from earmark.index.vectors import VectorIndex
from earmark.service.metrics import Metrics
from earmark.service.pipeline.profile import Profile
from earmark.service.pipeline.verification import Judgement, QueryFeatures, Verifier


@dataclass
class FuzzyMatch:
    """The accepted entry (or None) and every candidate's evidence."""

    entry: Entry | None
    score: float | None
    candidates: list[dict] = field(default_factory=list)
    note: str | None = None  # why no candidate was examined (query_too_short, no_candidates, disabled)


class FuzzyMatcher:
    """Candidate search in the vector index, each candidate judged by the verifier."""

    def __init__(self, verifier: Verifier, store: Store, index: VectorIndex, metrics: Metrics) -> None:
        self.verifier = verifier
        self.store = store
        self.index = index
        self.metrics = metrics

    async def index_now(self, entry: Entry) -> None:
        """Make an entry this process just stored findable here at once: the index replica adds
        it too when it reads the change stream (adding twice is harmless), but a copy sent right
        after its original's miss must not wait for that, and on a busy machine it can lag by
        seconds. Other processes still learn of it from the stream. The vector is the entry's
        own (rounded as stored), not the query's: every process indexes the same one."""
        await asyncio.to_thread(self.index.add, entry.profile_id, entry.entry_id, entry.embedding_vector)

    async def match(self, features: QueryFeatures, profile: Profile) -> FuzzyMatch:
        """Find the entry this recording is a copy of, if any, with the evidence."""
        limits = self.verifier.thresholds
        if not limits.enabled:
            return FuzzyMatch(None, None, note="disabled: the fuzzy tier is off")
        if features.speech_s < limits.min_speech_s:
            self.metrics.fuzzy_rejected.labels(reason="query_too_short").inc()
            return FuzzyMatch(None, None, note=f"query_too_short: {features.speech_s:.2f} s of speech "
                                               f"< {limits.min_speech_s} s")
        found = self.index.search(profile.digest, features.embedding, limits.top_k)
        if not found:
            return FuzzyMatch(None, None, note="no_candidates: the index holds no entry of this profile")
        entries = await self.store.get_entries([entry_id for entry_id, _ in found])
        started = time.perf_counter()
        judged = await asyncio.to_thread(self._evaluate_all, features, profile.digest, found, entries)
        self.metrics.lookup_seconds.labels(stage="verify").observe(time.perf_counter() - started)
        best: tuple[float, Entry] | None = None
        candidates = []
        for (entry_id, similarity), entry, judgement in zip(found, entries, judged, strict=True):
            accepted, score, reason, stretches = (judgement.accepted, judgement.score, judgement.reason,
                                                  judgement.stretches)
            self.metrics.fuzzy_candidates.inc()
            if judgement.level_compressed:
                self.metrics.fuzzy_level_compressed.labels(accepted=str(accepted).lower()).inc()
            if judgement.coarse_line_excused:
                self.metrics.fuzzy_coarse_line_excused.labels(accepted=str(accepted).lower()).inc()
            if entry is None:
                self.index.remove(entry_id)  # expired, evicted or deleted: prune as we go
            if accepted and entry is not None:  # a gone entry is never accepted
                self.metrics.fuzzy_accepted.inc()
                if best is None or score > best[0]:
                    best = (score, entry)
            else:
                self.metrics.fuzzy_rejected.labels(reason=reason.split(":")[0]).inc()
            candidate = {"entry": entry_id, "score": round(score, 4), "embedding_similarity": round(similarity, 4),
                         "accepted": accepted, "reason": reason}
            if stretches:
                candidate["stretches"] = [{"at_s": at_s, "score": stretch_score} for at_s, stretch_score in stretches]
            candidates.append(candidate)
        if best is None:
            return FuzzyMatch(None, None, candidates)
        return FuzzyMatch(best[1], best[0], candidates)

    def _evaluate_all(self, features: QueryFeatures, profile_id: str, found, entries) -> list[Judgement]:
        # Stopping at the hashes: the query's deferred detail and pitch are computed only if some
        # candidate gets past them (once, shared by every candidate that does).
        return [self.verifier.evaluate(features, profile_id, similarity, entry, stop_at_hashes=True)
                for (_, similarity), entry in zip(found, entries, strict=True)]

