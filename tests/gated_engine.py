"""A real engine behind a gate the test opens, so that "while the engine runs" or "just as the
result is written" is a certainty rather than a race. The transcript is the real engine's; only
its moment is chosen. Runs in threads (no worker process), so the gate is shared."""

from __future__ import annotations

import threading

from earmark.service.engines.base import Engine, Transcript
from earmark.service.pipeline.profile import Profile

WAIT_S = 60.0  # generous: a busy 2-core machine


class GatedEngine(Engine):
    """Delegates to `inner`; each call waits for `gate`, before transcribing (`hold="before"`)
    or after, with the transcript ready (`hold="after"`). `started` is set when a call has
    arrived, `transcribed` when one has its transcript."""

    def __init__(self, inner: Engine, *, open_now: bool = True, hold: str = "before") -> None:
        self.inner = inner
        self.name, self.model_id, self.revision = inner.name, inner.model_id, inner.revision
        self.capabilities = inner.capabilities
        self.hold = hold
        self.gate = threading.Event()
        self.started = threading.Event()
        self.transcribed = threading.Event()
        if open_now:
            self.gate.set()

    def transcribe(self, pcm_16k, profile: Profile) -> Transcript:
        """Wait for the gate (before or after transcribing, as chosen), then return the transcript."""
        self.started.set()
        if self.hold == "before":
            assert self.gate.wait(WAIT_S), "the test never opened the gate"
        transcript = self.inner.transcribe(pcm_16k, profile)
        self.transcribed.set()
        if self.hold == "after":
            assert self.gate.wait(WAIT_S), "the test never opened the gate"
        return transcript
