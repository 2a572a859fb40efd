"""Both sides of the minimal-pair benchmark's pairs through a channel, for benchmarks that judge
B (and A's copy) against A as synthesised: bench_coarse_pairs.py (low-rate codecs),
bench_clipped_pairs.py (hard clipping)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from bench_accuracy import cached_map
from earmark.fingerprint.decode import decode_audio
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
