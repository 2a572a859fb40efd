#!/usr/bin/env python3
"""Long uploads (issue 8): memory of the lookup path against the audio's 16-bit PCM, and a
one-hour recording end to end over HTTP.

Part 1, memory, one fresh process per file: the lookup path as the service runs it (a decode
pass for the canonical digest, then a decode pass for the fuzzy features; no PCM kept), its
peak RSS over the process's RSS before (VmHWM), against the size of the audio as 16 kHz
16-bit PCM (115 MB an hour). Target: at most 2x, whatever the container, rate or channels.
Beside each, Chromaprint's `fpcalc -length 0` (decode + fingerprint of the whole file) on the
same core, when it is installed (Debian's libchromaprint-tools). Files: an hour of speech as 16 kHz WAV, FLAC and 32 kbps MP3, and as 48 kHz stereo FLAC;
30 minutes of 48 kHz stereo silence as FLAC (a few hundred KB that decode to gigabytes); one
minute at 384 kHz.

Part 2, end to end (`--service`): `earmark serve` (the default engine unless `--engine`) with
its embedded store; the hour's WAV is a miss, the same bytes an exact hit, its FLAC a
canonical hit, its 32 kbps MP3 a fuzzy hit. Each request's time, tier and the server's peak
RSS growth (VmHWM) are printed.

Part 3, resting memory (`--resting N`, issue 21 item 9): `earmark serve` takes N long uploads
one after another (`--resting-minutes` of speech as 16 kHz WAV, with `Cache-Control: no-cache`
so that each one decodes and runs the engine), and its resting RSS (VmRSS once idle) is read
before, after each, and at the end. `--malloc-arena-max` runs it again with glibc's
MALLOC_ARENA_MAX set, to tell the allocator's arenas from a leak.

    .venv/bin/python bench/bench_long_upload.py [--minutes 60] [--service] [--engine whisper]
    .venv/bin/python bench/bench_long_upload.py --resting 10 [--resting-minutes 10] [--malloc-arena-max 2]

The hour of speech is the corpus's originals (bench/make_corpus.py) joined end to end, or
espeak-ng sentences when the corpus is absent. Files are cached in bench/data/long.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from harness import OUT_DIR, ROOT, SENTENCES, VOICE, Server, git_head, interrupt_on_sigterm, loadavg, machine_info, \
    require_tools, run_quiet

DATA = ROOT / "bench" / "data" / "long"
PCM_BYTES_PER_S = 16000 * 2
TARGET_RATIO = 2.0

_PROBE = r"""
import sys, time, json
sys.path.insert(0, sys.argv[2])
from earmark.fingerprint.canonical import PcmDigest
from earmark.fingerprint.decode import open_audio
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.verification import Verifier

def vm(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))

verifier = Verifier(FuzzyThresholds())
with open(sys.argv[3], "rb") as warm:
    verifier.features_of(open_audio(warm, 3600).chunks)  # imports, caches, FFT plans
before = vm("VmRSS")
with open(sys.argv[1], "rb") as source:
    started = time.perf_counter()
    digest, audio = PcmDigest(), open_audio(source, 4 * 3600)
    samples = 0
    for chunk in audio.chunks:
        digest.push(chunk)
        samples += chunk.size
    digest_s = time.perf_counter() - started
    source.seek(0)
    started = time.perf_counter()
    verifier.features_of(open_audio(source, 4 * 3600).chunks)
    features_s = time.perf_counter() - started
print(json.dumps({"peak_growth": vm("VmHWM") - before, "duration_s": samples / 16000,
                  "digest_s": digest_s, "features_s": features_s}))
"""


def ffmpeg(*args: str) -> None:
    run_quiet("ffmpeg", "-nostdin", "-v", "error", "-y", *args)


def make_speech(minutes: float) -> Path:
    """`minutes` of speech as a 16 kHz mono WAV, made once and cached."""
    DATA.mkdir(parents=True, exist_ok=True)
    seconds = int(minutes * 60)
    speech = DATA / f"speech_{seconds}s_16k.wav"
    if not speech.exists():
        originals = sorted((ROOT / "bench" / "data" / "corpus" / "originals").glob("*.wav"))
        joined = DATA / "joined.wav"
        if originals:
            run_quiet("sox", *map(str, originals), "-r", "16000", "-c", "1", "-b", "16", str(joined))
        else:
            text = DATA / "text.txt"
            text.write_text(" ".join(SENTENCES * 20))
            run_quiet("espeak-ng", "-v", VOICE, "-w", str(DATA / "espeak.wav"), "-f", str(text))
            run_quiet("sox", str(DATA / "espeak.wav"), "-r", "16000", "-c", "1", "-b", "16", str(joined))
        # Loop the speech to the length wanted.
        ffmpeg("-stream_loop", "-1", "-i", str(joined), "-t", str(seconds), "-c:a", "pcm_s16le", str(speech))
        joined.unlink()
    return speech


def make_inputs(minutes: float) -> dict[str, Path]:
    """The benchmark's files, made once and cached."""
    speech = make_speech(minutes)
    seconds = int(minutes * 60)
    files = {"16 kHz WAV": speech}
    for label, name, args in [
        ("16 kHz FLAC", "speech.flac", ["-c:a", "flac"]),
        ("32 kbps MP3", "speech_32k.mp3", ["-c:a", "libmp3lame", "-b:a", "32k"]),
        ("48 kHz stereo FLAC", "speech_48k_stereo.flac", ["-ar", "48000", "-ac", "2", "-c:a", "flac"]),
    ]:
        path = DATA / f"{seconds}s_{name}"
        if not path.exists():
            ffmpeg("-i", str(speech), *args, str(path))
        files[label] = path
    silence = DATA / "silence_30min_48k_stereo.flac"
    if not silence.exists():
        ffmpeg("-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", "-t", "1800", "-c:a", "flac", str(silence))
    files["30 min silence, 48 kHz stereo FLAC"] = silence
    high = DATA / "tone_1min_384k.flac"
    if not high.exists():
        ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=384000", "-t", "60", "-c:a", "flac", str(high))
    files["1 min at 384 kHz FLAC"] = high
    return files


ONE_CORE = ("taskset", "-c", "0") if shutil.which("taskset") else ()


def measure_lookup(path: Path) -> dict:
    """Part 1 for one file, in a fresh process on one core."""
    warm = ROOT / "tests" / "fixtures" / "recorded.wav"
    out = subprocess.run([*ONE_CORE, sys.executable, "-c", _PROBE, str(path), str(ROOT), str(warm)],
                         check=True, capture_output=True, text=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    if shutil.which("fpcalc"):
        # Chromaprint's decode + fingerprint of the whole file, on the same core, for comparison.
        started = time.perf_counter()
        subprocess.run([*ONE_CORE, "fpcalc", "-length", "0", "-raw", str(path)], capture_output=True)
        figures["fpcalc_s"] = time.perf_counter() - started
    return figures


def server_peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def end_to_end(files: dict[str, Path], engine: str | None) -> list[dict]:
    """Part 2: miss, exact, canonical and fuzzy for the long recording, over HTTP."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        extra = ("--engine", engine) if engine else ()
        server = Server(Path(tmp) / "data", Path(tmp) / "server.log", extra_args=extra)
        try:
            with httpx.Client(base_url=server.url, timeout=4 * 3600) as client:
                server.wait_healthy(client)
                for label, key, expected in [("miss", "16 kHz WAV", "miss"), ("exact", "16 kHz WAV", "exact"),
                                             ("canonical", "16 kHz FLAC", "canonical"),
                                             ("fuzzy (32 kbps MP3)", "32 kbps MP3", "fuzzy")]:
                    body = files[key].read_bytes()
                    before = server_peak_rss(server.process.pid)
                    started = time.perf_counter()
                    response = client.post("/recognize", files={"file": (files[key].name, body)})
                    elapsed = time.perf_counter() - started
                    answer = response.json()
                    cache = answer.get("cache", {})
                    rows.append({"request": label, "status": response.status_code, "tier": cache.get("tier"),
                                 "expected": expected, "seconds": round(elapsed, 2), "score": cache.get("score"),
                                 "upload_mb": round(len(body) / 2**20, 1),
                                 "server_peak_growth_mb": round((server_peak_rss(server.process.pid) - before) / 2**20),
                                 "words": len((answer.get("result") or {}).get("text", "").split())})
                    print(f"  {label:22} {response.status_code} tier={cache.get('tier')!s:9} {elapsed:8.2f} s  "
                          f"server peak RSS +{rows[-1]['server_peak_growth_mb']} MB  words={rows[-1]['words']}", flush=True)
        finally:
            server.stop()
    return rows


def server_rss(pid: int) -> int:
    """The server's resident set now, in bytes (its embedded store is another process)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def resting_rss(speech: Path, uploads: int, engine: str | None, env: dict[str, str], label: str) -> dict:
    """Part 3: the server's resting RSS before, after each of `uploads` long uploads, and at the end."""
    body = speech.read_bytes()
    warm = (ROOT / "tests" / "fixtures" / "recorded.wav").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        extra = ("--engine", engine) if engine else ()
        server = Server(Path(tmp) / "data", Path(tmp) / "server.log", extra_args=extra, env=env)
        try:
            with httpx.Client(base_url=server.url, timeout=3600) as client:
                server.wait_healthy(client)
                # A short request first: the engine's and the decoder's one-off allocations
                # (model weights, FFT plans, imports) are not what this measures.
                client.post("/recognize", files={"file": ("warm.wav", warm)}).raise_for_status()
                time.sleep(REST_S)
                rested = [server_rss(server.process.pid)]
                print(f"  [{label}] at rest after a short warm-up: {rested[0] / 2**20:.0f} MB", flush=True)
                for number in range(1, uploads + 1):
                    started = time.perf_counter()
                    answer = client.post("/recognize", files={"file": (speech.name, body)},
                                         headers={"Cache-Control": "no-cache"})
                    elapsed = time.perf_counter() - started
                    peak = server_peak_rss(server.process.pid)
                    time.sleep(REST_S)
                    rested.append(server_rss(server.process.pid))
                    print(f"  [{label}] upload {number:2}: {answer.status_code} {elapsed:6.1f} s, peak {peak / 2**20:5.0f} MB, "
                          f"at rest {rested[-1] / 2**20:5.0f} MB", flush=True)
                    answer.raise_for_status()
        finally:
            server.stop()
    return {"label": label, "env": env, "uploads": uploads, "upload_mb": round(len(body) / 2**20, 1),
            "rest_mb": [round(value / 2**20) for value in rested], "peak_mb": round(peak / 2**20),
            "growth_mb": round((rested[-1] - rested[0]) / 2**20)}


REST_S = 2.0  # idle time before reading the resting RSS: the request's threads have finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the long recording [60]")
    parser.add_argument("--service", action="store_true", help="also run part 2, end to end over HTTP")
    parser.add_argument("--engine", default=None, help="engine for parts 2 and 3 [the service's default]")
    parser.add_argument("--resting", type=int, default=0, metavar="N",
                        help="part 3 only: resting RSS over N long uploads (no-cache: each runs the engine)")
    parser.add_argument("--resting-minutes", type=float, default=10.0, help="length of part 3's uploads [10]")
    parser.add_argument("--malloc-arena-max", default=None, help="part 3 again with MALLOC_ARENA_MAX set to this")
    args = parser.parse_args()
    require_tools(parser, "ffmpeg", "sox", "espeak-ng")
    interrupt_on_sigterm()
    if args.resting:
        speech = make_speech(args.resting_minutes)
        print(f"Part 3: resting RSS over {args.resting} uploads of {args.resting_minutes:g} min (16 kHz WAV)")
        runs = [resting_rss(speech, args.resting, args.engine, {}, "default")]
        if args.malloc_arena_max:
            runs.append(resting_rss(speech, args.resting, args.engine, {"MALLOC_ARENA_MAX": args.malloc_arena_max},
                                    f"MALLOC_ARENA_MAX={args.malloc_arena_max}"))
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        out = OUT_DIR / "long_upload_resting.json"
        out.write_text(json.dumps({"machine": machine_info(), "git": git_head(), "load": loadavg(), "runs": runs},
                                  indent=2))
        print(f"written to {out}")
        return
    files = make_inputs(args.minutes)
    print(f"Part 1: lookup path, peak RSS growth against 16-bit PCM at 16 kHz (target <= {TARGET_RATIO:.0f}x)")
    print(f"  {'file':36} {'audio':>8} {'upload':>9} {'PCM':>8} {'peak +RSS':>10} {'ratio':>6} {'digest pass':>15} "
          f"{'features pass':>15} {'fpcalc':>15} {'both passes / fpcalc':>21}")
    lookups = []
    for label, path in files.items():
        figures = measure_lookup(path)
        pcm = figures["duration_s"] * PCM_BYTES_PER_S
        ratio = figures["peak_growth"] / pcm
        lookups.append({"file": label, "upload_mb": round(path.stat().st_size / 2**20, 2), **figures, "ratio": round(ratio, 2)})
        print(f"  {label:36} {figures['duration_s']:7.0f}s {path.stat().st_size / 2**20:8.1f}M {pcm / 2**20:7.0f}M "
              f"{figures['peak_growth'] / 2**20:9.0f}M {ratio:5.2f}x "
              f"{figures['digest_s']:6.2f}s ({figures['duration_s'] / max(figures['digest_s'], 1e-9):4.0f}x) "
              f"{figures['features_s']:6.2f}s ({figures['duration_s'] / max(figures['features_s'], 1e-9):4.0f}x) "
              + (f"{figures['fpcalc_s']:6.2f}s ({figures['duration_s'] / figures['fpcalc_s']:4.0f}x) "
                 f"{(figures['digest_s'] + figures['features_s']) / figures['fpcalc_s']:8.1f}x slower"
                 if "fpcalc_s" in figures else ""), flush=True)
    service = end_to_end(files, args.engine) if args.service else []
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / "long_upload.json"
    out.write_text(json.dumps({"machine": machine_info(), "git": git_head(), "load": loadavg(),
                               "lookups": lookups, "service": service}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
