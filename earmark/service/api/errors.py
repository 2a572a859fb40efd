"""Errors as HTTP answers, in one place: the contract's body `{"code": <non-zero>, "msg": "<what
to do>"}` and the status of each kind of error (docs/api.md).

The layers below the API raise `EarmarkError`s that name their kind, never a status
(earmark/errors.py); `STATUS` is where a kind becomes one. A refusal the API makes itself (a
malformed form, a missing token, an unknown entry) is an `ApiError` with its status.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earmark.errors import EarmarkError, Kind

# The status each kind of error is answered with.
STATUS = {
    Kind.INVALID: 400,
    Kind.TOO_LARGE: 413,
    Kind.NOT_AUDIO: 415,
    Kind.NOT_SUPPORTED: 422,
    Kind.FAILED: 502,
    Kind.BUSY: 503,
    Kind.UNAVAILABLE: 503,
    Kind.TIMED_OUT: 504,
}


class ApiError(EarmarkError):
    """An answer other than 200 decided by the API itself; `msg` tells the client what was
    wrong and what to do."""

    def __init__(self, status: int, msg: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.headers = headers or {}


@dataclass(frozen=True)
class ErrorAnswer:
    """An error as the client gets it: status, message and headers (Retry-After, ...)."""

    status: int
    msg: str
    headers: dict[str, str] = field(default_factory=dict)


def error_answer(error: EarmarkError) -> ErrorAnswer:
    """How the API answers an error: an `ApiError` as it says, any other by its kind, with a
    Retry-After when the error says when to try again."""
    if isinstance(error, ApiError):
        return ErrorAnswer(error.status, error.msg, error.headers)
    headers = {} if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
    return ErrorAnswer(STATUS[error.kind], error.message(), headers)


def http_status(error: EarmarkError) -> int:
    """The status `error` is answered with."""
    return error_answer(error).status
