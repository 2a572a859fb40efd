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
    .venv/bin/python bench/bench_footprint.py --long 300 --count 6 [--bulk-dir DIR]   # 5-minute calls

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
import numpy as np
import redis

from harness import OUT_DIR, ROOT, Server, git_head, machine_info, multipart_body, multipart_headers, wav_duration_s
from earmark.index.embedded import EmbeddedServer
from earmark.index.entry import Entry
from earmark.index.keys import Keys

PREFIX = "earmark:"
KEYS = Keys(PREFIX)
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


def long_uploads(paths: list[Path], work: Path, target_s: float, count: int) -> list[tuple[str, bytes]]:
    """`count` recordings of about `target_s` each, made by joining the recordings end to end,
    each starting at another one (a call centre's long calls, where the per-entry keys weigh
    little against the seconds)."""
    parts = []
    for k, path in enumerate(paths):
        out = work / f"part{k}.wav"
        source = work / f"part{k}.src"
        source.write_bytes(as_upload(path, work))
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-ar", "16000", "-ac", "1", str(out)],
                       check=True)
        parts.append((out, wav_duration_s(out)))
    uploads = []
    for k in range(count):
        chosen, total, at = [], 0.0, k * 3
        while total < target_s:
            part, seconds = parts[at % len(parts)]
            chosen.append(str(part))
            total += seconds
            at += 1
        out = work / f"long{k}.wav"
        subprocess.run(["sox", *chosen, str(out)], check=True)
        uploads.append((f"long{k}", out.read_bytes()))
    return uploads


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
            entry = Entry.from_fields(key.decode()[len(PREFIX) + len("entry:{"):-1], row)
            if not entry.negative:
                seconds += entry.duration_s
            for name, value in row.items():
                if KEYS.is_alias_member(name):  # an alias listed in the entry: its name is its cost
                    fields["(aliases listed)"] += len(name)
                else:
                    fields[name.decode()] += len(value)
    total = sum(usage for _, usage in by_kind.values())
    # Each entry's own keys (its hash, its alias set and every key either lists) against its
    # duration: bytes = fixed + per_second * seconds, fitted by least squares.
    own: list[tuple[float, int]] = []
    for key in client.scan_iter(match=f"{PREFIX}entry:*", count=1000):
        entry = Entry.from_fields(key.decode()[len(PREFIX) + len("entry:{"):-1], client.hgetall(key))
        if entry.negative:
            continue
        aliases = KEYS.entry_aliases(entry.entry_id)
        usage = (client.memory_usage(key, samples=0) or 0) + (client.memory_usage(aliases, samples=0) or 0)
        listed = [*client.smembers(aliases), *(field for field in client.hkeys(key) if KEYS.is_alias_member(field))]
        usage += sum(client.memory_usage(KEYS.alias_key_of(member), samples=0) or 0 for member in listed)
        own.append((entry.duration_s, usage))
    fit = None
    if len(own) >= 2:
        per_second, fixed = np.polyfit([s for s, _ in own], [b for _, b in own], 1)
        fit = {"entries": len(own), "fixed_bytes_per_entry": round(float(fixed)),
               "bytes_per_audio_second": round(float(per_second), 1),
               "shared_streams_bytes": sum(by_kind.get(kind, [0, 0])[1] for kind in ("events", "index"))}
    return {
        "audio_s": round(seconds, 2),
        "entries": entries,
        "total_bytes": total,
        "bytes_per_s": round(total / seconds, 1) if seconds else None,
        "by_kind": {kind: {"keys": n, "bytes": b, "bytes_per_s": round(b / seconds, 1) if seconds else None}
                    for kind, (n, b) in sorted(by_kind.items(), key=lambda item: -item[1][1])},
        "per_entry_fit": fit,
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
    parser.add_argument("--long", type=float, default=0.0,
                        help="instead, cache --count recordings of about this many seconds, joined from the recordings")
    parser.add_argument("--count", type=int, default=6)
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
            named = long_uploads(paths, work, args.long, args.count) if args.long else \
                [(path.stem, as_upload(path, work)) for path in paths]
            for k, (stem, data) in enumerate(named):
                uploads = [("original", data)] + ([] if args.no_copies else [("mp3", mp3_copy(data, work, str(k)))])
                for label, body in uploads:
                    boundary = f"footprint{k}{label}"
                    response = http.post("/recognize", content=multipart_body(body, f"{stem}.{label}", boundary),
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
