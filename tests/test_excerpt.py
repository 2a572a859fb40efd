"""The parts of finding a stretch of a cached entry inside an upload (issue 24): where the
upload's hash frames run at one offset in the entry's (fingerprint/alignment.py), and the
entry cut to a stretch, evidence and words (index/excerpt.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from earmark.fingerprint.alignment import BLOCK_FRAMES, aligned_runs, frame_agreement
from earmark.fingerprint.config import DEFAULT
from earmark.fingerprint.decode import SAMPLE_RATE, decode_audio
from earmark.fingerprint.robust_hash import robust_hash
from earmark.index.entry import Entry
from earmark.index.excerpt import excerpt, has_word_times
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.verification import Verifier
from tests.audio_tools import encode, fixture_bytes

FPS = DEFAULT.frames_per_second


@pytest.fixture(scope="module")
def reading() -> np.ndarray:
    """Eight sentences read by one voice, 50 s (LJ Speech)."""
    return decode_audio(io.BytesIO(fixture_bytes("ljspeech_001_0001to0008.flac")), 600.0).pcm_16k


def _mp3(samples: np.ndarray) -> np.ndarray:
    data = encode(np.clip(samples * 32767, -32768, 32767), SAMPLE_RATE, fmt="mp3", codec="libmp3lame", bitrate=32000)
    return decode_audio(io.BytesIO(data), 600.0).pcm_16k


def test_a_re_encoded_clip_and_an_edited_copy_run_at_their_offsets_and_other_speech_at_none(reading):
    whole = robust_hash(reading, DEFAULT)
    clip = robust_hash(_mp3(reading[10 * SAMPLE_RATE : 40 * SAMPLE_RATE]), DEFAULT)
    [run] = aligned_runs(clip, whole)
    assert run.offset / FPS == pytest.approx(10.0, abs=0.1) and run.frames >= 0.9 * len(clip.bits)

    edited = robust_hash(np.concatenate([reading[: 15 * SAMPLE_RATE], reading[30 * SAMPLE_RATE :]]), DEFAULT)
    runs = aligned_runs(edited, whole)
    assert [round(run.offset / FPS) for run in runs] == [0, 15]
    assert runs[0].query_end <= runs[1].query_start
    assert abs(runs[0].query_end / FPS - 15.0) <= BLOCK_FRAMES / FPS

    other = decode_audio(io.BytesIO(fixture_bytes("fleurs_en_5to9.flac")), 600.0).pcm_16k
    assert aligned_runs(robust_hash(other, DEFAULT), whole) == []
    # Where the frames agree: a copy's nearly all, other speech about half; pauses say nothing.
    agreement = frame_agreement(clip, whole, run.offset)
    assert np.nanmedian(agreement) > 0.85 and np.isnan(agreement).any()
    assert np.nanmedian(frame_agreement(clip, whole, run.offset + 300)) < 0.65


def _entry(segments: tuple[dict, ...], duration_s: float = 10.0, **fields) -> Entry:
    text = " ".join(segment["text"].strip() for segment in segments)
    return Entry("e" * 32, "p", "d", text, text, "en", duration_s, duration_s, 4.0, segments=segments, **fields)


def _levels(duration_s: float, *sounding: tuple[float, float]) -> bytes:
    """Stored hash frame levels (dB + 120) of a recording that sounds only in `sounding`."""
    centres = (np.arange(int(duration_s * FPS) + 8) - 3) / FPS  # frame k is centred 3 frames before k / FPS
    loud = np.zeros(len(centres), dtype=bool)
    for start, end in sounding:
        loud |= (centres >= start) & (centres < end)
    return np.where(loud, 100, 40).astype(np.uint8).tobytes()


def _words(*timed: tuple[str, float, float]) -> list[dict]:
    return [{"word": word, "start": start, "end": end} for word, start, end in timed]


def test_an_entry_is_cut_to_a_stretch_with_its_own_words_timed_from_the_stretch():
    segments = (
        {"id": 0, "start": 0.5, "end": 2.0, "text": " Good morning.", "tokens": [1, 2], "seek": 0, "avg_logprob": -0.2,
         "words": _words((" Good", 0.5, 1.0), (" morning.", 1.1, 2.0))},
        {"id": 1, "start": 3.0, "end": 6.0, "text": " Your call is recorded.",
         "words": _words((" Your", 3.0, 3.4), (" call", 3.5, 3.9), (" is", 4.6, 4.8), (" recorded.", 4.9, 6.0))},
    )
    entry = _entry(segments)
    part = excerpt(entry, 0.2, 4.3, DEFAULT)
    assert part is not None and part.text == part.normalized_text == "Good morning. Your call"
    assert part.duration_s == pytest.approx(4.1) and part.engine_seconds == pytest.approx(4.0 * 4.1 / 10.0)
    first, second = part.segments
    # A whole segment stays as the engine gave it (its decoder tokens and window left out)...
    assert first["text"] == " Good morning." and first["avg_logprob"] == -0.2 and "tokens" not in first
    assert (first["start"], first["words"][0]["start"]) == (0.3, 0.3)
    # ...a part of one is its own words.
    assert second == {"id": 1, "start": 2.8, "end": 3.7, "text": "Your call",
                      "words": _words((" Your", 2.8, 3.2), (" call", 3.3, 3.7))}
    assert part.entry_id == entry.entry_id  # the span names the entry it came from

    assert excerpt(entry, 7.0, 9.0, DEFAULT) is None  # no word inside

    # Word times are guesses: a word whose times reach across an end goes where its sound is, and
    # one with sound on both sides of an end means the end is not in a pause.
    sound = _levels(entry.duration_s, (0.5, 2.0), (3.0, 3.9), (4.55, 6.0))  # "Your call" 3.0-3.9: a pause, then "is"
    early = _entry(segments[1:], fingerprint_levels=sound)
    early_words = early.segments[0]["words"]
    early_words[0]["start"] = 2.5  # Whisper's first word of a sentence often starts in the pause before it
    assert excerpt(early, 2.7, 4.3, DEFAULT).text == "Your call"
    assert excerpt(early, 4.3, 6.2, DEFAULT).text == "is recorded."  # " is" (4.6-4.8) is after the cut
    assert excerpt(early, 4.7, 6.2, DEFAULT) is None  # 4.7 lies inside " is": sound on both sides
    untimed = _entry(({"id": 0, "start": 0.0, "end": 6.0, "text": "Good morning."},))
    assert not has_word_times(untimed) and excerpt(untimed, 0.0, 3.0, DEFAULT) is None
    normalised = _entry(segments)
    assert excerpt(Entry(**{**normalised.__dict__, "normalized_text": "good morning your call is recorded"}),
                   0.2, 4.3, DEFAULT) is None  # a normalised text cannot be cut alongside
    pocketsphinx = _entry(({"id": 0, "start": 0.0, "end": 2.0, "text": "good morning",
                            "words": _words(("good", 0.1, 0.6), ("morning", 0.7, 1.5))},))
    assert excerpt(pocketsphinx, 0.0, 1.6, DEFAULT).text == "good morning"


def test_a_stretch_cut_from_an_entry_is_judged_a_copy_of_that_stretch_alone_and_of_no_other(reading):
    verifier = Verifier(FuzzyThresholds())
    words = ({"id": 0, "start": 0.0, "end": 50.0, "text": "x",
              "words": [{"word": f"w{i}", "start": i + 0.5, "end": i + 0.6} for i in range(50)]},)
    whole = verifier.attach(_entry(words, duration_s=len(reading) / SAMPLE_RATE), verifier.features(reading))
    start_s, end_s = 15.17, 30.46  # pauses of the reading
    clip = verifier.features(_mp3(reading[int(start_s * SAMPLE_RATE) : int(end_s * SAMPLE_RATE)]))
    part = excerpt(whole, start_s, end_s, DEFAULT)
    assert part is not None and part.speech_s == pytest.approx(clip.speech_s, abs=0.5)
    judgement = verifier.evaluate(clip, "p", 0.7, part)
    assert judgement.accepted, judgement.reason
    elsewhere = excerpt(whole, start_s + 7.3, end_s + 7.3, DEFAULT)
    assert elsewhere is not None and not verifier.evaluate(clip, "p", 0.7, elsewhere).accepted


def test_an_uploads_stretch_cut_from_its_whole_features_is_judged_as_the_entrys_stretch(reading):
    verifier = Verifier(FuzzyThresholds())
    words = ({"id": 0, "start": 0.0, "end": 50.0, "text": "x",
              "words": [{"word": f"w{i}", "start": i + 0.5, "end": i + 0.6} for i in range(50)]},)
    whole = verifier.attach(_entry(words, duration_s=len(reading) / SAMPLE_RATE), verifier.features(reading))
    # The upload: the reading re-encoded, with 3 s of other speech before it.
    other = decode_audio(io.BytesIO(fixture_bytes("fleurs_en_5to9.flac")), 600.0).pcm_16k[: 3 * SAMPLE_RATE]
    upload = verifier.deferred_features(_mp3(np.concatenate([other, reading])))
    start_s, end_s = 15.17, 30.46
    stretch = upload.cut(start_s + 3.0, end_s + 3.0, DEFAULT)
    assert len(stretch.detail) == len(stretch.pitch) and all(len(p) == len(stretch.detail) for p in stretch.detail_phases)
    assert stretch.speech_s == pytest.approx(end_s - start_s, abs=1.0)
    judgement = verifier.evaluate(stretch, "p", 0.7, excerpt(whole, start_s, end_s, DEFAULT))
    assert judgement.accepted, judgement.reason
    assert not verifier.evaluate(stretch, "p", 0.7, excerpt(whole, start_s + 7.3, end_s + 7.3, DEFAULT)).accepted
    assert not verifier.evaluate(upload.cut(0.0, 12.0, DEFAULT), "p", 0.7, excerpt(whole, 0.0, 9.0, DEFAULT)).accepted


def test_a_refusal_says_where_in_the_query_it_was_decided():
    verifier = Verifier(FuzzyThresholds())
    said, changed = (decode_audio(io.BytesIO(fixture_bytes(f"minimal_pairs/name_changed_011_{side}.flac")), 60.0).pcm_16k
                     for side in "ab")  # "...Don will call you back...", "...Dan will..."
    entry = verifier.attach(_entry(({"id": 0, "start": 0.0, "end": 3.8, "text": "x"},), duration_s=len(said) / SAMPLE_RATE),
                            verifier.features(said))
    judgement = verifier.evaluate(verifier.features(changed), "p", 0.9, entry)
    common = min(len(said), len(changed))
    differs_s = int(np.argmax(np.abs(said[:common] - changed[:common]) > 1e-3)) / SAMPLE_RATE
    assert not judgement.accepted and judgement.refused_at is not None, judgement.reason
    start_s, end_s = judgement.refused_at
    assert start_s - 0.3 <= differs_s <= end_s + 0.3, (judgement.refused_at, differs_s, judgement.reason)
    assert verifier.evaluate(verifier.features(said), "p", 0.9, entry).refused_at is None
