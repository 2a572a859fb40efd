"""Copies and minimal pairs through real channels: the wide benchmark of issue 23.

Originals come from three places: a sample of make_corpus.py's originals (espeak-ng, English and
Mandarin), the A sides of a sample of make_minimal_pairs.py's pairs, and the real human
recordings of Debian's pocketsphinx-testdata (bench_engines.recordings: LibriVox readings,
spoken card names, a command, a digit string). Each is put through every setting of nine
channel FAMILIES (see FAMILIES below):

- `telephone`: the 300-3400 Hz band at 8 kHz, G.711 mu-law and A-law, GSM 06.10, G.726 at 16 and
  32 kbit/s, G.722 (no AMR-NB: this ffmpeg has no AMR encoder);
- `lowbitrate`: MP3 at 8, 16 and 24 kbit/s, Opus at 6, 8 and 12, AAC at 16 and 24, Speex at 8;
- `dynamics`: sox's limiter, ffmpeg's look-ahead limiter, a compressor, two AGCs (dynaudnorm),
  EBU R128 loudnorm, hard clipping 3, 6, 9 and 12 dB over the original's level;
- `noise`: white, pink and babble (five other corpus voices summed) at 30, 20 and 10 dB SNR,
  measured against the RMS of the active speech frames (make_corpus.active_rms);
- `reverb`: synthetic impulse responses (a direct path and an exponentially decaying noise tail),
  small room to hall: RT60 0.25 to 1.5 s, direct-to-reverberant ratio +8 to -3 dB;
- `chains`: noise then a codec, reverberation then the telephone band, and a speakerphone-like
  chain (band limit, small room, pink noise at 25 dB, a compander, mu-law at 8 kHz);
- `linear`: EQ (bass and treble shelves cut and boosted, a presence peak, a handset's band and
  peak), polarity inversion, a DC offset: a linear channel every phone and sound card applies;
- `containers`: codecs at normal bitrates in the containers the faults issue added (FLV, raw
  AC-3, Matroska, WebM, WMA), a stereo 44.1 kHz AAC, and a tandem (MP3, then AAC, then Opus);
- `vocoder`: Codec2 at 3200 and 1300 bit/s (outside the issue's targets: "welcome").

Negatives (must never be served): every sampled pair's B side, clean and through every setting
(judged against A), and edits of the human recordings with Whisper's word times (the default
engine, once; cached in bench/out/channels_words.json): first word cut, last word cut, a middle
word deleted, a middle word replaced by another word of the same speaker from the same
recording (hard joins, no cross-fade). These too go clean and through every setting.

Deterministic: every random choice is seeded from `--seed` and the file's name, sox runs with
`-R -D`, ffmpeg with `+bitexact`. Idempotent: `.specs.json` keeps a hash of each file's recipe,
and a file is rebuilt only when missing or its recipe changed.

    apt-get install espeak-ng ffmpeg sox pocketsphinx-testdata
    .venv/bin/python bench/make_channels.py [--out bench/data/channels] [--originals 40] \
        [--pairs 48] [--jobs 2]

Writes `<out>/manifest.json`: `originals` (`id`, `source`: synthetic | pair | human, `lang`,
`path`), `negatives` (`id`, `original`, `kind`, `source`, `path`) and `copies` (`id`: the file's
original or negative, `original`, `family`, `setting`, `positive`, `source`, `kind`, `path`).
Paths are relative to `--out` (or absolute, for files of an existing corpus).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soxr
from scipy.signal import fftconvolve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_corpus as mc  # noqa: E402
import make_minimal_pairs as mmp  # noqa: E402
from bench_dynamics import CHAINS as DYNAMICS_CHAINS  # noqa: E402

RECIPE_VERSION = 1
WORDS_CACHE = Path("bench/out/channels_words.json")

# ------------------------------------------------------------------------------------------
# Channels: a setting is a tuple of steps, applied in order; a codec step comes last.
#   ("sox", effects)             sox -R -D in.wav -b 16 out.wav <effects>
#   ("ffmpeg", ext, args)        ffmpeg -i in.wav <args> +bitexact out.<ext>, stored as written
#   ("ffmpeg_raw", fmt, args)    encoded to a raw stream and decoded back to WAV (a codec the service
#                                does not take, stored decoded; or a tandem's first codecs)
#   ("noise", kind, snr_db)      white | pink | babble, SNR over the active speech
#   ("reverb", rt60_s, drr_db)   a synthetic impulse response, same length as the input
#   ("clip", gain_db)            gain, then hard clipping at full scale


def _ff(ext: str, *args: str) -> tuple:
    return ("ffmpeg", ext, list(args))


def _codec(ext: str, codec: str, bitrate: str, rate: int, channels: int = 1) -> tuple:
    """ffmpeg's `codec` at `bitrate` and `rate`, in the container of `ext` (the file as written)."""
    return _ff(ext, "-c:a", codec, "-b:a", bitrate, "-ar", str(rate), "-ac", str(channels))


BAND = ("sox", ["sinc", "300-3400", "rate", "-v", "8000"])  # the telephone band at 8 kHz
ULAW = _ff("wav", "-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1")
GSM = _ff("wav", "-c:a", "libgsm_ms", "-ar", "8000", "-ac", "1")


def _af(name: str) -> tuple:
    """bench_dynamics.py's ffmpeg filter chain `name`, to a 16 kHz WAV."""
    return _ff("wav", *DYNAMICS_CHAINS[name], "-ar", "16000", "-c:a", "pcm_s16le")


FAMILIES: dict[str, dict[str, tuple]] = {
    "telephone": {
        "band_8k": (BAND,),
        "ulaw_8k": (ULAW,),
        "band_ulaw": (BAND, ULAW),
        "band_alaw": (BAND, _ff("wav", "-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1")),
        "band_gsm": (BAND, GSM),
        "band_g726_16k": (BAND, _codec("wav", "g726", "16k", 8000)),
        "band_g726_32k": (BAND, _codec("wav", "g726", "32k", 8000)),
        "g722": (("ffmpeg_raw", "g722", ["-c:a", "g722", "-ar", "16000", "-ac", "1"]),),
    },
    "lowbitrate": {
        "mp3_8k": (_codec("mp3", "libmp3lame", "8k", 8000),),
        "mp3_16k": (_codec("mp3", "libmp3lame", "16k", 16000),),
        "mp3_24k": (_codec("mp3", "libmp3lame", "24k", 16000),),
        "opus_6k": (_codec("opus", "libopus", "6k", 48000),),
        "opus_8k": (_codec("opus", "libopus", "8k", 48000),),
        "opus_12k": (_codec("opus", "libopus", "12k", 48000),),
        "aac_16k": (_codec("m4a", "aac", "16k", 16000),),
        "aac_24k": (_codec("m4a", "aac", "24k", 16000),),
        "speex_8k": (_codec("ogg", "libspeex", "8k", 8000),),
    },
    "dynamics": {
        "sox_limiter_6": (("sox", ["gain", "-l", "6"]),),
        "alimiter": (_af("alimiter"),),
        "compressor": (_af("compressor"),),
        "dynaudnorm": (_af("dynaudnorm"),),
        "agc_fast": (_ff("wav", "-af", "dynaudnorm=f=50:g=3:m=20", "-ar", "16000", "-c:a", "pcm_s16le"),),
        "loudnorm": (_af("loudnorm"),),
        "clip_3": (("clip", 3.0),),
        "clip_6": (("clip", 6.0),),
        "clip_9": (("clip", 9.0),),
        "clip_12": (("clip", 12.0),),
    },
    "noise": {f"{kind}_{snr}": (("noise", kind, float(snr)),)
              for kind in ("white", "pink", "babble") for snr in (30, 20, 10)},
    "reverb": {
        "room_small": (("reverb", 0.25, 8.0),),
        "room_medium": (("reverb", 0.5, 3.0),),
        "room_large": (("reverb", 0.9, 0.0),),
        "hall": (("reverb", 1.5, -3.0),),
    },
    "chains": {
        "white30_mp3_16k": (("noise", "white", 30.0),
                            _codec("mp3", "libmp3lame", "16k", 16000)),
        "pink20_opus_12k": (("noise", "pink", 20.0),
                            _codec("opus", "libopus", "12k", 48000)),
        "babble20_band_gsm": (("noise", "babble", 20.0), BAND, GSM),
        "room_small_band_8k": (("reverb", 0.25, 8.0), BAND),
        "room_medium_band_ulaw": (("reverb", 0.5, 3.0), BAND, ULAW),
        "speakerphone": (("sox", ["sinc", "300-3400"]), ("reverb", 0.3, 6.0), ("noise", "pink", 25.0),
                         ("sox", ["compand", "0.02,0.20", "6:-70,-60,-20", "-5", "-90", "0.1"]), ULAW),
    },
    "linear": {
        "eq_bass_cut": (("sox", ["bass", "-12"]),),
        "eq_bass_boost": (("sox", ["gain", "-h", "bass", "+10", "gain", "-r"]),),
        "eq_treble_cut": (("sox", ["treble", "-12"]),),
        "eq_treble_boost": (("sox", ["gain", "-h", "treble", "+10", "gain", "-r"]),),
        "eq_presence": (("sox", ["gain", "-h", "equalizer", "2500", "1q", "+8", "gain", "-r"]),),
        "eq_handset": (("sox", ["gain", "-h", "highpass", "200", "lowpass", "4000", "equalizer", "1500", "1q", "+6",
                                "gain", "-r"]),),
        "polarity": (("sox", ["vol", "-1"]),),
        "dc_offset": (("sox", ["vol", "0.9", "dcshift", "0.05"]),),
    },
    "containers": {
        "flv_mp3_64k": (_codec("flv", "libmp3lame", "64k", 22050),),
        "ac3_96k": (_codec("ac3", "ac3", "96k", 48000),),
        "mka_vorbis": (_ff("mka", "-c:a", "libvorbis", "-q:a", "3", "-ar", "44100", "-ac", "1"),),
        "webm_opus_32k": (_codec("webm", "libopus", "32k", 48000),),
        "wma_64k": (_codec("wma", "wmav2", "64k", 44100),),
        "m4a_stereo_44k": (_codec("m4a", "aac", "96k", 44100, channels=2),),
        "tandem_mp3_aac_opus": (("ffmpeg_raw", "mp3", ["-c:a", "libmp3lame", "-b:a", "64k", "-ar", "44100", "-ac", "1"]),
                                ("ffmpeg_raw", "matroska", ["-c:a", "aac", "-b:a", "48k", "-ar", "32000", "-ac", "1"]),
                                _codec("opus", "libopus", "24k", 48000)),
    },
    "vocoder": {
        "codec2_3200": (("ffmpeg_raw", "codec2", ["-c:a", "libcodec2", "-mode", "3200", "-ar", "8000", "-ac", "1"]),),
        "codec2_1300": (("ffmpeg_raw", "codec2", ["-c:a", "libcodec2", "-mode", "1300", "-ar", "8000", "-ac", "1"]),),
    },
}
OUTSIDE_TARGETS = {"vocoder"}  # reported, but the issue sets no target for it


def output_ext(steps: tuple) -> str:
    """The stored file's extension: the last ffmpeg step's container, else WAV."""
    last = steps[-1]
    return last[1] if last[0] == "ffmpeg" else "wav"


# ------------------------------------------------------------------------------------------
# Signal steps (numpy), on int16-range float arrays at the file's own rate


def _seed(*parts) -> list[int]:
    return [zlib.crc32(repr(parts).encode())]


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a 1/f power spectrum (white noise shaped in the frequency domain)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(np.maximum(freqs, n / 1000.0)), n)
    return noise / (np.std(noise) or 1.0)


def babble_noise(n: int, rate: int, talkers: list[tuple[np.ndarray, int]], rng: np.random.Generator) -> np.ndarray:
    """The sum of the babble talkers (each at equal speech level, looped, from a seeded offset)."""
    total = np.zeros(n)
    for pcm, talker_rate in talkers:
        x = pcm if talker_rate == rate else soxr.resample(pcm, talker_rate, rate)
        x = x / (mc.active_rms(x, rate) or 1.0)
        start = int(rng.integers(0, len(x)))
        looped = np.tile(x, 2 + n // len(x))[start:start + n]
        total += looped
    return total / (np.std(total) or 1.0)


def add_noise(x: np.ndarray, rate: int, kind: str, snr_db: float, seed: list[int], talkers) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "white":
        noise = rng.standard_normal(len(x))
    elif kind == "pink":
        noise = pink_noise(len(x), rng)
    else:
        noise = babble_noise(len(x), rate, talkers, rng)
    return x + noise * mc.active_rms(x, rate) / 10 ** (snr_db / 20)


def impulse_response(rate: int, rt60: float, drr_db: float, seed: list[int]) -> np.ndarray:
    """A direct path and an exponentially decaying Gaussian tail (60 dB down at `rt60`), the tail
    scaled to `drr_db` below the direct path's energy, starting 2.5 ms after it."""
    rng = np.random.default_rng(seed)
    n = int(rate * rt60 * 1.2)
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)
    tail[: int(0.0025 * rate)] = 0.0
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail ** 2))
    tail[0] = 1.0
    return tail


def reverb(x: np.ndarray, rate: int, rt60: float, drr_db: float, seed: list[int]) -> np.ndarray:
    """`x` through a synthetic room, cut to its own length, scaled back to its own peak."""
    y = fftconvolve(x, impulse_response(rate, rt60, drr_db, seed))[: len(x)]
    return y * (np.max(np.abs(x)) / (np.max(np.abs(y)) or 1.0))


def clip(x: np.ndarray, gain_db: float) -> np.ndarray:
    return np.clip(x * 10 ** (gain_db / 20), -32768, 32767)


# ------------------------------------------------------------------------------------------
# Running a recipe


def _read(path: Path) -> tuple[np.ndarray, int]:
    pcm, rate = mc.read_wav(path)
    return pcm.astype(np.float64).mean(axis=1), rate


def _write(path: Path, x: np.ndarray, rate: int) -> None:
    mc.write_wav(path, np.clip(np.rint(x), -32768, 32767).reshape(-1, 1), rate)


def build(job: dict) -> dict:
    """Run one recipe (`src`, `steps`, `seed`, `talkers`) to `dst`; never raises."""
    dst = Path(job["dst"])
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
            current = Path(job["src"])
            talkers = [_read(Path(p)) for p in job.get("talkers", [])]
            for i, step in enumerate(job["steps"]):
                last = i == len(job["steps"]) - 1
                target = Path(tmp) / (f"out.{output_ext(tuple(job['steps']))}" if last else f"s{i}.wav")
                kind = step[0]
                if kind == "sox":
                    mc.run([mc.SOX, *mc.SOX_COMMON, str(current), "-b", "16", str(target), *step[1]])
                elif kind == "ffmpeg":
                    assert last, "a codec step comes last"
                    mc.run([mc.FFMPEG, *mc.FFMPEG_COMMON, "-i", str(current), *step[2], *mc.FFMPEG_BITEXACT, str(target)])
                elif kind == "ffmpeg_raw":  # decoded to a WAV, so a codec may follow (a tandem)
                    mc.ffmpeg_decoded(current, target, step[1], list(step[2]))
                else:
                    x, rate = _read(current)
                    seed = _seed(job["seed"], job["name"], i, *step)
                    if kind == "noise":
                        y = add_noise(x, rate, step[1], step[2], seed, talkers)
                    elif kind == "reverb":
                        y = reverb(x, rate, step[1], step[2], seed)
                    elif kind == "clip":
                        y = clip(x, step[1])
                    else:
                        raise ValueError(f"unknown step {kind!r}")
                    _write(target, y, rate)
                current = target
            os.replace(current, dst)
        return {"dst": str(dst), "ok": True}
    except Exception as exc:  # report, don't kill the pool
        return {"dst": str(dst), "ok": False, "error": f"{type(exc).__name__}: {exc}"}


def run_jobs(jobs: list[dict], out: Path, workers: int, label: str) -> set[str]:
    """Build every job whose output is missing or whose recipe changed; returns the failed dsts."""
    specs_path = out / ".specs.json"
    specs = json.loads(specs_path.read_text()) if specs_path.exists() else {}
    src_digests: dict[str, str] = {}
    todo = []
    for job in jobs:
        h = recipe_hash(job, src_digests)
        rel = os.path.relpath(job["dst"], out)
        job["_hash"] = h
        if not (Path(job["dst"]).exists() and specs.get(rel) == h):
            todo.append(job)
    print(f"[{label}] {len(jobs)} files: {len(jobs) - len(todo)} up to date, {len(todo)} to build", flush=True)
    failed = set()
    started = time.monotonic()
    with ProcessPoolExecutor(workers) as pool:
        for n, (job, result) in enumerate(zip(todo, pool.map(build, todo, chunksize=4), strict=True), 1):
            rel = os.path.relpath(job["dst"], out)
            if result["ok"]:
                specs[rel] = job["_hash"]
            else:
                failed.add(job["dst"])
                print(f"[{label}] FAILED {rel}: {result['error']}", flush=True)
            if n % 500 == 0:
                print(f"[{label}] {n} of {len(todo)} in {time.monotonic() - started:.0f} s", flush=True)
                specs_path.write_text(json.dumps(dict(sorted(specs.items())), indent=0))
    specs_path.write_text(json.dumps(dict(sorted(specs.items())), indent=0))
    return failed


def recipe_hash(job: dict, digests: dict[str, str]) -> str:
    """The recipe of a file: its steps, seed, name and the contents' hashes of its inputs (each
    read once)."""
    def digest(path: str) -> str:
        if path not in digests:
            digests[path] = hashlib.blake2b(Path(path).read_bytes(), digest_size=8).hexdigest()
        return digests[path]
    key = [RECIPE_VERSION, job["steps"], job["seed"], job["name"], digest(job["src"]),
           [digest(p) for p in job.get("talkers", [])]]
    return hashlib.blake2b(json.dumps(key).encode(), digest_size=10).hexdigest()


def prune(out: Path, families: list[str], planned: set[str]) -> None:
    """Delete the files of `families` no longer planned (a smaller sample, a removed setting) and
    their specs; other families' files are left alone."""
    stale = [p for family in families for p in (out / "copies" / family).rglob("*")
             if p.is_file() and str(p) not in planned]
    for path in stale:
        path.unlink()
    specs_path = out / ".specs.json"
    if stale and specs_path.exists():
        gone = {os.path.relpath(p, out) for p in stale}
        specs = json.loads(specs_path.read_text())
        specs_path.write_text(json.dumps({k: v for k, v in sorted(specs.items()) if k not in gone}, indent=0))
    if stale:
        print(f"[channels] removed {len(stale)} files no longer planned", flush=True)


# ------------------------------------------------------------------------------------------
# Sources


def synthetic_originals(out: Path, corpus: Path, count: int, babble: int, seed: int, workers: int
                        ) -> tuple[list[dict], list[str]]:
    """A sample of make_corpus's originals (every 5th of its default 200: o0000, o0005, ...), and
    `babble` others (o0002, o0007, ...) as babble talkers. Taken from `corpus` when it has them,
    else synthesised with make_corpus's own recipe into out/originals."""
    items = mc.plan_originals(200, seed, mc.make_pools())
    chosen = [it for i, it in enumerate(items) if i % 5 == 0][:count]
    talkers = [it for i, it in enumerate(items) if i % 5 == 2 and it.meta["lang"] == "en"
               and it.meta["_parts"] and len(it.meta["text"]) > 80][:babble]
    todo = []
    paths = {}
    for it in chosen + talkers:
        existing = corpus / it.rel
        if existing.exists():
            paths[it.id] = str(existing.resolve())
        else:
            paths[it.id] = str(out / it.rel)
            if not (out / it.rel).exists():
                todo.append(it)
    if todo:
        print(f"[originals] synthesising {len(todo)} of make_corpus's originals", flush=True)
        with ProcessPoolExecutor(workers) as pool:
            for result in pool.map(mc.run_job, [it.job for it in todo], [str(out)] * len(todo),
                                   [it.rel for it in todo]):
                if not result["ok"]:
                    raise RuntimeError(f"{result['rel']}: {result['error']}")
    originals = [{"id": it.id, "source": "synthetic", "lang": it.meta["lang"], "path": paths[it.id],
                  "text": it.meta["text"]} for it in chosen]
    return originals, [paths[it.id] for it in talkers]


def minimal_pairs(out: Path, corpus: Path, count: int, seed: int) -> list[dict]:
    """The first pairs of every kind of make_minimal_pairs's default 400, in its proportions
    (`allot(count)`, every kind at least once), A and B taken from `corpus` when there, else
    built with its recipes into out/pairs."""
    planned = mmp.plan_pairs(mmp.DEFAULT_PAIRS, seed)
    quota = {kind: max(1, n) for kind, n in mmp.allot(count).items()}
    pairs = [p for p in planned if int(p["id"].rsplit("_", 1)[1]) < quota[p["kind"]]]
    a_items, b_synth, b_cut, _, _ = mmp.plan_items(pairs)
    pair_dir = out / "pairs"
    built = []
    for it in a_items + b_synth:
        if not (corpus / it.rel).exists() and not (pair_dir / it.rel).exists():
            result = mc.run_job(it.job, str(pair_dir), it.rel)
            if not result["ok"]:
                raise RuntimeError(f"{it.rel}: {result['error']}")
            built.append(it.rel)
    for it in b_cut:
        if not (corpus / it.rel).exists() and not (pair_dir / it.rel).exists():
            result = mmp.run_cut(it.job, pair_dir, it.rel)
            if not result["ok"]:
                raise RuntimeError(f"{it.rel}: {result['error']}")
            built.append(it.rel)
    if built:
        print(f"[pairs] built {len(built)} A/B files in {pair_dir}", flush=True)

    def where(rel: str) -> str:
        return str((corpus / rel).resolve()) if (corpus / rel).exists() else str(pair_dir / rel)
    return [{**p, "path_a": where(p["path_a"]), "path_b": where(p["path_b"])} for p in pairs]


def human_originals(out: Path) -> list[dict]:
    """pocketsphinx-testdata's recordings (bench_engines.recordings), as 16 kHz WAVs in out/human."""
    from bench_engines import load_pcm, recordings

    result = []
    for item in recordings():
        path = out / "human" / f"{item['name']}.wav"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pcm = load_pcm(item)
            mc.write_wav(path, np.clip(np.rint(pcm * 32768), -32768, 32767).reshape(-1, 1), 16000)
        result.append({"id": f"h_{item['name']}", "source": "human", "lang": "en", "path": str(path),
                       "text": item["ref"]})
    return result


def word_times(originals: list[dict]) -> dict[str, list[list]]:
    """Whisper's (default engine's) word times for each human recording (`id`, `path`), computed
    once and cached; also used to transcribe the edits."""
    cache = json.loads(WORDS_CACHE.read_text()) if WORDS_CACHE.exists() else {}
    missing = [o for o in originals if o["id"] not in cache]
    if missing:
        from earmark.fingerprint.decode import decode_audio
        from earmark.service.engines.base import RecognitionOptions
        from earmark.service.engines.whisper_engine import WhisperEngine

        engine = WhisperEngine(num_workers=1, cpu_threads=1)
        profile = engine.resolve(RecognitionOptions(language="en"))
        for o in missing:
            transcript = engine.transcribe(decode_audio(Path(o["path"]).read_bytes(), 3600).pcm_16k, profile)
            cache[o["id"]] = [[w.word.strip(), w.start, w.end] for s in transcript.segments for w in s.words]
        engine.close()
        WORDS_CACHE.parent.mkdir(parents=True, exist_ok=True)
        WORDS_CACHE.write_text(json.dumps(cache, indent=1))
    return cache


def word_edits(out: Path, originals: list[dict], seed: int) -> list[dict]:
    """Hard negatives cut from the human recordings at Whisper's word times (hard joins)."""
    words = word_times(originals)
    negatives = []
    for o in originals:
        ws = words.get(o["id"], [])
        if len(ws) < 2:
            continue
        x, rate = _read(Path(o["path"]))

        def at(t: float) -> int:
            return min(len(x), max(0, int(round(t * rate))))  # noqa: B023 - used at once

        edits = {
            "first_word_cut": np.concatenate([x[: at(ws[0][1])], x[at(ws[1][1]):]]),
            "last_word_cut": np.concatenate([x[: at(ws[-2][2])], x[at(ws[-1][2]):]]),
        }
        if len(ws) >= 3:
            rng = random.Random(f"{seed}:{o['id']}:edit")
            k = rng.randrange(1, len(ws) - 1)
            edits["word_deleted"] = np.concatenate([x[: at(ws[k][1])], x[at(ws[k + 1][1]):]])
            others = [j for j, w in enumerate(ws) if w[0].lower().strip(".,!?") != ws[k][0].lower().strip(".,!?")]
            if others:
                j = rng.choice(others)
                edits["word_spliced"] = np.concatenate([x[: at(ws[k][1])], x[at(ws[j][1]): at(ws[j][2])],
                                                        x[at(ws[k][2]):]])
        for kind, y in edits.items():
            path = out / "human_edits" / f"{o['id']}_{kind}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, y, rate)
            negatives.append({"id": f"{o['id']}_{kind}", "original": o["id"], "kind": kind, "source": "human",
                              "path": str(path), "removed_s": round((len(x) - len(y)) / rate, 3)})
    # Whisper's word times are approximate (tiny.en's run up to ~0.25 s early at a phrase's end),
    # so an edit may take part of a word rather than the word: each edit is transcribed, and
    # `text_changed` says whether the engine hears a different text from the original's.
    heard = word_times(negatives)
    for n in negatives:
        def text(key: str) -> str:
            return " ".join(w[0].lower().strip(".,!?") for w in heard[key])
        n["edit_text"] = text(n["id"])
        n["text_changed"] = n["edit_text"] != text(n["original"])
    return negatives


# ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/data/channels"))
    parser.add_argument("--corpus", type=Path, default=Path("bench/data/corpus"),
                        help="make_corpus.py output to take originals from (built here if absent)")
    parser.add_argument("--pairs-corpus", type=Path, default=Path("bench/data/minimal_pairs"),
                        help="make_minimal_pairs.py output to take pairs from (built here if absent)")
    parser.add_argument("--originals", type=int, default=40, help="make_corpus originals to sample (40)")
    parser.add_argument("--pairs", type=int, default=48, help="minimal pairs to sample (48)")
    parser.add_argument("--babble-talkers", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=mc.DEFAULT_SEED)
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated families to build")
    args = parser.parse_args()
    started = time.monotonic()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    synthetic, talkers = synthetic_originals(out, args.corpus, args.originals, args.babble_talkers, args.seed,
                                             args.jobs)
    pairs = minimal_pairs(out, args.pairs_corpus, args.pairs, args.seed)
    human = human_originals(out)
    originals = synthetic + [{"id": p["id"], "source": "pair", "lang": p["lang"], "path": p["path_a"],
                              "text": p["text_a"]} for p in pairs] + human
    negatives = [{"id": f"{p['id']}_b", "original": p["id"], "kind": p["kind"], "source": "pair",
                  "path": p["path_b"]} for p in pairs] + word_edits(out, human, args.seed)

    jobs, copies = [], []
    families = [f for f in args.families.split(",") if f]
    for family in families:
        for setting, steps in FAMILIES[family].items():
            for item, positive in [(o, True) for o in originals] + [(n, False) for n in negatives]:
                ext = output_ext(steps)
                dst = out / "copies" / family / setting / f"{item['id']}.{ext}"
                jobs.append({"src": item["path"], "dst": str(dst), "steps": [list(s) if isinstance(s, tuple) else s
                                                                            for s in steps],
                             "seed": args.seed, "name": item["id"],
                             "talkers": talkers if any(s[0] == "noise" and s[1] == "babble" for s in steps) else []})
                copies.append({"id": item["id"], "original": item["id"] if positive else item["original"],
                               "family": family, "setting": setting, "positive": positive,
                               "source": item["source"], "kind": "copy" if positive else item["kind"],
                               "path": str(dst)})
    failed = run_jobs(jobs, out, args.jobs, "channels")
    prune(out, families, {j["dst"] for j in jobs})
    copies = [c for c in copies if c["path"] not in failed]

    def rel(path: str) -> str:
        p = Path(path)
        return str(p.relative_to(out)) if p.is_relative_to(out) else str(p)

    manifest = {
        "seed": args.seed,
        "families": {f: list(FAMILIES[f]) for f in families},
        "outside_targets": sorted(OUTSIDE_TARGETS),
        "babble_talkers": [rel(t) for t in talkers],
        "originals": [{**o, "path": rel(o["path"])} for o in originals],
        "negatives": [{**n, "path": rel(n["path"])} for n in negatives],
        "copies": [{**c, "path": rel(c["path"])} for c in copies],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    counts = {s: sum(o["source"] == s for o in originals) for s in ("synthetic", "pair", "human")}
    print(f"{len(originals)} originals ({counts}), {len(negatives)} negatives, {len(copies)} channel files "
          f"({len(failed)} failed) in {time.monotonic() - started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
