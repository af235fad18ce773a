"""``echo``: sends every text and binary message back, the set-up check."""

from __future__ import annotations

from ..core.channel import Channel
from ..core.session import LiveSession
from .base import ServiceType, WebSocketService


class EchoService(WebSocketService):
    TYPE = ServiceType(name="echo", accept=("ws", "wss"))

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        receive, send = channel.receive, channel.send  # bound once; the channel counts what passes
        while (data := await receive()) is not None:
            await send(data)
