"""The root of earmark's errors: a refusal says what kind of failure it is, never an HTTP status.

Every layer below the API (fingerprint/, the pipeline, the engines) raises an `EarmarkError`
whose `kind` is what went wrong as the caller can act on it: the input is malformed, not audio,
too large, asks for what the engine does not support; the service is busy, the engine
unavailable, failed or too slow. The HTTP API maps kinds to statuses in one place
(service/api/errors.py); the CLI, batch and the tuning tools read the same errors without one.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    """What went wrong, as the caller can act on it."""

    INVALID = "invalid"  # the request or its audio is malformed or unreadable: fix and send again
    NOT_AUDIO = "not_audio"  # the bytes are not audio at all
    TOO_LARGE = "too_large"  # the audio is longer or bigger than what is taken: send shorter audio
    NOT_SUPPORTED = "not_supported"  # an option (or audio) the engine will not take: change it
    BUSY = "busy"  # the service is at a limit right now: retry (after `retry_after_s` when given)
    UNAVAILABLE = "unavailable"  # the engine cannot run at all: retry much later, tell the operator
    FAILED = "failed"  # the engine failed on this request
    TIMED_OUT = "timed_out"  # the engine did not finish in time: retry later or send shorter audio


class EarmarkError(Exception):
    """A failure a caller is told about: its `kind`, what to tell them (`message`) and, for a
    failure that passes, after how many seconds to try again (`retry_after_s`)."""

    kind: Kind = Kind.INVALID
    retry_after_s: int | None = None

    def message(self) -> str:
        """What the caller is told: what was wrong and what to do."""
        return str(self)


def quoted(value: object, limit: int = 40) -> str:
    """`repr` of a caller's value for an error message, cut to a short prefix: an error must
    never echo a megabyte back."""
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"
