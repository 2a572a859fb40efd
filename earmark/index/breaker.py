"""A circuit breaker for the store: when it is down, stop paying a timeout per request.

While open, callers skip the store at once (the request is served with tier `bypass`); a
background probe closes it again as soon as the store answers, so caching resumes by itself
within seconds of the store coming back. One warning is logged per outage, not per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreUnavailable(RuntimeError):
    """The store cannot be used right now; serve without the cache."""


class StoreRefused(StoreUnavailable):
    """The store answered but refused this command (OOM under maxmemory, WRONGTYPE on a foreign
    key): this request goes on without the cache, while the store stays up for every other."""


async def try_store(call: Callable[[], Awaitable[T]]) -> tuple[T | None, bool]:
    """Run a store call; on an outage return (None, False) instead of raising, so that a request
    carries on without the cache (tier `bypass`) rather than failing."""
    try:
        return await call(), True
    except StoreUnavailable:
        return None, False


class CircuitBreaker:
    """Tracks whether the store is usable; `allow()` is cheap and called before each use."""

    def __init__(self, name: str = "store") -> None:
        self.name = name
        self._open_since: float | None = None

    @property
    def is_open(self) -> bool:
        """True during an outage: callers should not touch the store."""
        return self._open_since is not None

    def allow(self) -> None:
        """Raise `StoreUnavailable` while the breaker is open."""
        if self._open_since is not None:
            raise StoreUnavailable(f"{self.name} is down")

    def record_failure(self, error: BaseException) -> None:
        """Open the breaker; the first failure of an outage is logged as a warning."""
        if self._open_since is None:
            self._open_since = time.monotonic()
            log.warning(
                "%s unreachable (%s): serving without the cache until it returns", self.name, error
            )

    def record_success(self) -> None:
        """Close the breaker after a successful probe; log the end of an outage."""
        if self._open_since is not None:
            outage = time.monotonic() - self._open_since
            self._open_since = None
            log.warning("%s is back after %.1f s: caching resumed", self.name, outage)
