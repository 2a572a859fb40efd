"""Character error rate of the offline Mandarin paths, through the HTTP API (issue 26, item 6).

A Mandarin-speaking operator following the README starts `earmark serve --language-routes
zh=whisper-base` and sends recordings without a `language`. For each real Mandarin recording
with an independent reference transcript, this benchmark does what that operator's client does,
on a fresh data directory:

1. POST /recognize with no `language`: identification hears Mandarin and the route sends the miss
   to Whisper base. Reported: tier, detected language, text, character error rate against the
   reference (punctuation and spaces removed), any character outside simplified script, and the
   engine's time over the audio's duration;
2. POST an MP3 copy (64 kbit/s, re-encoded for real by ffmpeg): it must come back from the cache
   (tier `fuzzy`) with the same text;
3. POST the recording with `language=zh-Hant`: the same engine, a profile of its own, answered in
   traditional characters (scored after conversion back to simplified, so both scripts have the
   same reference).

The other offline path, a local FunASR model directory (`--engine funasr --funasr-model DIR`),
needs weights this machine cannot download; with `--funasr-model DIR` the same run is made with
`--language-routes zh=funasr` on that directory. Writes bench/out/mandarin_cer.json.

    .venv/bin/python bench/bench_mandarin_cer.py [--clip path=reference ...] [--funasr-model DIR]

Needs ffmpeg for the MP3 copies and jiwer (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import harness
import httpx
import jiwer

from earmark.service.engines.chinese_script import in_script_text  # what earmark converts with

ROOT = harness.ROOT
FIXTURES = ROOT / "tests" / "fixtures"
OUT = ROOT / "bench" / "out" / "mandarin_cer.json"
# Real recordings with a reference that was not made by any engine measured here (provenance and
# licences: tests/fixtures/README.md). zh_mid.wav is left out: its only transcript is Whisper's.
CLIPS = {
    FIXTURES / "zh_asr_example.wav": "欢迎大家来体验达摩院推出的语音识别模型",
    FIXTURES / "zh_aishell_BAC009S0724W0121.flac": "广州市房地产中介协会分析",
    FIXTURES / "zh_aishell_BAC009S0764W0121.flac": "甚至出现交易几乎停滞的情况",
    FIXTURES / "zh_aishell_BAC009S0764W0122.flac": "一二线城市虽然也处于调整中",
}
NOT_CHARACTERS = re.compile(r"[\s\W_]+", re.UNICODE)


def characters(text: str) -> str:
    """The text as CER counts it: punctuation, spaces and symbols dropped (references have none)."""
    return NOT_CHARACTERS.sub("", text)


def mp3_copy(path: Path, workdir: Path) -> bytes:
    """`path` re-encoded to a 64 kbit/s MP3 by ffmpeg: a copy a client might send later."""
    target = workdir / f"{path.stem}.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(path), "-b:a", "64k", str(target)], check=True)
    return target.read_bytes()


def recognize(client: httpx.Client, data: bytes, filename: str, **fields: str) -> tuple[int, dict, float]:
    """POST /recognize; the status, the JSON body and the wall time in seconds."""
    start = time.perf_counter()
    response = client.post("/recognize", files={"file": (filename, data)}, data=fields, timeout=600.0)
    return response.status_code, response.json(), time.perf_counter() - start


def run_path(route: str, clips: dict[Path, str], extra_args: tuple[str, ...], workdir: Path) -> list[dict]:
    """Every clip through a fresh `earmark serve --language-routes zh=<route>`; one row per clip."""
    data_dir = workdir / f"data-{route}"
    server = harness.Server(data_dir, workdir / f"serve-{route}.log",
                            extra_args=("--language-routes", f"zh={route}", *extra_args))
    rows = []
    try:
        with httpx.Client(base_url=server.url) as client:
            server.wait_healthy(client, timeout_s=180.0)
            for path, reference in clips.items():
                status, body, wall = recognize(client, path.read_bytes(), path.name)
                row: dict = {"engine": route, "clip": path.name, "reference": reference, "status": status}
                if status != 200:
                    row["error"] = body
                    rows.append(row)
                    continue
                text = body["result"]["text"]
                cache = body["cache"]
                duration = body["result"]["duration_s"]
                row.update(
                    tier=cache["tier"], language=body["result"].get("language"), text=text,
                    cer=round(jiwer.cer(reference, characters(text)), 4),
                    not_simplified=[ch for ch in characters(text) if in_script_text(ch, "zh") != ch],
                    engine_s=cache.get("engine_seconds"), wall_s=round(wall, 3), duration_s=duration,
                )
                status, copy, _ = recognize(client, mp3_copy(path, workdir), f"{path.stem}.mp3")
                row["mp3_copy"] = {"status": status, "tier": copy.get("cache", {}).get("tier"),
                                   "same_text": copy.get("result", {}).get("text") == text}
                status, traditional, _ = recognize(client, path.read_bytes(), path.name, language="zh-Hant")
                if status == 200:
                    heard = traditional["result"]["text"]
                    row["zh_hant"] = {"text": heard, "tier": traditional["cache"]["tier"],
                                      "cer": round(jiwer.cer(reference, characters(in_script_text(heard, "zh"))), 4)}
                else:
                    row["zh_hant"] = {"status": status, "error": traditional}
                rows.append(row)
    finally:
        server.stop()
    return rows


def parse_clip(text: str) -> tuple[Path, str]:
    """`path=reference` from the command line."""
    path, _, reference = text.partition("=")
    if not reference:
        raise argparse.ArgumentTypeError(f"{text!r}: give a clip as path=reference transcript")
    return Path(path), reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=parse_clip, action="append", default=[],
                        help="another real Mandarin recording and its reference, as path=reference")
    parser.add_argument("--funasr-model", default="", help="a local FunASR model directory: measure that path too")
    args = parser.parse_args()
    harness.require_tools(parser, "ffmpeg")
    clips = {**CLIPS, **dict(args.clip)}
    paths = [("whisper-base", ())]
    if args.funasr_model:
        paths.append(("funasr", ("--funasr-model", args.funasr_model)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="earmark-cer-") as tmp:
        for route, extra in paths:
            rows += run_path(route, clips, extra, Path(tmp))
    print(f"{'engine':<13} {'clip':<36} {'tier':<6} {'lang':<5} {'CER':>6} {'zh-Hant CER':>11} {'engine/audio':>12}  mp3 copy")
    for row in rows:
        if row["status"] != 200:
            print(f"{row['engine']:<13} {row['clip']:<36} HTTP {row['status']}: {row['error']}")
            continue
        ratio = row["engine_s"] / row["duration_s"] if row.get("engine_s") and row.get("duration_s") else float("nan")
        hant = row["zh_hant"].get("cer", float("nan"))
        copy = row["mp3_copy"]
        print(f"{row['engine']:<13} {row['clip']:<36} {row['tier']:<6} {row['language'] or '-':<5} {row['cer']:>6.3f} "
              f"{hant:>11.3f} {ratio:>12.2f}  {copy['tier']}{'' if copy['same_text'] else ' (other text)'}")
        print(f"{'':<13} heard {row['text']!r}; reference {row['reference']!r}"
              + (f"; not simplified: {''.join(row['not_simplified'])}" if row["not_simplified"] else ""))
    for route, _ in paths:
        scored = [row for row in rows if row["engine"] == route and row["status"] == 200]
        if scored:  # over every reference character at once, not a mean of per-clip rates
            rate = jiwer.cer([r["reference"] for r in scored], [characters(r["text"]) for r in scored])
            print(f"{route}: CER {rate:.3f} over {sum(len(r['reference']) for r in scored)} reference characters "
                  f"in {len(scored)} recordings")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"machine": harness.machine_info(), "rows": rows}, ensure_ascii=False, indent=1))
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
