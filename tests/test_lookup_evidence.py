"""/lookup shows the fuzzy tier's candidates for every query, also for bytes or audio seen
before (answered by the exact or canonical tier), so tuning and audits see their scores."""

from __future__ import annotations

from tests.audio_tools import encode, fixture_bytes, read_pcm, silence_wav
from tests.http_helpers import recognize
from tests.waiting import wait_for


def test_seen_bytes_and_audio_carry_candidates(client):
    recorded = fixture_bytes("recorded.wav")
    entry = recognize(client, recorded)["cache"]["entry"]
    wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
    flac = encode(*read_pcm(recorded), fmt="flac", codec="flac")

    for data, tier in ((recorded, "exact"), (flac, "canonical")):
        evidence = recognize(client, data, "/lookup")["cache"]
        assert (evidence["tier"], evidence["entry"], evidence["score"]) == (tier, entry, None)
        mine = next(c for c in evidence["candidates"] if c["entry"] == entry)
        # the same audio: verified as a copy of itself, with a near-perfect score
        assert mine["accepted"] and mine["reason"].startswith("accepted") and mine["score"] > 0.9

    # recognize does not pay for the evidence: its answer carries no candidates field at all
    assert "candidates" not in recognize(client, recorded)["cache"]


def test_a_seen_negative_entry_has_no_candidates(client):
    silence = silence_wav(2.0)
    recognize(client, silence)
    evidence = recognize(client, silence, "/lookup")["cache"]
    assert evidence["tier"] == "negative" and evidence["candidates"] == []
