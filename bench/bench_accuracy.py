"""Accuracy of the fuzzy tier on the generated corpus (bench/make_corpus.py).

Every original is cached (features, entry and vector written through the real store and index
code, against a real embedded store); every transformed copy and every negative is then looked
up through the real `FuzzyMatcher.match`. Reported: recall per transform, false accepts,
wrong-entry matches, candidate-retrieval recall, and the score distributions of positives and
negatives against their source (verified directly, whatever the thresholds), which is what the
default thresholds are chosen from.

    python bench/bench_accuracy.py [--corpus bench/data/corpus] [--out bench/out/accuracy]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from earmark.fingerprint.canonical import pcm_digest  # noqa: E402
from earmark.fingerprint.config import DEFAULT  # noqa: E402
from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.fingerprint.embedding import EMBEDDING_DIM  # noqa: E402
from earmark.fingerprint.matcher import verify  # noqa: E402
from earmark.index.connection import open_client  # noqa: E402
from earmark.index.embedded import EmbeddedServer  # noqa: E402
from earmark.index.entry import Entry, make_entry_id  # noqa: E402
from earmark.index.keys import Keys  # noqa: E402
from earmark.index.store import Store  # noqa: E402
from earmark.index.vectors import VectorIndex  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.pipeline.fuzzy import FuzzyMatcher  # noqa: E402
from earmark.service.pipeline.verification import QueryFeatures, Verifier  # noqa: E402
from earmark.service.metrics import Metrics  # noqa: E402
from earmark.service.pipeline.profile import Profile  # noqa: E402

PROFILE = Profile(engine="bench", model="corpus-text", revision="1", language="auto", use_itn=False)


def _features(path: str) -> tuple[QueryFeatures, str, float]:
    decoded = decode_audio(Path(path).read_bytes(), 4 * 3600)
    return Verifier(FuzzyThresholds()).features(decoded.pcm_16k), pcm_digest(decoded.pcm_16k), decoded.duration_s


def fingerprint_code_digest() -> str:
    """A digest of the fingerprint code itself: cached features are stale once it changes."""
    import hashlib

    root = Path(__file__).resolve().parent.parent / "earmark" / "fingerprint"
    return hashlib.blake2b(b"".join(p.read_bytes() for p in sorted(root.glob("*.py")) if p.name not in JUDGING_ONLY),
                           digest_size=8).hexdigest()


# Modules of fingerprint/ that compute no feature, only compare them: a change there keeps the caches.
JUDGING_ONLY = frozenset({"missing_speech.py", "medians.py"})


def compute_features(paths: list[str], jobs: int, cache: Path | None = None) -> list[tuple[QueryFeatures, str, float]]:
    """Decode and fingerprint every file (in parallel worker processes), cached (`cached_map`)."""
    from earmark.fingerprint import speech

    constants = (speech.ABSOLUTE_FLOOR_DB, speech.RELATIVE_FLOOR_DB, speech.NOISE_FLOOR_PERCENTILE,
                 speech.ABOVE_NOISE_DB, speech.MAX_RELATIVE_DB)
    return cached_map(_features, paths, jobs, cache, constants)


def cached_map(function, paths: list[str], jobs: int, cache: Path | None, *key_parts,
               files: list[str] | None = None) -> list:
    """`function` over `paths` in worker processes; with `cache`, the results are kept in a pickle
    keyed by the fingerprint configuration and code, `key_parts`, `paths` and the sizes of
    `files` (`paths` themselves unless given: jobs that name files in another form give the files
    they read), so threshold and verification experiments skip this step."""
    import pickle

    sized = paths if files is None else files
    key = repr((DEFAULT, fingerprint_code_digest(), key_parts, paths, [Path(p).stat().st_size for p in sized]))
    if cache is not None and cache.exists():
        stored_key, results = pickle.loads(cache.read_bytes())
        if stored_key == key:
            return results
    with ProcessPoolExecutor(jobs) as pool:
        results = list(pool.map(function, paths, chunksize=16))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps((key, results)))
    return results


async def run(corpus: Path, out: Path, jobs: int, thresholds: FuzzyThresholds, cache: Path | None) -> dict:
    manifest = json.loads((corpus / "manifest.json").read_text())
    originals, transforms, negatives = manifest["originals"], manifest["transforms"], manifest["negatives"]
    # Copies that lost speech at an edge (a first word cut off): must be refused like negatives.
    cut_copies = manifest.get("cut_copies", [])
    started = time.perf_counter()
    features = compute_features([str(corpus / item["path"]) for item in originals + transforms + negatives + cut_copies],
                                jobs, cache)
    print(f"features for {len(features)} files in {time.perf_counter() - started:.0f} s", flush=True)
    original_features = dict(zip((o["id"] for o in originals), features[: len(originals)], strict=True))
    query_features = features[len(originals):]

    with tempfile.TemporaryDirectory() as data_dir:
        server = EmbeddedServer(Path(data_dir))
        server.start()
        try:
            store = Store(open_client(server.url), Keys("earmark-bench:"))
            index = VectorIndex(EMBEDDING_DIM, "flat")
            matcher = FuzzyMatcher(Verifier(thresholds), store, index, Metrics())
            entry_of: dict[str, str] = {}
            for item in originals:
                feats, digest, duration = original_features[item["id"]]
                entry = Entry(entry_id=make_entry_id(PROFILE.digest, digest), profile_id=PROFILE.digest, pcm_digest=digest,
                              text=item["text"], normalized_text=item["text"], language=item["lang"], duration_s=duration,
                              speech_s=feats.speech_s, engine_seconds=1.0)
                stored = await store.put_entry(matcher.verifier.attach(entry, feats), digest, 3600, stream_maxlen=10_000)
                index.add(PROFILE.digest, stored.entry_id, feats.embedding)
                entry_of[item["id"]] = stored.entry_id
            queries = [dict(q, group=q["transform"], positive=True, source_id=q["id"]) for q in transforms] + [
                dict(n, group=n["kind"], positive=False) for n in negatives
            ] + [dict(c, group=c["transform"], positive=False, source_id=c["id"]) for c in cut_copies]
            rows = []
            lookup_started = time.perf_counter()
            for query, (feats, _, duration) in zip(queries, query_features, strict=True):
                match = await matcher.match(feats, PROFILE)
                source_entry = entry_of.get(query.get("source_id") or "")
                rows.append(_row(query, feats, duration, match, source_entry, original_features, matcher))
            lookup_s = time.perf_counter() - lookup_started
            await store.close()
        finally:
            server.stop()
    report = _report(rows, thresholds, lookup_s)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    _plot(rows, thresholds, out)
    return report


def _row(query, feats, duration, match, source_entry, original_features, matcher) -> dict:
    """One lookup's outcome plus the direct verification against its source, if it has one."""
    source = original_features.get(query.get("source_id") or "")
    direct = None
    if source is not None:
        verdict = verify(feats.hash, source[0].hash, DEFAULT)
        direct = {"worst": verdict.worst_score, "mean": verdict.mean_score,
                  "speech_s": feats.speech_s, "source_speech_s": source[0].speech_s,
                  "embedding": float(feats.embedding @ source[0].embedding)}
    retrieved = [c["entry"] for c in match.candidates]
    return {
        "id": query["id"], "group": query["group"], "positive": query["positive"], "duration_s": duration,
        "matched": match.entry.entry_id if match.entry else None, "score": match.score,
        "source_entry": source_entry, "source_retrieved": source_entry in retrieved if source_entry else None,
        "source_reason": next((c["reason"] for c in match.candidates if c["entry"] == source_entry), "not retrieved"),
        "direct": direct,
    }


def _report(rows: list[dict], thresholds: FuzzyThresholds, lookup_s: float) -> dict:
    by_group: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_group[row["group"]].append(row)
    positives = [r for r in rows if r["positive"]]
    negatives = [r for r in rows if not r["positive"]]
    groups = {}
    for group, members in sorted(by_group.items()):
        if members[0]["positive"]:
            hits = sum(r["matched"] == r["source_entry"] for r in members)
            groups[group] = {"kind": "transform", "count": len(members), "recall": hits / len(members),
                             "wrong_entry": sum(r["matched"] not in (None, r["source_entry"]) for r in members),
                             "retrieved": sum(bool(r["source_retrieved"]) for r in members) / len(members)}
        else:
            groups[group] = {"kind": "negative", "count": len(members), "false_accepts": sum(r["matched"] is not None for r in members)}
    return {
        "thresholds": asdict(thresholds),
        "positives": len(positives),
        "recall": sum(r["matched"] == r["source_entry"] for r in positives) / len(positives),
        "wrong_entry_matches": sum(r["matched"] not in (None, r["source_entry"]) for r in positives),
        "negatives": len(negatives),
        "false_accepts": sum(r["matched"] is not None for r in negatives),
        "lookups_per_s": len(rows) / lookup_s,
        "groups": groups,
        "score_quantiles": _quantiles(rows),
    }


def _quantiles(rows: list[dict]) -> dict:
    """Distribution of the direct worst-stretch score, positives vs negatives with a source."""
    def q(values):
        if not values:
            return None
        return {p: round(float(np.percentile(values, p)), 4) for p in (0, 1, 5, 50, 95, 99, 100)}

    pos = [r["direct"]["worst"] for r in rows if r["positive"] and r["direct"]]
    neg = [r["direct"]["worst"] for r in rows if not r["positive"] and r["direct"]]
    matched_neg = [r["score"] for r in rows if not r["positive"] and r["score"] is not None]
    return {"positives_worst_stretch": q(pos), "negatives_vs_source_worst_stretch": q(neg), "accepted_negative_scores": matched_neg}


def _plot(rows: list[dict], thresholds: FuzzyThresholds, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot")
        return
    pos = [r["direct"]["worst"] for r in rows if r["positive"] and r["direct"]]
    neg = [r["direct"]["worst"] for r in rows if not r["positive"] and r["direct"]]
    figure, axis = plt.subplots(figsize=(8, 4))
    bins = np.linspace(0, 1, 81)
    axis.hist(pos, bins=bins, alpha=0.6, label=f"copies vs their original (n={len(pos)})")
    axis.hist(neg, bins=bins, alpha=0.6, label=f"negatives vs their source (n={len(neg)})")
    axis.axvline(thresholds.min_window_score, color="k", linestyle="--", label=f"min_window_score {thresholds.min_window_score}")
    axis.set_xlabel("worst-stretch score (1 - bit error rate)")
    axis.set_ylabel("queries")
    axis.set_yscale("log")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "scores.png", dpi=110)


def print_report(report: dict) -> None:
    """The table for bench/README.md."""
    print(f"\nrecall {report['recall']:.4f} over {report['positives']} copies; wrong-entry matches "
          f"{report['wrong_entry_matches']}; false accepts {report['false_accepts']} of {report['negatives']} negatives; "
          f"{report['lookups_per_s']:.0f} lookups/s")
    print("\n| transform | copies | recall | wrong entry | source among candidates |")
    print("|---|---|---|---|---|")
    for group, stats in report["groups"].items():
        if stats["kind"] == "transform":
            print(f"| {group} | {stats['count']} | {stats['recall']:.3f} | {stats['wrong_entry']} | {stats['retrieved']:.3f} |")
    print("\n| negative kind | count | false accepts |")
    print("|---|---|---|")
    for group, stats in report["groups"].items():
        if stats["kind"] == "negative":
            print(f"| {group} | {stats['count']} | {stats['false_accepts']} |")
    print("\nworst-stretch score quantiles:", json.dumps(report["score_quantiles"], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("bench/data/corpus"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/accuracy"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("bench/out/accuracy/features.pkl"),
                        help="feature cache (reused while the fingerprint configuration is unchanged)")
    args = parser.parse_args()
    if not (args.corpus / "manifest.json").exists():
        sys.exit(f"no corpus at {args.corpus}: run python bench/make_corpus.py --out {args.corpus} first")
    report = asyncio.run(run(args.corpus, args.out, args.jobs, FuzzyThresholds(), args.cache))
    print_report(report)


if __name__ == "__main__":
    main()
