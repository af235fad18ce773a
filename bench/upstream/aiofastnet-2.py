"""aiofastnet 1.2.0: a transport refuses even read-only calls from another thread, so finalizers run by the
cyclic garbage collector in a worker thread fail and leak the connection.

Versions: aiofastnet 1.2.0, CPython 3.11.7, uvloop 0.23.0 (the stdlib loop behaves the same), Linux x86_64.
Needs only aiofastnet (and uvloop for the comparison).

What happens: every public method of an aiofastnet transport starts with ``_check_thread`` and raises
``RuntimeError: ... called from a wrong thread`` outside the thread that created it, including the read-only
``is_closing()`` and ``get_extra_info()``. Python's cyclic GC runs in whichever thread happens to allocate
when a threshold is crossed, for instance a ``ThreadPoolExecutor`` worker doing blocking work for the loop.
asyncio's ``StreamWriter.__del__`` (3.11+) calls ``transport.is_closing()`` and ``close()`` on an unclosed
writer; run there, it raises (printed as "Exception ignored in"), the transport is never closed, and the
peer never sees EOF: the socket stays open (and registered with the loop) for as long as the process runs.

Expected: as on the unpatched loop (``plain``), the finalizer closes the connection. Read-only accessors
could skip the thread check; ``close()``/``abort()`` from a foreign thread could hand themselves to the
loop (``loop.call_soon_threadsafe(self.close)``) instead of raising.

Command: ``python aiofastnet-2.py``. Exit status 0 when the patched loop leaks and the plain one does not
(so 0 means "reproduced").
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading

import aiofastnet
import uvloop


def from_a_thread(transport: asyncio.BaseTransport) -> dict[str, str]:
    """What the read-only ``is_closing()`` and ``get_extra_info()`` do when called from another thread."""
    calls: dict[str, str] = {}

    def probe() -> None:
        for name, call in (("is_closing", transport.is_closing), ("get_extra_info", transport.get_extra_info)):
            try:
                call(*(("peername",) if name == "get_extra_info" else ()))
                calls[name] = "ok"
            except RuntimeError as exc:
                calls[name] = type(exc).__name__

    worker = threading.Thread(target=probe)
    worker.start()
    worker.join()
    return calls


async def scenario() -> tuple[dict[str, str], bool]:
    """(what read-only calls from another thread did, whether the server saw EOF after GC in a thread)."""
    closed_by_peer = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # returns at EOF
        closed_by_peer.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    transport = writer.transport
    calls = from_a_thread(transport)
    cycle: list[object] = [writer]
    cycle.append(cycle)  # an unclosed writer that only the cyclic collector can free
    del writer, transport, cycle
    gc.disable()  # so that the collection below is the one that finds it
    worker = threading.Thread(target=gc.collect)
    worker.start()
    worker.join()
    gc.enable()
    try:
        await asyncio.wait_for(closed_by_peer.wait(), 2.0)
        eof = True
    except TimeoutError:
        eof = False
    server.close()
    return calls, eof


def run(patched: bool) -> tuple[dict[str, str], bool]:
    loop = uvloop.new_event_loop()
    if patched:
        aiofastnet.patch_loop(loop)
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


def main() -> int:
    results = {"plain": run(patched=False), "aiofastnet": run(patched=True)}
    for name, (calls, eof) in results.items():
        verdict = "server saw EOF" if eof else "server saw no EOF in 2 s: connection leaked"
        print(f"{name:10} from a thread: {calls}; GC in a thread: {verdict}")
    reproduced = results["plain"][1] and not results["aiofastnet"][1]
    print("reproduced" if reproduced else "NOT reproduced")
    return 0 if reproduced else 1


if __name__ == "__main__":
    sys.exit(main())
