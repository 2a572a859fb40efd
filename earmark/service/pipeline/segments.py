"""Segment reuse (issue 24): cached recordings found inside a new upload, each proven the same
recording by the whole-file verification, their transcripts reused; the engine hears only the
rest.

A bank's calls each open with the same "your call is being recorded" prompt, and each call is a
new file: no whole-file tier helps. Here the call is cut at its pauses into stretches
(fingerprint/spans.py), each stretch's embedding is looked up in the vector index like a whole
upload's, and a candidate entry is accepted for a stretch only when the fuzzy tier's own verdict
(service/pipeline/verification.py) accepts the stretch's audio, hashed as if uploaded alone, as
the same recording as the entry: every stretch of it, no minimal pair, no clip of it. So a
prompt "your call is not being recorded" never borrows "is being recorded"; it goes to the
engine with the rest of the call.

Two ways in. A whole cached entry inside the upload (a prompt): the stretch's embedding finds
it. A stretch of a longer cached entry inside the upload (a clip of a cached episode, a meeting
exported again with a stretch cut out or its ends trimmed, two cached recordings joined): the
entries nearest the whole upload's embedding are searched for runs of the upload's hash frames
at one offset (fingerprint/alignment.py), each run is cut at the upload's pauses, and the
entry's stretch there (index/excerpt.py: its stored evidence and its own words, cut by their
times) is judged against the upload's stretch as a whole upload would be. An entry whose engine
gave no word times offers no stretch: only whole entries are found inside uploads then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy.ndimage import median_filter

from earmark.fingerprint.alignment import AGREEMENT_FRAMES, Run, aligned_runs, frame_agreement
from earmark.fingerprint.decode import SAMPLE_RATE
from earmark.fingerprint.matcher import verify
from earmark.fingerprint.robust_hash import RobustHash, robust_hash_from_energies
from earmark.fingerprint.spans import Pause, Stretch, pauses, stretch_embeddings, stretch_frames, stretches
from earmark.fingerprint.spectrum import band_energies, without_steady_noise
from earmark.fingerprint.speech import FRAME_S, frame_levels_db, sound_threshold_db
from earmark.index.entry import Entry
from earmark.index.excerpt import excerpt, has_word_times
from earmark.index.store import Store
from earmark.index.vectors import VectorIndex
from earmark.service.engines.base import Transcript
from earmark.service.metrics import Metrics
from earmark.service.pipeline.profile import Profile
from earmark.service.pipeline.verification import QueryFeatures, Verifier

logger = logging.getLogger(__name__)

# Candidates per stretch from the vector index.
TOP_K = 3
# Stretches verified in full per upload at most (each costs its audio's features): the most
# similar first, so a prompt is judged long before this runs out.
MAX_VERIFIED = 16
# Pairs looked at per upload at most, screened by their hashes first (each a few milliseconds).
MAX_SCREENED = 256
# Longest cached recording looked for inside an upload, in seconds of speech: prompts,
# greetings, hold messages and advertisements.
MAX_SPAN_SPEECH_S = 60.0
# Less sound than this between spans is a breath or a click, not speech for the engine.
MIN_HEARD_S = 0.2
# Silence between the uncovered stretches joined for one engine run: every VAD cuts there.
JOIN_GAP_S = 1.0
# A piece of a stitched answer: (where it starts in the upload, text, normalised text, segments in upload time).
Part = tuple[float, str, str, list[dict]]
# A pair whose hashes score this far under the window threshold is not judged in full: a copy's
# stretch cut from the upload's hash differs from its own hash only in its edge frames.
SCREEN_MARGIN = 0.1
# Cached recordings searched for stretches of them inside an upload: the nearest to the whole
# upload's embedding (a clip or an edited copy keeps its recording's voice, channel and much of
# its spectrum: 0.6 to 0.8 for clips of a 50 s reading, measured), each searched by its hash.
EXCERPT_TOP_K = 4
# Entries searched by their hash at most, with those found for the upload's stretches.
EXCERPT_MAX_ENTRIES = 8
# Cut points tried at each end of a run (the one just outside where its frames agree first,
# then the next one in): a run's ends are known to a block, its frames' agreement narrows them.
EXCERPT_CUTS_PER_END = 2
# Frames of a run whose hashes agree this well (strong bits, over a quarter second) are its
# recording's: copies through codecs and lines keep 0.75 to 0.95, other speech about 0.5.
RUN_AGREEMENT = 0.68
# Frames either side of a run's offset its frames may agree at (48 ms): a word said a little
# shorter or longer shifts the rest of the recording by a few frames, and the verdict aligns
# each stretch on its own.
AGREEMENT_REACH = 3
# A run is cut where the offset its frames agree best at moves this many frames (32 ms) for a
# second: a codec's delay jitters by one.
SLIP_FRAMES = 2
# Frames either side of a run first looked at for where its agreement ends (10 s; four times
# more each time it reaches an edge).
AGREEMENT_WINDOW_FRAMES = 625
# Times a refused run is split again (at the pauses around where it was refused, else at its
# middle pause; each piece judged again): the stretches around one or two changed words.
EXCERPT_SPLITS = 3


@dataclass(frozen=True)
class ReusedSpan:
    """A stretch of the upload proven to be a cached entry's recording, and where it lies."""

    start_s: float  # in the upload
    end_s: float
    entry: Entry
    entry_start_s: float  # in the entry's recording
    entry_end_s: float
    score: float
    offset_s: float  # entry time = (upload time - start_s) + offset_s

    def as_dict(self) -> dict:
        """The contract's `cache.spans[]` item."""
        return {"start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3), "entry": self.entry.entry_id,
                "entry_start_s": round(self.entry_start_s, 3), "entry_end_s": round(self.entry_end_s, 3),
                "score": round(self.score, 4)}

    def segments(self) -> list[dict]:
        """The entry's timed segments moved to where the entry lies in the upload."""
        shift = self.start_s - self.offset_s
        return [_shifted(segment, shift, self.start_s, self.end_s) for segment in self.entry.timed_segments()]


class SpanFinder:
    """Finds cached entries lying inside an upload, each verified as a whole upload would be."""

    def __init__(self, verifier: Verifier, store: Store, index: VectorIndex, metrics: Metrics,
                 min_span_s: float) -> None:
        self.verifier = verifier
        self.store = store
        self.index = index
        self.metrics = metrics
        self.min_span_s = min_span_s  # shorter cached speech is never looked for

    async def find(self, pcm: np.ndarray, profile: Profile, features: QueryFeatures) -> list[ReusedSpan]:
        """The verified spans of `pcm` (16 kHz), in time order, none overlapping; [] when none.
        `features` are the upload's own, as the fuzzy tier computed them (their hash, embedding,
        and any detail and pitch already computed, are not computed again)."""
        levels, energies, proposals, nearest = await asyncio.to_thread(self._propose, pcm, profile, features)
        if not proposals and not nearest:
            return []
        entry_ids = sorted({entry_id for _, hits in proposals for entry_id, _ in hits} | set(nearest))
        entries = dict(zip(entry_ids, await self.store.get_entries(entry_ids), strict=True))
        found = await asyncio.to_thread(self._verify, pcm, energies, profile, proposals, entries)
        # Besides the entries nearest the whole upload, those found for a stretch of it: an
        # upload mostly of other speech resembles its cached part only stretch by stretch.
        searched = dict(nearest)
        for _, hits in sorted(proposals, key=lambda proposal: -max(similarity for _, similarity in proposal[1])):
            for entry_id, similarity in hits:
                if len(searched) < EXCERPT_MAX_ENTRIES or entry_id in searched:
                    searched[entry_id] = max(similarity, searched.get(entry_id, 0.0))
        # Searched apart, then merged longest first: a cached recording repeated inside a long
        # one (a sentence said twice in a meeting) must not cut the long one's run to pieces.
        stretches_of = await asyncio.to_thread(self._excerpts, pcm, levels, features, profile, searched, entries)
        return _longest_first(found + stretches_of)

    def _propose(self, pcm: np.ndarray, profile: Profile, features: QueryFeatures) -> tuple[
            np.ndarray, np.ndarray, list[tuple[Stretch, list[tuple[str, float]]]], dict[str, float]]:
        """The upload's 20 ms frame levels (its pauses, measured once for both searches) and band
        energies (steady noise taken out); each stretch of `pcm` with the
        index's candidates for it (similar enough to verify); and the entries nearest the whole
        upload, with their similarity, to search for stretches of them."""
        limits = self.verifier.thresholds
        levels = frame_levels_db(pcm)
        candidates = stretches(levels, max(self.min_span_s, limits.min_speech_s), MAX_SPAN_SPEECH_S)
        self.metrics.segment_stretches.inc(len(candidates))
        energies = features.take_bands()
        if energies is None:
            energies = without_steady_noise(band_energies(pcm, self.verifier.config))
        nearest = {entry_id: similarity for entry_id, similarity
                   in self.index.search(profile.digest, features.embedding, EXCERPT_TOP_K)
                   if similarity >= limits.min_embedding_similarity}
        if not candidates:
            return levels, energies, [], nearest
        vectors = stretch_embeddings(energies, candidates, self.verifier.config)
        found = self.index.search_many(profile.digest, vectors, TOP_K)
        return levels, energies, [(stretch, kept) for stretch, hits in zip(candidates, found, strict=True)
                          if (kept := [(entry_id, similarity) for entry_id, similarity in hits
                                       if similarity >= limits.min_embedding_similarity])], nearest

    def _verify(self, pcm: np.ndarray, energies: np.ndarray, profile: Profile, proposals,
                entries: dict[str, Entry | None]) -> list[ReusedSpan]:
        """Judge the most similar (stretch, entry) pairs whose speech lengths could agree, until
        MAX_VERIFIED were judged; keep the accepted ones that overlap no better one. A pair whose
        hashes (the stretch's cut from the upload's, no new analysis) are far from the window
        threshold is screened out first: most candidates are, and the full verdict costs the
        stretch's own features."""
        limits = self.verifier.thresholds
        pairs = []
        for stretch, hits in proposals:
            for entry_id, similarity in hits:
                entry = entries.get(entry_id)
                if entry is None or entry.negative:
                    continue
                # The verdict measures speech again, more finely; this only skips hopeless pairs.
                longer = max(entry.speech_s, stretch.speech_s)
                tolerance = 2.0 * max(limits.duration_tolerance_s, limits.duration_tolerance_ratio * longer)
                if abs(entry.speech_s - stretch.speech_s) <= tolerance:
                    pairs.append((similarity, stretch, entry))
        pairs.sort(key=lambda pair: -pair[0])
        accepted: list[ReusedSpan] = []
        features: dict[Stretch, QueryFeatures] = {}
        hashes: dict[Stretch, RobustHash] = {}
        judged = 0
        for similarity, stretch, entry in pairs[:MAX_SCREENED]:
            if judged >= MAX_VERIFIED:
                break
            if _overlaps(stretch.start_s, stretch.end_s, accepted):
                continue
            if self._screened_out(energies, stretch, entry, hashes):
                self.metrics.segment_screened.inc()
                continue
            if stretch not in features:
                features[stretch] = self.verifier.deferred_features(samples_of(pcm, stretch.start_s, stretch.end_s))
            judged += 1
            judgement = self.verifier.evaluate(features[stretch], profile.digest, similarity, entry, stop_at_hashes=True)
            self.metrics.segment_candidates.labels(accepted=str(judgement.accepted).lower()).inc()
            if judgement.accepted:
                accepted.append(ReusedSpan(stretch.start_s, stretch.end_s, entry, 0.0, entry.duration_s,
                                           judgement.score, judgement.offset_s))
        return accepted

    def _excerpts(self, pcm: np.ndarray, levels: np.ndarray, features: QueryFeatures, profile: Profile,
                  nearest: dict[str, float], entries: dict[str, Entry | None]) -> list[ReusedSpan]:
        """Stretches of the nearest entries inside the upload, each verified against the entry's
        own stretch (index/excerpt.py), none overlapping another: where the
        upload's hash frames run at one offset in the entry's, cut at the upload's pauses. A run
        refused whole (a word changed inside it) is split at the pauses around where it was
        refused (else halved), three times at most, so the stretches around the change are still
        reused and the change goes to the engine."""
        config = self.verifier.config
        query_hash = features.hash
        gaps = pauses(levels)
        duration_s = len(pcm) / SAMPLE_RATE
        found: list[ReusedSpan] = []
        budget = MAX_VERIFIED  # full verdicts left for this upload
        def judged(entry: Entry, similarity: float, shift_s: float, start_s: float,
                   end_s: float) -> ReusedSpan | tuple[float, float] | None:
            """The span [start_s, end_s) of the upload as the entry's stretch shifted by `shift_s`,
            when it overlaps nothing found and the verification accepts it; when the verification
            refuses it, where (upload seconds) the check that refused found the two apart
            (`Judgement.refused_at`); else None."""
            nonlocal budget
            if budget <= 0 or _overlaps(start_s, end_s, found):
                return None
            part = excerpt(entry, start_s + shift_s, end_s + shift_s, config)
            if part is None or part.speech_s < max(self.min_span_s, self.verifier.thresholds.min_speech_s):
                self.metrics.segment_excerpts.labels(outcome="uncuttable").inc()
                return None
            budget -= 1
            started = time.perf_counter()
            judgement = self.verifier.evaluate(features.cut(start_s, end_s, config), profile.digest, similarity, part,
                                               stop_at_hashes=True)
            self.metrics.segment_excerpts.labels(outcome="accepted" if judgement.accepted else "refused").inc()
            logger.debug("excerpt %.2f-%.2f s of the upload against entry %s at %+.2f s: %s in %.2f s (%s)", start_s,
                         end_s, entry.entry_id, shift_s, "accepted" if judgement.accepted else "refused",
                         time.perf_counter() - started, judgement.reason[:120])
            if not judgement.accepted:
                at = judgement.refused_at
                return None if at is None else (start_s + at[0], start_s + at[1])
            # Where the verdict aligned the two: the excerpt was cut at the run's offset, and the
            # stretch may lie a few frames from it.
            entry_start_s = min(max(0.0, start_s + shift_s + judgement.offset_s), entry.duration_s)
            entry_end_s = min(entry.duration_s, entry_start_s + (end_s - start_s))
            return ReusedSpan(start_s, end_s, part, entry_start_s, entry_end_s, judgement.score, judgement.offset_s)

        def search(entry: Entry, similarity: float, shift_s: float, agreeing: tuple[float, float]) -> None:
            """Judge the spans around where the upload agrees with the entry shifted by `shift_s`,
            widest first; a refused one is split where it was refused, and its pieces judged."""
            tries = [span for span in _cuts_around(agreeing, gaps, duration_s) if not _overlaps(*span, found)]
            widest_refused_at: tuple[float, float] | None = None
            for number, (start_s, end_s) in enumerate(tries):
                if number and widest_refused_at is not None and (
                        start_s <= widest_refused_at[0] and widest_refused_at[1] <= end_s):
                    # Only its ends differ from the widest's, and it still holds where the widest
                    # was refused: the pieces around that place are judged below instead. (An
                    # hour's edit would otherwise pay four hour-long verdicts for one refusal.)
                    self.metrics.segment_excerpts.labels(outcome="skipped").inc()
                    continue
                verdict = judged(entry, similarity, shift_s, start_s, end_s)
                if isinstance(verdict, ReusedSpan):
                    found.append(verdict)
                    return
                if number == 0:
                    widest_refused_at = verdict
            # Refused: the pieces either side of where the widest was refused (cut in the pauses
            # around it), else its halves at its middle pause, judged again.
            pending = [(*tries[0], widest_refused_at, 0)] if tries else []
            while pending and budget > 0:
                start_s, end_s, refused_at, depth = pending.pop(0)
                for piece in _around(gaps, start_s, end_s, refused_at, self.min_span_s):
                    verdict = judged(entry, similarity, shift_s, *piece)
                    if isinstance(verdict, ReusedSpan):
                        found.append(verdict)
                    elif depth + 1 < EXCERPT_SPLITS:
                        pending.append((*piece, verdict, depth + 1))

        for entry_id, similarity in sorted(nearest.items(), key=lambda item: -item[1]):
            entry = entries.get(entry_id)
            if (entry is None or entry.negative or entry.fingerprint_version != config.version
                    or not entry.fingerprint or not has_word_times(entry)):
                continue
            reference = RobustHash.from_bytes(entry.fingerprint, entry.fingerprint_levels)
            agreements = _Agreements(query_hash, reference)
            for run in sorted(aligned_runs(query_hash, reference), key=lambda run: -run.votes):
                if budget <= 0:
                    break
                shift_s = run.offset / config.frames_per_second
                pieces = agreements.agreeing_pieces(run, config)
                self.metrics.segment_slips.inc(max(0, len(pieces) - 1))
                for agreeing in pieces:
                    # A run a few frames from one already reused (the rest of a recording an edit
                    # shifted by a few milliseconds) agrees over both: only its own part is new.
                    free = _free_around(agreeing, found)
                    if free is not None:
                        search(entry, similarity, shift_s, free)
        return found

    def _screened_out(self, energies: np.ndarray, stretch: Stretch, entry: Entry,
                      hashes: dict[Stretch, RobustHash]) -> bool:
        """True when the stretch's hash, cut from the upload's, is so far from the entry's that
        the full verdict could not accept it (SCREEN_MARGIN under the window threshold)."""
        if entry.fingerprint_version != self.verifier.config.version or not entry.fingerprint:
            return False  # the verdict names the reason
        if stretch not in hashes:
            hashes[stretch] = robust_hash_from_energies(
                energies[stretch_frames(stretch, self.verifier.config, len(energies))])
        reference = RobustHash.from_bytes(entry.fingerprint, entry.fingerprint_levels)
        window = verify(hashes[stretch], reference, self.verifier.config)
        return window.windows > 0 and window.worst_score < self.verifier.thresholds.min_window_score - SCREEN_MARGIN


def to_hear(spans: list[ReusedSpan], pcm: np.ndarray) -> list[tuple[float, float]]:
    """The stretches of the upload no span covers that hold sound (at least MIN_HEARD_S above the
    upload's own noise floor), in time order, each starting and ending in a pause as the spans
    do. A gap of room tone or line noise between two spans is not sent: an engine given nothing
    but noise may answer with words (Whisper's "Thank you.")."""
    levels = frame_levels_db(pcm)
    sounding = levels > sound_threshold_db(levels)
    gaps, at = [], 0.0
    for span in spans:
        if span.start_s > at:
            gaps.append((at, span.start_s))
        at = max(at, span.end_s)
    if at < len(pcm) / SAMPLE_RATE:
        gaps.append((at, len(pcm) / SAMPLE_RATE))
    return [(start, end) for start, end in gaps
            if np.count_nonzero(sounding[int(start / FRAME_S) : int(np.ceil(end / FRAME_S))]) * FRAME_S >= MIN_HEARD_S]


def samples_of(pcm: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """The 16 kHz samples from `start_s` to `end_s`."""
    return pcm[max(0, int(round(start_s * SAMPLE_RATE))) : min(len(pcm), int(round(end_s * SAMPLE_RATE)))]


def joined(pcm: np.ndarray, regions: list[tuple[float, float]]) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """The uncovered stretches joined into one recording, JOIN_GAP_S of silence apart (one engine
    run instead of one per stretch: an engine's fixed cost per run, and Whisper's 30 s window,
    are paid once), with where each lies: (start in the upload, end in the upload, start in the
    joined recording)."""
    pieces, placements, at = [], [], 0.0
    gap = np.zeros(int(JOIN_GAP_S * SAMPLE_RATE), dtype=np.float32)
    for start, end in regions:
        samples = samples_of(pcm, start, end)
        placements.append((start, end, at))
        pieces += [samples, gap]
        at += (len(samples) + len(gap)) / SAMPLE_RATE
    return (np.concatenate(pieces[:-1]) if pieces else np.zeros(0, dtype=np.float32)), placements


def split_heard(transcript: Transcript, placements: list[tuple[float, float, float]]) -> list[Part] | None:
    """The engine's answer for a `joined` recording, cut back into one part per stretch, its
    segments moved to where the stretch lies in the upload; None when it cannot be cut cleanly
    (no segments, a segment running from one stretch into the next, a text that is not its
    segments' or a normalised text of its own), and the stretches must be heard one by one."""
    segments = [segment.as_dict(number) for number, segment in enumerate(transcript.segments)]
    if not segments or transcript.normalized_text != transcript.text:
        return None
    if " ".join(" ".join(segment["text"] for segment in segments).split()) != " ".join(transcript.text.split()):
        return None
    grouped: list[list[dict]] = [[] for _ in placements]
    for segment in segments:
        middle = (segment["start"] + segment["end"]) / 2.0
        index = max((i for i, (_, _, at) in enumerate(placements) if at <= middle + 1e-6), default=0)
        start, end, at = placements[index]
        stretch_end = at + (end - start)
        if segment["start"] < at - JOIN_GAP_S / 2 or segment["end"] > stretch_end + JOIN_GAP_S / 2:
            return None  # heard across the silence between two stretches
        grouped[index].append(segment)
    parts = []
    for (start, end, at), group in zip(placements, grouped, strict=True):
        text = " ".join(" ".join(segment["text"] for segment in group).split())
        parts.append((start, text, text, shifted_segments(group, start - at, start, end)))
    return parts


def stitched(parts: list[Part]) -> tuple[str, str, tuple[dict, ...]]:
    """(text, normalised text, segments) of pieces given as (start in the upload, text,
    normalised text, segments already in upload time), joined in time order and the segments
    numbered again."""
    ordered = sorted(parts, key=lambda part: part[0])
    text = " ".join(piece for _, piece, _, _ in ordered if piece.strip())
    normalized = " ".join(piece for _, _, piece, _ in ordered if piece.strip())
    segments = tuple(segment | {"id": number}
                     for number, segment in enumerate(s for _, _, _, segs in ordered for s in segs))
    return " ".join(text.split()), " ".join(normalized.split()), segments


def shifted_segments(segments: list[dict], shift_s: float, start_s: float, end_s: float) -> list[dict]:
    """Segments heard from a stretch of the upload, moved to upload time."""
    return [_shifted(segment, shift_s, start_s, end_s) for segment in segments]


def _shifted(segment: dict, shift_s: float, low_s: float, high_s: float) -> dict:
    """One segment (and its words) moved by `shift_s`, kept within [low_s, high_s]."""
    def moved(seconds: float) -> float:
        return round(min(high_s, max(low_s, seconds + shift_s)), 3)

    out = dict(segment)
    out["start"], out["end"] = moved(segment["start"]), moved(segment["end"])
    if "words" in segment:
        out["words"] = [word | {"start": moved(word["start"]), "end": moved(word["end"])} for word in segment["words"]]
    out.pop("seek", None)  # the engine's window position in the audio it heard: meaningless moved
    return out


def _longest_first(spans: list[ReusedSpan]) -> list[ReusedSpan]:
    """The spans, longest first, each kept when it overlaps none kept before it; in time order."""
    kept: list[ReusedSpan] = []
    for span in sorted(spans, key=lambda span: span.start_s - span.end_s):
        if not _overlaps(span.start_s, span.end_s, kept):
            kept.append(span)
    return sorted(kept, key=lambda span: span.start_s)


class _Agreements:
    """Each upload frame's agreement with one entry's, by offset, computed only around the runs
    asked about (an hour's upload against an hour's entry has hundreds of runs, most a sentence
    long: agreeing over the whole upload for each cost more than every verdict together)."""

    def __init__(self, query: RobustHash, entry: RobustHash) -> None:
        self.query = query
        self.entry = entry
        self.loudest_db = int(query.level_db.max()) if len(query.level_db) else 0
        # offset: (first frame, agreement, the step agreeing best) over the frames computed
        self.computed: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}

    def agreeing_pieces(self, run: Run, config) -> list[tuple[float, float]]:
        """Where around the run the upload's frames agree with the entry's, in upload seconds
        (`_agreeing_frames`, over enough frames around it: the window grows until frames that
        disagree end it on both sides, or it reaches the upload's ends), cut where the offset
        they agree best at slips by SLIP_FRAMES or more for a second (a word said a little
        shorter or longer: what follows lies a few frames away, and one verdict cannot align
        both sides); [] when nothing there agrees."""
        frames, reach = len(self.query.bits), AGREEMENT_WINDOW_FRAMES
        while True:
            low, agreement, best_step = self._window(run.offset, max(0, run.query_start - reach),
                                                     min(frames, run.query_end + reach))
            high = low + len(agreement)
            found = _agreeing_frames(agreement, Run(run.query_start - low, run.query_end - low, run.offset, run.votes))
            if found is None:
                return []
            first, last, open_before, open_after = found
            if (low == 0 or not open_before) and (high == frames or not open_after):
                break
            reach *= 4
        slips = _slips(best_step[first:last], ~np.isnan(agreement[first:last]), first, config.frames_per_second)
        cuts = [low + frame for frame in (first, *slips, last)]
        return [(_frame_seconds(start, config), _frame_seconds(end, config)) for start, end in pairwise(cuts)]

    def _window(self, offset: int, low: int, high: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(first frame, agreement, step) over query frames from `low` to at least `high`: the
        agreement at `offset` or up to AGREEMENT_REACH frames either side (an edit's cut rarely
        falls on the frame grid), NaN in pauses, and the step that agrees best (0 in pauses)."""
        done = self.computed.get(offset)
        if done is not None and done[0] <= low and high <= done[0] + len(done[1]):
            return done
        if done is not None:
            low, high = min(low, done[0]), max(high, done[0] + len(done[1]))
        query = self.query
        part = RobustHash(query.bits[low:high], query.strong[low:high], query.level_db[low:high])
        steps = np.stack([frame_agreement(part, self.entry, offset + low + step, self.loudest_db)
                          for step in range(-AGREEMENT_REACH, AGREEMENT_REACH + 1)])
        heard = ~np.isnan(steps[AGREEMENT_REACH])
        scored = np.nan_to_num(steps, nan=-1.0)
        agreement = np.where(heard, scored.max(axis=0), np.nan)
        best_step = np.where(heard, np.argmax(scored, axis=0) - AGREEMENT_REACH, 0).astype(np.int8)
        self.computed[offset] = (low, agreement, best_step)
        return low, agreement, best_step


def _slips(best_step: np.ndarray, heard: np.ndarray, first: int, fps: float) -> list[int]:
    """Frames (counted from `first`) where the step agreeing best moves by SLIP_FRAMES or more
    from where it held before and stays there for a second of sound (its running median over a
    second of the `heard` frames: a codec's jitter moves it by one, a transient for a moment, and
    a pause says nothing)."""
    second = int(round(fps))
    at = np.flatnonzero(heard)
    if len(at) < 2 * second:
        return []
    smoothed = median_filter(best_step[at], size=second, mode="nearest")
    edges = np.flatnonzero(np.diff(smoothed)) + 1
    starts, stops = np.concatenate(([0], edges)), np.concatenate((edges, [len(smoothed)]))
    cuts, held = [], None
    for start, stop in zip(starts, stops, strict=True):
        if stop - start < second:
            continue
        level = int(smoothed[start])
        if held is not None and abs(level - held) >= SLIP_FRAMES:
            cuts.append(first + int(at[start]))
        if held is None or abs(level - held) >= SLIP_FRAMES:
            held = level
    return cuts


def _agreeing_frames(agreement: np.ndarray, run: Run) -> tuple[int, int, bool, bool] | None:
    """Where around `run` the upload's frames agree with the entry's (`agreement`, at the run's
    offset): its first and end frame (of `agreement`), the run's blocks giving its ends to a
    block and this to a quarter second; with whether it may go on before the first frame of
    `agreement` and after the last (no frame that disagrees was met before the array's ends: a
    pause, even a long one, does not end it)."""
    heard = ~np.isnan(agreement)
    good = heard & (agreement >= RUN_AGREEMENT)
    bad = _lasting(heard & ~good, AGREEMENT_FRAMES)  # a dip at one transient is not the run's end
    inside = np.flatnonzero(good[run.query_start : run.query_end])
    if inside.size == 0:
        return None
    middle = run.query_start + int(inside[inside.size // 2])
    bad_before = np.flatnonzero(bad[:middle])
    bad_after = np.flatnonzero(bad[middle:])
    low = int(bad_before[-1]) + 1 if bad_before.size else 0
    high = middle + int(bad_after[0]) if bad_after.size else len(good)
    agreeing = np.flatnonzero(good[low:high])  # from its first agreeing frame to its last
    return low + int(agreeing[0]), low + int(agreeing[-1]) + 1, not bad_before.size, not bad_after.size


def _frame_seconds(frame: int, config) -> float:
    """Where a hash frame starts in its recording, in seconds (band_energies pads by a frame
    less a hop)."""
    return frame / config.frames_per_second - (config.frame_length - config.hop_length) / config.sample_rate


def _overlaps(start_s: float, end_s: float, spans) -> bool:
    """True when [start_s, end_s) overlaps any of `spans` (each with `start_s` and `end_s`)."""
    return any(start_s < span.end_s and span.start_s < end_s for span in spans)


def _free_around(agreeing: tuple[float, float], found: list[ReusedSpan]) -> tuple[float, float] | None:
    """The part of `agreeing` (upload seconds) around its middle that no span found covers;
    None when a found span covers its middle."""
    middle_s = (agreeing[0] + agreeing[1]) / 2.0
    low, high = agreeing
    for span in found:
        if span.start_s <= middle_s < span.end_s:
            return None
        if span.end_s <= middle_s:
            low = max(low, span.end_s)
        else:
            high = min(high, span.start_s)
    return (low, high) if high > low else None


def _around(gaps: list[Pause], start_s: float, end_s: float, refused_at: tuple[float, float] | None,
            min_s: float) -> list[tuple[float, float]]:
    """The pieces of a refused span [start_s, end_s) to judge again: with where it was refused,
    the piece before the last pause ending before that and the piece after the first pause
    starting after it (each at least `min_s` long); without, the halves at the pause nearest its
    middle. [] when no pause allows either."""
    inside = [gap for gap in gaps if start_s + min_s <= gap.start_s and gap.end_s <= end_s - min_s]
    if refused_at is not None:
        before = [gap for gap in inside if gap.end_s <= refused_at[0]]
        after = [gap for gap in inside if gap.start_s >= refused_at[1]]
        pieces = ([(start_s, before[-1].cut[1])] if before else []) + ([(after[0].cut[0], end_s)] if after else [])
        if pieces:
            return pieces
    if not inside:
        return []
    middle = min(inside, key=lambda gap: abs(gap.middle_s - (start_s + end_s) / 2.0))
    return [(start_s, middle.cut[1]), (middle.cut[0], end_s)]


def _lasting(flags: np.ndarray, frames: int) -> np.ndarray:
    """`flags` kept only in runs of at least `frames` consecutive True values."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flags.astype(np.int8), [0]))))
    kept = np.zeros_like(flags)
    for start, stop in edges.reshape(-1, 2):
        if stop - start >= frames:
            kept[start:stop] = True
    return kept


def _cuts_around(agreeing: tuple[float, float], gaps: list[Pause], duration_s: float) -> list[tuple[float, float]]:
    """Spans to try for a run agreeing over `agreeing` (seconds of the upload), widest first:
    starting at the last cut before its start or the next one in, ending at the first cut after
    its end or the one before (cuts in pauses, as for every span; the upload's own ends too)."""
    first_s, last_s = agreeing
    slack_s = 0.15  # the agreement's quarter-second smoothing reaches this far into a pause
    starts = sorted({0.0, *(gap.cut[0] for gap in gaps if gap.end_s < duration_s)})
    ends = sorted({duration_s, *(gap.cut[1] for gap in gaps if gap.start_s > 0.0)})
    before = [cut for cut in starts if cut <= first_s + slack_s]
    after = [cut for cut in ends if cut >= last_s - slack_s]
    start_options = before[-1:] + [cut for cut in starts if cut > first_s + slack_s][: EXCERPT_CUTS_PER_END - 1]
    end_options = after[:1] + [cut for cut in ends if cut < last_s - slack_s][::-1][: EXCERPT_CUTS_PER_END - 1]
    tries = [(start, end) for start in start_options for end in end_options if end - start > 0.0]
    return sorted(tries, key=lambda span: span[0] - span[1])
