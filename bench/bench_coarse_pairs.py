"""Minimal pairs through low-rate codecs: both sides of every pair re-encoded, B judged against A.

The minimal-pair benchmark (make_minimal_pairs.py, bench_minimal_pairs.py) judges B as
synthesised against A, and A's copies through codecs; it never sends B through a codec. Issue 23
asks for pairs whose second side went through a channel. Here both sides of each of its pairs go
through the same low-rate codecs (ffmpeg's real encoders: GSM 06.10, G.726 at 16 kbit/s, Opus at
6 and 8 kbit/s, MP3 at 16 kbit/s and 11 kHz, Speex at 8 kbit/s), and each is judged against A as
synthesised, the cached entry: A's copy must be served, B never. Each is judged twice, with the
service's verification and with revision 10's rule (no coarse line excused past EXCUSED_MEDIAN_DB,
no burst limit over a coarse line's median), for comparison, with the entry in the pair's own
language and in English (as when an engine misidentifies Mandarin: the tone rule then does not
apply).

    .venv/bin/python bench/make_minimal_pairs.py                       # bench/data/minimal_pairs
    .venv/bin/python bench/bench_coarse_pairs.py [--jobs 2]            # bench/out/coarse_pairs.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pair_sides import arguments, both_sides, judge_against_a  # noqa: E402
from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.pipeline import verification  # noqa: E402
from earmark.service.pipeline.verification import QueryFeatures, Verifier  # noqa: E402

CODECS = {
    "gsm_8k": ("wav", ["-c:a", "libgsm_ms", "-ar", "8000", "-ac", "1"]),
    "g726_16k": ("wav", ["-c:a", "g726", "-b:a", "16k", "-ar", "8000", "-ac", "1"]),
    "opus_6k": ("opus", ["-c:a", "libopus", "-b:a", "6k", "-ar", "48000"]),
    "opus_8k": ("opus", ["-c:a", "libopus", "-b:a", "8k", "-ar", "48000"]),
    "mp3_16k_11k": ("mp3", ["-c:a", "libmp3lame", "-b:a", "16k", "-ar", "11025"]),
    "speex_8k": ("ogg", ["-c:a", "libspeex", "-b:a", "8k", "-ar", "8000", "-ac", "1"]),
}
RULES = ("service", "revision 10")
PROFILE = "coarse-pairs"


def _features(job: str) -> QueryFeatures:
    """The features of one side of a pair through one codec, `job` "path|codec"."""
    path, codec = job.split("|")
    extension, arguments = CODECS[codec]
    with tempfile.TemporaryDirectory() as tmp:
        encoded = Path(tmp) / f"encoded.{extension}"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", path, *arguments, "-flags", "+bitexact", str(encoded)],
                       check=True)
        data = encoded.read_bytes()
    return Verifier(FuzzyThresholds()).features_of_decoded(decode_audio(data, 3600))


def judge(verifier: Verifier, entry_features: QueryFeatures, query: QueryFeatures, language: str,
          rule: str) -> tuple[bool, float, str]:
    """The verdict on `query` against A as the cached entry, under `rule` (RULES)."""
    service = verification.COARSEST_EXCUSED_MEDIAN_DB, verification.CODEC_BURST_DB
    if rule == "revision 10":  # no coarse line excused past EXCUSED_MEDIAN_DB, no burst limit over the median
        verification.COARSEST_EXCUSED_MEDIAN_DB, verification.CODEC_BURST_DB = verification.EXCUSED_MEDIAN_DB, float("inf")
    try:
        return judge_against_a(verifier, entry_features, query, language, PROFILE)
    finally:
        verification.COARSEST_EXCUSED_MEDIAN_DB, verification.CODEC_BURST_DB = service


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "coarse_pairs")
    pairs, originals, features = both_sides(args.data, tuple(CODECS), _features, args.jobs, args.cache)
    verifier = Verifier(FuzzyThresholds())
    rows = []
    for pair, entry in zip(pairs, originals, strict=True):
        for side in ("a", "b"):
            for codec in CODECS:
                query = next(features)
                for rule in RULES:
                    verdicts = {language: judge(verifier, entry, query, language, rule)
                                for language in {pair["lang"], "en"}}  # an English pair is judged once
                    for label, language in (("pair's", pair["lang"]), ("en", "en")):
                        accepted, score, reason = verdicts[language]
                        rows.append({"id": pair["id"], "kind": pair["kind"], "lang": pair["lang"], "side": side,
                                     "codec": codec, "language": label, "rule": rule, "accepted": accepted,
                                     "score": round(score, 4), "reason": reason})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    served, count, highest = Counter(), Counter(), Counter()
    for row in rows:
        key = (row["rule"], row["language"], row["side"], row["codec"])
        count[key] += 1
        served[key] += row["accepted"]
        if row["side"] == "b" and not row["accepted"]:
            highest[key] = max(highest[key], row["score"])
    print("| rule | entry's language | " + " | ".join(CODECS) + " |")
    print("|---" * (len(CODECS) + 2) + "|")
    for rule in RULES:
        for language in ("pair's", "en"):
            cells = [f"A {served[rule, language, 'a', c]}/{count[rule, language, 'a', c]}, "
                     f"B {served[rule, language, 'b', c]}/{count[rule, language, 'b', c]}" for c in CODECS]
            print(f"| {rule} | {language} | " + " | ".join(cells) + " |")
    for row in rows:
        if row["side"] == "b" and row["accepted"] and (row["language"] == "pair's" or row["lang"] != "en"):
            print(f"B served: {row['id']} through {row['codec']} ({row['rule']}, {row['language']}): {row['reason'][:140]}")


if __name__ == "__main__":
    main()
