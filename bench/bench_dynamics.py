"""Dynamics processors on one side: louder or levelled copies, and minimal pairs through them.

The minimal-pair corpus has one dynamics processor, sox's soft limiter (`gain -l 6`). This
benchmark puts a third of its pairs (A and B) through others, with ffmpeg's filters: a
look-ahead limiter (`alimiter`, also followed by 32 kbit/s MP3), hard clipping 3, 6 and 8 dB
louder (espeak-ng's speech peaks within 1 dB of full scale), a fast 6:1 compressor, a slow
dynamic normaliser (`dynaudnorm`) and EBU R128 loudness normalisation (`loudnorm`). Each
processed A is a copy of A and must be accepted; each processed B is a minimal pair of A and
must be refused. Every file is judged against the untouched A as a cached entry with the
service's `Verifier.judge` (default thresholds).

    apt-get install ffmpeg
    .venv/bin/python bench/bench_dynamics.py [--corpus bench/data/minimal_pairs] [--work bench/data/dynamics]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_accuracy import cached_map  # noqa: E402
from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.pipeline.verification import Verifier, QueryFeatures  # noqa: E402
from earmark.service.ops.tune import Scorer  # noqa: E402

# ffmpeg arguments of each processor; the output is 16 kHz WAV (MP3 where the name says so).
CHAINS = {
    "alimiter": ("-af", "volume=6dB,alimiter=limit=0.9:level=disabled"),
    "alimiter_mp3": ("-af", "volume=6dB,alimiter=limit=0.9:level=disabled", "-b:a", "32k"),
    "clip_3db": ("-af", "volume=3dB"),
    "clip_6db": ("-af", "volume=6dB"),
    "clip_8db": ("-af", "volume=8dB"),
    "compressor": ("-af", "acompressor=threshold=0.05:ratio=6:attack=5:release=80:makeup=4"),
    "dynaudnorm": ("-af", "dynaudnorm=f=150:g=5"),
    "loudnorm": ("-af", "loudnorm=I=-14:TP=-1"),
}
EVERY = 3  # one pair in three: 134 of the 400


def output_name(chain: str, stem: str) -> str:
    """The file name of `stem` through `chain`: MP3 where the chain ends in one, else WAV."""
    return f"{stem}.{'mp3' if chain.endswith('_mp3') else 'wav'}"


def process_chain(job: tuple[str, str, str]) -> str:
    """Run one chain on one file unless its output exists; returns the output path."""
    chain, source, target = job
    if not Path(target).exists():
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", source, *CHAINS[chain], "-ar", "16000", target],
                       check=True)
    return target


def _features(path: str) -> QueryFeatures:
    return Verifier(FuzzyThresholds()).features_of_decoded(decode_audio(Path(path).read_bytes(), 3600))


def run(corpus: Path, work: Path, jobs: int) -> list[dict]:
    """Build the processed files, fingerprint everything, judge each against its untouched A."""
    pairs = json.loads((corpus / "manifest.json").read_text())["pairs"][::EVERY]
    items = [(chain, side, pair) for chain in CHAINS for side in "ab" for pair in pairs]
    targets = []
    for chain, side, pair in items:
        targets.append((chain, str(corpus / pair[f"path_{side}"]), str(work / chain / side / output_name(chain, pair["id"]))))
    with ProcessPoolExecutor(jobs) as pool:
        paths = list(pool.map(process_chain, targets, chunksize=8))
    originals = [str(corpus / pair["path_a"]) for pair in pairs]
    features = cached_map(_features, originals + paths, jobs, work / "features.pkl", "dynamics")
    scorer = Scorer(FuzzyThresholds())
    for pair, feats in zip(pairs, features[: len(pairs)], strict=True):
        scorer.original_features(pair["id"], feats)
    rows = []
    for (chain, side, pair), feats in zip(items, features[len(pairs):], strict=True):
        accepted, score, reason = scorer.judge(feats, pair["id"])
        rows.append({"chain": chain, "copy": side == "a", "id": pair["id"], "kind": pair["kind"],
                     "accepted": accepted, "score": score, "reason": reason})
    return rows


def report(rows: list[dict]) -> None:
    """A markdown table per chain: copies kept, pairs accepted, the hardest case of each."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["chain"]].append(row)
    print("\n| processor | copies accepted | lowest copy score | refused by | minimal pairs accepted | highest pair score |")
    print("|---|---|---|---|---|---|")
    for chain, members in groups.items():
        copies = [r for r in members if r["copy"]]
        pairs = [r for r in members if not r["copy"]]
        refused = Counter(r["reason"].split(":")[0] for r in copies if not r["accepted"])
        print(f"| {chain} | {sum(r['accepted'] for r in copies)} of {len(copies)} | "
              f"{min(r['score'] for r in copies):.3f} | {', '.join(f'{k} {v}' for k, v in refused.items()) or '-'} | "
              f"{sum(r['accepted'] for r in pairs)} of {len(pairs)} | {max(r['score'] for r in pairs):.3f} |")
    for row in rows:
        if row["accepted"] and not row["copy"]:
            print(f"ACCEPTED PAIR {row['chain']} {row['id']}: {row['reason']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("bench/data/minimal_pairs"))
    parser.add_argument("--work", type=Path, default=Path("bench/data/dynamics"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/dynamics.json"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if not (args.corpus / "manifest.json").exists():
        sys.exit(f"no corpus at {args.corpus}: run python bench/make_minimal_pairs.py --out {args.corpus} first")
    rows = run(args.corpus, args.work, args.jobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    report(rows)


if __name__ == "__main__":
    main()
