"""Both sides of the minimal-pair benchmark's pairs through a channel, for benchmarks that judge
B (and A's copy) against A as synthesised: bench_coarse_pairs.py (low-rate codecs),
bench_clipped_pairs.py (hard clipping)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from bench_accuracy import cached_map
from earmark.fingerprint.decode import decode_audio
from earmark.index.entry import Entry
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.verification import QueryFeatures, Verifier


def original_features(path: str) -> QueryFeatures:
    """A as synthesised: the cached entry every side is judged against."""
    return Verifier(FuzzyThresholds()).features(decode_audio(Path(path).read_bytes(), 3600).pcm_16k)


def both_sides(data: Path, labels: tuple, features: Callable[[str], QueryFeatures], jobs: int,
               cache: Path) -> tuple[list[dict], list[QueryFeatures], Iterator[QueryFeatures]]:
    """(the pairs, A's features as synthesised, an iterator over the features of each pair's A
    then B through each of `labels` in turn): `features` is given "path|label". Both are cached
    beside `cache` (bench_accuracy.cached_map)."""
    pairs = json.loads((data / "manifest.json").read_text())["pairs"]
    originals = cached_map(original_features, [str(data / p["path_a"]) for p in pairs], jobs,
                           cache.with_name("originals.pkl"))
    jobs_ = [f"{data / p[side]}|{label}" for p in pairs for side in ("path_a", "path_b") for label in labels]
    return pairs, originals, iter(cached_map(features, jobs_, jobs, cache, files=[j.split("|")[0] for j in jobs_]))


def arguments(description: str, name: str) -> argparse.Namespace:
    """The command line both benchmarks take: the corpus, the feature cache and the JSON rows
    (under bench/out/`name`), and the worker processes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=Path("bench/data/minimal_pairs"))
    parser.add_argument("--cache", type=Path, default=Path(f"bench/out/{name}/features.pkl"))
    parser.add_argument("--out", type=Path, default=Path(f"bench/out/{name}.json"))
    parser.add_argument("--jobs", type=int, default=2)
    return parser.parse_args()


def judge_against_a(verifier: Verifier, entry_features: QueryFeatures, query: QueryFeatures, language: str,
                    profile: str) -> tuple[bool, float, str]:
    """The service's (accepted, score, reason) for `query` against A as the cached entry."""
    entry = Entry(entry_id="a" * 32, profile_id=profile, pcm_digest="pcm", text="a", normalized_text="a",
                  language=language, duration_s=0.0, speech_s=entry_features.speech_s, engine_seconds=1.0,
                  generation="g")
    return verifier.judge(query, profile, float(query.embedding @ entry_features.embedding),
                          verifier.attach(entry, entry_features))
