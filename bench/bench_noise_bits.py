"""Hash bits over the noise: would comparing only those serve more noisy copies, and more cuts?

Issue 23, eighth pass (bench/README.md): under 10 dB of white or pink noise most copies are
refused by the hash's stretches, where bands just over the noise they were cleaned of set large,
random "strong" bits. This benchmark judges, side by side with the service's own verdict, what
two changes to the hash comparison would do (measured, not kept in the service):

- `now`: the verification as it is;
- `floor`: a bit is strong only where its four band energies stand above their band's floor
  (the band's lowest level over the recording once `without_steady_noise` has taken the noise
  out), on both sides;
- `weighted`: `floor`, and each stretch scored over the bits compared in it (a frame with no
  bit to compare weighs nothing, where it counted as half wrong; a frame with no counterpart
  still counts as 16 bits half wrong);
- `weighted_if_ends_visible`: `weighted` where the entry's first and last 100 ms of speech rise
  6 dB over the query's noise floor, in some band, in at least `--ends-share` of their frames
  (the missing-speech check can then see a cut end), `now` elsewhere.

Two sets: the channel set's noise and chain families (copies, pairs and human edits; features
cached by bench_channels.py) and the cut benchmark (bench_cut_ends.py: ends cut by 0.1-0.3 s
under noise; features cached by it). Run both of those first.

    .venv/bin/python bench/bench_noise_bits.py [--ends-share 0.8] [--jobs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_channels as channels  # noqa: E402
import bench_cut_ends as cut_ends  # noqa: E402
from earmark.fingerprint import matcher  # noqa: E402
from earmark.fingerprint.config import DEFAULT  # noqa: E402
from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.fingerprint.detail import decibels, noise_floor  # noqa: E402
from earmark.fingerprint.robust_hash import _pack  # noqa: E402
from earmark.fingerprint.spectrum import band_energies, without_steady_noise  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.ops.tune import Scorer  # noqa: E402
from earmark.service.pipeline import verification  # noqa: E402
from earmark.service.pipeline.verification import QueryFeatures  # noqa: E402

VARIANTS = ("now", "floor", "weighted", "weighted_if_ends_visible")
FAMILIES = ("noise", "chains")
NOMINAL_BITS = 16.0  # what a frame with no counterpart weighs (the strong half of 32 bits)
END_FRAMES = 10  # 100 ms of the detail spectrum's 10 ms frames
SPEECH_OVER_OWN_FLOOR_DB = 10.0
VISIBLE_OVER_QUERY_FLOOR_DB = 6.0


# ------------------------------------------------------------------------------------------
# The two changes


def above_floor_bits(pcm_16k: np.ndarray) -> np.ndarray:
    """One uint32 per hash frame: bit m set where bands m and m+1 stand above their floor in that
    frame and the one before (the four energies the bit is made from)."""
    energies = without_steady_noise(band_energies(pcm_16k, DEFAULT))
    sounding = energies > energies.min(axis=0)
    pairs = sounding[:, :-1] & sounding[:, 1:]
    flags = pairs.copy()
    flags[1:] &= pairs[:-1]
    return _pack(flags)


def with_strong(features: QueryFeatures, mask: np.ndarray) -> QueryFeatures:
    """`features` whose hash compares only the bits of `mask` among its strong ones."""
    state = features.__getstate__()
    hashed = state["hash"]
    state["hash"] = type(hashed)(hashed.bits, hashed.strong & mask, hashed.level_db)
    return QueryFeatures(**state)


def weighted_verify(query, reference, config):
    """`matcher.verify` with each stretch scored over the bits it compares (its alignment and
    counted frames are the matcher's own)."""
    aligned = matcher._align(query, reference, config)
    if aligned is None:
        return matcher.Verification(0.0, 0.0, 0.0, 0)
    offset, _, counted, both, q_idx = aligned
    r_idx = q_idx + offset
    wrong, compared = np.full(q_idx.size, NOMINAL_BITS / 2), np.full(q_idx.size, NOMINAL_BITS)
    mask = query.strong[q_idx[both]] & reference.strong[r_idx[both]]
    compared[both] = np.bitwise_count(mask)
    wrong[both] = np.bitwise_count((query.bits[q_idx[both]] ^ reference.bits[r_idx[both]]) & mask)

    def worst(selected: np.ndarray, window: int) -> float:
        w, c = wrong[selected], compared[selected]
        if w.size == 0:
            return 1.0
        if w.size > window:
            w, c = np.convolve(w, np.ones(window), "valid"), np.convolve(c, np.ones(window), "valid")
        else:
            w, c = np.array([w.sum()]), np.array([c.sum()])
        return float(np.where(c > 0, 1.0 - w / np.maximum(c, 1e-9), 0.5).min())

    return matcher.Verification(worst_score=worst(counted, config.window_frames), mean_score=0.0,
                                offset_s=offset / config.frames_per_second, windows=1,
                                worst_short_score=worst(counted & both, config.short_window_frames))


@contextlib.contextmanager
def weighted_stretches():
    """The service's verdict with `weighted_verify` in place of `matcher.verify`."""
    kept = verification.verify
    verification.verify = weighted_verify
    try:
        yield
    finally:
        verification.verify = kept


def ends_visible(query: QueryFeatures, entry: QueryFeatures) -> float:
    """The smaller share, over the entry's first and its last 100 ms of speech, of frames with a
    band 6 dB over the query's noise floor: where a cut end could be seen."""
    q, r = decibels(query.detail), decibels(entry.detail)
    speech = np.flatnonzero((r - noise_floor(r)).max(axis=1) > SPEECH_OVER_OWN_FLOOR_DB)
    if speech.size == 0:
        return 0.0
    visible = (r - noise_floor(q)[None, :]).max(axis=1) > VISIBLE_OVER_QUERY_FLOOR_DB
    first, last = speech[0], speech[-1]
    return float(min(visible[first:first + END_FRAMES].mean(), visible[max(0, last - END_FRAMES + 1):last + 1].mean()))


# ------------------------------------------------------------------------------------------
# Judging the sets


def judge_variants(queries: list[tuple[str, QueryFeatures, np.ndarray]], originals: dict[str, tuple[QueryFeatures, np.ndarray]],
                   ends_share: float) -> dict[str, list[bool]]:
    """Each variant's verdict on every (original id, features, above-floor mask) query."""
    verdicts: dict[str, list[bool]] = {}
    for variant in VARIANTS[:3]:
        scorer = Scorer(FuzzyThresholds())
        for label, (features, mask) in originals.items():
            scorer.original_features(label, features if variant == "now" else with_strong(features, mask))
        with weighted_stretches() if variant == "weighted" else contextlib.nullcontext():
            verdicts[variant] = [bool(scorer.judge(features if variant == "now" else with_strong(features, mask), original)[0])
                                 for original, features, mask in queries]
    visible = [ends_visible(features, originals[original][0]) >= ends_share for original, features, _ in queries]
    verdicts[VARIANTS[3]] = [w if v else n for w, n, v in zip(verdicts["weighted"], verdicts["now"], visible, strict=True)]
    return verdicts


def _mask_of_file(path: str) -> np.ndarray:
    return above_floor_bits(decode_audio(Path(path).read_bytes(), 3600).pcm_16k)


def _mask_of_cut(job: str) -> np.ndarray:
    path, cut, noise, name = json.loads(job)
    pcm = cut_ends.original_pcm(path)
    return above_floor_bits(cut_ends.noisy(cut_ends.variant(pcm, tuple(cut) if cut else None), tuple(noise), name))


def channel_set(data: Path, features_root: Path, jobs: int, ends_share: float) -> None:
    """The channel set's noise and chain families, every variant side by side."""
    manifest, items = channels.load_items(data)
    items = [item for item in items if item["family"] in FAMILIES]
    original_paths = {o["id"]: data / o["path"] for o in manifest["originals"]}
    paths = list(original_paths.values()) + [item["file"] for item in items]
    features = channels.features_of(paths, features_root, jobs)
    with ProcessPoolExecutor(jobs) as pool:
        masks = dict(zip(paths, pool.map(_mask_of_file, [str(p) for p in paths], chunksize=16), strict=True))
    originals = {label: (features[path][0], masks[path]) for label, path in original_paths.items()}
    verdicts = judge_variants([(item["original"], features[item["file"]][0], masks[item["file"]]) for item in items],
                              originals, ends_share)
    print(f"\nChannel set, families {', '.join(FAMILIES)}: copies accepted (negatives accepted: pairs and "
          f"human edits of another text / of the same text)\n")
    print("| setting | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    groups: dict[str, list[int]] = defaultdict(list)
    for n, item in enumerate(items):
        groups[f"{item['family']}/{item['setting']}"].append(n)
    for setting, members in sorted(groups.items()):
        cells = []
        for variant in VARIANTS:
            copies = sum(verdicts[variant][n] for n in members if items[n]["positive"])
            other = sum(verdicts[variant][n] for n in members if not items[n]["positive"] and items[n].get("text_changed") is not False)
            same = sum(verdicts[variant][n] for n in members if not items[n]["positive"] and items[n].get("text_changed") is False)
            total = sum(items[n]["positive"] for n in members)
            cells.append(f"{copies}/{total} ({other} / {same})")
        print(f"| {setting} | " + " | ".join(cells) + " |")


def cut_set(data: Path, cache: Path, jobs: int, ends_share: float) -> None:
    """The cut benchmark, every variant side by side: copies and cuts served, by noise."""
    manifest = json.loads((data / "manifest.json").read_text())
    cut_ends._load_talkers(data, manifest)
    originals = manifest["originals"]
    job_list, items = [], []
    for o in originals:
        for noise in cut_ends.NOISES:
            for cut in (None, *cut_ends.CUTS):
                job_list.append(json.dumps([str(data / o["path"]), cut, noise, o["id"]]))
                items.append((o["id"], f"{noise[0]}_{noise[1]:.0f}", cut is None))
    features = cut_ends.cached_features(job_list, jobs, cache, [str(data / o["path"]) for o in originals])
    with ProcessPoolExecutor(jobs) as pool:
        masks = list(pool.map(_mask_of_cut, job_list, chunksize=8))
    original_features = {}
    for o in originals:
        pcm = cut_ends.original_pcm(str(data / o["path"]))
        original_features[o["id"]] = (Scorer(FuzzyThresholds()).verifier.features(pcm), above_floor_bits(pcm))
    verdicts = judge_variants([(original, f, m) for (original, _, _), f, m in zip(items, features, masks, strict=True)],
                              original_features, ends_share)
    print(f"\nCut benchmark: copies served / cuts served, of {len(originals)} copies and {len(originals) * len(cut_ends.CUTS)} "
          "cuts per noise\n")
    print("| noise | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    by_noise: dict[str, Counter] = defaultdict(Counter)
    for variant in VARIANTS:
        for (_, label, positive), accepted in zip(items, verdicts[variant], strict=True):
            by_noise[label][(variant, positive)] += accepted
            by_noise["all"][(variant, positive)] += accepted
    for label, counts in by_noise.items():
        print(f"| {label} | " + " | ".join(f"{counts[(v, True)]} / {counts[(v, False)]}" for v in VARIANTS) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("bench/data/channels"))
    parser.add_argument("--features", type=Path, default=Path("bench/out/channels_features"))
    parser.add_argument("--cut-cache", type=Path, default=Path("bench/out/cut_ends/features.pkl"))
    parser.add_argument("--ends-share", type=float, default=0.8)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if not (args.data / "manifest.json").exists():
        sys.exit(f"no channel set at {args.data}: run python bench/make_channels.py --out {args.data} first")
    channel_set(args.data, args.features, args.jobs, args.ends_share)
    cut_set(args.data, args.cut_cache, args.jobs, args.ends_share)


if __name__ == "__main__":
    main()
