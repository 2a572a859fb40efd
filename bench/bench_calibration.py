"""One decision over every check's statistics, calibrated and judged a family held out (issue 23, item 1).

The service refuses a candidate when any check's score falls under its threshold. This asks
whether one decision fitted over all the checks' statistics together (a logistic regression over
the window scores, the detail burst, its allowance and the line's coarseness, the pitch shift,
the embedding similarity and the speech durations) tells copies from negatives better, and
measures it the only way that counts: each channel family left out of the fitting in turn. For
the family left out the model's threshold is the highest training negative of another text's
logit plus `--margin`; reported are the copies it accepts, those the service's rule accepts,
those either accepts (the model as a second chance for what the rule refuses), and every
negative of another text either accepts there.

Features come from bench_channels.py's cache (run it first on each set), so this costs the
judging only (about 3 minutes for the main set).

    .venv/bin/python bench/bench_channels.py --no-leave-out
    .venv/bin/python bench/bench_channels.py --no-leave-out --data bench/data/channels_pairs --out bench/out/channels_pairs.json
    .venv/bin/python bench/bench_calibration.py --data bench/data/channels --data bench/data/channels_pairs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_channels as bc  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.ops.tune import Scorer  # noqa: E402
from earmark.service.pipeline.verification import Judgement, detail_score_of  # noqa: E402

STATISTICS = ("worst", "mean", "short", "excess", "burst", "rest", "median", "loud", "limited", "compression",
              "detail", "pitch_semitones", "pitch_covered", "similarity", "duration_gap", "missing_excess")


def evidence_rows(data: Path, cache: Path, jobs: int) -> list[dict]:
    """Every item of one channel set with the service's verdict and, when the checks compared
    it, their statistics (`STATISTICS`); `strict` marks a negative of another text."""
    manifest, items = bc.load_items(data)
    paths = {o["id"]: data / o["path"] for o in manifest["originals"]}
    features = bc.features_of(list(paths.values()) + [i["file"] for i in items], cache, jobs)
    scorer = Scorer(FuzzyThresholds())
    for label, path in paths.items():
        scorer.original_features(label, *features[path])
    rows = []
    for item in items:
        query = features[item["file"]][0]
        accepted, _, reason = scorer.judge(query, item["original"])
        found = scorer.evidence(query, item["original"])
        row = {"set": data.name, "family": item["family"], "setting": item["setting"], "id": item["id"],
               "positive": bool(item["positive"]), "accepted": bool(accepted), "reason": reason.split(":")[0],
               "strict": not item["positive"] and (item["source"] == "pair" or item.get("text_changed") is True)}
        if not isinstance(found, Judgement):
            original = features[paths[item["original"]]][0]
            entry_speech = original.speech_s  # what the scorer's entry stores
            longer = max(entry_speech, query.speech_s, 1e-3)
            d, w = found.detail, found.window
            row["statistics"] = [w.worst_score, w.mean_score, w.worst_short_score, min(d.excess_db, 25.0),
                                 min(d.burst_db, 30.0), d.rest_db, d.median_db, float(d.loud_burst), float(d.limited),
                                 abs(d.compression_db), detail_score_of(d.excess_db, d.median_db, d.loud_burst),
                                 min(found.pitch.burst_semitones, 6.0), found.pitch.least_covered,
                                 float(np.dot(query.embedding, original.embedding)),
                                 abs(entry_speech - query.speech_s) / longer, min(found.missing.excess, 5.0)]
        rows.append(row)
    return rows


def held_out(rows: list[dict], margin: float, c: float) -> dict[str, dict]:
    """For each family, a logistic decision fitted on the others' copies and negatives of another
    text, its threshold `margin` (in logits) over their highest such negative; figures on the
    family left out. A candidate the checks never compared stays refused."""
    compared = [r for r in rows if "statistics" in r]
    x = np.array([r["statistics"] for r in compared])
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
    positive = np.array([r["positive"] for r in compared])
    strict = np.array([r["strict"] for r in compared])
    family = np.array([r["family"] for r in compared])
    rule = np.array([r["accepted"] for r in compared])
    copies = Counter(r["family"] for r in rows if r["positive"])
    result = {}
    for left_out in sorted(set(family) - {bc.CLEAN}):
        train = family != left_out
        fitted = train & (positive | strict)
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(z[fitted], positive[fitted])
        logit = model.decision_function(z)
        model_accepts = logit >= logit[train & strict].max() + margin
        either = model_accepts | rule
        held = family == left_out
        served = [f"{compared[i]['set']}:{compared[i]['setting']}/{compared[i]['id']}"
                  for i in np.flatnonzero(held & strict & either)]
        second_chance = Counter(compared[i]["reason"] for i in np.flatnonzero(held & positive & model_accepts & ~rule))
        result[left_out] = {
            "copies": copies[left_out], "rule": int((held & positive & rule).sum()),
            "model": int((held & positive & model_accepts).sum()), "either": int((held & positive & either).sum()),
            "strict_negatives": int((held & strict).sum()), "served_by_rule": int((held & strict & rule).sum()),
            "served_by_model": int((held & strict & model_accepts).sum()), "served_either": served,
            "second_chance_refused_by": dict(second_chance.most_common()),
            "coefficients": dict(zip(STATISTICS, np.round(model.coef_[0], 3).tolist(), strict=True)),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", help="a channel set (repeatable); default the main set")
    parser.add_argument("--features", type=Path, default=Path("bench/out/channels_features"))
    parser.add_argument("--margin", type=float, action="append", help="logits over the highest training negative (0.5, 1.0)")
    parser.add_argument("--c", type=float, default=1.0, help="the regression's inverse regularisation")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/out/calibration.json"))
    args = parser.parse_args()
    rows = [row for data in (args.data or [Path("bench/data/channels")])
            for row in evidence_rows(data, args.features, args.jobs)]
    report = {}
    for margin in args.margin or [0.5, 1.0]:
        report[str(margin)] = families = held_out(rows, margin, args.c)
        print(f"\nEach family left out; the model's threshold {margin} logits over the others' highest negative of another text")
        print("| family left out | copies | the service's rule | the model | either | negatives of another text served: rule / model / either |")
        print("|---|---|---|---|---|---|")
        for name, f in families.items():
            print(f"| {name} | {f['copies']} | {f['rule']} | {f['model']} | {f['either']} | "
                  f"{f['served_by_rule']} / {f['served_by_model']} / {len(f['served_either'])} of {f['strict_negatives']} |")
        for name, f in families.items():
            if f["served_either"]:
                print(f"SERVED held out ({name}): {', '.join(f['served_either'])}")
            if f["second_chance_refused_by"]:
                print(f"  {name}: copies the model takes that the rule refused, by the rule's reason: {f['second_chance_refused_by']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"sets": [str(d) for d in args.data or []], "c": args.c, "margins": report}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
