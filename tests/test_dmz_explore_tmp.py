# ruff: noqa
from __future__ import annotations
import asyncio, socket, base64
import aiohttp
from .dmz_fixtures import JOE, ANN, Pair, dmz_pair
from .test_dmz_attacks import talk


async def test_race_for_last_tunnel(dmz_pair) -> None:
    pair: Pair = await dmz_pair(prepared=1)
    results = await asyncio.gather(*(talk(pair.url(), JOE) for _ in range(4)))
    print(results)
    assert sorted(r[0] for r in results).count(101) >= 1
    await asyncio.sleep(0.5)
    print(pair.pool().in_use, len(pair.pool().idle), pair.internal_handler().in_use)
    assert pair.pool().in_use == 0
    assert pair.internal_handler().in_use == 0


async def test_client_leaves_mid_question(dmz_pair) -> None:
    pair: Pair = await dmz_pair(prepared=2)
    host, port = "127.0.0.1", pair.dmz.port_of("dmz-app")
    for _ in range(5):
        r, w = await asyncio.open_connection(host, port)
        w.write(b"GET /app HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: " + JOE["Authorization"].encode() + b"\r\n\r\n")
        await w.drain()
        w.transport.abort()
    await asyncio.sleep(1.5)
    print(pair.pool().in_use, len(pair.pool().idle), pair.internal_handler().in_use, pair.backend.connections, len(list(pair.dmz.runtime.connections)))
    assert pair.pool().in_use == 0
    assert pair.internal_handler().in_use == 0


async def test_refused_accounting(dmz_pair) -> None:
    pair: Pair = await dmz_pair(prepared=1)
    for _ in range(3):
        await pair.ready(1)
        assert (await talk(pair.url(), ANN))[0] == 403
    await asyncio.sleep(0.3)
    print(pair.pool().in_use, pair.internal_handler().in_use)
    assert pair.pool().in_use == 0 and pair.internal_handler().in_use == 0


async def test_pipelined_frames_before_101(dmz_pair) -> None:
    """A client that sends WebSocket frames right behind its upgrade request."""
    pair: Pair = await dmz_pair(prepared=1)
    host, port = "127.0.0.1", pair.dmz.port_of("dmz-app")
    r, w = await asyncio.open_connection(host, port)
    import os
    payload = b"early"
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    w.write(b"GET /app HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: " + JOE["Authorization"].encode() + b"\r\n\r\n" + frame)
    await w.drain()
    data = await asyncio.wait_for(r.read(4096), 5)
    print(data)
    data2 = await asyncio.wait_for(r.read(4096), 5) if b"early" not in data else b""
    print(data2)
    print(pair.backend.identities)
    w.close()
