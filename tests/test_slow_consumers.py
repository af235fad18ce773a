"""Peers that stop reading are dropped: 1008 "too slow", aborted 2 s later, counted and logged (bounded)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from .conftest import port_of, tcp_echo_server

UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def deaf_client(port: int, path: str) -> socket.socket:
    """Completes the upgrade and never reads (a small receive buffer, so the gateway's fills soon)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(UPGRADE.format(path=path).encode())
    sock.setblocking(False)
    return sock


def masked_binary(payload: bytes) -> bytes:
    """One masked client frame (mask 0: the payload goes as it is)."""
    size = len(payload)
    head = (
        bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big")
        if size >= 65536
        else bytes([0x82, 0xFE]) + size.to_bytes(2, "big")
    )
    return head + b"\0\0\0\0" + payload


async def wait_until(check, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def slow_count(gw, service: str) -> float:
    value = gw.runtime.metrics.registry.get_sample_value("wsgate_slow_consumers_total", {"service": service})
    return value or 0.0


async def test_deaf_broadcast_subscribers_are_dropped_within_the_write_timeout(start_gateway, caplog):
    """A paced feed fills the kernel buffers long before 1M is queued: the blocked send is what times out."""
    caplog.set_level(logging.INFO)
    gw = await start_gateway("""
        service:
          - name: feed
            accept: ws://127.0.0.1:0/feed
            type: broadcast
            properties:
              accept: tcp://127.0.0.1:0
              maximum.pending.bytes: 1M
            accept-options:
              ws.write.timeout: 1s
    """)
    service = gw.services["feed"]
    port = gw.port_of("feed")
    deaf = [deaf_client(port, "/feed") for _ in range(10)]
    try:
        await wait_until(lambda: len(service.subscribers) == 10)
        _, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
        started = time.monotonic()

        async def feed() -> None:
            while True:
                writer.write(b"x" * 8192)
                await writer.drain()
                await asyncio.sleep(0.012)  # ~600 kB/s: never 1M pending within the 1 s write timeout

        feeding = asyncio.create_task(feed())
        try:
            await wait_until(lambda: not gw.runtime.connections, 30)
        finally:
            feeding.cancel()
            writer.close()
        assert time.monotonic() - started < 15
        assert slow_count(gw, "feed") == 10
        drops = [r for r in caplog.records if "slow consumer" in r.getMessage()]
        assert 1 <= len(drops) <= 10 and all(r.levelno == logging.INFO for r in drops)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("wsgate")]
    finally:
        for sock in deaf:
            sock.close()


@pytest.mark.parametrize("kind", ["echo", "proxy"])
async def test_a_client_that_stops_reading_is_dropped_not_waited_on_forever(start_gateway, kind: str):
    """No ws.inactivity.timeout: the write timeout alone ends a send that waits for a deaf client."""
    backend, _ = await tcp_echo_server()
    connect = f"connect: tcp://127.0.0.1:{port_of(backend)}" if kind == "proxy" else ""
    async with backend:
        gw = await start_gateway(f"""
            service:
              - name: svc
                accept: ws://127.0.0.1:0/svc
                type: {kind}
                {connect}
                accept-options:
                  ws.write.timeout: 0.5s
                  ws.maximum.message.size: 16M
        """)
        sock = deaf_client(gw.port_of("svc"), "/svc")
        try:
            await wait_until(lambda: len(gw.runtime.connections) == 1)
            loop = asyncio.get_running_loop()
            frame = masked_binary(b"z" * (1 << 20))
            started = time.monotonic()
            for _ in range(16):  # 16 MB echoed towards a client that reads nothing
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, frame), 5)
                except (TimeoutError, OSError):
                    break  # the gateway stopped reading from us (it is blocked on us) or dropped us
            await wait_until(lambda: not gw.runtime.connections)
            assert time.monotonic() - started < 15
            assert slow_count(gw, "svc") == 1
        finally:
            sock.close()


async def test_write_timeout_option_parses_and_can_be_turned_off(tmp_path):
    from wsgate.catalog import load_config

    path = tmp_path / "gateway.yaml"
    path.write_text(
        "service:\n  - name: e\n    accept: ws://127.0.0.1:0/e\n    type: echo\n"
        "    accept-options:\n      ws.write.timeout: 0\n"
        "  - name: d\n    accept: ws://127.0.0.1:0/d\n    type: echo\n"
    )
    config = load_config(path)
    by_name = {s.name: s for s in config.services}
    assert by_name["e"].accept_options.write_timeout is None
    assert by_name["d"].accept_options.write_timeout == 30.0


async def test_the_management_live_feed_drops_deaf_and_reset_clients_quietly(start_gateway, caplog, monkeypatch):
    """The console's feed is a WebSocket too: a reset is the client's loss, a deaf client is dropped."""
    from wsgate.management import service as management

    monkeypatch.setattr(management, "LIVE_INTERVAL", 0)  # snapshots as fast as the loop goes
    caplog.set_level(logging.INFO)
    gw = await start_gateway("""
        service:
          - name: echo
            accept: ws://127.0.0.1:0/echo
            type: echo
          - name: admin
            accept: http://127.0.0.1:0/admin
            type: management
            properties:
              insecure: true
            accept-options:
              ws.write.timeout: 0.5s
    """)
    admin = gw.services["admin"]
    port = gw.port_of("admin")
    reset = deaf_client(port, "/admin/live")
    deaf = deaf_client(port, "/admin/live")
    await wait_until(lambda: len(admin.live) == 2)
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    reset.close()  # an RST
    try:
        await wait_until(lambda: not admin.live)
    finally:
        deaf.close()
    assert slow_count(gw, "admin") == 1
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]
