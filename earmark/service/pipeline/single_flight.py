"""Single flight: a miss is run once however many requests ask for the same new audio at once.

Requests in this process share one future, the first one's; processes sharing the store take a
lock with an expiry (renewed while the engine runs), and the others wait for the holder's entry
to appear. This module decides who runs a miss and who waits, and hands back what was found;
what a shared answer or a found entry is served as belongs to the tier walk
(service/pipeline/recognition.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from earmark.index.breaker import StoreUnavailable, try_store
from earmark.index.entry import Entry
from earmark.index.store import Store
from earmark.service.engines.errors import EngineFailure
from earmark.service.metrics import Metrics

T = TypeVar("T")

LOCK_POLL_S = 0.05


class MissesInFlight:
    """The misses being run now: this process's, each a future its followers share, and every
    process's, through the store's expiring locks."""

    def __init__(self, store: Store, metrics: Metrics, lock_ttl_ms: int) -> None:
        self.store = store
        self.metrics = metrics
        self.lock_ttl_ms = lock_ttl_ms
        # (profile digest, PCM digest) -> (the leader's upload digest, its answer to come)
        self._flights: dict[tuple[str, str], tuple[str, asyncio.Future]] = {}
        # lock key -> (our token, when), for locks we could not release because the store was
        # down: the next request for that audio releases its own stale lock instead of waiting
        # out its expiry (kept no longer than the lock itself lives)
        self._unreleased: dict[str, tuple[str, float]] = {}

    async def once_in_process(self, profile_digest: str, audio_digest: str, upload_digest: str, *,
                              lead: Callable[[], Awaitable[T]], follow: Callable[[str, T], Awaitable[T]]) -> T:
        """`lead()` when no request of this process is running this (profile, audio) miss; else
        wait for the one that is and answer `follow(its upload digest, its answer)`.

        A leader's error is its followers' too; a leader cancelled (its client went away) fails
        them with an `EngineFailure` they may retry, rather than leaving them waiting."""
        flight_key = (profile_digest, audio_digest)
        flight = self._flights.get(flight_key)
        if flight is not None:
            leader_digest, leader = flight
            self.metrics.single_flight_waits.labels(scope="process").inc()
            shared: T = await asyncio.shield(leader)
            return await follow(leader_digest, shared)
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._flights[flight_key] = (upload_digest, future)
        try:
            answer = await lead()
        except asyncio.CancelledError:
            # The leader's client went away; its followers still deserve an answer.
            future.set_exception(EngineFailure("the request running the engine for this audio was cancelled; retry"))
            raise
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            self._flights.pop(flight_key, None)
        future.set_result(answer)
        return answer

    async def under_lock(self, profile_digest: str, audio_digest: str, store_ok: bool, *,
                         serve: Callable[[Entry], Awaitable[T | None]], run: Callable[[bool], Awaitable[T]]) -> T:
        """Take the store's lock on this (profile, audio) and `run(store_ok)` while holding it,
        or wait for its holder's entry and `serve` it (None from `serve`: the entry vanished,
        so take the lock or wait again). An entry a previous holder wrote just before we took
        the lock is served rather than run again. Without the store (`store_ok` False, or an
        outage on the way) it runs without a lock: `run(False)`."""
        lock_key = self.store.keys.lock(profile_digest, audio_digest)

        def holders_entry() -> Awaitable[Entry | None]:
            return self.store.entry_by_canonical(profile_digest, audio_digest)

        token = None
        if store_ok and lock_key in self._unreleased:
            stale, _ = self._unreleased[lock_key]
            _, store_ok = await try_store(lambda: self.store.release_lock(lock_key, stale))
            if store_ok:
                self._unreleased.pop(lock_key, None)
        while store_ok:
            token, store_ok = await try_store(lambda: self.store.acquire_lock(lock_key, self.lock_ttl_ms))
            if token is not None or not store_ok:
                break
            self.metrics.single_flight_waits.labels(scope="store").inc()
            entry, store_ok = await self._wait_for_holder(lock_key, holders_entry)
            if entry is not None:
                answer = await serve(entry)
                if answer is not None:
                    return answer
        renewer = asyncio.create_task(self._renew_lock(lock_key, token)) if token else None
        try:
            if token is not None:
                # The previous holder may have finished between our lookup and our lock.
                entry, store_ok = await try_store(holders_entry)
                if entry is not None:
                    answer = await serve(entry)
                    if answer is not None:
                        return answer
            return await run(store_ok)
        finally:
            if renewer is not None and token is not None:
                renewer.cancel()
                held_token = token
                _, released = await try_store(lambda: self.store.release_lock(lock_key, held_token))
                if not released:
                    self._remember_unreleased(lock_key, held_token)

    def _remember_unreleased(self, lock_key: str, token: str) -> None:
        """Keep a lock we hold but could not release, dropping those that have expired by now."""
        now = time.monotonic()
        expired = [key for key, (_, since) in self._unreleased.items() if now - since > self.lock_ttl_ms / 1000]
        for key in expired:
            del self._unreleased[key]
        self._unreleased[lock_key] = (token, now)

    async def _wait_for_holder(self, lock_key: str, holders_entry: Callable[[], Awaitable[Entry | None]]
                               ) -> tuple[Entry | None, bool]:
        """Poll until the lock holder's entry appears, or the lock vanishes without one."""
        while True:
            await asyncio.sleep(LOCK_POLL_S)
            entry, store_ok = await try_store(holders_entry)
            if entry is not None or not store_ok:
                return entry, store_ok
            held, store_ok = await try_store(lambda: self.store.lock_held(lock_key))
            if not held or not store_ok:
                entry, store_ok = await try_store(holders_entry)
                return entry, store_ok

    async def _renew_lock(self, lock_key: str, token: str) -> None:
        interval = self.lock_ttl_ms / 3000.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.extend_lock(lock_key, token, self.lock_ttl_ms)
            except StoreUnavailable:
                return
