#!/usr/bin/env python3
"""Service latency benchmark (issue 3): cache hits against /health, and misses against audio length.

One command, one run: it starts `earmark serve` (with its embedded store, in a temporary data
directory) as a subprocess, waits for /health, and measures over HTTP on loopback with one
keep-alive httpx client:

* exact hits (POST /recognize with bytes seen before) against GET /health, interleaved, for
  ~3 s, ~10 s, ~30 s and ~45 s WAV clips (up to ~2 MB); target: an exact hit costs at most 3x a /health;
  beside them, the same bodies POSTed to a bare ASGI app under the same uvicorn that only reads
  them (bench/transport_floor.py): what receiving the bytes alone costs, in the same run;
* canonical hits (a FLAC of the same PCM, new bytes each time thanks to a different `title`
  tag) against misses, for the ~10 s clip;
* misses (the engine runs) against audio duration for ~3 s, ~10 s and ~30 s clips: the
  real-time factor. Each miss needs speech the store has not seen, in any tier: gain-changed
  copies of one clip are (rightly) fuzzy hits, so every miss clip speaks its own random
  word order.

Request bodies are encoded before the clock starts, so the client's multipart encoding is not
counted. Audio comes from espeak-ng (voice en-us+f2) and ffmpeg. The figures are printed
as a table and written to bench/out/service.json.

    .venv/bin/python bench/bench_service.py [--repeats 5] [--requests 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from harness import (EARMARK, OUT_DIR, VOICE, Server, free_port, git_head, interrupt_on_sigterm, loadavg, machine_info,
                     multipart_body, multipart_headers, print_final_load, require_tools, run_quiet, sentence_words,
                     shuffled_words, speak, stage_means_ms, stage_totals, summary)

DURATIONS_S = (3, 10, 30, 45)  # 45 s of 22.05 kHz 16-bit WAV is ~2 MB: the top of the exact-hit target
CANONICAL_CLIP_S = 10
WARM_ROUNDS = 20  # interleaved rounds run before measuring
EXACT_TARGET_RATIO = 3.0


# ------------------------------------------------------------------------------------------
# Audio (speech clips from harness.speak)


def flac_copy(source: Path, path: Path, title: str) -> None:
    """Same PCM, different bytes: a FLAC whose only difference is its title tag."""
    run_quiet("ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), "-c:a", "flac",
              "-metadata", f"title={title}", str(path))


# ------------------------------------------------------------------------------------------
# Requests


class Uploads:
    """Multipart bodies encoded ahead of time, so the clock only sees the request itself."""

    boundary = "earmark-bench-9f2c1a"

    def body(self, data: bytes, filename: str) -> bytes:
        return multipart_body(data, filename, self.boundary)

    @property
    def headers(self) -> dict:
        return multipart_headers(self.boundary)


class Probe:
    """Times requests on one keep-alive client and checks the tier each one reports."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.uploads = Uploads()
        self.unexpected: list[str] = []

    def health(self) -> float:
        started = time.perf_counter()
        response = self.client.get("/health")
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed

    def recognize(self, body: bytes, expect: str, label: str) -> tuple[float, dict]:
        started = time.perf_counter()
        response = self.client.post("/recognize", content=body, headers=self.uploads.headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f"{label}: HTTP {response.status_code}: {response.text[:300]}")
        answer = response.json()
        tier = answer["cache"]["tier"]
        if tier != expect:
            self.unexpected.append(f"{label}: expected {expect}, got {tier}")
        return elapsed, answer

    def stage_totals(self) -> dict[str, tuple[float, float]]:
        """(sum seconds, count) of earmark_lookup_seconds per stage, from /metrics."""
        return stage_totals(self.client)


# ------------------------------------------------------------------------------------------
# The run


def wait_for_floor(client: httpx.Client, timeout_s: float = 30.0) -> None:
    """Wait until transport_floor.py answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.post("/", content=b"x").raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise SystemExit("bench/transport_floor.py did not start") from None
            time.sleep(0.1)


def time_floor(client: httpx.Client, body: bytes, headers: dict) -> float:
    """One POST of `body` to the transport floor (bench/transport_floor.py), timed as earmark's are."""
    started = time.perf_counter()
    response = client.post("/", content=body, headers=headers)
    elapsed = time.perf_counter() - started
    if response.headers.get("x-received") != str(len(body)):
        raise SystemExit(f"transport floor received {response.headers.get('x-received')} of {len(body)} bytes")
    return elapsed


def prepare_audio(work: Path, requests: int, repeats: int) -> dict:
    """All clips, made before the server starts so audio tools do not compete with it."""
    audio = work / "audio"
    audio.mkdir()
    clips = {}
    for i, target in enumerate(DURATIONS_S):
        path = audio / f"clip{target}s.wav"
        clips[target] = {"path": path, "duration_s": speak(target, path, sentence_words(5 * i))}
    warmup = audio / "warmup.wav"
    speak(2, warmup, sentence_words(11))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        # Misses: new words in a new order each time. (Gain-changed copies of one clip no longer
        # miss: the fuzzy tier rightly answers them.)
        miss_jobs: dict[int, list] = {}
        for target in DURATIONS_S:
            miss_jobs[target] = []
            for k in range(repeats):
                path = audio / f"miss{target}s_{k}.wav"
                future = pool.submit(speak, target, path, shuffled_words(1000 * target + k))
                miss_jobs[target].append((path, future))
        flacs = []
        jobs = []
        for n in range(WARM_ROUNDS + requests):
            path = audio / f"canon{CANONICAL_CLIP_S}s_{n}.flac"
            jobs.append(pool.submit(flac_copy, clips[CANONICAL_CLIP_S]["path"], path, str(n)))
            flacs.append(path)
        for job in jobs:
            job.result()
        misses = {t: [(path, future.result()) for path, future in jobs_t] for t, jobs_t in miss_jobs.items()}
    return {"clips": clips, "warmup": warmup, "misses": misses, "flacs": flacs}


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="earmark-bench-"))
    server = client = floor = floor_client = None
    try:
        print(f"preparing audio in {work} ...", flush=True)
        audio = prepare_audio(work, args.requests, args.repeats)
        clips = audio["clips"]
        for target, clip in clips.items():
            print(f"  ~{target} s clip: {clip['duration_s']:.2f} s, {clip['path'].stat().st_size} bytes WAV")

        server = Server(work / "data", work / "server.log", args.port)
        floor_port = free_port()
        floor = subprocess.Popen([sys.executable, str(Path(__file__).with_name("transport_floor.py")), str(floor_port)],
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        floor_client = httpx.Client(base_url=f"http://127.0.0.1:{floor_port}", timeout=60.0)
        client = httpx.Client(base_url=server.url, timeout=600.0)
        probe = Probe(client)
        up = server.wait_healthy(probe.client)
        print(f"earmark serve up on {server.url}: {up}", flush=True)
        uploads = probe.uploads
        read = lambda path: uploads.body(Path(path).read_bytes(), Path(path).name)  # noqa: E731

        # Warm-up: the engine worker process starts on the first miss; then seed one entry per clip.
        started = time.perf_counter()
        probe.recognize(read(audio["warmup"]), "miss", "warm-up miss")
        print(f"warm-up miss (engine worker start): {time.perf_counter() - started:.2f} s", flush=True)
        originals = {t: read(c["path"]) for t, c in clips.items()}
        for target in DURATIONS_S:
            probe.recognize(originals[target], "miss", f"seed miss {target}s")

        # Phase 1: fast requests, interleaved in a shuffled order each round.
        rng = random.Random(1234)
        flac_bodies = [read(p) for p in audio["flacs"]]
        samples: dict[str, list[float]] = {name: [] for name in ("health", *[f"exact_{t}s" for t in DURATIONS_S],
                                                                 f"canonical_{CANONICAL_CLIP_S}s",
                                                                 *[f"floor_{t}s" for t in DURATIONS_S])}
        server_ms: dict[str, list[float]] = {name: [] for name in samples if name != "health" and not name.startswith("floor_")}
        wait_for_floor(floor_client)
        ops = list(samples)
        warm_rounds = WARM_ROUNDS
        print(f"phase 1: {args.requests} rounds of {', '.join(ops)} (+{warm_rounds} warm-up rounds) ...", flush=True)
        stages_before = None
        for round_no in range(warm_rounds + args.requests):
            if round_no == warm_rounds:
                stages_before = probe.stage_totals()
            rng.shuffle(ops)
            for op in ops:
                if op == "health":
                    elapsed, answer = probe.health(), None
                elif op.startswith("floor_"):
                    elapsed, answer = time_floor(floor_client, originals[int(op[6:-1])], uploads.headers), None
                elif op.startswith("exact_"):
                    target = int(op[6:-1])
                    elapsed, answer = probe.recognize(originals[target], "exact", op)
                else:
                    elapsed, answer = probe.recognize(flac_bodies[round_no], "canonical", op)
                if round_no >= warm_rounds:
                    samples[op].append(elapsed)
                    if answer is not None:
                        server_ms[op].append(answer["cache"]["elapsed_ms"])
        fast_stages = stage_means_ms(stages_before, probe.stage_totals())

        # Phase 2: misses, the three durations interleaved; each clip is new speech.
        print(f"phase 2: {args.repeats} misses for each of {DURATIONS_S} s ...", flush=True)
        misses: dict[int, list[dict]] = {t: [] for t in DURATIONS_S}
        stages_before = probe.stage_totals()
        for k in range(args.repeats):
            for target in DURATIONS_S:
                path, duration = audio["misses"][target][k]
                elapsed, answer = probe.recognize(read(path), "miss", f"miss {target}s #{k}")
                tier = answer["cache"]["tier"]
                print(f"  {target:>2} s clip #{k} ({duration:.2f} s): {elapsed:.2f} s, tier {tier}", flush=True)
                if tier == "miss":
                    misses[target].append({"audio_s": duration, "elapsed_s": elapsed,
                                           "server_ms": answer["cache"]["elapsed_ms"], "entry": answer["cache"]["entry"]})
        miss_stages = stage_means_ms(stages_before, probe.stage_totals())
        for target in DURATIONS_S:
            for miss in misses[target]:
                info = probe.client.get(f"/entries/{miss['entry']}")
                if info.status_code == 200:
                    miss["engine_s"] = info.json()["entry"]["engine_seconds"]

        return report(args, clips, samples, server_ms, fast_stages, misses, miss_stages, probe.unexpected)
    finally:
        if floor_client is not None:
            floor_client.close()
        if floor is not None:
            floor.terminate()
            floor.wait(10)
        if client is not None:
            client.close()
        if server is not None:
            print("stopping earmark serve ...", flush=True)
            server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(args, clips, samples, server_ms, fast_stages, misses, miss_stages, unexpected) -> dict:
    rows = {name: summary(values) for name, values in samples.items()}
    for name, values in server_ms.items():
        rows[name]["server_elapsed_median_ms"] = round(float(np.median(values)), 3)
    rtf = {}
    for target in DURATIONS_S:
        measured = misses[target]
        if not measured:
            continue
        row = summary([m["elapsed_s"] for m in measured])
        row["server_elapsed_median_ms"] = round(float(np.median([m["server_ms"] for m in measured])), 3)
        timed = [m for m in measured if "engine_s" in m]
        if timed:
            row["engine_median_ms"] = round(float(np.median([m["engine_s"] for m in timed])) * 1000, 3)
        rows[f"miss_{target}s"] = row
        rtf[f"{target}s"] = {
            "audio_s_median": round(float(np.median([m["audio_s"] for m in measured])), 3),
            "miss_rtf": round(float(np.median([m["elapsed_s"] / m["audio_s"] for m in measured])), 3),
            "engine_rtf": round(float(np.median([m["engine_s"] / m["audio_s"] for m in timed])), 3) if timed else None,
            "miss_rtf_min": round(min(m["elapsed_s"] / m["audio_s"] for m in measured), 3),
            "engine_rtf_min": round(min(m["engine_s"] / m["audio_s"] for m in timed), 3) if timed else None,
            "overhead_ms": round(float(np.median([(m["elapsed_s"] - m["engine_s"]) * 1000 for m in timed])), 1) if timed else None,
            "per_request": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()} for m in measured],
        }

    health = rows["health"]["median_ms"]
    ratios = {f"exact_{t}s_over_health": round(rows[f"exact_{t}s"]["median_ms"] / health, 2) for t in DURATIONS_S}
    ratios |= {f"floor_{t}s_over_health": round(rows[f"floor_{t}s"]["median_ms"] / health, 2) for t in DURATIONS_S}
    c = CANONICAL_CLIP_S
    canon = rows[f"canonical_{c}s"]["median_ms"]
    ratios[f"canonical_{c}s_over_exact_{c}s"] = round(canon / rows[f"exact_{c}s"]["median_ms"], 2)
    if f"miss_{c}s" in rows:
        miss = rows[f"miss_{c}s"]["median_ms"]
        ratios[f"canonical_{c}s_over_miss_{c}s"] = round(canon / miss, 5)
        ratios[f"miss_{c}s_over_canonical_{c}s"] = round(miss / canon, 1)

    result = {
        "benchmark": "service",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(loadavg_at_end=loadavg(), git_head=git_head(),
                                note="shared machine; client, server, store and engine worker on the same cores"),
        "config": {"requests": args.requests, "repeats": args.repeats, "voice": VOICE, "http": "httpx keep-alive, loopback",
                   "timing": "client wall time per request, multipart body pre-encoded"},
        "clips": {f"{t}s": {"duration_s": round(c["duration_s"], 3), "wav_bytes": c["path"].stat().st_size} for t, c in clips.items()},
        "results": rows,
        "ratios": ratios,
        "target": {"exact_over_health_max": EXACT_TARGET_RATIO,
                   "met": ratios[f"exact_{CANONICAL_CLIP_S}s_over_health"] <= EXACT_TARGET_RATIO},
        "real_time_factor": rtf,
        "stage_means": {"phase1_hits": fast_stages, "phase2_misses": miss_stages},
        "unexpected_tiers": unexpected,
    }

    print_final_load()
    print(f"{'request':<16}{'n':>5}{'median ms':>12}{'p90 ms':>11}{'server ms':>11}{'engine ms':>11}")
    for name, row in rows.items():
        server = row.get("server_elapsed_median_ms")
        engine = row.get("engine_median_ms")
        print(f"{name:<16}{row['n']:>5}{row['median_ms']:>12.2f}{row['p90_ms']:>11.2f}"
              f"{'' if server is None else f'{server:.2f}':>11}{'' if engine is None else f'{engine:.1f}':>11}")
    print("(server ms: the cache.elapsed_ms the service reports; engine ms: the entry's engine_seconds)")
    print()
    print("ratios (medians):")
    for t in DURATIONS_S:
        mark = "  target <= 3x: " + ("met" if ratios[f"exact_{t}s_over_health"] <= EXACT_TARGET_RATIO else "NOT met")
        print(f"  exact hit {t:>2} s clip / health        {ratios[f'exact_{t}s_over_health']:>8.2f}x{mark}"
              f"  (the transport alone: {ratios[f'floor_{t}s_over_health']:.2f}x)")
    if f"canonical_{c}s_over_miss_{c}s" in ratios:
        print(f"  canonical {c} s / miss {c} s           {ratios[f'canonical_{c}s_over_miss_{c}s']:>8.4f}  "
              f"(a canonical hit is {ratios[f'miss_{c}s_over_canonical_{c}s']:.0f}x faster than a miss)")
    print(f"  canonical {c} s / exact {c} s          {ratios[f'canonical_{c}s_over_exact_{c}s']:>8.2f}x")
    print("real-time factor of a miss (median over requests of time / audio duration):")
    for key, value in rtf.items():
        engine = "n/a" if value["engine_rtf"] is None else f"{value['engine_rtf']:.3f}"
        overhead = "n/a" if value["overhead_ms"] is None else f"{value['overhead_ms']:.0f} ms"
        print(f"  {key:>4} clips (~{value['audio_s_median']:.2f} s): miss RTF {value['miss_rtf']:.3f} "
              f"(min {value['miss_rtf_min']:.3f}), engine RTF {engine}, non-engine time {overhead}")
    print("mean time per lookup stage (server, from /metrics):")
    for phase, stages in result["stage_means"].items():
        print(f"  {phase}: " + ", ".join(f"{s} {v['mean_ms']:.2f} ms (n={v['n']})" for s, v in stages.items()))
    if unexpected:
        print(f"UNEXPECTED TIERS ({len(unexpected)}): " + "; ".join(unexpected[:5]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="misses measured per clip duration [5]")
    parser.add_argument("--requests", type=int, default=200, help="health / exact / canonical requests each [200]")
    parser.add_argument("--port", type=int, default=0, help="port for earmark serve [a free one]")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "service.json", help="JSON output [bench/out/service.json]")
    parser.add_argument("--keep", action="store_true", help="keep the temporary audio, data and server log")
    args = parser.parse_args()
    if args.repeats < 1 or args.requests < 1:
        parser.error("--repeats and --requests must be at least 1")
    require_tools(parser, "espeak-ng", "ffmpeg")
    if not EARMARK.exists():
        parser.error(f"{EARMARK} not found: run `make serve` or install earmark into .venv first")
    interrupt_on_sigterm()
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; the server was stopped", file=sys.stderr)
        sys.exit(130)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
