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

What is reused is a whole cached entry found inside the upload (its transcript shifted to where
it lies). The reverse, a stretch of a longer cached entry inside the upload, needs the entry's
word times to cut its transcript, and is not done yet.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from earmark.fingerprint.decode import SAMPLE_RATE
from earmark.fingerprint.matcher import verify
from earmark.fingerprint.robust_hash import RobustHash, robust_hash_from_energies
from earmark.fingerprint.spans import Stretch, stretch_embeddings, stretch_frames, stretches
from earmark.fingerprint.spectrum import band_energies, without_steady_noise
from earmark.fingerprint.speech import FRAME_S, frame_levels_db, sound_threshold_db
from earmark.index.entry import Entry
from earmark.index.store import Store
from earmark.index.vectors import VectorIndex
from earmark.service.engines.base import Transcript
from earmark.service.metrics import Metrics
from earmark.service.pipeline.profile import Profile
from earmark.service.pipeline.verification import QueryFeatures, Verifier

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

    async def find(self, pcm: np.ndarray, profile: Profile) -> list[ReusedSpan]:
        """The verified spans of `pcm` (16 kHz), in time order, none overlapping; [] when none."""
        energies, proposals = await asyncio.to_thread(self._propose, pcm, profile)
        if not proposals:
            return []
        entry_ids = sorted({entry_id for _, hits in proposals for entry_id, _ in hits})
        entries = dict(zip(entry_ids, await self.store.get_entries(entry_ids), strict=True))
        found = await asyncio.to_thread(self._verify, pcm, energies, profile, proposals, entries)
        return sorted(found, key=lambda span: span.start_s)

    def _propose(self, pcm: np.ndarray, profile: Profile) -> tuple[np.ndarray, list[tuple[Stretch, list[tuple[str, float]]]]]:
        """The upload's band energies (steady noise taken out), and each stretch of `pcm` with the
        index's candidates for it (similar enough to verify)."""
        limits = self.verifier.thresholds
        candidates = stretches(frame_levels_db(pcm), max(self.min_span_s, limits.min_speech_s), MAX_SPAN_SPEECH_S)
        self.metrics.segment_stretches.inc(len(candidates))
        if not candidates:
            return np.zeros((0, 0)), []
        energies = without_steady_noise(band_energies(pcm, self.verifier.config))
        vectors = stretch_embeddings(energies, candidates, self.verifier.config)
        found = self.index.search_many(profile.digest, vectors, TOP_K)
        return energies, [(stretch, kept) for stretch, hits in zip(candidates, found, strict=True)
                          if (kept := [(entry_id, similarity) for entry_id, similarity in hits
                                       if similarity >= limits.min_embedding_similarity])]

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
            if any(stretch.start_s < span.end_s and span.start_s < stretch.end_s for span in accepted):
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
