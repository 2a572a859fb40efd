#!/usr/bin/env python3
"""Store memory per second of cached audio: every key the service writes, measured (issue 25).

Starts a real store (the embedded Valkey earmark ships) and `earmark serve --redis-url` on it,
caches real recordings (tests/fixtures and, when installed, Debian's pocketsphinx-testdata),
then uploads a 48 kbps MP3 copy of each (a fuzzy hit: a remembered verdict, a kept query
print, its events). Then it sums `MEMORY USAGE` over every key under the service's prefix,
by kind of key, and the stored length of each field of the entry hashes, and divides by the
seconds of audio cached (the entries' `duration_s`). With --bulk-dir, the bytes the service
kept in its bulk store (index/bulk.py) are reported apart: they are on disk, not in memory.

    .venv/bin/python bench/bench_footprint.py [--engine whisper] [--limit 0] [--bulk-dir DIR]

Writes bench/out/footprint.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import redis

from harness import OUT_DIR, ROOT, Server, git_head, machine_info, multipart_body, multipart_headers
from earmark.index.embedded import EmbeddedServer

PREFIX = "earmark:"
TESTDATA = Path("/usr/share/pocketsphinx/test/data")


def recordings(limit: int) -> list[Path]:
    """Real speech recordings on this machine: the repo's fixtures and pocketsphinx-testdata's."""
    fixtures = ROOT / "tests" / "fixtures"
    found = sorted(fixtures.glob("*.wav")) + sorted(fixtures.glob("*.flac"))
    found += sorted((fixtures / "minimal_pairs").glob("*_a.flac"))
    if TESTDATA.is_dir():
        found += sorted(TESTDATA.rglob("*.wav")) + sorted(TESTDATA.rglob("*.raw"))
    return found[:limit] if limit else found


def as_upload(path: Path, work: Path) -> bytes:
    """The recording as uploaded: headerless .raw (16 kHz s16le mono) wrapped as WAV."""
    if path.suffix != ".raw":
        return path.read_bytes()
    out = work / (path.stem + ".wav")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "s16le", "-ar", "16000", "-ac", "1", "-i", str(path),
                    str(out)], check=True)
    return out.read_bytes()


def mp3_copy(data: bytes, work: Path, name: str) -> bytes:
    """A 48 kbps MP3 re-encoding: the fuzzy tier's usual copy."""
    source, out = work / f"{name}.src", work / f"{name}.mp3"
    source.write_bytes(data)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-c:a", "libmp3lame", "-b:a", "48k",
                    str(out)], check=True)
    return out.read_bytes()


def kind_of(key: bytes) -> str:
    """The kind of key, by its name under the prefix (index/keys.py)."""
    rest = key.decode()[len(PREFIX):]
    return rest.split(":", 1)[0].split("{", 1)[0] or rest


def measure(client: redis.Redis) -> dict:
    """MEMORY USAGE by kind of key, stored field lengths of the entry hashes, and audio seconds."""
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    fields: dict[str, int] = defaultdict(int)
    seconds, entries = 0.0, 0
    for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
        usage = client.memory_usage(key, samples=0) or 0
        kind = kind_of(key)
        by_kind[kind][0] += 1
        by_kind[kind][1] += usage
        if kind == "entry":
            row = client.hgetall(key)
            entries += 1
            if row.get(b"negative") != b"1":
                seconds += float(row.get(b"duration_s", b"0"))
            for name, value in row.items():
                fields[name.decode()] += len(value)
    total = sum(usage for _, usage in by_kind.values())
    return {
        "audio_s": round(seconds, 2),
        "entries": entries,
        "total_bytes": total,
        "bytes_per_s": round(total / seconds, 1) if seconds else None,
        "by_kind": {kind: {"keys": n, "bytes": b, "bytes_per_s": round(b / seconds, 1) if seconds else None}
                    for kind, (n, b) in sorted(by_kind.items(), key=lambda item: -item[1][1])},
        "entry_fields_bytes_per_s": {name: round(size / seconds, 1) if seconds else None
                                     for name, size in sorted(fields.items(), key=lambda item: -item[1])},
    }


def bulk_bytes(bulk_dir: Path | None) -> int:
    """Bytes the bulk store holds on disk (0 without one)."""
    if bulk_dir is None or not bulk_dir.exists():
        return 0
    return sum(path.stat().st_size for path in bulk_dir.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="whisper")
    parser.add_argument("--limit", type=int, default=0, help="recordings to cache (0: all found)")
    parser.add_argument("--no-copies", action="store_true", help="cache the originals only")
    parser.add_argument("--bulk-dir", default=None, help="the service's bulk store directory (--bulk-dir)")
    parser.add_argument("--extra", nargs="*", default=[], help="more arguments for earmark serve")
    parser.add_argument("--out", default=str(OUT_DIR / "footprint.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="earmark-footprint-") as tmp:
        work = Path(tmp)
        store = EmbeddedServer(work / "store")
        store.start()
        server = None
        try:
            extra = ["--redis-url", store.url, "--engine", args.engine, *args.extra]
            bulk_dir = Path(args.bulk_dir) if args.bulk_dir else None
            if bulk_dir is not None:
                extra += ["--bulk-dir", str(bulk_dir)]
            server = Server(work / "serve", work / "serve.log", extra_args=tuple(extra))
            http = httpx.Client(base_url=server.url, timeout=600.0)
            server.wait_healthy(http, timeout_s=120.0)
            tiers: dict[str, int] = defaultdict(int)
            paths = recordings(args.limit)
            for k, path in enumerate(paths):
                data = as_upload(path, work)
                uploads = [("original", data)] + ([] if args.no_copies else [("mp3", mp3_copy(data, work, str(k)))])
                for label, body in uploads:
                    boundary = f"footprint{k}{label}"
                    response = http.post("/recognize", content=multipart_body(body, f"{path.stem}.{label}", boundary),
                                         headers=multipart_headers(boundary))
                    tier = response.json().get("cache", {}).get("tier", str(response.status_code)) \
                        if response.status_code == 200 else str(response.status_code)
                    tiers[f"{label}:{tier}"] += 1
            time.sleep(0.5)
            client = redis.Redis.from_url(store.url)
            figures = measure(client)
            figures["bulk_disk_bytes"] = bulk_bytes(bulk_dir)
            if figures["audio_s"]:
                figures["bulk_disk_bytes_per_s"] = round(figures["bulk_disk_bytes"] / figures["audio_s"], 1)
            figures["used_memory"] = client.info("memory")["used_memory"]
            metrics = http.get("/metrics").text
            figures["metrics_gauge"] = [line for line in metrics.splitlines()
                                        if line.startswith("earmark_store_bytes_per_audio_second")]
            figures["uploads"] = dict(tiers)
            figures["recordings"] = len(paths)
        finally:
            if server is not None:
                server.stop()
            store.stop()
    result = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": git_head(),
              "engine": args.engine, "machine": machine_info(), **figures}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
