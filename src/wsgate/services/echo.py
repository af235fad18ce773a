"""``echo``: sends every text and binary message back, the set-up check.

On a channel that can be *parked* (the picows data path), echo answers each message in the frame callback
instead of a task that waits for it: an idle connection then holds no task, coroutine or future (bench/README.md,
"Memory per idle connection (P3)"), and a message costs no task switch. The message policy decides there too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ..core.channel import Channel, Data
from ..core.session import LiveSession
from .base import ServiceType
from .messages import MESSAGE_RULES, POLICY_PROPERTY, RECEIVE, SEND, GuardedChannel, MessageService


@runtime_checkable
class Parkable(Protocol):
    """A channel that hands each message to a callback, with no task waiting (``PicowsChannel``)."""

    def park(self, relay: Callable[[Data], None]) -> bool: ...

    def send_now(self, data: Data) -> None: ...


class EchoService(MessageService):
    """The channel is the message policy's (``MessageService``): a refused message is never echoed."""

    TYPE = ServiceType(name="echo", accept=("ws", "wss"), properties=POLICY_PROPERTY, rules=MESSAGE_RULES)

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        inner = channel.inner if isinstance(channel, GuardedChannel) else channel
        if isinstance(inner, Parkable) and inner.park(self.relay(channel, inner)):
            return  # the runner's bookkeeping follows the socket's close
        receive, send = channel.receive, channel.send  # bound once; the channel counts what passes
        while (data := await receive()) is not None:
            await send(data)

    def relay(self, channel: Channel, inner: Parkable) -> Callable[[Data], None]:
        """Echo one message from the frame callback, through the message policy as ``GuardedChannel`` would
        (rules a reload adds apply from the next message)."""
        send = inner.send_now
        if not isinstance(channel, GuardedChannel):
            return send
        guard = channel

        def relay(data: Data) -> None:
            if not self.unguarded():
                if guard.ended or not self.admit(guard, SEND, data):
                    return
                if guard.ended or not self.admit(guard, RECEIVE, data):
                    return
            send(data)

        return relay
