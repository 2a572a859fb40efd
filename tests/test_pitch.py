"""The pitch check: a changed tone is caught even when few of its frames voice on both sides,
while a tracker's errors (a harmonic taken for F0 at a voicing onset, jitter of either sign on
a codec's output) are not held against a copy."""

from __future__ import annotations

import numpy as np
import pytest

from earmark.fingerprint.pitch import compare_pitch, pitch_contour
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.verification import pitch_score_of

STEPS = 4  # quarter-semitone codes, as stored
THRESHOLD = FuzzyThresholds().min_pitch_score


def _codes(semitones: list[float | None]) -> np.ndarray:
    """A stored contour from semitones above the tracker's floor (None = unvoiced)."""
    return np.array([0 if s is None else 1 + round(s * STEPS) for s in semitones], dtype=np.uint8)


def _speech(frames: int, base: float = 8.0) -> list[float | None]:
    """A gently moving contour, voiced in runs of 15 frames with 5 unvoiced between them."""
    return [None if i % 20 >= 15 else base + 1.5 * np.sin(i / 9.0) for i in range(frames)]


@pytest.mark.parametrize("entry_voiced, margin", [((60, 61, 63), 0.0), ((60, 61, 62, 63, 64, 65), 0.05)])
def test_a_tone_changed_on_few_shared_frames_is_caught(entry_voiced, margin):
    entry = _speech(120)
    query = list(entry)
    # The syllable at 60..69: the entry's low tone voices only a few frames, the query's
    # falling tone voices them all, 3.5 semitones above. Three frames are refused; six, which
    # fill the 6 a 200 ms stretch needs on their own, with a margin.
    for i in range(60, 70):
        entry[i] = 1.0 if i in entry_voiced else None
        query[i] = 4.5 - 0.1 * (i - 60)
    verdict = compare_pitch(_codes(query), _codes(entry), 0)
    assert pitch_score_of(verdict.burst_semitones) < THRESHOLD - margin, verdict
    assert verdict.query_s <= 0.60 <= verdict.query_s + 0.2  # the 200 ms judged hold the syllable


def test_a_trackers_jitter_of_either_sign_is_forgiven():
    # A telephone codec's copy: every third voiced frame off by 1.5 semitones, up or down in
    # turn, and two frames a whole 3 semitones off. No shift is held over a syllable.
    entry = _speech(200)
    query = list(entry)
    for n, i in enumerate(i for i in range(200) if entry[i] is not None and i % 3 == 0):
        query[i] = entry[i] + (1.5 if n % 2 else -1.5)
    query[41], query[102] = entry[41] + 3.0, entry[102] - 3.0
    verdict = compare_pitch(_codes(query), _codes(entry), 0)
    assert pitch_score_of(verdict.burst_semitones) >= THRESHOLD + 0.05, verdict


def test_a_harmonic_taken_for_pitch_at_an_onset_is_forgiven():
    entry = _speech(120)
    query = list(entry)
    for i in (20, 21, 40):  # 19 semitones up: the third harmonic, at the start of a voiced run
        query[i] = entry[i] + 19.0
    verdict = compare_pitch(_codes(query), _codes(entry), 0)
    assert verdict.burst_semitones < 0.5


def test_the_same_contour_agrees_everywhere():
    entry = _codes(_speech(120))
    verdict = compare_pitch(entry, entry, 0)
    assert verdict.burst_semitones == 0.0
    assert verdict.shared_frames == sum(1 for i in range(120) if i % 20 < 15)


def test_a_rising_glide_is_tracked_as_an_octave():
    t = np.arange(16000) / 16000.0
    glide = np.sin(2 * np.pi * np.cumsum(np.linspace(110, 220, t.size)) / 16000).astype(np.float32)
    voice = glide + 0.5 * np.sin(2 * 2 * np.pi * np.cumsum(np.linspace(110, 220, t.size)) / 16000)
    contour = pitch_contour(0.3 * voice.astype(np.float32))
    voiced = contour[contour > 0]
    assert voiced.size > 50
    rising = (voiced[-10:].astype(float).mean() - voiced[:10].astype(float).mean()) / STEPS
    assert 9.0 < rising < 15.0, rising  # an octave, give or take the ends


@pytest.mark.parametrize("shift, at_least", [(5.0, 3.5), (8.0, 2.5)])
def test_a_sustained_excursion_far_from_the_median_is_judged_not_dropped(shift, at_least):
    # 150 ms of the query far from its own median pitch: not a tracker's glitch (too long, and
    # no harmonic away), so it counts. 8 semitones is 4 as pitch classes (octaves forgiven);
    # over the 200 ms judged, 150 ms of it.
    entry = [8.0] * 120
    query = list(entry)
    for i in range(50, 65):
        query[i] = 8.0 + shift
    assert compare_pitch(_codes(query), _codes(entry), 0).burst_semitones >= at_least


def test_frames_pinned_at_the_trackers_ceiling_are_not_judged():
    # A voice above 400 Hz reads as the ceiling in the entry; a noisy copy's tracker picks a
    # lower peak for a few frames at a time. Neither side measured a pitch there.
    ceiling = 12.0 * np.log2(400.0 / 60.0)
    entry = _speech(120, base=26.0)
    query = list(entry)
    for i in range(40, 55):
        entry[i] = ceiling
        query[i] = ceiling - (2.0 + 0.5 * (i % 3)) if i % 4 else ceiling
    verdict = compare_pitch(_codes(query), _codes(entry), 0)
    assert pitch_score_of(verdict.burst_semitones) >= THRESHOLD + 0.05, verdict


def test_a_short_piece_the_tracker_jumps_into_is_forgiven_but_a_smooth_change_is_judged():
    entry = _speech(120)
    query = list(entry)
    for i in range(45, 50):  # a fourth up (4:3 of the lag) for 50 ms, jumped into and out of
        query[i] = entry[i] + 4.98
    assert pitch_score_of(compare_pitch(_codes(query), _codes(entry), 0).burst_semitones) >= THRESHOLD + 0.05
    changed = list(entry)
    for i in range(40, 55):  # the same shift reached smoothly over a whole syllable: a tone
        changed[i] = entry[i] + min(4.98, 0.8 * (i - 39))
    assert pitch_score_of(compare_pitch(_codes(changed), _codes(entry), 0).burst_semitones) < THRESHOLD - 0.05
