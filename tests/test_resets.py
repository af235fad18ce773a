"""Clients that reset (RST) mid-conversation: every connection, its descriptors and its back end are released.

Real sockets on the production loop (conftest's loop factory: uvloop + aiofastnet); nothing is mocked.
A message longer than one read followed by a reset is the case uvloop drops (``transport/liveness.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from .conftest import SECURITY_PEM, client_ssl, port_of
from .test_websocket_protocol import BINARY, frame, request_bytes

CLIENTS = 40
LONG = 300 * 1024  # longer than one read of the gateway's transport (256 KiB)


class OpenCountingBackend:
    """A TCP echo back end that knows how many of its connections are still open."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def backend() -> AsyncIterator[OpenCountingBackend]:
    counting = OpenCountingBackend()
    counting.server = await asyncio.start_server(counting.handle, "127.0.0.1", 0)
    yield counting
    counting.server.close()
    for writer in counting.writers:  # what the gateway failed to close must not hang the test
        writer.transport.abort()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(counting.server.wait_closed(), 2)


def config(scheme: str, backend_port: int) -> str:
    host = "localhost" if scheme == "wss" else "127.0.0.1"
    services = f"""
service:
  - name: echo
    accept: {scheme}://{host}:0/echo
    type: echo
    accept-options:
      ws.maximum.message.size: 1m
  - name: proxy
    accept: {scheme}://{host}:0/proxy
    connect: tcp://127.0.0.1:{backend_port}
    type: proxy
    accept-options:
      ws.maximum.message.size: 1m
"""
    return (SECURITY_PEM if scheme == "wss" else "") + services


def reset_after_a_message(port: int, path: str, context: ssl.SSLContext | None, size: int, read: bool) -> None:
    """One blocking client: upgrade, send a message of ``size`` bytes (read its echo or not), then RST."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="localhost")
    try:
        sock.sendall(request_bytes(path, Host="localhost" if context else "127.0.0.1"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(frame(BINARY, b"x" * size))
        if read:
            sock.recv(16)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # an RST, not a FIN


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` until true or ``timeout`` seconds passed (generous: the machine is shared)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.mark.parametrize(("size", "read"), [(LONG, False), (5, True)], ids=["long-unread", "short-read"])
@pytest.mark.parametrize("scheme", ["ws", "wss"])
@pytest.mark.parametrize("service", ["echo", "proxy"])
async def test_clients_that_reset_after_a_message_are_released(
    start_gateway, pem_stores, ca, backend, scheme: str, service: str, size: int, read: bool
) -> None:
    assert backend.server is not None
    gw = await start_gateway(config(scheme, port_of(backend.server)))
    port = gw.port_of(service)
    context = client_ssl(ca) if scheme == "wss" else None
    clients = [
        asyncio.to_thread(reset_after_a_message, port, f"/{service}", context, size, read) for _ in range(CLIENTS)
    ]
    await asyncio.gather(*clients)
    assert await until(lambda: not gw.runtime.connections), f"{len(gw.runtime.connections)} connections still open"
    if service == "proxy":
        assert backend.accepted == CLIENTS
        assert await until(lambda: backend.open == 0), f"{backend.open} back-end connections still open"


async def test_a_back_end_that_resets_after_a_long_message_releases_its_clients(start_gateway) -> None:
    """The other side of the proxy: a tcp back end sends more than one read, then resets."""
    listening = socket.create_server(("127.0.0.1", 0))
    listening.settimeout(20)
    accepted: list[socket.socket] = []
    try:
        gw = await start_gateway(config("ws", listening.getsockname()[1]))
        count = CLIENTS // 4
        clients = [threading.Thread(target=read_until_closed, args=(gw.port_of("proxy"),)) for _ in range(count)]
        for client in clients:
            client.start()
        accepted += [(await asyncio.to_thread(listening.accept))[0] for _ in range(count)]
        assert await until(lambda: len(gw.runtime.connections) == count)
        for sock in accepted:  # with the gateway's loop held: it finds the data and the RST together
            sock.sendall(b"y" * LONG)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        time.sleep(0.2)
        assert await until(lambda: not gw.runtime.connections), f"{len(gw.runtime.connections)} still open"
        assert await until(lambda: not any(client.is_alive() for client in clients)), "clients still open"
    finally:
        listening.close()
        for sock in accepted:
            sock.close()


def read_until_closed(port: int) -> None:
    """A blocking client of the proxy that reads whatever comes until the gateway closes (or 30 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request_bytes("/proxy"))
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
