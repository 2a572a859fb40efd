"""A budget of audio seconds being decoded at once, shared by every request in flight.

Memory grows with the audio being decoded, not with the bytes uploaded (an 18 KB FLAC can hold
an hour of silence), so a limit on uploads alone cannot keep a burst of long recordings from
exhausting memory. Each decode reserves its audio's duration (the header's, or a bound worked
out from the upload's size when the header says nothing) before it starts; beyond the budget a
request waits a little, then is refused as busy (`DecodeBudgetFull`: the API's 503 with
Retry-After) instead of pushing the process into OOM.

The estimate is only where a reservation starts: a header may lie or say nothing, and silence
in FLAC packs hours into a few megabytes, past any bound from the size. So the decoding thread
`cover`s what it has actually decoded as it goes, and the reservation grows to match, with the
same wait and the same refusal when the budget has no room for the growth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
from collections.abc import AsyncIterator

from earmark.errors import EarmarkError, Kind

# A growing reservation takes this many seconds of audio beyond what has been decoded, so that a
# long recording crosses from its decoding thread to the event loop every minute of audio rather
# than every block (a minute at 16 kHz float32 is 3.8 MB: the most it is over-charged by).
GROWTH_STEP_S = 60.0


class DecodeBudgetFull(EarmarkError):
    """The decode budget stayed full (or stopped answering) while a request waited for room;
    retry after `retry_after_s` when given."""

    kind = Kind.BUSY

    def __init__(self, msg: str, retry_after_s: int | None = None) -> None:
        super().__init__(msg)
        self.retry_after_s = retry_after_s


class DecodeBudget:
    """Seconds of audio that may be decoding at once; a reservation larger than the whole
    budget is cut to it, so one long recording still runs when nothing else does."""

    def __init__(self, seconds: float, wait_s: float = 10.0, on_change=None, on_refused=None, on_grown=None) -> None:
        self.seconds = seconds
        self.wait_s = wait_s
        self._open: set[Reservation] = set()
        self._changed = asyncio.Condition()
        self._on_change = on_change or (lambda seconds: None)
        self._on_refused = on_refused or (lambda: None)
        self._on_grown = on_grown or (lambda seconds: None)

    @contextlib.asynccontextmanager
    async def reserve(self, seconds: float) -> AsyncIterator[Reservation]:
        """Hold `seconds` of the budget for the duration of the block (more, if the block's
        decoding `cover`s more)."""
        reservation = Reservation(self, asyncio.get_running_loop())
        self._open.add(reservation)
        try:
            await self._hold(reservation, seconds)
            yield reservation
        finally:
            async with self._changed:
                reservation.closed = True
                self._open.discard(reservation)
                self._on_change(self.in_use)
                self._changed.notify_all()

    @property
    def in_use(self) -> float:
        """Seconds held now (a sum over the open reservations, so that growing and releasing
        leave no rounding residue behind)."""
        return sum(reservation.held for reservation in self._open)

    async def _hold(self, reservation: Reservation, seconds: float) -> None:
        """Raise `reservation` to `seconds` (cut to the whole budget), waiting for room."""
        extra = min(max(seconds, 0.0), self.seconds) - reservation.held
        if extra <= 0:
            return
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(
                    lambda: reservation.closed or self.in_use + extra <= self.seconds), self.wait_s)
            except asyncio.TimeoutError:
                self._on_refused()
                retry = max(1, math.ceil(self.wait_s))
                raise DecodeBudgetFull(
                    f"{self.in_use:.0f} s of audio are being decoded, the most this server takes at once; "
                    f"retry after {retry} s", retry_after_s=retry,
                ) from None
            if reservation.closed:  # its request ended while this waited: nothing to hold for
                raise DecodeBudgetFull("the request ended while its decoding waited for the decode budget")
            if reservation.held:
                self._on_grown(extra)
            reservation.held += extra
            self._on_change(self.in_use)


class Reservation:
    """The seconds one request holds; they grow as its decoding finds more audio."""

    def __init__(self, budget: DecodeBudget, loop: asyncio.AbstractEventLoop) -> None:
        self.held = 0.0
        self.closed = False
        self._budget = budget
        self._loop = loop

    async def grow(self, seconds: float) -> None:
        """Hold at least `seconds` (cut to the whole budget), waiting for room like `reserve`."""
        await self._budget._hold(self, seconds)

    def cover(self, seconds: float) -> None:
        """From a decoding thread: `seconds` of audio have been decoded; grow the reservation
        (by `GROWTH_STEP_S` beyond them) when they pass it. Blocks while the budget has no room
        and raises `DecodeBudgetFull` when it stays full, which stops the decoding."""
        if seconds <= self.held or self.held >= self._budget.seconds:
            return
        growing = asyncio.run_coroutine_threadsafe(self.grow(seconds + GROWTH_STEP_S), self._loop)
        try:
            # The wait is bounded on the loop's side; this bound only guards against a loop
            # that stopped (the server shutting down) leaving the thread blocked for ever.
            growing.result(timeout=self._budget.wait_s + 30.0)
        except concurrent.futures.TimeoutError:
            growing.cancel()
            raise DecodeBudgetFull("the decode budget did not answer; retry later", retry_after_s=10) from None
