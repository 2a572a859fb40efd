"""Where Whisper's 30 s window goes next, and word times that do not move it (issue 21).

faster-whisper decodes a recording 30 s window by window, and two of its rules for where the
next window starts skip speech that no window ever hears:

- With `word_timestamps=True` it starts the next window at the end of the last aligned word
  instead of at the decoder's own last timestamp. That end is a DTW estimate, often late, so the
  next window starts inside the words after it: tiny.en dropped "going direct to heaven, we were
  all going" and the closing words of a 44 s reading, and 12.6% against 6.3% of the words of five
  real recordings. Here the decoder runs without word timestamps (each window starts where the
  decoder's timestamps say), and each window's segments get their words afterwards from
  faster-whisper's own alignment (`WhisperModel.add_word_timestamps`) on the encoder output the
  decoder used, which the model below keeps: no second encoder pass (1.1 s a window for tiny.en
  on one thread).
- When the decoder closes a window with a lone timestamp ("no speech after this"), the next
  window starts after the whole window, even when that timestamp is 20 s before its end: tiny.en
  stopped after the first of five FLEURS readings in a window and lost the next two. Here the
  next window starts at that timestamp instead when more than `resume_after_s` of the window is
  left, so what the decoder did not write is decoded again rather than skipped; over silence or
  noise that window writes nothing it is sure of, which is dropped (`without_failed_resumes`).
"""

from __future__ import annotations

import threading
from itertools import chain
from collections.abc import Iterable, Iterator
from dataclasses import replace

from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import Word


class WindowKeepingModel(WhisperModel):
    """A WhisperModel that resumes after a window the decoder ended early, and remembers, per
    thread, the encoder output of the last window it encoded: `generate_segments` encodes a
    window and yields that window's segments before it encodes the next, so while a window's
    first segment is read, the last encoder output is that window's. Per thread because one
    model serves all of the service's engine threads."""

    resume_after_s = 0.0  # 0: faster-whisper's rule (skip the rest of the window)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last_window = threading.local()

    def encode(self, features):
        output = super().encode(features)
        self._last_window.output = output
        return output

    def last_encoder_output(self):
        """The encoder output of the last window this thread encoded."""
        return self._last_window.output

    def resumed(self) -> set[int]:
        """The `seek` of each window this thread's current transcription resumed into."""
        if not hasattr(self._last_window, "resumed"):
            self._last_window.resumed = set()
        return self._last_window.resumed

    def _split_segments_by_timestamps(self, tokenizer, tokens, time_offset, segment_size, segment_duration, seek):
        """faster-whisper's split of a window's tokens into segments, and where the next window
        starts: at the last segment's end rather than past the window, when the decoder ended
        the window early (a lone final timestamp) with more than `resume_after_s` left."""
        segments, next_seek, single_ending = super()._split_segments_by_timestamps(
            tokenizer, tokens, time_offset, segment_size, segment_duration, seek)
        if self.resume_after_s and single_ending and segments:
            end = round(segments[-1]["end"] * self.frames_per_second)
            if seek < end and seek + segment_size - end > self.resume_after_s * self.frames_per_second:
                next_seek = end  # always forward (seek < end): the decoding cannot loop
                self.resumed().add(next_seek)
        return segments, next_seek, single_ending


def with_words(model: WindowKeepingModel, pieces: Iterable, info, samples: int, hop: int) -> Iterator:
    """faster-whisper segments decoded without word timestamps (`pieces`, read lazily from
    `model.transcribe`), each given its `words` by faster-whisper's alignment of the tokens the
    decoder wrote, window by window, on that window's encoder output. `samples`: the audio's
    length, which bounds the last window (`hop` samples per spectrogram frame)."""
    options = info.transcription_options
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=info.language)
    content_frames = samples // hop  # faster-whisper's spectrogram: samples // hop frames of content
    window_frames = model.feature_extractor.nb_max_frames
    last_speech = 0.0
    window: list = []
    encoder_output = None
    # Read lazily: the encoder output must be taken while its window's segments are read.
    for piece in chain(pieces, [None]):  # None: the end, which closes the last window
        if window and (piece is None or piece.seek != window[0].seek):
            timed = _aligned(model, tokenizer, options, window, encoder_output, content_frames, window_frames, last_speech)
            last_speech = next((s.words[-1].end for s in reversed(timed) if s.words), last_speech)
            yield from timed
            window = []
        if piece is None:
            break
        if not window:
            encoder_output = model.last_encoder_output()  # read before the generator encodes the next window
        window.append(piece)


def _aligned(model, tokenizer, options, window: list, encoder_output, content_frames: int, window_frames: int,
             last_speech: float) -> list:
    """The window's segments with words, and start/end moved to their first and last word as
    faster-whisper's `word_timestamps=True` does."""
    seek = window[0].seek
    pieces = [dict(seek=seek, start=p.start, end=p.end, tokens=list(p.tokens)) for p in window]
    model.add_word_timestamps([pieces], tokenizer, encoder_output, min(window_frames, content_frames - seek),
                              options.prepend_punctuations, options.append_punctuations,
                              last_speech_timestamp=last_speech)
    return [_word_timed(segment, timed) for segment, timed in zip(window, pieces, strict=True)]


def _word_timed(segment, timed: dict):
    words = [Word(**word) for word in timed.get("words", [])]
    # A segment whose words all collapse to one instant keeps its decoder times: its text is
    # kept whatever the alignment says (faster-whisper drops a segment whose start equals its end).
    start, end = (timed["start"], timed["end"]) if timed["start"] < timed["end"] else (segment.start, segment.end)
    return replace(segment, start=start, end=end, words=words)



def without_failed_resumes(model: WindowKeepingModel, pieces: Iterable, info) -> Iterator:
    """`pieces` without the segments of a resumed window the decoder was not sure of."""
    model.resumed().clear()  # runs before the first window is decoded (generators are lazy)
    options = info.transcription_options
    for piece in pieces:
        if not (piece.seek in model.resumed() and _failed(piece, options)):
            yield piece


def _failed(segment, options) -> bool:
    """A window resumed into after the decoder said "no speech after" keeps its text only if
    the decoder is sure of it: over noise, tiny.en wrote ". . . . ." there (no-speech
    probability 0.96, compression ratio 6.1). faster-whisper's own thresholds for a window that
    is not speech or a repetition loop; the latter would have been re-decoded at a higher
    temperature, which a cache cannot use (it samples at random)."""
    return (segment.no_speech_prob > options.no_speech_threshold
            or segment.compression_ratio > options.compression_ratio_threshold)
