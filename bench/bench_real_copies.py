"""Real human recordings through real encoders: does the fuzzy tier still take their copies?

The accuracy and minimal-pair corpora are synthetic (espeak-ng): one clean voice, deep spectral
valleys, a steady pitch. This benchmark judges copies of real recordings instead: the twelve
recordings of Debian's pocketsphinx-testdata that bench_engines.py uses (five LibriVox readings,
five spoken card names, two commands; 16 kHz, room tone in the pauses), each re-encoded with
make_corpus's own commands (MP3, AAC, Opus, telephone codecs, the limiter, noise) and padded
with digital silence. Every copy is judged against its original as a cached entry, with the
service's own `Verifier.judge` (default thresholds) through `earmark tune`'s Scorer.
Cutting the first 0.2 s is judged too, apart: it reaches into the speech of most of these
recordings, so refusing it is the minimal-pair rule, not a miss. So are copies through
bench_dynamics.py's eight dynamics chains (limiters, clipping, a compressor, normalisers;
`dyn:` rows), which the limited judgement of the detail check was checked on.

    apt-get install pocketsphinx-testdata ffmpeg sox
    .venv/bin/python bench/bench_real_copies.py [--out bench/out/real_copies.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_corpus as mc  # noqa: E402
from bench_dynamics import CHAINS, output_name, process_chain  # noqa: E402
from bench_engines import load_pcm, recordings  # noqa: E402
from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.ops.tune import Scorer  # noqa: E402

# make_corpus's transforms, by name: the same encoders and settings as the synthetic corpus.
CORPUS_TRANSFORMS = ("mp3_32k", "aac_64k", "opus_24k", "wav_8k", "gain_minus6", "gain_plus6", "noise_30db",
                     "gsm_8k", "g726_16k", "g723_1", "opus_8k", "mp3_16k_11k", "ulaw_8k")
# Padded with digital silence, then (for two) encoded: an export with lead-in and tail.
PADDED = {
    "pad_0_5_wav": (("pad", "0.5", "0.5"), None),
    "pad_0_5_aac": (("pad", "0.5", "0.5"), "aac_64k"),
    "pad_1_mp3": (("pad", "1", "1"), "mp3_32k"),
}
CUT = ("cut_start_0_2", ("trim", "0.2"))
DYNAMICS = "dyn:"  # the prefix of the dynamics chains' rows


def build_copies(work: Path, names: list[str]) -> dict[tuple[str, str], Path]:
    """Every copy of every original (work/orig/<name>.wav), made with make_corpus's run_job, by
    (recording, copy). Jobs run in order: a padded WAV is made before its encoding reads it."""
    jobs: list[tuple[str | None, str, dict, str]] = []  # (copy or None for a step, recording, job, path)
    for name in names:
        src = f"orig/{name}.wav"
        for transform in CORPUS_TRANSFORMS:
            ext, tool, args = mc.TRANSFORMS[transform]
            jobs.append((transform, name, mc.transform_job(tool, args, src, name), f"copies/{transform}/{name}.{ext}"))
        for transform, (pad, encoder) in PADDED.items():
            padded = f"padded/{transform}/{name}.wav"
            jobs.append((transform if encoder is None else None, name, {"op": "sox", "src": src, "args": list(pad)}, padded))
            if encoder is not None:
                ext, tool, args = mc.TRANSFORMS[encoder]
                jobs.append((transform, name, mc.transform_job(tool, args, padded, name), f"copies/{transform}/{name}.{ext}"))
        jobs.append((CUT[0], name, {"op": "sox", "src": src, "args": list(CUT[1])}, f"copies/{CUT[0]}/{name}.wav"))
    built = {}
    for transform, name, job, rel in jobs:
        result = mc.run_job(job, str(work), rel)
        if not result["ok"]:
            raise RuntimeError(f"{rel}: {result['error']}")
        if transform is not None:
            built[(name, transform)] = work / rel
    for name in names:
        for chain in CHAINS:
            target = work / "dynamics" / chain / output_name(chain, name)
            built[(name, f"{DYNAMICS}{chain}")] = Path(process_chain((chain, str(work / "orig" / f"{name}.wav"), str(target))))
    return built


def judge_copies(originals: dict[str, np.ndarray], copies: dict[tuple[str, str], Path]) -> list[dict]:
    """One row per copy: the service's verdict against its original as the cached entry."""
    scorer = Scorer(FuzzyThresholds())
    for name, pcm in originals.items():
        scorer.original(name, pcm)
    rows = []
    for (name, transform), path in sorted(copies.items()):
        decoded = decode_audio(path.read_bytes(), 3600)
        pair = scorer.score(str(path), decoded.pcm_16k, name, transform, positive=transform != CUT[0],
                            clipped=decoded.clipped_blocks)
        rows.append({"recording": name, "transform": transform, "accepted": pair.accepted,
                     "score": round(pair.score, 4), "reason": pair.reason})
    return rows


def report(rows: list[dict]) -> dict:
    """Per transform: accepted of n, lowest score, the checks that refused."""
    by: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by[row["transform"]].append(row)
    summary = {}
    for transform, members in sorted(by.items()):
        refusals: dict[str, int] = defaultdict(int)
        for row in members:
            if not row["accepted"]:
                refusals[row["reason"].split(":")[0]] += 1
        summary[transform] = {"count": len(members), "accepted": sum(r["accepted"] for r in members),
                              "lowest_score": min(r["score"] for r in members), "refused_by": dict(refusals)}
    copies = [r for r in rows if r["transform"] != CUT[0] and not r["transform"].startswith(DYNAMICS)]
    summary["all copies"] = {"count": len(copies), "accepted": sum(r["accepted"] for r in copies)}
    dynamics = [r for r in rows if r["transform"].startswith(DYNAMICS)]
    summary["dynamics copies"] = {"count": len(dynamics), "accepted": sum(r["accepted"] for r in dynamics)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/real_copies.json"))
    args = parser.parse_args()
    items = recordings()
    originals = {item["name"]: load_pcm(item) for item in items}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "orig").mkdir()
        for name, pcm in originals.items():
            soundfile.write(work / "orig" / f"{name}.wav", pcm, 16000, subtype="PCM_16")
        rows = judge_copies(originals, build_copies(work, list(originals)))
    summary = report(rows)
    print(f"{len(originals)} recordings, {sum(len(p) for p in originals.values()) / 16000:.1f} s\n")
    print("| copy | accepted | lowest score | refused by |")
    print("|---|---|---|---|")
    for transform, g in summary.items():
        if transform in ("all copies", "dynamics copies"):
            continue
        refused = ", ".join(f"{reason} {n}" for reason, n in g["refused_by"].items()) or "-"
        print(f"| {transform} | {g['accepted']} of {g['count']} | {g['lowest_score']:.3f} | {refused} |")
    total = summary["all copies"]
    dynamics = summary["dynamics copies"]
    print(f"\ncopies accepted: {total['accepted']} of {total['count']} (the {CUT[0]} row is not a copy, the "
          f"{DYNAMICS} rows are apart: {dynamics['accepted']} of {dynamics['count']})")
    for row in rows:
        if not row["accepted"] and row["transform"] != CUT[0]:
            print(f"  {row['transform']} {row['recording']}: {row['reason'][:150]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
