#!/usr/bin/env python3
"""Snapshot pause (issue 7): exact-hit and /health latency over HTTP while the index replica
snapshots a 1M-entry vector index, against the same requests between snapshots, in one run.

    .venv/bin/python bench/bench_snapshot.py                         # 1M entries, 120 s of requests
    .venv/bin/python bench/bench_snapshot.py --entries 100000 --seconds 40   # smoke run

`VectorIndex.save` serialises outside the search lock; this measures what a request still
pays while a snapshot runs in the service. How:

1. A 1M-entry HNSW index of random unit vectors (d=64, M=32, the service's profile) is built
   here and saved with `VectorIndex.save` at stream offset 0-0; it is cached in bench/out/ for
   later runs. To save build time the filler graph is built with efConstruction 16 instead of
   80: the graph has the same size and shape (M=32 links per node), so the snapshot costs the
   same to write; search quality, which exact hits never use, is what it gives up.
2. A store is started (embedded valkey) and its identity set, and that snapshot is placed where
   the service's replica looks for it, so `earmark serve` loads 1M entries through its own
   start-up path (`IndexReplica` -> `VectorIndex.load`).
3. The service runs in a child process with two bench-only hooks and nothing else changed:
   `VectorIndex.save` is wrapped to record when each save starts and ends (wall clock), and the
   replica snapshots every `--snapshot-every` seconds (60 s in the service) when anything
   changed. The bench adds a change every 2 s (a `del` event of an unknown id to the index
   stream, which the replica applies as a no-op), so snapshots follow one another.
4. One real entry is cached (POST /recognize of tests/fixtures/recorded.wav, a miss), then two
   client threads run for `--seconds`: POST /recognize of the same bytes (exact hits, checked)
   back to back, and GET /health every 20 ms. A request is "during a snapshot" when its time
   overlaps a save, else "between".

Prints a table and writes bench/out/snapshot.json: p50/p99/max of each kind, during and
between, and the ratios of the p99s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import OUT_DIR, ROOT, _die_with_parent, free_port, git_head, loadavg, machine_info, multipart_body, multipart_headers

sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402

import earmark.index.vectors as vectors_module  # noqa: E402
from earmark.fingerprint.config import DEFAULT as DEFAULT_FINGERPRINT  # noqa: E402
from earmark.fingerprint.embedding import EMBEDDING_DIM  # noqa: E402
from earmark.index.embedded import EmbeddedServer  # noqa: E402
from earmark.index.keys import Keys  # noqa: E402
from earmark.index.vectors import VectorIndex  # noqa: E402
from earmark.service.api.app import _snapshot_dir  # noqa: E402
from earmark.service.config import Settings  # noqa: E402
from earmark.service.engines.base import RecognitionOptions  # noqa: E402

STORE_ID = "bench-snapshot-store"
FILLER_EF_CONSTRUCTION = 16
BOUNDARY = "earmark-snapshot-41c9"


def log(message: str) -> None:
    """A progress line with the time and the load average."""
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {message}", flush=True)


def service_profile_id() -> str:
    """The profile the service files recorded.wav under (default options, PocketSphinx)."""
    from earmark.service.engines.pocketsphinx_engine import PocketSphinxEngine

    return PocketSphinxEngine().resolve(RecognitionOptions()).digest


def filler_snapshot(entries: int, profile_id: str) -> Path:
    """A saved HNSW index of `entries` random unit vectors under `profile_id`, built once and
    cached in bench/out/ (the build is most of a first run)."""
    cache = OUT_DIR / f"snapshot-filler-{entries}-{profile_id[:12]}-{DEFAULT_FINGERPRINT.version}"
    if (cache / "meta.json").exists():
        log(f"filler snapshot: reusing {cache}")
        return cache
    rng = np.random.default_rng(20261207)
    vectors_module.HNSW_EF_CONSTRUCTION = FILLER_EF_CONSTRUCTION
    index = VectorIndex(EMBEDDING_DIM, "hnsw")
    faiss.omp_set_num_threads(2)
    started = time.perf_counter()
    chunk = 100_000
    for lo in range(0, entries, chunk):
        n = min(chunk, entries - lo)
        vectors = rng.standard_normal((n, EMBEDDING_DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        blob = rng.bytes(16 * n).hex()
        index.add_many(profile_id, [blob[32 * i: 32 * i + 32] for i in range(n)], vectors)
        log(f"  filler: {lo + n:,} / {entries:,} added ({time.perf_counter() - started:.0f} s)")
    faiss.omp_set_num_threads(1)
    index.save(cache, "0-0", DEFAULT_FINGERPRINT.version)
    log(f"filler snapshot: {entries:,} entries built and saved in {time.perf_counter() - started:.0f} s")
    return cache


def serve_hooked(times_file: str, snapshot_every_s: float, argv: list[str]) -> None:
    """Run `earmark serve` in this process with the two bench-only hooks (see the docstring)."""
    import earmark.index.replica as replica_module
    from earmark.service.cli import main as earmark_main

    replica_module.SNAPSHOT_EVERY_S = snapshot_every_s
    original_save = VectorIndex.save

    def timed_save(self, directory, stream_offset, fingerprint_version):
        started = time.time()
        try:
            return original_save(self, directory, stream_offset, fingerprint_version)
        finally:
            with open(times_file, "a") as handle:
                handle.write(f"{started} {time.time()} {len(self)}\n")

    VectorIndex.save = timed_save  # type: ignore[method-assign]
    sys.argv = ["earmark", *argv]
    earmark_main()


def percentiles(values_s: list[float]) -> dict:
    """n, p50, p99 and max in milliseconds."""
    if not values_s:
        return {"n": 0}
    ms = np.asarray(values_s) * 1000.0
    return {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def snapshot_bytes(directory: Path) -> int:
    """The size of the snapshot in force in `directory`: the folder meta.json names (version 2),
    or index.pkl (version 1)."""
    meta = json.loads((directory / "meta.json").read_text())
    if "snapshot" not in meta:
        return (directory / "index.pkl").stat().st_size
    return sum(path.stat().st_size for path in (directory / meta["snapshot"]).iterdir())


def split(samples: list[tuple[float, float]], saves: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Latencies of requests overlapping a save, and of the others."""
    during, between = [], []
    for started, ended in samples:
        overlaps = any(started < save_end and ended > save_start for save_start, save_end in saves)
        (during if overlaps else between).append(ended - started)
    return during, between


def main() -> None:
    """Run the measurement described in the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the two client threads run")
    parser.add_argument("--snapshot-every", type=float, default=10.0, help="the replica's snapshot interval here (60 s in the service)")
    parser.add_argument("--serve-hooked", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_hooked:
        times_file, every, *argv = args.serve_hooked
        serve_hooked(times_file, float(every), argv)
        return

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    profile_id = service_profile_id()
    filler = filler_snapshot(args.entries, profile_id)
    work = Path(tempfile.mkdtemp(prefix="earmark-snapshot-"))
    store = EmbeddedServer(work / "store", maxmemory="1gb")
    store.start()
    admin = redis.Redis.from_url(store.url)
    settings = Settings(redis_url=store.url, data_dir=work / "data")
    keys = Keys(settings.key_prefix)
    admin.set(keys.store_id(), STORE_ID)
    target = _snapshot_dir(settings) / STORE_ID
    target.mkdir(parents=True)
    for source in filler.rglob("*"):  # either snapshot layout (version 1 or 2, index/vectors.py)
        if source.is_file():
            (target / source.relative_to(filler)).parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target / source.relative_to(filler))  # the service replaces, never rewrites, these files
    times_file = work / "saves.txt"
    port = free_port()
    log_path = work / "server.log"
    server_log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-hooked", str(times_file), str(args.snapshot_every),
         "serve", "--port", str(port), "--data-dir", str(settings.data_dir), "--redis-url", store.url, "--log-level", "warning"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0)
    headers = multipart_headers(BOUNDARY)
    payload = multipart_body((ROOT / "tests" / "fixtures" / "recorded.wav").read_bytes(), "recorded.wav", BOUNDARY)
    out: dict = {}
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the service exited; see {log_path}")
            try:
                health = client.get("/health", timeout=2.0).json()
                if health.get("store") == "up" and health.get("index_ready"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() - started > 600:
                raise SystemExit(f"the service did not become ready; see {log_path}")
            time.sleep(0.2)
        log(f"service ready with {health['index_size']:,} entries after {time.monotonic() - started:.1f} s")
        if health["index_size"] < args.entries:
            raise SystemExit(f"the service did not load the filler snapshot (index_size {health['index_size']}); see {log_path}")
        miss = client.post("/recognize", content=payload, headers=headers).json()["cache"]
        assert miss["tier"] == "miss", miss
        for _ in range(20):
            assert client.post("/recognize", content=payload, headers=headers).json()["cache"]["tier"] == "exact"
        times_file.write_text("")  # saves before the measurement (start-up) do not count

        stop = threading.Event()
        exact: list[tuple[float, float]] = []
        health_samples: list[tuple[float, float]] = []
        wrong: list[str] = []

        def exact_hits() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0) as own:
                while not stop.is_set():
                    t0 = time.time()
                    response = own.post("/recognize", content=payload, headers=headers)
                    t1 = time.time()
                    cache = response.json()["cache"] if response.status_code == 200 else {}
                    if cache.get("tier") != "exact" or cache.get("entry") != miss["entry"]:
                        wrong.append(f"{response.status_code} {cache}")
                    exact.append((t0, t1))

        def healths() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0) as own:
                while not stop.is_set():
                    t0 = time.time()
                    response = own.get("/health")
                    t1 = time.time()
                    if response.status_code != 200:
                        wrong.append(f"/health {response.status_code}")
                    health_samples.append((t0, t1))
                    time.sleep(0.02)

        def changes() -> None:
            while not stop.wait(2.0):
                admin.xadd(keys.index_stream(), {"op": "del", "entry": os.urandom(16).hex()})

        threads = [threading.Thread(target=f, daemon=True) for f in (exact_hits, healths, changes)]
        log(f"measuring for {args.seconds:.0f} s (snapshots every {args.snapshot_every:.0f} s when changed)")
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        stop.set()
        for thread in threads:
            thread.join(180)
        saves = [(float(a), float(b)) for a, b, _ in (line.split() for line in times_file.read_text().splitlines())]
        exact_during, exact_between = split(exact, saves)
        health_during, health_between = split(health_samples, saves)
        out = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git": git_head(), "machine": machine_info(load_at_end=loadavg()),
            "entries": args.entries, "seconds": args.seconds, "snapshot_every_s": args.snapshot_every,
            "filler_ef_construction": FILLER_EF_CONSTRUCTION,
            "snapshot_bytes": snapshot_bytes(target),
            "saves": {"n": len(saves), "durations_s": [round(b - a, 2) for a, b in saves],
                      "share_of_time": round(sum(b - a for a, b in saves) / args.seconds, 3)},
            "exact": {"during": percentiles(exact_during), "between": percentiles(exact_between)},
            "health": {"during": percentiles(health_during), "between": percentiles(health_between)},
            "wrong_answers": wrong[:20], "wrong_answer_count": len(wrong),
        }
        for kind in ("exact", "health"):
            during, between = out[kind]["during"], out[kind]["between"]
            if during.get("n") and between.get("n"):
                out[kind]["p99_ratio"] = round(during["p99_ms"] / between["p99_ms"], 2)
                out[kind]["p50_ratio"] = round(during["p50_ms"] / between["p50_ms"], 2)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        server_log.close()
        client.close()
        admin.close()
        store.stop()
    (OUT_DIR / "snapshot.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{args.entries:,} entries, snapshot {out['snapshot_bytes'] / 1e6:.0f} MB; {out['saves']['n']} saves "
          f"({', '.join(f'{d:.1f}' for d in out['saves']['durations_s'])} s), {out['saves']['share_of_time'] * 100:.0f}% of the time")
    print("| requests | during a snapshot: n, p50, p99, max (ms) | between: n, p50, p99, max (ms) | p99 ratio |")
    print("|---|---|---|---|")
    for kind, label in (("exact", "POST /recognize, exact hit"), ("health", "GET /health")):
        d, b = out[kind]["during"], out[kind]["between"]
        print(f"| {label} | {d.get('n')}, {d.get('p50_ms')}, {d.get('p99_ms')}, {d.get('max_ms')} | "
              f"{b.get('n')}, {b.get('p50_ms')}, {b.get('p99_ms')}, {b.get('max_ms')} | {out[kind].get('p99_ratio')} |")
    print(f"wrong answers: {out['wrong_answer_count']}; load average at the end {loadavg()}; work dir {work}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
