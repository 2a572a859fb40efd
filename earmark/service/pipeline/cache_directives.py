"""What one request asked of the cache: skip the lookup, write nothing, or keep it only so long.

Caching proxies let a client say, per request, "do not answer from the cache", "do not keep
this" or "keep it only so long"; earmark honours the same three directives on `/recognize` and
`/v1/audio/transcriptions` (docs/api.md, "Cache control"), and the tier walk
(service/pipeline/recognition.py) acts on them:

- `no-cache`: skip every lookup tier, run the engine, then store (replacing the entry for the
  same audio);
- `no-store`: answer from the cache when possible, but write nothing for this request;
- `max-age=N`: an entry this request writes lives at most N seconds (never longer than the
  configured TTL); `max-age=0` writes nothing.

Reading them off the request's `Cache-Control` header is the API's (service/api/cache_control.py).
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
