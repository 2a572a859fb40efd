"""Language identification's cost beside the default engine's transcription (issue 26).

For each clip (English and Mandarin, real human recordings), in one run and interleaved so that
the machine's load weighs on both alike:

* `engine`: Whisper tiny.en's transcription as earmark runs it (WhisperEngine.transcribe: VAD
  clips, beam 5, word times);
* `lid`: earmark's identification (service/engines/language_id.py: the first `--window` seconds
  of speech, unpadded encoder input, int8, one thread), with its language and probability;
* `lid_padded`: faster-whisper's own `detect_language` on the same model (a 30 s window padded
  with silence), the cost the issue measured;
* `beside`: the engine and the identification run at once, as a miss with no language routes
  does: how much longer the miss takes than the engine alone.

Median of `--repeats` runs each. Writes bench/out/language_id.json.

    .venv/bin/python bench/bench_language_id.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness

ROOT = harness.ROOT
FIXTURES = ROOT / "tests" / "fixtures"
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data/librivox")
FUNASR_NOTE = "more Mandarin: the FunASR repository's runtime/**/*.wav (fetch it and pass the files as --zh)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=3.0, help="seconds of speech identified [3]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--zh", nargs="*", default=[], help=f"extra Mandarin clips ({FUNASR_NOTE})")
    parser.add_argument("--en", nargs="*", default=[], help="extra English clips")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from faster_whisper import WhisperModel

    from earmark.fingerprint.decode import decode_audio
    from earmark.service.engines.base import RecognitionOptions
    from earmark.service.engines.language_id import LanguageIdentifier, assemble_base_model
    from earmark.service.engines.whisper_engine import WhisperEngine

    english = [FIXTURES / name for name in ("librivox_0890.flac", "librivox_0930.flac", "recorded.wav", "weather.wav",
                                            "fleurs_en_5to9.flac")]
    english += sorted(POCKETSPHINX.glob("*.wav"))[:3] + [Path(p) for p in args.en]
    mandarin = [FIXTURES / "zh_asr_example.wav", FIXTURES / "zh_mid.wav"] + [Path(p) for p in args.zh]
    engine = WhisperEngine()
    engine.warm_up()
    profile = engine.resolve(RecognitionOptions())
    model_dir = assemble_base_model()
    identifier = LanguageIdentifier(model_dir, window_s=args.window)
    identifier.warm_up()
    padded = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=1, local_files_only=True)
    beside = ThreadPoolExecutor(2)

    def timed(call):
        started = time.perf_counter()
        result = call()
        return result, time.perf_counter() - started

    def both(pcm):
        engine_job = beside.submit(engine.transcribe, pcm, profile)
        lid_job = beside.submit(identifier.identify, pcm)
        return engine_job.result(), lid_job.result()

    rows = []
    for expected, paths in (("en", english), ("zh", mandarin)):
        for path in paths:
            if not path.is_file():
                continue
            pcm = decode_audio(path.read_bytes(), 3600).pcm_16k
            times: dict[str, list[float]] = {"engine": [], "lid": [], "lid_padded": [], "beside": []}
            heard = None
            for _ in range(args.repeats):
                _, seconds = timed(lambda: engine.transcribe(pcm, profile))  # noqa: B023 - called at once
                times["engine"].append(seconds)
                heard, seconds = timed(lambda: identifier.identify(pcm))  # noqa: B023
                times["lid"].append(seconds)
                _, seconds = timed(lambda: padded.detect_language(pcm))  # noqa: B023
                times["lid_padded"].append(seconds)
                _, seconds = timed(lambda: both(pcm))  # noqa: B023
                times["beside"].append(seconds)
            median = {name: statistics.median(values) for name, values in times.items()}
            row = {"clip": path.name, "expected": expected, "audio_s": round(len(pcm) / 16000, 2),
                   "language": heard.language if heard else None,
                   "probability": round(heard.probability, 3) if heard else None,
                   **{f"{name}_s": round(value, 3) for name, value in median.items()},
                   "lid_over_engine": round(median["lid"] / median["engine"], 3),
                   "beside_over_engine": round(median["beside"] / median["engine"] - 1, 3)}
            rows.append(row)
            print(f"{row['clip'][:28]:28} {expected} {row['audio_s']:5.1f}s heard {row['language']} {row['probability']}"
                  f"  engine {row['engine_s']:.3f}s  lid {row['lid_s']:.3f}s ({row['lid_over_engine']:.0%})"
                  f"  padded {row['lid_padded_s']:.3f}s  beside +{row['beside_over_engine']:.0%}", flush=True)
    beside.shutdown()
    for expected in ("en", "zh"):
        chosen = [row for row in rows if row["expected"] == expected]
        if chosen:
            print(f"{expected}: {sum(row['language'] == expected for row in chosen)}/{len(chosen)} identified; lid/engine "
                  f"median {statistics.median(row['lid_over_engine'] for row in chosen):.1%}, beside +"
                  f"{statistics.median(row['beside_over_engine'] for row in chosen):.1%}")
    out = harness.OUT_DIR / "language_id.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": harness.machine_info(window_s=args.window), "rows": rows}, indent=1))
    harness.print_final_load()


if __name__ == "__main__":
    main()
