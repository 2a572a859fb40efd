"""The lookup pipeline: exact bytes, canonical PCM, then perceptual match; else the engine.

`recognize` may run the engine and write the result; `lookup` answers what `recognize` would do
now, with its evidence, and never runs the engine or writes. A request's cache control
(service/pipeline/cache_directives.py) may skip the lookup (`no-cache`), forbid writing (`no-store`) or
shorten the written entry's life (`max-age`). When the store is unreachable both
carry on without it (tier `bypass`): the cache must never turn into an outage.

A miss is run once however many requests ask for the same new audio at the same moment
(service/pipeline/single_flight.py): requests in this process share one future, and processes
sharing the store take a lock with an expiry (renewed while the engine runs) and the others wait
for the entry to appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from earmark.fingerprint.canonical import PcmDigest
from earmark.fingerprint.decode import SAMPLE_RATE, AudioError, AudioStream, budget_seconds, decode_audio, open_audio
from earmark.fingerprint.speech import has_sound, speech_extent
from earmark.index.breaker import try_store
from earmark.index.entry import Entry, make_entry_id
from earmark.index.store import FuzzyVerdict, Store
from earmark.service.config import Settings
from earmark.service import memory
from earmark.service.pipeline.cache_directives import DEFAULT as DEFAULT_CONTROL, CacheControl
from earmark.service.pipeline.decode_budget import DecodeBudget, Reservation
from earmark.service.engines.base import Transcript
from earmark.service.engines.pool import EnginePool
from earmark.service.pipeline.events import EventLog
from earmark.service.metrics import Metrics
from earmark.service.pipeline.profile import Profile
from earmark.service.pipeline.query import QueryAudio
from earmark.service.pipeline.routing import Identify, LanguageRouter
from earmark.service.pipeline.segments import (
    Part,
    ReusedSpan,
    SpanFinder,
    joined,
    samples_of,
    shifted_segments,
    split_heard,
    stitched,
    to_hear,
)
from earmark.service.pipeline.single_flight import MissesInFlight
from earmark.service.pipeline.verification import DEFERRED_PARTS, QUERY_ONLY_PARTS, QueryFeatures
from earmark.service.pipeline.upload import Upload

log = logging.getLogger(__name__)

# Audio up to this long is kept decoded for the request's later stages (at most 7.7 MB).
KEEP_PCM_S = 120.0
# Uploads up to this long are searched for cached recordings inside them (segment reuse): a
# call, an episode, a meeting; decoded whole for the search (inside the decode budget, as the
# engine's run of a miss is: 460 MB at two hours).
MAX_SEGMENT_SEARCH_S = 7200.0


@dataclass
class Outcome:
    """How a request was (or would be) answered, and with what."""

    tier: str
    entry: Entry | None = None
    result: dict | None = None
    score: float | None = None
    candidates: list[dict] = field(default_factory=list)
    elapsed_ms: float = 0.0
    engine_s_spent: float = 0.0  # the engine's time for this request (0 on a hit)
    query_hash: object = None  # a fuzzy match's query fingerprint (a RobustHash), for the audit
    fuzzy_note: str | None = None  # why the fuzzy tier examined no candidate, when it ran (for the audit)
    # Tier partial (service/pipeline/segments.py): the cached recordings reused inside the upload.
    spans: list[ReusedSpan] = field(default_factory=list)

    @property
    def engine_s_saved(self) -> float:
        """What the reused spans saved: their entries' own engine runs (0 without spans)."""
        return sum(span.entry.engine_seconds for span in self.spans)

    def cache_info(self, *, with_candidates: bool = False) -> dict:
        """The contract's `cache` object."""
        info: dict[str, object] = {
            "tier": self.tier,
            "entry": self.entry.entry_id if self.entry is not None else None,
            "score": None if self.score is None else round(self.score, 4),
            "elapsed_ms": round(self.elapsed_ms, 2),
            # The entry's engine time: spent on a miss, saved on a hit (what `earmark batch` sums).
            "engine_seconds": round(self.entry.engine_seconds, 3) if self.entry is not None else None,
        }
        if self.tier == "partial":
            # The engine's time on the audio no span covers (what this request spent; the entry
            # keeps the whole recording's estimate, spent plus saved, for later hits to save);
            # /lookup runs nothing (null: it has no result) and reports what the spans would save.
            info["engine_seconds"] = round(self.engine_s_spent, 3) if self.result is not None else None
            info["engine_seconds_saved"] = round(self.engine_s_saved, 3)
            info["spans"] = [span.as_dict() for span in self.spans]
        if with_candidates:
            info["candidates"] = self.candidates
        return info


class RecognitionCache:
    """Answers recognition requests from the store when it can, from the engine when not."""

    def __init__(self, settings: Settings, store: Store, pool: EnginePool, metrics: Metrics, fuzzy=None,
                 events: EventLog | None = None, router: LanguageRouter | None = None,
                 spans: SpanFinder | None = None) -> None:
        self.settings = settings
        self.spans = spans  # finds cached recordings inside a missed upload; None: segment reuse off
        # Picks a miss's engine by its spoken language (service/pipeline/routing.py); None: `pool`'s engine.
        self.router = router
        self.events = events  # one event per answer (service/pipeline/events.py); None: none recorded
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self.fuzzy = fuzzy
        self.budget = DecodeBudget(
            settings.decode_budget_s, on_change=metrics.decode_budget_in_use.set, on_refused=metrics.decode_budget_refused.inc,
            on_grown=metrics.decode_budget_grown.inc,
        )
        self.in_flight = MissesInFlight(store, metrics, settings.lock_ttl_ms)

    async def recognize(self, upload: Upload | bytes, profile: Profile, *, started: float | None = None,
                        control: CacheControl = DEFAULT_CONTROL, endpoint: str = "recognize",
                        identify: Identify | None = None) -> Outcome:
        """Answer from cache or run the engine, writing a new entry on a miss.

        `started` (a `time.perf_counter()` reading) is when the request arrived, so that the
        reported `elapsed_ms` includes receiving the upload. `control` is the request's cache
        control: `no-cache` runs the engine whatever is cached (and stores the result),
        `no-store` writes nothing (a miss is then answered as `bypass`), `max-age` shortens the
        TTL of an entry this request writes. `endpoint` names the caller in the event log.
        `identify` (from `LanguageRouter.plan`): a miss identifies its spoken language first and
        is refused (`LanguageNotServed`, nothing cached) or routed by it; None: the profile's
        engine hears it.
        """
        return await self._answer(upload, profile, run=True, control=control, started=started, endpoint=endpoint,
                                  identify=identify)

    async def lookup(self, upload: Upload | bytes, profile: Profile, *, started: float | None = None) -> Outcome:
        """What `recognize` would answer now, without running the engine or writing."""
        return await self._answer(upload, profile, run=False, control=DEFAULT_CONTROL, started=started,
                                  endpoint="lookup")

    async def _answer(self, upload: Upload | bytes, profile: Profile, *, run: bool, control: CacheControl,
                      started: float | None, endpoint: str, identify: Identify | None = None) -> Outcome:
        started = time.perf_counter() if started is None else started
        query = QueryAudio(Upload.from_bytes(upload) if isinstance(upload, bytes) else upload)
        try:
            outcome = await self._find_or_run(query, profile, run=run, control=control, identify=identify)
        finally:
            if (query.audio_seconds or 0.0) >= memory.TRIM_AFTER_AUDIO_S:
                # Long audio's passes freed hundreds of MB into the allocator's arenas: give
                # them back (service/memory.py), off the loop and without making anyone wait.
                asyncio.get_running_loop().run_in_executor(None, self._give_back_memory)
        if not run and outcome.entry is not None and not outcome.candidates:
            outcome.candidates = await self._candidates_of(query, profile)
        self._count_skipped(query)
        outcome.elapsed_ms = _ms_since(started)
        if self.events is not None:
            await self.events.record_answer(outcome, endpoint=endpoint, query_digest=query.digest, profile=profile,
                                            served=run)
        return outcome

    async def _find_or_run(self, query: QueryAudio, profile: Profile, *, run: bool, control: CacheControl,
                           identify: Identify | None = None) -> Outcome:
        """Walk the tiers in order; the first that answers wins.

        `run`: the engine may run and a hit is served (recognize), or neither (lookup).
        `write`, below: the store may be written (recognize without `no-store`)."""
        write = run and control.writes
        upload_digest = query.digest
        store_ok = self.store.up
        look = not control.no_cache

        if store_ok and look:
            with self._stage("exact"):
                found, store_ok = await try_store(
                    lambda: self.store.entry_and_verdict_of_bytes(profile.digest, upload_digest)
                )
            entry, verdict = found or (None, None)
            if entry is not None and verdict is None:
                return self._hit("exact", entry, served=run)
            if entry is not None and verdict is not None and self.fuzzy is not None and verdict.judged_by == self.fuzzy.verifier.judged_by:
                # These bytes were matched before, under the thresholds in force now.
                return self._hit("fuzzy", entry, served=run, verdict=verdict)
            # A verdict by other thresholds (or a fuzzy tier now off) is judged afresh below.

        # A first pass keeps nothing but the digest: an hour of audio is never held here. The
        # container is opened once, for the decode budget's estimate and for the pass itself.
        with self._stage("decode"):
            audio = await asyncio.to_thread(open_audio, query.open(), self.settings.max_duration_s)
            query.audio_seconds = budget_seconds(audio, query.size, self.settings.max_duration_s)
            try:
                async with self._decoding(query) as reservation:
                    audio_digest = await asyncio.to_thread(_pcm_digest_of, query, self.settings.max_duration_s, audio,
                                                           reservation.cover)
            finally:
                audio.close()

        candidates: list[dict] = []
        fuzzy_note = None
        if store_ok and look:
            with self._stage("canonical"):
                entry, store_ok = await try_store(
                    lambda: self.store.entry_by_canonical(profile.digest, audio_digest)
                )
            if entry is not None:
                outcome = await self._hit_and_alias("canonical", entry, upload_digest, write=write, served=run)
                if outcome is not None:
                    return outcome
        features = None
        if store_ok and look and self.fuzzy is not None:
            async with self._decoding(query) as reservation:
                with self._stage("fingerprint"):
                    features = await asyncio.to_thread(self._features_of, query, reservation.cover)
            with self._stage("fuzzy"):
                # Deferred features are computed (once) only if a candidate reaches their check.
                match, store_ok = await try_store(lambda: self.fuzzy.match(features, profile))
            if match is not None:
                candidates, fuzzy_note = match.candidates, match.note
                if match.entry is not None:
                    verdict = FuzzyVerdict(match.score, self.fuzzy.verifier.judged_by)
                    outcome = await self._hit_and_alias("fuzzy", match.entry, upload_digest, write=write,
                                                        served=run, verdict=verdict)
                    if outcome is not None:
                        outcome.candidates, outcome.query_hash = candidates, features.hash
                        return outcome

        reused: list[ReusedSpan] = []
        finder = self.spans
        if store_ok and look and finder is not None and features is not None and self._may_hold_spans(query):
            async with self._decoding(query):
                pcm = await self._pcm_of(query)
                with self._stage("segments"):
                    spans_found, store_ok = await try_store(lambda: finder.find(pcm, profile, features))
            reused = spans_found or []
            if reused and run:
                query.pcm = pcm  # the engine hears its uncovered stretches next: not decoded again

        if not run:
            tier = "partial" if reused and store_ok else "miss" if store_ok else "bypass"
            return Outcome(tier=tier, candidates=candidates, fuzzy_note=fuzzy_note, spans=reused if store_ok else [])
        ttl_cap_s = control.max_age_s
        if not write or control.no_cache:
            # The client asked for an engine run (no-cache), or for nothing to be kept
            # (no-store): neither shares another request's run, nor waits for one.
            outcome = await self._run_and_store(query, audio_digest, upload_digest, profile, store_ok and write,
                                                features, ttl_cap_s, identify, reused)
        else:
            outcome = await self._single_flight(query, audio_digest, upload_digest, profile, store_ok, features,
                                                ttl_cap_s, identify, reused)
        outcome.candidates, outcome.fuzzy_note = candidates, fuzzy_note
        return outcome

    async def _single_flight(
        self, query: QueryAudio, audio_digest: str, upload_digest: str, profile: Profile, store_ok: bool, features,
        ttl_cap_s: int | None, identify: Identify | None, reused: list[ReusedSpan],
    ) -> Outcome:
        """Run the miss once (service/pipeline/single_flight.py): in this process later callers
        share its answer; across processes sharing the store, the others serve the entry it writes."""
        def run(store_ok: bool) -> Awaitable[Outcome]:
            return self._run_and_store(query, audio_digest, upload_digest, profile, store_ok, features, ttl_cap_s,
                                       identify, reused)

        def serve(entry: Entry) -> Awaitable[Outcome | None]:
            return self._hit_and_alias("canonical", entry, upload_digest, write=True, served=True)

        def lead() -> Awaitable[Outcome]:
            return self.in_flight.under_lock(profile.digest, audio_digest, store_ok, serve=serve, run=run)

        def follow(leader_digest: str, shared: Outcome) -> Awaitable[Outcome]:
            return self._share(shared, leader_digest, upload_digest, run)

        return await self.in_flight.once_in_process(profile.digest, audio_digest, upload_digest, lead=lead, follow=follow)

    async def _share(self, shared: Outcome, leader_digest: str, upload_digest: str,
                     run: Callable[[bool], Awaitable[Outcome]]) -> Outcome:
        """A follower's answer from its leader's (`shared`): the leader's entry as it is now."""
        leader_entry = shared.entry
        if leader_entry is None:
            return Outcome(tier=shared.tier, result=shared.result)
        tier = "exact" if leader_digest == upload_digest else "canonical"
        # The entry may have been deleted while we waited: serve it only as it is now.
        current, store_ok = await try_store(lambda: self.store.get_entry(leader_entry.entry_id))
        if not store_ok:  # cannot check now: the leader's answer, uncached, rather than N engine runs
            return Outcome(tier="bypass", result=shared.result)
        if current is not None and current.generation == leader_entry.generation:
            outcome = await self._hit_and_alias(tier, current, upload_digest, write=True, served=True)
            if outcome is not None:
                return outcome
        return await run(store_ok)

    async def _run_and_store(
        self, query: QueryAudio, audio_digest: str, upload_digest: str, profile: Profile, store_ok: bool, features,
        ttl_cap_s: int | None, identify: Identify | None = None, reused: list[ReusedSpan] | None = None,
    ) -> Outcome:
        """Run the engine (unless there is nothing to hear) and write the new entry, unless
        `store_ok` is False (an outage, or `no-store`: then tier `bypass`); the audio's
        seconds stay reserved in the decode budget for as long as its PCM is held.

        Writing replaces an entry of the same profile and audio (a `no-cache` request's run): it
        gets a new generation, so aliases made for the old one are never followed again.

        With `reused` spans (cached recordings found inside the upload, service/pipeline/segments.py)
        the engine hears only the audio they leave uncovered, and the answer is stitched: tier
        `partial`, whether or not the stitched answer may be written."""
        async with self._decoding(query):
            return await self._transcribe_and_store(query, audio_digest, upload_digest, profile, store_ok, features,
                                                    ttl_cap_s, identify, reused)

    async def _transcribe_and_store(
        self, query: QueryAudio, audio_digest: str, upload_digest: str, profile: Profile, store_ok: bool, features,
        ttl_cap_s: int | None, identify: Identify | None, reused: list[ReusedSpan] | None = None,
    ) -> Outcome:
        pcm = await self._pcm_of(query)
        reused = reused or []
        hears = bool(reused) or has_sound(pcm)
        # What the entry will store is computed while the engine runs (in a thread, on the core
        # the engine's worker does not use), not before: a miss waits for it only if it is slower.
        entry_features = (asyncio.ensure_future(asyncio.to_thread(self._entry_features, features, pcm))
                          if self.fuzzy is not None and store_ok and hears else None)
        try:
            return await self._hear_and_store(query, pcm, hears, audio_digest, upload_digest, profile, store_ok,
                                              entry_features, ttl_cap_s, identify, reused)
        finally:
            if entry_features is not None and not entry_features.done():
                # The request failed (or the entry needs none): nothing is written, but the PCM
                # stays reserved in the decode budget until the thread lets go of it.
                await asyncio.wait([entry_features])
            if entry_features is not None and not entry_features.cancelled():
                entry_features.exception()  # retrieved: a failure here is the request's, not the loop's

    async def _hear_and_store(
        self, query: QueryAudio, pcm: np.ndarray, hears: bool, audio_digest: str, upload_digest: str,
        profile: Profile, store_ok: bool, entry_features: asyncio.Future | None, ttl_cap_s: int | None,
        identify: Identify | None, reused: list[ReusedSpan],
    ) -> Outcome:
        engine_name = profile.engine
        saved_s = sum(span.entry.engine_seconds for span in reused)
        if reused:
            # The engine hears each stretch no span covers (cut in pauses, as the spans are);
            # the spans' transcripts fill the rest, moved to where they lie.
            heard_parts, engine_seconds, engine_name, language = await self._hear_uncovered(
                pcm, to_hear(reused, pcm), profile, identify)
            parts = [(span.start_s, span.entry.text, span.entry.normalized_text, span.segments()) for span in reused]
            text, normalized, segments = stitched(parts + heard_parts)
            language = language or reused[0].entry.language
        elif hears:
            heard, engine_seconds, engine_name = await self._hear([pcm], profile, identify)
            transcript = heard[0]
            text, normalized, language = transcript.text, transcript.normalized_text, transcript.language
            segments = tuple(segment.as_dict(number) for number, segment in enumerate(transcript.segments))
        else:
            text, normalized, language, engine_seconds, segments = "", "", profile.language, 0.0, ()
        negative = not text.strip()
        entry = Entry(
            entry_id=make_entry_id(profile.digest, audio_digest),
            profile_id=profile.digest,
            pcm_digest=audio_digest,
            text=text,
            normalized_text=normalized,
            language=language,
            duration_s=len(pcm) / SAMPLE_RATE,
            speech_s=speech_extent(pcm).duration_s,
            # A stitched answer keeps the whole recording's estimate (spent plus the reused
            # entries' runs): what a later hit on it saves.
            engine_seconds=engine_seconds + saved_s,
            negative=negative,
            engine=engine_name,
            segments=() if negative else segments,
        )
        if reused:
            self._count_partial(reused, saved_s)
        # Nothing written (an outage, or no-store): the answer still reuses what it found.
        unwritten = Outcome(tier="partial" if reused else "bypass", result=entry.result(), engine_s_spent=engine_seconds,
                            spans=reused)
        if not store_ok:
            return unwritten
        features = None
        if self.fuzzy is not None and not negative:
            assert entry_features is not None  # started for every store_ok miss with sound
            features = await entry_features
            entry = self.fuzzy.verifier.attach(entry, features)
        ttl_s = self.settings.negative_ttl_s if negative else self.settings.ttl_s
        if ttl_cap_s is not None:
            ttl_s = min(ttl_s, ttl_cap_s)
        stored, store_ok = await try_store(
            lambda: self.store.put_entry(entry, upload_digest, ttl_s, stream_maxlen=self.settings.stream_maxlen)
        )
        if not store_ok or stored is None:
            return unwritten
        if self.fuzzy is not None and features is not None and not negative:
            await self.fuzzy.index_now(stored)
        return Outcome(tier="partial" if reused else "miss", entry=stored, result=stored.result(), engine_s_spent=engine_seconds,
                       spans=reused)

    async def _hear(self, pieces: list[np.ndarray], profile: Profile,
                    identify: Identify | None) -> tuple[list[Transcript], float, str]:
        """The engine's transcripts of `pieces` (the whole upload, or the stretches segment reuse
        left it), their engine seconds summed, and the engine that heard them. The spoken
        language is identified when `identify` asks (see `recognize`) on what the engine is to
        hear, not on the whole upload: a call may open with a reused prompt in another language
        than the caller's. With nothing left to hear (every second answered by reused spans)
        nothing runs."""
        if not pieces:
            return [], 0.0, profile.engine
        # What is identified, joined only when an identification will hear it.
        identifies = len(pieces) > 1 and self.router is not None and identify is not None
        heard = np.concatenate(pieces) if identifies else pieces[0]
        pool, engine_profile = self.pool, profile
        if self.router is not None and identify is not None and self.router.routes:
            # The language picks the engine: identified first. Speech no engine serves is
            # refused here (LanguageNotServed, a 422), before anything is written.
            route, engine_profile = await self.router.choose(heard, identify)
            pool = route.pool
        elif self.router is not None and identify is None:
            pool = self.router.pool_for(profile)
        runs: list[Awaitable] = [pool.transcribe(piece, engine_profile) for piece in pieces]
        with self._stage("engine"):
            if self.router is not None and identify is not None and not self.router.routes:
                # Identification can only refuse: it runs beside the engine (on another core,
                # so an English miss waits for it no longer than for the engine), and a
                # refusal drops the transcript before anything is written.
                runs.append(self.router.choose(heard, identify))
            answers = await asyncio.gather(*runs, return_exceptions=True)
        for answer in answers[len(pieces):] + answers[: len(pieces)]:
            if isinstance(answer, BaseException):
                raise answer
        transcribed = [answer for answer in answers[: len(pieces)] if not isinstance(answer, BaseException)]
        return ([transcript for transcript, _ in transcribed], sum(seconds for _, seconds in transcribed),
                engine_profile.engine)

    async def _hear_uncovered(self, pcm: np.ndarray, regions: list[tuple[float, float]], profile: Profile,
                              identify: Identify | None) -> tuple[list[Part], float, str, str]:
        """The engine's answer for the stretches no reused span covers, as parts of the stitched
        answer, with its engine seconds, engine and language. Several stretches are heard in one
        run, joined with silence between them, and the answer cut back by its segment times;
        an answer that cannot be cut so (an engine without segment times) is heard again one
        stretch at a time."""
        spent = 0.0
        if len(regions) > 1:
            together, placements = joined(pcm, regions)
            heard, spent, engine = await self._hear([together], profile, identify)
            parts = split_heard(heard[0], placements)
            if parts is not None:
                return parts, spent, engine, heard[0].language
        heard, seconds, engine = await self._hear([samples_of(pcm, *region) for region in regions], profile, identify)
        parts = [(start, transcript.text, transcript.normalized_text,
                  shifted_segments([segment.as_dict(number) for number, segment in enumerate(transcript.segments)],
                                   start, start, end))
                 for (start, end), transcript in zip(regions, heard, strict=True)]
        return parts, spent + seconds, engine, heard[0].language if heard else ""

    def _count_partial(self, reused: list[ReusedSpan], saved_s: float) -> None:
        self.metrics.partial_hits.inc()
        self.metrics.partial_seconds_reused.inc(sum(span.end_s - span.start_s for span in reused))
        self.metrics.engine_seconds_saved.inc(saved_s)

    async def _pcm_of(self, query: QueryAudio) -> np.ndarray:
        """The upload's 16 kHz samples: kept from the first pass, else decoded again (call with
        the audio's seconds reserved in the decode budget)."""
        if query.pcm is not None:
            return query.pcm
        with self._stage("decode"):
            return (await asyncio.to_thread(decode_audio, query.open(), self.settings.max_duration_s)).pcm_16k

    def _may_hold_spans(self, query: QueryAudio) -> bool:
        """True when segment reuse should search this missed upload: long enough to hold a
        cached recording and something more, and short enough to hold decoded (a long upload
        is not held whole by a lookup)."""
        seconds = query.audio_seconds or 0.0
        return self.spans is not None and self.spans.min_span_s < seconds <= MAX_SEGMENT_SEARCH_S

    def _hit(self, tier: str, entry: Entry, *, served: bool, verdict: FuzzyVerdict | None = None) -> Outcome:
        """An answer from `entry`; only a fuzzy hit carries a score (the contract). `served`: the
        answer goes to a recognition request (engine time saved), not to /lookup."""
        if entry.negative:
            tier = "negative"
        if served:
            self.metrics.engine_seconds_saved.inc(entry.engine_seconds)
        score = verdict.score if verdict is not None and tier == "fuzzy" else None
        return Outcome(tier=tier, entry=entry, result=entry.result(), score=score)

    async def _hit_and_alias(self, tier: str, entry: Entry, upload_digest: str, *, write: bool, served: bool,
                             verdict: FuzzyVerdict | None = None) -> Outcome | None:
        """A hit by audio rather than bytes: remember these bytes (when `write`) so the next
        upload of them needs no decoding (`exact`, or `fuzzy` with the recorded verdict).

        None when the entry vanished (deleted, expired) between reading it and now: it must
        not be served."""
        if write and tier != "exact":
            state, _ = await try_store(lambda: self.store.add_alias(entry, upload_digest, verdict))
            if state == "gone":
                return None
            if state == "seen" and verdict is None:
                tier = "exact"
        return self._hit(tier, entry, served=served, verdict=verdict)

    @contextlib.asynccontextmanager
    async def _decoding(self, query: QueryAudio) -> AsyncIterator[Reservation]:
        """Hold the upload's audio seconds in the shared decode budget (see
        service/pipeline/decode_budget.py): estimated before the first pass, which measures them for
        every later one. A pass decoding past the reservation `cover`s what it decodes."""
        seconds = self.settings.max_duration_s if query.audio_seconds is None else query.audio_seconds
        async with self.budget.reserve(seconds) as reservation:
            yield reservation

    async def _candidates_of(self, query: QueryAudio, profile: Profile) -> list[dict]:
        """The fuzzy tier's evidence for a /lookup answered by an earlier tier (bytes or audio
        seen before), so that tuning and audits see every query's scores: [] when the fuzzy
        tier is off, the audio unreadable now or the store unreachable."""
        if self.fuzzy is None:
            return []
        try:
            if query.audio_seconds is None:  # answered by its bytes: never decoded so far
                audio = await asyncio.to_thread(open_audio, query.open(), self.settings.max_duration_s)
                try:
                    query.audio_seconds = budget_seconds(audio, query.size, self.settings.max_duration_s)
                finally:
                    audio.close()
            async with self._decoding(query) as reservation:
                with self._stage("fingerprint"):
                    features = await asyncio.to_thread(self._features_of, query, reservation.cover)
        except AudioError:
            return []
        with self._stage("fuzzy"):
            match, _ = await try_store(lambda: self.fuzzy.match(features, profile))
        return match.candidates if match is not None else []

    def _features_of(self, query: QueryAudio, cover: Callable[[float], None]) -> QueryFeatures:
        """The fuzzy tier's features of the query, computed once per request (`query.features`).

        Audio kept decoded (up to KEEP_PCM_S) defers its detail spectrum and pitch contour to the
        first candidate that reaches their checks; longer audio is decoded again as a stream
        (`cover`ing in the decode budget what it decodes) and computes every feature in that
        one pass, since deferring would cost another decoding."""
        assert self.fuzzy is not None
        if query.features is not None:
            return query.features
        verifier = self.fuzzy.verifier
        if query.pcm is not None:
            features = verifier.deferred_features(query.pcm).note_clipping(query.clipped)
            features.report_to(lambda part: self._count_feature(part, "lookup"))
        else:
            audio = open_audio(query.open(), self.settings.max_duration_s)
            # An upload the segment search will hold decoded keeps the bands it embeds stretches from.
            features = verifier.features_of(_charged(audio.chunks, cover), keep_bands=self._may_hold_spans(query))
            features.note_clipping(audio.clipping.blocks())
            for part in (*DEFERRED_PARTS, *QUERY_ONLY_PARTS):
                self._count_feature(part, "lookup")
        self._count_feature("hash", "lookup")
        if features.clipped.size:
            self.metrics.clipped_uploads.inc()
        query.features = features
        return features

    def _entry_features(self, features: QueryFeatures | None, pcm: np.ndarray) -> QueryFeatures:
        """Every feature a new entry stores (CPU work, in a thread beside the engine): the
        lookup's, completed, or all of them when the lookup computed none (`no-cache`, an
        outage, a fuzzy tier reached no further)."""
        assert self.fuzzy is not None
        started = time.perf_counter()
        if features is None:
            features = self.fuzzy.verifier.deferred_features(pcm).complete()  # the phases: a query's alone
            for part in ("hash", *DEFERRED_PARTS):
                self._count_feature(part, "entry")
        else:
            features.report_to(lambda part: self._count_feature(part, "entry"))
            features.complete()
        self.metrics.lookup_seconds.labels(stage="entry_features").observe(time.perf_counter() - started)
        return features

    def _count_feature(self, part: str, use: str) -> None:
        self.metrics.query_features.labels(feature=part, use=use).inc()

    def _count_skipped(self, query: QueryAudio) -> None:
        """Deferred features this request never needed (no candidate reached their check)."""
        if query.features is not None:
            for part in (*DEFERRED_PARTS, *QUERY_ONLY_PARTS):
                if not query.features.has(part):
                    self._count_feature(part, "skipped")

    def _give_back_memory(self) -> None:
        released = memory.trim()
        if released is not None:
            self.metrics.memory_trims.inc()
            self.metrics.memory_trimmed_bytes.inc(released)

    def _stage(self, stage: str):
        return self.metrics.lookup_seconds.labels(stage=stage).time()


def _pcm_digest_of(query: QueryAudio, max_duration_s: float, audio: AudioStream | None = None,
                   cover: Callable[[float], None] | None = None) -> str:
    """The canonical digest, decoding as a stream (`audio`, if the upload is already open);
    the audio is refused here if it is bad. `cover` is told the seconds decoded so far (the
    decode budget's reservation); the whole length is then the query's `audio_seconds`, which
    later passes reserve.

    Short audio (up to `KEEP_PCM_S`) is kept on the query as it goes by, so the fingerprint
    and the engine need no second decoding; longer audio is decoded again when needed, and
    never held whole by a lookup."""
    digest = PcmDigest()
    kept: list[np.ndarray] | None = []
    samples = 0
    audio = audio or open_audio(query.open(), max_duration_s)
    chunks = audio.chunks if cover is None else _charged(audio.chunks, cover)
    for chunk in chunks:
        digest.push(chunk)
        samples += chunk.size
        if kept is not None:
            kept.append(chunk)
            if samples > KEEP_PCM_S * SAMPLE_RATE:
                kept = None
    query.pcm = np.concatenate(kept) if kept else None
    query.clipped = audio.clipping.blocks()
    query.audio_seconds = samples / SAMPLE_RATE
    return digest.hexdigest()


def _charged(chunks: Iterator[np.ndarray], cover: Callable[[float], None]) -> Iterator[np.ndarray]:
    """`chunks` (16 kHz), telling `cover` the seconds decoded so far before handing each on."""
    decoded = 0
    for chunk in chunks:
        decoded += chunk.size
        cover(decoded / SAMPLE_RATE)
        yield chunk


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0



