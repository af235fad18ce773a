"""observe/memory.py: glibc's malloc_trim gives freed native memory back, on a timer on the gateway's loop.

The soak in bench/ (``--scenarios soak``) is the proof at scale; these tests check the mechanism."""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys
import textwrap

import pytest

from wsgate.observe.memory import HeapTrimmer, native_trim, start_heap_trimmer

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")

# Native blocks freed between blocks still in use: glibc keeps them resident until malloc_trim.
FRAGMENT = textwrap.dedent("""
    import ctypes, json
    from wsgate.observe.memory import native_trim

    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for _ in range(4000):  # 17 KiB each (a TLS record buffer's size), under the mmap threshold: in the heap
        block = libc.malloc(17 * 1024)
        ctypes.memset(block, 1, 17 * 1024)
        blocks.append(block)
    for block in blocks[::2]:
        libc.free(block)
    freed = rss()
    released = native_trim()()
    print(json.dumps({"freed": freed, "trimmed": rss(), "released": released}))
""")


@glibc
def test_malloc_trim_returns_memory_freed_between_live_blocks() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, timeout=30, check=True)
    rss = __import__("json").loads(out.stdout)
    assert rss["released"] == 1
    # 2,000 freed blocks of 17 KiB: about 34 MiB, of which the whole pages (3 of each block's 4-5) go back.
    assert rss["freed"] - rss["trimmed"] > 16 * 2**20, rss


@glibc
def test_glibc_has_malloc_trim() -> None:
    assert native_trim() is not None


async def test_the_trimmer_calls_trim_on_its_interval_until_stopped() -> None:
    calls: list[float] = []
    third = asyncio.get_running_loop().create_future()

    def trim() -> int:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 3:
            third.set_result(None)
        return 0

    trimmer = HeapTrimmer(trim, interval=0.02)
    trimmer.start()
    await asyncio.wait_for(third, 5)
    trimmer.stop()
    await asyncio.sleep(0.1)
    assert len(calls) == 3 and trimmer.calls == 3  # none after stop()
    assert all(later - earlier >= 0.019 for earlier, later in zip(calls, calls[1:], strict=False))
    assert trimmer.cpu_seconds >= 0.0


@glibc
async def test_started_on_the_running_loop_where_glibc_is() -> None:
    trimmer = start_heap_trimmer(interval=0.01)
    assert trimmer is not None
    try:
        await asyncio.sleep(0.05)
        assert trimmer.calls >= 1
    finally:
        trimmer.stop()
