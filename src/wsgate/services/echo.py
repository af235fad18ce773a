"""``echo``: sends every text and binary message back, the set-up check."""

from __future__ import annotations

from ..core.channel import Channel
from ..core.session import LiveSession
from .base import WebSocketService, service_type


@service_type("echo")
class EchoService(WebSocketService):
    async def serve(self, session: LiveSession, channel: Channel) -> None:
        receive, send = channel.receive, channel.send  # bound once; the channel counts what passes
        while (data := await receive()) is not None:
            await send(data)
