"""Minimal pairs through hard clipping: both sides of every pair clipped, B judged against A.

Verification revision 13 compares the frames over a query's hard clipping (runs of samples at
full scale, marked by the decoder) by their peaks alone, so that the harmonics clipping adds
are not read as a changed syllable. That must not let a changed syllable through: here both
sides of each of the minimal-pair benchmark's 400 pairs are made louder by 3, 6, 9 and 12 dB
and clipped at full scale (as bench/make_channels.py's `clip_*` channels are, at the file's own
rate, written as 16-bit WAV), and each is judged against A as synthesised, the cached entry: A's
copy must be served, B never. Each is judged with the service's verification and as revision 12
did (the clipping not marked), with the entry in the pair's own language.

    .venv/bin/python bench/make_minimal_pairs.py                       # bench/data/minimal_pairs
    .venv/bin/python bench/bench_clipped_pairs.py [--jobs 2]           # bench/out/clipped_pairs.json
"""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pair_sides import arguments, both_sides, judge_against_a  # noqa: E402
from earmark.fingerprint.clipping import NO_BLOCKS  # noqa: E402
from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.pipeline.verification import QueryFeatures, Verifier  # noqa: E402

GAINS_DB = (3.0, 6.0, 9.0, 12.0)
RULES = ("service", "revision 12")
PROFILE = "clipped-pairs"


def clipped_wav(data: bytes, gain_db: float) -> bytes:
    """`data` (a WAV) `gain_db` louder, clipped at full scale, as 16-bit WAV at its own rate."""
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float64", always_2d=True)
    louder = np.clip(np.rint(samples * 32768.0 * 10 ** (gain_db / 20)), -32768, 32767).astype(np.int16)
    out = io.BytesIO()
    soundfile.write(out, louder, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _features(job: str) -> QueryFeatures:
    """The features of one side of a pair clipped at one gain, `job` "path|gain"."""
    path, gain = job.split("|")
    clipped = clipped_wav(Path(path).read_bytes(), float(gain))
    return Verifier(FuzzyThresholds()).features_of_decoded(decode_audio(clipped, 3600))


def judge(verifier: Verifier, entry_features: QueryFeatures, query: QueryFeatures, language: str,
          rule: str) -> tuple[bool, float, str]:
    """The verdict on `query` against A as the cached entry, under `rule` (RULES)."""
    clipped = query.clipped
    if rule == "revision 12":
        query.note_clipping(NO_BLOCKS)
    try:
        return judge_against_a(verifier, entry_features, query, language, PROFILE)
    finally:
        query.note_clipping(clipped)


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "clipped_pairs")
    pairs, originals, features = both_sides(args.data, tuple(GAINS_DB), _features, args.jobs, args.cache)
    verifier = Verifier(FuzzyThresholds())
    rows = []
    for pair, entry in zip(pairs, originals, strict=True):
        for side in ("a", "b"):
            for gain in GAINS_DB:
                query = next(features)
                for rule in RULES:
                    accepted, score, reason = judge(verifier, entry, query, pair["lang"], rule)
                    rows.append({"id": pair["id"], "kind": pair["kind"], "lang": pair["lang"], "side": side,
                                 "gain_db": gain, "clipped": bool(query.clipped.size), "rule": rule,
                                 "accepted": accepted, "score": round(score, 4), "reason": reason})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    served, count, marked, highest = Counter(), Counter(), Counter(), Counter()
    for row in rows:
        key = (row["rule"], row["side"], row["gain_db"])
        count[key] += 1
        served[key] += row["accepted"]
        marked[key] += row["clipped"]
        if row["side"] == "b" and not row["accepted"]:
            highest[key] = max(highest[key], row["score"])
    print("| rule | " + " | ".join(f"+{g:.0f} dB" for g in GAINS_DB) + " |")
    print("|---" * (len(GAINS_DB) + 1) + "|")
    for rule in RULES:
        cells = [f"A {served[rule, 'a', g]}/{count[rule, 'a', g]}, B {served[rule, 'b', g]}/{count[rule, 'b', g]} "
                 f"(highest refused {highest[rule, 'b', g]:.3f})" for g in GAINS_DB]
        print(f"| {rule} | " + " | ".join(cells) + " |")
    print("clipping marked (A, B): " + ", ".join(
        f"+{g:.0f} dB {marked['service', 'a', g]}, {marked['service', 'b', g]}" for g in GAINS_DB))
    for row in rows:
        if row["side"] == "b" and row["accepted"]:
            print(f"B served: {row['id']} clipped +{row['gain_db']:.0f} dB ({row['rule']}): {row['reason'][:140]}")


if __name__ == "__main__":
    main()
