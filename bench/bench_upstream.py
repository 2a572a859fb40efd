#!/usr/bin/env python3
"""Upstream engine benchmark (issue 11): what putting earmark in front of a recognition server
costs on a miss, and what a hit costs while the upstream is busy.

One command: it starts two `earmark serve` processes on loopback, each with its own embedded
store in a temporary directory, from this checkout (`python -m earmark`): the *upstream*
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

Then (issue 21, item 3) what a hostile or broken upstream costs:

* huge: a fake OpenAI-compatible upstream (in this process) answers 200 with a `--huge-mb`
  (400) MB `{"text": "aaaa..."}`, streamed as fast as the front reads it, to `--huge-requests`
  (1) transcriptions at once. Meanwhile the front's RSS is sampled every 10 ms
  (/proc/<pid>/status), and /health and /lookup are asked one after another: the figures are the
  RSS growth over its resting size, and the slowest /health and /lookup;
* parse: the largest answer the front reads for 4 s, 1 h and 4 h of audio (its byte limit),
  shaped to cost the most to parse (segments of token lists), parsed as the engine does (on a
  worker thread), while the event loop's longest stall between 5 ms ticks is measured
  (json.loads holds the GIL), with tracemalloc's peak.

    /work/main/.venv/bin/python bench/bench_upstream.py [--hits 100] [--busy 8] \
        [--scenario all|cost|huge|parse] [--huge-mb 400] [--huge-requests 1]

Figures are printed and written to bench/out/upstream.json (gitignored).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
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
    process = subprocess.Popen([sys.executable, "-m", "earmark", "serve", "--port", str(port), "--data-dir",
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
    parser.add_argument("--scenario", choices=("all", "cost", "huge", "parse"), default="all")
    parser.add_argument("--huge-mb", type=int, default=400)
    parser.add_argument("--huge-requests", type=int, default=1)
    args = parser.parse_args()
    result: dict = {"machine": None, "commit": git_head()}
    if args.scenario in ("all", "cost"):
        result.update(cost(args))
    if args.scenario in ("all", "huge"):
        result["huge_answer"] = huge_answer(args.huge_mb, args.huge_requests)
    if args.scenario in ("all", "parse"):
        result["parse_at_the_limit"] = parse_at_the_limit()
    result["machine"] = machine_info(load_at_end=loadavg())
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "upstream.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def cost(args) -> dict:
    """What the front adds to a miss, and what a hit costs with the upstream idle and busy."""
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
    return {
        "misses": misses,
        "misses_median_added_ms": float(np.median([m["added_ms"] for m in misses])),
        "misses_median_front_over_direct": float(np.median([m["front_ms"] / m["upstream_direct_ms"] for m in misses])),
        "hits_idle": summary(idle), "hits_upstream_busy": summary(busy),
        "busy_forwarded_statuses": {str(s): forwarded.count(s) for s in sorted(set(forwarded))},
        "front_engine_queue_depth_during_busy": depth[0].split()[-1] if depth else None,
    }


class HugeUpstream:
    """An OpenAI-compatible upstream on loopback (uvicorn in a thread of this process) whose
    every transcription answer is 200 `{"text": "aaaa..."}` of `size` bytes, generated as it is
    sent; `sent` counts the bytes handed over before the front hung up."""

    CHUNK = b"a" * (1 << 20)

    def __init__(self, size: int) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        self.sent = 0

        async def body(request):
            yield b'{"text": "'
            while self.sent < size:
                yield self.CHUNK
                self.sent += len(self.CHUNK)
                if await request.is_disconnected():  # uvicorn drops what is sent after a hang-up
                    return
            yield b'"}'

        async def transcriptions(request):
            await request.body()
            return StreamingResponse(body(request), media_type="application/json")

        async def models(request):
            return JSONResponse({"data": []})

        app = Starlette(routes=[Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
                                Route("/v1/models", models)])
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident set size (or VmHWM, its peak) in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(field)


def huge_answer(size_mb: int, requests: int) -> dict:
    """The front's memory growth and its slowest /health and /lookup while `requests`
    transcriptions each get a `size_mb` MB answer."""
    clip = (FIXTURES / "recorded.wav").read_bytes()
    other = (FIXTURES / "weather.wav").read_bytes()
    upstream = HugeUpstream(size_mb << 20)
    with tempfile.TemporaryDirectory(prefix="earmark-bench-huge-") as tmp, upstream as upstream_url:
        tmp_path = Path(tmp)
        front, front_url = serve(tmp_path / "front", tmp_path / "front.log", "--engine", "openai",
                                 "--upstream-url", upstream_url)
        try:
            with httpx.Client(timeout=600) as client:
                client.post(f"{front_url}/lookup", files={"file": ("w.wav", other)})  # warm: first-call costs
                time.sleep(1.0)
                resting = rss_mb(front.pid)
                stop = threading.Event()
                peak = [resting]
                health: list[float] = []
                lookups: list[float] = []

                def sample() -> None:
                    while not stop.is_set():
                        peak[0] = max(peak[0], rss_mb(front.pid))
                        time.sleep(0.01)

                def ask(path: str, seconds: list[float], **kwargs) -> None:
                    with httpx.Client(timeout=600) as own:
                        while not stop.is_set():
                            started = time.perf_counter()
                            (own.post if kwargs else own.get)(f"{front_url}{path}", **kwargs)
                            seconds.append(time.perf_counter() - started)

                watchers = [threading.Thread(target=sample),
                            threading.Thread(target=ask, args=("/health", health)),
                            threading.Thread(target=ask, args=("/lookup", lookups),
                                             kwargs={"files": {"file": ("w.wav", other)}})]
                for watcher in watchers:
                    watcher.start()
                time.sleep(0.5)
                started = time.perf_counter()
                answers: list[httpx.Response] = []

                def transcribe() -> None:
                    with httpx.Client(timeout=600) as own:
                        answers.append(own.post(f"{front_url}/recognize", files={"file": ("a.wav", clip)},
                                                headers={"Cache-Control": "no-cache"}))

                senders = [threading.Thread(target=transcribe) for _ in range(requests)]
                for sender in senders:
                    sender.start()
                for sender in senders:
                    sender.join()
                elapsed = time.perf_counter() - started
                time.sleep(1.0)  # what the answer left behind, and the store's write if it was cached
                stop.set()
                for watcher in watchers:
                    watcher.join()
                metrics = client.get(f"{front_url}/metrics").text
                after = rss_mb(front.pid)
        finally:
            front.terminate()
            front.wait(30)
    outcomes = {line.split("{")[1].split("}")[0]: float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("earmark_upstream_requests_total{")}
    return {
        "answer_mb": size_mb, "requests": requests,
        "statuses": {str(s): [a.status_code for a in answers].count(s) for s in {a.status_code for a in answers}},
        "message": (answers[0].json().get("msg") or "")[:400] if answers else None,
        "upstream_outcomes": outcomes,
        "upstream_mb_sent": round(upstream.sent / 2**20, 1),
        "seconds_to_answer": round(elapsed, 2),
        "front_rss_resting_mb": round(resting, 1), "front_rss_peak_mb": round(peak[0], 1),
        "front_rss_growth_mb": round(peak[0] - resting, 1), "front_rss_after_mb": round(after, 1),
        "health_during": summary(health, percentiles=(50, 99)) | {"max_ms": round(max(health) * 1000, 1)},
        "lookup_during": summary(lookups, percentiles=(50, 99)) | {"max_ms": round(max(lookups) * 1000, 1)},
    }


def parse_at_the_limit() -> dict:
    """Parse, as the openai engine does, the costliest answer it reads for 4 s, 1 h and 4 h of
    audio: its byte limit filled with segments of token lists (the most Python objects per
    byte that the protocol allows)."""
    from earmark.service.engines.upstream.openai import OpenAIUpstreamEngine
    from earmark.service.engines.transcript_limit import TranscriptTooLong
    from earmark.service.engines.upstream.base import UpstreamConfig
    from earmark.service.pipeline.profile import Profile

    engine = OpenAIUpstreamEngine(UpstreamConfig(url="http://upstream.invalid"))
    profile = Profile(engine="openai", model="whisper-1", revision=engine.revision, language="auto", use_itn=True,
                      hotwords=(), prompt="")
    figures = []
    for audio_s in (4.0, 3600.0, 4 * 3600.0):
        limit = engine.answer_limit(audio_s)
        segment = json.dumps({"start": 0.0, "end": 1.0, "text": "a", "tokens": [50364] * 2000})
        count = max(1, (limit - 64) // (len(segment) + 1))
        answer = ('{"text": "a", "segments": [' + ",".join([segment] * count) + "]}").encode()
        assert len(answer) <= limit

        async def timed(answer: bytes, audio_s: float) -> tuple[float, float]:
            stall = 0.0
            done = asyncio.Event()

            async def tick() -> None:
                nonlocal stall
                last = time.perf_counter()
                while not done.is_set():
                    await asyncio.sleep(0.005)
                    now = time.perf_counter()
                    stall = max(stall, now - last - 0.005)
                    last = now

            ticker = asyncio.create_task(tick())
            started = time.perf_counter()
            try:
                await asyncio.to_thread(engine._transcript, answer, profile, audio_s)
            except TranscriptTooLong:
                pass
            seconds = time.perf_counter() - started
            done.set()
            await ticker
            return seconds, stall

        seconds, stall = asyncio.run(timed(answer, audio_s))
        tracemalloc.start()
        try:
            engine._transcript(answer, profile, audio_s)
        except TranscriptTooLong:
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        figures.append({"audio_s": audio_s, "answer_limit_bytes": limit, "answer_bytes": len(answer),
                        "parse_seconds": round(seconds, 3), "event_loop_longest_stall_ms": round(stall * 1000, 1),
                        "tracemalloc_peak_mb": round(peak / 2**20, 1)})
    return {"answers": figures}


if __name__ == "__main__":
    main()
