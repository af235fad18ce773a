"""What an idle WebSocket keeps once its 101 is sent (bench/README.md, "Memory per idle connection (P3)").

The figures are the bench's (bench/idle_probe.py); these tests pin the structure that the figures rest on:
the upgrade's headers, picows's listener factory and the identity hold nothing a live connection does not
need. Real gateway, real sockets (conftest's uvloop + aiofastnet loop).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from picows import WSUpgradeResponse
from picows import WSUpgradeResponseWithListener as WithListener

from wsgate.core.identity import Identity
from wsgate.transport.picows_channel import PicowsChannel, _Listener

ECHO = """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    accept-options:
      connection.limit: 1
"""


async def wait_until(check, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_an_open_connection_keeps_no_upgrade_headers_and_still_echoes(start_gateway, http):
    gateway = await start_gateway(ECHO)
    async with http.ws_connect(f"ws://127.0.0.1:{gateway.port_of('echo')}/echo") as ws:
        await ws.send_str("hello")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "hello"
        [session] = list(gateway.runtime.connections)
        channel = session.channel
        assert isinstance(channel, PicowsChannel)
        assert channel.ws is not None
        assert len(channel.ws.request.headers) == 0  # dropped once the 101 was sent
        assert len(channel.ws.response.headers) == 0
        await ws.send_bytes(b"\x00\x01")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == b"\x00\x01"


async def test_the_101_still_carries_its_headers(start_gateway):
    gateway = await start_gateway(ECHO)
    async with aiohttp.ClientSession() as http:  # noqa: SIM117 (the response is needed after the upgrade)
        async with http.ws_connect(f"ws://127.0.0.1:{gateway.port_of('echo')}/echo", protocols=()) as ws:
            assert ws._response.status == 101
            assert ws._response.headers["Upgrade"].lower() == "websocket"
            assert "Sec-WebSocket-Accept" in ws._response.headers


def test_the_listener_factory_lets_go_once_called():
    response = WSUpgradeResponse.create_101_response({"X-Test": "1"})
    channel = PicowsChannel(1024)
    factory = _Listener(response, channel)
    answer = factory(None)
    assert isinstance(answer, WithListener)
    assert factory.response is None and factory.channel is None  # picows keeps the factory, not what it made
    with pytest.raises(AssertionError, match="one upgrade per connection"):
        factory(None)


def test_identity_has_no_instance_dict():
    identity = Identity("realm", "joe", frozenset({"R"}), None)
    assert not hasattr(identity, "__dict__")


async def test_an_idle_echo_holds_no_task_and_its_close_does_the_bookkeeping(start_gateway, http):
    """Echo parks the picows channel: no task waits for a message. When the socket closes, the session is
    deregistered and its connection slot released (connection.limit 1 admits the next client)."""
    gateway = await start_gateway(ECHO)
    url = f"ws://127.0.0.1:{gateway.port_of('echo')}/echo"
    for _ in range(2):
        async with http.ws_connect(url) as ws:
            await ws.send_str("hello")
            assert (await asyncio.wait_for(ws.receive(), 5)).data == "hello"
            [session] = list(gateway.runtime.connections)
            assert session.channel.parked
            await wait_until(lambda: not any(lst.serving for lst in gateway.listeners.values()))  # the serve task ended
            await ws.send_bytes(b"\x00" * 70_000)  # several reads, one message
            assert (await asyncio.wait_for(ws.receive(), 5)).data == b"\x00" * 70_000
        await wait_until(lambda: not gateway.runtime.connections)
        assert session.channel.messages_in == session.channel.messages_out == 2
