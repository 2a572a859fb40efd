"""service/engines/pocketsphinx_engine.py, the real engine on real speech: it hears a LibriVox
reading and times its words inside the audio, in order, without the decoder's marks."""

from __future__ import annotations

from earmark.fingerprint.decode import decode_audio
from earmark.service.engines.base import RecognitionOptions
from earmark.service.engines.pocketsphinx_engine import PocketSphinxEngine
from tests.audio_tools import fixture_bytes


def test_words_are_heard_and_timed_inside_the_audio(engine: PocketSphinxEngine):
    # "he might even have been made amiable himself" (tests/fixtures/README.md)
    pcm = decode_audio(fixture_bytes("librivox_0930.flac"), 60.0).pcm_16k
    duration_s = len(pcm) / 16000
    transcript = engine.transcribe(pcm, engine.resolve(RecognitionOptions()))
    assert transcript.language == "en" and len({"might", "even", "made", "himself"} & set(transcript.text.split())) >= 2
    (segment,) = transcript.segments
    assert " ".join(word.word for word in segment.words) == transcript.text  # no <s>, <sil> or "(2)" left
    starts = [word.start for word in segment.words]
    assert starts == sorted(starts) and 0.0 <= segment.start < segment.end <= duration_s + 0.01
    assert all(word.start < word.end for word in segment.words)
