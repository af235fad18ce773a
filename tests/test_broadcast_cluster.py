"""Broadcast across nodes on a real redis-server: several gateways (nodes) in one test, clients on each.

What is checked: every client gets every message exactly once and in its publisher's order, whichever node
the publisher reached (an accepted feed, a client's message), a feed each node dials itself is not relayed
(no duplicates), and with Redis down each node still serves its own clients.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from wsgate.services.broadcast import Relay
from wsgate.state.redis import StateUnavailable

from .conftest import port_of

ACCEPTED = """
service:
  - name: chat
    accept: ws://127.0.0.1:0/chat
    type: broadcast
    properties:
      accept: tcp://127.0.0.1:0
      on.client.message: broadcast
state:
  type: redis
  url: {url}
  node: {node}
"""

DIALLED = """
service:
  - name: chat
    accept: ws://127.0.0.1:0/chat
    connect: tcp://127.0.0.1:{feed}
    type: broadcast
    properties:
      on.client.message: broadcast
state:
  type: redis
  url: {url}
  node: {node}
"""


def records(first: int, count: int) -> bytes:
    """Numbered fixed-size records: a byte stream whose chunking does not matter, where a duplicate, a gap
    or a reordering shows."""
    return b"".join(b"%06d\n" % n for n in range(first, first + count))


async def start_nodes(start_gateway, template: str, count: int, **values: object) -> list:
    return [await start_gateway(template.format(node=f"n{i}", **values), name=f"n{i}.yaml") for i in range(count)]


async def subscribed(gateway, count: int) -> None:
    service = gateway.services["chat"]
    for _ in range(300):
        if len(service.subscribers) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(service.subscribers)} subscriber(s)")


async def receive_stream(ws: aiohttp.ClientWebSocketResponse, size: int, timeout: float = 5.0) -> bytes:
    got = bytearray()
    async with asyncio.timeout(timeout):
        while len(got) < size:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            got += msg.data
    return bytes(got)


async def nothing_more(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        msg = await asyncio.wait_for(ws.receive(), wait)
        pytest.fail(f"one more message: {msg}")


async def connect(http: aiohttp.ClientSession, gateway) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(f"ws://127.0.0.1:{gateway.port_of('chat')}/chat", max_msg_size=0)


async def test_an_accepted_feed_reaches_every_nodes_clients_once_in_order(start_gateway, redis_server, http) -> None:
    nodes = await start_nodes(start_gateway, ACCEPTED, 3, url=redis_server.url)
    clients = [await connect(http, node) for node in nodes for _ in range(2)]
    for node in nodes:
        await subscribed(node, 2)
    _, writer = await asyncio.open_connection("127.0.0.1", nodes[0].services["chat"].feed_port)
    for n in range(200):  # 200 numbered messages, written one by one (chunks may still merge)
        writer.write(records(n, 1))
        await writer.drain()
        if n % 20 == 0:
            await asyncio.sleep(0.005)
    expected = records(0, 200)
    for ws in clients:
        assert await receive_stream(ws, len(expected)) == expected
    await asyncio.gather(*(nothing_more(ws) for ws in clients))
    writer.close()
    for ws in clients:
        await ws.close()


async def test_a_client_message_on_one_node_reaches_every_client_once_in_order(
    start_gateway, redis_server, http
) -> None:
    a, b, c = await start_nodes(start_gateway, ACCEPTED, 3, url=redis_server.url)
    on_a, on_b, sender, on_c = (
        await connect(http, a),
        await connect(http, b),
        await connect(http, b),
        await connect(http, c),
    )
    await subscribed(a, 1)
    await subscribed(b, 2)
    await subscribed(c, 1)
    sent = [f"message {n} é" for n in range(100)]  # text stays text, UTF-8 included
    for text in sent:
        await sender.send_str(text)
    await sender.send_bytes(b"\x00\xff binary")
    for ws in (on_a, on_b, sender, on_c):
        got = []
        async with asyncio.timeout(5):
            while len(got) < len(sent) + 1:
                msg = await ws.receive()
                got.append(msg.data)
                assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
        assert got == [*sent, b"\x00\xff binary"]
    await asyncio.gather(*(nothing_more(ws) for ws in (on_a, on_b, sender, on_c)))
    for ws in (on_a, on_b, sender, on_c):
        await ws.close()


async def test_a_feed_every_node_dials_is_not_relayed(start_gateway, redis_server, http) -> None:
    writers: list[asyncio.StreamWriter] = []

    async def feed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read()

    server = await asyncio.start_server(feed, "127.0.0.1", 0)
    try:
        nodes = await start_nodes(start_gateway, DIALLED, 3, url=redis_server.url, feed=port_of(server))
        clients = [await connect(http, node) for node in nodes]
        for node in nodes:
            await subscribed(node, 1)
            assert node.services["chat"].relay is not None  # subscribed for client messages all the same
        for _ in range(300):
            if len(writers) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(writers) == 3
        expected = records(0, 200)
        for writer in writers:  # the same numbered stream to every node's connection
            writer.write(expected)
            await writer.drain()
        for ws in clients:
            assert await receive_stream(ws, len(expected)) == expected
        await asyncio.gather(*(nothing_more(ws) for ws in clients))
        for ws in clients:
            await ws.close()
    finally:
        server.close()
        for writer in writers:
            writer.close()


async def test_redis_down_local_delivery_goes_on_and_cross_node_delivery_resumes(
    start_gateway, redis_server, http, caplog
) -> None:
    a, b = await start_nodes(start_gateway, ACCEPTED, 2, url=redis_server.url)
    on_a, on_b = await connect(http, a), await connect(http, b)
    await subscribed(a, 1)
    await subscribed(b, 1)
    _, writer = await asyncio.open_connection("127.0.0.1", a.services["chat"].feed_port)
    writer.write(records(0, 1))
    await writer.drain()
    assert await receive_stream(on_a, 7) == records(0, 1)
    assert await receive_stream(on_b, 7) == records(0, 1)

    redis_server.stop()
    writer.write(records(1, 5))
    await writer.drain()
    assert await receive_stream(on_a, 35) == records(1, 5)  # this node's clients: as ever
    await nothing_more(on_b, 0.5)  # the other node's: nothing, and nothing later
    assert "service[chat]: broadcasting to this node's clients only" in caplog.text

    redis_server.start()
    sent, n = records(6, 0), 6
    got = b""
    async with asyncio.timeout(15):  # the listener's backoff reaches 5 s at most
        while not got:
            writer.write(records(n, 1))
            await writer.drain()
            sent += records(n, 1)
            n += 1
            with contextlib.suppress(TimeoutError):
                got = await receive_stream(on_b, 7, timeout=0.2)
    writer.write(records(n, 50))
    await writer.drain()
    sent += records(n, 50)
    assert await receive_stream(on_a, len(sent)) == sent  # every message, once, in order
    first = int(got[:6])
    tail = records(first, n + 50 - first)
    got += await receive_stream(on_b, len(tail) - len(got))
    assert got == tail  # from the first message after the outage on: every one, once, in order
    await nothing_more(on_b)
    writer.close()
    await on_a.close()
    await on_b.close()


async def test_the_relay_outbox_is_bounded_keeps_order_and_backs_off_when_redis_fails() -> None:
    published: list[bytes] = []
    gate = asyncio.Event()
    failing = False

    class Redis:  # publish_raw as RedisState's: waits on the gate, or fails as an unavailable Redis does
        async def publish_raw(self, channel: str, payloads: list[bytes]) -> None:
            await gate.wait()
            if failing:
                raise StateUnavailable("Redis unavailable: ConnectionError")
            published.extend(payloads)

    relay = Relay(Redis(), "broadcast:chat", "chat", limit=40)  # type: ignore[arg-type]
    task = asyncio.create_task(relay.run())
    try:
        relay.offer(b"000")
        await asyncio.sleep(0)  # the first is being published (waiting for Redis)
        for n in range(1, 30):
            relay.offer(b"%03d" % n)
        assert relay.pending == 40 and relay.missed == 19  # 10 of 4 bytes wait; the rest is not relayed
        gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert published == [b"b%03d" % n for n in range(11)] and relay.pending == 0
        failing = True
        relay.offer("text é")
        for _ in range(10):
            await asyncio.sleep(0)
        assert relay.retry_at > 0  # Redis failed: local only for RELAY_RETRY s, nothing queued meanwhile
        relay.offer(b"later")
        assert not relay.outbox and relay.missed == 21
        failing, relay.retry_at = False, 1.0  # the back-off is over: relayed again, the count reset
        relay.offer("text é")
        for _ in range(10):
            await asyncio.sleep(0)
        assert published[-1] == "ttext é".encode() and relay.missed == 0 and relay.retry_at == 0.0
    finally:
        task.cancel()
