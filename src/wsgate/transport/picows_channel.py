"""The lean WebSocket data path: picows frames behind ``core.channel.Channel``.

aiohttp parses the upgrade request and admission decides on it as for every request (one port, one HTTP
parser, every HTTP resource unchanged). Once the upgrade is accepted, ``hand_off`` takes the socket from
aiohttp's request handler (``HttpConnection.detach``) and gives it to a picows ``WSProtocol``, which sends
the 101 and from then on parses frames in C and calls ``PicowsChannel.on_ws_frame`` for each, with no
task switch and no per-message Python object but the payload. aiohttp's handler, parser, request and
task are freed as soon as the upgrade returns: an idle connection holds the channel, the picows protocol
and the TLS transport, and the service's task.

picows leaves part of RFC 6455 to its user, and ``PicowsChannel`` does it: reserved bits (1002),
fragmented messages (continuations in order, the size limit over the whole message: 1009), UTF-8 of text
messages (1007), the close handshake (the peer's code checked, answered once), the inactivity ping
(``ws.inactivity.timeout``: one timer, no task) and backpressure both ways (reading pauses while the
service has not taken ``INBOX`` messages; a send waits while the socket's buffer is over the service's
writer limit, and a send waiting ``ws.write.timeout`` drops the peer as a slow consumer).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from multidict import CIMultiDict
from picows import WSAutoPingStrategy, WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeResponse
from picows import WSUpgradeResponseWithListener as WithListener
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # not in picows's stubs

from ..core.channel import Data, Messages
from ..core.close import CloseCode, client_may_send
from .channel import Slow

__all__ = ["PicowsChannel", "Detachable", "hand_off", "INBOX"]

log = logging.getLogger("wsgate.websocket")

# Messages received and not yet taken by the service before reading from the socket pauses.
INBOX = 16
# How long a close frame the gateway sent waits for the peer's answer before the socket is dropped.
CLOSE_WAIT = 5.0
# Once the service is done, how long a close frame of ours waits for the peer's answer before the socket closes.
LINGER = 0.2
_TEXT, _BINARY, _CONT = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
_PING, _PONG, _CLOSE = WSMsgType.PING, WSMsgType.PONG, WSMsgType.CLOSE
_IDLE = WSAutoPingStrategy.PING_WHEN_IDLE  # unused: the inactivity ping is ours (a timer, not a task)


class Spliced(Protocol):
    """What the channel tells a splice (``transport.splice.Splice``) while one carries its messages."""

    def take(self, payload: bytes, last: bool) -> bool: ...

    def client_full(self) -> None: ...

    def client_drained(self) -> None: ...


class Detachable(Protocol):
    """aiohttp's protocol of the connection (``listener.HttpConnection``), able to let go of the socket."""

    def detach(self) -> tuple[asyncio.Transport, bytes, Callable[[], None]]:
        """The transport, the bytes read after the request head, and what to call when the socket closes."""
        ...


class _PicowsLog:
    """picows's logger: a protocol error of a client is the client's fault and not logged (its close code is
    on the access line); picows's own failures keep their traceback. Not a ``logging.Logger``, so picows
    does not build a child logger per connection."""

    __slots__ = ()

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (the logging API's name)
        return False

    def debug(self, *args: Any, **kw: Any) -> None:
        pass

    info = warning = error = log = debug

    def exception(self, msg: str, *args: Any, **kw: Any) -> None:
        log.error("picows: " + msg, *args, exc_info=True)


_QUIET = _PicowsLog()


class PicowsChannel(WSListener, Messages):
    """One WebSocket on picows as a ``Channel``: messages in an inbox, sends straight to the socket."""

    __slots__ = (
        "ws",
        "transport",
        "inbox",
        "waiter",
        "drained",
        "paused",
        "max_size",
        "parts",
        "part_kind",
        "part_size",
        "closed_with",
        "peer_code",
        "peer_reason",
        "ended",
        "lost",
        "close_timer",
        "forget",
        "ping",
        "pinged",
        "seen",
        "write_timeout",
        "owner",
        "splice",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "relay",
        "on_gone",
        "stalled",
        "stall_timer",
    )

    def __init__(self, max_size: int, forget: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.ws: WSTransport | None = None
        self.transport: asyncio.Transport | None = None
        self.inbox: deque[Data] = deque()
        self.waiter: asyncio.Future[None] | None = None  # the service waits for a message
        self.drained: asyncio.Future[None] | None = None  # a send waits for the socket's buffer to drain
        self.paused = False  # reading paused: the inbox is full
        self.max_size = max_size
        self.parts: list[bytes] | None = None  # a fragmented message being received
        self.part_kind = _BINARY
        self.part_size = 0
        self.closed_with: int | None = None  # the code the gateway closed with, if it closed first
        self.peer_code: int | None = None  # the peer's close frame, if it came
        self.peer_reason = ""
        self.ended = False  # no more messages: receive returns None once the inbox is empty
        self.lost = False  # the socket is closed
        self.close_timer: asyncio.TimerHandle | None = None
        self.forget = forget
        self.ping: asyncio.TimerHandle | None = None  # ws.inactivity.timeout
        self.pinged = False
        self.seen = 0  # frames counted when the inactivity timer last looked
        self.write_timeout: float | None = None
        self.owner: Any = None  # weak reference to the session told of a slow consumer
        self.splice: Spliced | None = None  # while spliced to a tcp back end (transport/splice.py)
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self.relay: Callable[[Data], None] | None = None  # parked: each message goes to it, no task waits
        self.on_gone: Callable[[], None] | None = None  # parked: the runner's bookkeeping once the socket closes
        self.stalled = False  # parked: reading paused until the socket's buffer drains
        self.stall_timer: asyncio.TimerHandle | None = None  # parked: ws.write.timeout while stalled

    # -- picows callbacks -------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.ws = transport
        self.transport = transport.underlying_transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        elif kind is _BINARY or kind is _TEXT:
            if self.parts is not None:
                self._fail(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
            elif frame.fin:
                self._deliver(kind, frame.get_payload_as_bytes(), frame.last_in_buffer)
            else:
                self.parts, self.part_kind, self.part_size = [frame.get_payload_as_bytes()], kind, frame.payload_size
        elif kind is _CONT:
            self._continue(frame)
        elif kind is _CLOSE:
            self._peer_closed(frame)
        elif kind is _PONG:
            self.pinged = False
        self.seen += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.lost = self.ended = True
        for timer in (self.close_timer, self.ping, self.stall_timer):
            if timer is not None:
                timer.cancel()
        self.close_timer = self.ping = self.stall_timer = None
        self.relay = None
        self._wake()
        drained, self.drained = self.drained, None  # a send waiting for the peer sees ``lost`` and raises
        if drained is not None and not drained.done():
            drained.set_result(None)
        forget, self.forget = self.forget, None
        if forget is not None:
            forget()
        gone, self.on_gone = self.on_gone, None
        if gone is not None:
            gone()

    def pause_writing(self) -> None:
        if self.relay is not None:
            self._stall()
        elif self.drained is None:
            self.drained = asyncio.get_running_loop().create_future()
        if self.splice is not None:
            self.splice.client_full()

    def resume_writing(self) -> None:
        if self.stalled:
            self._unstall()
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self.splice is not None:
            self.splice.client_drained()

    # -- receiving ----------------------------------------------------------------------------

    def _deliver(self, kind: WSMsgType, payload: bytes, last: bool = True) -> None:
        if kind is _TEXT:
            try:
                data: Data = payload.decode()
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                return
        else:
            data = payload
        if self.ended:
            return
        self.messages_in += 1
        self.bytes_in += len(data)
        splice = self.splice
        if splice is not None and splice.take(payload, last):  # a text message goes on as its UTF-8 bytes
            return
        relay = self.relay
        if relay is not None:
            relay(data)
            return
        self.inbox.append(data)
        if len(self.inbox) >= INBOX and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def _continue(self, frame: WSFrame) -> None:
        parts = self.parts
        if parts is None:
            self._fail(CloseCode.PROTOCOL_ERROR, "continuation frame without a message")
            return
        self.part_size += frame.payload_size
        if self.part_size > self.max_size:
            self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        parts.append(frame.get_payload_as_bytes())
        if frame.fin:
            self.parts = None
            self._deliver(self.part_kind, b"".join(parts), frame.last_in_buffer)

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> Data | None:
        inbox = self.inbox
        while not inbox:
            if self.ended:
                if self.peer_code is not None:
                    self._answer()
                return None
            self.waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        data = inbox.popleft()
        if self.paused and len(inbox) < INBOX // 2 and self.transport is not None and not self.lost:
            self.paused = False
            self.transport.resume_reading()
        return data

    def hold(self) -> None:
        """Stop reading from the peer (a splice's back end is full); not once closing: its close frame is read."""
        if not self.paused and not self.ended and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def unhold(self) -> None:
        """Read from the peer again."""
        if self.paused and not self.lost and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    # -- sending ----------------------------------------------------------------------------

    async def send(self, data: Data) -> None:
        ws = self.ws
        if ws is None or self.lost or ws.is_close_frame_sent:
            raise ConnectionResetError("the WebSocket is closed")
        ws.send(_TEXT if type(data) is str else _BINARY, data)
        self.messages_out += 1
        self.bytes_out += len(data)
        if self.drained is not None:
            await self._drain()

    async def _drain(self) -> None:
        """Wait for the peer to read (the socket's buffer is over the service's writer limit)."""
        drained = self.drained
        if drained is None:
            return
        timer = None
        if self.write_timeout:
            timer = asyncio.get_running_loop().call_later(self.write_timeout, self.write_stalled)
        try:
            await asyncio.shield(drained)  # every sender shares the future: one's cancellation is not all's
        finally:
            if timer is not None:
                timer.cancel()
        if self.lost:
            raise ConnectionResetError("the peer is gone")

    def watch_writes(self, timeout: float, owner: Slow) -> None:
        """A send that waits ``timeout`` s for the peer to read calls ``owner.drop_slow`` (``ws.write.timeout``)."""
        self.write_timeout = timeout
        self.owner = weakref.ref(owner)

    def write_stalled(self) -> None:
        """A send (or a splice's client) waited ``ws.write.timeout`` for the peer to read: tell the owner."""
        owner = self.owner() if self.owner is not None else None
        if owner is not None:
            owner.drop_slow(f"a send waited {self.write_timeout:g}s for the peer to read")

    # -- parked: messages answered in the frame callback -----------------------------------------

    @property
    def parked(self) -> bool:
        return self.relay is not None

    def park(self, relay: Callable[[Data], None]) -> bool:
        """From now on give each message to ``relay`` in picows's frame callback, with no task waiting on the
        channel (an idle connection then holds no task, coroutine or future; echo answers with ``send_now``).
        Messages already received go first. False, and nothing changes, if no more messages will come."""
        if self.ended or self.lost:
            return False
        self.relay = relay
        inbox = self.inbox
        while inbox and self.relay is not None and not self.ended:
            relay(inbox.popleft())
        if self.paused and not self.stalled and self.transport is not None and not self.lost:
            self.paused = False
            self.transport.resume_reading()
        return True

    def when_gone(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the socket is closed (now, if it is)."""
        if self.lost:
            callback()
        else:
            self.on_gone = callback

    def send_now(self, data: Data) -> None:
        """Send from the frame callback of a parked channel. While the socket's buffer is over the writer limit
        reading pauses (the peer's messages wait in its socket), and a stall longer than ``ws.write.timeout``
        drops the peer as a slow consumer, as a waiting ``send`` would."""
        ws = self.ws
        if ws is None or self.lost or ws.is_close_frame_sent:
            return  # closing or gone: nothing more goes out (a task's send would raise and end the same way)
        ws.send(_TEXT if type(data) is str else _BINARY, data)
        self.messages_out += 1
        self.bytes_out += len(data)

    def _stall(self) -> None:
        if self.stalled or self.lost:
            return
        self.stalled = True
        if self.transport is not None:
            self.transport.pause_reading()
        if self.write_timeout:
            self.stall_timer = asyncio.get_running_loop().call_later(self.write_timeout, self.write_stalled)

    def _unstall(self) -> None:
        self.stalled = False
        timer, self.stall_timer = self.stall_timer, None
        if timer is not None:
            timer.cancel()
        if self.transport is not None and not self.lost and not self.paused:
            self.transport.resume_reading()

    # -- inactivity -------------------------------------------------------------------------

    def watch_inactivity(self, timeout: float) -> None:
        """``ws.inactivity.timeout`` T: ping after T/2 without a frame, drop the socket if none came T/2 later."""
        self._arm_ping(timeout / 2)

    def _arm_ping(self, period: float) -> None:
        self.ping = asyncio.get_running_loop().call_later(period, self._tick, period)

    def _tick(self, period: float) -> None:
        self.ping = None
        if self.lost or self.ws is None:
            return
        if self.seen:  # a frame came: the peer is alive
            self.seen, self.pinged = 0, False
        elif self.pinged:  # nothing since the ping: gone (Kaazing and aiohttp record 1006)
            if self.closed_with is None:
                self.closed_with = CloseCode.ABNORMAL
            self.abort()
            self.ended = True
            self._wake()
            return
        else:
            self.pinged = True
            self.ws.send_ping()
        self._arm_ping(period)

    # -- closing ----------------------------------------------------------------------------

    def _peer_closed(self, frame: WSFrame) -> None:
        """The peer's close frame (picows checked its code and reason): answered once the service has
        taken what came before it (``receive`` returns ``None``) or closes, as aiohttp's reader would."""
        code = frame.get_close_code().value
        self.peer_code = code or CloseCode.NO_STATUS
        self.peer_reason = frame.get_close_reason() or ""
        self.ended = True
        self._wake()
        ws = self.ws
        if ws is not None and ws.is_close_frame_sent:  # the answer to ours: the handshake is complete
            ws.disconnect()
        elif self.relay is not None:  # parked: what came before the close is answered already
            self._answer()

    def _answer(self) -> None:
        """Answer the peer's close frame: 1000, or 1002 for a code no client may send; then end the socket."""
        ws = self.ws
        if ws is None or self.lost:
            return
        if not ws.is_close_frame_sent:
            code = self.peer_code or 0
            if client_may_send(0 if code == CloseCode.NO_STATUS else code):
                ws.send_close(WSCloseCode.OK)
            else:
                self.closed_with = CloseCode.PROTOCOL_ERROR
                ws.send_close(WSCloseCode.PROTOCOL_ERROR, b"invalid close code")
        ws.disconnect()

    def _fail(self, code: int, reason: str) -> None:
        """A frame that breaks the protocol: close with ``code``; nothing after it is read."""
        if self.closed_with is None:
            self.closed_with = code
        self.parts = None
        self.ended = True
        self.inbox.clear()
        self._wake()
        ws = self.ws
        if ws is not None and not ws.is_close_frame_sent:
            ws.send_close(WSCloseCode(code), reason.encode())
        self._await_answer(1.0)

    def _await_answer(self, grace: float) -> None:
        """Our close frame is sent: read again (the peer's answer must come through), abort after ``grace``;
        a parked channel's socket closes after ``release``'s linger, since no service ends to close it."""
        if self.close_timer is None and not self.lost:
            self.close_timer = asyncio.get_running_loop().call_later(grace, self.abort)
        if self.transport is not None and (self.paused or self.stalled):
            self.paused = self.stalled = False
            self.transport.resume_reading()
        if self.relay is not None:
            self.release()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with ``code`` and wait for the socket to end: the peer's answer, or ``CLOSE_WAIT`` s and an
        abort (as aiohttp's close waits, so a gateway shutting down lets every close handshake finish)."""
        self._close_now(code, reason, CLOSE_WAIT)
        ws = self.ws
        if ws is not None and not self.lost:
            try:
                await ws.wait_disconnected()
            except Exception:  # noqa: BLE001 - a failure picows recorded is already the close code
                pass

    def _close_now(self, code: int, reason: str, grace: float) -> None:
        ws = self.ws
        if ws is None or self.lost:
            return
        if ws.is_close_frame_sent:
            return
        if self.peer_code is not None:  # the peer's close came first: answer it instead
            self._answer()
            return
        if self.closed_with is None:
            self.closed_with = code
        self.ended = True
        self._wake()
        ws.send_close(WSCloseCode(code), reason.encode()[:120])
        self._await_answer(grace)

    def release(self) -> None:
        """The service is done: close the socket once what is buffered is written. A close frame of ours the
        peer has not answered gets ``LINGER`` s for the answer first (a client reading its messages answers at
        once), not the whole grace: a client that is not reading learns from the socket's end that the
        connection is gone, as it did when aiohttp's handler returned."""
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            return
        ws = self.ws
        if ws is not None and ws.is_close_frame_sent and self.peer_code is None:
            asyncio.get_running_loop().call_later(LINGER, self._linger_over)
        else:
            transport.close()

    def _linger_over(self) -> None:
        if self.transport is not None and not self.lost and not self.transport.is_closing():
            self.transport.close()

    def close_soon(self, code: int, reason: str, grace: float) -> None:
        """Close with ``code`` now, from outside the service's loop; abort after ``grace``."""
        self._close_now(code, reason, grace)

    def abort(self) -> None:
        """Drop the socket without a close handshake (a peer that stopped reading); nothing is sent after."""
        if self.transport is not None and not self.lost:
            self.lost = True
            self.transport.abort()

    @property
    def closed(self) -> bool:
        ws = self.ws
        return self.lost or ws is None or ws.is_close_frame_sent

    @property
    def gone(self) -> bool:
        raw = self.transport
        return self.closed or raw is None or raw.is_closing()

    @property
    def close_code(self) -> int | None:
        if self.closed_with is not None:
            return self.closed_with
        if self.peer_code is not None:
            return self.peer_code
        ws = self.ws
        handshake = ws.close_handshake if ws is not None else None
        if handshake is not None and handshake.sent is not None:  # picows failed the connection (1002, 1009)
            return handshake.sent.code.value
        return CloseCode.ABNORMAL if self.lost else None

    @property
    def peer_close(self) -> tuple[int | None, str]:
        if self.closed_with is not None or self.peer_code is None:
            if self.closed_with is None and self.lost and self.close_code == CloseCode.ABNORMAL:
                return CloseCode.ABNORMAL, ""
            return None, ""
        return self.peer_code, self.peer_reason


def hand_off(
    connection: Detachable,
    key: str,
    headers: dict[str, str],
    max_size: int,
    writer_limit: int,
) -> PicowsChannel:
    """Take the socket of an admitted upgrade from aiohttp and open the WebSocket on picows.

    picows sends the 101 (``headers`` on it) once it has read an upgrade request: it is given one built
    from the client's key, which admission checked, and then the bytes the client sent after its request.
    """
    transport, tail, forget = connection.detach()
    channel = PicowsChannel(max_size, forget)
    listener = _Listener(WSUpgradeResponse.create_101_response(headers), channel)
    protocol = WSProtocol(
        None, None, False, listener, _QUIET, True, None, False, 20, 20, _IDLE, True, max_size, None, 2048
    )
    transport.set_write_buffer_limits(high=writer_limit)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    head = f"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
    _feed(protocol, head.encode() + b"Sec-WebSocket-Version: 13\r\n\r\n" + tail)
    _forget_headers(channel.ws)
    return channel


class _Listener:
    """picows's listener factory for one connection. picows keeps the factory for the connection's life, so it
    lets go of the 101 and the channel once called (a closure would hold both: about 300 B per idle connection)."""

    __slots__ = ("response", "channel")

    def __init__(self, response: WSUpgradeResponse, channel: PicowsChannel) -> None:
        self.response: WSUpgradeResponse | None = response
        self.channel: PicowsChannel | None = channel

    def __call__(self, _request: object) -> WithListener:
        assert self.response is not None and self.channel is not None, "one upgrade per connection"
        answer = WithListener(self.response, self.channel)
        self.response = self.channel = None
        return answer


_NO_HEADERS: Any = CIMultiDict()  # shared, never written to: see _forget_headers


def _forget_headers(ws: WSTransport | None) -> None:
    """picows keeps the upgrade's request and 101 on the transport for the connection's life; their headers are
    never read again once the 101 is sent (admission read the request's; the management API shows what the
    session keeps). Dropping them saves about 1 KiB per idle connection."""
    for message in (ws.request, ws.response) if ws is not None else ():
        if message is not None:
            message.headers = _NO_HEADERS


def _feed(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """Give ``protocol`` bytes as the transport would (picows reads into its own buffer)."""
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]
