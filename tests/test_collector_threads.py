"""Nothing a connection leaves behind needs the event loop's thread to be finalised.

aiofastnet's transports refuse every call from another thread (bench/upstream/aiofastnet-2.py), and the
cyclic collector runs in whichever thread allocates when a threshold is crossed: a realm's verifier thread,
an LDAP pool thread. A stream or transport left in a reference cycle would be finalised there: an
"Exception ignored" line and, for an unclosed one, a connection that is never closed. So connections must
end without leaving such cycles; these tests collect in a worker thread after real sessions and look for
what the collector's finalisers raised.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import SECURITY_PEM, client_ssl


class Echo(asyncio.Protocol):
    """A back end without streams, so that only the gateway's own objects are looked at."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def collect_in_a_worker_thread() -> list[Any]:
    """What finalisers raised while another thread collected (``sys.unraisablehook`` sees them)."""
    raised: list[Any] = []
    previous = sys.unraisablehook
    sys.unraisablehook = raised.append
    try:
        worker = threading.Thread(target=gc.collect, name="collector")
        worker.start()
        worker.join()
    finally:
        sys.unraisablehook = previous
    return [f"{r.object!r}: {r.exc_type.__name__}: {r.exc_value}" for r in raised]


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    """Only the test's own collections, so that garbage is still there when the worker thread looks."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_proxy_sessions_leave_nothing_for_a_collector_in_another_thread(
    scheme, start_gateway, http, ca, pem_stores, no_automatic_collection
):
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(Echo, "127.0.0.1", 0)
    try:
        port = backend.sockets[0].getsockname()[1]
        gw = await start_gateway(
            f"service:\n  - name: p\n    accept: {scheme}://localhost:0/p\n    connect: tcp://127.0.0.1:{port}\n"
            "    type: proxy\n" + (SECURITY_PEM if scheme == "wss" else "")
        )
        url = f"{scheme}://localhost:{gw.port_of('p')}/p"
        context = client_ssl(ca) if scheme == "wss" else True  # True: aiohttp's default (no TLS for ws:)
        for ending in ("client closes", "client vanishes"):
            ws = await http.ws_connect(url, ssl=context)
            await ws.send_bytes(b"ping")
            assert (await asyncio.wait_for(ws.receive(), 5)).data == b"ping"
            if ending == "client closes":
                await asyncio.wait_for(ws.close(), 5)
            else:
                ws._response.connection.transport.abort()  # type: ignore[union-attr]
                await asyncio.wait_for(ws.receive(), 5)
        for _ in range(100):  # both sessions ended and deregistered
            if not len(gw.runtime.connections):
                break
            await asyncio.sleep(0.02)
        assert not len(gw.runtime.connections)
        assert collect_in_a_worker_thread() == []
    finally:
        backend.close()


async def test_a_stream_left_in_a_cycle_is_what_this_test_catches(no_automatic_collection):
    """The check above can fail: an unclosed writer in a cycle, collected in a worker thread."""
    patched = getattr(asyncio.get_running_loop().create_connection, "func", None)  # aiofastnet.patch_loop's partial
    if not str(getattr(patched, "__module__", "")).startswith("aiofastnet"):
        pytest.skip("only aiofastnet's transports refuse other threads")
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)  # closes at the client's EOF
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        cycle: list[object] = [writer]
        cycle.append(cycle)
        transport = writer.transport
        del writer, cycle
        raised = collect_in_a_worker_thread()
        assert any("wrong thread" in line for line in raised), raised
        transport.close()
        await asyncio.sleep(0.05)  # the server's side sees EOF and closes
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
