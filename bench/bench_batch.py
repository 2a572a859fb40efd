#!/usr/bin/env python3
"""A batch re-run three ways, side by side in one run (issue 9's headline): no cache, a cache
keyed by the MD5 of the file's bytes (the design earmark replaces), and earmark.

The batch: `--originals` recordings of the accuracy corpus (bench/make_corpus.py), then
`--repeats` more files that repeat earlier ones as other encodings or edits (MP3 at 32 kbps,
8 kHz telephone copies, a FLAC of the same PCM, louder or resampled copies, padded starts), in
a shuffled order. Each design recognizes every file in order, with the same engine instance:

* no cache: decode and run the engine on every file;
* MD5: a Redis (the embedded Valkey) GET of the bytes' MD5; on a miss, decode, run the engine
  and SET the transcript (a few lines: what the seed system did);
* earmark: the service in-process (its real pipeline and store), file by file.

Printed: wall time and engine seconds of each, and the share of the repeated files' engine
time each cache saved (target for earmark: at least 90%).

    .venv/bin/python bench/bench_batch.py [--originals 100] [--repeats 43] [--seed 7]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

import redis

from harness import OUT_DIR, ROOT, git_head, loadavg, machine_info

CORPUS = ROOT / "bench" / "data" / "corpus"
# Re-encodings and edits a real batch holds: the same call exported again, resampled, louder.
REPEAT_KINDS = ("mp3_32k", "wav_8k", "flac", "gain_minus6", "wav_44k", "pad_start_0_5", "aac_64k", "opus_24k")


def build_batch(originals: int, repeats: int, seed: int) -> tuple[list[Path], set[Path]]:
    """The batch's files in order, and which of them are repeats."""
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    rng = random.Random(seed)
    # The shortest recordings keep three passes over the batch within minutes.
    shortest = sorted(manifest["originals"], key=lambda item: (item["duration_s"], item["id"]))[:originals]
    names = sorted(item["id"] for item in shortest)
    firsts = [CORPUS / "originals" / f"{name}.wav" for name in names]
    repeated = []
    for name in rng.sample(names, repeats):
        kind = rng.choice(REPEAT_KINDS)
        matches = sorted((CORPUS / "transforms" / kind).glob(f"{name}.*"))
        if matches:
            repeated.append(matches[0])
    # Each repeat comes after its original, somewhere later in the batch.
    order = list(firsts)
    for path in repeated:
        original = CORPUS / "originals" / f"{path.stem}.wav"
        position = rng.randint(order.index(original) + 1, len(order))
        order.insert(position, path)
    return order, set(repeated)


def run_no_cache(files, engine, profile) -> dict[Path, float]:
    from earmark.fingerprint.decode import decode_audio

    spent = {}
    for path in files:
        pcm = decode_audio(path.read_bytes(), 4 * 3600).pcm_16k
        started = time.perf_counter()
        engine.transcribe(pcm, profile)
        spent[path] = time.perf_counter() - started
    return spent


def run_md5(files, engine, profile, store_url: str) -> dict[Path, float]:
    from earmark.fingerprint.decode import decode_audio

    client = redis.Redis.from_url(store_url)
    spent = {}
    for path in files:
        data = path.read_bytes()
        key = "md5:" + hashlib.md5(data).hexdigest()
        if client.get(key) is not None:
            spent[path] = 0.0
            continue
        pcm = decode_audio(data, 4 * 3600).pcm_16k
        started = time.perf_counter()
        transcript = engine.transcribe(pcm, profile)
        spent[path] = time.perf_counter() - started
        client.set(key, transcript.text)
    client.close()
    return spent


def run_earmark(files, engine, store_url: str, data_dir: Path) -> tuple[dict[Path, float], dict[str, int]]:
    import warnings

    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

    from earmark.service.api.app import create_app
    from earmark.service.config import Settings

    spent, tiers = {}, {}
    settings = Settings(redis_url=store_url, data_dir=data_dir, key_prefix="bench-batch:")
    with TestClient(create_app(settings, engine=engine)) as client:
        for path in files:
            answer = client.post("/recognize", files={"file": (path.name, path.read_bytes())}).json()
            cache = answer["cache"]
            tiers[cache["tier"]] = tiers.get(cache["tier"], 0) + 1
            spent[path] = cache["engine_seconds"] if cache["tier"] == "miss" else 0.0
    return spent, tiers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--originals", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=43, help="repeats (43 of 143 files is 30%%) [43]")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--engine", default=None, help="engine name [the service's default]")
    args = parser.parse_args()
    if not (CORPUS / "manifest.json").exists():
        parser.error("no corpus: run bench/make_corpus.py first (see bench/CORPUS.md)")
    from earmark.index.embedded import EmbeddedServer
    from earmark.service.config import Settings
    from earmark.service.engines.base import RecognitionOptions
    from earmark.service.engines.registry import create_engine

    files, repeats = build_batch(args.originals, args.repeats, args.seed)
    engine = create_engine(args.engine or Settings().engine)
    profile = engine.resolve(RecognitionOptions())
    audio_s = sum(_duration(path) for path in files)
    print(f"batch: {len(files)} files, {len(repeats)} repeats ({len(repeats) / len(files):.0%}), {audio_s / 60:.1f} min of audio, "
          f"engine {engine.name}", flush=True)
    engine.transcribe(__import__("numpy").zeros(16000, "float32"), profile)  # warm
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedServer(Path(tmp) / "store")
        store.start()
        try:
            for name, run in [("no cache", lambda: run_no_cache(files, engine, profile)),
                              ("MD5 of bytes", lambda: run_md5(files, engine, profile, store.url)),
                              ("earmark", lambda: run_earmark(files, engine, store.url, Path(tmp) / "data"))]:
                started = time.perf_counter()
                outcome = run()
                wall = time.perf_counter() - started
                spent, tiers = outcome if isinstance(outcome, tuple) else (outcome, None)
                results[name] = {"wall_s": wall, "engine_s": sum(spent.values()), "spent": spent,
                                 "engine_on_repeats_s": sum(spent[path] for path in repeats), "tiers": tiers}
                print(f"  {name:14} wall {wall:7.1f} s  engine {results[name]['engine_s']:7.1f} s"
                      + (f"  tiers {tiers}" if tiers else ""), flush=True)
        finally:
            store.stop()
    baseline = results["no cache"]
    print(f"\n{'design':14} {'wall':>9} {'vs no cache':>12} {'engine':>9} {'repeats engine saved':>21}")
    for name, figures in results.items():
        # Saved = the no-cache engine time of the repeats this design answered without the
        # engine (timing noise on the repeats it did run would otherwise read as savings).
        saved = sum(baseline["spent"][path] for path in repeats if figures["spent"][path] == 0.0) / baseline["engine_on_repeats_s"]
        figures["repeats_engine_saved"] = round(saved, 4)
        print(f"{name:14} {figures['wall_s']:8.1f}s {figures['wall_s'] / baseline['wall_s']:11.2f}x "
              f"{figures['engine_s']:8.1f}s {saved:20.1%}")
    print(f"\ntarget: earmark saves >= 90% of the repeated audio's engine time: "
          f"{'met' if results['earmark']['repeats_engine_saved'] >= 0.9 else 'NOT met'}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for figures in results.values():
        figures.pop("spent")
    (OUT_DIR / "batch.json").write_text(json.dumps({"machine": machine_info(), "git": git_head(), "load": loadavg(),
                                                    "files": len(files), "repeats": len(repeats), "results": results},
                                                   indent=2, default=str))


def _duration(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        return float(container.duration or 0) / 1_000_000


if __name__ == "__main__":
    main()
