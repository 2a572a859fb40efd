"""The engine pool's admission: a slot is held until its work really ends."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from earmark.service.engines.pool import EnginePool
from earmark.service.engines.base import Capabilities, Engine, Transcript
from earmark.service.engines.errors import EngineBusy, EngineFailure, EngineTimeout, EngineUnavailable
from earmark.service.metrics import Metrics
from earmark.service.pipeline.profile import Profile


class _StuckEngine(Engine):
    """A real Engine whose transcribe blocks until released (a hung model, in a thread)."""

    name = "stuck"
    model_id = "stuck"
    revision = "1"
    capabilities = Capabilities(languages=("en",), default_language="en")

    def __init__(self) -> None:
        self.release = threading.Event()

    def transcribe(self, pcm_16k: np.ndarray, profile: Profile) -> Transcript:
        self.release.wait(60)
        return Transcript(text="done", normalized_text="done", language="en")


def test_a_timed_out_job_keeps_its_slot_until_it_ends():
    engine = _StuckEngine()

    async def run() -> None:
        pool = EnginePool(engine, Metrics(), workers=1, max_waiting=0, timeout_s=0.0)
        profile = Profile(engine="stuck", model="m", revision="1", language="en", use_itn=False)
        with pytest.raises(EngineTimeout):
            await pool.transcribe(np.zeros(160, np.float32), profile)
        assert pool.in_flight == 1  # the thread still runs: its slot is still taken
        with pytest.raises(EngineBusy):
            await pool.transcribe(np.zeros(160, np.float32), profile)
        engine.release.set()
        for _ in range(200):
            if pool.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert pool.in_flight == 0
        pool.close()

    asyncio.run(run())


def _die_at_start() -> Engine:
    """A worker-process engine factory that dies as the worker starts (a model that crashes
    its process while loading)."""
    import os

    os._exit(3)


class _DiesAtStartEngine(_StuckEngine):
    name = "dies"

    def worker_spec(self) -> tuple:
        return (_die_at_start, ())


def test_a_pool_whose_workers_die_at_start_answers_errors_and_frees_its_slots():
    async def run() -> None:
        pool = EnginePool(_DiesAtStartEngine(), Metrics(), workers=1, max_waiting=2, timeout_s=30.0)
        pool.warm_up()  # the worker dies here, before any request
        profile = Profile(engine="dies", model="m", revision="1", language="en", use_itn=False)
        await asyncio.sleep(1.0)
        for _ in range(4):  # more requests than slots: a leaked slot would turn into EngineBusy
            with pytest.raises((EngineFailure, EngineUnavailable)):
                await pool.transcribe(np.zeros(160, np.float32), profile)
        for _ in range(100):
            if pool.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert pool.in_flight == 0
        pool.close()

    asyncio.run(run())
