"""Minimal pairs that differ in one weak consonant: are they served?

The minimal-pair benchmark (bench_minimal_pairs.py) changes a vowel, a digit, a tone or a
word; none of its pairs turns on a quiet fricative or burst alone. This set does: /h/-/f/
("hire" / "fire", "hold" / "fold"), /h/-nothing ("hate" / "ate"), /f/-/th/ ("free" / "three"),
/s/-/sh/ ("sip" / "ship"), /p/-/t/ ("pick" / "tick") and /f/-/v/ ("fan" / "van"), 21 sentence
pairs in 8 espeak-ng voices at two speeds (336 pairs). Each B is judged against A (as recorded)
with the service's own `Verifier.judge` at the default thresholds, as recorded and through five
lines (a Butterworth telephone band and G.711 mu-law, MP3 32 kbit/s, Opus 24 kbit/s, 8 kHz PCM);
A through the same four lines is judged as a copy (recall).

    python bench/bench_weak_consonants.py [--data bench/data/weak_consonants] [--jobs 2]

Needs espeak-ng on the first run (the wavs are kept under --data); features are recomputed
every run (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from earmark.fingerprint.decode import decode_audio  # noqa: E402
from earmark.service.config import FuzzyThresholds  # noqa: E402
from earmark.service.pipeline.verification import Verifier  # noqa: E402
from tests.audio_tools import encode, read_pcm  # noqa: E402
from tests.test_minimal_pairs import _judge, _resample, _telephone  # noqa: E402

PAIRS = {
    "h/f": [("We will hire him tomorrow.", "We will fire him tomorrow."),
            ("Please hold the line for a moment.", "Please fold the line for a moment."),
            ("Hold on, please.", "Fold on, please."), ("The heat is on.", "The feet is on."),
            ("Put the hat on the table.", "Put the fat on the table."),
            ("He was hired last week.", "He was fired last week.")],
    "h/-": [("I hate it all.", "I ate it all."), ("The hedge was cut.", "The edge was cut."),
            ("Harm them now.", "Arm them now."), ("Did you hear it?", "Did you ear it?")],
    "f/th": [("He is free now.", "He is three now."), ("I fought about it.", "I thought about it."),
             ("Give me the fin.", "Give me the thin.")],
    "s/sh": [("Sip it slowly.", "Ship it slowly."), ("We need a new seat.", "We need a new sheet."),
             ("Sell it today.", "Shell it today.")],
    "p/t": [("Pick the one you like.", "Tick the one you like."), ("Put it in the pan.", "Put it in the tan."),
            ("The pile is wet.", "The tile is wet.")],
    "f/v": [("The fan is broken.", "The van is broken."), ("Ferry them over.", "Very them over.")],
}
VOICES = ["en-us+f2", "en-gb-scotland+f3", "en-029+f1", "en-gb+m3", "en-us+m1", "en-gb-x-rp+f4", "en-us-nyc+m4",
          "en+klatt2"]
SPEEDS = [175, 140]
LINES = ["as recorded", "telephone", "mp3 32k", "opus 24k", "8 kHz"]


def synthesise(data: Path) -> list[dict]:
    """The pairs' wavs under `data` (espeak-ng, made once), one manifest row per pair."""
    data.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, pairs in PAIRS.items():
        for index, texts in enumerate(pairs):
            for voice in VOICES:
                for speed in SPEEDS:
                    pair_id = f"{kind.replace('/', '_').replace('-', 'none')}{index}_{voice.replace('+', '_')}_{speed}"
                    for side, text in zip("ab", texts, strict=True):
                        path = data / f"{pair_id}_{side}.wav"
                        if not path.exists():
                            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
                    rows.append({"id": pair_id, "kind": kind, "voice": voice, "speed": speed, "text_a": texts[0],
                                 "text_b": texts[1]})
    return rows


def _lines(data: bytes) -> dict[str, bytes]:
    samples, rate = read_pcm(data)
    return {"as recorded": data, "telephone": _telephone(samples, rate),
            "mp3 32k": encode(samples, rate, fmt="mp3", codec="libmp3lame", bitrate=32_000),
            "opus 24k": encode(_resample(samples, rate, 48_000), 48_000, fmt="ogg", codec="libopus", bitrate=24_000),
            "8 kHz": encode(_resample(samples, rate, 8_000), 8_000, fmt="wav", codec="pcm_s16le")}


def _judge_pair(job: tuple[str, str]) -> list[tuple[str, str, bool, float, str]]:
    """(side, line, accepted, score, reason) of B and of A's copies against A as recorded."""
    data, pair_id = Path(job[0]), job[1]
    verifier = Verifier(FuzzyThresholds())

    def features(raw: bytes):
        return verifier.features_of_decoded(decode_audio(raw, 3600))

    original = features((data / f"{pair_id}_a.wav").read_bytes())
    verdicts = []
    for side in "ba":
        for line, raw in _lines((data / f"{pair_id}_{side}.wav").read_bytes()).items():
            if side == "a" and line == "as recorded":
                continue
            accepted, score, reason = _judge(verifier, original, features(raw))
            verdicts.append((side, line, accepted, score, reason))
    return verdicts


def main() -> None:
    """Synthesise (once), judge, print the table bench/README.md quotes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("bench/data/weak_consonants"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/weak_consonants.json"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    manifest = synthesise(args.data)
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_judge_pair, [(str(args.data), row["id"]) for row in manifest], chunksize=4))
    rows = [{**item, "side": side, "line": line, "accepted": accepted, "score": round(score, 4), "reason": reason}
            for item, verdicts in zip(manifest, results, strict=True) for side, line, accepted, score, reason in verdicts]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    served, count = Counter(), Counter()
    for row in rows:
        key = (row["kind"] if row["side"] == "b" else "copies of A", row["line"])
        count[key] += 1
        served[key] += row["accepted"]
    print("| B served (pairs) / copies accepted | " + " | ".join(LINES) + " |")
    print("|---" * (len(LINES) + 1) + "|")
    for kind in [*PAIRS, "copies of A"]:
        cells = [f"{served[kind, line]}/{count[kind, line]}" if count[kind, line] else "-" for line in LINES]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    pairs = [row for row in rows if row["side"] == "b"]
    print(f"\npairs served: {sum(r['accepted'] for r in pairs)}/{len(pairs)}, highest {max(r['score'] for r in pairs):.3f}")


if __name__ == "__main__":
    main()
