"""HTTP errors with the contract's body: `{"code": <non-zero>, "msg": "<what to do>"}`."""

from __future__ import annotations


class ApiError(Exception):
    """An answer other than 200; `msg` tells the client what was wrong and what to do."""

    def __init__(self, status: int, msg: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.headers = headers or {}


def quoted(value: object, limit: int = 40) -> str:
    """`repr` of a client's value for an error message, cut to a short prefix: an error must
    never echo a megabyte back."""
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"
