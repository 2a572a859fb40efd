"""`earmark tune`: choose the fuzzy tier's thresholds on an operator's own audio.

An operator must not have to label anything. From a directory of recordings this builds
positives (real re-encodings of each file: the copies the cache should serve) and negatives
(other recordings, and edits of the same recording that must never be served: a clip of it,
it followed by other speech, a stretch of it replaced by other speech), scores every pair with
the service's own verdict (`Verifier.judge`, not a copy), and picks the lowest threshold
that keeps the false-accept rate at the target (0 by default) plus a safety margin: the
highest recall that rule allows. It never goes under the built-in thresholds unless asked
(`--allow-lower`): those were set on minimal pairs (a changed digit, name or tone), which an
operator's recordings cannot generate, so a tuning set without them would lower the bar below
what keeps them apart. A CSV of labelled pairs (`query,original` with `none` for a
query that matches nothing) may be given instead.

Every check of the verdict reports its score on one scale whose default thresholds coincide
(0.74; the 0.25 s window's is rescaled onto it), and the reported score is the worst of them,
so one threshold on that score is one threshold per check; `thresholds_for` writes them out.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import soxr

from earmark.fingerprint.clipping import NO_BLOCKS
from earmark.fingerprint.decode import SAMPLE_RATE, AudioError, decode_audio
from earmark.fingerprint.speech import speech_extent
from earmark.index.entry import Entry
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.verification import SHORT_SCALE, Evidence, Judgement, QueryFeatures, Verifier

NOISE_SEED = 20261129


@dataclass(frozen=True)
class Pair:
    """A query judged against an original, and what the answer must be."""

    query: str  # a label: file name and the transform or edit
    original: str
    kind: str  # the transform ("mp3_32k") or the negative's kind ("other_recording", "clip")
    positive: bool
    score: float = 0.0
    accepted: bool = False
    reason: str = ""


@dataclass
class TuneResult:
    """Every scored pair, and the thresholds chosen from them."""

    pairs: list[Pair] = field(default_factory=list)
    threshold: float = 0.0
    target_far: float = 0.0
    margin: float = 0.0
    floor: float = 0.0  # the lowest threshold allowed (the built-in default unless the operator lowers it)
    allowed_by_pairs: float = 0.0  # what the pairs alone would have allowed

    @property
    def positives(self) -> list[Pair]:
        return [pair for pair in self.pairs if pair.positive]

    @property
    def negatives(self) -> list[Pair]:
        return [pair for pair in self.pairs if not pair.positive]

    def recall(self, threshold: float | None = None) -> float:
        """Share of positives scoring at or above the threshold."""
        threshold = self.threshold if threshold is None else threshold
        return sum(pair.score >= threshold for pair in self.positives) / max(1, len(self.positives))

    def false_accept_rate(self, threshold: float | None = None) -> float:
        """Share of negatives scoring at or above the threshold."""
        threshold = self.threshold if threshold is None else threshold
        return sum(pair.score >= threshold for pair in self.negatives) / max(1, len(self.negatives))

    def summary(self) -> dict:
        """What `summary.json` holds."""
        kinds = sorted({pair.kind for pair in self.pairs})
        hardest = max(self.negatives, key=lambda pair: pair.score, default=None)
        return {
            "pairs": len(self.pairs), "positives": len(self.positives), "negatives": len(self.negatives),
            "threshold": round(self.threshold, 4), "target_false_accept_rate": self.target_far, "margin": self.margin,
            "floor": self.floor, "threshold_the_pairs_allow": round(self.allowed_by_pairs, 4),
            "recall": round(self.recall(), 4), "false_accept_rate": round(self.false_accept_rate(), 4),
            "recall_at_default_thresholds": round(self.recall(FuzzyThresholds().min_window_score), 4),
            "hardest_negative": None if hardest is None else {"query": hardest.query, "original": hardest.original,
                                                             "kind": hardest.kind, "score": round(hardest.score, 4)},
            "by_kind": {kind: {"n": sum(p.kind == kind for p in self.pairs),
                               "positive": next(p.positive for p in self.pairs if p.kind == kind),
                               "at_or_above_threshold": sum(p.kind == kind and p.score >= self.threshold for p in self.pairs)}
                        for kind in kinds},
            "thresholds": thresholds_for(self.threshold),
        }


def thresholds_for(threshold: float) -> dict[str, float]:
    """Per-check thresholds equivalent to one threshold on the reported score."""
    return {
        "min_window_score": round(threshold, 4),
        "min_short_window_score": round(1.0 - (1.0 - threshold) / SHORT_SCALE, 4),
        "min_detail_score": round(threshold, 4),
        "min_pitch_score": round(threshold, 4),
    }


def choose_threshold(negative_scores: list[float], target_far: float, margin: float, floor: float = 0.0) -> float:
    """The lowest threshold at which at most `target_far` of the negatives score as high,
    raised by `margin` (a negative scoring exactly the threshold is accepted, hence the margin
    is never 0 in practice), and never under `floor`."""
    allowed = int(target_far * len(negative_scores))
    ranked = sorted(negative_scores, reverse=True)
    base = ranked[allowed] if allowed < len(ranked) else 0.0
    return min(1.0, max(floor, base + margin))


def thresholds_toml(result: TuneResult) -> str:
    """A config file `earmark serve --config` reads (only the `[thresholds]` table)."""
    lines = ["# Written by `earmark tune`: the fuzzy tier's thresholds, chosen for a false-accept rate of",
             f"# {result.target_far:g} on the tuning pairs plus a margin of {result.margin:g}; recall "
             f"{result.recall():.4f} on {len(result.positives)} copies.", "[thresholds]"]
    lines += [f"{name} = {value}" for name, value in thresholds_for(result.threshold).items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# Building the pairs


def audio_files(directory: Path) -> list[Path]:
    """Every regular, non-hidden file under `directory`, sorted."""
    return sorted(path for path in directory.rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(directory).parts))


def transforms() -> dict[str, Callable[[np.ndarray], bytes]]:
    """The re-encodings a copy goes through in real use, made with real encoders (PyAV's)."""
    return {
        "mp3_32k": lambda pcm: _encode(pcm, SAMPLE_RATE, "mp3", "libmp3lame", 32_000),
        "aac_48k": lambda pcm: _encode(pcm, SAMPLE_RATE, "adts", "aac", 48_000),
        "opus_24k": lambda pcm: _encode(soxr.resample(pcm, SAMPLE_RATE, 48_000), 48_000, "ogg", "libopus", 24_000),
        "wav_8k": lambda pcm: _encode(soxr.resample(pcm, SAMPLE_RATE, 8_000), 8_000, "wav", "pcm_s16le"),
        "gain_minus6": lambda pcm: _encode(pcm * 0.5, SAMPLE_RATE, "wav", "pcm_s16le"),
        "noise_30db": lambda pcm: _encode(_with_noise(pcm, 30.0), SAMPLE_RATE, "wav", "pcm_s16le"),
        "pad_start_0_5": lambda pcm: _encode(np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), pcm]),
                                             SAMPLE_RATE, "wav", "pcm_s16le"),
    }


def negatives_of(pcm: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
    """Edits of one recording that must never be served its transcript. The clip and the
    replaced stretch are placed within the speech, not the file: a recording with a second of
    silence at its end keeps all its speech in its first 70%, and that clip is a copy."""
    extent = speech_extent(pcm)
    start, end = int(extent.start_s * SAMPLE_RATE), int(extent.end_s * SAMPLE_RATE)
    if end - start < SAMPLE_RATE // 2:  # next to no speech found: fall back to the whole file
        start, end = 0, len(pcm)
    cut = start + int((end - start) * 0.7)
    middle = (start + end) // 2
    length = min(int(0.3 * SAMPLE_RATE), len(other), (end - start) // 4)
    replaced = pcm.copy()
    source = (len(other) - length) // 2
    replaced[middle:middle + length] = other[source:source + length]
    return {
        "clip_70pct": pcm[:cut],
        "followed_by_other_speech": np.concatenate([pcm, np.zeros(SAMPLE_RATE // 4, np.float32), other]),
        "stretch_replaced": replaced,
    }


def _encode(pcm: np.ndarray, rate: int, fmt: str, codec: str, bitrate: int | None = None) -> bytes:
    samples = np.round(np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        assert isinstance(stream, av.audio.stream.AudioStream)
        stream.layout = "mono"
        if bitrate:
            stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def _with_noise(pcm: np.ndarray, snr_db: float) -> np.ndarray:
    rng = np.random.default_rng(NOISE_SEED)
    power = float(np.mean(pcm.astype(np.float64) ** 2)) or 1e-10
    return (pcm + rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), len(pcm))).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Scoring


class Scorer:
    """The service's verdict on (query, original) pairs, originals fingerprinted once."""

    def __init__(self, thresholds: FuzzyThresholds) -> None:
        self.verifier = Verifier(thresholds)
        self._entries: dict[str, tuple[Entry, QueryFeatures]] = {}

    def original(self, label: str, pcm: np.ndarray) -> None:
        """Fingerprint an original as the service stores it."""
        self.original_features(label, self.verifier.features(pcm), len(pcm) / SAMPLE_RATE)

    def original_features(self, label: str, features: QueryFeatures, duration_s: float = 0.0) -> None:
        """Store an original from features already computed (a benchmark's cache)."""
        entry = Entry(entry_id=label, profile_id="tune", pcm_digest=label, text="", normalized_text="", language="",
                      duration_s=duration_s, speech_s=features.speech_s, engine_seconds=0.0)
        self._entries[label] = (self.verifier.attach(entry, features), features)

    def score(self, query_label: str, query_pcm: np.ndarray, original: str, kind: str, positive: bool,
              clipped: np.ndarray = NO_BLOCKS) -> Pair:
        """Judge one query against one original (`clipped`: where its source clipped, as decoded)."""
        accepted, score, reason = self.judge(self.verifier.features(query_pcm).note_clipping(clipped), original)
        return Pair(query_label, original, kind, positive, score, accepted, reason)

    def judge(self, features: QueryFeatures, original: str) -> tuple[bool, float, str]:
        """The service's (accepted, score, reason) for a query's features against one original."""
        return self.verifier.judge(features, "tune", *self._candidate(features, original))

    def evidence(self, features: QueryFeatures, original: str) -> Evidence | Judgement:
        """What the comparisons found of a query against one original, before any threshold
        (or the refusal that stopped them): what a calibration is fitted on."""
        return self.verifier.evidence(features, "tune", *self._candidate(features, original))

    def _candidate(self, features: QueryFeatures, original: str) -> tuple[float, Entry]:
        """The original as the service's candidate: its embedding similarity and its entry."""
        entry, original_features = self._entries[original]
        return float(np.dot(features.embedding, original_features.embedding)), entry


def directory_pairs(directory: Path, scorer: Scorer, others_per_file: int = 8) -> Iterator[Pair]:
    """Score positives and negatives built from every decodable file under `directory`."""
    recordings: dict[str, np.ndarray] = {}
    for path in audio_files(directory):
        try:
            recordings[str(path.relative_to(directory))] = decode_audio(path.read_bytes(), 4 * 3600).pcm_16k
        except AudioError:
            continue  # not audio: nothing to tune on
    names = sorted(recordings)
    for name in names:
        scorer.original(name, recordings[name])
    for index, name in enumerate(names):
        pcm = recordings[name]
        for kind, make in transforms().items():
            copy = decode_audio(make(pcm), 4 * 3600)
            yield scorer.score(f"{name} [{kind}]", copy.pcm_16k, name, kind, True, copy.clipped_blocks)
        others = [names[(index + step) % len(names)] for step in range(1, min(others_per_file, len(names) - 1) + 1)]
        for other in others:
            yield scorer.score(other, recordings[other], name, "other_recording", False)
        if others:
            for kind, edited in negatives_of(pcm, recordings[others[0]]).items():
                yield scorer.score(f"{name} [{kind}]", edited, name, kind, False)


def csv_pairs(path: Path, scorer: Scorer) -> Iterator[Pair]:
    """Score the labelled pairs of a CSV: `query,original` (header optional), `none` for a query
    that must match nothing (it is then judged against every original listed)."""
    rows = [row for row in csv.reader(path.read_text().splitlines()) if row and not row[0].startswith("#")]
    if rows and rows[0][:2] == ["query", "original"]:
        rows = rows[1:]
    base = path.parent
    originals = sorted({row[1].strip() for row in rows if row[1].strip().lower() != "none"})
    for original in originals:
        scorer.original(original, decode_audio((base / original).read_bytes(), 4 * 3600).pcm_16k)
    for query, original in ((row[0].strip(), row[1].strip()) for row in rows):
        decoded = decode_audio((base / query).read_bytes(), 4 * 3600)
        pcm, clipped = decoded.pcm_16k, decoded.clipped_blocks
        if original.lower() == "none":
            for candidate in originals:
                yield scorer.score(query, pcm, candidate, "labelled_negative", False, clipped)
        else:
            yield scorer.score(query, pcm, original, "labelled_positive", True, clipped)
