"""Hand native memory the gateway has freed back to the operating system (glibc's ``malloc_trim``).

glibc's malloc returns freed memory to the system only from the top of its heap, and only above a
threshold that grows on its own; memory freed between chunks still in use stays resident. Under connection
churn every TLS connection's native state (OpenSSL's objects and record buffers, the transport's buffers) is
freed in the middle of the heap, between the long-lived connections' chunks, so the gateway's RSS climbed to
the churn's high-water mark and stayed there while Python's own objects shrank (bench/README.md, "Churn
soak"). ``malloc_trim(0)`` also gives back the whole free pages inside the heap (``madvise``), in every
arena (the verifiers' threads have their own). It walks the free chunks only, so its cost follows what was
freed since the last call, not the heap's size: 0.1–2 ms of CPU per call in the soak.

Why a timer rather than a tuned allocator: a fixed ``M_MMAP_THRESHOLD``/``M_TRIM_THRESHOLD`` (glibc
tunables) only releases the top of the heap and moves every larger buffer to its own ``mmap`` (two system
calls and page faults per buffer); in the soak it did worse than nothing. ``MALLOC_ARENA_MAX`` changes
nothing here: the gateway's event loop is one thread. Where there is no glibc (musl, macOS) nothing runs.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable

log = logging.getLogger("wsgate.memory")

# Seconds. In the soak memory came free in steps every 30-70 s, whatever the period (most likely as the cycle
# collector freed batches of closed connections' objects and their OpenSSL state); every 10 s it goes back
# soon after, for about 0.01 % of a core.
TRIM_INTERVAL = 10.0


def native_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)`` as a callable (1: memory was released), or None without glibc."""
    try:
        libc = ctypes.CDLL(None)  # the symbols the process already has: its own C library
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def call() -> int:
        return int(trim(0))

    return call


class HeapTrimmer:
    """Calls ``trim`` every ``interval`` seconds on the running loop; counts the calls and their CPU time."""

    def __init__(self, trim: Callable[[], int], interval: float = TRIM_INTERVAL) -> None:
        self.trim, self.interval = trim, interval
        self.calls = 0
        self.cpu_seconds = 0.0  # the loop thread's CPU spent trimming, in all
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        started = time.thread_time()
        released = self.trim()
        spent = time.thread_time() - started
        self.calls += 1
        self.cpu_seconds += spent
        log.debug("malloc_trim: %s in %.2f ms", "released memory" if released else "nothing to release", spent * 1e3)
        self.start()


def start_heap_trimmer(interval: float = TRIM_INTERVAL) -> HeapTrimmer | None:
    """A started trimmer on the running loop, or None where the C library has no ``malloc_trim``."""
    trim = native_trim()
    if trim is None:
        return None
    trimmer = HeapTrimmer(trim, interval)
    trimmer.start()
    return trimmer
