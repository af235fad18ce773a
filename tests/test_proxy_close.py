"""The proxy's close relay against real back ends: the client's close code and reason reach a ws back end,
and each side's failure is blamed on that side (only a lost back end closes the client with 1011)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from .conftest import port_of
from .test_websocket_protocol import BINARY, CLOSE, close_frame, frame, proxy_to, upgraded


@pytest.fixture
async def ws_backend() -> AsyncIterator[tuple[int, asyncio.Queue[tuple[int, str]]]]:
    """A ws back end on loopback: its port and a queue of (close code, reason) it received."""
    closes: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        while True:
            msg = await ws.receive()  # not ``async for``: it hides the close frame
            if msg.type is aiohttp.WSMsgType.CLOSE:
                closes.put_nowait((msg.data, msg.extra))
            if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                break
            await ws.send_bytes(msg.data if isinstance(msg.data, bytes) else msg.data.encode())
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, closes
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("sent", "relayed"),
    [
        (close_frame(4001, b"bye now"), (4001, "bye now")),
        (close_frame(1001, b"tab closed"), (1001, "tab closed")),
        (frame(CLOSE), (1000, "")),  # no code at all
        (close_frame(5000), (1001, "client gone")),  # the gateway failed the client with 1002
    ],
    ids=["4001", "1001", "empty", "invalid"],
)
async def test_the_clients_close_code_and_reason_reach_a_ws_back_end(
    start_gateway, ws_backend, sent: bytes, relayed: tuple[int, str]
) -> None:
    port, closes = ws_backend
    gw = await start_gateway(proxy_to(port, "ws"))
    wire = await upgraded(gw.port_of("proxy"), "/proxy")
    wire.send(frame(BINARY, b"hi"))
    assert await wire.frame() == (BINARY, b"hi")
    wire.send(sent)
    await wire.close_code()
    assert await asyncio.wait_for(closes.get(), 5) == relayed
    await wire.finish()


async def test_a_client_that_vanishes_is_relayed_as_going_away(start_gateway, ws_backend) -> None:
    port, closes = ws_backend
    gw = await start_gateway(proxy_to(port, "ws"))
    wire = await upgraded(gw.port_of("proxy"), "/proxy")
    wire.send(frame(BINARY, b"hi"))
    assert await wire.frame() == (BINARY, b"hi")
    wire.writer.transport.abort()
    code, _ = await asyncio.wait_for(closes.get(), 5)
    assert code == 1001


async def test_a_client_lost_mid_stream_is_blamed_on_the_client(start_gateway, caplog) -> None:
    """A back end streaming to a client that resets: the client's write fails, the back end is fine."""
    streaming = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(b"z" * 65536)
                await writer.drain()
                streaming.set()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    async with server:
        gw = await start_gateway(proxy_to(port_of(server)))
        with caplog.at_level(logging.INFO):
            for _ in range(5):
                wire = await upgraded(gw.port_of("proxy"), "/proxy")
                await asyncio.wait_for(streaming.wait(), 5)
                await wire.reader.readexactly(4096)
                wire.writer.transport.abort()
                streaming.clear()
            for _ in range(100):
                if len([r for r in caplog.records if "connection closed" in str(r.msg)]) >= 5:
                    break
                await asyncio.sleep(0.05)
    lost = [r.getMessage() for r in caplog.records if r.name == "wsgate.proxy"]
    assert not [line for line in lost if "back end" in line], lost
    codes = [r.msg["close_code"] for r in caplog.records if isinstance(r.msg, dict) and "close_code" in r.msg]
    assert 1011 not in codes
