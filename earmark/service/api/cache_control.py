"""Per-request cache control, read from the request's `Cache-Control` header.

Caching proxies let a client say, per request, "do not answer from the cache", "do not keep
this" or "keep it only so long"; earmark honours the same three directives on `/recognize` and
`/v1/audio/transcriptions` (docs/api.md, "Cache control"):

- `no-cache`: skip every lookup tier, run the engine, then store (replacing the entry for the
  same audio);
- `no-store`: answer from the cache when possible, but write nothing for this request;
- `max-age=N`: an entry this request writes lives at most N seconds (never longer than the
  configured TTL); `max-age=0` writes nothing.

Anything else in the header (unknown directives, a malformed `max-age`) is ignored, as a cache
ignores what it does not understand.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheControl:
    """What one request asked of the cache; the default asks nothing special."""

    no_cache: bool = False
    no_store: bool = False
    max_age_s: int | None = None

    @property
    def directives(self) -> list[str]:
        """The directives honoured for this request (for the metric), or ["none"]."""
        named = [name for name, on in (("no-cache", self.no_cache), ("no-store", self.no_store),
                                        ("max-age", self.max_age_s is not None)) if on]
        return named or ["none"]

    @property
    def writes(self) -> bool:
        """False when nothing may be written for this request (`no-store`, or `max-age=0`)."""
        return not self.no_store and self.max_age_s != 0

    def ttl_s(self, configured_s: int) -> int:
        """The TTL of an entry this request writes: the configured one, or `max-age` if shorter."""
        return configured_s if self.max_age_s is None else min(configured_s, self.max_age_s)


DEFAULT = CacheControl()


def parse_cache_control(header: str | None) -> CacheControl:
    """The directives of a `Cache-Control` header value (case-insensitive, comma-separated)."""
    if not header:
        return DEFAULT
    no_cache = no_store = False
    max_age: int | None = None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        value = value.strip().strip('"')
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age" and value.isascii() and value.isdigit():
            # Twice given: the shorter wins, as it would for the client that sent it.
            seconds = int(value)
            max_age = seconds if max_age is None else min(max_age, seconds)
    return CacheControl(no_cache=no_cache, no_store=no_store, max_age_s=max_age)
