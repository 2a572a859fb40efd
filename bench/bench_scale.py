#!/usr/bin/env python3
"""Fuzzy tier speed and scale benchmark (issue 4): ratios measured side by side in one run.

    .venv/bin/python bench/bench_scale.py            # full run: 1M-entry index (~12 min on 2 cores,
                                                     # most of it building HNSW; longer under load)
    .venv/bin/python bench/bench_scale.py --quick    # smoke run: 30k-entry "large" index (~30 s)
    .venv/bin/python bench/bench_scale.py --service-only   # parts 1-2 only, 3 clips x 100 lookups

What it measures (each a ratio of two things measured in this run, on this machine):

1. fingerprint + embedding (`Verifier.features`: band energies, robust hash, embedding,
   speech extent) from 16 kHz PCM, one thread, against the audio's duration, for ~10 s and
   ~60 s espeak-ng speech clips. Target: >= 300x faster than real time.
2. a full fuzzy lookup through a running `earmark serve` (POST /lookup of an MP3 copy: exact
   miss, decode, canonical miss, features, FAISS search, store read, verify) against the
   engine miss of the same clip (POST /recognize of the WAV; the default engine, Whisper tiny.en
   since issue 10, PocketSphinx before). Target: <= 2%.
3. a large index against a small one, in this process, with synthetic unit vectors (d=64) as
   filler: (a) `VectorIndex.search` alone, flat at 10k against HNSW at 1M (what "auto" picks),
   target <= 3x; (b) `FuzzyMatcher.match` against a real store holding the real entry, target
   <= 1.2x. The match path is measured two ways: with the query's nearest filler present in
   the store as real-looking entries (the steady state of a real cache: neighbours exist and
   are rejected), and with the filler absent (each such candidate is read, found "gone" and
   pruned from the index, as the service does with expired entries). Also: flat at 1M, the
   cost of removing one entry, and HNSW search time as tombstones pile up.
4. start-up with 1M entries: `VectorIndex.save`, then a fresh `IndexReplica` that loads the
   snapshot and replays the change stream written after it (target: answers within 30 s); and
   the rebuild-from-Redis path for 100k real-looking entries, extrapolated to 1M.
5. bytes per entry: Redis (MEMORY USAGE of an entry hash and its alias keys, for a 10 s and a
   60 s clip) and FAISS (snapshot bytes / entries, flat and HNSW), and per second of audio.

The embedded store used by parts 3-5 runs with persistence switched off (no AOF, no RDB), so
background saves of the bulk writes do not disturb the timings. The HNSW index of the filler
is built with 2 FAISS threads (the service itself pins FAISS to 1 thread). Writes a table to
stdout and everything to bench/out/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import faulthandler
import gc
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import (EARMARK, OUT_DIR, ROOT, VOICE, Server, interrupt_on_sigterm, loadavg, machine_info,
                     multipart_body, multipart_headers, require_tools, run_quiet, shuffled_words, speak,
                     stage_means_ms, stage_totals)
from harness import summary as timing_summary

sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from earmark.fingerprint.canonical import bytes_digest, pcm_digest  # noqa: E402
from earmark.fingerprint.config import DEFAULT as FP_CONFIG  # noqa: E402
from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.fingerprint.embedding import EMBEDDING_DIM, at_stored_precision  # noqa: E402
from earmark.index.connection import open_client  # noqa: E402
from earmark.index.embedded import EmbeddedServer  # noqa: E402
from earmark.index.entry import Entry, make_entry_id  # noqa: E402
from earmark.index.keys import Keys, base64  # noqa: E402
from earmark.index.replica import IndexReplica  # noqa: E402
from earmark.index.store import Store  # noqa: E402
from earmark.index.vectors import AUTO_HNSW_FROM, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, VectorIndex  # noqa: E402
from earmark.service.config import FuzzyThresholds, Settings  # noqa: E402
from earmark.service.pipeline.fuzzy import FuzzyMatcher  # noqa: E402
from earmark.service.pipeline.verification import Verifier  # noqa: E402
from earmark.service.metrics import Metrics  # noqa: E402
from earmark.service.pipeline.profile import Profile  # noqa: E402

PROFILE = Profile(engine="pocketsphinx", model="en-us", revision="bench", language="en", use_itn=False)
PROFILE_ID = PROFILE.digest  # computed once: the property hashes the profile's JSON each time
TOP_K = FuzzyThresholds().top_k
# Fingerprint bytes per frame besides the 1-byte level (4 in ehash-v1, 8 in ehash-v2 with its
# strong-bit masks); set from a real entry at run time so synthetic entries match the format.
FP_BYTES_PER_FRAME = [4]
DAY_MS = 24 * 3600 * 1000
SYNTHETIC_FRAMES = round(10.0 * FP_CONFIG.frames_per_second)  # synthetic entries look like 10 s clips

TARGETS = {
    "features_x_realtime_min": 300.0,
    "lookup_over_miss_max": 0.02,
    "search_large_over_small_max": 3.0,
    "match_large_over_small_max": 1.2,
    "replica_ready_s_max": 30.0,
}


# ------------------------------------------------------------------------------------------
# Small helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {message}", flush=True)


def summary(seconds: list[float]) -> dict:
    return timing_summary(seconds, digits=4, percentiles=(10, 90))


def ratio(a: float, b: float, digits: int = 3) -> float:
    return round(a / b, digits) if b else float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (every thread; not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------
# Audio


def mp3_copy(source: Path, path: Path) -> None:
    run_quiet("ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), "-c:a", "libmp3lame", "-b:a", "64k", str(path))


def prepare_audio(work: Path, miss_clips: int) -> dict:
    audio = work / "audio"
    audio.mkdir()
    clips = {}
    for name, target, seed in (("clip10", 10, 1), ("clip60", 60, 2), ("other10", 10, 3), ("warmup", 2, 4)):
        path = audio / f"{name}.wav"
        clips[name] = {"wav": path, "duration_s": speak(target, path, shuffled_words(seed), attempts=5)}
    for k in range(miss_clips):
        path = audio / f"miss10_{k}.wav"
        clips[f"miss10_{k}"] = {"wav": path, "duration_s": speak(10, path, shuffled_words(100 + k), attempts=5)}
    for name, clip in clips.items():
        if name != "warmup":
            clip["mp3"] = clip["wav"].with_suffix(".mp3")
            mp3_copy(clip["wav"], clip["mp3"])
    return clips


# ------------------------------------------------------------------------------------------
# Part 1: features against real time


def part_features(clips: dict, verifier: Verifier, quick: bool) -> dict:
    results = {}
    with threadpool_limits(1):
        for name, repeats in (("clip10", 10 if quick else 40), ("clip60", 4 if quick else 12)):
            pcm = decode_audio(clips[name]["wav"].read_bytes(), 1e9).pcm_16k
            duration = len(pcm) / FP_CONFIG.sample_rate
            verifier.features(pcm)  # warm caches (band matrix, window, FFT plan)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                verifier.features(pcm)
                times.append(time.perf_counter() - started)
            mp3 = clips[name]["mp3"].read_bytes()
            decode_times = []
            for _ in range(max(3, repeats // 4)):
                started = time.perf_counter()
                decode_audio(mp3, 1e9)
                decode_times.append(time.perf_counter() - started)
            row = summary(times)
            row.update(audio_s=round(duration, 3), x_realtime=round(duration / (row["median_ms"] / 1000.0), 1),
                       x_realtime_p90=round(duration / (row["p90_ms"] / 1000.0), 1),
                       mp3_decode=summary(decode_times))
            row["mp3_decode"]["x_realtime"] = round(duration / (row["mp3_decode"]["median_ms"] / 1000.0), 1)
            results["10s" if name == "clip10" else "60s"] = row
            log(f"  features {name} ({duration:.1f} s): median {row['median_ms']:.1f} ms = {row['x_realtime']:.0f}x real time; "
                f"MP3 decode {row['mp3_decode']['median_ms']:.1f} ms")
    return {"clips": results, "threads": 1}


# ------------------------------------------------------------------------------------------
# Part 2: /lookup against a miss, through a running service


BOUNDARY = "earmark-scale-7d1e"
HEADERS = multipart_headers(BOUNDARY)


def body(path: Path) -> bytes:
    return multipart_body(path.read_bytes(), path.name, BOUNDARY)


def post(client: httpx.Client, route: str, payload: bytes) -> tuple[float, dict]:
    started = time.perf_counter()
    response = client.post(route, content=payload, headers=HEADERS)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"POST {route}: HTTP {response.status_code}: {response.text[:300]}")
    return elapsed, response.json()


def mean_ms_by_stage(before: dict, after: dict) -> dict:
    """Mean milliseconds per stage between two `stage_totals` readings (without the counts)."""
    return {stage: row["mean_ms"] for stage, row in stage_means_ms(before, after).items()}


def part_service(work: Path, clips: dict, miss_clips: int, lookups: int) -> dict:
    server = Server(work / "service-data", work / "server.log")
    client = httpx.Client(base_url=server.url, timeout=600.0)
    unexpected: list[str] = []
    per_clip = []
    try:
        server.wait_healthy(client, timeout_s=90.0)
        started = time.perf_counter()
        post(client, "/recognize", body(clips["warmup"]["wav"]))
        log(f"  warm-up miss (engine worker start): {time.perf_counter() - started:.2f} s")
        lookup_stages: dict[str, list[float]] = {}
        miss_stages: dict[str, list[float]] = {}
        for k in range(miss_clips):
            clip = clips[f"miss10_{k}"]
            # Issue 25: a fuzzy lookup of new speech (the MP3 before its WAV is cached: every
            # candidate, the earlier clips' entries, refused), what most lookups of a cache are.
            payload = body(clip["mp3"])
            for _ in range(5):  # warm-up lookups
                post(client, "/lookup", payload)
            new_times, new_server_ms = [], []
            # The server's own CPU per request: what a busy shared machine does not inflate
            # (the engine runs in worker processes, not counted).
            cpu_before = cpu_s(server.process.pid)
            for _ in range(lookups):
                elapsed, answer = post(client, "/lookup", payload)
                if answer["cache"]["tier"] != "miss":
                    unexpected.append(f"lookup of new mp3 miss10_{k}: tier {answer['cache']['tier']}")
                new_times.append(elapsed)
                new_server_ms.append(answer["cache"]["elapsed_ms"])
            new_cpu_ms = (cpu_s(server.process.pid) - cpu_before) * 1000.0 / lookups
            before = stage_totals(client)
            cpu_before = cpu_s(server.process.pid)
            miss_s, answer = post(client, "/recognize", body(clip["wav"]))
            miss_cpu_ms = (cpu_s(server.process.pid) - cpu_before) * 1000.0
            for stage, value in mean_ms_by_stage(before, stage_totals(client)).items():
                miss_stages.setdefault(stage, []).append(value)
            if answer["cache"]["tier"] != "miss":
                unexpected.append(f"recognize miss10_{k}: tier {answer['cache']['tier']}")
            entry_id = answer["cache"]["entry"]
            info = client.get(f"/entries/{entry_id}")
            engine_s = info.json()["entry"]["engine_seconds"] if info.status_code == 200 else None
            payload = body(clip["mp3"])
            for _ in range(5):  # warm-up lookups
                post(client, "/lookup", payload)
            times, server_ms, scores = [], [], []
            before = stage_totals(client)
            cpu_before = cpu_s(server.process.pid)
            for _ in range(lookups):
                elapsed, answer = post(client, "/lookup", payload)
                cache = answer["cache"]
                if cache["tier"] != "fuzzy" or cache["entry"] != entry_id:
                    unexpected.append(f"lookup mp3 of miss10_{k}: tier {cache['tier']}, entry {cache['entry']}")
                times.append(elapsed)
                server_ms.append(cache["elapsed_ms"])
                scores.append(cache["score"])
            lookup_cpu_ms = (cpu_s(server.process.pid) - cpu_before) * 1000.0 / lookups
            stages = mean_ms_by_stage(before, stage_totals(client))
            for stage, value in stages.items():
                lookup_stages.setdefault(stage, []).append(value)
            row = summary(times)
            row["lookup_stage_means_ms"] = stages
            row.update(audio_s=round(clip["duration_s"], 3), mp3_bytes=clip["mp3"].stat().st_size,
                       miss_s=round(miss_s, 3), engine_s=None if engine_s is None else round(engine_s, 3),
                       server_elapsed_median_ms=round(float(np.median(server_ms)), 3),
                       score_median=None if None in scores else round(float(np.median(scores)), 4),
                       lookup_over_miss=ratio(row["median_ms"] / 1000.0, miss_s, 5),
                       new_lookup_median_ms=round(float(np.median(new_times)) * 1000.0, 3),
                       new_lookup_server_median_ms=round(float(np.median(new_server_ms)), 3),
                       new_lookup_over_miss=ratio(float(np.median(new_times)), miss_s, 5),
                       miss_over_engine=None if not engine_s else ratio(miss_s, engine_s, 4),
                       lookup_server_cpu_ms=round(lookup_cpu_ms, 2), new_lookup_server_cpu_ms=round(new_cpu_ms, 2),
                       miss_server_cpu_ms=round(miss_cpu_ms, 1))
            per_clip.append(row)
            log(f"  clip {k} ({clip['duration_s']:.1f} s): miss {miss_s:.2f} s (engine {engine_s}), "
                f"lookup of MP3 copy median {row['median_ms']:.1f} ms (server {row['server_elapsed_median_ms']:.1f} ms) "
                f"= {row['lookup_over_miss'] * 100:.2f}% of the miss; lookup stages {stages}; "
                f"lookup of the new MP3 (a miss) median {row['new_lookup_median_ms']:.1f} ms "
                f"= {row['new_lookup_over_miss'] * 100:.2f}% of the miss; miss / engine {row['miss_over_engine']}; "
                f"server CPU per lookup: copy {lookup_cpu_ms:.1f} ms, new speech {new_cpu_ms:.1f} ms; "
                f"server CPU during the miss {miss_cpu_ms:.0f} ms")
    finally:
        server.stop(grace_s=20.0)
        client.close()
    return {
        "per_clip": per_clip,
        "lookup_median_ms": round(float(np.median([r["median_ms"] for r in per_clip])), 3),
        "miss_median_s": round(float(np.median([r["miss_s"] for r in per_clip])), 3),
        "lookup_over_miss_median": round(float(np.median([r["lookup_over_miss"] for r in per_clip])), 5),
        "lookup_over_miss_worst": round(float(max(r["lookup_over_miss"] for r in per_clip)), 5),
        "lookup_server_cpu_ms_median": round(float(np.median([r["lookup_server_cpu_ms"] for r in per_clip])), 2),
        "new_lookup_server_cpu_ms_median": round(float(np.median([r["new_lookup_server_cpu_ms"] for r in per_clip])), 2),
        "miss_server_cpu_ms_median": round(float(np.median([r["miss_server_cpu_ms"] for r in per_clip])), 1),
        "new_lookup_over_miss_median": round(float(np.median([r["new_lookup_over_miss"] for r in per_clip])), 5),
        "miss_over_engine_median": (round(float(np.median([r["miss_over_engine"] for r in per_clip])), 4)
                                    if all(r["miss_over_engine"] for r in per_clip) else None),
        "lookup_stage_means_ms": {k: round(float(np.median(v)), 3) for k, v in lookup_stages.items()},
        "miss_stage_means_ms": {k: round(float(np.median(v)), 3) for k, v in miss_stages.items()},
        "note": "client wall time over HTTP on loopback (multipart body pre-encoded); one MP3 (64 kbps) copy per clip; "
                "stage means from /metrics (earmark_lookup_seconds), medians over clips",
        "unexpected": unexpected,
    }


# ------------------------------------------------------------------------------------------
# Parts 3-5: in-process index, real store


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, EMBEDDING_DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    blob = rng.bytes(16 * n).hex()
    return [blob[32 * i : 32 * i + 32] for i in range(n)]


def real_entry(verifier: Verifier, wav: Path, text: str) -> tuple[Entry, bytes, object]:
    data = wav.read_bytes()
    decoded = decode_audio(data, 1e9)
    features = verifier.features(decoded.pcm_16k)
    digest = pcm_digest(decoded.pcm_16k)
    entry = Entry(entry_id=make_entry_id(PROFILE_ID, digest), profile_id=PROFILE_ID, pcm_digest=digest,
                  text=text, normalized_text=text, language="en", duration_s=decoded.duration_s,
                  speech_s=features.speech_s, engine_seconds=decoded.duration_s * 0.5, engine="pocketsphinx")
    return verifier.attach(entry, features), data, features


def synthetic_entry_fields(entry_id: str, embedding: np.ndarray, rng: np.random.Generator, frames: int,
                           speech_s: float, expires_at_ms: int, fp: bytes | None = None, fpl: bytes | None = None,
                           generation: str = "") -> dict:
    """The fields `Entry.to_fields` writes for a ~10 s clip, with random fingerprint bytes."""
    text = "the committee agreed to review the budget again after the summer break and the report"
    return Entry(
        entry_id=entry_id, profile_id=PROFILE_ID, pcm_digest=entry_id + "00000000", text=text, normalized_text=text,
        language="en", duration_s=frames / FP_CONFIG.frames_per_second, speech_s=speech_s, engine_seconds=4.2,
        expires_at_ms=expires_at_ms, engine="pocketsphinx",
        fingerprint=fp if fp is not None else rng.bytes(FP_BYTES_PER_FRAME[0] * frames),
        fingerprint_levels=fpl if fpl is not None else rng.integers(60, 110, frames, dtype=np.uint8).tobytes(),
        embedding=at_stored_precision(embedding).astype("<f4").tobytes(), fingerprint_version=FP_CONFIG.version,
        generation=generation,
    ).to_fields()


def write_synthetic_entries(sync: redis.Redis, keys: Keys, ids: list[str], vectors: np.ndarray, rng: np.random.Generator,
                            frames: int, speech_s: float, *, events: bool, batch: int = 500) -> float:
    """HSET entries with their exact alias (listed in the entry), TTL and (optionally) stream
    events, as `Store.put_entry` writes them (the evidence kept in the hash: no bulk directory)."""
    started = time.perf_counter()
    expires_at_ms = int(time.time() * 1000) + 7 * DAY_MS
    for lo in range(0, len(ids), batch):
        pipe = sync.pipeline(transaction=False)
        for entry_id, vector in zip(ids[lo : lo + batch], vectors[lo : lo + batch], strict=True):
            key, generation = keys.entry(entry_id), rng.bytes(8).hex()
            alias = keys.exact(PROFILE_ID, entry_id + "00000000")  # a 20-byte bytes digest, as BLAKE3's
            fields = synthetic_entry_fields(entry_id, vector, rng, frames, speech_s, expires_at_ms,
                                            generation=generation)
            pipe.hset(key, mapping={**fields, keys.alias_member(alias): b""})
            pipe.pexpireat(key, expires_at_ms)
            pipe.set(alias, base64(bytes.fromhex(entry_id + generation)), pxat=expires_at_ms)
            if events:
                pipe.xadd(keys.index_stream(), {"op": "add", "entry": entry_id, "profile": PROFILE_ID},
                          maxlen=Settings().stream_maxlen, approximate=True)
        pipe.execute()
    return time.perf_counter() - started


def write_neighbours(sync: redis.Redis, keys: Keys, index: VectorIndex, query, real_ids: set[str],
                     decoy, rng: np.random.Generator) -> int:
    """Make the query's nearest filler exist in the store as real-looking entries of another clip.

    Same speech duration as the query (so the duration check passes and the embedding threshold
    or the verification has to reject them): the steady state of a full cache.
    """
    expires_at_ms = int(time.time() * 1000) + 7 * DAY_MS
    pipe = sync.pipeline(transaction=False)
    written = 0
    bits, levels = decoy.hash.to_bytes()
    for entry_id, _ in index.search(PROFILE_ID, query.embedding, 4 * TOP_K):
        if entry_id in real_ids:
            continue
        vector = index_vector(index, entry_id)
        pipe.hset(keys.entry(entry_id), mapping=synthetic_entry_fields(
            entry_id, vector, rng, len(decoy.hash.bits), query.speech_s, expires_at_ms, fp=bits, fpl=levels))
        pipe.pexpireat(keys.entry(entry_id), expires_at_ms)
        written += 1
    pipe.execute()
    return written


def index_vector(index: VectorIndex, entry_id: str) -> np.ndarray:
    from earmark.index.vectors import vector_id

    with index._lock:  # bench-only peek at the stored vector
        for part in index._profiles.values():
            vid = vector_id(entry_id)
            if vid in part.row_of:
                return part.index.reconstruct(vid)
    raise KeyError(entry_id)


def reasons(match) -> dict:
    counts: dict[str, int] = {}
    for candidate in match.candidates:
        key = candidate["reason"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


async def time_searches(indexes: dict[str, VectorIndex], query_vectors: np.ndarray, rounds: int,
                        sparse: tuple[str, ...] = ()) -> dict:
    """Interleaved search timings; indexes named in `sparse` (slow ones) join every 5th round."""
    times: dict[str, list[float]] = {name: [] for name in indexes}
    order = list(indexes)
    rng = random.Random(7)
    for r in range(rounds):
        vector = query_vectors[r % len(query_vectors)]
        rng.shuffle(order)
        for name in order:
            if name in sparse and r % 5:
                continue
            started = time.perf_counter()
            indexes[name].search(PROFILE_ID, vector, TOP_K)
            times[name].append(time.perf_counter() - started)
    return {name: summary(values) for name, values in times.items()}


async def time_matches(matchers: dict[str, FuzzyMatcher], query, rounds: int, expect_id: str) -> dict:
    times: dict[str, list[float]] = {name: [] for name in matchers}
    last: dict[str, object] = {}
    wrong = []
    order = list(matchers)
    rng = random.Random(11)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            started = time.perf_counter()
            match = await matchers[name].match(query, PROFILE)
            times[name].append(time.perf_counter() - started)
            last[name] = match
            if match.entry is None or match.entry.entry_id != expect_id:
                wrong.append(name)
    out = {}
    for name, values in times.items():
        row = summary(values)
        row["first_ms"] = round(values[0] * 1000, 4)
        row["last10_median_ms"] = round(float(np.median(values[-10:])) * 1000, 4)
        row["candidate_reasons_last"] = reasons(last[name])
        row["wrong_or_missed"] = wrong.count(name)
        row["index_tombstones_after"] = matchers[name].index.tombstones
        out[name] = row
    return out


async def stop_task(task: asyncio.Task) -> None:
    """Cancel a replica's task and wait for it, cancelling again while it survives.

    On Python 3.11, a cancel that lands while redis-py awaits `asyncio.wait_for(writer.drain())`
    in `send_packed_command` is lost (CPython gh-86296), so one cancel plus an unbounded await
    (what `IndexReplica.stop` does) can wait forever.
    """
    for _ in range(100):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            return
    raise RuntimeError("the replica task ignored 100 cancellations")


def build_index(kind: str, ids: list[str], vectors: np.ndarray, real: list[tuple[str, np.ndarray]], threads: int,
                label: str, chunk: int = 100_000) -> tuple[VectorIndex, float]:
    index = VectorIndex(EMBEDDING_DIM, kind)
    faiss.omp_set_num_threads(threads)
    started = time.perf_counter()
    try:
        for lo in range(0, len(ids), chunk):
            index.add_many(PROFILE_ID, ids[lo : lo + chunk], vectors[lo : lo + chunk])
            if kind == "hnsw" and len(ids) > chunk:
                log(f"    {label}: {min(lo + chunk, len(ids)):,} / {len(ids):,} added ({time.perf_counter() - started:.0f} s)")
        for entry_id, vector in real:
            index.add(PROFILE_ID, entry_id, vector)
    finally:
        faiss.omp_set_num_threads(1)
    return index, time.perf_counter() - started


async def parts_index(work: Path, clips: dict, args, out: dict) -> None:
    rng = np.random.default_rng(20261124)
    small_n, large_n = 10_000, args.large
    rebuild_n = args.rebuild_entries
    keys = Keys()
    server = EmbeddedServer(work / "store", maxmemory="8gb")
    server.start()
    sync = redis.Redis.from_url(server.url)
    sync.config_set("appendonly", "no")
    sync.config_set("save", "")
    store = Store(open_client(server.url), keys)
    try:
        # --- real entries in the store -----------------------------------------------------
        probe = FuzzyMatcher(Verifier(FuzzyThresholds()), store, VectorIndex(EMBEDDING_DIM, "flat"), Metrics())
        real: dict[str, tuple[Entry, object]] = {}
        for name in ("clip10", "clip60", "other10", *[n for n in clips if n.startswith("miss10_")]):
            entry, data, features = real_entry(probe.verifier, clips[name]["wav"], f"transcript of {name}")
            await store.put_entry(entry, bytes_digest(data), 7 * 24 * 3600, stream_maxlen=Settings().stream_maxlen)
            real[name] = (entry, features)
        sample = real["clip10"][0]
        FP_BYTES_PER_FRAME[0] = len(sample.fingerprint) // max(1, len(sample.fingerprint_levels))
        real_vectors = [(e.entry_id, np.frombuffer(e.embedding, dtype="<f4")) for e, _ in real.values()]
        real_ids = {e.entry_id for e, _ in real.values()}
        target_id = real["clip10"][0].entry_id
        query = probe.verifier.features(decode_audio(clips["clip10"]["mp3"].read_bytes(), 1e9).pcm_16k)
        decoy = real["other10"][1]

        # --- part 5 (Redis side): bytes per real entry ---------------------------------------
        redis_bytes = {}
        for name in ("clip10", "clip60"):
            entry, _ = real[name]
            listed = [*sync.smembers(keys.entry_aliases(entry.entry_id)),
                      *(f for f in sync.hkeys(keys.entry(entry.entry_id)) if keys.is_alias_member(f))]
            alias_keys = [keys.alias_key_of(member) for member in listed]
            sizes = {"entry_hash": sync.memory_usage(keys.entry(entry.entry_id), samples=0),
                     "aliases_set": sync.memory_usage(keys.entry_aliases(entry.entry_id), samples=0),
                     "alias_keys": sum(sync.memory_usage(k, samples=0) for k in alias_keys)}
            total = sum(sizes.values())
            redis_bytes[name] = {
                "audio_s": round(entry.duration_s, 3), "frames": len(entry.fingerprint_levels),
                "fingerprint_bytes": len(entry.fingerprint) + len(entry.fingerprint_levels),
                "embedding_bytes": len(entry.embedding), **sizes, "total": total,
                "per_audio_second": round(total / entry.duration_s, 1),
            }
            log(f"  Redis bytes, {name} ({entry.duration_s:.1f} s): {sizes} -> {total} B = {total / entry.duration_s:.0f} B per s")
        out["redis_bytes_per_entry"] = redis_bytes

        # --- part 3: indexes with filler -------------------------------------------------------
        log(f"  generating {large_n:,} filler unit vectors (d={EMBEDDING_DIM}) ...")
        filler = unit_vectors(rng, large_n)
        filler_ids = hex_ids(rng, large_n)
        rss0 = rss_mb()
        small, small_build = build_index("flat", filler_ids[:small_n], filler[:small_n], real_vectors, 1, "flat small")
        log(f"  flat index, {small_n:,} filler: built in {small_build:.2f} s")
        rss1 = rss_mb()
        log(f"  building HNSW (M={HNSW_M}, efConstruction={HNSW_EF_CONSTRUCTION}) of {large_n:,} vectors with 2 FAISS threads ...")
        load_before_build = loadavg()
        large, large_build = build_index("hnsw", filler_ids, filler, real_vectors, 2, "hnsw large")
        rss2 = rss_mb()
        log(f"  HNSW {large_n:,}: built in {large_build:.1f} s (RSS +{rss2 - rss1:.0f} MB)")
        flat_large, flat_large_build = build_index("flat", filler_ids, filler, real_vectors, 1, "flat large", chunk=large_n)
        rss3 = rss_mb()
        log(f"  flat {large_n:,}: built in {flat_large_build:.1f} s (RSS +{rss3 - rss2:.0f} MB)")
        out["builds"] = {
            "flat_small": {"entries": len(small), "seconds": round(small_build, 3)},
            "hnsw_large": {"entries": len(large), "seconds": round(large_build, 1), "faiss_threads": 2,
                           "rss_growth_mb": round(rss2 - rss1), "loadavg_before": load_before_build,
                           "loadavg_after": loadavg()},
            "flat_large": {"entries": len(flat_large), "seconds": round(flat_large_build, 2), "rss_growth_mb": round(rss3 - rss2)},
            "rss_before_indexes_mb": round(rss0),
        }
        faiss.omp_set_num_threads(1)
        indexes = {"flat_10k": small, f"hnsw_{args.large_label}": large, f"flat_{args.large_label}": flat_large}
        flat_large_name = f"flat_{args.large_label}"

        # Recall check: does each index put the real entry first for the MP3 copy's embedding?
        recall = {}
        for name, index in indexes.items():
            hits = index.search(PROFILE_ID, query.embedding, TOP_K)
            recall[name] = {"top1_is_original": bool(hits and hits[0][0] == target_id),
                            "top_similarities": [round(s, 3) for _, s in hits]}
        out["query_top_k"] = recall

        # (a) search alone: the real query, and random unit queries (not in the index)
        log("  (a) timing VectorIndex.search (interleaved) ...")
        rounds = args.search_rounds
        sparse = (flat_large_name,) if large_n > 100_000 else ()
        await time_searches(indexes, unit_vectors(rng, 50), 50, sparse)  # warm-up
        search_real = await time_searches(indexes, query.embedding.reshape(1, -1), rounds, sparse)
        search_random = await time_searches(indexes, unit_vectors(rng, rounds), rounds, sparse)
        out["search"] = {"real_query": search_real, "random_queries": search_random, "k": TOP_K,
                         "hnsw_ef_search": HNSW_EF_SEARCH, "faiss_threads": 1}
        for name in indexes:
            log(f"    {name}: real query {search_real[name]['median_ms']:.3f} ms, random {search_random[name]['median_ms']:.3f} ms")

        # (b) full match path, neighbours present in the store (stable: nothing gets pruned)
        matchers = {name: FuzzyMatcher(Verifier(FuzzyThresholds()), store, index, Metrics()) for name, index in indexes.items()}
        present = {name: write_neighbours(sync, keys, index, query, real_ids, decoy, rng) for name, index in indexes.items()}
        log(f"  (b) timing FuzzyMatcher.match with the nearest filler present in the store {present} ...")
        await time_matches(matchers, query, 10, target_id)  # warm-up
        match_present = await time_matches(matchers, query, args.match_rounds, target_id)
        for name, row in match_present.items():
            log(f"    {name}: median {row['median_ms']:.2f} ms, reasons {row['candidate_reasons_last']}")

        # --- part 4a: snapshot of the large HNSW index, before anything prunes it ---------------
        snapshot_dir = work / "snapshot-hnsw"
        stream_offset = sync.xrevrange(keys.index_stream(), count=1)[0][0].decode()
        started = time.perf_counter()
        large.save(snapshot_dir, stream_offset, FP_CONFIG.version)
        save_s = time.perf_counter() - started
        faiss_bytes = {}
        for name, index in indexes.items():
            directory = snapshot_dir if index is large else work / f"snapshot-{name}"
            if index is not large:
                index.save(directory, stream_offset, FP_CONFIG.version)
            part = next(iter(index._profiles.values()))
            serialized = len(faiss.serialize_index(part.index))
            faiss_bytes[name] = {"entries": len(index), "snapshot_bytes": dir_bytes(directory),
                                 "snapshot_per_entry": round(dir_bytes(directory) / len(index), 1),
                                 "faiss_index_per_entry": round(serialized / len(index), 1)}
            if index is not large:
                shutil.rmtree(directory, ignore_errors=True)
        out["faiss_bytes_per_entry"] = faiss_bytes
        log(f"  saved the {len(large):,}-entry HNSW snapshot in {save_s:.2f} s ({dir_bytes(snapshot_dir) / 1e6:.0f} MB)")

        # (b') full match path, neighbours absent: each is read, found gone, pruned (tombstoned)
        for index in indexes.values():
            for entry_id, _ in index.search(PROFILE_ID, query.embedding, 4 * TOP_K):
                if entry_id not in real_ids:
                    sync.delete(keys.entry(entry_id))
        # Not on the large flat index: there every pruned candidate costs a full remove_ids (see
        # the per-id removal cost measured below), seconds per match.
        gone_matchers = {name: m for name, m in matchers.items() if name != flat_large_name}
        log("  (b') timing FuzzyMatcher.match with the filler absent from the store (gone -> pruned) ...")
        match_gone = await time_matches(gone_matchers, query, args.gone_rounds, target_id)
        for name, row in match_gone.items():
            log(f"    {name}: first {row['first_ms']:.2f} ms, median {row['median_ms']:.2f} ms, last 10 "
                f"{row['last10_median_ms']:.2f} ms, tombstones after {row['index_tombstones_after']}, "
                f"reasons {row['candidate_reasons_last']}")
        out["match"] = {"neighbours_present": match_present, "filler_gone": match_gone,
                        "neighbours_written": present, "top_k": TOP_K}

        # What one pruned candidate costs: VectorIndex.remove (flat: remove_ids, HNSW: tombstone).
        removal = {}
        victims = iter(filler_ids[small_n // 2 : small_n])  # in every index, not near the query
        for name, index in indexes.items():
            samples = 3 if (index is flat_large and large_n > 100_000) else 20
            times = []
            for _ in range(samples):
                started = time.perf_counter()
                index.remove(next(victims))
                times.append(time.perf_counter() - started)
            removal[name] = summary(times)
            log(f"    VectorIndex.remove on {name}: median {removal[name]['median_ms']:.3f} ms per entry")
        out["remove_one_entry"] = removal

        # HNSW search as tombstones pile up (a rebuild triggers past max(1000, live / 10)).
        log("  HNSW search against tombstones ...")
        tomb_rows = []
        order = filler_ids[small_n:]
        cursor = 0
        random_queries = unit_vectors(rng, 40)
        current = large.tombstones
        for target in sorted({current} | {t for t in (1000, 10_000, len(large) // 10) if t > current}):
            while large.tombstones < target and cursor < len(order):
                large.remove(order[cursor])
                cursor += 1
            n_queries = 40 if target <= 10_000 else 8
            times = []
            for vector in random_queries[:n_queries]:
                started = time.perf_counter()
                large.search(PROFILE_ID, vector, TOP_K)
                times.append(time.perf_counter() - started)
            row = summary(times)
            row.update(tombstones=large.tombstones, needs_rebuild=large.needs_rebuild())
            tomb_rows.append(row)
            log(f"    {large.tombstones:,} tombstones: search median {row['median_ms']:.2f} ms (needs_rebuild={row['needs_rebuild']})")
        out["hnsw_search_vs_tombstones"] = tomb_rows

        # Cost of VectorIndex.rebuild's locked phase (reconstructing every vector one by one).
        part = next(iter(flat_large._profiles.values()))
        sample_ids = np.array(sorted(part.entry_ids)[:100_000], dtype=np.int64)
        started = time.perf_counter()
        flat_large._vectors(part, sample_ids)
        reconstruct_s = time.perf_counter() - started
        out["rebuild_reconstruct"] = {"vectors": len(sample_ids), "seconds": round(reconstruct_s, 3),
                                      "extrapolated_1m_s": round(reconstruct_s * 1_000_000 / len(sample_ids), 1)}
        log(f"  VectorIndex._vectors (rebuild's locked phase): {len(sample_ids):,} vectors in {reconstruct_s:.2f} s")

        del matchers, indexes, small, flat_large, large, part
        gc.collect()

        # --- part 4b: replica start from the snapshot + stream replay ---------------------------
        new_after = args.replay_events
        log(f"  writing {new_after:,} entries (with stream events) after the snapshot's offset ...")
        write_synthetic_entries(sync, keys, hex_ids(rng, new_after), unit_vectors(rng, new_after), rng,
                                frames=SYNTHETIC_FRAMES, speech_s=9.0, events=True)
        last_id = sync.xrevrange(keys.index_stream(), count=1)[0][0].decode()
        gc.collect()
        replica_index = VectorIndex(EMBEDDING_DIM, "auto")
        load_timing = {}
        original_load = replica_index.load

        def timed_load(directory, version):
            started_load = time.perf_counter()
            try:
                return original_load(directory, version)
            finally:
                load_timing["seconds"] = time.perf_counter() - started_load

        replica_index.load = timed_load  # instance attribute: times the replica's own call
        replica = IndexReplica(store.client, keys, replica_index, snapshot_dir, FP_CONFIG.version)
        started = time.perf_counter()
        replica.start()
        await asyncio.wait_for(replica.ready.wait(), 600)
        ready_s = time.perf_counter() - started
        expected = len(filler_ids) + len(real_vectors) + new_after
        # `apply` moves the offset before it indexes the batch, so wait for both.
        while replica.offset != last_id or len(replica_index) < expected:
            await asyncio.sleep(0.01)
            if time.perf_counter() - started > 900:
                break
        caught_up_s = time.perf_counter() - started
        hits = replica_index.search(PROFILE_ID, query.embedding, TOP_K)
        replica_answers = bool(hits and hits[0][0] == target_id)
        entries_loaded = len(replica_index)
        await stop_task(replica._task)  # stop tailing without writing a final snapshot
        out["replica_start_from_snapshot"] = {
            "snapshot_entries": len(filler_ids) + len(real_vectors), "snapshot_bytes": dir_bytes(snapshot_dir),
            "save_s": round(save_s, 2), "load_s": round(load_timing.get("seconds", float("nan")), 2),
            "ready_s": round(ready_s, 2), "events_replayed": new_after, "caught_up_s": round(caught_up_s, 2),
            "entries_after": entries_loaded, "finds_original": replica_answers,
            "note": "ready is set after the snapshot loads; the stream is replayed right after (caught_up_s)",
        }
        log(f"  replica: snapshot load {load_timing.get('seconds', 0):.2f} s, ready after {ready_s:.2f} s, "
            f"{new_after:,} events replayed by {caught_up_s:.2f} s; {entries_loaded:,} entries; finds the original: {replica_answers}")
        del replica, replica_index
        gc.collect()
        shutil.rmtree(snapshot_dir, ignore_errors=True)

        # --- part 4c: rebuild from Redis ---------------------------------------------------------
        used_before = sync.info("memory")["used_memory"]
        keys_before = sync.dbsize()
        log(f"  writing {rebuild_n:,} real-looking entries (hash + 2 aliases + alias set + stream event) ...")
        write_s = write_synthetic_entries(sync, keys, hex_ids(rng, rebuild_n), unit_vectors(rng, rebuild_n), rng,
                                          frames=SYNTHETIC_FRAMES, speech_s=9.0, events=True)
        used_after = sync.info("memory")["used_memory"]
        stream_len = sync.xlen(keys.index_stream())
        stream_bytes = sync.memory_usage(keys.index_stream(), samples=0)
        out["redis_bulk"] = {
            "entries_written": rebuild_n, "write_s": round(write_s, 2), "entries_per_s": round(rebuild_n / write_s),
            "used_memory_per_entry": round((used_after - used_before) / rebuild_n, 1),
            "keys_added": sync.dbsize() - keys_before, "stream_events": stream_len,
            "stream_bytes_per_event": round(stream_bytes / max(1, stream_len), 1),
        }
        log(f"  wrote them in {write_s:.1f} s; used_memory +{(used_after - used_before) / rebuild_n:.0f} B per entry")
        total_entries = sum(1 for _ in sync.scan_iter(match=keys.entry_pattern(), count=5000))
        rebuild_index = VectorIndex(EMBEDDING_DIM, "auto")
        rebuild_dir = work / "snapshot-rebuild"
        replica = IndexReplica(store.client, keys, rebuild_index, rebuild_dir, FP_CONFIG.version)
        started = time.perf_counter()
        replica.start()
        await asyncio.wait_for(replica.ready.wait(), 1200)
        rebuild_s = time.perf_counter() - started
        kinds = sorted({p.kind for p in rebuild_index._profiles.values()})
        indexed = len(rebuild_index)
        await stop_task(replica._task)
        per_entry_s = rebuild_s / max(1, indexed)
        out["replica_rebuild_from_redis"] = {
            "entries_in_redis": total_entries, "entries_indexed": indexed, "keys_in_db": sync.dbsize(),
            "ready_s": round(rebuild_s, 2), "index_kind_when_ready": kinds,
            "extrapolated_1m_ready_s": round(per_entry_s * 1_000_000, 1),
            "note": "ready_s includes the SCAN + HMGET of every entry, adding to a flat index ('auto' starts "
                    "flat: the first batch is 1000) and writing a snapshot; extrapolated linearly to 1M. "
                    "At 1M the tail loop then converts to HNSW (VectorIndex.rebuild, 1 FAISS thread), "
                    "not counted here.",
        }
        log(f"  rebuild from Redis: {indexed:,} entries indexed, ready after {rebuild_s:.2f} s ({kinds}); "
            f"extrapolated to 1M: {per_entry_s * 1e6:.0f} s")
        del replica, rebuild_index
    finally:
        await store.close()
        sync.close()
        server.stop()


# ------------------------------------------------------------------------------------------
# Report


def build_ratios(out: dict, args) -> dict:
    feats = out["features"]["clips"]
    large = args.large_label
    search_real, search_random = out["search"]["real_query"], out["search"]["random_queries"]
    present, gone = out["match"]["neighbours_present"], out["match"]["filler_gone"]
    replica = out["replica_start_from_snapshot"]
    rows = {}
    for key, row in feats.items():
        rows[f"features_{key}_x_realtime"] = (row["x_realtime"], TARGETS["features_x_realtime_min"], row["x_realtime"] >= TARGETS["features_x_realtime_min"])
    service = out["service"]
    rows["lookup_over_miss_10s"] = (service["lookup_over_miss_median"], TARGETS["lookup_over_miss_max"],
                                    service["lookup_over_miss_worst"] <= TARGETS["lookup_over_miss_max"])
    for label, table in (("real_query", search_real), ("random_queries", search_random)):
        value = ratio(table[f"hnsw_{large}"]["median_ms"], table["flat_10k"]["median_ms"], 2)
        rows[f"search_hnsw_{large}_over_flat_10k_{label}"] = (value, TARGETS["search_large_over_small_max"], value <= TARGETS["search_large_over_small_max"])
        value = ratio(table[f"flat_{large}"]["median_ms"], table["flat_10k"]["median_ms"], 2)
        rows[f"search_flat_{large}_over_flat_10k_{label}"] = (value, None, None)
    for label, table in (("neighbours_present", present), ("filler_gone", gone)):
        value = ratio(table[f"hnsw_{large}"]["median_ms"], table["flat_10k"]["median_ms"], 3)
        rows[f"match_hnsw_{large}_over_flat_10k_{label}"] = (value, TARGETS["match_large_over_small_max"], value <= TARGETS["match_large_over_small_max"])
        if f"flat_{large}" in table:
            value = ratio(table[f"flat_{large}"]["median_ms"], table["flat_10k"]["median_ms"], 3)
            rows[f"match_flat_{large}_over_flat_10k_{label}"] = (value, None, None)
    removal = out["remove_one_entry"]
    value = ratio(removal[f"flat_{large}"]["median_ms"], removal["flat_10k"]["median_ms"], 1)
    rows[f"remove_one_entry_flat_{large}_over_flat_10k"] = (value, None, None)
    rows[f"replica_ready_s_{large}"] = (replica["ready_s"], TARGETS["replica_ready_s_max"], replica["ready_s"] <= TARGETS["replica_ready_s_max"])
    rows[f"replica_caught_up_s_{large}"] = (replica["caught_up_s"], TARGETS["replica_ready_s_max"], replica["caught_up_s"] <= TARGETS["replica_ready_s_max"])
    rebuild = out["replica_rebuild_from_redis"]
    rows["rebuild_from_redis_ready_s_1m_extrapolated"] = (rebuild["extrapolated_1m_ready_s"], TARGETS["replica_ready_s_max"],
                                                         rebuild["extrapolated_1m_ready_s"] <= TARGETS["replica_ready_s_max"])
    return {name: {"value": v, "target": t, "met": m} for name, (v, t, m) in rows.items()}


def print_table(out: dict, args) -> None:
    print()
    print(f"=== fuzzy tier speed and scale ({'quick' if args.quick else 'full'} run, {out['date']}, "
          f"{out['machine']['cpus']} cores, load {out['machine']['loadavg_start'][0]:.1f} -> {out['machine']['loadavg_end'][0]:.1f}) ===")
    print(f"{'measure':<58}{'value':>12}  {'target':<10}{'met'}")
    for name, row in out["ratios"].items():
        target = row["target"]
        if target is None:
            target_text, met = "", ""
        elif name.startswith("features"):
            target_text, met = f">= {target:g}x", "yes" if row["met"] else "NO"
        elif name.startswith("lookup"):
            target_text, met = f"<= {target * 100:g}%", "yes" if row["met"] else "NO"
        elif name.startswith(("replica", "rebuild")):
            target_text, met = f"<= {target:g} s", "yes" if row["met"] else "NO"
        else:
            target_text, met = f"<= {target:g}x", "yes" if row["met"] else "NO"
        value = row["value"]
        value_text = f"{value * 100:.2f}%" if name.startswith("lookup") else (f"{value:.1f} s" if name.startswith(("replica", "rebuild")) else f"{value:.2f}x")
        print(f"{name:<58}{value_text:>12}  {target_text:<10}{met}")
    print()
    s = out["search"]
    print("search medians ms (real query / random):  " + ", ".join(
        f"{n} {s['real_query'][n]['median_ms']:.3f} / {s['random_queries'][n]['median_ms']:.3f}" for n in s["real_query"]))
    for label in ("neighbours_present", "filler_gone"):
        m = out["match"][label]
        print(f"match medians ms ({label}):  " + ", ".join(f"{n} {m[n]['median_ms']:.2f}" for n in m))
    print("VectorIndex.remove of one entry, ms: " + ", ".join(f"{n} {v['median_ms']:.3f}" for n, v in out["remove_one_entry"].items()))
    print("HNSW search vs tombstones: " + ", ".join(f"{r['tombstones']:,} -> {r['median_ms']:.2f} ms" for r in out["hnsw_search_vs_tombstones"]))
    print("bytes per entry, Redis: " + ", ".join(
        f"{n} {v['total']} B ({v['per_audio_second']:.0f} B/s audio)" for n, v in out["redis_bytes_per_entry"].items())
        + f"; bulk 10 s entries {out['redis_bulk']['used_memory_per_entry']:.0f} B (used_memory delta)")
    print("bytes per entry, FAISS snapshot: " + ", ".join(
        f"{n} {v['snapshot_per_entry']:.0f} B (index alone {v['faiss_index_per_entry']:.0f} B)" for n, v in out["faiss_bytes_per_entry"].items()))
    r = out["replica_start_from_snapshot"]
    print(f"start-up at {r['snapshot_entries']:,} entries: save {r['save_s']} s, load {r['load_s']} s, ready {r['ready_s']} s, "
          f"{r['events_replayed']} events replayed by {r['caught_up_s']} s")
    b = out["replica_rebuild_from_redis"]
    print(f"rebuild from Redis: {b['entries_indexed']:,} entries ready in {b['ready_s']} s; extrapolated to 1M: "
          f"{b['extrapolated_1m_ready_s']} s (EXTRAPOLATED)")
    print(f"HNSW build of {out['builds']['hnsw_large']['entries']:,} vectors: {out['builds']['hnsw_large']['seconds']} s (2 FAISS threads)")
    if out["service"]["unexpected"]:
        print("UNEXPECTED: " + "; ".join(out["service"]["unexpected"][:5]))


def git_state() -> dict:
    """The commit measured, and whether the work tree had uncommitted changes (others edit it)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""
    changed = [line[3:] for line in git("status", "--short").splitlines() if line and not line.startswith("??")]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_files": changed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 30k-entry 'large' index, fewer repeats")
    parser.add_argument("--out", type=Path, default=None, help="JSON output [bench/out/scale.json, scale-quick.json with --quick]")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--service-only", action="store_true",
                        help="parts 1-2 only (features; /lookup against the engine's miss), with the full run's clips")
    args = parser.parse_args()
    require_tools(parser, "espeak-ng", "ffmpeg")
    if not EARMARK.exists():
        parser.error(f"{EARMARK} not found: install earmark into .venv first")
    if args.quick:
        args.large, args.large_label, args.rebuild_entries, args.replay_events = 30_000, "30k", 5_000, 200
        args.search_rounds, args.match_rounds, args.gone_rounds, miss_clips, lookups = 200, 30, 20, 1, 20
    else:
        args.large, args.large_label, args.rebuild_entries, args.replay_events = 1_000_000, "1m", 100_000, 2_000
        args.search_rounds, args.match_rounds, args.gone_rounds, miss_clips, lookups = 500, 150, 100, 3, 100
    out_path = args.out or OUT_DIR / ("scale-quick.json" if args.quick else "scale.json")

    interrupt_on_sigterm()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>` prints where it is
    work = Path(tempfile.mkdtemp(prefix="earmark-scale-"))
    started = time.perf_counter()
    out: dict = {
        "benchmark": "scale",
        "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(faiss=faiss.__version__, loadavg_start=loadavg(),
                                note="shared 2-core machine; other jobs may run at the same time (see loadavg)"),
        "targets": TARGETS,
        "code": git_state(),
        "fingerprint": {"version": FP_CONFIG.version, "frames_per_second": FP_CONFIG.frames_per_second},
    }
    try:
        log(f"preparing audio in {work} ...")
        clips = prepare_audio(work, miss_clips)
        out["clips"] = {n: round(c["duration_s"], 3) for n, c in clips.items()}
        log("part 1: features against real time (1 thread) ...")
        out["features"] = part_features(clips, Verifier(FuzzyThresholds()), args.quick)
        log("part 2: /lookup of an MP3 copy against the miss, through earmark serve ...")
        out["service"] = part_service(work, clips, miss_clips, lookups)
        if args.service_only:
            out["machine"]["loadavg_end"] = loadavg()
            service = out["service"]
            print(f"\n/lookup of an MP3 copy / engine miss, ~10 s clips: median {service['lookup_over_miss_median'] * 100:.2f}% "
                  f"(worst {service['lookup_over_miss_worst'] * 100:.2f}%), lookup median {service['lookup_median_ms']:.1f} ms, "
                  f"miss median {service['miss_median_s']:.2f} s; target at most {TARGETS['lookup_over_miss_max'] * 100:.0f}%")
            print(f"/lookup of new speech (a miss) / engine miss: median {service['new_lookup_over_miss_median'] * 100:.2f}%; "
                  f"miss / engine time: median {service['miss_over_engine_median']}")
            print(f"server CPU per lookup: copy {service['lookup_server_cpu_ms_median']:.1f} ms, new speech "
                  f"{service['new_lookup_server_cpu_ms_median']:.1f} ms; during a miss "
                  f"{service['miss_server_cpu_ms_median']:.0f} ms (medians over clips)")
            out_path = args.out or OUT_DIR / "scale-service.json"
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(out, indent=2) + "\n")
            print(f"wrote {out_path}")
            return
        log(f"parts 3-5: index at 10k and {args.large:,}, start-up, bytes ...")
        asyncio.run(parts_index(work, clips, args, out))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out["machine"]["loadavg_end"] = loadavg()
    out["machine"]["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["config"] = {"large": args.large, "rebuild_entries": args.rebuild_entries, "replay_events": args.replay_events,
                     "search_rounds": args.search_rounds, "match_rounds": args.match_rounds, "gone_rounds": args.gone_rounds,
                     "hnsw": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH},
                     "auto_hnsw_from": AUTO_HNSW_FROM, "top_k": TOP_K, "voice": VOICE,
                     "fuzzy_thresholds": dataclasses.asdict(FuzzyThresholds())}
    out["ratios"] = build_ratios(out, args)
    print_table(out, args)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {out_path} (wall time {out['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
