"""Shared plumbing for the benchmark scripts in bench/ (service, scale, store write).

The benchmarks are separate scripts, each run as `python bench/<script>.py`, so Python puts
bench/ on sys.path and they import this module as plain `harness`. It holds what they would
otherwise each carry a copy of, so a fix (a longer grace period for the server, a new field in
the machine description) lands in every benchmark at once:

* speech clips from espeak-ng: a fixed set of plain sentences, word orders built from them,
  and `speak`, which aims a clip at a target duration;
* `earmark serve` as a subprocess on a free loopback port, with its embedded store in a given
  data directory: started, waited on through GET /health, and stopped in stages;
* the multipart body of an upload, pre-encoded, and the per-stage lookup timings from /metrics;
* timing summaries (median and percentiles) and a description of the machine and the commit
  measured, for the JSON each benchmark writes.

Nothing here measures anything by itself; the scripts own their phases, tables and outputs.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import wave
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"
EARMARK = ROOT / ".venv" / "bin" / "earmark"
VOICE = "en-us+f2"

# Plain sentences for espeak-ng; clips are built by taking words from here until long enough.
SENTENCES = [
    "The quarterly report was sent to every branch office on Monday morning.",
    "Please hold while we connect your call to the next available agent.",
    "A light rain fell over the harbour as the ferry left the northern pier.",
    "The committee agreed to review the budget again after the summer break.",
    "Our records show that your last payment arrived three days after the due date.",
    "She measured the distance twice before cutting the long wooden board.",
    "The museum opens at nine and closes early on the first Sunday of each month.",
    "If the alarm sounds, leave the building by the nearest marked exit.",
    "The engineers replaced the old pump and tested the pressure for an hour.",
    "Fresh bread and warm soup were served to the volunteers at noon.",
    "The train to the airport departs from platform four every twenty minutes.",
    "He wrote the instructions on a card and left it beside the telephone.",
    "Customers may return unused items within thirty days with a receipt.",
    "The garden behind the library is quiet even in the middle of the day.",
    "We will publish the final results once every ballot has been counted.",
    "A small boat drifted slowly past the lighthouse in the evening fog.",
]


# ------------------------------------------------------------------------------------------
# Audio


def run_quiet(*args: str) -> None:
    """Run a command (espeak-ng, ffmpeg) with no stdin and no output; raise if it fails."""
    subprocess.run(args, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wav_duration_s(path: Path) -> float:
    """The duration of a WAV file, in seconds."""
    with wave.open(str(path), "rb") as handle:
        return handle.getnframes() / handle.getframerate()


def sentence_words(offset: int) -> list[str]:
    """The sentences in order, starting at sentence `offset`."""
    return " ".join(SENTENCES[offset:] + SENTENCES[:offset]).split()


def shuffled_words(seed: int) -> list[str]:
    """The vocabulary in a random order: speech no other clip contains (a genuine miss)."""
    vocabulary = sorted(set(" ".join(SENTENCES).lower().replace(",", "").replace(".", "").split()))
    random.Random(seed).shuffle(vocabulary)
    return vocabulary


def speak(target_s: float, path: Path, words: list[str], attempts: int = 4) -> float:
    """Write a WAV of about `target_s` seconds of espeak-ng speech; return its duration.

    The word count is corrected from the measured duration up to `attempts` times, until the
    clip is within 5% of the target.
    """
    count = max(3, round(target_s * 2.6))
    duration = 0.0
    for _ in range(attempts):
        text = " ".join((words * (1 + count // len(words)))[:count])
        run_quiet("espeak-ng", "-v", VOICE, "-w", str(path), text)
        duration = wav_duration_s(path)
        if abs(duration - target_s) <= 0.05 * target_s:
            break
        count = max(3, round(count * target_s / duration))
    return duration


def require_tools(parser: argparse.ArgumentParser, *tools: str) -> None:
    """Stop with a usage error if any of `tools` is not on PATH."""
    for tool in tools:
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on PATH")


# ------------------------------------------------------------------------------------------
# Server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: no orphan if we are killed


class Server:
    """`earmark serve` with its embedded store in `data_dir`, in its own session.

    Its own session keeps a terminal Ctrl-C from reaching it directly: the benchmark gets the
    signal and stops the server cleanly. Output goes to `log_path`; `port` 0 picks a free one;
    `env` adds to the environment it inherits.
    """

    def __init__(self, data_dir: Path, log_path: Path, port: int = 0, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [str(EARMARK), "serve", "--port", str(self.port), "--data-dir", str(data_dir), "--log-level", "warning",
             *extra_args],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent, env={**os.environ, **(env or {})},
        )

    def wait_healthy(self, client: httpx.Client, timeout_s: float = 60.0) -> dict:
        """Poll GET /health until the store is up and the index ready; return that /health body."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"earmark serve exited with code {self.process.returncode}; see {self.log_path}")
            try:
                response = client.get("/health", timeout=2.0)
                body = response.json() if response.status_code == 200 else {}
                if body.get("store") == "up" and body.get("index_ready", True):
                    return body
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise SystemExit(f"earmark serve did not become healthy within {timeout_s:.0f} s; see {self.log_path}")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGINT (uvicorn's graceful stop, which also stops the embedded store), then harder.

        A graceful stop waits up to `grace_s` for a request in flight (an engine run, if
        interrupted during a miss); uvicorn treats a second signal as "exit now", and the store
        and the engine worker die with it (they are started with PR_SET_PDEATHSIG).
        """
        process = self.process
        if process.poll() is None:
            for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                try:
                    process.send_signal(sig)
                    process.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


def multipart_body(data: bytes, filename: str, boundary: str) -> bytes:
    """A multipart/form-data body with one `file` field, encoded before any clock starts."""
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode()


def multipart_headers(boundary: str) -> dict:
    """The Content-Type header that goes with `multipart_body(..., boundary)`."""
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def stage_totals(client: httpx.Client) -> dict[str, tuple[float, float]]:
    """(sum seconds, count) of earmark_lookup_seconds per stage, from /metrics."""
    text = client.get("/metrics").text
    totals: dict[str, list[float]] = {}
    for kind, stage, value in re.findall(r'^earmark_lookup_seconds_(sum|count)\{stage="([^"]+)"\} (\S+)$', text, re.M):
        totals.setdefault(stage, [0.0, 0.0])[0 if kind == "sum" else 1] = float(value)
    return {stage: (s, c) for stage, (s, c) in totals.items()}


def stage_means_ms(before: dict, after: dict) -> dict[str, dict]:
    """Per stage, the lookups between two `stage_totals` readings: {"n", "mean_ms"}."""
    out = {}
    for stage, (total, count) in after.items():
        total0, count0 = before.get(stage, (0.0, 0.0))
        if count > count0:
            out[stage] = {"n": int(count - count0), "mean_ms": round((total - total0) / (count - count0) * 1000, 3)}
    return out


# ------------------------------------------------------------------------------------------
# Statistics and the record of a run


def summary(seconds: list[float], *, unit: str = "ms", digits: int = 3, percentiles: tuple[int, ...] = (90,),
            extremes: bool = True) -> dict:
    """Timings in seconds as {"n", "median_<unit>", "p<q>_<unit>"..., "min_<unit>", "max_<unit>"}.

    `unit` is "ms" or "us"; values are rounded to `digits`; min and max only with `extremes`.
    """
    values = np.asarray(seconds, dtype=np.float64) * {"ms": 1e3, "us": 1e6}[unit]
    row = {"n": int(values.size), f"median_{unit}": round(float(np.median(values)), digits)}
    for q in percentiles:
        row[f"p{q}_{unit}"] = round(float(np.percentile(values, q)), digits)
    if extremes:
        row[f"min_{unit}"] = round(float(values.min()), digits)
        row[f"max_{unit}"] = round(float(values.max()), digits)
    return row


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 2 decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(**fields) -> dict:
    """CPU count, platform and Python version, followed by the benchmark's own `fields`."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), **fields}


def print_final_load() -> None:
    """Print the load averages and core count (a blank line first), as a run's table starts."""
    print(f"\nload average at the end (1, 5, 15 min): {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} cores")


def git_head() -> str:
    """The commit measured (others' uncommitted edits may sit on top of it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)
        return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `finally` blocks stop the server and clean up."""
    signal.signal(signal.SIGTERM, _interrupt)
