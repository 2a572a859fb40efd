"""service/pipeline/recognition.py (`RecognitionCache`) on real stores with the real PocketSphinx engine:
tiers are walked in order and an answer names only an entry that exists; `lookup` writes
nothing on any tier; a store lost while the engine runs turns the answer (and its in-process
followers') into `bypass` with no entry; followers share one engine run; a miss the store says
another process is running is waited for, and taken over when that process died; a request
computes only the perceptual features it uses (none on an exact or canonical hit, the detail and
pitch only when a candidate reaches their checks, a miss's while its engine runs).

The engine is PocketSphinx behind a gate the test opens (tests/gated_engine.py): the transcript
is real, only its moment is chosen, so that "while the engine runs" is a certainty, not a race.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

import pytest
import redis

from earmark.fingerprint.canonical import bytes_digest
from earmark.fingerprint.detail import PHASES, DetailSpectrum
from earmark.fingerprint.embedding import EMBEDDING_DIM
from earmark.fingerprint.pitch import PitchContour
from earmark.fingerprint.spectrum import BandEnergies
from earmark.index.connection import open_client
from earmark.index.embedded import EmbeddedServer
from earmark.index.entry import Entry, make_entry_id
from earmark.index.keys import Keys
from earmark.index.store import Store
from earmark.index.vectors import VectorIndex
from earmark.service.config import FuzzyThresholds, Settings
from earmark.service.engines.pool import EnginePool
from earmark.service.engines.base import Engine, RecognitionOptions
from earmark.service.metrics import Metrics
from earmark.service.pipeline.cache_directives import CacheControl
from earmark.service.pipeline.fuzzy import FuzzyMatcher
from earmark.service.pipeline.recognition import RecognitionCache, _pcm_digest_of
from earmark.service.pipeline.query import QueryAudio
from earmark.service.pipeline.upload import Upload
from earmark.service.pipeline.verification import Verifier
from tests.audio_tools import encode, fixture_bytes, read_pcm, silence_wav
from tests.gated_engine import WAIT_S, GatedEngine

@pytest.fixture(scope="module")
def audio() -> dict[str, bytes]:
    recorded = fixture_bytes("recorded.wav")
    samples, rate = read_pcm(recorded)
    return {"wav": recorded, "flac": encode(samples, rate, fmt="flac", codec="flac"),
            "silence": silence_wav(2.0), "weather": fixture_bytes("weather.wav")}


class _Cache:
    """A RecognitionCache with its own store client, engine pool and metrics."""

    def __init__(self, settings: Settings, engine: Engine, *, fuzzy: bool = False) -> None:
        self.metrics = Metrics()
        self.store = Store(open_client(settings.redis_url), Keys(settings.key_prefix))
        self.pool = EnginePool(engine, self.metrics, workers=1, max_waiting=16, timeout_s=settings.engine_timeout_s)
        matcher = (FuzzyMatcher(Verifier(FuzzyThresholds()), self.store, VectorIndex(EMBEDDING_DIM, "flat"), self.metrics)
                   if fuzzy else None)
        self.cache = RecognitionCache(settings, self.store, self.pool, self.metrics, fuzzy=matcher)
        self.profile = engine.resolve(RecognitionOptions())

    @property
    def engine_runs(self) -> float:
        return self.metrics.engine_runs._value.get()

    def waits(self, scope: str) -> float:
        return self.metrics.single_flight_waits.labels(scope=scope)._value.get()

    def features(self, feature: str, use: str) -> float:
        return self.metrics.query_features.labels(feature=feature, use=use)._value.get()

    async def recognize(self, data: bytes, control: CacheControl | None = None):
        if control is None:
            return await self.cache.recognize(data, self.profile)
        return await self.cache.recognize(data, self.profile, control=control)

    async def lookup(self, data: bytes):
        return await self.cache.lookup(data, self.profile)

    async def close(self) -> None:
        self.pool.close()
        await self.store.close()


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s"
        await asyncio.sleep(0.02)


def _with_cache(settings: Settings, engine: Engine, body, *, fuzzy: bool = False) -> None:
    async def run() -> None:
        cache = _Cache(settings, engine, fuzzy=fuzzy)
        try:
            await body(cache)
        finally:
            await cache.close()

    asyncio.run(run())


def test_tiers_are_walked_in_order_and_a_dead_alias_falls_through(settings, engine, audio):
    """The bytes' own alias (exact) wins over the audio's (canonical) even when they name
    different entries; once an entry is deleted the next tier answers, and with nothing left
    the answer is a miss naming no entry."""

    async def body(c: _Cache) -> None:
        weather = (await c.recognize(audio["weather"])).entry
        recorded = (await c.recognize(audio["wav"])).entry
        assert weather is not None and recorded is not None and weather.entry_id != recorded.entry_id
        flac_digest = Upload.from_bytes(audio["flac"]).digest
        assert await c.store.add_alias(weather, flac_digest) == "added"  # these bytes now say "weather"

        first = await c.lookup(audio["flac"])
        assert (first.tier, first.entry.entry_id) == ("exact", weather.entry_id)
        assert await c.store.delete_entry(weather.entry_id, stream_maxlen=100)
        second = await c.lookup(audio["flac"])
        assert (second.tier, second.entry.entry_id) == ("canonical", recorded.entry_id)
        assert await c.store.delete_entry(recorded.entry_id, stream_maxlen=100)
        for data in (audio["flac"], audio["wav"], audio["weather"]):
            gone = await c.lookup(data)
            assert (gone.tier, gone.entry, gone.result) == ("miss", None, None)

        again = await c.recognize(audio["flac"])
        assert again.tier == "miss" and again.entry.entry_id == recorded.entry_id
        assert again.entry.generation != recorded.generation
        assert (await c.store.get_entry(again.entry.entry_id)).generation == again.entry.generation
        assert c.engine_runs == 3

    _with_cache(settings, GatedEngine(engine), body)


def test_lookup_writes_nothing_on_any_tier(settings, engine, audio, redis_client):
    """Canonical, exact, negative and miss lookups (one while another process holds the miss's
    lock) leave every key as it was and run nothing; the same canonical upload through
    `recognize` then writes its bytes' alias, the one key a hit adds."""

    async def body(c: _Cache) -> None:
        await c.recognize(audio["wav"])
        await c.recognize(audio["silence"])
        weather_pcm = _pcm_digest_of(Upload.from_bytes(audio["weather"]), c.cache.settings.max_duration_s)
        redis_client.set(c.store.keys.lock(c.profile.digest, weather_pcm), "another-process", px=60_000)
        before = _keyspace(redis_client, settings.key_prefix)
        runs = c.engine_runs
        tiers = [(await c.lookup(audio[name])).tier for name in ("flac", "wav", "silence", "weather")]
        assert tiers == ["canonical", "exact", "negative", "miss"]
        assert _keyspace(redis_client, settings.key_prefix) == before and c.engine_runs == runs
        assert c.waits("store") == 0 and c.waits("process") == 0  # lookup never waits for a lock

        assert (await c.recognize(audio["flac"])).tier == "canonical"
        added = set(_keyspace(redis_client, settings.key_prefix)) - set(before)
        assert added == {c.store.keys.exact(c.profile.digest, Upload.from_bytes(audio["flac"]).digest).encode()}

    _with_cache(settings, GatedEngine(engine), body)


def test_followers_share_the_leaders_engine_run_and_alias_their_own_bytes(settings, engine, audio):
    """Three requests for the same audio at once (the WAV twice, a FLAC of it once): one engine
    run; the leader's miss, the identical bytes `exact`, the FLAC `canonical`, one entry; and
    the FLAC's bytes are remembered (next time `exact`)."""
    gated = GatedEngine(engine, open_now=False)

    async def body(c: _Cache) -> None:
        leader = asyncio.create_task(c.recognize(audio["wav"]))
        await _until(gated.started.is_set, "the leader reaching the engine")
        followers = [asyncio.create_task(c.recognize(audio[name])) for name in ("wav", "flac")]
        await _until(lambda: c.waits("process") == 2, "both followers waiting on the leader")
        gated.gate.set()
        outcomes = [await leader] + [await f for f in followers]
        assert [o.tier for o in outcomes] == ["miss", "exact", "canonical"]
        assert len({o.entry.entry_id for o in outcomes}) == 1 and len({o.result["text"] for o in outcomes}) == 1
        assert c.engine_runs == 1
        assert (await c.lookup(audio["flac"])).tier == "exact"

    _with_cache(settings, gated, body)


def test_a_store_lost_while_the_engine_runs_answers_bypass_naming_no_entry(tmp_path, engine, audio):
    """The store dies while the leader's engine runs, with a follower waiting: both are
    answered with the transcript, tier `bypass`, no entry (none was written); the engine ran
    once. After the store returns the same audio is a miss that is written at once: the lock
    the leader could not release is released by this process, not waited out."""
    server = EmbeddedServer(tmp_path / "store")
    server.start()
    settings = Settings(redis_url=server.url, key_prefix=f"earmark-pipeline-{uuid.uuid4().hex[:6]}:",
                        data_dir=tmp_path / "data")
    gated = GatedEngine(engine, open_now=False)

    async def body(c: _Cache) -> None:
        leader = asyncio.create_task(c.recognize(audio["wav"]))
        await _until(gated.started.is_set, "the leader reaching the engine")
        follower = asyncio.create_task(c.recognize(audio["flac"]))
        await _until(lambda: c.waits("process") == 1, "the follower waiting on the leader")
        server.kill()
        gated.gate.set()
        for outcome in (await leader, await follower):
            assert (outcome.tier, outcome.entry) == ("bypass", None)
            assert outcome.result["text"]
        assert c.engine_runs == 1 and not c.store.up
        server.start()
        await _until(lambda: c.store.up, "the store coming back")
        written = await c.recognize(audio["wav"])
        assert written.tier == "miss" and await c.store.get_entry(written.entry.entry_id) is not None
        assert c.waits("store") == 0

    try:
        _with_cache(settings, gated, body)
    finally:
        server.stop()


@pytest.mark.parametrize("holder", ["finishes", "died"])
def test_a_miss_another_process_is_running_is_waited_for(settings, engine, audio, redis_client, holder):
    """The store says another process holds this audio's lock. If that process writes its
    entry, the waiting request serves it (`canonical`) and runs nothing; if it died (its lock
    expires with no entry), the waiting request runs the engine itself."""

    async def body(c: _Cache) -> None:
        pcm = _pcm_digest_of(Upload.from_bytes(audio["wav"]), c.cache.settings.max_duration_s)
        lock = c.store.keys.lock(c.profile.digest, pcm)
        redis_client.set(lock, "another-process", px=60_000 if holder == "finishes" else 1_500)
        waiting = asyncio.create_task(c.recognize(audio["wav"]))
        await _until(lambda: c.waits("store") >= 1, "the request waiting on the other process")
        if holder == "finishes":
            theirs = Entry(entry_id=make_entry_id(c.profile.digest, pcm), profile_id=c.profile.digest, pcm_digest=pcm,
                           text="written by the other process", normalized_text="written by the other process",
                           language="en", duration_s=2.0, speech_s=1.8, engine_seconds=1.0, engine=c.profile.engine)
            written = await c.store.put_entry(theirs, "their-upload-bytes", 3600, stream_maxlen=100)
            redis_client.delete(lock)
            outcome = await waiting
            assert (outcome.tier, outcome.entry.generation) == ("canonical", written.generation)
            assert outcome.result["text"] == "written by the other process" and c.engine_runs == 0
        else:
            outcome = await waiting
            assert outcome.tier == "miss" and c.engine_runs == 1
            assert (await c.store.get_entry(outcome.entry.entry_id)).text == outcome.result["text"]

    _with_cache(replace(settings, lock_ttl_ms=30_000), GatedEngine(engine), body)


def _keyspace(client: redis.Redis, prefix: str) -> dict[bytes, bytes | None]:
    """Every key under the prefix with its serialised value (DUMP): any write shows."""
    return {key: client.dump(key) for key in client.scan_iter(match=f"{prefix}*", count=1000)}


def test_a_query_carries_the_uploads_bytes_and_digest_and_learns_nothing_until_decoded(audio):
    """pipeline/query.py and pipeline/upload.py: the query's digest is the bytes' own (the exact
    tier's key), its file is the bytes from the start on every open, whether kept in memory or
    spooled to a temporary file (past 2 MiB); nothing is known of the audio before the tier walk
    decodes it."""
    large = audio["wav"] * 13  # past the in-memory spool
    for data in (audio["flac"], large):
        query = QueryAudio(Upload.from_bytes(data))
        assert (query.digest, query.size) == (bytes_digest(data), len(data))
        assert query.open().read() == data and query.open().read() == data
        assert (query.audio_seconds, query.pcm) == (None, None)
        query.upload.close()


@pytest.fixture
def feature_passes(monkeypatch) -> dict[str, int]:
    """How many times each perceptual feature was computed, counted in the real stream classes
    (every computation, streamed or whole, ends in one `finish`; the query's finer detail phases
    in one each)."""
    counts = {"hash": 0, "detail": 0, "pitch": 0, "detail_phases": 0}
    for name, stream in (("hash", BandEnergies), ("detail", DetailSpectrum), ("pitch", PitchContour)):
        def counted(self, _finish=stream.finish, _name=name):
            counts["detail_phases" if getattr(self, "phase", 0) else _name] += 1
            return _finish(self)
        monkeypatch.setattr(stream, "finish", counted)
    return counts


def test_a_request_computes_only_the_features_it_uses(settings, engine, audio, feature_passes):
    """A miss computes every feature once; an exact or a canonical hit none; a lookup whose
    candidates are all refused at the hashes computes the hash and never the pitch; a fuzzy hit
    computes the detail and pitch once, shared by every candidate that reaches their checks, and
    the query's detail at its finer phases once (one pass per phase), never for an entry."""
    samples, rate = read_pcm(audio["wav"])
    mp3 = encode(samples, rate, fmt="mp3", codec="libmp3lame", bitrate=48000)
    quieter = encode((samples * 0.5).astype(samples.dtype), rate, fmt="wav", codec="pcm_s16le")

    def passes() -> dict[str, int]:
        counted = dict(feature_passes)
        for name in counted:
            feature_passes[name] = 0
        return counted

    async def body(c: _Cache) -> None:
        assert (await c.recognize(audio["wav"])).tier == "miss"
        assert passes() == {"hash": 1, "detail": 1, "pitch": 1, "detail_phases": 0}
        assert (c.features("hash", "lookup"), c.features("detail", "entry"), c.features("pitch", "entry")) == (1, 1, 1)

        assert (await c.recognize(audio["wav"])).tier == "exact"
        assert (await c.recognize(audio["flac"])).tier == "canonical"
        assert passes() == {"hash": 0, "detail": 0, "pitch": 0, "detail_phases": 0}

        other = await c.lookup(audio["weather"])
        assert other.tier == "miss" and other.candidates
        assert all(not candidate["accepted"] for candidate in other.candidates)
        assert passes() == {"hash": 1, "detail": 0, "pitch": 0, "detail_phases": 0}, other.candidates
        # (the finer phases were skipped by the first miss too: an entry never computes them)
        assert (c.features("detail", "skipped"), c.features("pitch", "skipped"), c.features("detail_phases", "skipped")) == (1, 1, 2)

        # A second entry of the same speech (an engine run asked for), so that two candidates
        # reach the detail and pitch checks.
        assert (await c.recognize(quieter, CacheControl(no_cache=True))).tier == "miss"
        passes()
        hit = await c.recognize(mp3)
        assert hit.tier == "fuzzy" and sum("detail" in candidate["reason"] for candidate in hit.candidates) == 2
        assert passes() == {"hash": 1, "detail": 1, "pitch": 1, "detail_phases": len(PHASES)}
        assert (c.features("detail", "lookup"), c.features("pitch", "lookup"), c.features("detail_phases", "lookup")) == (1, 1, 1)

    _with_cache(settings, GatedEngine(engine), body, fuzzy=True)


class _FailingEngine(GatedEngine):
    """The real engine's gate, then a failure instead of a transcript."""

    def transcribe(self, pcm_16k, profile):
        """Wait for the gate, then fail."""
        self.started.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        raise RuntimeError("the engine failed")


def test_a_miss_computes_its_entrys_features_while_the_engine_runs_and_writes_nothing_if_it_fails(
        settings, engine, audio, redis_client, feature_passes):
    """The detail spectrum and pitch contour a new entry stores are computed while the engine
    still runs; when the engine then fails, nothing is written."""
    failing = _FailingEngine(engine, open_now=False)

    async def body(c: _Cache) -> None:
        before = _keyspace(redis_client, settings.key_prefix)
        request = asyncio.create_task(c.recognize(audio["wav"]))
        await _until(lambda: c.features("pitch", "entry") == 1 and c.features("detail", "entry") == 1,
                     "the entry's features computed beside the engine")
        assert failing.started.is_set() and not request.done()  # the engine has not answered
        failing.gate.set()
        with pytest.raises(RuntimeError, match="the engine failed"):
            await request
        assert _keyspace(redis_client, settings.key_prefix) == before
        assert feature_passes == {"hash": 1, "detail": 1, "pitch": 1, "detail_phases": 0}

    _with_cache(settings, failing, body, fuzzy=True)
