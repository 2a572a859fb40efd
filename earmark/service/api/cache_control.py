"""A request's cache control, read from its `Cache-Control` header.

The three directives earmark honours (`no-cache`, `no-store`, `max-age=N`) and what each does
are the pipeline's (service/pipeline/cache_directives.py); this reads them off the header.
Anything else in the header (unknown directives, a malformed `max-age`) is ignored, as a cache
ignores what it does not understand.
"""

from __future__ import annotations

from earmark.service.pipeline.cache_directives import DEFAULT, CacheControl


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
