"""Run the engine off the event loop, on a bounded pool with a bounded queue.

The engine is the expensive, slow part; letting requests pile up behind it without bound would
turn a burst into timeouts for everyone. When `workers` are busy and `max_waiting` requests
already wait, the next one is refused at once (HTTP 503 with Retry-After).

Engines that hold the GIL while decoding (pocketsphinx does, for seconds at a time) run in
worker processes, since a thread would freeze the event loop and with it every cache hit;
engines that release it (torch) run in threads and share the loaded model. Engines that only
wait on a remote server (`AsyncEngine`: the upstream engines) are awaited on the event loop
itself, `workers` at a time: a thread or a process per waiting request would buy nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from earmark.service.engines.base import AsyncEngine, Engine, Transcript
from earmark.service.engines.errors import EngineBusy, EngineFailure, EngineOptionError, EngineTimeout, EngineUnavailable
from earmark.service.engines.transcript_limit import TranscriptLimit, TranscriptTooLong
from earmark.service.metrics import Metrics
from earmark.service.pipeline.profile import Profile


class EnginePool:
    """A fixed number of engine worker threads and a cap on requests waiting for them."""

    def __init__(self, engine: Engine, metrics: Metrics, *, workers: int = 1, max_waiting: int = 16,
                 timeout_s: float = 120.0, transcript_limit: TranscriptLimit | None = None) -> None:
        self.timeout_s = timeout_s
        self.transcript_limit = transcript_limit or TranscriptLimit()
        self.engine = engine
        self.metrics = metrics
        self.workers = workers
        self.max_waiting = max_waiting
        self._executor = _executor_for(engine, workers)
        self._in_flight = 0
        self._recent_seconds = 1.0
        self._async_slots = asyncio.Semaphore(workers)

    @property
    def in_flight(self) -> int:
        """Engine jobs admitted and not yet ended (running, queued, or timed out but running)."""
        return self._in_flight

    async def transcribe(self, pcm_16k: np.ndarray, profile: Profile) -> tuple[Transcript, float]:
        """Transcribe on a worker; returns the transcript and the engine's seconds. A transcript
        longer than its audio can hold is refused (`TranscriptTooLong`: a 502, nothing cached),
        whichever engine made it.

        A slot is held until the work really ends: a request that timed out or went away does
        not free it while its job still runs.
        """
        try:
            if isinstance(self.engine, AsyncEngine):
                transcript, seconds = await self._transcribe_async(self.engine, pcm_16k, profile)
            else:
                transcript, seconds = await self._transcribe_on_worker(pcm_16k, profile)
            self.transcript_limit.check(transcript, len(pcm_16k) / 16000)
        except TranscriptTooLong:
            self.metrics.transcripts_too_long.inc()
            raise
        return transcript, seconds

    async def _transcribe_on_worker(self, pcm_16k: np.ndarray, profile: Profile) -> tuple[Transcript, float]:
        """Run a thread or process engine's job on the pool, within the allowance."""
        if self._in_flight >= self.workers + self.max_waiting:
            raise EngineBusy(retry_after_s=max(1, int(self._recent_seconds * self.max_waiting / self.workers)))
        self._in_flight += 1
        self.metrics.engine_queue.set(self._in_flight)
        executor = self._executor
        try:
            job = self._submit(executor, pcm_16k, profile)
        except BrokenProcessPool:
            # The pool broke before this job was given to it (a worker died while idle or at
            # start): the job can run on a fresh pool.
            self._replace_broken(executor)
            executor = self._executor
            try:
                job = self._submit(executor, pcm_16k, profile)
            except BrokenProcessPool as exc:
                self._in_flight -= 1
                self.metrics.engine_queue.set(self._in_flight)
                raise EngineUnavailable("the engine's worker processes die as they start; see the service log") from exc
        job.add_done_callback(self._release)
        # A fixed allowance plus twice the audio's length: slow is fine, hung is not.
        allowance = self.timeout_s + 2.0 * len(pcm_16k) / 16000
        try:
            transcript, seconds = await asyncio.wait_for(asyncio.shield(job), allowance)
        except asyncio.TimeoutError as exc:
            # The job keeps its slot until it ends; other requests' jobs are not touched.
            raise EngineTimeout(f"the engine did not finish within {allowance:.0f} s") from exc
        except BrokenProcessPool as exc:
            self._replace_broken(executor)
            raise EngineFailure("the engine worker process died; it has been restarted, retry the request") from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if job.cancelled() and (task is None or task.cancelling() == 0):
                # Our job, not our request, was cancelled: its pool broke and was replaced.
                raise EngineFailure("the engine worker pool was restarted; retry the request") from None
            raise
        self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * seconds
        self.metrics.engine_seconds.inc(seconds)
        self.metrics.engine_runs.inc()
        return transcript, seconds

    async def _transcribe_async(self, engine: AsyncEngine, pcm_16k: np.ndarray, profile: Profile) -> tuple[Transcript, float]:
        """Await an I/O-bound engine on this loop, `workers` at once, with the same queue bound
        and allowance as a worker's job; a request that goes away cancels its call."""
        if self._in_flight >= self.workers + self.max_waiting:
            raise EngineBusy(retry_after_s=max(1, int(self._recent_seconds * self.max_waiting / self.workers)))
        self._in_flight += 1
        self.metrics.engine_queue.set(self._in_flight)
        allowance = self.timeout_s + 2.0 * len(pcm_16k) / 16000
        try:
            async with asyncio.timeout(allowance):
                async with self._async_slots:
                    started = time.perf_counter()
                    transcript = await engine.transcribe_async(pcm_16k, profile, allowance)
                    seconds = time.perf_counter() - started
        except TimeoutError as exc:
            raise EngineTimeout(f"the engine did not finish within {allowance:.0f} s") from exc
        finally:
            self._in_flight -= 1
            self.metrics.engine_queue.set(self._in_flight)
        self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * seconds
        self.metrics.engine_seconds.inc(seconds)
        self.metrics.engine_runs.inc()
        return transcript, seconds

    def _submit(self, executor: Executor, pcm_16k: np.ndarray, profile: Profile) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if isinstance(executor, ProcessPoolExecutor):
            return loop.run_in_executor(executor, _transcribe_in_worker, pcm_16k, profile)
        return loop.run_in_executor(executor, _timed_transcribe, self.engine, pcm_16k, profile)

    def _release(self, job: asyncio.Future) -> None:
        self._in_flight -= 1
        self.metrics.engine_queue.set(self._in_flight)
        if not job.cancelled():
            job.exception()  # retrieved: a failure nobody awaits any more is not "never retrieved"

    def _replace_broken(self, executor: Executor) -> None:
        """Replace a process pool that broke, once however many calls saw it fail (its queued
        jobs are cancelled: their requests get EngineFailure, and their slots are freed)."""
        if not isinstance(executor, ProcessPoolExecutor) or executor is not self._executor:
            return
        self._executor = _executor_for(self.engine, self.workers)
        executor.shutdown(wait=False, cancel_futures=True)

    def warm_up(self) -> None:
        """Start the worker processes now (loading the model takes a second or two), or run a
        thread engine's `warm_up` on each worker thread, so the first miss does not pay for
        it. Returns at once. An `AsyncEngine` has nothing to warm: it is started by the app."""
        if isinstance(self.engine, AsyncEngine):
            return
        if isinstance(self._executor, ProcessPoolExecutor):
            for _ in range(self.workers):
                self._executor.submit(_worker_ready)
        else:
            for _ in range(self.workers):
                self._executor.submit(self.engine.warm_up)

    def close(self) -> None:
        """Stop the workers and release the engine. Worker processes are terminated: they hold
        nothing to save, and a polite shutdown kept the service from exiting for 2 s."""
        executor = self._executor
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        self.engine.close()


def _executor_for(engine: Engine, workers: int) -> Executor:
    spec = engine.worker_spec()
    if spec is None:
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_load_worker_engine,
        initargs=(spec, os.getpid()),
    )


def _timed_transcribe(engine: Engine, pcm_16k: np.ndarray, profile: Profile) -> tuple[Transcript, float]:
    started = time.perf_counter()
    try:
        transcript = engine.transcribe(pcm_16k, profile)
    except (EngineFailure, EngineUnavailable, EngineOptionError):
        raise
    except Exception as exc:  # an engine bug must become a 502, not take the service down
        raise EngineFailure(f"{engine.name} failed: {type(exc).__name__}: {exc}") from exc
    return transcript, time.perf_counter() - started


_worker_engine: Engine | None = None
ORPHAN_CHECK_S = 1.0


def _load_worker_engine(spec, parent_pid: int) -> None:
    """Worker process start: die with the service, then build the engine once."""
    global _worker_engine
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    # Belt and braces: the death signal follows the parent *thread*, only covers a parent that
    # dies after this call, and a worker's own copy of the task queue keeps it from seeing the
    # parent's end close. So watch the parent (given by the parent: it may be gone already).
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    factory, args = spec
    _worker_engine = factory(*args)


def _worker_ready() -> bool:
    return _worker_engine is not None


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(0)


def _transcribe_in_worker(pcm_16k: np.ndarray, profile: Profile) -> tuple[Transcript, float]:
    assert _worker_engine is not None
    return _timed_transcribe(_worker_engine, pcm_16k, profile)
