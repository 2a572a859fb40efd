#!/usr/bin/env python3
"""Engine accuracy and speed (issue 10): word error rate and real-time factor, Whisper beside
PocketSphinx, on real human recordings with known transcripts, in one run.

    apt-get install pocketsphinx-testdata        # 3.4 MB: LibriVox readings, card names, commands
    .venv/bin/python bench/bench_engines.py [--threads]

The recordings are the ones Debian's `pocketsphinx-testdata` ships under
/usr/share/pocketsphinx/test/data/ with their transcripts (see RECORDINGS): five LibriVox
readings of "Sense and Sensibility", five spoken card names, a spoken command and a TIDIGITS
digit string, all 16 kHz. Each is also sent as an 8 kHz mu-law telephone copy (ffmpeg-free:
soxr and numpy), which is how call-centre audio arrives. Both engines get the same decoded
PCM (fingerprint.decode, as the service decodes), in process, one request at a time.

WER: word-level edit distance over the reference words, after the same light normalisation of
both sides (lower case, punctuation dropped, numbers written as words, "mr" as "mister"), so
that Whisper's written form ("10 meters") is not counted against it. RTF: engine seconds /
audio seconds (wall time on this 2-core machine). Load: constructing the engine.

`--long` (issue 21) compares Whisper's decodings on recordings longer than its 30 s window, in
one run, side by side: the two committed fixtures of tests/fixtures/long_readings.json (50 s of
LJ Speech, one reader; 50 s of five FLEURS readings), the five LibriVox readings joined in order
(24.7 s) and joined twice (49.5 s), and with `--fleurs DIR` the ten FLEURS readings en0..en9
joined (91 s; not committed: sebastian-software/cuttledoc's packages/cuttledoc/fixtures/
fleurs-en-000.ogg to -009.ogg and their .txt, renamed en0.ogg ... en9.txt), each with its
reference. "before" is the decoding of d6ce98a (faster-whisper's own 30 s windows with its word
timestamps), "after" the default (speech clips cut at pauses by Silero VAD, each decoded on its
own: service/engines/whisper_vad.py). f885d7c's decoding (windows without word timestamps, a
window ended early resumed) was a third column until the default replaced it (figures in
bench/README.md). It also checks that each gives the same transcript twice and what each writes
for 10 s of silence, faint noise and loud noise. Writes bench/out/engines-long.json.

`--threads` also compares ways of spending the 2 cores on Whisper: one CTranslate2 worker with
2 threads (calls queue), 2 workers with 1 thread each (two calls at once), and 1 x 1; a request
alone, and 8 LibriVox clips submitted together (wall time for all, each request's latency).
`--threads-only` skips the WER part. Writes bench/out/engines.json; CI does not run this.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.service.engines.base import RecognitionOptions  # noqa: E402

DATA = Path("/usr/share/pocketsphinx/test/data")
OUT = Path(__file__).resolve().parent / "out" / "engines.json"


def _transcripts(path: Path) -> dict[str, str]:
    """Sphinx transcription file: `<s> words </s> (id)` per line."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\((\S+)\)\s*$", line)
        if match:
            found[match.group(2)] = match.group(1).strip()
    return found


def recordings() -> list[dict]:
    """(name, set, path, raw?, reference) of every recording with a known transcript."""
    items = []
    for key, text in _transcripts(DATA / "librivox" / "transcription").items():
        items.append({"name": key[-4:], "set": "librivox", "path": DATA / "librivox" / f"{key}.wav", "ref": text})
    for key, text in _transcripts(DATA / "cards" / "cards.transcription").items():
        items.append({"name": f"card{key}", "set": "cards", "path": DATA / "cards" / f"{key}.wav", "ref": text})
    # goforward.raw is pocketsphinx's own test utterance (its tests expect this text); the
    # TIDIGITS file name spells its digits (z = zero).
    items.append({"name": "goforward", "set": "commands", "path": DATA / "goforward.raw", "ref": "go forward ten meters"})
    items.append({"name": "dhd.2934z", "set": "commands", "path": DATA / "tidigits" / "dhd.2934z.raw",
                  "ref": "two nine three four zero"})
    return items


def load_pcm(item: dict) -> np.ndarray:
    """16 kHz mono float32, decoded as the service decodes (raw files are 16 kHz s16le)."""
    data = item["path"].read_bytes()
    if item["path"].suffix == ".raw":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return decode_audio(data, 3600.0).pcm_16k


def telephone(pcm_16k: np.ndarray) -> np.ndarray:
    """An 8 kHz G.711 mu-law copy, back at 16 kHz: what a telephone line delivers."""
    narrow = soxr.resample(pcm_16k, 16000, 8000)
    mu = 255.0
    coded = np.sign(narrow) * np.log1p(mu * np.minimum(np.abs(narrow), 1.0)) / np.log1p(mu)
    quantised = np.round(coded * 127.0) / 127.0
    expanded = np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(mu)) / mu
    return soxr.resample(expanded.astype(np.float32), 8000, 16000).astype(np.float32)


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(token: str) -> list[str]:
    if len(token) > 2 and token.isdigit() and not token.endswith("00"):
        return [_ONES[int(d)] for d in token]  # a digit string ("29340") is read digit by digit
    value = int(token)
    if value < 20:
        return [_ONES[value]]
    if value < 100:
        return [_TENS[value // 10]] + ([_ONES[value % 10]] if value % 10 else [])
    if value < 1000 and value % 100 == 0:
        return [_ONES[value // 100], "hundred"]
    return [_ONES[int(d)] for d in token]


def normalise(text: str) -> list[str]:
    """Lower case, punctuation dropped, numbers as words, a few abbreviations spelt out."""
    text = text.lower().replace("-", " ")
    words = []
    for token in re.findall(r"[a-z0-9']+", text):
        token = token.strip("'")
        if not token:
            continue
        if token.isdigit():
            words += _number_words(token)
        else:
            words.append({"mr": "mister", "mrs": "missus", "dr": "doctor"}.get(token, token))
    return words


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, deletions, insertions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


def run_engine(name: str, engine, items: list[dict], pcms: dict[str, np.ndarray]) -> dict:
    """Transcribe every clip (and its telephone copy) once; WER and RTF per set and overall."""
    profile = engine.resolve(RecognitionOptions())
    rows = []
    for item in items:
        for condition in ("16k", "tel8k"):
            pcm = pcms[item["name"]] if condition == "16k" else pcms[item["name"] + "/tel"]
            started = time.perf_counter()
            transcript = engine.transcribe(pcm, profile)
            seconds = time.perf_counter() - started
            ref, hyp = normalise(item["ref"]), normalise(transcript.text)
            rows.append({"engine": name, "clip": item["name"], "set": item["set"], "condition": condition,
                         "duration_s": round(len(pcm) / 16000, 3), "engine_s": round(seconds, 3),
                         "ref_words": len(ref), "errors": edit_distance(ref, hyp), "text": transcript.text,
                         "segments": len(transcript.segments)})
            print(f"  {name:12s} {condition:5s} {item['name']:10s} {rows[-1]['errors']:2d}/{len(ref):2d} "
                  f"{seconds:5.2f} s  {transcript.text[:70]}", flush=True)
    return {"rows": rows}


def summarise(rows: list[dict], **match) -> dict:
    """WER and RTF over the rows whose fields equal `match`."""
    chosen = [r for r in rows if all(r[k] == v for k, v in match.items())]
    words = sum(r["ref_words"] for r in chosen)
    return {"clips": len(chosen), "audio_s": round(sum(r["duration_s"] for r in chosen), 1), "ref_words": words,
            "wer": round(sum(r["errors"] for r in chosen) / words, 4) if words else None,
            "rtf": round(sum(r["engine_s"] for r in chosen) / sum(r["duration_s"] for r in chosen), 3)}


def _timed(engine, profile, pcm: np.ndarray, started: float, latencies: list[float]) -> None:
    engine.transcribe(pcm, profile)
    latencies.append(time.perf_counter() - started)


def thread_layouts(pcms: list[np.ndarray]) -> dict:
    """Whisper on 2 cores: 1 worker x 2 threads, 2 workers x 1 thread, and 1 x 1 (which leaves a
    core to the rest of the service): one request alone, and all clips submitted at once."""
    from earmark.service.engines.whisper_engine import WhisperEngine

    results = {}
    for workers, threads in ((1, 2), (2, 1), (1, 1)):
        engine = WhisperEngine(num_workers=workers, cpu_threads=threads)
        profile = engine.resolve(RecognitionOptions())
        engine.transcribe(pcms[0], profile)  # first call outside the clock
        single = []
        for pcm in pcms[:3]:
            started = time.perf_counter()
            engine.transcribe(pcm, profile)
            single.append(time.perf_counter() - started)
        latencies: list[float] = []
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:  # the service's pool: `workers` threads
            for pcm in pcms:
                pool.submit(_timed, engine, profile, pcm, started, latencies)
        wall = time.perf_counter() - started
        audio = sum(len(p) for p in pcms) / 16000
        key = f"{workers}x{threads}"
        results[key] = {"workers": workers, "cpu_threads": threads, "single_request_s": round(float(np.median(single)), 3),
                        "burst_clips": len(pcms), "burst_audio_s": round(audio, 1), "burst_wall_s": round(wall, 2),
                        "burst_rtf": round(wall / audio, 3), "burst_mean_latency_s": round(float(np.mean(latencies)), 2),
                        "burst_max_latency_s": round(float(np.max(latencies)), 2)}
        print(f"  {key}: {results[key]}", flush=True)
        engine.close()
    return results


FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def long_recordings(items: list[dict], pcms: dict[str, np.ndarray]) -> list[dict]:
    """(name, pcm, reference) of recordings longer than ~20 s: the committed long fixtures and
    the LibriVox readings joined in order, once and twice."""
    found = []
    for name, reading in json.loads((FIXTURES / "long_readings.json").read_text()).items():
        found.append({"name": name.split(".")[0], "pcm": decode_audio((FIXTURES / name).read_bytes(), 3600.0).pcm_16k,
                      "ref": reading["text"]})
    librivox = [i for i in items if i["set"] == "librivox"]
    joined = np.concatenate([pcms[i["name"]] for i in librivox])
    text = " ".join(i["ref"] for i in librivox)
    found.append({"name": "librivox_joined", "pcm": joined, "ref": text})
    found.append({"name": "librivox_joined_twice", "pcm": np.concatenate([joined, joined]), "ref": f"{text} {text}"})
    return found


def fleurs_joined(directory: Path) -> dict:
    """The ten FLEURS readings en0..en9 (`.ogg` with a `.txt` transcript each, as
    sebastian-software/cuttledoc ships them in packages/cuttledoc/fixtures/) joined in order."""
    pcms = [decode_audio((directory / f"en{i}.ogg").read_bytes(), 3600.0).pcm_16k for i in range(10)]
    text = " ".join((directory / f"en{i}.txt").read_text().strip() for i in range(10))
    return {"name": "fleurs_en_0to9", "pcm": np.concatenate(pcms), "ref": text}


def windows_engine():
    """The engine with the decoding of d6ce98a: faster-whisper's own `WhisperModel.transcribe`
    over 30 s windows, with its word timestamps (and its no-speech rule), the same fixed beam
    and temperature."""
    from earmark.service.engines.whisper_engine import WhisperEngine, _segment

    class WindowsEngine(WhisperEngine):
        def _transcribe_piece(self, pcm, language, profile):
            pieces, info = self._model.transcribe(
                pcm, language=language, initial_prompt=profile.prompt or None,
                hotwords=" ".join(profile.hotwords) or None, beam_size=5, best_of=1, temperature=[0.0],
                condition_on_previous_text=False, word_timestamps=True, compression_ratio_threshold=2.4,
                log_prob_threshold=-1.0, no_speech_threshold=0.6, vad_filter=False)
            return [_segment(piece) for piece in pieces], info.language

    return WindowsEngine()


def compare_long(recordings: list[dict]) -> dict:
    """WER and RTF of the decoding before issue 21 and the default, one recording at a time."""
    from earmark.service.engines.whisper_engine import WhisperEngine

    engines = {"before": windows_engine(), "after": WhisperEngine()}
    rows = []
    for item in recordings:
        for label, engine in engines.items():
            profile = engine.resolve(RecognitionOptions())
            started = time.perf_counter()
            transcript = engine.transcribe(item["pcm"], profile)
            seconds = time.perf_counter() - started
            ref = normalise(item["ref"])
            rows.append({"decoding": label, "clip": item["name"], "duration_s": round(len(item["pcm"]) / 16000, 1),
                         "ref_words": len(ref), "errors": edit_distance(ref, normalise(transcript.text)),
                         "engine_s": round(seconds, 2), "text": transcript.text})
            print(f"  {label:6s} {item['name']:28s} {rows[-1]['errors']:3d}/{len(ref):3d} {seconds:5.2f} s", flush=True)
    print("\n| recording | audio | words | WER before | WER after | RTF before | RTF after |")
    print("|---|---|---|---|---|---|---|")
    for item in recordings + [{"name": "all"}]:
        chosen = {label: [r for r in rows if r["decoding"] == label and item["name"] in ("all", r["clip"])]
                  for label in engines}
        words = sum(r["ref_words"] for r in chosen["after"])
        audio = sum(r["duration_s"] for r in chosen["after"])
        wer = {k: sum(r["errors"] for r in v) / words for k, v in chosen.items()}
        rtf = {k: sum(r["engine_s"] for r in v) / audio for k, v in chosen.items()}
        print(f"| {item['name']} | {audio:.1f} s | {words} | {wer['before']:.1%} | {wer['after']:.1%} "
              f"| {rtf['before']:.3f} | {rtf['after']:.3f} |")
    return {"rows": rows, "checks": stability_checks(engines, recordings)}


def stability_checks(engines: dict, recordings: list[dict]) -> dict:
    """Each decoding on the longest recording again (the same text, segments and word times?),
    and on audio with no speech: digital silence, faint noise, and loud noise (the engine must
    answer no text: the cache stores that as a "no speech" entry)."""
    rng = np.random.default_rng(21)
    quiet = {"silence_10s": np.zeros(160000, dtype=np.float32),
             "faint_noise_10s": rng.normal(0, 0.01, 160000).astype(np.float32),
             "loud_noise_10s": rng.normal(0, 0.2, 160000).astype(np.float32)}
    longest = max(recordings, key=lambda item: len(item["pcm"]))
    checks: dict = {}
    for label, engine in engines.items():
        profile = engine.resolve(RecognitionOptions())
        again = engine.transcribe(longest["pcm"], profile) == engine.transcribe(longest["pcm"], profile)
        checks[label] = {f"same_twice_{longest['name']}": again,
                         **{name: engine.transcribe(pcm, profile).text for name, pcm in quiet.items()}}
        print(f"  {label}: {checks[label]}", flush=True)
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", action="store_true", help="also compare Whisper thread layouts")
    parser.add_argument("--threads-only", action="store_true", help="only compare Whisper thread layouts")
    parser.add_argument("--long", action="store_true", help="only compare Whisper before/after issue 21 on long recordings")
    parser.add_argument("--fleurs", type=Path, help="with --long: a directory of FLEURS en0..en9 .ogg/.txt, joined")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no {DATA}: apt-get install pocketsphinx-testdata")
    items = recordings()
    pcms = {}
    for item in items:
        pcms[item["name"]] = load_pcm(item)
        pcms[item["name"] + "/tel"] = telephone(pcms[item["name"]])
    print(f"{len(items)} recordings, {sum(len(pcms[i['name']]) for i in items) / 16000:.1f} s, "
          f"{sum(len(normalise(i['ref'])) for i in items)} reference words; load average {os.getloadavg()[0]:.2f}")

    from earmark.service.engines.pocketsphinx_engine import PocketSphinxEngine
    from earmark.service.engines.whisper_engine import WhisperEngine

    out: dict = {"load_s": {}, "rows": [], "loadavg_start": os.getloadavg()}
    if args.long:
        extra = [fleurs_joined(args.fleurs)] if args.fleurs else []
        out["long"] = compare_long(long_recordings(items, pcms) + extra)
        out["loadavg_end"] = os.getloadavg()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.with_name("engines-long.json").write_text(json.dumps(out, indent=1, default=str))
        return
    if args.threads_only:
        librivox = [pcms[i["name"]] for i in items if i["set"] == "librivox"]
        out["threads"] = thread_layouts(librivox + librivox[:3])
        out["loadavg_end"] = os.getloadavg()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.with_name("engines-threads.json").write_text(json.dumps(out, indent=1, default=str))
        return
    for name, factory in (("pocketsphinx", PocketSphinxEngine), ("whisper", WhisperEngine)):
        started = time.perf_counter()
        engine = factory()
        out["load_s"][name] = round(time.perf_counter() - started, 2)
        out["rows"] += run_engine(name, engine, items, pcms)["rows"]
        engine.close()
    out["summary"] = {
        f"{engine}/{condition}/{subset}": summarise(out["rows"], engine=engine, condition=condition,
                                                    **({} if subset == "all" else {"set": subset}))
        for engine in ("pocketsphinx", "whisper") for condition in ("16k", "tel8k")
        for subset in ("all", "librivox", "cards", "commands")
    }
    if args.threads:
        librivox = [pcms[i["name"]] for i in items if i["set"] == "librivox"]
        out["threads"] = thread_layouts(librivox + librivox[:3])
    out["loadavg_end"] = os.getloadavg()

    print("\n| engine | audio | clips | words | WER | RTF | load |")
    print("|---|---|---|---|---|---|---|")
    for engine in ("pocketsphinx", "whisper"):
        for condition in ("16k", "tel8k"):
            for subset in ("all", "librivox", "cards", "commands"):
                s = out["summary"][f"{engine}/{condition}/{subset}"]
                load = f"{out['load_s'][engine]:.2f} s" if condition == "16k" and subset == "all" else ""
                print(f"| {engine} | {condition} {subset} | {s['clips']} | {s['ref_words']} | {s['wer'] * 100:.1f}% "
                      f"| {s['rtf']:.3f} | {load} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwritten: {OUT}")


if __name__ == "__main__":
    main()
