"""The proxy's common case without a task per message: a picows client spliced to a tcp/ssl back end.

The relay (``services.proxy.ProxyService.relay``) runs two tasks over ``Channel.receive``/``send`` and the
back end's ``receive``/``send``: a task switch and a future per message each way. When nothing has to
decide on a message (no ``authorization-rule``, no ``message.policy``), the bytes need no task at all:

- client → back end: ``PicowsChannel`` hands each message's payload to ``take`` from picows's frame
  callback; the messages of one read are written to the back end with one ``write`` (a text message is its
  UTF-8 bytes, checked as before);
- back end → client: ``TcpLeg.data_received`` hands each read to ``give``, sent as one binary message
  (at most ``READ_CHUNK`` bytes each, as the relay's reads);
- backpressure both ways is the transports' own flow control: a side's ``pause_writing`` pauses reading
  from the other side, its ``resume_writing`` resumes it (the service's ``maximum.pending.bytes`` is the
  high-water mark of both sockets); a client that does not read for ``ws.write.timeout`` is dropped as a
  slow consumer, as a waiting ``send`` would be;
- the serve task waits on one future for the end: the client's end (its close frame, its loss, the
  gateway closing it: revocation, expiry, a slow consumer), the back end's EOF or loss, or rules: a
  reload that gives the service rules or a policy ends the splice at the next read of either side, whose
  messages then go through the relay and its ``GuardedChannel`` (so the new rules decide the next message).

The counters stay the channel's, as the metrics and the access line read them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from picows import WSMsgType

from ..core.channel import Channel
from .backend import READ_CHUNK
from .picows_channel import PicowsChannel
from .tcp_leg import CLIENT, EOF, LOST, RULES, TcpLeg

__all__ = ["CLIENT", "EOF", "LOST", "RULES", "Splice", "TcpLeg", "splice"]

_BINARY = WSMsgType.BINARY


async def splice(channel: Channel, leg: TcpLeg, plain: Callable[[], bool]) -> str | None:
    """Carry ``channel`` to and from ``leg`` without a task per message while ``plain()``; how it ended
    (``CLIENT``, ``EOF``, ``LOST`` or ``RULES``), or ``None`` if the channel cannot be spliced (not picows)."""
    if not isinstance(channel, PicowsChannel):
        return None
    return await Splice(channel, leg, plain).run()


class Splice:
    """One spliced connection: the callbacks both sides call while it lasts."""

    __slots__ = ("channel", "leg", "plain", "write", "pending", "done", "outcome", "stall", "loop")

    def __init__(self, channel: PicowsChannel, leg: TcpLeg, plain: Callable[[], bool]) -> None:
        assert leg.transport is not None
        self.channel = channel
        self.leg = leg
        self.plain = plain  # may messages pass without a decision? (the service has no rules, no policy)
        self.write = leg.transport.write
        self.pending: list[bytes] = []  # messages of the current read, not yet written to the back end
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.outcome = CLIENT
        self.stall: asyncio.TimerHandle | None = None  # ws.write.timeout while the client does not read

    async def run(self) -> str:
        """Carry the connection until one side ends or rules appear; how it ended (``CLIENT`` … ``RULES``)."""
        channel, leg = self.channel, self.leg
        channel.splice, leg.splice = self, self
        channel.waiter = self.done  # every end of the channel (close, loss, failure) wakes its waiter
        try:
            self._catch_up()
            await self.done
        finally:
            self._detach()
        return self.outcome

    def _catch_up(self) -> None:
        """What either side had buffered before the splice (messages sent right after the 101, a back end's
        banner), and the flow-control state each side is in."""
        channel, leg = self.channel, self.leg
        inbox = channel.inbox
        while inbox:
            data = inbox.popleft()
            self.write(data.encode() if isinstance(data, str) else data)
        channel.unhold()
        chunks = leg.chunks
        while chunks and not self.done.done():
            data = chunks[0]
            if not self.give(data):  # rules appeared: the relay takes it from here
                return
            chunks.popleft()
            leg.buffered -= len(data)
        leg.resume()
        if leg.eof or leg.lost:
            self.backend_ended(leg.error)
        elif channel.ended:
            self._end(CLIENT)
        if channel.drained is not None:
            self.client_full()
        if leg.drained is not None:
            self.backend_full()

    # -- client → back end (from PicowsChannel's frame callback) --------------------------------------

    def take(self, payload: bytes, last: bool) -> bool:
        """One message from the client; ``last``: the last frame of this read. False: rules appeared (the
        splice ended; the message goes to the channel's inbox, for the relay)."""
        pending = self.pending
        if not pending:
            if not self.plain():  # once per read: a reload cannot come between two frames of one read
                self._stop(RULES)
                return False
            if last:  # the common case: one message per read
                self.write(payload)
                return True
            self.loop.call_soon(self.flush)  # in case the read's last frame is one picows answers itself (a ping)
        pending.append(payload)
        if last:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the messages of a read to the back end at once."""
        pending = self.pending
        if pending:
            self.write(pending[0] if len(pending) == 1 else b"".join(pending))
            pending.clear()

    # -- back end → client (from TcpLeg.data_received) -----------------------------------------------

    def give(self, data: bytes) -> bool:
        """One read from the back end, sent to the client. False: rules appeared (the leg keeps the bytes
        for the relay)."""
        if not self.plain():
            self._stop(RULES)
            return False
        channel = self.channel
        ws = channel.ws
        if ws is None or channel.closed:  # closing or gone: nothing more reaches the client
            return True
        size = len(data)
        if size <= READ_CHUNK:
            ws.send(_BINARY, data)
            channel.messages_out += 1
        else:
            view = memoryview(data)
            for start in range(0, size, READ_CHUNK):
                ws.send(_BINARY, view[start : start + READ_CHUNK])
                channel.messages_out += 1
        channel.bytes_out += size
        return True

    # -- flow control ----------------------------------------------------------------------------------

    def client_full(self) -> None:
        """The client's socket holds more than the writer limit: stop reading the back end."""
        self.leg.pause()
        timeout = self.channel.write_timeout
        if timeout and self.stall is None:
            self.stall = self.loop.call_later(timeout, self.channel.write_stalled)

    def client_drained(self) -> None:
        self._unstall()
        self.leg.resume()

    def backend_full(self) -> None:
        """The back end's socket holds more than ``maximum.pending.bytes``: stop reading the client."""
        self.channel.hold()

    def backend_drained(self) -> None:
        self.channel.unhold()

    # -- ends --------------------------------------------------------------------------------------------

    def backend_ended(self, error: OSError | None) -> None:
        self._stop(LOST if error is not None else EOF)

    def _stop(self, outcome: str) -> None:
        """End the splice now: from here on each side buffers for the relay (``RULES``) or for nobody."""
        self._detach()
        if outcome == RULES:  # the relay's own flow control takes over from a clean state
            self.channel.unhold()
            self.leg.resume()
        self._end(outcome)

    def _end(self, outcome: str) -> None:
        if not self.done.done():
            self.outcome = outcome
            self.done.set_result(None)

    def _detach(self) -> None:
        channel, leg = self.channel, self.leg
        if channel.splice is self:
            if not leg.lost:
                self.flush()  # decided under the rules of their read
            self.pending.clear()
            channel.splice = None
            leg.splice = None
            if channel.waiter is self.done:
                channel.waiter = None
            self._unstall()

    def _unstall(self) -> None:
        stall, self.stall = self.stall, None
        if stall is not None:
            stall.cancel()
