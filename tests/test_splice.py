"""The proxy's splice (transport/splice.py): a picows client and a tcp back end with nothing to decide per
message, carried in the transports' callbacks. Real gateway, real sockets; each test checks that the
connection really is spliced, then what the relay guarantees: bytes in order, counters, close codes both
ways, bounded buffers both ways, the gateway closing it, and a reload that adds rules."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import port_of
from .test_websocket_protocol import BINARY, TEXT, Wire, close_frame, frame, upgraded

PING, PONG, CONT = 0x9, 0xA, 0x0


def config(port: int, rules: str = "", pending: str = "16k") -> str:
    return f"""
service:
  - name: proxy
    accept: ws://127.0.0.1:0/proxy
    connect: tcp://127.0.0.1:{port}
    type: proxy
    properties:
      maximum.pending.bytes: {pending}
    accept-options:
      ws.maximum.message.size: 1M
{rules}"""


class Backend:
    """A tcp back end whose behaviour each test scripts: ``handle(reader, writer)``; keeps what it read."""

    def __init__(self, handle: Callable[[Backend, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]):
        self.script = handle
        self.received = bytearray()
        self.eof = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def read_all(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None = None) -> None:
        """Read (echoing if ``writer``) until EOF."""
        while data := await reader.read(65536):
            self.received += data
            if writer is not None:
                writer.write(data)
                await writer.drain()
        self.eof.set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return port_of(self.server)


@contextlib.asynccontextmanager
async def backend_doing(
    handle: Callable[[Backend, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[Backend]:
    backend = Backend(handle)
    backend.server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    try:
        yield backend
    finally:
        backend.server.close()
        for writer in backend.writers:
            writer.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(backend.server.wait_closed(), 2)


async def echo(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await backend.read_all(reader, writer)


async def the_connection(gw: Any) -> Any:
    for _ in range(100):
        if gw.runtime.connections:
            (session,) = gw.runtime.connections
            return session
        await asyncio.sleep(0.02)
    raise AssertionError("no connection registered")


async def spliced(gw: Any) -> Any:
    """The live session, once its channel is spliced to the back end."""
    session = await the_connection(gw)
    for _ in range(100):
        if getattr(session.channel, "splice", None) is not None:
            return session
        await asyncio.sleep(0.02)
    raise AssertionError("the connection was not spliced")


async def received_bytes(wire: Wire, size: int) -> tuple[bytes, int]:
    """Binary frames from the gateway until ``size`` bytes came: the bytes and how many frames carried them."""
    got, frames = bytearray(), 0
    while len(got) < size:
        opcode, payload = await wire.frame()
        assert opcode == BINARY, (opcode, payload)
        got += payload
        frames += 1
    return bytes(got), frames


def access_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    (line,) = [r.msg for r in caplog.records if r.name == "wsgate.access" and isinstance(r.msg, dict)]
    return line


async def closed_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    for _ in range(200):
        lines = [r.msg for r in caplog.records if r.name == "wsgate.access" and isinstance(r.msg, dict)]
        if lines:
            return access_line(caplog)
        await asyncio.sleep(0.02)
    raise AssertionError("no access line")


async def test_bytes_pass_in_order_and_the_counters_are_what_was_sent(start_gateway, caplog) -> None:
    caplog.set_level(logging.INFO, "wsgate.access")
    async with backend_doing(echo) as backend:
        gw = await start_gateway(config(backend.port))
        wire = await upgraded(gw.port_of("proxy"), "/proxy")
        messages: list[tuple[int, bytes]] = [
            (BINARY, b"a"),
            (BINARY, bytes(range(256)) * 80),  # 20 KiB: more than maximum.pending.bytes in one message
            (TEXT, "café ☕".encode()),  # 6 characters, 9 bytes: text is counted in characters
            (BINARY, b""),
        ]
        sent = b""
        for opcode, payload in messages:
            wire.send(frame(opcode, payload))
            sent += payload
            if payload:  # echoed: the next message goes in another read
                got, _ = await received_bytes(wire, len(payload))
                assert got == payload
        await spliced(gw)
        wire.send(close_frame(1000))
        assert await wire.close_code() == 1000
        await asyncio.wait_for(backend.eof.wait(), 5)
        await wire.finish()
        line = await closed_line(caplog)
    assert bytes(backend.received) == sent
    assert line["messages_in"] == 4
    assert line["bytes_in"] == 1 + 20480 + 6 + 0
    assert line["bytes_out"] == len(sent)
    assert line["messages_out"] >= 3
    assert line["close_code"] == 1000


async def test_several_messages_in_one_read_reach_the_back_end_even_when_a_ping_ends_the_read(
    start_gateway,
) -> None:
    """picows answers a ping itself, so a read whose last frame is a ping never says "last" to the splice:
    the messages before it must still be written."""
    async with backend_doing(echo) as backend:
        gw = await start_gateway(config(backend.port))
        wire = await upgraded(gw.port_of("proxy"), "/proxy")
        wire.send(frame(BINARY, b"warm"))
        assert await received_bytes(wire, 4) == (b"warm", 1)
        await spliced(gw)
        burst = (
            frame(BINARY, b"one,")
            + frame(TEXT, b"two,")
            + frame(BINARY, b"thr", fin=False)
            + frame(CONT, b"ee,")
            + frame(BINARY, b"four")
            + frame(PING, b"p")
        )
        wire.send(burst)  # one write: one read at the gateway, most likely
        want = b"one,two,three,four"
        got = bytearray()
        while len(got) < len(want):
            opcode, payload = await wire.frame()
            if opcode == BINARY:
                got += payload
            else:
                assert (opcode, payload) == (PONG, b"p")
        assert bytes(got) == want
        assert bytes(backend.received) == b"warm" + want
        wire.send(close_frame(1000))
        await wire.close_code()
        await wire.finish()


async def test_the_back_ends_eof_closes_the_client_with_1000_after_its_last_bytes(start_gateway) -> None:
    async def says_bye(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend.received += await reader.readexactly(2)
        writer.write(b"bye")
        await writer.drain()
        writer.write_eof()
        await backend.read_all(reader)

    async with backend_doing(says_bye) as backend:
        gw = await start_gateway(config(backend.port))
        wire = await upgraded(gw.port_of("proxy"), "/proxy")
        await spliced(gw)
        wire.send(frame(BINARY, b"hi"))
        assert await received_bytes(wire, 3) == (b"bye", 1)
        assert await wire.close_code() == 1000
        await wire.finish()


async def test_a_back_end_that_resets_closes_the_client_with_1011(start_gateway, caplog) -> None:
    async def resets(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend.received += await reader.readexactly(2)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    caplog.set_level(logging.WARNING, "wsgate.proxy")
    async with backend_doing(resets) as backend:
        gw = await start_gateway(config(backend.port))
        wire = await upgraded(gw.port_of("proxy"), "/proxy")
        await spliced(gw)
        wire.send(frame(BINARY, b"hi"))
        assert await wire.close_code() == 1011
        await wire.finish()
    assert any("lost" in r.getMessage() for r in caplog.records if r.name == "wsgate.proxy")


async def test_the_clients_close_half_closes_the_back_end_and_its_bytes_all_arrive(start_gateway) -> None:
    async def reads(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await backend.read_all(reader)

    async with backend_doing(reads) as backend:
        gw = await start_gateway(config(backend.port))
        wire = await upgraded(gw.port_of("proxy"), "/proxy")
        await spliced(gw)
        wire.send(b"".join(frame(BINARY, bytes([i]) * 1000) for i in range(50)) + close_frame(4000, b"done"))
        assert await wire.close_code() == 1000  # the gateway answers the client's close
        await asyncio.wait_for(backend.eof.wait(), 5)
        await wire.finish()
    assert bytes(backend.received) == b"".join(bytes([i]) * 1000 for i in range(50))


async def test_the_gateway_closing_a_spliced_connection_closes_both_sides(start_gateway) -> None:
    """Revocation, expiry and the management API end a session the same way: ``LiveSession.end``."""
    async with backend_doing(echo) as backend:
        gw = await start_gateway(config(backend.port))
        wire = await upgraded(gw.port_of("proxy"), "/proxy")
        session = await spliced(gw)
        session.expire("session expired")
        assert await wire.close_code() == 1008
        wire.send(close_frame(1000))
        await asyncio.wait_for(backend.eof.wait(), 5)
        await wire.finish()


async def test_neither_side_reading_keeps_the_gateways_buffers_bounded(start_gateway) -> None:
    """A client that sends and never reads, a back end that floods and never reads: both ways the gateway
    stops reading instead of buffering, and the splice stays in place."""
    flooding = {"sent": 0, "blocked": False}
    stalled = asyncio.Event()

    async def floods(backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"f" * 65536
        try:
            for _ in range(1024):  # at most 64 MiB
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 1.0)
                flooding["sent"] += len(chunk)
        except TimeoutError:
            flooding["blocked"] = True
        await stalled.wait()

    async with backend_doing(floods) as backend:
        gw = await start_gateway(config(backend.port))
        wire = await upgraded(gw.port_of("proxy"), "/proxy")
        wire.writer.transport.set_write_buffer_limits(high=1 << 30)  # the client queues; we watch the gateway
        session = await spliced(gw)
        message = frame(BINARY, b"c" * 65536)
        for pushed in range(1, 401):  # 25 MiB offered by the client
            wire.send(message)
            if pushed % 16 == 0:
                await asyncio.sleep(0.01)
        leg, channel = session.context, session.channel

        def state() -> tuple[int, int]:
            return leg.transport.get_write_buffer_size(), channel.bytes_in

        for _ in range(100):  # until both ways are blocked and nothing moves any more
            before = state()
            await asyncio.sleep(0.2)
            if flooding["blocked"] and channel.paused and leg.paused and state() == before:
                break
        else:
            raise AssertionError(f"still moving: {flooding}, {state()}")
        assert flooding["sent"] < 64 * 1024 * 1024
        assert wire.writer.transport.get_write_buffer_size() > 0  # the gateway stopped reading the client
        assert channel.splice is not None
        # toward the back end: maximum.pending.bytes plus at most the one read that filled it (picows reads
        # into a buffer that grows with the messages, bounded by their maximum size); toward the client:
        # maximum.pending.bytes plus one read of the back end
        assert leg.transport.get_write_buffer_size() <= 16 * 1024 + 2 * 1024 * 1024
        assert channel.transport.get_write_buffer_size() <= 16 * 1024 + 2 * 65536 + 1024
        assert channel.bytes_in < 400 * 65536 // 2  # most of what the client offered is still in its own queue
        stalled.set()
        wire.writer.transport.abort()


async def test_a_reload_that_adds_rules_decides_the_next_message_both_ways(start_gateway, tmp_path: Path) -> None:
    async with backend_doing(echo) as backend:
        gw = await start_gateway(config(backend.port))
        wire = await upgraded(gw.port_of("proxy"), "/proxy")
        wire.send(frame(BINARY, b"before"))
        assert await received_bytes(wire, 6) == (b"before", 1)
        session = await spliced(gw)
        rules = "    authorization-rule:\n      - allow: send\n        type: text\n"
        (tmp_path / "gateway.yaml").write_text(config(backend.port, rules))
        ok, changes = await gw.reload()
        assert ok and "rules of proxy replaced" in changes, changes
        wire.send(frame(BINARY, b"binary is refused now"))
        wire.send(frame(TEXT, b"text passes"))
        for _ in range(100):
            if bytes(backend.received).endswith(b"text passes"):
                break
            await asyncio.sleep(0.02)
        assert bytes(backend.received) == b"before" + b"text passes"
        assert session.channel.splice is None  # the relay and its guard carry it now
        with pytest.raises(TimeoutError):  # no receive rule: the echo is refused on its way to the client
            await asyncio.wait_for(wire.reader.readexactly(1), 0.5)
        assert session.channel.messages_in == 3 and session.channel.messages_out == 1
        wire.send(close_frame(1000))
        assert await wire.close_code() == 1000
        await wire.finish()


async def test_text_and_binary_both_reach_a_tcp_back_end_as_bytes(start_gateway) -> None:
    async with backend_doing(echo) as backend:
        gw = await start_gateway(config(backend.port))
        wire = await upgraded(gw.port_of("proxy"), "/proxy")
        await spliced(gw)
        wire.send(frame(TEXT, "ünïcode".encode()))
        got, _ = await received_bytes(wire, len("ünïcode".encode()))
        assert got == "ünïcode".encode()
        wire.send(frame(TEXT, b"\xff\xfe"))  # not UTF-8: 1007, and nothing of it forwarded
        assert await wire.close_code() == 1007
        await wire.finish()
        await asyncio.wait_for(backend.eof.wait(), 5)
    assert bytes(backend.received) == "ünïcode".encode()
