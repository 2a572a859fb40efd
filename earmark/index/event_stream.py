"""The recognition event log's storage: a capped Redis Stream of flat records.

What an event says is the pipeline's business (service/pipeline/events.py); this module only
appends records, trims the stream to its cap, and reads records back newest first or by time.
Appending never raises over the store: an event is an audit trail, and a request must never
fail because its trail could not be written.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping

import redis.exceptions

from earmark.index.breaker import StoreUnavailable
from earmark.index.store import Store

# Records read per round trip when a time range is read whole.
PAGE = 1000

# A stream id and a record's fields as the store returns them (bytes keys and values; text is
# taken too, as written).
Record = tuple[str, Mapping[bytes | str, bytes | str]]


class EventStream:
    """The capped stream `store.keys.events()`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.key = store.keys.events()

    async def append(self, fields: Mapping[str, str | bytes], maxlen: int) -> bool:
        """Append one record, trimming the stream to about `maxlen` (approximately, so that a
        cap costs nothing per append). False when the store is down or refused the write."""
        try:
            # Past the breaker but not through it: a lost record is the caller's to count, never
            # a refused cache write nor an outage (the request's own store calls report those).
            self.store.breaker.allow()
            await self.store.client.xadd(self.key, dict(fields), maxlen=maxlen, approximate=True)
        except (StoreUnavailable, redis.exceptions.RedisError, OSError, asyncio.TimeoutError):
            return False
        return True

    async def newest(self, count: int, before: str | None = None) -> list[Record]:
        """Up to `count` records, newest first; `before` (a stream id from an earlier page)
        pages back from there, exclusive. Raises `StoreUnavailable` during an outage."""
        newest = f"({before}" if before else "+"
        rows = await self.store.call(lambda: self.store.client.xrevrange(self.key, max=newest, min="-", count=count))
        return _records(rows)

    async def between(self, start_s: float, end_s: float) -> list[Record]:
        """Every record appended from `start_s` to `end_s` (epoch seconds, inclusive), oldest
        first, read `PAGE` at a time. Raises `StoreUnavailable` during an outage."""
        records: list[Record] = []
        low, high = str(max(0, int(start_s * 1000))), str(max(0, int(end_s * 1000)))
        while True:
            rows = await self.store.call(functools.partial(self.store.client.xrange, self.key, min=low, max=high,
                                                           count=PAGE))
            records.extend(_records(rows))
            if len(rows) < PAGE:
                return records
            low = "(" + records[-1][0]

    async def length(self) -> int:
        """Records the stream holds now."""
        return int(await self.store.call(lambda: self.store.client.xlen(self.key)))


def _records(rows) -> list[Record]:
    return [(stream_id.decode() if isinstance(stream_id, bytes) else stream_id, fields) for stream_id, fields in rows]
