"""The FunASR engine: SenseVoiceSmall, Paraformer or Fun-ASR-Nano from a local model directory.

Weights are never downloaded here. `model` must name a local directory (config.yaml, model.pt
and the token files the config names), or a model id that is already in the local ModelScope or
Hugging Face cache; anything else is refused at once, saying what to do (a missing directory
before torch is even imported).
funasr's `AutoModel` is only ever given directory paths, and the hub clients are put in offline
mode, so a missing file fails fast instead of waiting on the network. Finding and checking the
directories, and fingerprinting their files, is in funasr_models.py.

What the engine can honour depends on the model family, read from config.yaml's `model` class
(see `FAMILIES`): an option the family cannot honour is refused, never silently ignored.

One `AutoModel` is shared by all worker threads and every `generate()` holds a lock: AutoModel
merges each call's options into its own shared kwargs, and the hotword-capable Paraformers keep
the current hotword list on the model object, so two concurrent calls could decode under each
other's options. Torch already spreads one call over the cores (intra-op threads), so one
worker per engine is the right pool size (`recommended_workers`); a model per thread would
multiply memory (about 1 GB for SenseVoiceSmall, 2 GB or more for Fun-ASR-Nano) for no gain.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import logging
import re
import threading
import unicodedata

import numpy as np

from earmark.errors import quoted
from earmark.service.engines.base import (
    available_cores,
    installed_version,
    Capabilities,
    Engine,
    RecognitionOptions,
    Transcript,
)
from earmark.service.engines.errors import EngineFailure, EngineOptionError, EngineUnavailable
from earmark.service.engines.funasr_models import (
    ASR_OPTION,
    FAMILIES,
    INSTALL_HINT,
    Family,
    ModelDir,
    go_offline,
    locate_model_dir,
    paraformer_language,
)
from earmark.service.pipeline.profile import Profile

log = logging.getLogger(__name__)

_TAG = re.compile(r"<\|[^|<>]*\|>")
_SENSEVOICE_LANGUAGE_TAGS = {"zh", "en", "yue", "ja", "ko"}
# Fun-ASR-Nano is prompted in Chinese: "语音转写成中文" = "transcribe into Chinese".
_NANO_LANGUAGE_NAMES = {"zh": "中文", "en": "英文", "ja": "日文"}
_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu|npu)(:\d+)?)$")
# Without a VAD model, audio longer than this is cut near each mark at its quietest 100 ms:
# these models attend over the whole input, so an hour in one piece would not fit in memory.
_CHUNK_SAMPLES = 30 * 16000
_CUT_SEARCH_SAMPLES = 5 * 16000
_MIN_SAMPLES = 400  # one 25 ms fbank frame


class FunASREngine(Engine):
    """Recognition with a FunASR model loaded from a local directory."""

    name = "funasr"

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        *,
        vad_model: str = "",
        punc_model: str = "",
        threads: int | None = None,
    ) -> None:
        """Validate the directories, then load them through `funasr.AutoModel`.

        `model`: the ASR model directory (or an id already in the local hub cache). `vad_model`
        (an fsmn-vad directory) cuts long audio into utterances; `punc_model` (a ct-punc
        directory) adds punctuation to Paraformer output. `threads`: torch CPU threads (default:
        the cores this process may use). Raises `EngineUnavailable` saying what to do.
        """
        go_offline()
        if not _DEVICE.match(device or ""):
            raise EngineUnavailable(f"device {device!r} is not one torch knows; use cpu, cuda, cuda:N or mps")
        asr = locate_model_dir(model, option=ASR_OPTION)
        family = FAMILIES.get(asr.model_class)
        if family is None:
            raise EngineUnavailable(
                f"{asr.path / 'config.yaml'} names model class {asr.model_class!r}, which earmark's funasr "
                f"engine does not support; use a SenseVoiceSmall, Paraformer or Fun-ASR-Nano directory "
                f"(classes: {', '.join(FAMILIES)})"
            )
        if family.name == "paraformer":
            language = paraformer_language(asr)
            family = Family(family.name, (language,), language, family.itn, family.default_itn, family.hotwords)
        vad = locate_model_dir(vad_model, option="vad_model") if vad_model else None
        punc = locate_model_dir(punc_model, option="punc_model") if punc_model else None

        self.family = family
        self.model_id = asr.model_id
        self.device = device
        self.threads = max(1, threads or available_cores())
        # Calls are serialised (see the module docstring), so more workers only queue.
        self.recommended_workers = 1
        self._lock = threading.Lock()

        funasr, torch = _import_funasr()
        _check_device(torch, device)
        self._torch = torch
        vad_settings = {"max_single_segment_time": 30000}
        self._model = _load(funasr, asr, vad, punc, vad_settings, device=device, threads=self.threads)

        digest = hashlib.blake2b(digest_size=6)
        for part in [f"funasr={installed_version('funasr')}", *asr.digest_parts()]:
            digest.update(part.encode() + b"\n")
        for label, extra in (("vad", vad), ("punc", punc)):
            if extra is not None:
                digest.update(f"{label}:{extra.model_id}\n".encode())
                for part in extra.digest_parts():
                    digest.update(part.encode() + b"\n")
        if vad is not None:
            digest.update(json.dumps(vad_settings, sort_keys=True).encode())
        else:
            digest.update(f"chunk={_CHUNK_SAMPLES}/{_CUT_SEARCH_SAMPLES}".encode())
        self._has_vad = vad is not None
        self.revision = digest.hexdigest()
        self.capabilities = Capabilities(
            languages=family.languages,
            default_language=family.default_language,
            itn=family.itn,
            default_itn=family.default_itn,
            hotwords=family.hotwords,
            prompt=False,
            extra={
                "family": family.name,
                "model_class": asr.model_class,
                "model_dir": str(asr.path),
                "vad_model": vad.model_id if vad else "",
                "punc_model": punc.model_id if punc else "",
                "device": device,
            },
        )

    def resolve(self, options: RecognitionOptions, namespace: str = "") -> Profile:
        """The base checks, plus hotwords the family's decoder can take as given."""
        profile = super().resolve(options, namespace)
        for hotword in profile.hotwords:
            if not hotword.strip():
                raise EngineOptionError("hotwords must not be empty strings")
            if self.family.name == "paraformer":
                # Paraformer splits its hotword string on whitespace, and reads a string that
                # looks like a .txt path or an http URL as a file to open or fetch.
                if any(ch.isspace() for ch in hotword):
                    raise EngineOptionError(
                        f"hotword {quoted(hotword)} contains whitespace; engine 'funasr' with a Paraformer model "
                        f"takes each hotword as one word (send 'New' and 'York' separately)"
                    )
                if hotword.lower().startswith("http") or hotword.lower().endswith(".txt"):
                    raise EngineOptionError(f"hotword {quoted(hotword)} looks like a URL or file name; send words only")
            elif "\n" in hotword or "\r" in hotword:
                raise EngineOptionError(f"hotword {quoted(hotword)} contains a line break; send one word or phrase each")
        return profile

    def transcribe(self, pcm_16k: np.ndarray, profile: Profile) -> Transcript:
        """Run `generate()` on the PCM with the profile's options and clean the text."""
        pcm = np.ascontiguousarray(np.asarray(pcm_16k, dtype=np.float32).reshape(-1))
        pieces = [pcm] if self._has_vad else split_for_decoding(pcm)
        pieces = [piece for piece in pieces if piece.size >= _MIN_SAMPLES]
        options = self._generate_options(profile)
        raws = []
        with self._lock:
            model = self._model
            if model is None:
                raise EngineUnavailable("the funasr engine has been closed")
            for piece in pieces:
                try:
                    results = model.generate(input=piece, **options)
                except Exception as exc:
                    raise EngineFailure(f"funasr {self.model_id} failed: {type(exc).__name__}: {exc}") from exc
                raws += [str(result.get("text", "")) for result in results or [] if isinstance(result, dict)]
        text = join_texts([clean_text(raw) for raw in raws])
        language = self._language(" ".join(raws), text, profile)
        return Transcript(text=text, normalized_text=normalize_text(text), language=language)

    def close(self) -> None:
        """Drop the model and give its memory back."""
        with self._lock:
            self._model = None
        gc.collect()
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    def _generate_options(self, profile: Profile) -> dict:
        if self.family.name == "sensevoice":
            return {"language": profile.language, "use_itn": profile.use_itn}
        if self.family.name == "fun-asr-nano":
            return {
                "language": _NANO_LANGUAGE_NAMES.get(profile.language),
                "itn": profile.use_itn,
                "hotwords": list(profile.hotwords),
            }
        if self.family.hotwords:
            return {"hotword": " ".join(profile.hotwords) if profile.hotwords else None}
        return {}

    def _language(self, raw: str, text: str, profile: Profile) -> str:
        if profile.language != "auto":
            return profile.language
        for tag in _TAG.findall(raw):
            if tag[2:-2] in _SENSEVOICE_LANGUAGE_TAGS:
                return tag[2:-2]
        guess = _script_language(text)
        return guess if guess in self.capabilities.languages else "auto"


def split_for_decoding(pcm: np.ndarray) -> list[np.ndarray]:
    """Cut PCM longer than 30 s into pieces, each at the quietest 100 ms of its last 5 s."""
    pieces, start, hop = [], 0, 1600
    while pcm.size - start > _CHUNK_SAMPLES:
        low = start + _CHUNK_SAMPLES - _CUT_SEARCH_SAMPLES
        energy = np.square(pcm[low : low + _CUT_SEARCH_SAMPLES].reshape(-1, hop)).mean(axis=1)
        cut = low + int(np.argmin(energy)) * hop + hop // 2
        pieces.append(pcm[start:cut])
        start = cut
    pieces.append(pcm[start:])
    return pieces


def join_texts(texts: list[str]) -> str:
    """Join piece transcripts: a space between words, none between two Chinese or Japanese characters."""
    joined = ""
    for text in (t for t in texts if t):
        if joined and not (_is_cjk(joined[-1]) and _is_cjk(text[0])):
            joined += " "
        joined += text
    return joined


def _is_cjk(ch: str) -> bool:
    return 0x3040 <= ord(ch) <= 0x30FF or 0x3400 <= ord(ch) <= 0x9FFF


def clean_text(raw: str) -> str:
    """Drop SenseVoice's `<|language|><|emotion|><|event|><|itn|>` tags and tidy the spacing."""
    return re.sub(r"\s+", " ", _TAG.sub(" ", raw)).strip()


def normalize_text(text: str) -> str:
    """The words only, for comparing transcripts: case-folded, punctuation and symbols dropped."""
    kept = "".join(ch if unicodedata.category(ch)[0] in "LNM" else " " for ch in text.casefold())
    return re.sub(r"\s+", " ", kept).strip()


def _load(funasr, asr: ModelDir, vad: ModelDir | None, punc: ModelDir | None, vad_settings: dict, *, device: str, threads: int):
    """Build the AutoModel from directories only, with update checks and progress bars off."""
    kwargs = {
        "model": str(asr.path),
        **asr.overrides(),
        "device": device,
        "ncpu": threads,
        "disable_update": True,
        "disable_pbar": True,
        "disable_log": True,
        # A shape mismatch between model.pt and config.yaml must fail, not load random weights.
        "ignore_init_mismatch": False,
        # AutoModel calls logging.basicConfig(level=...): keep whatever level the service set.
        "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
    }
    if vad is not None:
        kwargs["vad_model"] = str(vad.path)
        kwargs["vad_kwargs"] = {**vad.overrides(), **vad_settings}
    if punc is not None:
        kwargs["punc_model"] = str(punc.path)
        kwargs["punc_kwargs"] = punc.overrides()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # funasr prints its version and key warnings
            model = funasr.AutoModel(**kwargs)
    except Exception as exc:
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise EngineUnavailable(
            f"could not load the FunASR model in {asr.path}: {type(exc).__name__}: {detail} "
            f"(check that model.pt, config.yaml and the token files come from the same download)"
        ) from exc
    finally:
        if printed.getvalue().strip():
            log.debug("funasr: %s", printed.getvalue().strip())
    _check_weights_loaded(model.model, asr)
    return model


def _check_weights_loaded(module, asr: ModelDir) -> None:
    """Refuse a model.pt that covers under half of the model: funasr would keep random weights."""
    try:
        import torch

        state = torch.load(asr.weights, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # an old pickle format: funasr loaded it; skip the cross-check
        log.debug("could not memory-map %s to cross-check its keys: %s", asr.weights, exc)
        return
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    stored = {key.removeprefix("module.") for key in state}
    wanted = list(module.state_dict())
    missing = [key for key in wanted if key not in stored]
    if wanted and len(missing) * 2 > len(wanted):
        raise EngineUnavailable(
            f"{asr.weights} holds only {len(wanted) - len(missing)} of the {len(wanted)} tensors that "
            f"{asr.model_class} from config.yaml needs (missing e.g. {missing[0]}): the weights do not belong to this config"
        )
    if missing:
        log.warning("%s lacks %d of %d tensors (e.g. %s); they keep their initial values", asr.weights, len(missing), len(wanted), missing[0])


def _import_funasr():
    go_offline()
    try:
        import torch
        import funasr
    except (ImportError, OSError) as exc:
        raise EngineUnavailable(INSTALL_HINT) from exc
    return funasr, torch


def _check_device(torch, device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineUnavailable(f"device {device!r} asked for, but torch sees no CUDA device; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise EngineUnavailable("device 'mps' asked for, but torch has no MPS backend here; use --device cpu")


def _script_language(text: str) -> str:
    """A language guess from the writing system, for models that do not report one."""
    counts = {"ja": 0, "ko": 0, "zh": 0, "en": 0}
    for ch in text:
        code = ord(ch)
        if 0x3040 <= code <= 0x30FF:
            counts["ja"] += 1
        elif 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF:
            counts["ko"] += 1
        elif 0x3400 <= code <= 0x9FFF:
            counts["zh"] += 1
        elif ch.isascii() and ch.isalpha():
            counts["en"] += 1
    if counts["ja"]:
        return "ja"
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else "auto"

