"""A stretch of a cached entry as an entry of its own: its verification bytes and its words, cut
from the whole entry's (issue 24: an upload holding a stretch of a longer cached recording).

The stretch is judged by the same verification as a whole upload (every stretch of it, no
minimal pair), so what it is judged against must be that stretch alone: the hash frames, detail
and wide spectra and pitch contour the entry stores for those seconds, and their speech measured
from the stored frame levels. The upload's side is cut from its whole features the same way
(`QueryFeatures.cut`, with `hash_frames`, `detail_frames` and `speech_seconds` here), so both
sides are measured alike, and the upload's features are computed once however many stretches
are judged (cutting instead of computing each stretch's from its audio made the search 2.5 times
faster on 3-minute edits, bench/README.md). What it answers must be
that stretch's own words, never the whole entry's: the entry's words are cut at the stretch's
ends by their times. Word times are an engine's guesses (Whisper starts a sentence's first word
up to half a second early, in the pause before it), so a word whose times reach across an end
goes to the side that holds its sound (the entry's stored frame levels say where the sound
is); a word with sound on both sides means the end is not in a pause, and the stretch is
unusable. An entry whose engine gave no word times, or whose normalised text is not its text
(it could not be cut alongside), has no stretch to offer.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from earmark.fingerprint.config import FingerprintConfig
from earmark.fingerprint.detail import BANDS, HOP as DETAIL_HOP, WIDE_BANDS
from earmark.fingerprint.decode import SAMPLE_RATE
from earmark.fingerprint.speech import sound_threshold_db
from earmark.index.entry import Entry

# Sound on each side of an end that makes a word reaching across it the end's own: the end is
# inside the word, not in a pause.
SPLIT_WORD_S = 0.08
_LEVEL_OFFSET_DB = 120  # the stored frame levels are dB + 120 (fingerprint/robust_hash.py)


def excerpt(entry: Entry, start_s: float, end_s: float, config: FingerprintConfig) -> Entry | None:
    """The entry cut to [start_s, end_s) of its recording, its times counted from `start_s`;
    None when its transcript cannot be cut there (see the module docstring)."""
    start_s, end_s = max(0.0, start_s), min(entry.duration_s, end_s)
    if end_s <= start_s or entry.negative or not entry.segments or entry.normalized_text != entry.text:
        return None
    all_levels = np.frombuffer(entry.fingerprint_levels, dtype=np.uint8)
    segments = _cut_segments(entry.segments, start_s, end_s, _Sound(all_levels, config))
    if segments is None:
        return None
    text = " ".join(" ".join(segment["text"] for segment in segments).split())
    hashed = hash_frames(config, start_s, end_s)
    pairs = np.frombuffer(entry.fingerprint, dtype="<u4").reshape(-1, 2)[hashed]
    levels = all_levels[hashed]
    detailed = detail_frames(start_s, end_s)
    share = (end_s - start_s) / entry.duration_s if entry.duration_s > 0 else 0.0
    return replace(entry, text=text, normalized_text=text, duration_s=end_s - start_s,
                   speech_s=speech_seconds(levels, config), engine_seconds=entry.engine_seconds * share,
                   segments=tuple(segments), fingerprint=pairs.tobytes(), fingerprint_levels=levels.tobytes(),
                   detail=_rows(entry.detail, BANDS, detailed), pitch=entry.pitch[detailed],
                   wide=_rows(entry.wide, WIDE_BANDS, detailed))


def _rows(spectrum: bytes, width: int, frames: slice) -> bytes:
    """A stored spectrum's `frames` (rows of `width` bytes); a damaged one (not whole rows) as it is."""
    if len(spectrum) % width:
        return spectrum
    return np.frombuffer(spectrum, dtype=np.uint8).reshape(-1, width)[frames].tobytes()


def has_word_times(entry: Entry) -> bool:
    """True when every segment of the entry carries its words' times (what cutting needs)."""
    return bool(entry.segments) and all(segment.get("words") for segment in entry.segments)


class _Sound:
    """Where an entry's recording sounds, from its stored hash frame levels (over its own noise
    floor, as fingerprint/speech.py measures)."""

    def __init__(self, levels: np.ndarray, config: FingerprintConfig) -> None:
        decibels = levels.astype(np.float64) - _LEVEL_OFFSET_DB
        self.sounding = decibels > sound_threshold_db(decibels) if len(decibels) else np.zeros(0, dtype=bool)
        self.config = config

    def seconds(self, start_s: float, end_s: float) -> float:
        """Seconds of sound between `start_s` and `end_s` (by the frames centred there)."""
        config = self.config
        centre = (config.frame_length - config.hop_length - config.frame_length // 2) / config.hop_length
        first = max(0, int(round(start_s * config.frames_per_second + centre)))
        last = max(first, int(round(end_s * config.frames_per_second + centre)))
        return float(np.count_nonzero(self.sounding[first:last])) / config.frames_per_second


def _cut_segments(segments: tuple[dict, ...], start_s: float, end_s: float, sound: _Sound) -> list[dict] | None:
    """The segments' words inside [start_s, end_s), as segments timed from `start_s`; None when a
    segment has no word times, a word has sound on both sides of an end, or no word is inside."""
    kept = []
    for segment in segments:
        words = segment.get("words")
        if not words:
            return None
        inside = []
        for word in words:
            side = _side(word, start_s, end_s, sound)
            if side is None:
                return None
            if side:
                inside.append(word)
        if not inside:
            continue
        moved = [word | {"start": _at(max(word["start"], start_s) - start_s), "end": _at(min(word["end"], end_s) - start_s)}
                 for word in inside]
        if len(inside) == len(words):  # the whole segment: as the engine gave it, moved
            kept.append({key: value for key, value in segment.items() if key not in ("tokens", "seek")}
                        | {"start": moved[0]["start"], "end": moved[-1]["end"], "words": moved})
        else:  # part of it: its own words, without the whole segment's decoder statistics
            kept.append({"id": 0, "start": moved[0]["start"], "end": moved[-1]["end"], "text": _joined(inside),
                         "words": moved})
    if not kept:
        return None
    return [segment | {"id": number} for number, segment in enumerate(kept)]


def _side(word: dict, start_s: float, end_s: float, sound: _Sound) -> bool | None:
    """True when the word belongs inside [start_s, end_s), False outside, None when an end splits
    its sound. A word reaching across an end goes where more of its sound is; one with no sound
    at all (in a pause, by its times) goes where its middle is."""
    first, last = word["start"], word["end"]
    if first >= start_s and last <= end_s:
        return True
    if last <= start_s or first >= end_s:
        return False
    outside = 0.0
    for cut, before in ((start_s, True), (end_s, False)):
        if first < cut < last:
            out = sound.seconds(first, cut) if before else sound.seconds(cut, last)
            into = sound.seconds(cut, min(last, end_s)) if before else sound.seconds(max(first, start_s), cut)
            if out >= SPLIT_WORD_S and into >= SPLIT_WORD_S:
                return None
            outside += out
    inside = sound.seconds(max(first, start_s), min(last, end_s))
    if inside != outside:
        return inside > outside
    return start_s <= (first + last) / 2.0 < end_s


def _joined(words: list[dict]) -> str:
    """The words as text: Whisper's carry their own leading spaces, PocketSphinx's none."""
    if all(word["word"][:1].isspace() for word in words[1:]):
        return "".join(word["word"] for word in words).strip()
    return " ".join(word["word"].strip() for word in words)


def _at(seconds: float) -> float:
    return round(max(0.0, seconds), 3)


def detail_frames(start_s: float, end_s: float) -> slice:
    """The detail spectrum's (and pitch contour's) 10 ms frames of [start_s, end_s) of a recording."""
    return slice(int(round(start_s * SAMPLE_RATE / DETAIL_HOP)), int(round(end_s * SAMPLE_RATE / DETAIL_HOP)) + 3)


def hash_frames(config: FingerprintConfig, start_s: float, end_s: float) -> slice:
    """The hash frames a recording of [start_s, end_s) alone would have (its padded edge frames
    included), as frames of the whole."""
    edge_frames = (config.frame_length - config.hop_length) // config.hop_length
    first = int(np.floor(start_s * config.frames_per_second))
    return slice(first, int(np.ceil(end_s * config.frames_per_second)) + edge_frames)


def speech_seconds(levels: np.ndarray, config: FingerprintConfig) -> float:
    """Seconds from the first to the last sounding hash frame (the stored levels), as
    fingerprint/speech.py measures a recording over its own noise floor."""
    if len(levels) == 0:
        return 0.0
    decibels = levels.astype(np.float64) - _LEVEL_OFFSET_DB
    sounding = np.flatnonzero(decibels > sound_threshold_db(decibels))
    if sounding.size == 0:
        return 0.0
    return float((sounding[-1] + 1 - sounding[0]) / config.frames_per_second)
