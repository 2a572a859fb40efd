"""The stored form of an entry (index/evidence.py, index/entry.py): compact, and lossless, so an
entry stored and read back from a real store judges every query exactly as before, and entries
written in the old form keep working."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace

import numpy as np
import pytest
import zstandard

from earmark.fingerprint.decode import decode_audio
from earmark.index.connection import open_client
from earmark.index.entry import DamagedEntry, Entry, _pack_segments
from earmark.index.evidence import StoredEvidence, pack, unpack
from earmark.index.keys import Keys
from earmark.index.store import Store
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.verification import Verifier
from tests.audio_tools import encode, fixture_bytes, read_pcm

PROFILE = "profile-evidence"
SEGMENTS = ({"id": 0, "start": 0.0, "end": 1.5, "text": " Don will call",
             "words": [{"word": " Don", "start": 0.0, "end": 0.4, "probability": 0.91},
                       {"word": " will", "start": 0.4, "end": 0.8}],
             "tokens": [50363, 3166, 481, 869], "seek": 0, "avg_logprob": -0.25},
            {"id": 1, "start": 1.5, "end": 2.9, "text": " you back.", "no_speech_prob": 0.01})


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier(FuzzyThresholds())


@pytest.fixture(scope="module")
def features(verifier):
    """Features of a cached original, an MP3 copy of it, and its minimal pair (one vowel)."""
    original = fixture_bytes("minimal_pairs/name_changed_011_a.flac")
    samples, rate = read_pcm(original)
    uploads = {"original": original, "changed": fixture_bytes("minimal_pairs/name_changed_011_b.flac"),
               "mp3": encode(samples, rate, fmt="mp3", codec="libmp3lame", bitrate=32_000)}
    return {name: verifier.features(decode_audio(data, 3600).pcm_16k) for name, data in uploads.items()}


def _entry(verifier: Verifier, features, normalized_text: str = "don will call you back") -> Entry:
    entry = Entry(entry_id=uuid.uuid4().hex, profile_id=PROFILE, pcm_digest="pcm", text="Don will call you back.",
                  normalized_text=normalized_text, language="en", duration_s=2.9, speech_s=features.speech_s,
                  engine_seconds=1.0, segments=SEGMENTS)
    return verifier.attach(entry, features)


def _verdicts(verifier: Verifier, entry: Entry, entry_features, queries) -> list:
    return [verifier.evaluate(query, PROFILE, float(query.embedding @ entry_features.embedding), entry)
            for query in queries.values()]


def test_packed_evidence_unpacks_to_exactly_the_bytes_packed(verifier, features):
    entry = _entry(verifier, features["original"])
    packed = pack(entry.evidence)
    assert unpack(packed) == entry.evidence
    assert entry.wide and packed[0] == 2
    assert len(packed) < 0.85 * sum(len(part) for part in (entry.fingerprint, entry.fingerprint_levels,
                                                           entry.detail, entry.pitch, entry.wide))
    assert unpack(pack(StoredEvidence(b"", b"", b"", b""))) == StoredEvidence(b"", b"", b"", b"")
    # An entry without a wide spectrum (stored before revision 10) keeps the first format, which
    # earlier versions read.
    earlier = replace(entry.evidence, wide=b"")
    assert pack(earlier)[0] == 1 and unpack(pack(earlier)) == earlier
    damaged = StoredEvidence(b"\x01" * 8, b"\x07", b"\x03" * 17, b"")  # a detail not a whole number of frames
    assert unpack(pack(damaged)) == damaged
    assert unpack(packed[:-3]) is None and unpack(b"\x09" + packed[1:]) is None and unpack(b"") is None


def test_an_entry_stored_and_read_back_judges_every_query_exactly_as_before(store_url, verifier, features):
    """Through a real store: the same entry, bit for bit, and the same verdicts, scores and
    reasons for an MP3 copy, a minimal pair and the original itself."""
    entry = _entry(verifier, features["original"])

    async def body() -> Entry | None:
        store = Store(open_client(store_url), Keys(f"earmark-evidence-{uuid.uuid4().hex[:8]}:"))
        try:
            stored = await store.put_entry(entry, "bytes-digest", 3600, stream_maxlen=100)
            read = await store.get_entry(entry.entry_id)
            assert read == stored
            return read
        finally:
            await store.close()

    read = asyncio.run(body())
    assert read is not None
    expected = _verdicts(verifier, entry, features["original"], features)
    assert _verdicts(verifier, read, features["original"], features) == expected
    assert [judgement.accepted for judgement in expected] == [True, False, True]


def test_each_thing_is_stored_once_and_compactly(verifier, features):
    """The result and its metadata in one compressed record, the verification bytes in one
    compressed value; only what is read on its own stays apart."""
    entry = _entry(verifier, features["original"], normalized_text="Don will call you back.")
    fields = entry.to_fields()
    assert set(fields) == {"profile", "rec", "e16", "fp_version", "gen", "ev"}
    assert len(fields["e16"]) == 2 * len(entry.embedding_vector)  # half precision (issue 25)
    assert len(fields["rec"]) < len(json.dumps(entry.result()))
    assert Entry.from_fields(entry.entry_id, _as_stored(fields)) == entry
    for different in (_entry(verifier, features["original"]), replace(entry, negative=True, text="", segments=())):
        assert Entry.from_fields(different.entry_id, _as_stored(different.to_fields())) == different


def test_entries_list_their_aliases_compactly():
    keys = Keys("earmark:")
    exact, canonical = keys.exact("ab" * 12, "cd" * 32), keys.canonical("ab" * 12, "ef" * 32)
    for key in (exact, canonical, keys.query_print("ab" * 12, "01" * 32)):
        assert len(keys.alias_member(key)) <= 64 and keys.alias_key_of(keys.alias_member(key)) == key
    for other in ("earmark:exact3:profile-1:bytes-1", "earmark:exact3:AB:cd", "elsewhere:canon:ab:cd"):
        assert keys.alias_member(other) == b"\x00" + other.encode()
        assert keys.alias_key_of(keys.alias_member(other)) == other
        assert keys.alias_key_of(other.encode()) == other  # as alias sets before issue 25 listed it
    for key in (exact, "earmark:exact3:profile-1:bytes-1"):
        assert keys.is_alias_member(keys.alias_member(key))
    assert not any(keys.is_alias_member(name.encode()) for name in ("profile", "rec", "e16", "emb", "gen", "ev"))


def test_entries_written_in_the_old_form_read_and_judge_as_before(verifier, features, store_url, redis_client):
    """An entry written before issue 25 (the four verification fields, plain segments, the
    normalised text always, no wide spectrum) is read into the same entry, and judged the same."""
    entry = replace(_entry(verifier, features["original"]), wide=b"")
    old_form = {"profile": entry.profile_id, "pcm": entry.pcm_digest, "text": entry.text,
                "normalized_text": entry.normalized_text, "language": entry.language,
                "duration_s": repr(entry.duration_s), "speech_s": repr(entry.speech_s),
                "engine_seconds": repr(entry.engine_seconds), "negative": "0", "created_at": repr(entry.created_at),
                "expires_at_ms": "0", "engine": "", "seg": _pack_segments(entry.segments), "fp": entry.fingerprint,
                "fpl": entry.fingerprint_levels, "emb": entry.embedding, "fp_version": entry.fingerprint_version,
                "fd": entry.detail, "f0": entry.pitch, "gen": ""}
    keys = Keys(f"earmark-evidence-{uuid.uuid4().hex[:8]}:")
    redis_client.hset(keys.entry(entry.entry_id), mapping=old_form)

    async def body() -> Entry | None:
        store = Store(open_client(store_url), keys)
        try:
            return await store.get_entry(entry.entry_id)
        finally:
            await store.close()

    read = asyncio.run(body())
    assert read == entry
    assert _verdicts(verifier, read, features["original"], features) == _verdicts(
        verifier, entry, features["original"], features)


def test_damaged_evidence_is_never_fuzzy_matched(verifier, features):
    entry = _entry(verifier, features["original"])
    fields = _as_stored(entry.to_fields())
    fields[b"ev"] = fields[b"ev"][:-5]
    damaged = Entry.from_fields(entry.entry_id, fields)
    assert damaged.text == entry.text and not damaged.fingerprint
    fields[b"rec"] = fields[b"rec"][:-2]
    with pytest.raises(DamagedEntry):
        Entry.from_fields(entry.entry_id, fields)
    query = features["original"]
    for segments in ([["not", "a segment"]], [{"w": [[" Don", 0.0]]}], 7):  # the record reads, its segments do not
        fields = _as_stored(replace(entry).to_fields())
        record = json.loads(zstandard.ZstdDecompressor().decompress(fields[b"rec"]))
        fields[b"rec"] = zstandard.ZstdCompressor().compress(json.dumps({**record, "seg": segments}).encode())
        read = Entry.from_fields(entry.entry_id, fields)
        assert read.text == entry.text and read.segments == ()
    accepted, _, reason = verifier.judge(query, PROFILE, float(np.dot(query.embedding, query.embedding)), damaged)
    assert not accepted and reason.startswith("fingerprint_version")


def _as_stored(fields: dict[str, bytes | str]) -> dict[bytes, bytes]:
    """HGETALL's view of `fields`: bytes keys and values."""
    return {name.encode(): value if isinstance(value, bytes) else value.encode() for name, value in fields.items()}
