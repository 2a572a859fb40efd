"""Polling for a condition the service reaches asynchronously (the index replica catching up,
a keys file re-read): tests wait for the state, never for a fixed time."""

from __future__ import annotations

import time


def wait_for(condition, timeout_s: float = 10.0, interval_s: float = 0.1) -> None:
    """Return once `condition()` is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval_s)
