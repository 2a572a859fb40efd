#!/usr/bin/env python3
"""Upstream engine benchmark (issue 11): what putting earmark in front of a recognition server
costs on a miss, and what a hit costs while the upstream is busy.

One command: it starts two `earmark serve` processes on loopback, each with its own embedded
store in a temporary directory, from this checkout (`python -m service`): the *upstream*
(engine pocketsphinx, standing in for any OpenAI-compatible server) and the *front* (engine
openai, `--upstream-url` the upstream). Audio is the committed test fixtures.

* misses: each clip through the front (a miss there and at the upstream), then straight to the
  upstream with `Cache-Control: no-cache` (its engine runs again): the difference is what the
  front adds (lookups, decoding, the WAV it sends, one more HTTP hop);
* hits, idle: exact hits at the front, one at a time;
* hits, upstream busy: the same while `--busy` clients keep sending requests with
  `Cache-Control: no-cache` (the front forwards each), each a new gain of a clip, so that the
  upstream (its fuzzy tier off) runs its engine for every one: they queue at the upstream's
  single pocketsphinx worker and in the front's engine queue.

    /work/main/.venv/bin/python bench/bench_upstream.py [--hits 100] [--busy 8]

Figures are printed and written to bench/out/upstream.json (gitignored).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import httpx
import numpy as np

from harness import OUT_DIR, free_port, git_head, loadavg, machine_info, summary

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
# 14 different recordings (the minimal pairs differ by design: each is a miss of its own).
CLIPS = ("recorded.wav", "weather.wav", "librivox_0890.flac", "librivox_0930.flac",
         *sorted(f"minimal_pairs/{path.name}" for path in (FIXTURES / "minimal_pairs").glob("*.flac")))


def serve(data_dir: Path, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port), "--data-dir",
                                str(data_dir), "--log-level", "warning", *args], cwd=ROOT, env=env,
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"earmark serve did not start; see {log}")
        time.sleep(0.2)


def scaled_wav(pcm: tuple[np.ndarray, int], gain: float) -> bytes:
    """The clip at another gain: new PCM, so a miss at the upstream every time."""
    samples, rate = pcm
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((samples * gain).astype("<i2").tobytes())
    return buffer.getvalue()


def post(client: httpx.Client, url: str, data: bytes, **headers) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.post(f"{url}/recognize", files={"file": ("clip", data)}, headers=headers)
    return time.perf_counter() - started, response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=100)
    parser.add_argument("--busy", type=int, default=8)
    args = parser.parse_args()
    clips = {name: (FIXTURES / name).read_bytes() for name in CLIPS}
    with tempfile.TemporaryDirectory(prefix="earmark-bench-upstream-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "up.toml").write_text("[thresholds]\nenabled = false\n")
        upstream, upstream_url = serve(tmp_path / "up", tmp_path / "up.log", "--engine", "pocketsphinx",
                                       "--config", str(tmp_path / "up.toml"))
        front, front_url = serve(tmp_path / "front", tmp_path / "front.log", "--engine", "openai",
                                 "--upstream-url", upstream_url)
        try:
            with httpx.Client(timeout=300) as client:
                misses = []
                for name, data in clips.items():
                    via_front, answer = post(client, front_url, data)
                    assert answer.json()["cache"]["tier"] == "miss", answer.text
                    direct, again = post(client, upstream_url, data, **{"Cache-Control": "no-cache"})
                    assert again.json()["cache"]["tier"] == "miss", again.text
                    misses.append({"clip": name, "duration_s": answer.json()["result"]["duration_s"],
                                   "front_ms": round(via_front * 1000, 1), "upstream_direct_ms": round(direct * 1000, 1),
                                   "added_ms": round((via_front - direct) * 1000, 1)})
                idle = []
                for _ in range(args.hits):
                    seconds, answer = post(client, front_url, clips["recorded.wav"])
                    assert answer.json()["cache"]["tier"] == "exact"
                    idle.append(seconds)

                stop = threading.Event()
                forwarded = []

                def keep_busy(seed: int) -> None:
                    rng = np.random.default_rng(seed)
                    with httpx.Client(timeout=300) as own:
                        while not stop.is_set():
                            seconds, answer = post(own, front_url, scaled_wav(pcm, rng.uniform(0.3, 0.9)),
                                                   **{"Cache-Control": "no-cache"})
                            forwarded.append(answer.status_code)

                pcm = (np.frombuffer(clips["recorded.wav"][44:], dtype="<i2"), 22050)
                workers = [threading.Thread(target=keep_busy, args=(n,)) for n in range(args.busy)]
                for worker in workers:
                    worker.start()
                time.sleep(2.0)
                busy = []
                for _ in range(args.hits):
                    seconds, answer = post(client, front_url, clips["recorded.wav"])
                    assert answer.json()["cache"]["tier"] == "exact"
                    busy.append(seconds)
                queue = client.get(f"{front_url}/metrics").text
                stop.set()
                for worker in workers:
                    worker.join()
                depth = [line for line in queue.splitlines() if line.startswith("earmark_engine_queue_depth ")]
        finally:
            for process in (front, upstream):
                process.terminate()
                process.wait(30)
    result = {
        "machine": machine_info(load_at_end=loadavg()), "commit": git_head(),
        "misses": misses,
        "misses_median_added_ms": float(np.median([m["added_ms"] for m in misses])),
        "misses_median_front_over_direct": float(np.median([m["front_ms"] / m["upstream_direct_ms"] for m in misses])),
        "hits_idle": summary(idle), "hits_upstream_busy": summary(busy),
        "busy_forwarded_statuses": {str(s): forwarded.count(s) for s in sorted(set(forwarded))},
        "front_engine_queue_depth_during_busy": depth[0].split()[-1] if depth else None,
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "upstream.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
