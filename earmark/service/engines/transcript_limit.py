"""The longest transcript any engine may return for a recording, sized from its duration.

Speech is at most about 25 characters a second (a fast reader, spaces included), and Whisper
cannot write more than 448 tokens per 30 s window (about 70 characters a second even in a
repetition loop). So an answer far longer than its audio is a broken or hostile engine, most
likely an upstream server: a 400 MB `{"text": "aaaa..."}` once took 7.2 GB of the service's
memory, blocked its event loop, and evicted every other entry from the store to make room for
itself. Such an answer is refused as the engine's failure (502), never cached.

The limit is `max_transcript_chars_per_s` (100) characters per second of audio, at least
`max_transcript_chars_floor` (2000, for short clips), applied to each of the transcript's
parts: its text, its segments' text together, its words (one character at least each) and
its tokens. The upstream engines also stop reading an answer longer than this allows
(service/engines/upstream/base.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from earmark.service.engines.base import Transcript
from earmark.service.engines.errors import EngineFailure


class TranscriptTooLong(EngineFailure):
    """An engine's answer is longer than its audio can hold (an engine failure: nothing cached)."""


@dataclass(frozen=True)
class TranscriptLimit:
    """`chars_per_s` characters per second of audio, at least `floor_chars`
    (`max_transcript_chars_per_s`, `max_transcript_chars_floor` in service/config.py)."""

    chars_per_s: float = 100.0
    floor_chars: int = 2000

    @classmethod
    def from_settings(cls, settings) -> "TranscriptLimit":
        """The limit a `service.config.Settings` configures."""
        return cls(settings.max_transcript_chars_per_s, settings.max_transcript_chars_floor)

    def chars_for(self, audio_s: float) -> int:
        """The most characters a transcript of `audio_s` seconds may have."""
        return max(self.floor_chars, math.ceil(self.chars_per_s * audio_s))

    def explained(self) -> str:
        """How the limit is set, naming the settings (for a failure's message)."""
        return (f"max_transcript_chars_per_s = {self.chars_per_s:g} a second of audio, "
                f"at least max_transcript_chars_floor = {self.floor_chars}")

    def check(self, transcript: Transcript, audio_s: float) -> None:
        """Raise `TranscriptTooLong` when a part of `transcript` is over the limit for its audio."""
        limit = self.chars_for(audio_s)
        for part, size in _sizes(transcript):
            if size > limit:
                raise TranscriptTooLong(
                    f"the engine's transcript is over earmark's limit of {limit} character{'' if limit == 1 else 's'} "
                    f"for {audio_s:.1f} s of audio ({part}: {size}; {self.explained()}): a broken or runaway answer, "
                    "not cached")


def _sizes(transcript: Transcript):
    """(part, characters) of each part of a transcript the limit applies to."""
    yield "its text", len(transcript.text)
    yield "its normalised text", len(transcript.normalized_text)
    yield "its segments' text", sum(len(segment.text) for segment in transcript.segments)
    yield "its words", sum(max(1, len(word.word)) for segment in transcript.segments for word in segment.words)
    yield "its tokens", sum(len(segment.tokens) for segment in transcript.segments)
