"""``echo``: sends every text and binary message back, the set-up check."""

from __future__ import annotations

from ..core.channel import Channel
from ..core.session import LiveSession
from .base import ServiceType
from .messages import MESSAGE_RULES, POLICY_PROPERTY, MessageService


class EchoService(MessageService):
    """The channel is the message policy's (``MessageService``): a refused message is never echoed."""

    TYPE = ServiceType(name="echo", accept=("ws", "wss"), properties=POLICY_PROPERTY, rules=MESSAGE_RULES)

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        receive, send = channel.receive, channel.send  # bound once; the channel counts what passes
        while (data := await receive()) is not None:
            await send(data)
