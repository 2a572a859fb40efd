"""The last dedup audits, kept for a short while: `GET /audit` and the console's audit page.

An audit reads every entry and the whole event log and verifies pairs of entries: seconds on a
big store. Operators reload the page and dashboards poll it, so the same audit is kept for
`audit_cache_s` (a report says how old it is), viewers asking at once share one computation,
and a delete through this process drops what is kept (a delete elsewhere shows within
`audit_cache_s`). A failed audit (the store down) is never kept.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Hashable

from prometheus_client import Counter

from earmark.index.store import Store


class AuditCache:
    """Audit reports by key (the options and who asked), each kept `ttl_s` seconds; 0 keeps none."""

    def __init__(self, ttl_s: float, results: Counter) -> None:
        self.ttl_s = ttl_s
        self._results = results  # labelled by result: computed, kept, shared
        self._kept: dict[Hashable, tuple[float, dict]] = {}
        self._running: dict[Hashable, asyncio.Future] = {}

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[dict]]) -> dict:
        """The report for `key`: kept, being computed for another viewer, or computed now. Each
        caller gets its own copy (the console adds its charts to it), with `age_s`: how long ago
        it was computed."""
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is not None and now - kept[0] < self.ttl_s:
            self._results.labels(result="kept").inc()
            return _served(kept[1], now - kept[0])
        running = self._running.get(key)
        if running is not None:
            try:
                report = await asyncio.shield(running)
            except asyncio.CancelledError:
                if not running.cancelled():
                    raise  # this viewer's own request was cancelled
            else:
                self._results.labels(result="shared").inc()
                return _served(report, 0.0)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            report = await compute()
        except asyncio.CancelledError:
            future.cancel()  # a viewer waiting on it computes the audit itself
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: no "never retrieved" warning when no one shared it
            raise
        finally:
            if self._running.get(key) is future:
                del self._running[key]
        self._results.labels(result="computed").inc()
        if self.ttl_s > 0:
            self._kept[key] = (time.monotonic(), report)
        future.set_result(report)
        return _served(report, 0.0)

    def forget(self) -> None:
        """Drop every kept report: an entry was deleted, so they list what no longer exists."""
        self._kept.clear()


def _served(report: dict, age_s: float) -> dict:
    """A caller's own copy of a report (the console draws into it), with its age."""
    return {**copy.deepcopy(report), "age_s": round(age_s, 1)}


async def delete_and_forget(store: Store, audits: AuditCache, entry_id: str, *, stream_maxlen: int) -> bool:
    """Delete an entry everywhere (Store.delete_entry) and, when it existed, drop the kept audit
    reports that counted it; True when it was deleted. Raises StoreUnavailable as the store does.
    One function for DELETE /entries/{id} and the console's Delete button, so neither forgets."""
    deleted = await store.delete_entry(entry_id, stream_maxlen=stream_maxlen)
    if deleted:
        audits.forget()
    return deleted
