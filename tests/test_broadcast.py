"""Broadcast service: a real TCP feed (dialled or accepted) fanned out to WebSocket clients."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from .conftest import port_of


async def receive_bytes(ws: aiohttp.ClientWebSocketResponse, count: int) -> bytes:
    got = bytearray()
    while len(got) < count:
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        got += msg.data
    return bytes(got)


async def wait_for_subscribers(service, count: int) -> None:
    for _ in range(200):
        if len(service.subscribers) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(service.subscribers)} subscriber(s)")


async def test_feed_dialled_by_gateway_reaches_every_client(start_gateway, http):
    feed_writers: list[asyncio.StreamWriter] = []
    connected = asyncio.Event()

    async def feed(reader, writer):
        feed_writers.append(writer)
        connected.set()
        await reader.read()

    server = await asyncio.start_server(feed, "127.0.0.1", 0)
    async with server:
        gw = await start_gateway(f"""
            service:
              - name: ticker
                accept: ws://127.0.0.1:0/ticker
                connect: tcp://127.0.0.1:{port_of(server)}
                type: broadcast
        """)
        await asyncio.wait_for(connected.wait(), 5)
        url = f"ws://127.0.0.1:{gw.port_of('ticker')}/ticker"
        async with http.ws_connect(url) as a, http.ws_connect(url) as b:
            await wait_for_subscribers(gw.services["ticker"], 2)
            feed_writers[0].write(b"tick-1")
            await feed_writers[0].drain()
            assert await receive_bytes(a, 6) == b"tick-1"
            assert await receive_bytes(b, 6) == b"tick-1"
        feed_writers[0].close()


async def test_feed_accepted_by_gateway_and_client_rebroadcast(start_gateway, http):
    gw = await start_gateway("""
        service:
          - name: chat
            accept: ws://127.0.0.1:0/chat
            type: broadcast
            properties:
              accept: tcp://127.0.0.1:0
              on.client.message: broadcast
    """)
    service = gw.services["chat"]
    url = f"ws://127.0.0.1:{gw.port_of('chat')}/chat"
    async with http.ws_connect(url) as a, http.ws_connect(url) as b:
        await wait_for_subscribers(service, 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
        writer.write(b"from-feed")
        await writer.drain()
        assert await receive_bytes(a, 9) == b"from-feed"
        assert await receive_bytes(b, 9) == b"from-feed"
        await a.send_str("from-a")
        msg = await asyncio.wait_for(b.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.TEXT and msg.data == "from-a"
        writer.close()


ACCEPTED_FEED = """
service:
  - name: feed
    accept: ws://127.0.0.1:0/feed
    type: broadcast
    properties:
      accept: tcp://127.0.0.1:0
      maximum.pending.bytes: {limit}
"""


async def test_slow_client_is_dropped_with_1008_and_fast_client_keeps_up(start_gateway, http):
    gw = await start_gateway(ACCEPTED_FEED.format(limit="256k"))
    service = gw.services["feed"]
    port = gw.port_of("feed")
    # The slow client: a raw socket that completes the upgrade and then never reads.
    slow = socket.create_connection(("127.0.0.1", port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(
        b"GET /feed HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with http.ws_connect(f"ws://127.0.0.1:{port}/feed", max_msg_size=0) as fast:
        await wait_for_subscribers(service, 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
        chunk = b"x" * 16384
        total = 8 * 1024 * 1024
        received = 0

        async def drain_fast() -> None:
            nonlocal received
            while received < total:
                msg = await asyncio.wait_for(fast.receive(), 10)
                assert msg.type is aiohttp.WSMsgType.BINARY, msg
                received += len(msg.data)

        reading = asyncio.create_task(drain_fast())
        for _ in range(total // len(chunk)):  # a paced feed (~16 MB/s) that a reading client keeps up with
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.001)
        await asyncio.wait_for(reading, 20)
        assert received == total
        for _ in range(300):  # the slow one is gone from the fan-out
            if len(service.subscribers) == 1:
                break
            await asyncio.sleep(0.01)
        assert len(service.subscribers) == 1
        writer.close()
    slow.close()


async def test_slow_client_close_frame_says_too_slow(start_gateway, http):
    gw = await start_gateway(ACCEPTED_FEED.format(limit="1k"))
    service = gw.services["feed"]
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('feed')}/feed") as ws:
        await wait_for_subscribers(service, 1)
        subscriber = next(iter(service.subscribers))
        subscriber.offer(b"y" * 2048)  # one burst larger than the client's allowance
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra == "too slow"
