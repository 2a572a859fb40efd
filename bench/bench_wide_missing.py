"""Speech above the telephone band: would a wideband missing-speech check refuse the cuts still served?

Issue 23, eighth pass (bench/README.md): ends cut by 0.1-0.2 s under noise are still served when
what was cut lies above 3.8 kHz (the final /s/ of "seven of hearts"), where no stored spectrum
reaches. This benchmark runs the missing-speech check (fingerprint/missing_speech.py) on the wide
spectrum (fingerprint/detail.py, `wide_spectrum`: the detail spectrum's framing with 6 mel bands
over 3.8-7.9 kHz), which entries store since verification revision 10 (it was measured here
first, in the eighth pass). Two forms side by side:

- `plain`: the telephone band's check as it is, on the wide spectra;
- `gated`: the service's check above the band (`missing_wide_speech`): only the bands the line
  carries (their median level over the entry's speech cells within `CARRIED_DB` of the entry's,
  from `MIN_SPEECH_CELLS` cells; at least 2 such bands), and a frame counts only where it holds
  its noise (no band more than `HOLE_DB` under the query's floor: a low-bitrate encoder's hole,
  where it dropped the band in a quiet frame, is not noise) and the query's telephone band is
  noise alone there too (added in the ninth pass). The service refuses over 2 times.

On the cut benchmark (bench_cut_ends.py: run it first, its rows say which cuts are served) each
query is aligned as cut; on the channel set's copies (bench_channels.py's rows say which are
accepted) by the frame levels' best correlation within 0.4 s. Figures are the speech lacked over
its limit (3 dB where noise was added, 6 dB otherwise): over 1 and over 2 times.

    .venv/bin/python bench/bench_wide_missing.py [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_channels as channels  # noqa: E402
import bench_cut_ends as cut_ends  # noqa: E402
from earmark.fingerprint import missing_speech as missing  # noqa: E402
from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.fingerprint.detail import decibels, detail_spectrum, frame_levels, noise_floor, wide_spectrum  # noqa: E402

ALIGN_FRAMES = 40


def lacked(query: np.ndarray, entry: np.ndarray, offset: int, gated: bool, query_detail: np.ndarray,
           entry_detail: np.ndarray) -> float:
    """The speech the query lacks where it holds only noise, over the speech band's limit (3 dB
    where noise was added, 6 dB otherwise): with `gated`, the service's check above the telephone
    band (`missing_wide_speech`, which itself refuses over WIDE_LIMIT_SCALE times that); without,
    the telephone band's check run as it is on the wide spectra."""
    if gated:
        found = missing.missing_wide_speech(query, entry, offset, query_detail, entry_detail)
    else:
        q, r = decibels(query), decibels(entry)
        found = missing._lacked(q, r, noise_floor(q), noise_floor(r), offset)
    return found.excess * (missing.WIDE_LIMIT_SCALE if found.wide else 1.0)


def level_offset(query: np.ndarray, entry: np.ndarray) -> int:
    """Entry frame minus query frame at the frame levels' best correlation (a codec's delay)."""
    q, r = frame_levels(decibels(query)), frame_levels(decibels(entry))
    best, chosen = -2.0, 0
    for offset in range(-ALIGN_FRAMES, ALIGN_FRAMES + 1):
        q_index = np.arange(len(q))
        inside = (q_index + offset >= 0) & (q_index + offset < len(r))
        if inside.sum() < 20:
            continue
        correlation = float(np.corrcoef(q[q_index[inside]], r[q_index[inside] + offset])[0, 1])
        if correlation > best:
            best, chosen = correlation, offset
    return chosen


def _file_spectra(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A file's wideband spectrum, and its stored detail spectrum (to align by frame levels)."""
    pcm = decode_audio(Path(path).read_bytes(), 3600).pcm_16k
    return wide_spectrum(pcm), detail_spectrum(pcm)


def _cut_spectrum(job: str) -> tuple[np.ndarray, np.ndarray]:
    """A cut benchmark query's wide and detail spectra."""
    path, cut, noise, name = json.loads(job)
    pcm = cut_ends.original_pcm(path)
    query = cut_ends.noisy(cut_ends.variant(pcm, tuple(cut) if cut else None), tuple(noise), name)
    return wide_spectrum(query), detail_spectrum(query)


def cut_set(data: Path, rows_path: Path, jobs: int) -> None:
    """End cuts the cut benchmark serves, and every copy, judged by both forms."""
    manifest = json.loads((data / "manifest.json").read_text())
    cut_ends._load_talkers(data, manifest)
    paths = {o["id"]: str(data / o["path"]) for o in manifest["originals"]}
    rows = [r for r in json.loads(rows_path.read_text())["rows"] if r["positive"] or (r["cut"].startswith("end") and r["accepted"])]
    job_list = []
    for r in rows:
        side, _, seconds = r["cut"].partition("_")
        kind, _, snr = r["noise"].partition("_")
        job_list.append(json.dumps([paths[r["original"]], None if r["cut"] == "copy" else [side, float(seconds)],
                                    [kind, float(snr)], r["original"]]))
    with ProcessPoolExecutor(jobs) as pool:
        queries = list(pool.map(_cut_spectrum, job_list, chunksize=8))
        originals = dict(zip(paths, pool.map(_cut_spectrum, [json.dumps([p, None, ["clean", 0.0], o]) for o, p in paths.items()]),
                             strict=True))
    groups: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r, (query, query_detail) in zip(rows, queries, strict=True):
        entry, entry_detail = originals[r["original"]]
        groups[(r["noise"], "copies" if r["positive"] else "end cuts served")].append(
            (lacked(query, entry, 0, False, query_detail, entry_detail),
             lacked(query, entry, 0, True, query_detail, entry_detail)))
    print("\nCut benchmark: over 1 / over 2 times the limit, plain | gated\n")
    print("| noise | kind | n | plain | gated | worst gated |")
    print("|---|---|---|---|---|---|")
    for (noise, kind), values in sorted(groups.items()):
        a = np.array(values)
        print(f"| {noise} | {kind} | {len(a)} | {(a[:, 0] > 1).sum()} / {(a[:, 0] > 2).sum()} | "
              f"{(a[:, 1] > 1).sum()} / {(a[:, 1] > 2).sum()} | {a[:, 1].max():.2f} |")


def channel_set(data: Path, rows_path: Path, jobs: int) -> None:
    """The channel set's copies, judged by both forms; those the service accepts today apart."""
    manifest, items = channels.load_items(data)
    items = [item for item in items if item["positive"]]
    accepted = {r["id"] + r["family"] + r["setting"]: r["accepted"] for r in json.loads(rows_path.read_text())["rows"]}
    original_paths = {o["id"]: str(data / o["path"]) for o in manifest["originals"]}
    paths = sorted(set(original_paths.values()) | {str(item["file"]) for item in items})
    with ProcessPoolExecutor(jobs) as pool:
        spectra = dict(zip(paths, pool.map(_file_spectra, paths, chunksize=16), strict=True))
    groups: dict[str, list[tuple[float, float, bool]]] = defaultdict(list)
    for item in items:
        (q_wide, q_detail), (r_wide, r_detail) = spectra[str(item["file"])], spectra[original_paths[item["original"]]]
        offset = level_offset(q_detail, r_detail)
        groups[f"{item['family']}/{item['setting']}"].append(
            (lacked(q_wide, r_wide, offset, False, q_detail, r_detail),
             lacked(q_wide, r_wide, offset, True, q_detail, r_detail),
             accepted[item["id"] + item["family"] + item["setting"]]))
    print("\nChannel set copies: over 1 / over 2 times the limit, plain | gated (accepted today, gated over 2)\n")
    print("| setting | plain | gated | accepted today and gated over 2 |")
    print("|---|---|---|---|")
    totals = np.zeros(5, dtype=int)
    for setting, values in sorted(groups.items()):
        a = np.array(values, dtype=float)
        counts = [(a[:, 0] > 1).sum(), (a[:, 0] > 2).sum(), (a[:, 1] > 1).sum(), (a[:, 1] > 2).sum(),
                  ((a[:, 1] > 2) & (a[:, 2] > 0)).sum()]
        totals += counts
        if any(counts):
            print(f"| {setting} | {counts[0]} / {counts[1]} | {counts[2]} / {counts[3]} | {counts[4]} |")
    print(f"| all {sum(len(v) for v in groups.values())} copies | {totals[0]} / {totals[1]} | {totals[2]} / {totals[3]} | {totals[4]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("bench/data/channels"))
    parser.add_argument("--cut-rows", type=Path, default=Path("bench/out/cut_ends.json"))
    parser.add_argument("--channel-rows", type=Path, default=Path("bench/out/channels.json"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    for needed, maker in ((args.cut_rows, "bench_cut_ends.py"), (args.channel_rows, "bench_channels.py")):
        if not needed.exists():
            sys.exit(f"no {needed}: run python bench/{maker} first")
    cut_set(args.data, args.cut_rows, args.jobs)
    channel_set(args.data, args.channel_rows, args.jobs)


if __name__ == "__main__":
    main()
