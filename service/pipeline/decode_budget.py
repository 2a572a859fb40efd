"""A budget of audio seconds being decoded at once, shared by every request in flight.

Memory grows with the audio being decoded, not with the bytes uploaded (an 18 KB FLAC can hold
an hour of silence), so a limit on uploads alone cannot keep a burst of long recordings from
exhausting memory. Each decode reserves its audio's duration (the header's, or a bound worked
out from the upload's size when the header says nothing) before it starts; beyond the budget a
request waits a little, then gets a 503 with Retry-After instead of pushing the process into OOM.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

from service.api.errors import ApiError


class DecodeBudget:
    """Seconds of audio that may be decoding at once; a reservation larger than the whole
    budget is cut to it, so one long recording still runs when nothing else does."""

    def __init__(self, seconds: float, wait_s: float = 10.0, on_change=None, on_refused=None) -> None:
        self.seconds = seconds
        self.wait_s = wait_s
        self.in_use = 0.0
        self._changed = asyncio.Condition()
        self._on_change = on_change or (lambda seconds: None)
        self._on_refused = on_refused or (lambda: None)

    @contextlib.asynccontextmanager
    async def reserve(self, seconds: float) -> AsyncIterator[None]:
        """Hold `seconds` of the budget for the duration of the block."""
        wanted = min(max(seconds, 0.0), self.seconds)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.in_use + wanted <= self.seconds), self.wait_s)
            except asyncio.TimeoutError:
                self._on_refused()
                retry = max(1, math.ceil(self.wait_s))
                raise ApiError(
                    503, f"{self.in_use:.0f} s of audio are being decoded, the most this server takes at once; "
                    f"retry after {retry} s", headers={"Retry-After": str(retry)},
                ) from None
            self.in_use += wanted
            self._on_change(self.in_use)
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= wanted
                self._on_change(self.in_use)
                self._changed.notify_all()
