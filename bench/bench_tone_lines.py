"""Mandarin copies and minimal pairs judged with the entry in Mandarin and in English, side by side.

The verification refuses a copy whose line hid the pitch of a syllable when the entry's
language has tones (`pitch_unverifiable`, service/pipeline/verification.py): the pitch check
cannot vouch for a tone it could not read. This benchmark measures what that costs and what it
guards, on the Mandarin originals of two corpora it was not chosen on: the channel pairs set
(make_channels.py's telephone and low-bitrate families, `bench/data/channels_pairs`) and the
minimal-pair benchmark's copies (make_minimal_pairs.py, `bench/data/minimal_pairs`). Every
copy and every B side (untouched and through each channel) is judged against its original
twice, with the entry's language English (the rule off) and Mandarin (on); the verdicts that
differ are listed, and recall and false accepts are reported per setting.

    .venv/bin/python bench/bench_tone_lines.py [--out bench/out/tone_lines.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.index.entry import Entry  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.pipeline.verification import Verifier  # noqa: E402

LANGUAGES = ("en", "zh")  # the rule off, then on


def _features(verifier: Verifier, path: str):
    with open(path, "rb") as audio:
        return verifier.features(decode_audio(audio, 3600).pcm_16k)


def judge_original(job: tuple[str, list[tuple[str, str, bool]]]) -> list[dict]:
    """Every (label, path, positive) item against one original, once per entry language."""
    original_path, items = job
    verifier = Verifier(FuzzyThresholds())
    original = _features(verifier, original_path)
    queries = {label: _features(verifier, path) for label, path, _ in items}
    rows = []
    for language in LANGUAGES:
        entry = verifier.attach(Entry(entry_id="original", profile_id="bench", pcm_digest="original", text="",
                                      normalized_text="", language=language, duration_s=0.0,
                                      speech_s=original.speech_s, engine_seconds=0.0, generation="g"), original)
        for label, _, positive in items:
            query = queries[label]
            judgement = verifier.evaluate(query, "bench", float(query.embedding @ original.embedding), entry)
            rows.append({"language": language, "item": label, "setting": label.split("/")[0], "positive": positive,
                         "accepted": judgement.accepted, "score": round(judgement.score, 4),
                         "reason": judgement.reason})
    return rows


def jobs_of(channels: Path, pairs: Path) -> dict[str, tuple[str, list[tuple[str, str, bool]]]]:
    """Per Mandarin original: its path and the items judged against it."""
    manifest = json.loads((channels / "manifest.json").read_text())
    copies = json.loads((pairs / "manifest.json").read_text())["copies"]
    jobs = {}
    for original in manifest["originals"]:
        if original.get("lang") != "cmn":
            continue
        name = original["id"]
        items = [(f"{c['setting']}/{c['id']}", str(channels / c["path"]), c["positive"])
                 for c in manifest["copies"] if c["original"] == name]
        items += [(f"clean/{n['id']}", str(channels / n["path"]), False)
                  for n in manifest["negatives"] if n["original"] == name]
        items += [(f"{c['transform']}/{c['id']}", str(pairs / c["path"]), True) for c in copies if c["id"] == name]
        jobs[name] = (str(channels / original["path"]), items)
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=Path, default=Path("bench/data/channels_pairs"))
    parser.add_argument("--pairs", type=Path, default=Path("bench/data/minimal_pairs"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/tone_lines.json"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    jobs = jobs_of(args.channels, args.pairs)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = [row for rows in pool.map(judge_original, jobs.values()) for row in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1, ensure_ascii=False))

    verdicts: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        verdicts[row["item"]][row["language"]] = row
    print(f"{len(jobs)} Mandarin originals, {len(verdicts)} items")
    print("| setting | copies accepted, entry in English | entry in Mandarin | B sides accepted, English | Mandarin |")
    print("|---|---|---|---|---|")
    counts: dict[str, Counter] = defaultdict(Counter)
    for item, by_language in verdicts.items():
        setting = item.split("/")[0]
        kind = "copies" if by_language["en"]["positive"] else "pairs"
        counts[setting][f"{kind}_total"] += 1
        for language in LANGUAGES:
            counts[setting][f"{kind}_{language}"] += by_language[language]["accepted"]
    totals: Counter = Counter()
    for setting in sorted(counts):
        row = counts[setting]
        totals.update(row)
        print(f"| {setting} | {row['copies_en']}/{row['copies_total']} | {row['copies_zh']}/{row['copies_total']} | "
              f"{row['pairs_en']}/{row['pairs_total']} | {row['pairs_zh']}/{row['pairs_total']} |")
    print(f"| all | {totals['copies_en']}/{totals['copies_total']} | {totals['copies_zh']}/{totals['copies_total']} | "
          f"{totals['pairs_en']}/{totals['pairs_total']} | {totals['pairs_zh']}/{totals['pairs_total']} |")
    changed = Counter(by_language["zh"]["reason"].split(":")[0] for by_language in verdicts.values()
                      if by_language["en"]["accepted"] != by_language["zh"]["accepted"])
    print(f"verdicts changed by the entry's language: {sum(changed.values())} ({dict(changed)})")


if __name__ == "__main__":
    main()
