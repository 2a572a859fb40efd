#!/usr/bin/env python3
"""The vector index at 10 million entries (issue 25, item 3): which FAISS index, measured.

    .venv/bin/python bench/bench_index_scale.py                 # 10k flat, 1M HNSW, 1M and 10M IVF (~40 min)
    .venv/bin/python bench/bench_index_scale.py --no-hnsw       # without the 1M HNSW build (~12 min of it)
    .venv/bin/python bench/bench_index_scale.py --sizes 10000,200000 --no-hnsw   # a quick look (~1 min)

Each index is built by the service's own `VectorIndex` (earmark/index/vectors.py) from synthetic
unit vectors (d=64, uniform on the sphere: no clusters, the hardest case for an approximate
index and unlike real embeddings), with one FAISS thread as the service runs it (HNSW with two,
as bench_scale.py does, or it takes twice as long). For each it measures, side by side in one run:

1. build time (for IVF: training and filling, what a replica's background rebuild costs) and
   the process's memory growth (FAISS, the row arrays and the id map);
2. `VectorIndex.search` (k=16) for copies of indexed vectors at cosine similarity 0.99 to 0.6
   to their original (recall: the original among the 16 hits; the fuzzy tier then verifies
   each) and for random queries, against exact search of 10k entries;
3. a snapshot: save time and bytes, and a fresh `VectorIndex.load` (a replica's start-up);
4. IVF only: tombstones of 10% of the entries (the threshold) dropped in place (`rebuild` -> `purge`), the time
   the index is locked.
5. the fuzzy tier's whole match (`FuzzyMatcher.match`: search, store reads, verification) of a
   real MP3 copy against a real store holding its original, with the query's 64 nearest filler
   vectors written to the store as real-looking entries of another clip (so each is read and
   verified, the steady state of a full cache; bench_scale.py's "neighbours present"),
   interleaved with the same match against the exact 10k index: the ratio the issue targets
   (lookup at 10M <= 1.5x of 10k). Needs espeak-ng and ffmpeg (as bench_scale.py).

Writes a table to stdout and everything to bench/out/index_scale.json.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from harness import OUT_DIR, ROOT, loadavg, machine_info

sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

import bench_scale  # noqa: E402
from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.index.connection import open_client  # noqa: E402
from earmark.index.embedded import EmbeddedServer  # noqa: E402
from earmark.index.keys import Keys  # noqa: E402
from earmark.index.store import Store  # noqa: E402
from earmark.index import vectors as vectors_module  # noqa: E402
from earmark.index.vectors import VectorIndex, vector_id  # noqa: E402
from earmark.service.config import FuzzyThresholds, Settings  # noqa: E402
from earmark.service.metrics import Metrics  # noqa: E402
from earmark.service.pipeline.fuzzy import FuzzyMatcher  # noqa: E402
from earmark.service.pipeline.verification import Verifier  # noqa: E402

DIM = 64
PROFILE = bench_scale.PROFILE_ID
MATCH_ROUNDS = 60
K = 16
SIMILARITIES = (0.99, 0.95, 0.9, 0.8, 0.6)
QUERIES = 400


def rss_mb() -> float:
    """Resident memory of this process now, after freed memory is handed back to the system
    (else what a build allocated for a moment and freed counts as the index's)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    out = np.empty((count, DIM), dtype=np.float32)
    for lo in range(0, count, 1_000_000):
        block = rng.standard_normal((min(1_000_000, count - lo), DIM), dtype=np.float32)
        out[lo : lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def hex_ids(rng: np.random.Generator, count: int) -> list[str]:
    """Random 32-digit hex ids, as entry ids (digests) are: their first 15 digits are the FAISS id."""
    raw = rng.integers(0, 2**63, size=(count, 2), dtype=np.int64)
    return [f"{a:016x}{b:016x}" for a, b in raw.tolist()]


def copies(rng: np.random.Generator, originals: np.ndarray, similarity: float) -> np.ndarray:
    """Unit vectors at exactly `similarity` to each original."""
    noise = rng.standard_normal(originals.shape).astype(np.float32)
    noise -= (noise * originals).sum(axis=1, keepdims=True) * originals  # orthogonal to the original
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return similarity * originals + np.sqrt(1 - similarity**2) * noise


def timed_searches(index: VectorIndex, queries: np.ndarray, targets: list[str] | None) -> dict:
    seconds, found = [], 0
    for number, query in enumerate(queries):
        started = time.perf_counter()
        hits = index.search(PROFILE, query, K)
        seconds.append(time.perf_counter() - started)
        if targets is not None:
            found += any(entry_id == targets[number] for entry_id, _ in hits)
    out = {"median_ms": round(float(np.median(seconds)) * 1e3, 3), "p90_ms": round(float(np.percentile(seconds, 90)) * 1e3, 3)}
    if targets is not None:
        out["recall_at_16"] = round(found / len(queries), 4)
    return out


def stored_vector(index: VectorIndex, entry_id: str) -> np.ndarray:
    """An indexed entry's vector as the index holds it (for IVF, decoded from its codes)."""
    part = index._profiles[PROFILE]
    row = part.row_of.get(vector_id(entry_id))
    assert row is not None
    return index._vectors(part, np.array([row]))[0]


class MatchBench:
    """A real store with two real clips' entries, and the MP3 copy of one as the query."""

    def __init__(self, work: Path) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.server = EmbeddedServer(work / "store", maxmemory="2gb")
        self.server.start()
        import redis

        self.sync = redis.Redis.from_url(self.server.url)
        self.keys = Keys()
        self.store = Store(open_client(self.server.url), self.keys)
        self.verifier = Verifier(FuzzyThresholds())
        clips = bench_scale.prepare_audio(work, 0)
        self.real = {}
        for name in ("clip10", "other10"):
            entry, data, features = bench_scale.real_entry(self.verifier, clips[name]["wav"], f"transcript of {name}")
            self.loop.run_until_complete(self.store.put_entry(entry, bench_scale.bytes_digest(data), 7 * 24 * 3600,
                                                              stream_maxlen=Settings().stream_maxlen))
            self.real[name] = (entry, features)
        self.target = self.real["clip10"][0].entry_id
        self.query = self.verifier.features(decode_audio(clips["clip10"]["mp3"].read_bytes(), 1e9).pcm_16k)

    def prepare(self, index: VectorIndex) -> FuzzyMatcher:
        """Index the real entries and write the query's nearest filler to the store."""
        for entry, _ in self.real.values():
            index.add(PROFILE, entry.entry_id, np.frombuffer(entry.embedding, dtype="<f4"))
        bench_scale.index_vector = stored_vector  # write_neighbours reads each neighbour's vector with it
        bench_scale.write_neighbours(self.sync, self.keys, index, self.query, {e.entry_id for e, _ in self.real.values()},
                                     self.real["other10"][1], np.random.default_rng(5))
        return FuzzyMatcher(self.verifier, self.store, index, Metrics())

    def time(self, matchers: dict[str, FuzzyMatcher]) -> dict:
        """Interleaved match timings (medians), every answer checked."""
        self.loop.run_until_complete(bench_scale.time_matches(matchers, self.query, 5, self.target))  # warm-up
        return self.loop.run_until_complete(bench_scale.time_matches(matchers, self.query, MATCH_ROUNDS, self.target))

    def close(self) -> None:
        self.server.stop()


def measure(kind: str, size: int, vectors: np.ndarray, ids: list[str], rng: np.random.Generator, work: Path,
            threads: int, matches: MatchBench | None = None, small: FuzzyMatcher | None = None) -> dict:
    """Build, search, snapshot (and for IVF purge) one index of `size` entries."""
    gc.collect()
    before = rss_mb()
    index = VectorIndex(DIM, kind)
    faiss.omp_set_num_threads(threads)
    started = time.perf_counter()
    chunk = size if kind == "ivf" else 100_000  # IVF trains on the first batch: all of them, as a rebuild does
    for lo in range(0, size, chunk):
        index.add_many(PROFILE, ids[lo : min(size, lo + chunk)], vectors[lo : min(size, lo + chunk)])
    build_s = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    part = index._profiles[PROFILE]
    row = {"kind": part.kind, "entries": size, "build_s": round(build_s, 1), "build_threads": threads,
           "rss_growth_mb": round(rss_mb() - before), "loadavg": loadavg()}
    if part.kind == "ivf":
        row.update(lists=part.index.nlist, probes=part.index.nprobe)
    print(f"{kind} {size:,}: built in {build_s:.1f} s, +{row['rss_growth_mb']} MB", flush=True)

    picks = rng.choice(size, QUERIES, replace=False)
    targets = [ids[i] for i in picks.tolist()]
    timed_searches(index, unit_vectors(rng, 50), None)  # warm-up
    row["copies"] = {str(s): timed_searches(index, copies(rng, vectors[picks], s), targets) for s in SIMILARITIES}
    row["random"] = timed_searches(index, unit_vectors(rng, QUERIES), None)
    if part.kind == "ivf":  # what more probes would buy, on the same index and queries
        chosen = part.index.nprobe
        row["more_probes"] = {}
        for probes in (2 * chosen, 4 * chosen):
            part.index.nprobe = min(part.index.nlist, probes)
            row["more_probes"][str(part.index.nprobe)] = {
                str(s): timed_searches(index, copies(np.random.default_rng(int(s * 100)), vectors[picks], s), targets)
                for s in SIMILARITIES}
        part.index.nprobe = chosen
    print("  search: " + ", ".join(f"sim {s}: {v['recall_at_16']:.3f} in {v['median_ms']:.2f} ms"
                                    for s, v in row["copies"].items()) + f"; random {row['random']['median_ms']:.2f} ms",
          flush=True)

    if matches is not None and small is not None:
        timed = matches.time({"flat_10k": small, "this": matches.prepare(index)})
        row["match"] = {name: {k: timed[name][k] for k in ("median_ms", "p90_ms", "wrong_or_missed", "candidate_reasons_last")
                               if k in timed[name]} for name in timed}
        row["match_vs_flat_10k"] = round(timed["this"]["median_ms"] / timed["flat_10k"]["median_ms"], 3)
        print(f"  match: {timed['this']['median_ms']:.2f} ms against {timed['flat_10k']['median_ms']:.2f} ms on flat 10k "
              f"({row['match_vs_flat_10k']}x), wrong or missed {timed['this']['wrong_or_missed']}", flush=True)

    folder = work / f"{kind}-{size}"
    started = time.perf_counter()
    index.save(folder, "1-0", "bench")
    row["snapshot_save_s"] = round(time.perf_counter() - started, 2)
    row["snapshot_mb"] = round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 1)
    started = time.perf_counter()
    loaded = VectorIndex(DIM, kind)
    assert loaded.load(folder, "bench") == "1-0" and len(loaded) == len(index)
    row["snapshot_load_s"] = round(time.perf_counter() - started, 2)
    print(f"  snapshot: saved in {row['snapshot_save_s']} s ({row['snapshot_mb']} MB), loaded in {row['snapshot_load_s']} s",
          flush=True)
    del loaded
    shutil.rmtree(folder, ignore_errors=True)

    if part.kind == "ivf":
        gone = rng.choice(size, max(1000, size // 10) + 1, replace=False)  # just past the purge threshold
        for number in gone.tolist():
            index.remove(ids[number])
        assert index.needs_rebuild()
        started = time.perf_counter()
        index.rebuild()
        row["purge"] = {"removed": len(gone), "seconds": round(time.perf_counter() - started, 3),
                        "still_needs_rebuild": index.needs_rebuild()}
        print(f"  purge of {len(gone):,} tombstones: {row['purge']['seconds']} s", flush=True)
    del index
    gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="IVF sizes [1000000,10000000]")
    parser.add_argument("--no-hnsw", action="store_true", help="skip the 1M HNSW build")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "index_scale.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(20261206)
    largest = max(sizes)
    print(f"generating {largest:,} unit vectors and ids ...", flush=True)
    vectors, ids = unit_vectors(rng, largest), hex_ids(rng, largest)
    work = Path(tempfile.mkdtemp(prefix="earmark-index-scale-"))
    rows = []
    matches = None
    try:
        matches = MatchBench(work)
        rows.append(measure("flat", 10_000, vectors, ids, rng, work, 1))
        small_index = VectorIndex(DIM, "flat")
        small_index.add_many(PROFILE, ids[-10_000:], vectors[-10_000:])  # the 10k the matches are compared with
        small = matches.prepare(small_index)
        if not args.no_hnsw:
            rows.append(measure("hnsw", min(1_000_000, largest), vectors, ids, rng, work, 2, matches, small))
        for size in sizes:
            rows.append(measure("ivf", size, vectors, ids, rng, work, 1, matches, small))
    finally:
        if matches is not None:
            matches.close()
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]
    for row in rows[1:]:
        row["search_vs_flat_10k"] = {
            "copy_0.95": round(row["copies"]["0.95"]["median_ms"] / base["copies"]["0.95"]["median_ms"], 2),
            "random": round(row["random"]["median_ms"] / base["random"]["median_ms"], 2)}
    settings = {name: getattr(vectors_module, name) for name in
                ("AUTO_HNSW_FROM", "AUTO_IVF_FROM", "HNSW_M", "HNSW_EF_SEARCH", "IVF_MAX_LISTS", "IVF_PROBE_SHARE",
                 "IVF_MIN_PROBES", "IVF_TRAIN_PER_LIST", "IVF_TRAIN_ITERATIONS")}
    report = {"rows": rows, "settings": settings, "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("\n| index | entries | build | memory | search 0.99 / 0.95 / 0.9 / 0.8 / 0.6: recall, median ms | random | vs flat 10k | "
          "snapshot | load | match vs flat 10k |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        found = " / ".join(f"{v['recall_at_16']:.3f}" for v in row["copies"].values())
        ms = " / ".join(f"{v['median_ms']:.2f}" for v in row["copies"].values())
        ratio = row.get("search_vs_flat_10k", {})
        print(f"| {row['kind']} | {row['entries']:,} | {row['build_s']} s | +{row['rss_growth_mb']} MB | {found}; {ms} | "
              f"{row['random']['median_ms']:.2f} ms | {ratio.get('copy_0.95', 1.0)}x / {ratio.get('random', 1.0)}x | "
              f"{row['snapshot_mb']} MB, {row['snapshot_save_s']} s | {row['snapshot_load_s']} s | "
              f"{row.get('match_vs_flat_10k', '-')} |")


if __name__ == "__main__":
    main()
