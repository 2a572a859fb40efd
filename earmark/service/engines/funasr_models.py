"""Local FunASR model directories: finding them, checking them, and fingerprinting them.

A model is named by a directory path, or by a hub id whose download is already in the local
ModelScope or Hugging Face cache; `locate_model_dir` finds it without touching the network and
checks, before torch is imported, that config.yaml, the weights and every file the config names
are there, so a half-copied directory is refused at once, saying what to do. The result, a
`ModelDir`, pins each of those files to an absolute path for `AutoModel` and fingerprints their
contents cheaply for the engine's revision. `FAMILIES` maps config.yaml's `model` class to what
that family of models can honour.

This is kept apart from the engine (funasr_engine.py), which loads and runs the model, because it
needs neither funasr nor torch: PyYAML is imported only when a directory is read, and funasr
only to learn its short model aliases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from earmark.service.engines.errors import EngineUnavailable

log = logging.getLogger(__name__)

ASR_OPTION = "--funasr-model / EARMARK_FUNASR_MODEL"
INSTALL_HINT = "the funasr engine needs: pip install torch==2.13.0 'earmark[funasr]'"
WEIGHTS_HINT = (
    "download the model on a machine with access to its hub (for example "
    "`modelscope download --model iic/SenseVoiceSmall --local_dir /models/SenseVoiceSmall`), copy "
    "the directory here, and point earmark at it with --funasr-model /models/SenseVoiceSmall "
    "or EARMARK_FUNASR_MODEL=/models/SenseVoiceSmall"
)

# Hub clients must not reach out: the only loads here are of local paths, and a relative name
# that slipped through (say a Fun-ASR-Nano LLM folder missing from the directory) must fail at
# once rather than be fetched. Set before funasr (and so huggingface_hub) is first imported.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

# Config keys whose values name files or folders inside the model directory.
_FILE_KEYS = ("token_list", "bpemodel", "seg_dict", "cmvn_file", "init_param_path")
# Names funasr itself looks for in a model directory when the config's own path is stale.
_FALLBACK_NAMES = {"token_list": ("tokens.txt", "tokens.json"), "bpemodel": ("bpe.model",), "cmvn_file": ("am.mvn",)}

# Files funasr picks up from a model directory by name even when config.yaml does not name them.
_AUTODETECTED = ("tokens.txt", "tokens.json", "seg_dict", "bpe.model", "am.mvn", "jieba_usr_dict")

_DIGEST_EDGE_BYTES = 1 << 20


@dataclass(frozen=True)
class Family:
    """What one family of FunASR models can honour, chosen conservatively."""

    name: str
    languages: tuple[str, ...]
    default_language: str
    itn: tuple[bool, ...]
    default_itn: bool
    hotwords: bool


# config.yaml `model:` class -> family. SenseVoiceSmall: five languages with language ID, ITN
# switchable (`use_itn`), no biasing. Paraformer: one language (from the model's name: the
# paraformer-en checkpoints say "en"), no ITN; only the SeACo and contextual variants take
# hotwords. Fun-ASR-Nano: Chinese, English and Japanese (the MLT checkpoint knows more, but
# these are the ones its prompt is documented for), ITN switchable, hotwords in its prompt.
FAMILIES = {
    "SenseVoiceSmall": Family("sensevoice", ("zh", "en", "yue", "ja", "ko"), "auto", (True, False), True, False),
    "Paraformer": Family("paraformer", ("zh",), "zh", (False,), False, False),
    "BiCifParaformer": Family("paraformer", ("zh",), "zh", (False,), False, False),
    "SeacoParaformer": Family("paraformer", ("zh",), "zh", (False,), False, True),
    "ContextualParaformer": Family("paraformer", ("zh",), "zh", (False,), False, True),
    "FunASRNano": Family("fun-asr-nano", ("zh", "en", "ja"), "auto", (True, False), True, True),
}


@dataclass(frozen=True)
class ModelDir:
    """A validated local FunASR model directory and what AutoModel should be told about it."""

    path: Path
    model_id: str
    model_class: str
    config: dict
    # Config entries (section, key) -> absolute path, passed to AutoModel as overrides so that
    # loading never depends on the working directory or on paths from the training machine.
    files: dict
    weights: Path

    def overrides(self) -> dict:
        """AutoModel keyword arguments that pin every file to this directory."""
        kwargs: dict = {"init_param": str(self.weights)}
        for (section, key), path in self.files.items():
            if section is None:
                kwargs[key] = str(path)
            else:
                kwargs.setdefault(section, {})[key] = str(path)
        return kwargs

    def digest_parts(self) -> list[str]:
        """Content fingerprints of everything in the directory that shapes a transcript."""
        parts = [f"class={self.model_class}", f"weights={_file_fingerprint(self.weights)}"]
        for name in ("config.yaml", "configuration.json", *_AUTODETECTED):
            if (self.path / name).is_file():
                parts.append(f"{name}={_file_fingerprint(self.path / name)}")
        for (section, key), path in sorted(self.files.items(), key=lambda item: str(item[0])):
            parts.append(f"{section}.{key}={_path_fingerprint(path)}")
        return parts


def locate_model_dir(model: str, *, option: str = ASR_OPTION) -> ModelDir:
    """Find and check a local FunASR model directory; raise `EngineUnavailable` saying what to do.

    `model` is a directory path, or a hub model id (or funasr alias such as `paraformer-zh`)
    whose download is already in the local ModelScope or Hugging Face cache. Nothing is fetched.
    `option` names the setting the directory came from, for the messages.
    """
    model = (model or "").strip()
    if option != ASR_OPTION:  # a VAD or punctuation model: the hint names that option
        hint = f"download that model on a machine with access to its hub, copy the directory here and pass it as {option}"
    else:
        hint = WEIGHTS_HINT
    if not model:
        raise EngineUnavailable(f"the funasr engine needs a local model directory and none was given; {hint}")
    path = Path(model).expanduser()
    if not path.is_dir():
        if path.exists():
            raise EngineUnavailable(f"{option}: {model} is a file, not a model directory; {hint}")
        cached = None if _looks_like_path(model) else _cached_model_dir(model)
        if cached is None:
            raise EngineUnavailable(
                f"{option}: no FunASR model directory at {model}"
                + ("" if _looks_like_path(model) else " and no cached download of a model with that id")
                + f"; nothing is downloaded at run time: {hint}"
            )
        path = cached
    path = path.resolve()
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise EngineUnavailable(f"{option}: {path} has no config.yaml, so it is not a FunASR model directory; {hint}")
    try:
        import yaml  # PyYAML: a dependency of funasr
    except ImportError as exc:
        raise EngineUnavailable(INSTALL_HINT) from exc
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineUnavailable(f"{option}: cannot read {config_path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise EngineUnavailable(f"{option}: {config_path} is not valid YAML: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise EngineUnavailable(f"{option}: {config_path} does not name a model class (its `model:` key); is it a FunASR config?")
    metas = _file_path_metas(path)
    weights = path / (metas.get((None, "init_param")) or "model.pt")
    if not weights.is_file() or weights.stat().st_size == 0:
        raise EngineUnavailable(f"{option}: {path} has no weights file {weights.name} (config.yaml is there); {hint}")
    files = {}
    for section, key, value in _file_entries(config):
        found = _find_file(path, section, key, value, metas)
        if found is None:
            where = f"{section}.{key}" if section else key
            raise EngineUnavailable(
                f"{option}: {path} lacks {value!r}, which config.yaml names as {where}; copy the whole "
                f"model directory, not only model.pt and config.yaml. {hint}"
            )
        files[(section, key)] = found
    if config.get("tokenizer") == "CharTokenizer" and ("tokenizer_conf", "token_list") not in files:
        if not any((path / name).is_file() for name in _FALLBACK_NAMES["token_list"]):
            raise EngineUnavailable(
                f"{option}: {path} has no token list (tokens.json or tokens.txt); copy the whole model "
                f"directory, not only model.pt and config.yaml. {hint}"
            )
    if config.get("frontend") == "WavFrontend" and ("frontend_conf", "cmvn_file") not in files and not (path / "am.mvn").is_file():
        log.warning("%s has no am.mvn: features will not be normalised (real FunASR downloads ship one)", path)
    return ModelDir(
        path=path,
        model_id=_directory_model_id(path),
        model_class=config["model"],
        config=config,
        files=files,
        weights=weights,
    )


def go_offline() -> None:
    """Put the hub clients in offline mode (see `_OFFLINE_ENV`) before funasr is imported."""
    for key, value in _OFFLINE_ENV.items():
        os.environ[key] = value


def _file_entries(config: dict):
    """(section, key, value) for each config entry that names a file, top level or one deep."""
    for key in _FILE_KEYS:
        if isinstance(config.get(key), str):
            yield None, key, config[key]
    for section, value in config.items():
        if isinstance(value, dict):
            for key in _FILE_KEYS:
                if isinstance(value.get(key), str) and value[key].strip():
                    yield section, key, value[key]


def _file_path_metas(path: Path) -> dict:
    """configuration.json's `file_path_metas` flattened to (section, key) -> relative name."""
    try:
        metas = json.loads((path / "configuration.json").read_text(encoding="utf-8")).get("file_path_metas", {})
    except (OSError, ValueError, AttributeError):
        return {}
    flat = {}
    for key, value in (metas or {}).items():
        if isinstance(value, str):
            flat[(None, key)] = value
        elif isinstance(value, dict):
            flat.update({(key, k): v for k, v in value.items() if isinstance(v, str)})
    return flat


def _find_file(path: Path, section, key: str, value: str, metas: dict) -> Path | None:
    """Where `value` is: the directory's own copy first, as funasr itself prefers."""
    candidates = []
    if (section, key) in metas:
        candidates.append(path / metas[(section, key)])
    candidates += [path / value, path / Path(value).name]
    candidates += [path / name for name in _FALLBACK_NAMES.get(key, ())]
    candidates.append(Path(value).expanduser())
    for candidate in candidates:
        if candidate.is_absolute() and candidate.exists():
            return candidate.resolve()
    return None


def _looks_like_path(model: str) -> bool:
    """A filesystem path rather than a hub id such as `iic/SenseVoiceSmall`."""
    return model.startswith(("/", ".", "~")) or model.endswith("/") or "\\" in model


def _cached_model_dir(model_id: str) -> Path | None:
    """A complete download of `model_id` in the local ModelScope or Hugging Face cache, if any."""
    names = [model_id]
    aliases = _hub_aliases()
    names += [aliases[kind][model_id] for kind in aliases if model_id in aliases[kind]]
    ms_root = Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope" / "hub").expanduser()
    hf_root = Path(
        os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    ).expanduser()
    for name in dict.fromkeys(names):
        for candidate in (ms_root / "models" / name, ms_root / name, ms_root / "models" / name.replace(".", "___")):
            if (candidate / "config.yaml").is_file():
                return candidate
        repo = hf_root / ("models--" + name.replace("/", "--"))
        snapshots = repo / "snapshots"
        ref = repo / "refs" / "main"
        if ref.is_file() and (snapshots / ref.read_text().strip() / "config.yaml").is_file():
            return snapshots / ref.read_text().strip()
        if snapshots.is_dir():
            found = sorted((s for s in snapshots.iterdir() if (s / "config.yaml").is_file()), key=lambda s: s.stat().st_mtime)
            if found:
                return found[-1]
    return None


def _hub_aliases() -> dict:
    """funasr's short names (paraformer-zh, fsmn-vad, ...) for hub ids; empty without funasr."""
    go_offline()
    try:
        from funasr.download.name_maps_from_hub import name_maps_hf, name_maps_ms
    except Exception:
        return {}
    return {"ms": name_maps_ms, "hf": name_maps_hf}


def _directory_model_id(path: Path) -> str:
    """The model's name: the folder's name, or the repository's for a Hugging Face snapshot.

    The same weights get the same name whether given as a path or as a cached hub id
    (iic/SenseVoiceSmall and /models/SenseVoiceSmall are both "SenseVoiceSmall").
    """
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name


def paraformer_language(asr: ModelDir) -> str:
    """Paraformer checkpoints are one language each; the English ones say so in their name."""
    names = f"{asr.model_id} {asr.path.name}".lower()
    return "en" if re.search(r"(^|[-_ /])en([-_ ]|$)", names) else "zh"


def _file_fingerprint(path: Path) -> str:
    """Size plus a hash of the first and last MiB (the whole file when it is smaller).

    Cheap for multi-GB weights, and it catches changed weights: torch.save writes a zip whose
    central directory, at the end of the file, holds a CRC-32 of every stored tensor.
    """
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        if size <= 2 * _DIGEST_EDGE_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(_DIGEST_EDGE_BYTES))
            handle.seek(size - _DIGEST_EDGE_BYTES)
            digest.update(handle.read(_DIGEST_EDGE_BYTES))
    return f"{size}:{digest.hexdigest()}"


def _path_fingerprint(path: Path) -> str:
    if path.is_file():
        return _file_fingerprint(path)
    return ",".join(
        f"{child.relative_to(path)}={_file_fingerprint(child)}" for child in sorted(path.rglob("*")) if child.is_file()
    )
