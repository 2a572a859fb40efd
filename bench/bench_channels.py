"""Copies and negatives through channel families (make_channels.py), judged as the service judges.

Every channel file of make_channels.py's manifest is judged against its original as the cached
entry with the service's own verdict (`service.ops.tune.Scorer`: `Verifier.judge`, which
the tier runs on every candidate), and so is every negative untouched (the `clean` family).
Features are computed once per file and cached under `--features` (one pickle a file, keyed by
the fingerprint code, its configuration and the file's size and mtime), so a rerun, or a new
threshold rule, costs only the judging.

Reported per family and per setting: recall of copies (synthetic voices and human recordings
apart), false accepts of minimal pairs' B sides and of the human word edits, the highest
negative score against the threshold, and the refusal reasons' counts. Then a leave-one-family-
out evaluation: `leave_one_family_out` takes a rule that chooses thresholds from the other
families' items (`fixed_thresholds` for now: the service's defaults, no fitting) and reports
recall and false accepts on each family left out. A calibration plugs in as another rule.

    .venv/bin/python bench/make_channels.py
    .venv/bin/python bench/bench_channels.py [--data bench/data/channels] [--out bench/out/channels.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
import itertools
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_accuracy import fingerprint_code_digest  # noqa: E402
from earmark.fingerprint.config import DEFAULT  # noqa: E402
from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.ops.tune import Scorer  # noqa: E402
from earmark.service.pipeline.verification import (  # noqa: E402
    DETAIL_ZERO_DB,
    SHORT_SCALE,
    Judgement,
    QueryFeatures,
    Verifier,
    detail_score_of,
    missing_score_of,
    pitch_score_of,
)

CLEAN = "clean"  # the family of negatives judged untouched

# ------------------------------------------------------------------------------------------
# Features, cached per file


def _cache_dir(root: Path) -> Path:
    key = hashlib.blake2b(repr((DEFAULT, fingerprint_code_digest())).encode(), digest_size=8).hexdigest()
    return root / key


def _cache_path(cache: Path, path: Path) -> Path:
    stat = path.stat()
    name = hashlib.blake2b(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=12).hexdigest()
    return cache / name[:2] / f"{name}.pkl"


def _compute(job: tuple[str, str]) -> None:
    path, target = job
    decoded = decode_audio(Path(path).read_bytes(), 3600)
    features = Verifier(FuzzyThresholds()).features_of_decoded(decoded)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{target}.part")
    tmp.write_bytes(pickle.dumps((features, decoded.duration_s)))
    tmp.replace(target)


def features_of(paths: list[Path], cache_root: Path, jobs: int) -> dict[Path, tuple[QueryFeatures, float]]:
    """(features, duration) of every file, computed where not cached."""
    cache = _cache_dir(cache_root)
    targets = {p: _cache_path(cache, p) for p in paths}
    todo = [(str(p), str(t)) for p, t in targets.items() if not t.exists()]
    print(f"features: {len(paths)} files, {len(paths) - len(todo)} cached, {len(todo)} to compute", flush=True)
    started = time.monotonic()
    if todo:
        with ProcessPoolExecutor(jobs) as pool:
            for n, _ in enumerate(pool.map(_compute, todo, chunksize=8), 1):
                if n % 1000 == 0:
                    print(f"features: {n} of {len(todo)} in {time.monotonic() - started:.0f} s", flush=True)
    return {p: pickle.loads(t.read_bytes()) for p, t in targets.items()}


# ------------------------------------------------------------------------------------------
# Items and judging


def load_items(data: Path) -> tuple[dict, list[dict]]:
    """(manifest, items): one item per channel file and per untouched negative (family `clean`)."""
    manifest = json.loads((data / "manifest.json").read_text())
    items = [dict(c) for c in manifest["copies"]]
    items += [{"id": n["id"], "original": n["original"], "family": CLEAN, "setting": CLEAN, "positive": False,
               "source": n["source"], "kind": n["kind"], "path": n["path"]} for n in manifest["negatives"]]
    text_changed = {n["id"]: n.get("text_changed") for n in manifest["negatives"]}
    for item in items:
        item["file"] = data / item["path"]
        if not item["positive"]:
            item["text_changed"] = text_changed.get(item["id"])
    return manifest, items


def judge(items: list[dict], originals: dict[str, tuple[QueryFeatures, float]],
          features: dict[Path, tuple[QueryFeatures, float]], thresholds: FuzzyThresholds) -> list[dict]:
    """Each item's verdict against its original under `thresholds`: rows with accepted, score, reason."""
    scorer = Scorer(thresholds)
    for label, (feats, duration) in originals.items():
        scorer.original_features(label, feats, duration)
    rows = []
    for item in items:
        accepted, score, reason = scorer.judge(features[item["file"]][0], item["original"])
        rows.append({k: v for k, v in item.items() if k != "file"}
                    | {"accepted": bool(accepted), "score": round(float(score), 4), "reason": reason})
    return rows


# A threshold rule: given the training items and a way to judge items under thresholds, the
# thresholds to use on the family left out.
Judge = Callable[[list[dict], FuzzyThresholds], list[dict]]
ThresholdRule = Callable[[list[dict], Judge], FuzzyThresholds]


def fixed_thresholds(train: list[dict], judge_items: Judge) -> FuzzyThresholds:
    """The service's default thresholds: no fitting (the baseline of issue 23)."""
    return FuzzyThresholds()


# The thresholds `fitted_thresholds` may choose from, and the margin every strict negative (a
# minimal pair's B side, or a human edit heard as another text) must stay under each threshold
# by, on the reported score's scale (issue 23: 0.05).
GRID_WINDOW = (0.70, 0.72, 0.74, 0.76)
GRID_SHORT = (0.58, 0.61, 0.65, 0.68)
GRID_DETAIL = tuple(round(1.0 - db / DETAIL_ZERO_DB, 4) for db in (4.5, 5.0, 5.5, 5.72, 6.0, 6.5, 7.0))
MARGIN = 0.05


def evidence_table(items: list[dict], scorer: Scorer, features: dict) -> dict[str, np.ndarray]:
    """Each item's evidence before any threshold, as columns: window and short scores, detail
    excess and median, missing-speech and pitch scores (a refusal before the comparisons: -1
    everywhere)."""
    columns: dict[str, list] = defaultdict(list)
    for item in items:
        found = scorer.evidence(features[item["file"]][0], item["original"])
        compared = not isinstance(found, Judgement)
        columns["worst"].append(found.window.worst_score if compared else -1.0)
        columns["short"].append(found.window.worst_short_score if compared else -1.0)
        columns["excess"].append(found.detail.excess_db if compared else 99.0)
        columns["median"].append(found.detail.median_db if compared else 99.0)
        columns["loud"].append(found.detail.loud_burst if compared else True)
        columns["pitch"].append(pitch_score_of(found.pitch.burst_semitones) if compared else -1.0)
        columns["missing"].append(missing_score_of(found.missing) if compared else -1.0)
        columns["positive"].append(bool(item["positive"]))
        columns["strict"].append(not item["positive"] and (item["source"] == "pair" or item.get("text_changed") is True))
        columns["family"].append(item["family"])
    return {k: np.array(v) for k, v in columns.items()}


def fitted_thresholds(items: list[dict], evidence: dict[str, np.ndarray], defaults: FuzzyThresholds) -> ThresholdRule:
    """A rule that fits the window, short-window and detail thresholds jointly on the training
    families: the most recall (the mean over families) such that every strict negative stays
    MARGIN under some threshold. Evaluated on evidence columns (`evidence_table(items, ...)`,
    fast), applied by the service's own judge on the family left out."""
    row_of = {id(item): n for n, item in enumerate(items)}

    def rule(train: list[dict], judge_items: Judge) -> FuzzyThresholds:
        rows = np.array([row_of[id(item)] for item in train])
        e = {k: v[rows] for k, v in evidence.items()}
        families = sorted(set(e["family"]) - {CLEAN})
        best: tuple[float, FuzzyThresholds] = (-1.0, defaults)
        detail_score = np.array([detail_score_of(x, m, loud) for x, m, loud in zip(e["excess"], e["median"], e["loud"], strict=True)])
        for window, short, detail in itertools.product(GRID_WINDOW, GRID_SHORT, GRID_DETAIL):
            # Each check's score less its threshold, on the reported score's scale: the worst decides.
            # Missing speech is judged against the detail threshold (service/pipeline/verification.py).
            slack = np.minimum.reduce([e["worst"] - window, (e["short"] - short) * SHORT_SCALE,
                                       detail_score - detail, e["missing"] - detail,
                                       e["pitch"] - defaults.min_pitch_score])
            if (slack[e["strict"]] > -MARGIN).any():
                continue
            accepted = slack >= 0
            recall = float(np.mean([accepted[e["positive"] & (e["family"] == f)].mean() for f in families
                                    if (e["positive"] & (e["family"] == f)).any()]))
            if recall > best[0]:
                best = (recall, replace(defaults, min_window_score=window, min_short_window_score=short,
                                        min_detail_score=detail))
        return best[1]
    return rule


def leave_one_family_out(items: list[dict], judge_items: Judge, rule: ThresholdRule) -> dict[str, dict]:
    """For each family: thresholds from `rule` on every other family, figures on the one left out."""
    result = {}
    for family in sorted({i["family"] for i in items}):
        train = [i for i in items if i["family"] != family]
        thresholds = rule(train, judge_items)
        rows = judge_items([i for i in items if i["family"] == family], thresholds)
        result[family] = {"thresholds": asdict(thresholds), **figures(rows)}
    return result


# ------------------------------------------------------------------------------------------
# Figures


def _reasons(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(r["reason"].split(":")[0] for r in rows if not r["accepted"]).most_common())


def figures(rows: list[dict]) -> dict:
    """Recall of copies (synthetic: corpus and pair A sides; human apart), false accepts, the
    highest negative score (of all negatives, of the pairs' B sides, and of the negatives whose
    text differs: pairs and the human edits the engine hears as another text), refusal reasons
    of copies."""
    copies = [r for r in rows if r["positive"]]
    negatives = [r for r in rows if not r["positive"]]
    out: dict = {}
    for name, group in (("synthetic", [r for r in copies if r["source"] != "human"]),
                        ("human", [r for r in copies if r["source"] == "human"])):
        out[f"copies_{name}"] = len(group)
        out[f"accepted_{name}"] = sum(r["accepted"] for r in group)
    out["lowest_copy_score"] = min((r["score"] for r in copies), default=None)
    for name, group in (("pairs", [r for r in negatives if r["source"] == "pair"]),
                        ("human_edits", [r for r in negatives if r["source"] == "human"])):
        out[f"negatives_{name}"] = len(group)
        out[f"false_accepts_{name}"] = sum(r["accepted"] for r in group)
    out["false_accepts_human_edits_text_changed"] = sum(r["accepted"] and r.get("text_changed") is True
                                                       for r in negatives if r["source"] == "human")
    other_text = [r for r in negatives if r["source"] == "pair" or r.get("text_changed") is True]
    for name, group in (("negative", negatives), ("pair", [r for r in negatives if r["source"] == "pair"]),
                        ("other_text", other_text)):
        worst = max(group, key=lambda r: r["score"], default=None)
        out[f"highest_{name}_score"] = worst["score"] if worst else None
        out[f"highest_{name}"] = f"{worst['setting']}/{worst['id']}" if worst else None
    out["copy_refusals"] = _reasons(copies)
    return out


def _pct(accepted: int, n: int) -> str:
    return f"{accepted}/{n} ({100 * accepted / n:.1f}%)" if n else "-"


def table(groups: dict[str, dict], threshold: float, label: str) -> list[str]:
    lines = [f"| {label} | copies, synthetic | copies, human | pairs accepted | human edits accepted | "
             f"highest negative (margin to {threshold}) | copies refused by |",
             "|---|---|---|---|---|---|---|"]
    for name, f in groups.items():
        high = f["highest_negative_score"]
        high_s = f"{high:.3f} ({threshold - high:+.3f})" if high is not None else "-"
        refused = ", ".join(f"{k} {v}" for k, v in f["copy_refusals"].items()) or "-"
        lines.append(f"| {name} | {_pct(f['accepted_synthetic'], f['copies_synthetic'])} | "
                     f"{_pct(f['accepted_human'], f['copies_human'])} | "
                     f"{f['false_accepts_pairs']}/{f['negatives_pairs']} | "
                     f"{f['false_accepts_human_edits']}/{f['negatives_human_edits']} | {high_s} | {refused} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("bench/data/channels"))
    parser.add_argument("--features", type=Path, default=Path("bench/out/channels_features"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/channels.json"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-leave-out", action="store_true",
                        help="judge once and print the tables, without the leave-one-family-out passes (each judges "
                             "every family again: most of the run)")
    args = parser.parse_args()
    if not (args.data / "manifest.json").exists():
        sys.exit(f"no channel set at {args.data}: run python bench/make_channels.py --out {args.data} first")
    manifest, items = load_items(args.data)
    original_paths = {o["id"]: args.data / o["path"] for o in manifest["originals"]}
    features = features_of(list(original_paths.values()) + [i["file"] for i in items], args.features, args.jobs)
    originals = {label: features[path] for label, path in original_paths.items()}

    def judge_items(subset: list[dict], thresholds: FuzzyThresholds) -> list[dict]:
        return judge(subset, originals, features, thresholds)

    started = time.monotonic()
    defaults = FuzzyThresholds()
    rows = judge_items(items, defaults)
    print(f"judged {len(rows)} files in {time.monotonic() - started:.0f} s\n", flush=True)
    threshold = defaults.min_window_score

    by_family: dict[str, list[dict]] = defaultdict(list)
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_family[row["family"]].append(row)
        by_setting[f"{row['family']}/{row['setting']}"].append(row)
    family_figures = {f: figures(r) for f, r in by_family.items()}
    setting_figures = {s: figures(r) for s, r in by_setting.items()}
    lofo: dict[str, dict] = {}
    fitted: dict[str, dict] = {}
    if not args.no_leave_out:
        lofo = leave_one_family_out(items, judge_items, fixed_thresholds)
        scorer = Scorer(defaults)
        for label, (feats, duration) in originals.items():
            scorer.original_features(label, feats, duration)
        fitted = leave_one_family_out(items, judge_items,
                                      fitted_thresholds(items, evidence_table(items, scorer, features), defaults))

    outside = set(manifest.get("outside_targets", []))
    print("\n".join(table(family_figures, threshold, "family")))
    print()
    print("\n".join(table(setting_figures, threshold, "family/setting")))
    if lofo:
        print("\nLeave one family out (rule: fixed_thresholds, the defaults; in-sample | left out):")
        print("| family | copies accepted, in-sample | left out | negatives accepted, in-sample | left out |")
        print("|---|---|---|---|---|")
        for family, held in lofo.items():
            f = family_figures[family]
            n = f["copies_synthetic"] + f["copies_human"]
            negs = f["negatives_pairs"] + f["negatives_human_edits"]
            mark = " (outside targets)" if family in outside else ""
            print(f"| {family}{mark} | {_pct(f['accepted_synthetic'] + f['accepted_human'], n)} | "
                  f"{_pct(held['accepted_synthetic'] + held['accepted_human'], held['copies_synthetic'] + held['copies_human'])} | "
                  f"{f['false_accepts_pairs'] + f['false_accepts_human_edits']}/{negs} | "
                  f"{held['false_accepts_pairs'] + held['false_accepts_human_edits']}/"
                  f"{held['negatives_pairs'] + held['negatives_human_edits']} |")
        print("\nLeave one family out (rule: fitted_thresholds: window, 0.25 s window and detail thresholds chosen "
              "on the other families, every strict negative 0.05 under; left out):")
        print("| family | window / short / detail thresholds | copies accepted | strict negatives accepted | highest other-text negative |")
        print("|---|---|---|---|---|")
        for family, held in fitted.items():
            t = held["thresholds"]
            n = held["copies_synthetic"] + held["copies_human"]
            strict = held["false_accepts_pairs"] + held["false_accepts_human_edits_text_changed"]
            print(f"| {family} | {t['min_window_score']} / {t['min_short_window_score']} / {t['min_detail_score']} | "
                  f"{_pct(held['accepted_synthetic'] + held['accepted_human'], n)} | {strict} | "
                  f"{held['highest_other_text_score']} ({held['highest_other_text']}) |")
    accepted_negatives = [r for r in rows if r["accepted"] and not r["positive"]]
    for row in accepted_negatives:
        heard = {None: "", True: ", engine hears another text", False: ", engine hears the same text"}
        print(f"ACCEPTED NEGATIVE {row['family']}/{row['setting']} {row['id']} ({row['kind']}"
              f"{heard[row.get('text_changed')] if row['source'] == 'human' else ''}): {row['reason'][:120]}")
    counts = Counter(o["source"] for o in manifest["originals"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "originals": dict(counts), "negatives": len(manifest["negatives"]), "files": len(rows),
        "thresholds": asdict(defaults), "outside_targets": sorted(outside),
        "families": family_figures, "settings": setting_figures,
        "leave_one_family_out": {"rule": "fixed_thresholds", "families": lofo},
        "leave_one_family_out_fitted": {"rule": "fitted_thresholds", "margin": MARGIN, "families": fitted},
        "rows": rows,
    }, indent=1, ensure_ascii=False, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
