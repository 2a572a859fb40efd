"""The language identifier (service/engines/language_id.py): Whisper base, assembled from its two
wheels, names real Mandarin and English recordings from their first seconds of speech, and hears
nothing to identify in a tone."""

from __future__ import annotations

import numpy as np
import pytest

from earmark.fingerprint.decode import decode_audio
from earmark.service.engines.language_id import BASE_SHA256, assemble_base_model, shared_identifier
from tests.audio_tools import fixture_bytes


@pytest.fixture(scope="module")
def identifier():
    return shared_identifier(window_s=3.0)


@pytest.mark.parametrize(("fixture", "language"), [("zh_asr_example.wav", "zh"), ("zh_mid.wav", "zh"),
                                                   ("zh_aishell_BAC009S0724W0121.flac", "zh"),
                                                   ("zh_aishell_BAC009S0764W0122.flac", "zh"),
                                                   ("librivox_0930.flac", "en")])
def test_real_recordings_are_named_by_their_language(identifier, fixture, language):
    heard = identifier.identify(decode_audio(fixture_bytes(fixture), 60).pcm_16k)
    assert heard is not None and heard.language == language and heard.probability > 0.9
    assert 0 < heard.speech_s <= 3.0


def test_a_tone_has_no_speech_to_identify(identifier):
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000)).astype(np.float32)
    assert identifier.identify(tone) is None


def test_the_model_is_assembled_once_and_checked(identifier):
    directory = assemble_base_model()
    assert directory.name.endswith(BASE_SHA256["model.bin"][:16])
    assert (directory / "model.bin").stat().st_size == 2 * 72608766


def test_a_shared_identifier_is_warmed_once_for_every_app_of_the_process(identifier):
    identifier.warm_up()  # whichever app or test came first, it is warm now
    assert identifier.warm_up() is False
    assert shared_identifier(window_s=3.0) is identifier and identifier.warm_up() is False
