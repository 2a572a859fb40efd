#!/usr/bin/env python3
"""Does keeping the embedding in half precision change a verdict? (issue 25)

Entries store their embedding as float16 (`fingerprint/embedding.py`, `at_stored_precision`).
The embedding's only part in a verdict is the candidate gate `min_embedding_similarity`. For
every judged row of the channel benchmarks (each copy and negative against its original), this
compares the query's similarity to the original's float32 vector with its similarity to the
stored, rounded one: the largest change, how many rows cross the gate, and how close the
closest row sits to it. It reads the features `bench_channels.py` cached (run that first).

    .venv/bin/python bench/bench_embedding_precision.py [--data bench/data/channels ...]
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

import bench_channels
from earmark.fingerprint.embedding import at_stored_precision
from earmark.service.config import FuzzyThresholds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+",
                        default=[Path("bench/data/channels"), Path("bench/data/channels_pairs")])
    parser.add_argument("--features", type=Path, default=Path("bench/out/channels_features"))
    args = parser.parse_args()
    gate = FuzzyThresholds().min_embedding_similarity
    cache = bench_channels._cache_dir(args.features)
    rows, largest, crossing, closest = 0, 0.0, 0, float("inf")
    for data in args.data:
        manifest, items = bench_channels.load_items(data)
        original_path = {original["id"]: data / original["path"] for original in manifest["originals"]}

        def embedding(path: Path) -> np.ndarray:
            features, _ = pickle.loads(bench_channels._cache_path(cache, path).read_bytes())
            return np.asarray(features.embedding, dtype=np.float32)

        originals: dict[str, np.ndarray] = {}
        for item in items:
            query = embedding(data / item["path"])
            original = originals.setdefault(item["original"], embedding(original_path[item["original"]]))
            full, stored = float(query @ original), float(query @ at_stored_precision(original))
            rows += 1
            largest = max(largest, abs(full - stored))
            crossing += (full >= gate) != (stored >= gate)
            closest = min(closest, abs(full - gate))
    print(f"rows {rows}: similarity moved by at most {largest:.2e}; {crossing} cross the {gate} gate; "
          f"the closest row sits {closest:.4f} from it")


if __name__ == "__main__":
    main()
