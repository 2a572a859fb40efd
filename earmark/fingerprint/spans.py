"""Where a cached recording may lie inside a longer one: stretches of a recording cut at its
pauses, each with the embedding it would have as a recording of its own (issue 24).

A call that opens with a cached prompt is a new file, so no whole-file tier finds the prompt in
it. Cut at its pauses, though, the call holds a stretch that is exactly the prompt's recording,
give or take silence; that stretch, hashed and embedded as if it had been uploaded alone, is what
the fuzzy tier knows how to judge. This module proposes the stretches and their embeddings (a
candidate search, like the whole file's embedding): the same verification as a whole upload's
then decides, stretch by stretch, and nothing here decides a match.

Stretches start and end in the middle of a pause, never inside a word, so a word at a seam is
heard whole either by the cache or by the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earmark.fingerprint.config import FingerprintConfig
from earmark.fingerprint.embedding import embedding_from_energies
from earmark.fingerprint.speech import FRAME_S, extent_from_levels, sound_threshold_db

# A gap in the sound at least this long is a pause a stretch may start or end in: shorter ones
# are the closures inside words (a stop consonant's silence is 50-120 ms).
MIN_PAUSE_S = 0.15
# Silence kept at a stretch's ends inside a longer pause: a weak onset or a fading last
# syllable under the sound threshold stays in the stretch.
EDGE_S = 0.25
# Stretches proposed per recording at most: with more pauses than that allows, the shortest
# pauses stop being cut points first (a prompt is followed by a turn-taking pause, not a breath).
MAX_SPANS = 2000


@dataclass(frozen=True)
class Pause:
    """A gap in the sound, in seconds from the start of the recording."""

    start_s: float
    end_s: float

    @property
    def middle_s(self) -> float:
        """The middle of the gap."""
        return (self.start_s + self.end_s) / 2.0

    @property
    def cut(self) -> tuple[float, float]:
        """Where a stretch starting after this pause starts, and where one ending at it ends:
        EDGE_S from the speech on either side (the middle of a shorter pause). A long pause's
        middle is left out of both: a breath or a click in it is no part of either stretch."""
        if self.duration_s <= 2.0 * EDGE_S:
            return self.middle_s, self.middle_s
        return self.end_s - EDGE_S, self.start_s + EDGE_S

    @property
    def duration_s(self) -> float:
        """How long the gap lasts."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Stretch:
    """A candidate stretch of the recording: from one cut to another, with its speech length."""

    start_s: float
    end_s: float
    speech_s: float


def pauses(levels: np.ndarray, min_pause_s: float = MIN_PAUSE_S) -> list[Pause]:
    """The gaps of at least `min_pause_s` between sounding frames (`FrameLevels`' 20 ms levels),
    leading and trailing silence included (a stretch may start at the recording's start)."""
    if levels.size == 0:
        return []
    quiet = levels <= sound_threshold_db(levels)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], quiet.astype(np.int8), [0]))))
    runs = edges.reshape(-1, 2)
    return [Pause(float(start * FRAME_S), float(stop * FRAME_S)) for start, stop in runs
            if (stop - start) * FRAME_S >= min_pause_s]


def stretches(levels: np.ndarray, min_speech_s: float, max_speech_s: float,
              max_spans: int = MAX_SPANS) -> list[Stretch]:
    """Every stretch from one cut point to a later one holding `min_speech_s` to `max_speech_s`
    of speech (the span between its first and last sounding frame), except the whole recording
    (the whole-file tiers judge that). Cut points are the recording's leading and trailing
    silence and every pause (`Pause.cut`); when they would give more than `max_spans`
    stretches, the shortest pauses are dropped as cut points until they do not."""
    if levels.size == 0:
        return []
    duration_s = levels.size * FRAME_S
    gaps = pauses(levels)
    inner = sorted((gap for gap in gaps if 0.0 < gap.start_s and gap.end_s < duration_s),
                   key=lambda gap: gap.duration_s, reverse=True)
    leading = next((gap for gap in gaps if gap.start_s == 0.0), None)
    trailing = next((gap for gap in gaps if gap.end_s >= duration_s), None)
    ends = [(max(0.0, leading.end_s - EDGE_S) if leading else 0.0, 0.0),
            (duration_s, min(duration_s, trailing.start_s + EDGE_S) if trailing else duration_s)]
    extent = extent_from_levels(levels)
    while True:
        cuts = sorted([*ends, *(gap.cut for gap in inner)])
        found = _between(levels, cuts, extent, min_speech_s, max_speech_s)
        if len(found) <= max_spans or not inner:
            return found[:max_spans]
        inner = inner[: max(0, len(inner) - max(1, len(inner) // 5))]


def _between(levels: np.ndarray, cuts: list[tuple[float, float]], extent, min_speech_s: float,
             max_speech_s: float) -> list[Stretch]:
    """The stretches between pairs of `cuts` ((start here, end here), in time order) whose speech
    length is within the bounds."""
    found = []
    sounding = levels > sound_threshold_db(levels)
    starts = [min(levels.size, int(round(start / FRAME_S))) for start, _ in cuts]
    stops = [min(levels.size, int(round(end / FRAME_S))) for _, end in cuts]
    # First and last sounding frame at or after / before each cut, for the speech length.
    frames = np.arange(levels.size)
    first_after = np.full(levels.size + 1, levels.size, dtype=np.int64)
    first_after[:-1] = np.minimum.accumulate(np.where(sounding, frames, levels.size)[::-1])[::-1]
    last_before = np.full(levels.size + 1, -1, dtype=np.int64)
    last_before[1:] = np.maximum.accumulate(np.where(sounding, frames, -1))
    for i, start in enumerate(starts):
        for j in range(i + 1, len(stops)):
            stop = stops[j]
            first, last = first_after[start], last_before[stop]
            if last < first:
                continue
            speech_s = (last - first + 1) * FRAME_S
            if speech_s > max_speech_s:
                break
            whole = first * FRAME_S <= extent.start_s and (last + 1) * FRAME_S >= extent.end_s
            if speech_s >= min_speech_s and not whole:
                found.append(Stretch(cuts[i][0], cuts[j][1], round(speech_s, 3)))
    return found


def stretch_embeddings(energies: np.ndarray, found: list[Stretch], config: FingerprintConfig) -> np.ndarray:
    """(len(found), EMBEDDING_DIM) embeddings of each stretch's band energies (the whole
    recording's, steady noise already taken out), as `embedding_from_energies` gives a recording
    of just that stretch, give or take its edge frames."""
    rows = [embedding_from_energies(energies[stretch_frames(stretch, config, len(energies))], config)
            for stretch in found]
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def stretch_frames(stretch: Stretch, config: FingerprintConfig, frames: int) -> slice:
    """The hash frames (of a recording `frames` long) that a stretch covers."""
    edge = config.frame_length - config.hop_length
    first = max(0, int(round((stretch.start_s * config.sample_rate + edge) / config.hop_length)))
    last = min(frames, int(round((stretch.end_s * config.sample_rate + edge) / config.hop_length)))
    return slice(first, last)
