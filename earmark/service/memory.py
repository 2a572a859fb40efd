"""Give memory freed by a long request back to the operating system.

A long upload's decoding passes and its engine run allocate hundreds of MB in pieces, on the
worker threads, and free them when the request ends. glibc's allocator keeps what was freed in
its per-thread arenas for reuse, and little of it is returned by itself: the server's resting
RSS rose from about 410 to 700 MB over two 10-minute uploads and stayed there, though nothing
was held (bench/bench_long_upload.py --resting; bench/README.md has the figures). After a
request whose audio was long, `trim` asks glibc to release the free pages of every arena
(`malloc_trim(0)`), which gives that back at once.

The server also caps glibc's arenas (`limit_arenas`, at start, before any worker thread):
by default glibc gives up to 8 per core, each keeping its own free memory, and with 2 the same
five 10-minute uploads (with the trim) peaked at 712 MB instead of 856 and rested at 349 MB
instead of 504.

Elsewhere than glibc (musl, macOS) there is no `malloc_trim` nor `mallopt`: both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

# Audio at least this long makes its request trim when it ends: shorter requests allocate too
# little for the trim's cost (a few to tens of ms, while it holds each arena's lock) to pay.
TRIM_AFTER_AUDIO_S = 60.0

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_MALLOC_TRIM = _malloc_trim()
_trimming = threading.Lock()
_M_ARENA_MAX = -8  # mallopt's parameter number for MALLOC_ARENA_MAX (glibc's malloc.h)


def limit_arenas(arenas: int | None = None) -> int | None:
    """Cap glibc's malloc arenas at `arenas` (default: one per core, at least 2), unless the
    operator set MALLOC_ARENA_MAX; return the cap set, or None when nothing was set. Call it
    before starting threads: an arena once made stays."""
    if _MALLOC_TRIM is None or os.environ.get("MALLOC_ARENA_MAX"):
        return None
    arenas = arenas or max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2)
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return arenas if mallopt(_M_ARENA_MAX, arenas) == 1 else None


def available() -> bool:
    """Whether this process's C library can give freed memory back (glibc)."""
    return _MALLOC_TRIM is not None


def resident_bytes() -> int:
    """This process's resident set size now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> int | None:
    """Release the allocator's free pages to the OS; return how many bytes the resident set
    shrank by (0 when other threads allocated meanwhile), or None when nothing ran (no glibc,
    or another trim is under way: one at a time is enough). Blocking: call it off the loop."""
    if _MALLOC_TRIM is None or not _trimming.acquire(blocking=False):
        return None
    try:
        before = resident_bytes()
        _MALLOC_TRIM(0)
        return max(0, before - resident_bytes())
    finally:
        _trimming.release()
