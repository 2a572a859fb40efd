"""The fuzzy tier through the HTTP API, on a real store: copies hit, lookalikes never do, and
deleted or expired entries are never served by any replica."""

from __future__ import annotations

import time
import asyncio
from dataclasses import replace

import numpy as np
from starlette.testclient import TestClient

from earmark.service.api.app import create_app
from earmark.fingerprint.decode import decode_audio
from earmark.fingerprint.embedding import EMBEDDING_DIM
from earmark.index.connection import open_client
from earmark.index.entry import Entry, make_entry_id
from earmark.index.keys import Keys
from earmark.index.store import Store
from earmark.index.vectors import VectorIndex
from earmark.service.config import FuzzyThresholds
from earmark.service.metrics import Metrics
from earmark.service.pipeline.fuzzy import FuzzyMatcher
from earmark.service.pipeline.profile import Profile
from earmark.service.pipeline.verification import Verifier
from tests.waiting import wait_for
from tests.audio_tools import encode, fixture_bytes, read_pcm
from tests.http_helpers import recognize


def test_reencoded_copy_hits_fuzzy_with_the_same_entry(client, recorded, mp3_copy):
    first = recognize(client, recorded)
    entry = first["cache"]["entry"]
    wait_for(lambda: client.get("/health").json()["index_size"] >= 1)

    evidence = recognize(client, mp3_copy, "/lookup")["cache"]
    assert (evidence["tier"], evidence["entry"]) == ("fuzzy", entry)
    assert evidence["candidates"][0]["accepted"] and 0 < evidence["score"] <= 1
    # The per-stretch curve: its minimum is the worst stretch the reason names, and it spans the recording.
    stretches = evidence["candidates"][0]["stretches"]
    worst = float(evidence["candidates"][0]["reason"].split("worst stretch ")[1].split()[0])
    assert round(min(s["score"] for s in stretches), 3) == worst and len(stretches) >= 3
    times = [s["at_s"] for s in stretches]
    assert times == sorted(times) and times[-1] > 1.0

    hit = recognize(client, mp3_copy)
    assert (hit["cache"]["tier"], hit["cache"]["entry"]) == ("fuzzy", entry)
    assert hit["result"]["text"] == first["result"]["text"]
    remembered = recognize(client, mp3_copy)["cache"]  # the copy's bytes are remembered, as a fuzzy verdict
    assert (remembered["tier"], remembered["entry"], remembered["score"]) == ("fuzzy", entry, hit["cache"]["score"])

    samples, rate = read_pcm(recorded)
    louder = encode((samples.astype(np.float32) * 0.5).astype(np.int16), rate, fmt="wav", codec="pcm_s16le")
    assert recognize(client, louder)["cache"]["tier"] == "fuzzy"
    metrics = client.get("/metrics").text
    assert "earmark_fuzzy_accepted_total" in metrics and 'tier="fuzzy"' in metrics


def test_different_sentence_and_prefix_miss_with_reasons(client, recorded):
    recognize(client, recorded)
    wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
    other = recognize(client, fixture_bytes("weather.wav"), "/lookup")["cache"]
    assert other["tier"] == "miss"
    assert all(not c["accepted"] for c in other["candidates"])

    samples, rate = read_pcm(recorded)
    prefix = encode(samples[: int(len(samples) * 0.3)], rate, fmt="wav", codec="pcm_s16le")
    cut = recognize(client, prefix, "/lookup")["cache"]
    assert cut["tier"] == "miss" and all(not c["accepted"] for c in cut["candidates"])

    with_more = encode(np.concatenate([samples, read_pcm(fixture_bytes("weather.wav"))[0]]), rate, fmt="wav", codec="pcm_s16le")
    longer = recognize(client, with_more, "/lookup")["cache"]
    # Never the entry's transcript for the whole file: segment reuse finds the entry as a part of
    # it (tier partial), and the rest would go to the engine.
    assert longer["tier"] == "partial"
    assert any(c["reason"].startswith("duration_mismatch") for c in longer["candidates"])
    [span] = longer["spans"]
    assert span["start_s"] == 0.0 and span["end_s"] < len(samples) / rate + 0.2


def test_very_short_clips_and_silence_are_never_fuzzy_matched(client, recorded):
    samples, rate = read_pcm(recorded)
    clip = samples[int(0.8 * rate): int(1.4 * rate)]
    recognize(client, encode(clip, rate, fmt="wav", codec="pcm_s16le"))
    copy = encode(clip, rate, fmt="mp3", codec="libmp3lame", bitrate=64000)
    assert recognize(client, copy, "/lookup")["cache"]["tier"] == "miss"


def test_a_second_replica_sees_new_entries_and_deletes_through_the_stream(settings, engine, recorded, mp3_copy):
    with TestClient(create_app(settings, engine=engine)) as first, \
         TestClient(create_app(replace(settings, data_dir=settings.data_dir / "second"), engine=engine)) as second:
        wait_for(lambda: second.get("/health").json()["index_ready"])
        entry = recognize(first, recorded)["cache"]["entry"]
        wait_for(lambda: second.get("/health").json()["index_size"] == 1)
        assert recognize(second, mp3_copy, "/lookup")["cache"]["entry"] == entry

        assert first.delete(f"/entries/{entry}").status_code == 200
        wait_for(lambda: second.get("/health").json()["index_size"] == 0)
        for replica in (first, second):
            assert recognize(replica, mp3_copy, "/lookup")["cache"]["tier"] == "miss"
            assert recognize(replica, recorded, "/lookup")["cache"]["tier"] == "miss"


def test_an_expired_entry_is_never_served(settings, engine, recorded, mp3_copy):
    with TestClient(create_app(replace(settings, ttl_s=1), engine=engine)) as client:
        entry = recognize(client, recorded)["cache"]["entry"]
        wait_for(lambda: client.get("/health").json()["index_size"] == 1)
        time.sleep(1.5)
        evidence = recognize(client, mp3_copy, "/lookup")["cache"]
        assert evidence["tier"] == "miss"
        assert [c["reason"].split(":")[0] for c in evidence["candidates"]] in ([], ["gone"])
        assert recognize(client, recorded, "/lookup")["cache"]["tier"] == "miss"
        assert client.get("/health").json()["index_size"] == 0  # pruned when found dead
        assert entry


def test_the_index_is_rebuilt_or_reloaded_after_a_restart(settings, engine, recorded, mp3_copy):
    with TestClient(create_app(settings, engine=engine)) as client:
        entry = recognize(client, recorded)["cache"]["entry"]
        wait_for(lambda: client.get("/health").json()["index_size"] == 1)
    # Same data directory: the snapshot written at shutdown is loaded.
    with TestClient(create_app(settings, engine=engine)) as client:
        wait_for(lambda: client.get("/health").json()["index_ready"])
        assert client.get("/health").json()["index_size"] == 1
        assert recognize(client, mp3_copy, "/lookup")["cache"]["entry"] == entry
    # A fresh replica with no snapshot rebuilds from the store.
    with TestClient(create_app(replace(settings, data_dir=settings.data_dir / "fresh"), engine=engine)) as client:
        wait_for(lambda: client.get("/health").json()["index_size"] == 1)
        assert recognize(client, mp3_copy, "/lookup")["cache"]["entry"] == entry


def test_copy_bytes_seen_again_stay_fuzzy_and_are_rejudged_under_new_thresholds(settings, engine, recorded, mp3_copy):
    with TestClient(create_app(settings, engine=engine)) as client:
        entry = recognize(client, recorded)["cache"]["entry"]
        wait_for(lambda: client.get("/health").json()["index_size"] == 1)
        first = recognize(client, mp3_copy)["cache"]
        again = recognize(client, mp3_copy)["cache"]
        assert (first["tier"], again["tier"]) == ("fuzzy", "fuzzy")  # a judgement, never passed off as exact
        assert again["entry"] == entry and again["score"] == first["score"]
    stricter = replace(settings, fuzzy=replace(settings.fuzzy, min_window_score=0.999))
    with TestClient(create_app(stricter, engine=engine)) as client:
        wait_for(lambda: client.get("/health").json()["index_ready"])
        assert recognize(client, mp3_copy, "/lookup")["cache"]["tier"] == "miss"
        assert recognize(client, recorded, "/lookup")["cache"]["tier"] == "exact"


def test_remembered_verdicts_are_not_reused_across_a_change_of_verification(monkeypatch):
    # Stored features outlive an upgrade that changes how they are compared; a verdict
    # remembered under the old comparison must be judged again, as under new thresholds.
    from earmark.service.pipeline import verification
    from earmark.service.config import FuzzyThresholds

    before = verification.Verifier(FuzzyThresholds()).judged_by
    assert verification.Verifier(FuzzyThresholds()).judged_by == before
    monkeypatch.setattr(verification, "VERIFICATION_REVISION", verification.VERIFICATION_REVISION + 1)
    assert verification.Verifier(FuzzyThresholds()).judged_by != before


def test_a_copy_right_after_its_original_is_found_without_waiting_for_the_stream(client, recorded, mp3_copy):
    # The replica that tails the change stream is stopped: only the write path itself can make
    # the new entry findable by this process.
    services = client.app.state.services
    client.portal.call(services.replica.stop)
    entry = recognize(client, recorded)["cache"]["entry"]
    hit = recognize(client, mp3_copy)["cache"]
    assert (hit["tier"], hit["entry"]) == ("fuzzy", entry)


def test_the_matcher_says_why_it_examined_nothing_and_prunes_entries_gone_from_the_store(settings, recorded):
    """pipeline/fuzzy.py on a real store and index: off, too little speech and an empty index
    are each a note; an entry indexed here at once is found and accepted, and one the index
    still holds but the store no longer does is never accepted and leaves the index."""
    verifier = Verifier(FuzzyThresholds())
    features = verifier.features(decode_audio(recorded, 60.0).pcm_16k)
    profile = Profile("pocketsphinx", "cmusphinx-en-us-5.2", "test", "en", False)
    kept = verifier.attach(Entry(entry_id=make_entry_id(profile.digest, "kept"), profile_id=profile.digest,
                                 pcm_digest="kept", text="kept", normalized_text="kept", language="en",
                                 duration_s=features.speech_s, speech_s=features.speech_s, engine_seconds=0.1), features)
    gone = replace(kept, entry_id=make_entry_id(profile.digest, "gone"), pcm_digest="gone")

    async def run() -> None:
        store, index, metrics = Store(open_client(settings.redis_url), Keys(settings.key_prefix)), VectorIndex(EMBEDDING_DIM, "flat"), Metrics()
        matcher = FuzzyMatcher(verifier, store, index, metrics)
        try:
            off = FuzzyMatcher(Verifier(FuzzyThresholds(enabled=False)), store, index, metrics)
            assert (await off.match(features, profile)).note == "disabled: the fuzzy tier is off"
            short = await matcher.match(replace(features, speech_s=0.5), profile)
            assert short.note == "query_too_short: 0.50 s of speech < 0.6 s" and short.entry is None
            assert metrics.fuzzy_rejected.labels(reason="query_too_short")._value.get() == 1
            assert (await matcher.match(features, profile)).note.startswith("no_candidates")

            await store.put_entry(kept, "kept-bytes", 60, stream_maxlen=100)
            await matcher.index_now(kept)
            await matcher.index_now(gone)  # indexed, never stored: as if expired since
            found = await matcher.match(features, profile)
            assert found.entry is not None and found.entry.entry_id == kept.entry_id and found.score > 0.9
            verdicts = {candidate["entry"]: candidate["accepted"] for candidate in found.candidates}
            assert verdicts == {kept.entry_id: True, gone.entry_id: False}
            assert len(index) == 1 and index.search(profile.digest, features.embedding, 5)[0][0] == kept.entry_id
        finally:
            await store.close()

    asyncio.run(run())
