"""The picows data path (transport/picows_channel.py) does what picows leaves to its user: reserved bits,
fragmented messages in order and within the size limit, UTF-8 across fragments, control frames between
fragments, the inactivity ping, and the hand-off itself (frames sent with the request head, aiohttp's
objects freed). Hand-built frames on plain sockets against a real gateway."""

from __future__ import annotations

import asyncio
import gc

import pytest
from picows import WSListener

from wsgate.transport import listener, picows_channel, upgrade

from .test_websocket_protocol import BINARY, CLOSE, ECHO, PING, TEXT, Wire, close_frame, frame, request_bytes, upgraded

CONTINUATION, PONG = 0x0, 0xA


def rsv1(data: bytes) -> bytes:
    return bytes([data[0] | 0x40]) + data[1:]


def test_the_data_path_is_picows_when_installed() -> None:
    assert upgrade.hand_off is not None
    assert issubclass(picows_channel.PicowsChannel, WSListener)


async def test_upgrades_are_served_on_picows_and_aiohttp_lets_go(start_gateway) -> None:
    gw = await start_gateway(ECHO)
    wire = await upgraded(gw.port_of("echo"))
    wire.send(frame(TEXT, b"hello"))
    assert await wire.frame() == (TEXT, b"hello")
    (session,) = gw.runtime.connections
    assert isinstance(session.channel, picows_channel.PicowsChannel)
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is listener.HttpConnection and not o.detached]
    await wire.finish()


async def test_a_message_in_fragments_is_one_message(start_gateway) -> None:
    gw = await start_gateway(ECHO)
    wire = await upgraded(gw.port_of("echo"))
    word = "κόσμε".encode()  # a character cut between fragments is still valid UTF-8 as a whole
    wire.send(frame(TEXT, word[:3], fin=False) + frame(PING, b"p") + frame(CONTINUATION, word[3:7], fin=False))
    assert await wire.frame() == (PONG, b"p")  # a control frame may come between fragments
    wire.send(frame(CONTINUATION, word[7:]))
    assert await wire.frame() == (TEXT, word)
    wire.send(frame(BINARY, b"\x00\xff", fin=False) + frame(CONTINUATION, b"\x01"))
    assert await wire.frame() == (BINARY, b"\x00\xff\x01")
    await wire.finish()


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([frame(CONTINUATION, b"x")], id="continuation-first"),
        pytest.param([frame(TEXT, b"a", fin=False), frame(TEXT, b"b")], id="new-message-inside-one"),
        pytest.param([rsv1(frame(TEXT, b"a"))], id="reserved-bit"),
        pytest.param([frame(0x3, b"a")], id="reserved-opcode"),
        pytest.param([frame(PING, b"p", fin=False)], id="fragmented-control"),
    ],
)
async def test_frames_that_break_the_protocol_close_1002(start_gateway, frames: list[bytes]) -> None:
    gw = await start_gateway(ECHO)
    wire = await upgraded(gw.port_of("echo"))
    wire.send(b"".join(frames))
    assert await wire.close_code() == 1002
    await wire.finish()


async def test_the_size_limit_counts_the_whole_message_not_each_fragment(start_gateway) -> None:
    gw = await start_gateway(ECHO)  # ws.maximum.message.size: 1k
    wire = await upgraded(gw.port_of("echo"))
    wire.send(frame(BINARY, b"a" * 1024))  # exactly the limit: allowed
    assert await wire.frame() == (BINARY, b"a" * 1024)
    wire.send(frame(BINARY, b"a" * 600, fin=False) + frame(CONTINUATION, b"a" * 600))
    assert await wire.close_code() == 1009
    await wire.finish()


async def test_invalid_utf8_across_fragments_closes_1007(start_gateway) -> None:
    gw = await start_gateway(ECHO)
    wire = await upgraded(gw.port_of("echo"))
    wire.send(frame(TEXT, b"ok \xce", fin=False) + frame(CONTINUATION, b"\x28"))
    assert await wire.close_code() == 1007
    await wire.finish()


async def test_frames_sent_with_the_request_head_are_served(start_gateway) -> None:
    gw = await start_gateway(ECHO)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("echo"))
    wire = Wire(reader, writer)
    status, _, _ = await wire.response(request_bytes("/echo") + frame(TEXT, b"early") + frame(BINARY, b"too"))
    assert status == 101
    assert await wire.frame() == (TEXT, b"early")
    assert await wire.frame() == (BINARY, b"too")
    await wire.finish()


async def test_a_close_is_answered_once_and_the_socket_ends(start_gateway) -> None:
    gw = await start_gateway(ECHO)
    wire = await upgraded(gw.port_of("echo"))
    wire.send(frame(TEXT, b"last") + close_frame(1000, b"bye"))
    assert await wire.frame() == (TEXT, b"last")  # what came before the close is still echoed
    assert await wire.close_code() == 1000
    assert await wire.eof()
    await wire.finish()


async def test_a_silent_peer_is_pinged_then_dropped(start_gateway) -> None:
    gw = await start_gateway(ECHO.replace("ws.maximum.message.size: 1k", "ws.inactivity.timeout: 0.6s"))
    wire = await upgraded(gw.port_of("echo"))
    kind, payload = await asyncio.wait_for(wire.frame(), 2)
    assert kind == PING
    wire.send(frame(PONG, payload))  # alive: the next ping comes a period later
    kind, _ = await asyncio.wait_for(wire.frame(), 2)
    assert kind == PING
    assert await asyncio.wait_for(wire.eof(), 3)  # no pong this time: dropped
    await wire.finish()


async def test_a_close_from_the_gateway_waits_for_the_answer(start_gateway) -> None:
    gw = await start_gateway(ECHO)
    wire = await upgraded(gw.port_of("echo"))
    (session,) = gw.runtime.connections
    session.channel.close_soon(1001, "going away", 5.0)
    assert await wire.close_code() == 1001
    wire.send(close_frame(1001))
    assert await asyncio.wait_for(wire.eof(), 3)
    assert session.channel.close_code == 1001
    await wire.finish()


def test_close_frame_constants() -> None:
    assert CLOSE == 0x8
