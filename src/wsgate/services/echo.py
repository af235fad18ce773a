"""``echo``: sends every text and binary message back, the set-up check."""

from __future__ import annotations

from ..transport.websocket import Connection, WSMsgType
from .base import ServiceType, WebSocketService


class EchoService(WebSocketService):
    TYPE = ServiceType(name="echo", accept=("ws", "wss"))

    async def serve(self, connection: Connection) -> None:
        send_bytes, send_str = connection.send_bytes, connection.send_str
        text, binary = WSMsgType.TEXT, WSMsgType.BINARY
        async for msg in connection:
            if msg.type is binary:
                await send_bytes(msg.data)
            elif msg.type is text:
                await send_str(msg.data)
            else:
                continue
            size = len(msg.data)
            connection.messages_in += 1
            connection.messages_out += 1
            connection.bytes_in += size
            connection.bytes_out += size
