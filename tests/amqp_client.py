"""A small AMQP 0-9-1 client for tests, framed with pamqp: over a WebSocket (as a browser client talks to
``amqp.proxy``) or straight over TCP (to look at the broker without the gateway)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from pamqp import body as pbody
from pamqp import commands, frame, header

PROTOCOL_HEADER = header.ProtocolHeader().marshal()
TIMEOUT = 5.0


class Closed(Exception):
    """The peer closed the connection (``frames``: what came before)."""


class AmqpClient:
    """``send``/``recv`` over either transport; ``frames`` buffers complete frames as (channel, value)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse | None = None, tcp: tuple[Any, Any] | None = None) -> None:
        self.ws = ws
        self.tcp = tcp
        self.buffer = b""
        self.frames: list[tuple[int, object]] = []
        self.messages_received = 0

    @classmethod
    async def over_ws(cls, session: aiohttp.ClientSession, url: str, **kwargs: Any) -> AmqpClient:
        return cls(ws=await session.ws_connect(url, **kwargs))

    @classmethod
    async def over_tcp(cls, port: int) -> AmqpClient:
        return cls(tcp=await asyncio.open_connection("127.0.0.1", port))

    async def send_raw(self, data: bytes) -> None:
        if self.ws is not None:
            await self.ws.send_bytes(data)
        else:
            assert self.tcp is not None
            self.tcp[1].write(data)
            await self.tcp[1].drain()

    async def send(self, channel: int, *values: Any) -> None:
        await self.send_raw(b"".join(frame.marshal(v, channel) for v in values))

    async def _read(self) -> bytes:
        if self.ws is not None:
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise Closed(f"{msg.type} {self.ws.close_code} {msg.extra}")
            self.messages_received += 1
            return bytes(msg.data)
        assert self.tcp is not None
        data = await self.tcp[0].read(65536)
        if not data:
            raise Closed("eof")
        return bytes(data)

    async def recv(self, timeout: float = TIMEOUT) -> tuple[int, object]:
        """The next frame (heartbeats skipped)."""
        while True:
            while not self.frames:
                await self._fill(timeout)
            channel, value = self.frames.pop(0)
            if value.__class__.__name__ != "Heartbeat":
                return channel, value

    async def _fill(self, timeout: float) -> None:
        self.buffer += await asyncio.wait_for(self._read(), timeout)
        while self.buffer:
            if self.buffer.startswith(b"AMQP") and len(self.buffer) >= 8:
                self.frames.append((0, header.ProtocolHeader()))
                self.buffer = self.buffer[8:]
                continue
            try:
                used, channel, value = frame.unmarshal(self.buffer)
            except Exception:  # noqa: BLE001 (incomplete: wait for more)
                return
            self.buffer = self.buffer[used:]
            self.frames.append((channel, value))

    async def expect(self, kind: type, channel: int | None = None, timeout: float = TIMEOUT) -> Any:
        got_channel, value = await self.recv(timeout)
        detail = {k: getattr(value, k, None) for k in ("reply_code", "reply_text", "class_id", "method_id")}
        assert isinstance(value, kind), f"expected {kind.__name__}, got {value!r} {detail} on channel {got_channel}"
        if channel is not None:
            assert got_channel == channel, (got_channel, value)
        return value

    async def handshake(
        self, username: str = "guest", password: str = "guest", vhost: str = "/", mechanism: str = "PLAIN"
    ) -> commands.Connection.Tune:
        await self.send_raw(PROTOCOL_HEADER)
        start = await self.expect(commands.Connection.Start, 0)
        self.start = start
        await self.send(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "wsgate-tests", "capabilities": {"authentication_failure_close": True}},
                mechanism=mechanism,
                response=f"\0{username}\0{password}",
            ),
        )
        tune = await self.expect(commands.Connection.Tune, 0)
        await self.send(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
        await self.send(0, commands.Connection.Open(virtual_host=vhost))
        await self.expect(commands.Connection.OpenOk, 0)
        return tune

    async def open_channel(self, channel: int) -> None:
        await self.send(channel, commands.Channel.Open())
        await self.expect(commands.Channel.OpenOk, channel)

    async def call(self, channel: int, method: Any, reply: type) -> Any:
        await self.send(channel, method)
        return await self.expect(reply, channel)

    async def publish(self, channel: int, exchange: str, routing_key: str, data: bytes, **properties: Any) -> None:
        props = commands.Basic.Properties(**properties)
        await self.send(
            channel,
            commands.Basic.Publish(exchange=exchange, routing_key=routing_key),
            header.ContentHeader(0, len(data), props),
            pbody.ContentBody(data),
        )

    async def get(self, channel: int, queue: str) -> tuple[commands.Basic.Properties, bytes] | None:
        """``basic.get`` with no-ack: the message's properties and body, or None when the queue is empty."""
        await self.send(channel, commands.Basic.Get(queue=queue, no_ack=True))
        _, reply = await self.recv()
        if isinstance(reply, commands.Basic.GetEmpty):
            return None
        assert isinstance(reply, commands.Basic.GetOk), reply
        content = await self.expect(header.ContentHeader, channel)
        data = b""
        while len(data) < content.body_size:
            data += (await self.expect(pbody.ContentBody, channel)).value
        return content.properties, data

    async def close(self) -> None:
        if self.ws is not None and self.ws.closed:
            return
        try:
            await self.send(0, commands.Connection.Close(200, "bye", 0, 0))
            await self.expect(commands.Connection.CloseOk, 0, timeout=2)
        except (TimeoutError, Closed, OSError, AssertionError):
            pass
        if self.ws is not None:
            await asyncio.wait_for(self.ws.close(), 2)
        elif self.tcp is not None:
            self.tcp[1].close()

    async def closed(self, timeout: float = TIMEOUT) -> int | None:
        """Wait for the WebSocket to close; its close code."""
        assert self.ws is not None
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type == aiohttp.WSMsgType.CLOSE:  # the code the server sent
                return int(msg.data)
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.buffer += bytes(msg.data)
                await self._drain_buffer()

    async def _drain_buffer(self) -> None:
        while self.buffer:
            try:
                used, channel, value = frame.unmarshal(self.buffer)
            except Exception:  # noqa: BLE001
                return
            self.buffer = self.buffer[used:]
            self.frames.append((channel, value))
