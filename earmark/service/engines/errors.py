"""How an engine run can fail, for the pipeline and the API alike: each error names its kind
(earmark/errors.py), never an HTTP status, and says what the caller is told.

The pool (engines/pool.py) and the engines themselves, local and upstream, raise these; the API
maps their kinds to statuses in one place (service/api/errors.py).
"""

from __future__ import annotations

from earmark.errors import EarmarkError, Kind

# How long a caller is asked to wait when the engine cannot run at all (a model missing or
# failing to load): long enough for an operator's restart, short enough to notice it.
UNAVAILABLE_RETRY_AFTER_S = 30


class EngineOptionError(EarmarkError, ValueError):
    """A request option the engine cannot honour; the message says what it supports. Its kind
    is `NOT_SUPPORTED`, or `TOO_LARGE` when the audio is too large for the engine."""

    kind = Kind.NOT_SUPPORTED


class EngineUnavailable(EarmarkError, RuntimeError):
    """The engine cannot run at all (missing model, failed to load)."""

    kind = Kind.UNAVAILABLE
    retry_after_s = UNAVAILABLE_RETRY_AFTER_S

    def message(self) -> str:
        """What the caller is told."""
        return f"the engine is unavailable: {self}"


class EngineFailure(EarmarkError, RuntimeError):
    """The engine failed on this request."""

    kind = Kind.FAILED

    def message(self) -> str:
        """What the caller is told."""
        return f"the engine failed on this audio: {self}"


class EngineBusy(EarmarkError, RuntimeError):
    """The engine's queue is full; try again after `retry_after_s`."""

    kind = Kind.BUSY

    def __init__(self, retry_after_s: int, reason: str = "the engine is busy") -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s

    def message(self) -> str:
        """What the caller is told."""
        return f"{self}; retry after {self.retry_after_s} s"


class EngineTimeout(EarmarkError, RuntimeError):
    """The engine did not finish in time."""

    kind = Kind.TIMED_OUT

    def message(self) -> str:
        """What the caller is told."""
        return f"{self}; retry later or send shorter audio"
