"""Whisper on speech clips cut at pauses, each decoded on its own (issue 21).

faster-whisper's `WhisperModel.transcribe` hears a recording 30 s window by window, and decides
after each window where the next one starts (its `seek`). Each of its rules for that lost
speech somewhere: after a late aligned word (word timestamps on), after a whole window the
decoder ended early, and at the start of a window whose first timestamp the decoder placed
late (ten FLEURS readings joined: 45.8% of the words wrong, against 7.1% one by one).

Here no window is ever continued: Silero VAD (the ONNX model inside faster-whisper's wheel, run
by onnxruntime; nothing is downloaded) finds the speech, cut at every pause of at least
`min_silence_ms` and into clips of at most 30 s, and faster-whisper's `BatchedInferencePipeline`
decodes each clip alone (`clip_timestamps`: a clip's times are offsets into the original audio),
with word timestamps aligned on that clip's encoder output. Clips are not merged up to 30 s as
the pipeline's own `vad_filter` does: tiny.en, given several speakers in one window, wrote the
first and stopped (a merged 30 s chunk lost as much as the windows did).

The pipeline does not apply Whisper's no-speech rule; it is applied here as faster-whisper's
sequential decoding does (no-speech probability over `no_speech_threshold` and average log
probability under `log_prob_threshold`: the clip is not speech), so noise the VAD let through
writes nothing rather than a hallucination.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class VadSettings:
    """Silero VAD settings (faster-whisper's `VadOptions`), all part of the profile's revision.

    `threshold` 0.3 and `neg_threshold` 0.2 (speech starts above 0.3 and ends below 0.2), not
    Silero's 0.5 and 0.35: at 0.5 the VAD missed "eight of spades" in an 8 kHz telephone copy
    of a spoken card name (probabilities 0.2 to 0.3) and cut readings more often; 0.3/0.2 heard
    every word of the short recordings' telephone copies, and noise still made no clip
    (bench/README.md, "Engines"). `min_silence_ms` 500: a pause between sentences or speakers;
    250 cut readings into pieces of under a second (more windows to encode, and words heard
    without their context), 1000 joined different speakers into one clip again, where tiny.en
    wrote the first and stopped. `speech_pad_ms` 400 is Silero's and faster-whisper's default."""

    threshold: float = 0.3
    neg_threshold: float = 0.2
    min_silence_ms: int = 500
    speech_pad_ms: int = 400
    max_clip_s: float = 30.0  # Whisper's window: a longer clip would be cut by the encoder


def vad_model_file() -> Path:
    """The Silero VAD ONNX file inside the installed faster-whisper wheel."""
    from faster_whisper.utils import get_assets_path

    return Path(get_assets_path()) / "silero_vad_v6.onnx"


def load_vad() -> str:
    """Load the VAD model from the package (raises if onnxruntime or the file is missing) and
    return the SHA-256 of its file, which is part of the profile's revision."""
    from faster_whisper.vad import get_vad_model

    path = vad_model_file()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # 1.2 MB
    get_vad_model()  # one onnxruntime session for the process (faster-whisper caches it)
    return digest


def speech_clips(pcm: np.ndarray, settings: VadSettings) -> list[dict]:
    """The speech in `pcm` as clips of at most `max_clip_s`, each cut at a pause:
    [{"start": s, "end": s}] in seconds, as `BatchedInferencePipeline.transcribe` takes them."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if len(pcm) == 0:
        return []
    options = VadOptions(threshold=settings.threshold, neg_threshold=settings.neg_threshold,
                         min_silence_duration_ms=settings.min_silence_ms,
                         speech_pad_ms=settings.speech_pad_ms, max_speech_duration_s=settings.max_clip_s)
    return [{"start": clip["start"] / SAMPLE_RATE, "end": clip["end"] / SAMPLE_RATE}
            for clip in get_speech_timestamps(pcm, options, sampling_rate=SAMPLE_RATE)]


def decode_clips(model, pcm: np.ndarray, clips: list[dict], *, language: str | None, prompt: str | None,
                 hotwords: str | None, beam_size: int, temperature: float, batch_size: int,
                 condition_on_previous_text: bool, no_speech_threshold: float, log_prob_threshold: float):
    """faster-whisper segments (with words) of each clip of `pcm`, decoded on its own, and the
    pipeline's `TranscriptionInfo` (None when there are no clips). With
    `condition_on_previous_text`, clips are decoded one at a time, each prompted with the text
    before it (after the request's prompt); otherwise in batches of `batch_size`."""
    from faster_whisper import BatchedInferencePipeline

    if not clips:
        return [], None
    kwargs = dict(language=language, task="transcribe", beam_size=beam_size, temperature=[temperature],
                  hotwords=hotwords, word_timestamps=True, without_timestamps=True, vad_filter=False,
                  no_speech_threshold=no_speech_threshold, log_prob_threshold=log_prob_threshold)
    # A new pipeline per call: it keeps the last word's time of the call as state, and one model
    # serves all of the service's engine threads.
    groups = [[clip] for clip in clips] if condition_on_previous_text else [clips]
    segments, info, said = [], None, ""
    for group in groups:
        # faster-whisper's sequential decoding prompts with " " + the prompt; the pipeline
        # encodes the prompt as given, so the space is added here (the same tokens either way).
        context = " ".join(part for part in (prompt, said) if part).strip()
        pieces, info = BatchedInferencePipeline(model).transcribe(
            pcm, clip_timestamps=group, initial_prompt=(" " + context) if context else None,
            batch_size=batch_size, **kwargs)
        heard = [piece for piece in pieces if not _not_speech(piece, no_speech_threshold, log_prob_threshold)]
        segments += heard
        if condition_on_previous_text:
            said = " ".join(piece.text.strip() for piece in heard) or said
        language = language or info.language  # detected on the first clip, kept for the rest
    return segments, info


def _not_speech(segment, no_speech_threshold: float, log_prob_threshold: float) -> bool:
    """faster-whisper's rule for a window that is not speech (sequential decoding skips it)."""
    return segment.no_speech_prob > no_speech_threshold and segment.avg_logprob < log_prob_threshold
