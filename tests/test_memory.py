"""Memory a long request freed goes back to the OS (service/memory.py): the allocator's trim
really releases fragmented free memory, a request over a minute of audio runs it, and the
allocator's arenas are capped."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from earmark.service import memory
from earmark.service.api.app import create_app
from tests.audio_tools import encode, read_pcm
from tests.http_helpers import post
from tests.test_uploads import metric_of
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(not memory.available(), reason="malloc_trim is glibc's; this C library has none")

MB = 1 << 20


def test_trim_gives_back_what_a_thread_freed_around_what_it_kept():
    """The service's case in small: a worker thread allocates in pieces (its own arena), frees
    most of them but keeps a few scattered ones, so the arena cannot shrink from its end. The
    resident set stays up until the trim releases the free pages between the kept pieces."""
    kept: list[bytearray] = []

    def allocate_then_free_most() -> None:
        pieces = [bytearray(b"x" * (96 * 1024)) for _ in range(3000)]  # 288 MB, under the mmap threshold
        kept.extend(pieces[::100])  # every 100th stays alive: the free space lies between them
        pieces.clear()

    worker = threading.Thread(target=allocate_then_free_most)
    worker.start()
    worker.join()
    resident = memory.resident_bytes()
    released = memory.trim()
    assert released is not None and released >= 150 * MB, (resident / MB, (released or 0) / MB)
    assert len(kept) == 30 and all(piece[:1] == b"x" for piece in kept)


def test_a_request_over_a_minute_of_audio_trims_and_a_short_one_does_not(settings, engine, recorded):
    pcm, rate = read_pcm(recorded)
    long_wav = encode(np.tile(pcm, int(70 * rate) // len(pcm) + 1), rate, fmt="wav", codec="pcm_s16le")
    with TestClient(create_app(settings, engine=engine)) as client:
        assert post(client, recorded).status_code == 200
        assert metric_of(client, "earmark_memory_trims_total") == 0
        assert post(client, long_wav, path="/lookup").status_code == 200
        wait_for(lambda: metric_of(client, "earmark_memory_trims_total") == 1)


_ARENAS = """
import ctypes, sys, threading
sys.path.insert(0, sys.argv[1])
from earmark.service import memory
if sys.argv[2] == "capped":
    assert memory.limit_arenas(2) == 2
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    blocks = [bytearray(4096) for _ in range(100)]  # each new thread's first malloc picks its arena
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
"""


def test_the_server_caps_the_allocators_arenas(tmp_path):
    """Eight threads allocating at once get an arena each from glibc (up to 8 per core), each
    holding its own freed memory; capped, they share two."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}

    def arenas(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _ARENAS, root, mode], capture_output=True, text=True, env=env,
                              check=True)
        return sum(line.startswith("Arena ") for line in done.stderr.splitlines())

    assert arenas("capped") == 2
    assert arenas("default") > 2
