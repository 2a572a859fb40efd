"""The FunASR engine, through the real funasr.AutoModel, on tiny random-weight models built here.

Needs the optional extra (torch and funasr), so it is skipped where they are not installed; CI
installs it (.ci/run), so there these tests always run. The last tests drive the service itself
through its HTTP API with this engine.
Nothing is downloaded: the models are built by tests/funasr_tiny_model.py into a temp directory.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

# CI installs the extra (.ci/run) and sets EARMARK_REQUIRE_FUNASR=1: there a missing funasr fails
# the run instead of skipping these tests unseen.
if os.environ.get("EARMARK_REQUIRE_FUNASR") == "1":
    import funasr  # noqa: F401
    import torch  # noqa: F401
SKIP_REASON = "the funasr extra is not installed: pip install torch==2.13.0 'earmark[funasr]' (CI installs it: .ci/run)"
pytest.importorskip("funasr", reason=SKIP_REASON)
pytest.importorskip("torch", reason=SKIP_REASON)

from earmark.service.engines.base import RecognitionOptions, Transcript  # noqa: E402
from earmark.service.engines.errors import EngineOptionError, EngineUnavailable  # noqa: E402
from earmark.service.engines.funasr_engine import (  # noqa: E402
    FunASREngine,
    clean_text,
    join_texts,
    normalize_text,
    split_for_decoding,
)
from earmark.service.engines.funasr_models import locate_model_dir  # noqa: E402
try:  # tests/ is on sys.path under pytest's default import mode; a package if it gains __init__
    from funasr_tiny_model import build_tiny_paraformer, build_tiny_sensevoice, build_tiny_vad, parameter_count
except ImportError:  # pragma: no cover
    from tests.funasr_tiny_model import build_tiny_paraformer, build_tiny_sensevoice, build_tiny_vad, parameter_count

FIXTURES = Path(__file__).parent / "fixtures"


def _speech_pcm() -> np.ndarray:
    """Real speech from tests/fixtures when there is a 16-bit WAV, else 2 s of tone and noise."""
    for path in sorted(FIXTURES.glob("*.wav")):
        try:
            with wave.open(str(path)) as handle:
                if handle.getsampwidth() != 2:
                    continue
                rate, channels = handle.getframerate(), handle.getnchannels()
                samples = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
        except (wave.Error, EOFError):
            continue
        pcm = samples.reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768.0
        if rate != 16000:
            import soxr

            pcm = soxr.resample(pcm, rate, 16000).astype(np.float32)
        return pcm[: 16000 * 8]
    rng = np.random.default_rng(7)
    t = np.arange(2 * 16000) / 16000.0
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (tone + 0.03 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    return _speech_pcm()


@pytest.fixture(scope="module")
def paraformer_dir(tmp_path_factory) -> Path:
    return build_tiny_paraformer(tmp_path_factory.mktemp("models") / "tiny-paraformer-zh")


@pytest.fixture(scope="module")
def paraformer(paraformer_dir) -> FunASREngine:
    engine = FunASREngine(str(paraformer_dir), device="cpu")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def seaco(tmp_path_factory) -> FunASREngine:
    engine = FunASREngine(str(build_tiny_paraformer(tmp_path_factory.mktemp("models") / "tiny-seaco", seaco=True)))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def sensevoice(tmp_path_factory) -> FunASREngine:
    engine = FunASREngine(str(build_tiny_sensevoice(tmp_path_factory.mktemp("models") / "SenseVoiceSmall")))
    yield engine
    engine.close()


def test_tiny_model_is_tiny(paraformer_dir):
    assert 50_000 < parameter_count(paraformer_dir) < 150_000


def test_paraformer_loads_through_automodel_and_states_its_capabilities(paraformer):
    assert paraformer.name == "funasr"
    assert paraformer.model_id == "tiny-paraformer-zh"
    assert len(paraformer.revision) == 12
    caps = paraformer.capabilities
    assert caps.languages == ("zh",) and caps.default_language == "zh"
    assert caps.itn == (False,) and not caps.hotwords and not caps.prompt
    assert caps.extra["model_class"] == "Paraformer"
    assert paraformer.recommended_workers == 1


def test_paraformer_transcribes_speech_pcm(paraformer, pcm):
    profile = paraformer.resolve(RecognitionOptions())
    transcript = paraformer.transcribe(pcm, profile)
    assert isinstance(transcript, Transcript)
    assert isinstance(transcript.text, str) and transcript.text  # random weights: nonsense, but text
    assert transcript.normalized_text == normalize_text(transcript.text)
    assert transcript.language == "zh"
    # Deterministic: the same audio and profile give the same transcript.
    assert paraformer.transcribe(pcm, profile) == transcript


def test_too_short_audio_is_an_empty_transcript(paraformer):
    transcript = paraformer.transcribe(np.zeros(100, dtype=np.float32), paraformer.resolve(RecognitionOptions()))
    assert transcript.text == ""


def test_long_audio_is_decoded_in_pieces_cut_at_quiet_points(paraformer, pcm):
    rng = np.random.default_rng(3)
    loud = lambda seconds: (0.3 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)  # noqa: E731
    quiet = np.zeros(8000, dtype=np.float32)
    long_pcm = np.concatenate([loud(27.0), quiet, loud(27.0), quiet, loud(10.0)])
    pieces = split_for_decoding(long_pcm)
    assert len(pieces) == 3 and all(piece.size <= 30 * 16000 for piece in pieces)
    assert np.array_equal(np.concatenate(pieces), long_pcm)
    assert np.abs(pieces[1][:800]).max() == 0.0  # the cut fell in the silence
    transcript = paraformer.transcribe(np.tile(pcm, 16), paraformer.resolve(RecognitionOptions()))
    assert isinstance(transcript.text, str) and transcript.text
    assert join_texts(["你好", "世界", "hello", "", "world"]) == "你好世界 hello world"


def test_vad_model_segments_the_audio_and_is_part_of_the_revision(tmp_path, paraformer, paraformer_dir, pcm):
    engine = FunASREngine(str(paraformer_dir), vad_model=str(build_tiny_vad(tmp_path / "fsmn-vad")))
    try:
        assert engine.capabilities.extra["vad_model"] == "fsmn-vad"
        assert engine.revision != paraformer.revision  # a VAD changes transcripts, so the profile
        transcript = engine.transcribe(np.tile(pcm, 3), engine.resolve(RecognitionOptions()))
        assert isinstance(transcript.text, str)
    finally:
        engine.close()


def test_concurrent_calls_are_safe(paraformer, pcm):
    profile = paraformer.resolve(RecognitionOptions())
    expected = paraformer.transcribe(pcm, profile)
    results, errors = [], []

    def work():
        try:
            results.append(paraformer.transcribe(pcm, profile))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == [expected] * 4


def test_profile_resolution_refuses_what_paraformer_cannot_do(paraformer):
    profile = paraformer.resolve(RecognitionOptions(language="Mandarin"))
    assert (profile.engine, profile.model, profile.revision) == ("funasr", "tiny-paraformer-zh", paraformer.revision)
    assert profile.language == "zh" and profile.use_itn is False
    with pytest.raises(EngineOptionError, match=r"it supports: zh"):
        paraformer.resolve(RecognitionOptions(language="en"))
    with pytest.raises(EngineOptionError, match="use_itn"):
        paraformer.resolve(RecognitionOptions(use_itn=True))
    with pytest.raises(EngineOptionError, match="hotwords"):
        paraformer.resolve(RecognitionOptions(hotwords=("earmark",)))
    with pytest.raises(EngineOptionError, match="prompt"):
        paraformer.resolve(RecognitionOptions(prompt="a meeting"))


def test_seaco_paraformer_takes_hotwords(seaco, pcm):
    assert seaco.capabilities.hotwords
    plain = seaco.transcribe(pcm, seaco.resolve(RecognitionOptions()))
    biased_profile = seaco.resolve(RecognitionOptions(hotwords=("abc", "的是")))
    assert biased_profile.hotwords == ("abc", "的是")
    biased = seaco.transcribe(pcm, biased_profile)
    assert isinstance(biased.text, str)
    # The hotwords of one call do not stay on the model for the next.
    assert seaco.transcribe(pcm, seaco.resolve(RecognitionOptions())) == plain
    with pytest.raises(EngineOptionError, match="whitespace"):
        seaco.resolve(RecognitionOptions(hotwords=("New York",)))
    with pytest.raises(EngineOptionError, match="URL or file"):
        seaco.resolve(RecognitionOptions(hotwords=("/etc/words.txt",)))


def test_sensevoice_languages_itn_and_tags(sensevoice, pcm):
    caps = sensevoice.capabilities
    assert caps.languages == ("zh", "en", "yue", "ja", "ko") and caps.default_language == "auto"
    assert set(caps.itn) == {True, False} and not caps.hotwords
    assert sensevoice.model_id == "SenseVoiceSmall"
    for options in (RecognitionOptions(), RecognitionOptions(language="en", use_itn=False), RecognitionOptions(language="yue")):
        transcript = sensevoice.transcribe(pcm, sensevoice.resolve(options))
        assert isinstance(transcript.text, str) and "<|" not in transcript.text
    with pytest.raises(EngineOptionError, match=r"it supports: zh, en, yue, ja, ko"):
        sensevoice.resolve(RecognitionOptions(language="fr"))
    with pytest.raises(EngineOptionError, match="hotwords"):
        sensevoice.resolve(RecognitionOptions(hotwords=("x",)))


def test_sensevoice_language_tag_becomes_the_transcript_language(tmp_path, pcm):
    engine = FunASREngine(str(build_tiny_sensevoice(tmp_path / "sv-ja", favour="<|ja|>")))
    try:
        transcript = engine.transcribe(pcm, engine.resolve(RecognitionOptions()))
        assert transcript.text == "" and transcript.language == "ja"
        # Asked for a language, the answer is that language.
        assert engine.transcribe(pcm, engine.resolve(RecognitionOptions(language="ko"))).language == "ko"
    finally:
        engine.close()


def test_text_cleaning():
    raw = "<|en|><|NEUTRAL|><|Speech|><|withitn|>Hello, World! It's 42."
    assert clean_text(raw) == "Hello, World! It's 42."
    assert normalize_text(clean_text(raw)) == "hello world it s 42"
    assert clean_text("<|zh|><|HAPPY|><|BGM|><|woitn|>你好 世界") == "你好 世界"


def test_revision_follows_the_weights_not_the_path(tmp_path, paraformer_dir):
    copy = tmp_path / "copy" / paraformer_dir.name
    shutil.copytree(paraformer_dir, copy)
    assert locate_model_dir(str(copy)).digest_parts() == locate_model_dir(str(paraformer_dir)).digest_parts()
    other = build_tiny_paraformer(tmp_path / "other", seed=1)
    assert locate_model_dir(str(other)).digest_parts() != locate_model_dir(str(paraformer_dir)).digest_parts()


def test_model_id_found_in_the_local_hub_cache(tmp_path, monkeypatch, paraformer_dir, pcm):
    cache = tmp_path / "modelscope"
    shutil.copytree(paraformer_dir, cache / "models" / "iic" / "tiny-paraformer-zh")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(cache))
    engine = FunASREngine("iic/tiny-paraformer-zh")
    try:
        assert engine.model_id == "tiny-paraformer-zh"
        assert isinstance(engine.transcribe(pcm, engine.resolve(RecognitionOptions())).text, str)
    finally:
        engine.close()


def _unavailable(model: str, **kwargs) -> str:
    started = time.perf_counter()
    with pytest.raises(EngineUnavailable) as caught:
        FunASREngine(model, **kwargs)
    assert time.perf_counter() - started < 5.0  # fails fast: nothing waits on a network
    return str(caught.value)


def test_missing_model_dir_is_unavailable_fast_with_what_to_do(tmp_path):
    message = _unavailable(str(tmp_path / "SenseVoiceSmall"))
    assert str(tmp_path / "SenseVoiceSmall") in message
    assert "--funasr-model" in message and "EARMARK_FUNASR_MODEL" in message
    assert "--funasr-model" in _unavailable("")


def test_unknown_model_id_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    message = _unavailable("iic/SenseVoiceSmall")
    assert "no cached download" in message and "nothing is downloaded" in message


def test_incomplete_model_dirs_name_the_missing_file(tmp_path, paraformer_dir):
    no_weights = tmp_path / "no-weights"
    shutil.copytree(paraformer_dir, no_weights)
    (no_weights / "model.pt").unlink()
    assert "model.pt" in _unavailable(str(no_weights))

    no_tokens = tmp_path / "no-tokens"
    shutil.copytree(paraformer_dir, no_tokens)
    (no_tokens / "tokens.txt").unlink()
    assert "tokens.txt" in _unavailable(str(no_tokens))

    no_config = tmp_path / "no-config"
    shutil.copytree(paraformer_dir, no_config)
    (no_config / "config.yaml").unlink()
    assert "config.yaml" in _unavailable(str(no_config))

    bad_config = tmp_path / "bad-config"
    shutil.copytree(paraformer_dir, bad_config)
    (bad_config / "config.yaml").write_text("model: [unclosed\n", encoding="utf-8")
    assert "YAML" in _unavailable(str(bad_config))

    unknown_class = tmp_path / "unknown-class"
    shutil.copytree(paraformer_dir, unknown_class)
    config = (unknown_class / "config.yaml").read_text(encoding="utf-8")
    (unknown_class / "config.yaml").write_text(config.replace("model: Paraformer", "model: Whisper"), encoding="utf-8")
    assert "SenseVoiceSmall, Paraformer or Fun-ASR-Nano" in _unavailable(str(unknown_class))


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, paraformer_dir):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(paraformer_dir, corrupt)
    (corrupt / "model.pt").write_bytes(b"not a checkpoint")
    assert "could not load" in _unavailable(str(corrupt))

    mismatched = tmp_path / "mismatched"
    shutil.copytree(paraformer_dir, mismatched)
    config = (mismatched / "config.yaml").read_text(encoding="utf-8")
    (mismatched / "config.yaml").write_text(config.replace("output_size: 32", "output_size: 48"), encoding="utf-8")
    assert "could not load" in _unavailable(str(mismatched))


def test_weights_of_another_model_are_refused(tmp_path, paraformer_dir):
    # funasr alone would load this with warnings and keep every tensor at its random start.
    foreign = tmp_path / "foreign"
    shutil.copytree(paraformer_dir, foreign)
    shutil.copy(build_tiny_vad(tmp_path / "vad") / "model.pt", foreign / "model.pt")
    assert "do not belong to this config" in _unavailable(str(foreign))


def test_bad_device_is_refused(paraformer_dir):
    assert "device" in _unavailable(str(paraformer_dir), device="gpu")


# End to end through the HTTP API: the service with the FunASR engine on a real store.


@pytest.mark.any_store
def test_recognize_with_the_funasr_engine_a_miss_then_an_exact_hit(settings, paraformer, redis_client):
    from starlette.testclient import TestClient

    from earmark.service.api.app import create_app
    from tests.audio_tools import fixture_bytes
    from tests.http_helpers import recognize

    mandarin = fixture_bytes("zh_asr_example.wav")  # identified as Mandarin, which the engine serves
    with TestClient(create_app(settings, engine=paraformer)) as client:
        first = recognize(client, mandarin)
        assert first["cache"]["tier"] == "miss" and first["result"]["language"] == "zh"
        assert first["result"]["text"]  # random weights: nonsense, but text
        again = recognize(client, mandarin)
        assert (again["cache"]["tier"], again["cache"]["entry"]) == ("exact", first["cache"]["entry"])
        assert again["result"]["text"] == first["result"]["text"]
        entry = client.get(f"/entries/{first['cache']['entry']}").json()["entry"]
        assert entry["engine"] == "funasr" and entry["result"]["text"] == first["result"]["text"]


@pytest.mark.any_store
def test_a_funasr_engine_that_cannot_run_is_a_503_and_nothing_is_cached(settings, paraformer_dir, redis_client):
    from starlette.testclient import TestClient

    from earmark.service.api.app import create_app
    from tests.audio_tools import fixture_bytes
    from tests.http_helpers import post
    from tests.test_app import keys_under

    engine = FunASREngine(str(paraformer_dir))
    with TestClient(create_app(settings, engine=engine)) as client:
        engine.close()  # its model is gone: every transcription fails
        answer = post(client, fixture_bytes("zh_asr_example.wav"))
        assert answer.status_code == 503 and "closed" in answer.json()["msg"]
        assert keys_under(redis_client, settings.key_prefix) == set()
