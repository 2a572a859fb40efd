"""How long `earmark audit` takes on a store of real speech entries and a full event log.

Fills a fresh embedded store with entries of the benchmark corpus (bench/data/corpus: its
originals and negatives, fingerprinted by the service's Verifier; the transcript is a
placeholder, no engine runs), stores `--copies` MP3 re-encodings of originals as entries of
their own (near-duplicates the audit must find), appends `--events` recognition events, then
times collect_audit and the report.

    .venv/bin/python bench/bench_audit.py [--files 400] [--copies 40] [--events 20000] [--out bench/out/audit]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from earmark.fingerprint.canonical import PcmDigest  # noqa: E402
from earmark.fingerprint.decode import SAMPLE_RATE, decode_audio  # noqa: E402
from earmark.fingerprint.speech import speech_extent  # noqa: E402
from earmark.index.connection import open_client  # noqa: E402
from earmark.index.embedded import EmbeddedServer  # noqa: E402
from earmark.index.entry import Entry, make_entry_id  # noqa: E402
from earmark.index.keys import Keys  # noqa: E402
from earmark.index.store import Store  # noqa: E402
from earmark.service.ops.audit import AuditOptions, collect_audit  # noqa: E402
from earmark.service.ops.audit_report import write_audit  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.pipeline.events import EventLog, RecognitionEvent  # noqa: E402
from earmark.service.pipeline.verification import Verifier  # noqa: E402

CORPUS = Path(__file__).parent / "data" / "corpus"
PROFILE = "bench-audit-profile"


def mp3_of(pcm: np.ndarray) -> bytes:
    """A real 48 kbps MP3 of 16 kHz PCM (PyAV's bundled LAME)."""
    import io

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = 48000
        frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def entry_of(pcm: np.ndarray, verifier: Verifier, name: str) -> Entry:
    digest = PcmDigest()
    digest.push(pcm)
    pcm_digest = digest.hexdigest()
    duration = len(pcm) / SAMPLE_RATE
    entry = Entry(entry_id=make_entry_id(PROFILE, pcm_digest), profile_id=PROFILE, pcm_digest=pcm_digest,
                  text=f"(placeholder transcript of {name})", normalized_text="", language="en", duration_s=duration,
                  speech_s=speech_extent(pcm).duration_s, engine_seconds=round(0.3 * duration, 3), engine="bench")
    return verifier.attach(entry, verifier.features(pcm))


async def fill(store: Store, args) -> tuple[int, int]:
    verifier = Verifier(FuzzyThresholds())
    files = sorted((CORPUS / "originals").glob("*"))[: args.files // 2] + sorted((CORPUS / "negatives").glob("*"))[: args.files // 2]
    entries = []
    started = time.perf_counter()
    for number, path in enumerate(files):
        pcm = decode_audio(path.read_bytes(), 3600).pcm_16k
        entries.append(entry_of(pcm, verifier, path.name))
        if number < args.copies:
            entries.append(entry_of(decode_audio(mp3_of(pcm), 3600).pcm_16k, verifier, path.name + " (mp3 copy)"))
    for entry in entries:
        await store.put_entry(entry, entry.pcm_digest, 7 * 86400, stream_maxlen=1_000_000)
    print(f"stored {len(entries)} entries ({args.copies} MP3 copies stored apart) in {time.perf_counter() - started:.1f} s")
    log = EventLog(store, maxlen=max(args.events, 1))
    rng = random.Random(9)
    now = time.time()
    tiers = ["exact", "canonical", "fuzzy", "miss", "miss", "exact"]
    for number in range(args.events):
        entry = rng.choice(entries)
        tier = rng.choice(tiers)
        fuzzy = tier == "fuzzy"
        best = rng.uniform(0.75, 1.0) if fuzzy else (rng.uniform(0.3, 0.73) if tier == "miss" and rng.random() < 0.5 else None)
        await log.record(RecognitionEvent(
            time=now - (args.events - number) * 5.0, endpoint="recognize", tier=tier,
            entry_id=entry.entry_id, score=best if fuzzy else None, best_score=best,
            rejection="window_below_threshold: bench" if tier == "miss" and best is not None else None,
            query_digest=f"{rng.getrandbits(128):032x}", duration_s=entry.duration_s,
            engine_s_spent=entry.engine_seconds if tier == "miss" else 0.0,
            engine_s_saved=0.0 if tier == "miss" else entry.engine_seconds, namespace="", profile_id=PROFILE))
    return len(entries), args.events


async def main_async(args) -> dict:
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedServer(Path(data))
        server.start()
        try:
            store = Store(open_client(server.url), Keys("bench-audit:"))
            entries, events = await fill(store, args)
            started = time.perf_counter()
            audit = await collect_audit(store, EventLog(store, max(args.events, 1)), FuzzyThresholds(), AuditOptions(),
                                        source="bench/bench_audit.py")
            collect_s = time.perf_counter() - started
            started = time.perf_counter()
            write_audit(audit, Path(args.out))
            report_s = time.perf_counter() - started
            await store.close()
        finally:
            server.stop()
    clusters = audit["near_duplicates"]
    return {"entries": entries, "events": events, "collect_s": round(collect_s, 2), "report_s": round(report_s, 2),
            "near_duplicate_clusters": len(clusters),
            "entries_in_clusters": sum(len(cluster["entries"]) for cluster in clusters),
            "copies_stored_apart": args.copies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "audit"))
    figures = asyncio.run(main_async(parser.parse_args()))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
