"""Segment reuse, second case (issue 24): new recordings made of stretches of a cached one,
through the HTTP API of `earmark serve` with its default engine (Whisper tiny.en).

Corpus (bench/data/excerpts, built once; espeak-ng and ffmpeg needed):
* originals: "meetings" of MINUTES each, sentences of the GPL-3 text read by three espeak-ng
  voices in turn (a paragraph each), joined with 0.4-1.0 s pauses; and the tests' two real
  50 s readings (LJ Speech, FLEURS), cut at their pauses;
* variants of each original: `cut` (5-60 s of it taken out), `insert` (5-60 s of other speech
  put in at a sentence boundary), `replace` (5-60 s replaced by other speech), `trim` (10-30 s
  off each end), `clip` (a 30-90 s stretch of it), `changed` (one sentence with one word
  changed, same voice: the changed word must come from the engine), and `joined` (two cached
  originals one after the other);
* negatives (looked up only): an original never cached, and stretches of a cached one read
  by another voice;
* channels: every variant clean (WAV), as MP3 at 48 kbit/s and through the telephone band.

Phases, one server, one run: the originals recognized (cached, namespace `edits`); each variant
recognized whole in a namespace of its own (`whole`: the engine's whole-file answer and time,
never reused), then through every channel in `edits` with `no-store`; then the negatives with
`/lookup`. Reports, by variant kind and by channel: the share of the reusable audio (the
seconds that are the cached original's) covered by spans, the engine time saved against the
reusable share, word error rates of the stitched and the whole-file answers against the
references (espeak-ng originals), false spans (a span over foreign speech or over the changed
word), and the span search's time against the engine's. Writes bench/out/excerpts.json; CI does
not run this.

    nice .venv/bin/python bench/bench_excerpts.py [--minutes 3] [--originals 2] [--channels clean,mp3,telephone]
        [--real more.mp3 ...] [--kinds cut,changed] [--no-whole]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
from bench_engines import normalise
from bench_segments import _post, _read, _wer, namespaced_server, stage_seconds, through
from harness import OUT_DIR, ROOT, git_head, machine_info, require_tools, stage_totals

DATA = ROOT / "bench" / "data" / "excerpts"
RATE = 16000
TEXT = Path("/usr/share/common-licenses/GPL-3")
FIXTURES = ROOT / "tests" / "fixtures"
# Reference words either side of a seam whose errors count as the seam's.
SEAM_WORDS = 3
# espeak-ng's plain `en-gb` ignores variants (+f3, +m2 read exactly as en-gb): no meeting uses it,
# so the `other_variant` negative is always another rendering.
MEETING_VOICES = [("en-us+m3", "en-gb-x-rp+f3", "en-029+m1"), ("en-gb-scotland+f2", "en-us+m1", "en-gb-x-rp+m4")]
# Other speakers: base voices the meetings do not use (an espeak-ng variant of a meeting's own
# voice reads with its exact timing, only its pitch and formants moved: the `other_variant`
# negative measures that separately).
OTHER_VOICES = ("en-gb-x-gbclan+f2", "en-us-nyc+m4")
# One word changed in a sentence: the pairs the `changed` variant draws from (same voice).
# A word and another that sounds different ("license" / "licence" was dropped: the same sound,
# so the "changed" recording was the original itself).
SWAPS = {"software": "hardware", "program": "problem", "copy": "coffee", "work": "world",
         "free": "three", "source": "sauce", "modify": "notify", "rights": "lights", "code": "coat"}
CHANNELS = ("clean", "mp3", "telephone")
# A span reaching this far into foreign speech is a false span (spans end in pauses, and pauses
# lie between the pieces).
FOREIGN_SLACK_S = 0.3


def _say(text: str, voice: str) -> np.ndarray:
    """`text` read by espeak-ng `voice` (cached under DATA by what was said and by whom)."""
    path = DATA / f"{hashlib.blake2b(f'{voice}|{text}'.encode(), digest_size=8).hexdigest()}.wav"
    if not path.exists():
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return _read(path)


def _sentences() -> list[str]:
    """The GPL-3 text as sentences of 6 to 30 words (a few hundred)."""
    text = re.sub(r"\s+", " ", TEXT.read_text())
    found = [s.strip() for s in re.split(r"(?<=[.;:])\s+", text)]
    return [s for s in found if 6 <= len(s.split()) <= 30 and re.fullmatch(r"[A-Za-z0-9 ,.;:'\"()-]+", s)]


def _gap(rng: random.Random) -> np.ndarray:
    return np.zeros(int(rng.uniform(0.4, 1.0) * RATE), dtype=np.float32)


def _meeting(n: int, minutes: float, sentences: list[str], rng: random.Random) -> list[dict]:
    """Pieces (sentence samples, text, voice) reading MINUTES of sentences in three voices."""
    pieces, total, at = [], 0.0, rng.randrange(len(sentences))
    voices = MEETING_VOICES[n % len(MEETING_VOICES)]
    while total < minutes * 60:
        voice = voices[(len(pieces) // 4) % len(voices)]
        text = sentences[at % len(sentences)]
        samples = _say(text, voice)
        pieces.append({"samples": samples, "text": text, "voice": voice, "n": len(pieces)})
        total += len(samples) / RATE + 0.7
        at += 1
    return pieces


def _human(path: Path) -> list[dict]:
    """A real reading cut at its longest pauses into pieces (no per-piece reference)."""
    from earmark.fingerprint.spans import pauses
    from earmark.fingerprint.speech import frame_levels_db

    samples = _read(path)
    cuts = [0] + [int(gap.middle_s * RATE) for gap in pauses(frame_levels_db(samples)) if gap.duration_s >= 0.3] + [len(samples)]
    return [{"samples": samples[a:b], "text": "", "voice": "human", "n": i}
            for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)) if b - a > RATE // 2]


def _foreign(rng: random.Random, sentences: list[str], seconds: float, tag: str) -> list[dict]:
    """Other speech (other voices, other sentences) of about `seconds`."""
    pieces, total = [], 0.0
    while total < seconds:
        text = rng.choice(sentences)
        voice = rng.choice(OTHER_VOICES)
        samples = _say(text, voice)
        pieces.append({"samples": samples, "text": text, "voice": voice, "foreign": True})
        total += len(samples) / RATE
    return pieces


def _block(pieces: list[dict], rng: random.Random, low_s: float, high_s: float) -> tuple[int, int]:
    """A run of consecutive pieces [i, j) lasting low_s to high_s, inside (not at the ends)."""
    for _ in range(200):
        i = rng.randrange(1, max(2, len(pieces) - 2))
        j, total = i, 0.0
        while j < len(pieces) - 1 and total < low_s:
            total += len(pieces[j]["samples"]) / RATE
            j += 1
        if low_s <= total <= high_s:
            return i, j
    return 1, 2


def _from_start(pieces: list[dict], seconds: float) -> int:
    """How many pieces from the start last at least `seconds` (at most half of them)."""
    total = 0.0
    for count, piece in enumerate(pieces[: len(pieces) // 2], start=1):
        total += len(piece["samples"]) / RATE
        if total >= seconds:
            return count
    return len(pieces) // 2


def _variants(original: dict, rng: random.Random, sentences: list[str]) -> list[dict]:
    """Each edit of one original: its pieces, each marked as the original's or foreign."""
    pieces, tag = original["pieces"], original["id"]
    out = []
    i, j = _block(pieces, rng, 5, 60)
    out.append({"kind": "cut", "pieces": pieces[:i] + pieces[j:]})
    k = rng.randrange(1, len(pieces) - 1)
    out.append({"kind": "insert", "pieces": pieces[:k] + _foreign(rng, sentences, rng.uniform(5, 60), f"{tag}_ins") + pieces[k:]})
    i, j = _block(pieces, rng, 5, 60)
    out.append({"kind": "replace", "pieces": pieces[:i] + _foreign(rng, sentences, rng.uniform(5, 60), f"{tag}_rep") + pieces[j:]})
    head, tail = _from_start(pieces, rng.uniform(10, 30)), len(pieces) - _from_start(pieces[::-1], rng.uniform(10, 30))
    out.append({"kind": "trim", "pieces": pieces[head:tail]})
    duration_s = sum(len(p["samples"]) for p in pieces) / RATE
    i, j = _block(pieces, rng, min(30, 0.4 * duration_s), min(90, 0.7 * duration_s))
    out.append({"kind": "clip", "pieces": pieces[i:j]})
    if original["synthetic"]:
        candidates = [p for p in pieces[1:-1] if any(w in SWAPS for w in p["text"].lower().split())]
        if candidates:
            chosen = rng.choice(candidates)
            word = next(w for w in chosen["text"].split() if w.lower() in SWAPS)
            text = re.sub(rf"\b{word}\b", SWAPS[word.lower()], chosen["text"], count=1)
            samples = _say(text, chosen["voice"])
            common = min(len(samples), len(chosen["samples"]))
            differs = int(np.argmax(np.abs(samples[:common] - chosen["samples"][:common]) > 1e-3))
            changed = {"samples": samples, "text": text, "voice": chosen["voice"], "changed_at": differs,
                       "gap": chosen.get("gap")}
            out.append({"kind": "changed", "pieces": [changed if p is chosen else p for p in pieces]})
    return out


def _assemble(pieces: list[dict], rng: random.Random) -> tuple[np.ndarray, list[dict]]:
    """The recording, and where each piece lies in it (start, end in seconds)."""
    parts, placed, at = [], [], 0
    for piece in pieces:
        # Each piece keeps the pause after it: an edit leaves the rest of a recording as it was.
        gap = piece.get("gap")
        if gap is None:
            gap = piece["gap"] = _gap(rng)
        parts += [piece["samples"], gap]
        placed.append({**{k: v for k, v in piece.items() if k not in ("samples", "gap")},
                       "start_s": at / RATE, "end_s": (at + len(piece["samples"])) / RATE})
        at += len(piece["samples"]) + len(gap)
    return np.concatenate(parts), placed


def build_corpus(originals: int, minutes: float, seed: int, real: tuple[Path, ...] = ()) -> dict:
    """Originals, their variants and the negatives (samples in memory, speech cached as WAV);
    `real`: more real recordings to use as originals, besides the tests' two readings."""
    DATA.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sentences = _sentences()
    made = [{"id": f"meeting{n}", "synthetic": True, "pieces": _meeting(n, minutes, sentences, rng)} for n in range(originals)]
    made += [{"id": path.name.split("_")[0].split(".")[0], "synthetic": False, "pieces": _human(path)}
             for path in (FIXTURES / "ljspeech_001_0001to0008.flac", FIXTURES / "fleurs_en_5to9.flac", *real)]
    for original in made:
        original["samples"], original["placed"] = _assemble(original["pieces"], rng)
    variants = []
    for original in made:
        for variant in _variants(original, rng, sentences):
            if not variant["pieces"] or all(p.get("foreign") for p in variant["pieces"]):
                continue  # an original too short for this edit
            samples, placed = _assemble(variant["pieces"], rng)
            variants.append({"id": f"{original['id']}_{variant['kind']}", "kind": variant["kind"], "original": original["id"],
                             "samples": samples, "placed": placed, "synthetic": original["synthetic"]})
    first, second = made[0], made[-1]
    joined, placed = _assemble(first["pieces"][:6] + second["pieces"], rng)
    variants.append({"id": "joined", "kind": "joined", "original": "both", "samples": joined, "placed": placed,
                     "synthetic": False})
    never = _meeting(len(MEETING_VOICES) + 7, 1.0, sentences, rng)
    other_voice = [{**p, "samples": _say(p["text"], OTHER_VOICES[0]), "gap": None} for p in made[0]["pieces"][:12]]
    other_variant = [{**p, "samples": _say(p["text"], _other_variant(p["voice"])), "gap": None}
                     for p in made[0]["pieces"][:12]]
    negatives = [{"id": "never_cached", "samples": _assemble(never, rng)[0]},
                 {"id": "other_voice", "samples": _assemble(other_voice, rng)[0]},
                 {"id": "other_variant", "samples": _assemble(other_variant, rng)[0]}]
    return {"originals": made, "variants": variants, "negatives": negatives}


def _other_variant(voice: str) -> str:
    """The same espeak-ng base voice with another variant (a female one for a male, and back)."""
    base, _, variant = voice.partition("+")
    return f"{base}+{'m2' if variant.startswith('f') else 'f2'}"


def _covered(spans: list[dict], start_s: float, end_s: float) -> float:
    """Seconds of [start_s, end_s) inside some span."""
    return sum(max(0.0, min(end_s, s["end_s"]) - max(start_s, s["start_s"])) for s in spans)


def _judge(variant: dict, spans: list[dict]) -> dict:
    """Coverage of the reusable pieces, and the false spans (over foreign speech or a changed word)."""
    reusable = [p for p in variant["placed"] if not p.get("foreign") and "changed_at" not in p]
    foreign = [p for p in variant["placed"] if p.get("foreign")]
    total = sum(p["end_s"] - p["start_s"] for p in reusable)
    covered = sum(_covered(spans, p["start_s"], p["end_s"]) for p in reusable)
    false = [s for s in spans if any(_covered([s], p["start_s"], p["end_s"]) > FOREIGN_SLACK_S for p in foreign)]
    for p in variant["placed"]:
        if "changed_at" in p:
            at_s = p["start_s"] + p["changed_at"] / RATE
            false += [s for s in spans if s["start_s"] <= at_s <= s["end_s"]]
    speech_s = sum(p["end_s"] - p["start_s"] for p in variant["placed"])
    return {"reusable_s": round(total, 2), "covered_s": round(covered, 2), "speech_s": round(speech_s, 2),
            "false_spans": len(false)}


def seam_errors(variant: dict, spans: list[dict], reference: str, stitched: str, whole: str) -> dict:
    """Word errors next to the seams of a stitched answer (where a span starts or ends inside
    the upload), against the reference, beside the engine's whole-file answer's errors at the
    same words: a word duplicated or lost at a seam shows as an error there that the whole-file
    answer has not. Counted over the SEAM_WORDS reference words on each side of each seam."""
    duration_s = len(variant["samples"]) / RATE
    ends = sorted({round(at, 3) for span in spans for at in (span["start_s"], span["end_s"])
                   if 0.3 < at < duration_s - 0.3})
    ref = normalise(reference)
    # A seam lies between the reference words of the pieces before it and after it.
    word_middles = [(piece["start_s"] + piece["end_s"]) / 2.0 for piece in variant["placed"]
                    for _ in normalise(piece["text"])]  # each reference word at its piece's middle
    positions = sorted({sum(middle < at for middle in word_middles) for at in ends})
    near = np.zeros(len(ref) + 1, dtype=bool)
    for position in positions:
        near[max(0, position - SEAM_WORDS) : position + SEAM_WORDS] = True
    return {"seams": len(positions), "seam_errors": _errors_at(ref, normalise(stitched), near),
            "seam_errors_whole": _errors_at(ref, normalise(whole), near)}


def _errors_at(ref: list[str], hyp: list[str], near: np.ndarray) -> int:
    """Edit operations (substitutions, deletions, and insertions before a reference word) of a
    minimal word alignment of `hyp` to `ref` that fall on the reference positions `near` marks."""
    cost = [list(range(len(hyp) + 1))]
    for i, word in enumerate(ref, 1):
        above, row = cost[-1], [i]
        for j, heard in enumerate(hyp, 1):
            row.append(min(above[j] + 1, row[j - 1] + 1, above[j - 1] + (word != heard)))
        cost.append(row)
    errors, i, j = 0, len(ref), len(hyp)
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            errors += int(ref[i - 1] != hyp[j - 1] and near[i - 1])
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            errors += int(near[i - 1])  # a reference word lost
            i -= 1
        else:
            errors += int(near[i])  # a word added before reference word i
            j -= 1
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--originals", type=int, default=2)
    parser.add_argument("--channels", default=",".join(CHANNELS))
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--real", type=Path, nargs="*", default=[],
                        help="more real recordings to cache and edit, besides the tests' two 50 s readings (e.g. "
                             "apollo11.mp3, 89 s of NASA mission audio, from linto-ai/whisper-timestamped's tests/data)")
    parser.add_argument("--kinds", default="",
                        help="only these variant kinds, comma-separated (cut,insert,replace,trim,clip,changed,joined): "
                             "an hour's whole-file runs take about 6 minutes each")
    parser.add_argument("--no-whole", dest="whole", action="store_false",
                        help="skip the engine's whole-file run of each variant (most of a long run's time): no WER "
                             "comparison, and the whole-file engine time estimated from the cached original's")
    args = parser.parse_args()
    require_tools(parser, "espeak-ng", "ffmpeg")
    channels = args.channels.split(",")
    corpus = build_corpus(args.originals, args.minutes, args.seed, tuple(args.real))
    server, whole_key, edits_key = namespaced_server("excerpts_run", "edits")
    rows, negatives = [], []
    try:
        with httpx.Client(base_url=server.url) as client:
            server.wait_healthy(client, timeout_s=120)
            originals = []
            for original in corpus["originals"]:
                data, suffix = through("clean", original["samples"])
                answer = _post(client, "/recognize", data, suffix, edits_key)
                reference = " ".join(p["text"] for p in original["placed"]) if original["synthetic"] else ""
                errors, words = _wer(reference, answer["result"]["text"]) if reference else (0, 0)
                originals.append({"id": original["id"], "errors": errors, "words": words,
                                  "engine_s": answer["cache"]["engine_seconds"],
                                  "engine_per_s": answer["cache"]["engine_seconds"] / (len(original["samples"]) / RATE)})
                print(json.dumps({"cached": original["id"], "seconds": round(len(original["samples"]) / RATE, 1),
                                  "tier": answer["cache"]["tier"]}), flush=True)
            time.sleep(1.0)
            before = stage_totals(client)
            per_s = {o["id"]: o["engine_per_s"] for o in originals}
            kinds = set(filter(None, args.kinds.split(",")))
            for variant in corpus["variants"]:
                if kinds and variant["kind"] not in kinds:
                    continue
                data, suffix = through("clean", variant["samples"])
                if args.whole:
                    # The engine on the whole variant (no-cache: no tier, no segment reuse, answers it).
                    whole = _post(client, "/recognize", data, suffix, {"Cache-Control": "no-cache", **whole_key})
                else:  # estimated: the cached original's engine seconds per second of audio
                    rate = per_s.get(variant["original"], sum(per_s.values()) / len(per_s))
                    whole = {"cache": {"engine_seconds": rate * len(variant["samples"]) / RATE}, "result": {"text": ""}}
                reference = " ".join(p["text"] for p in variant["placed"]) if variant["synthetic"] else ""
                for channel in channels:
                    data, suffix = through(channel, variant["samples"])
                    answer = _post(client, "/recognize", data, suffix, {"Cache-Control": "no-store", **edits_key})
                    cache, spans = answer["cache"], answer["cache"].get("spans") or []
                    row = {"variant": variant["id"], "kind": variant["kind"], "channel": channel, "tier": cache["tier"],
                           "duration_s": round(len(variant["samples"]) / RATE, 2), **_judge(variant, spans),
                           "engine_s": cache.get("engine_seconds") or 0.0, "saved_s": cache.get("engine_seconds_saved") or 0.0,
                           "whole_engine_s": whole["cache"]["engine_seconds"] or 0.0, "spans": spans,
                           "text": answer["result"]["text"], "whole_text": whole["result"]["text"], "reference": reference}
                    row["errors"], row["words"] = _wer(reference, row["text"]) if reference else (0, 0)
                    row["whole_errors"] = _wer(reference, row["whole_text"])[0] if reference else 0
                    row["errors_vs_whole"], row["whole_words"] = _wer(row["whole_text"], row["text"])
                    if reference and args.whole:
                        row.update(seam_errors(variant, spans, reference, row["text"], row["whole_text"]))
                    rows.append(row)
                    print(json.dumps({k: row[k] for k in ("variant", "channel", "tier", "reusable_s", "covered_s", "false_spans",
                                                         "engine_s", "whole_engine_s", "errors", "whole_errors", "words")}),
                          flush=True)
            after = stage_totals(client)
            for negative in corpus["negatives"]:
                for channel in channels:
                    data, suffix = through(channel, negative["samples"])
                    cache = _post(client, "/lookup", data, suffix, edits_key)["cache"]
                    negatives.append({"id": negative["id"], "channel": channel, "tier": cache["tier"],
                                      "spans": cache.get("spans") or []})
    finally:
        server.stop()
    report = _report(rows, negatives, before, after, channels)
    if not args.whole:
        for share in [report["all"], *report["by_kind"].values(), *report["by_channel"].values()]:
            share["wer_whole"] = share["wer_stitched_vs_whole"] = None
        seconds = stage_seconds(before, after)
        whole_s = sum(r["whole_engine_s"] for r in rows)
        report["whole_file_runs"] = "estimated from the cached originals' engine seconds per second of audio"
        report["segments_over_engine"] = round(seconds["segments"] / whole_s, 4) if whole_s else None
    # The engine's errors on the cached originals themselves: what a reused stretch inherits.
    report["wer_originals"] = round(sum(o["errors"] for o in originals) / max(1, sum(o["words"] for o in originals)), 4)
    report["machine"] = machine_info(commit=git_head())
    (OUT_DIR / "excerpts.json").write_text(json.dumps({"report": report, "rows": rows, "negatives": negatives}, indent=1))
    print(json.dumps(report, indent=1))


def _report(rows: list[dict], negatives: list[dict], before: dict, after: dict, channels: list[str]) -> dict:
    def share(chosen: list[dict]) -> dict:
        if not chosen:
            return {}
        whole = sum(r["whole_engine_s"] for r in chosen)
        spent = sum(r["engine_s"] for r in chosen)
        reusable_engine = sum(r["whole_engine_s"] * r["reusable_s"] / max(r["speech_s"], 1e-9) for r in chosen)
        words = sum(r["words"] for r in chosen)
        return {
            "variants": len(chosen), "partial": sum(r["tier"] == "partial" for r in chosen),
            "covered_of_reusable": round(sum(r["covered_s"] for r in chosen) / max(sum(r["reusable_s"] for r in chosen), 1e-9), 4),
            "false_spans": sum(r["false_spans"] for r in chosen),
            "engine_s_saved_share": round((whole - spent) / whole, 4) if whole else None,
            "saved_of_reusable": round((whole - spent) / reusable_engine, 4) if reusable_engine else None,
            "wer_stitched": round(sum(r["errors"] for r in chosen) / words, 4) if words else None,
            "wer_whole": round(sum(r["whole_errors"] for r in chosen) / words, 4) if words else None,
            "wer_stitched_vs_whole": round(sum(r["errors_vs_whole"] for r in chosen) / max(sum(r["whole_words"] for r in chosen), 1), 4),
            "seams": sum(r.get("seams", 0) for r in chosen),
            "seam_errors_stitched": sum(r.get("seam_errors", 0) for r in chosen),
            "seam_errors_whole": sum(r.get("seam_errors_whole", 0) for r in chosen),
        }

    seconds = stage_seconds(before, after)
    kinds = sorted({r["kind"] for r in rows})
    return {
        "by_kind": {kind: share([r for r in rows if r["kind"] == kind]) for kind in kinds},
        "by_channel": {channel: share([r for r in rows if r["channel"] == channel]) for channel in channels},
        "all": share(rows),
        "negatives": {kind: {"looked_up": sum(n["id"] == kind for n in negatives),
                             "with_spans": sum(1 for n in negatives if n["id"] == kind and n["spans"])}
                      for kind in sorted({n["id"] for n in negatives})},
        "stage_seconds": {stage: round(value, 3) for stage, value in seconds.items()},
        "segments_over_engine": round(seconds["segments"] / seconds["engine"], 4) if seconds["engine"] else None,
    }


if __name__ == "__main__":
    main()
