"""Segment reuse (issue 24): calls that hold a cached prompt, through the HTTP API of `earmark serve`
with its default engine (Whisper tiny.en).

Corpus (bench/data/segments, built once; espeak-ng and ffmpeg needed):
* prompts: PROMPTS, each in its own espeak-ng voice, and for each a minimal pair (one word
  changed, same voice and speed) and the same words in another voice;
* other speech: real human readings (Debian's pocketsphinx-testdata LibriVox clips and the
  tests' two long readings, each with its reference transcript) and espeak-ng sentences in
  other voices, joined with pauses into 5 to 120 s;
* calls: a prompt at the start, in the middle or at the end of other speech; the same calls
  with the minimal pair or the other voice instead of the prompt, and without any prompt, are
  the negatives;
* channels: every call clean (WAV), as MP3 at 48 kbit/s, as Opus at 24 kbit/s, and through the
  telephone band (8 kHz mu-law).

Phases, one server, one run:
1. the prompts recognized (cached);
2. each call recognized whole, in a namespace of its own (an API key), so that its engine
   seconds are reported and it never answers a call (the whole-file answer), and right after
   it, side by side, the call through every channel with `no-store` (nothing written, so no
   call is answered from another copy of itself): tier, spans, engine seconds spent and saved;
3. every negative looked up (`/lookup`, which never runs the engine): any span is a false span.

Reports: recall (calls answered partial with the right entry, the span holding the whole prompt
and reaching no further than the pauses around it), engine seconds saved against the reusable share (the prompt's share of the
whole-file engine time), word error rates of stitched and whole-file answers against the
references, words of the prompt repeated or lost at a seam, false spans, and the span search's
time against the engine's. Writes bench/out/segments.json; CI does not run this.

    nice .venv/bin/python bench/bench_segments.py [--calls 24] [--channels clean,mp3,opus,telephone]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile
from bench_engines import edit_distance, normalise
from harness import OUT_DIR, ROOT, Server, git_head, machine_info, require_tools, stage_totals

DATA = ROOT / "bench" / "data" / "segments"
RATE = 16000
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
FIXTURES = ROOT / "tests" / "fixtures"

# (prompt, its minimal pair, voice, other voice)
PROMPTS = [
    ("Your call may be recorded for quality and training purposes.",
     "Your call may not be recorded for quality and training purposes.", "en-us+f2", "en-gb+m3"),
    ("Thank you for calling Northgate Bank. Please listen carefully as our options have changed.",
     "Thank you for calling Northfield Bank. Please listen carefully as our options have changed.", "en-gb+f3", "en-us+m1"),
    ("Please hold. An agent will be with you in about two minutes.",
     "Please hold. An agent will be with you in about ten minutes.", "en-us+m3", "en-029+f1"),
    ("Welcome back to the Morning Brief, episode forty, recorded live from our studio.",
     "Welcome back to the Morning Brief, episode fourteen, recorded live from our studio.", "en-gb-scotland+m2", "en-us+f4"),
    ("This episode is brought to you by Harbour Coffee, roasted fresh every single morning.",
     "This episode is brought to you by Harbour Coffee, roasted fresh every single evening.", "en-029+m1", "en-gb+f2"),
    ("For account balances and recent payments, press one. To report a lost card, press two.",
     "For account balances and recent payments, press one. To report a lost card, press three.", "en-us+f3", "en-gb-x-rp+m2"),
]
FILLER_VOICES = ["en-us+m2", "en-gb+f4", "en-029+m3", "en-gb-x-rp+f1"]
FILLER_SENTENCES = [
    "I would like to ask about the charge that appeared on my statement last week.",
    "Yes, the card ends in four five one two and I still have it with me.",
    "Could you tell me when the new branch on the high street opens?",
    "My daughter set up the account for me but I never received the letter.",
    "We moved house in March so the address you have may be the old one.",
    "Today we are talking about how small towns are rebuilding their high streets.",
    "Our guest spent twenty years running a bakery before she went into politics.",
    "The question everyone keeps asking is whether the bridge will be finished this year.",
]
CHANNELS = ("clean", "mp3", "opus", "telephone")
PLACED_S = 0.25


def _say(text: str, voice: str, path: Path) -> np.ndarray:
    if not path.exists():
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return _read(path)


def _read(path: Path) -> np.ndarray:
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != RATE:
        import soxr
        mono = soxr.resample(mono, rate, RATE)
    return mono.astype(np.float32)


def _gap(rng: random.Random) -> np.ndarray:
    return np.zeros(int(rng.uniform(0.4, 1.0) * RATE), dtype=np.float32)


def _human_clips() -> list[tuple[np.ndarray, str]]:
    """(16 kHz samples, reference transcript) of every real reading at hand."""
    clips = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, name = line.replace("<s>", "").replace("</s>", "").rsplit("(", 1)
        clips.append((_read(LIBRIVOX / f"{name.strip(' )')}.wav"), text.strip()))
    readings = json.loads((FIXTURES / "long_readings.json").read_text())
    for name, info in readings.items():
        clips.append((_read(FIXTURES / name), info["text"]))
    return clips


def _filler(rng: random.Random, target_s: float, humans, synthetic) -> tuple[np.ndarray, str]:
    """About `target_s` of other speech (real readings and other voices, joined with pauses)."""
    pieces, texts, total = [], [], 0.0
    while total < target_s:
        samples, text = rng.choice(humans) if rng.random() < 0.6 else rng.choice(synthetic)
        pieces += [samples, _gap(rng)]
        texts.append(text)
        total += (len(samples) + len(pieces[-1])) / RATE
    return np.concatenate(pieces), " ".join(texts)


def build_corpus(calls: int, seed: int) -> dict:
    """The prompts, their lookalikes, and the calls (samples kept as WAV under DATA)."""
    DATA.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    humans = _human_clips()
    synthetic = [(_say(text, voice, DATA / f"filler_{i}_{j}.wav"), text)
                 for i, text in enumerate(FILLER_SENTENCES) for j, voice in enumerate(FILLER_VOICES[:2])]
    prompts = []
    for n, (text, pair, voice, other_voice) in enumerate(PROMPTS):
        prompts.append({"id": f"p{n}", "text": text, "samples": _say(text, voice, DATA / f"prompt_{n}.wav"),
                        "pair": _say(pair, voice, DATA / f"prompt_{n}_pair.wav"), "pair_text": pair,
                        "other_voice": _say(text, other_voice, DATA / f"prompt_{n}_other.wav")})
    lengths = [5, 10, 20, 40, 80, 120]
    corpus = []
    for n in range(calls):
        prompt = prompts[n % len(prompts)]
        where = ("start", "middle", "end")[(n // len(prompts)) % 3]
        filler, filler_text = _filler(rng, lengths[n % len(lengths)], humans, synthetic)
        cut = _pause_near(filler, len(filler) // 2) if where == "middle" else 0 if where == "start" else len(filler)
        head, tail, gaps = filler[:cut], filler[cut:], (_gap(rng), _gap(rng))
        call = _joined(head, prompt["samples"], tail, gaps)
        prompt_at = (len(head) + len(gaps[0])) / RATE if len(head) else 0.0
        corpus.append({"id": f"call{n:03d}", "prompt": prompt["id"], "where": where, "filler_s": round(len(filler) / RATE, 1),
                       "call": call, "prompt_at_s": prompt_at, "prompt_s": len(prompt["samples"]) / RATE,
                       "reference": _ordered_text(where, prompt["text"], filler_text, head, filler),
                       "pair": _joined(head, prompt["pair"], tail, gaps),
                       "other_voice": _joined(head, prompt["other_voice"], tail, gaps),
                       "no_prompt": filler})
    return {"prompts": prompts, "calls": corpus}


def _joined(head: np.ndarray, inner: np.ndarray, tail: np.ndarray, gaps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Other speech, a pause, the prompt (or its lookalike), a pause, other speech."""
    return np.concatenate([*([head, gaps[0]] if len(head) else []), inner, gaps[1], *([tail] if len(tail) else [])])


def _pause_near(samples: np.ndarray, index: int) -> int:
    """The quietest 20 ms frame within a second of `index`: a cut between words."""
    frame = RATE // 50
    lo, hi = max(0, index - RATE), min(len(samples) - frame, index + RATE)
    levels = [float(np.sqrt(np.mean(samples[i:i + frame] ** 2))) for i in range(lo, hi, frame)]
    return lo + int(np.argmin(levels)) * frame if levels else index


def _ordered_text(where: str, prompt_text: str, filler_text: str, head: np.ndarray, filler: np.ndarray) -> str:
    """The call's reference transcript (for a prompt in the middle, the filler's words are split
    by the share of the filler before the prompt: WER is reported beside the whole-file answer's,
    which is judged against the same reference)."""
    if where == "start":
        return f"{prompt_text} {filler_text}"
    if where == "end":
        return f"{filler_text} {prompt_text}"
    words = filler_text.split()
    split = round(len(words) * len(head) / max(1, len(filler)))
    return " ".join([*words[:split], prompt_text, *words[split:]])


def through(channel: str, samples: np.ndarray) -> tuple[bytes, str]:
    """The call's bytes through a channel (real encoders, via ffmpeg)."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    args = {"clean": ["-c:a", "pcm_s16le", "-f", "wav"], "mp3": ["-c:a", "libmp3lame", "-b:a", "48k", "-f", "mp3"],
            "opus": ["-c:a", "libopus", "-b:a", "24k", "-f", "ogg"],
            "telephone": ["-af", "highpass=f=300,lowpass=f=3400", "-ar", "8000", "-c:a", "pcm_mulaw", "-f", "wav"],
            # 6 dB louder, clipped where the original peaks (16-bit PCM saturates)
            "louder": ["-af", "volume=6dB", "-c:a", "pcm_s16le", "-f", "wav"],
            # resampled to 44.1 kHz and re-encoded as AAC
            "resampled": ["-ar", "44100", "-c:a", "aac", "-b:a", "96k", "-f", "adts"]}[channel]
    done = subprocess.run(["ffmpeg", "-v", "error", "-f", "s16le", "-ar", str(RATE), "-ac", "1", "-i", "pipe:0", *args, "pipe:1"],
                          input=pcm, capture_output=True, check=True)
    return done.stdout, {"clean": "wav", "mp3": "mp3", "opus": "ogg", "telephone": "wav", "louder": "wav",
                         "resampled": "aac"}[channel]


def namespaced_server(run: str, second: str) -> tuple[Server, dict, dict]:
    """A fresh `earmark serve` (data under bench/out/<run>) with two namespaces, by API key:
    `whole` for the engine's whole-file answers, kept apart so they never answer the other's
    requests, and `second`; with the headers of each."""
    work = OUT_DIR / run
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    keys = work / "keys"
    keys.write_text(f"bench-whole-key-0000000000000001 whole\nbench-{second}-key-0000000000000002 {second}\n")
    server = Server(work / "data", work / "server.log", extra_args=("--api-keys", str(keys)))
    return (server, {"Authorization": "Bearer bench-whole-key-0000000000000001"},
            {"Authorization": f"Bearer bench-{second}-key-0000000000000002"})


def _post(client: httpx.Client, path: str, data: bytes, suffix: str, headers: dict | None = None) -> dict:
    # The corpora are English, and say so as a client that knows would: identified from its first
    # 3 s, espeak-ng's Caribbean voice (en-029) reads as Finnish (bench/README.md, "Language
    # identification"), and a stretch of a meeting opening with it was refused (422).
    response = client.post(path, files={"file": (f"call.{suffix}", data)}, data={"language": "en"},
                           headers=headers or {}, timeout=600.0)
    response.raise_for_status()
    return response.json()


def _wer(reference: str, hypothesis: str) -> tuple[int, int]:
    ref, hyp = normalise(reference), normalise(hypothesis)
    return edit_distance(ref, hyp), len(ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=24)
    parser.add_argument("--channels", default=",".join(CHANNELS))
    parser.add_argument("--seed", type=int, default=24)
    args = parser.parse_args()
    require_tools(parser, "espeak-ng", "ffmpeg")
    channels = args.channels.split(",")
    corpus = build_corpus(args.calls, args.seed)
    server, whole_key, calls_key = namespaced_server("segments_run", "calls")
    rows, negatives = [], []
    try:
        with httpx.Client(base_url=server.url) as client:
            server.wait_healthy(client, timeout_s=120)
            no_store = {"Cache-Control": "no-store", **calls_key}
            whole = {}
            prompt_entries, prompt_engine_s = {}, {}
            for prompt in corpus["prompts"]:  # phase 1: the prompts cached
                data, suffix = through("clean", prompt["samples"])
                answer = _post(client, "/recognize", data, suffix, calls_key)
                prompt_entries[prompt["id"]], prompt_engine_s[prompt["id"]] = answer["cache"]["entry"], answer["cache"]["engine_seconds"]
                prompt["heard"] = answer["result"]["text"]
            time.sleep(1.0)
            before = stage_totals(client)
            for call in corpus["calls"]:  # phase 2: each call whole (its own namespace), then through every channel
                data, suffix = through("clean", call["call"])
                # no-cache: the engine on the whole call, never a partial answer from another call's
                # cached whole (the calls share their other speech, and stretches of entries are reused).
                whole[call["id"]] = _post(client, "/recognize", data, suffix, {"Cache-Control": "no-cache", **whole_key})
                for channel in channels:
                    data, suffix = through(channel, call["call"])
                    started = time.perf_counter()
                    answer = _post(client, "/recognize", data, suffix, no_store)
                    cache = answer["cache"]
                    spans = cache.get("spans") or []
                    right = [span for span in spans if span["entry"] == prompt_entries[call["prompt"]]]
                    # Placed: the span holds the whole prompt (give or take its own leading and
                    # trailing silence) and reaches no further than the pauses around it (at most 1 s each).
                    placed = bool(right) and right[0]["start_s"] <= call["prompt_at_s"] + PLACED_S and \
                        right[0]["end_s"] >= call["prompt_at_s"] + call["prompt_s"] - PLACED_S and \
                        right[0]["end_s"] - right[0]["start_s"] <= call["prompt_s"] + 2.0
                    errors, words = _wer(call["reference"], answer["result"]["text"])
                    whole_errors, _ = _wer(call["reference"], whole[call["id"]]["result"]["text"])
                    heard_prompt = normalise(next(p["heard"] for p in corpus["prompts"] if p["id"] == call["prompt"]))
                    rows.append({
                        "call": call["id"], "channel": channel, "where": call["where"], "filler_s": call["filler_s"],
                        "duration_s": round(len(call["call"]) / RATE, 2), "tier": cache["tier"], "reused": bool(right),
                        "placed": placed, "wrong_spans": len(spans) - len(right),
                        "engine_s": cache.get("engine_seconds") or 0.0, "saved_s": cache.get("engine_seconds_saved") or 0.0,
                        "whole_engine_s": whole[call["id"]]["cache"]["engine_seconds"] or 0.0,
                        "prompt_engine_s": prompt_engine_s[call["prompt"]], "prompt_s": call["prompt_s"],
                        "errors": errors, "whole_errors": whole_errors, "words": words,
                        "prompt_copies": _occurrences(normalise(answer["result"]["text"]), heard_prompt) if right else None,
                        "seconds": round(time.perf_counter() - started, 3),
                        "spans": spans, "prompt_at_s": call["prompt_at_s"],
                        "text": answer["result"]["text"], "whole_text": whole[call["id"]]["result"]["text"],
                        "reference": call["reference"],
                    })
                    print(json.dumps({k: rows[-1][k] for k in ("call", "channel", "where", "tier", "reused", "placed", "errors", "whole_errors", "words")}), flush=True)
            after = stage_totals(client)
            for call in corpus["calls"]:  # phase 3: lookalikes, looked up only
                for kind in ("pair", "other_voice", "no_prompt"):
                    for channel in channels:
                        data, suffix = through(channel, call[kind])
                        cache = _post(client, "/lookup", data, suffix, calls_key)["cache"]
                        spans = cache.get("spans") or []
                        if kind == "pair":  # only a span over the changed word is false: the pair's other sentences are the prompt's own
                            at_s = call["prompt_at_s"] + _changed_at_s(corpus, call["prompt"])
                            spans = [span for span in spans if span["start_s"] <= at_s <= span["end_s"]]
                        negatives.append({"call": call["id"], "kind": kind, "channel": channel, "tier": cache["tier"],
                                          "spans": spans, "all_spans": cache.get("spans") or []})
    finally:
        server.stop()
    report = _report(rows, negatives, before, after, channels)
    report["machine"] = machine_info(commit=git_head())
    (OUT_DIR / "segments.json").write_text(json.dumps({"report": report, "rows": rows, "negatives": negatives}, indent=1))
    print(json.dumps(report, indent=1))


def _changed_at_s(corpus: dict, prompt_id: str) -> float:
    """Where a prompt's minimal pair first differs from it (espeak-ng reads the rest the same)."""
    prompt = next(p for p in corpus["prompts"] if p["id"] == prompt_id)
    common = min(len(prompt["samples"]), len(prompt["pair"]))
    return int(np.argmax(np.abs(prompt["samples"][:common] - prompt["pair"][:common]) > 1e-3)) / RATE


def stage_seconds(before: dict, after: dict) -> dict[str, float]:
    """Seconds the server spent in each stage of a miss between two `stage_totals` readings."""
    return {stage: after.get(stage, (0, 0))[0] - before.get(stage, (0, 0))[0]
            for stage in ("segments", "engine", "fingerprint", "fuzzy")}


def _occurrences(words: list[str], phrase: list[str]) -> int:
    """How often `phrase` appears in `words` (a prompt heard twice at a seam counts 2)."""
    n = len(phrase)
    return sum(words[i:i + n] == phrase for i in range(len(words) - n + 1)) if n else 0


def _report(rows: list[dict], negatives: list[dict], before: dict, after: dict, channels: list[str]) -> dict:
    def share(chosen: list[dict]) -> dict:
        if not chosen:
            return {}
        whole = sum(r["whole_engine_s"] for r in chosen)
        spent = sum(r["engine_s"] for r in chosen)
        reusable = sum(r["whole_engine_s"] * r["prompt_s"] / r["duration_s"] for r in chosen)
        words = sum(r["words"] for r in chosen)
        return {
            "calls": len(chosen),
            "reused": sum(r["reused"] for r in chosen), "placed": sum(r["placed"] for r in chosen),
            "wrong_spans": sum(r["wrong_spans"] for r in chosen),
            "engine_s_saved_share": round((whole - spent) / whole, 4) if whole else None,
            "reusable_share": round(reusable / whole, 4) if whole else None,
            "saved_of_reusable": round((whole - spent) / reusable, 4) if reusable else None,
            "wer_stitched": round(sum(r["errors"] for r in chosen) / words, 4) if words else None,
            "wer_whole": round(sum(r["whole_errors"] for r in chosen) / words, 4) if words else None,
            "prompt_repeated_or_lost": sum(1 for r in chosen if r["prompt_copies"] not in (None, 1)),
        }

    seconds = stage_seconds(before, after)
    return {
        "by_channel": {channel: share([r for r in rows if r["channel"] == channel]) for channel in channels},
        "by_position": {where: share([r for r in rows if r["where"] == where]) for where in ("start", "middle", "end")},
        "all": share(rows),
        "false_spans": {kind: {"looked_up": sum(1 for n in negatives if n["kind"] == kind),
                               "with_spans": sum(1 for n in negatives if n["kind"] == kind and n["spans"]),
                               "reused_elsewhere": sum(1 for n in negatives if n["kind"] == kind and n["all_spans"] and not n["spans"])}
                        for kind in ("pair", "other_voice", "no_prompt")},
        "stage_seconds": {stage: round(value, 3) for stage, value in seconds.items()},
        "segments_over_engine": round(seconds["segments"] / seconds["engine"], 4) if seconds["engine"] else None,
    }


if __name__ == "__main__":
    main()
