"""``echo``: sends every text and binary message back, the set-up check."""

from __future__ import annotations

from ..transport.websocket import Connection, WSMsgType
from .base import WebSocketService, service_type


@service_type("echo")
class EchoService(WebSocketService):
    async def serve(self, connection: Connection) -> None:
        ws = connection.ws
        text, binary = WSMsgType.TEXT, WSMsgType.BINARY
        async for msg in connection:
            if msg.type is binary:
                await ws.send_bytes(msg.data)
            elif msg.type is text:
                await ws.send_str(msg.data)
