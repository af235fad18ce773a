"""Proxy service against real back ends: TCP echo, TLS echo, WebSocket echo."""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiohttp
import pytest
from aiohttp import web

from .conftest import SECURITY_PEM, port_of, tcp_echo_server


def proxy_config(connect: str, extra_props: str = "", security: str = "") -> str:
    return f"""
service:
  - name: proxy
    accept: ws://127.0.0.1:0/proxy
    connect: {connect}
    type: proxy
    properties:
      maximum.pending.bytes: 16k
{extra_props}
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
{security}"""


async def test_proxy_to_tcp_echo_full_duplex(start_gateway, http):
    backend, received = await tcp_echo_server()
    async with backend:
        gw = await start_gateway(proxy_config(f"tcp://127.0.0.1:{port_of(backend)}"))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            await ws.send_bytes(b"ping")
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.BINARY and msg.data == b"ping"
            await ws.send_str("text goes as utf-8 bytes: é")
            assert (await ws.receive()).data == "text goes as utf-8 bytes: é".encode()
        assert b"".join(received) == b"ping" + "text goes as utf-8 bytes: é".encode()


async def test_proxy_moves_a_large_stream_both_ways(start_gateway, http):
    """Far more than maximum.pending.bytes in flight: backpressure must not lose or reorder bytes."""
    backend, _ = await tcp_echo_server()
    async with backend:
        gw = await start_gateway(proxy_config(f"tcp://127.0.0.1:{port_of(backend)}"))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy", max_msg_size=0) as ws:
            payload = bytes(range(256)) * 64  # 16 KiB per message
            total = 4 * 1024 * 1024

            async def send() -> None:
                for _ in range(total // len(payload)):
                    await ws.send_bytes(payload)

            sender = asyncio.create_task(send())
            got = bytearray()
            while len(got) < total:
                got += (await asyncio.wait_for(ws.receive(), 10)).data
            await sender
            assert got == payload * (total // len(payload))


async def test_client_close_closes_backend(start_gateway, http):
    closed = asyncio.Event()

    async def handle(reader, writer):
        await reader.read()  # until EOF: the gateway half-closes / closes
        closed.set()
        writer.close()

    backend = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with backend:
        gw = await start_gateway(proxy_config(f"tcp://127.0.0.1:{port_of(backend)}"))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            await ws.send_bytes(b"x")
        await asyncio.wait_for(closed.wait(), 3)


async def test_backend_eof_closes_client_normally(start_gateway, http):
    async def handle(reader, writer):
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    backend = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with backend:
        gw = await start_gateway(proxy_config(f"tcp://127.0.0.1:{port_of(backend)}"))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            assert (await ws.receive()).data == b"bye"
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1000


async def test_backend_refused_closes_1011_and_gateway_keeps_serving(start_gateway, http, caplog):
    sock_server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = port_of(sock_server)
    sock_server.close()
    await sock_server.wait_closed()
    gw = await start_gateway(proxy_config(f"tcp://127.0.0.1:{dead_port}"))
    with caplog.at_level(logging.WARNING, logger="wsgate.proxy"):
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
            assert ws.close_code == 1011
    assert f"tcp://127.0.0.1:{dead_port}: cannot connect" in caplog.text
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo") as ws:
        await ws.send_str("alive")
        assert (await ws.receive()).data == "alive"


async def test_deferred_strategy_connects_on_first_message(start_gateway, http):
    connections = []

    async def handle(reader, writer):
        connections.append(1)
        data = await reader.read(100)
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    backend = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with backend:
        gw = await start_gateway(
            proxy_config(f"tcp://127.0.0.1:{port_of(backend)}", "      connect.strategy: deferred")
        )
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            await asyncio.sleep(0.2)
            assert connections == []
            await ws.send_bytes(b"first")
            assert (await ws.receive()).data == b"FIRST"
            assert connections == [1]


# -- TLS back ends ---------------------------------------------------------------------------


def backend_tls(cert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    return context


async def test_proxy_to_tls_backend_verified_by_truststore(start_gateway, http, ca, pem_stores):
    backend, received = await tcp_echo_server(ssl_context=backend_tls(ca.issue_cert("localhost")))
    async with backend:
        gw = await start_gateway(proxy_config(f"ssl://localhost:{port_of(backend)}", security=SECURITY_PEM))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            await ws.send_bytes(b"over tls")
            assert (await ws.receive()).data == b"over tls"


async def test_untrusted_tls_backend_is_refused_with_1014(start_gateway, http, other_ca, pem_stores, caplog):
    backend, received = await tcp_echo_server(ssl_context=backend_tls(other_ca.issue_cert("localhost")))
    async with backend:
        gw = await start_gateway(proxy_config(f"ssl://localhost:{port_of(backend)}", security=SECURITY_PEM))
        with caplog.at_level(logging.WARNING, logger="wsgate.proxy"):
            async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
                await ws.send_bytes(b"secret")
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1014
        assert "TLS verification failed" in caplog.text
        assert received == []  # the back end never saw a byte


async def test_tls_backend_host_name_is_checked(start_gateway, http, ca, pem_stores):
    backend, received = await tcp_echo_server(ssl_context=backend_tls(ca.issue_cert("not-this-host.test")))
    async with backend:
        gw = await start_gateway(proxy_config(f"ssl://localhost:{port_of(backend)}", security=SECURITY_PEM))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            msg = await ws.receive()
            assert msg.data == 1014
        assert received == []


async def test_tls_backend_requiring_client_certificate(start_gateway, http, ca, pem_stores):
    context = backend_tls(ca.issue_cert("localhost"))
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    backend, _ = await tcp_echo_server(ssl_context=context)
    async with backend:
        config = proxy_config(f"ssl://localhost:{port_of(backend)}", security=SECURITY_PEM)
        config = config.replace(
            "    type: proxy\n", "    type: proxy\n    connect-options:\n      ssl.client-certificate: '1'\n", 1
        )
        gw = await start_gateway(config)
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            await ws.send_bytes(b"mutual")
            assert (await ws.receive()).data == b"mutual"


# -- WebSocket back ends ---------------------------------------------------------------------


async def ws_backend(ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v2.stomp",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                if msg.data == "close-4001":
                    await ws.close(code=4001, message=b"custom")
                    break
                await ws.send_str("echo:" + msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1" if ssl_context is None else "localhost", 0, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_proxy_to_ws_backend_keeps_message_types_and_close_codes(start_gateway, http):
    runner, port = await ws_backend()
    try:
        gw = await start_gateway(proxy_config(f"ws://127.0.0.1:{port}/ws"))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            await ws.send_str("hi")
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT and msg.data == "echo:hi"
            await ws.send_bytes(b"\x01\x02")
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.BINARY and msg.data == b"\x01\x02"
            await ws.send_str("close-4001")
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4001
    finally:
        await runner.cleanup()


async def test_proxy_to_wss_backend(start_gateway, http, ca, pem_stores):
    runner, port = await ws_backend(backend_tls(ca.issue_cert("localhost")))
    try:
        gw = await start_gateway(proxy_config(f"wss://localhost:{port}/ws", security=SECURITY_PEM))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            await ws.send_str("tls")
            assert (await ws.receive()).data == "echo:tls"
    finally:
        await runner.cleanup()


async def test_untrusted_wss_backend_is_refused_with_1014(start_gateway, http, other_ca, pem_stores):
    runner, port = await ws_backend(backend_tls(other_ca.issue_cert("localhost")))
    try:
        gw = await start_gateway(proxy_config(f"wss://localhost:{port}/ws", security=SECURITY_PEM))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1014
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", ["/missing"])
async def test_ws_backend_refusing_the_upgrade_closes_1014(start_gateway, http, path):
    runner, port = await ws_backend()
    try:
        gw = await start_gateway(proxy_config(f"ws://127.0.0.1:{port}{path}"))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            msg = await ws.receive()
            assert msg.data == 1014
    finally:
        await runner.cleanup()


async def test_ws_backend_subprotocol_choice_reaches_the_client(start_gateway, http):
    runner, port = await ws_backend()
    try:
        gw = await start_gateway(proxy_config(f"ws://127.0.0.1:{port}/ws"))
        url = f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy"
        async with http.ws_connect(url, protocols=("mqtt", "v2.stomp")) as ws:
            assert ws.protocol == "v2.stomp"
            await ws.send_str("negotiated")
            assert (await ws.receive()).data == "echo:negotiated"
        async with http.ws_connect(url, protocols=("mqtt",)) as ws:  # nothing in common: no subprotocol
            assert ws.protocol is None
    finally:
        await runner.cleanup()


async def test_backpressure_stops_reading_the_client_when_the_backend_does_not_read(start_gateway, http):
    """A back end that never reads: the gateway's queue toward it stays near maximum.pending.bytes
    and the client's sends block, instead of the gateway buffering without bound."""
    stalled = asyncio.Event()

    async def never_reads(reader, writer):
        await stalled.wait()
        writer.close()

    backend = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    async with backend:
        gw = await start_gateway(proxy_config(f"tcp://127.0.0.1:{port_of(backend)}"))
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
            chunk = b"z" * 65536
            sent = 0
            with pytest.raises(asyncio.TimeoutError):
                for _ in range(1024):  # at most 64 MiB
                    await asyncio.wait_for(ws.send_bytes(chunk), 1.0)
                    sent += len(chunk)
            assert sent < 64 * 1024 * 1024  # the client was made to wait
            (connection,) = gw.runtime.connections
            queued = connection.context.transport.get_write_buffer_size()
            assert queued <= 16 * 1024 + len(chunk)  # maximum.pending.bytes (16k) plus one message
            stalled.set()  # the back end gives up: the client is told, not left hanging
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data in (1000, 1011)


async def test_backpressure_stops_reading_the_backend_when_the_client_does_not_read(start_gateway):
    flooding = {"sent": 0, "blocked": False}

    async def floods(reader, writer):
        chunk = b"f" * 65536
        try:
            for _ in range(1024):  # at most 64 MiB
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 1.0)
                flooding["sent"] += len(chunk)
        except TimeoutError:
            flooding["blocked"] = True
        except ConnectionError:
            pass
        writer.close()

    backend = await asyncio.start_server(floods, "127.0.0.1", 0)
    async with backend:
        gw = await start_gateway(proxy_config(f"tcp://127.0.0.1:{port_of(backend)}"))
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("proxy"))
        writer.write(
            b"GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert (await reader.readline()).startswith(b"HTTP/1.1 101")
        for _ in range(100):  # then never read again
            if flooding["blocked"]:
                break
            await asyncio.sleep(0.1)
        assert flooding["blocked"] and flooding["sent"] < 64 * 1024 * 1024
        (connection,) = gw.runtime.connections
        assert connection.channel.transport.get_write_buffer_size() <= 16 * 1024 + 2 * 65536
        writer.transport.abort()
