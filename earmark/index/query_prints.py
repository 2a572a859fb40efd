"""A fuzzy hit's query fingerprint (never its audio), kept while its entry lives.

A fuzzy hit near the threshold is what an audit must be able to redraw stretch by stretch
(service/ops/audit.py), and for that it needs the query's fingerprint beside the entry's. The
print is listed among the entry's aliases (index/keys.py, `alias_member`), so that deleting
the entry deletes it too, and it expires with the entry.
"""

from __future__ import annotations

import asyncio

import redis.exceptions

from earmark.index.breaker import StoreUnavailable
from earmark.index.entry import Entry
from earmark.index.store import Store

# A print of an entry written without an expiry (before entries had one) is kept a week.
UNEXPIRING_ENTRY_PRINT_TTL_S = 7 * 24 * 3600


async def keep_query_print(store: Store, profile_id: str, query_digest: str, entry: Entry,
                           fingerprint: bytes, levels: bytes) -> bool:
    """Keep a query's fingerprint (`fingerprint`, `levels`: RobustHash.to_bytes) for `entry`,
    listed among the entry's aliases; False when the store is down or refused the write (never raises
    over the store: keeping it is part of an audit trail, not of the answer)."""
    key = store.keys.query_print(profile_id, query_digest)
    try:
        store.breaker.allow()
        pipe = store.client.pipeline(transaction=False)
        pipe.hset(key, mapping={"fp": fingerprint, "fpl": levels, "entry": entry.entry_id})
        store.list_alias(pipe, entry, key)
        if entry.expires_at_ms:
            pipe.pexpireat(key, entry.expires_at_ms)
        else:
            pipe.expire(key, UNEXPIRING_ENTRY_PRINT_TTL_S)
        await pipe.execute()
    except (StoreUnavailable, redis.exceptions.RedisError, OSError, asyncio.TimeoutError):
        return False
    return True


async def read_query_print(store: Store, profile_id: str, query_digest: str) -> tuple[str, bytes, bytes] | None:
    """(entry id, fingerprint, levels) kept for these bytes under this profile; None when none
    was kept or it expired. Raises `StoreUnavailable` during an outage."""
    key = store.keys.query_print(profile_id, query_digest)
    fields = await store.call(lambda: store.client.hgetall(key))
    if not fields or not fields.get(b"fp"):
        return None
    return fields[b"entry"].decode(), fields[b"fp"], fields.get(b"fpl", b"")
