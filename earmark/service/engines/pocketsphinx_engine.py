"""The default engine: CMU PocketSphinx with the US English model its wheel ships.

It needs no download, so a fresh install transcribes for real on the first request. A
pocketsphinx `Decoder` must not be shared between threads, so each worker thread gets its own.
"""

from __future__ import annotations

import threading

import numpy as np

from earmark.service.engines.base import Capabilities, Engine, Segment, Transcript, Word, installed_version
from earmark.service.engines.errors import EngineFailure
from earmark.service.pipeline.profile import Profile


class PocketSphinxEngine(Engine):
    """US English recognition with pocketsphinx's bundled acoustic and language models."""

    name = "pocketsphinx"
    # No inverse text normalisation, hotword biasing or prompting: refuse them rather than
    # cache a transcript under options that did not shape it.
    capabilities = Capabilities(languages=("en",), default_language="en", itn=(False,), default_itn=False)

    def __init__(self) -> None:
        import pocketsphinx

        self._pocketsphinx = pocketsphinx
        self.model_id = "cmusphinx-en-us-5.2"
        self.revision = installed_version("pocketsphinx")
        self._local = threading.local()

    def _decoder(self):
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            decoder = self._pocketsphinx.Decoder(samprate=16000, loglevel="FATAL")
            self._local.decoder = decoder
        return decoder

    def worker_spec(self) -> tuple:
        """pocketsphinx holds the GIL while decoding, so it runs in worker processes."""
        return (PocketSphinxEngine, ())

    def transcribe(self, pcm_16k: np.ndarray, profile: Profile) -> Transcript:
        """Decode the whole utterance at once and return the best hypothesis."""
        pcm = np.round(np.clip(pcm_16k, -1.0, 1.0) * 32767.0).astype("<i2")
        decoder = self._decoder()
        try:
            decoder.start_utt()
            decoder.process_raw(pcm.tobytes(), full_utt=True)
            decoder.end_utt()
        except RuntimeError as exc:
            raise EngineFailure(f"pocketsphinx failed: {exc}") from exc
        hypothesis = decoder.hyp()
        text = hypothesis.hypstr.strip() if hypothesis is not None else ""
        words = _words(decoder) if text else ()
        segments = (Segment(start=words[0].start, end=words[-1].end, text=text, words=words),) if words else ()
        return Transcript(text=text, normalized_text=text, language=profile.language, segments=segments)


def _words(decoder) -> tuple[Word, ...]:
    """The hypothesis's words with their times (the decoder's frames, 100 a second), without
    sentence marks, silences and fillers, and without the alternate-pronunciation suffix "(2)"."""
    frames_per_s = float(decoder.config["frate"])
    words = []
    for seg in decoder.seg():
        if seg.word in ("<s>", "</s>", "<sil>") or seg.word.startswith(("[", "+")):
            continue
        words.append(Word(word=seg.word.split("(", 1)[0], start=seg.start_frame / frames_per_s,
                          end=(seg.end_frame + 1) / frames_per_s, probability=float(seg.prob)))
    return tuple(words)
