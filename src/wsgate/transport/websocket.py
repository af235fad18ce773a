"""The per-connection WebSocket interface services use.

Services see only ``Connection``: ``receive()``, ``send_bytes()``, ``send_str()``,
``close()``. Today it wraps aiohttp's ``WebSocketResponse``; a picows listener can
provide the same methods where it measures faster (see issue "benchmark harness").
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WebSocketError, WSMessage
from multidict import CIMultiDict

from ..config.model import AcceptOptions
from ..core.close import CloseCode, client_may_send
from ..core.http import wants_upgrade
from ..security.challenges import SUBPROTOCOL_TOKEN_PREFIX, offered_subprotocols, without_token_offers

if TYPE_CHECKING:
    from ..core.identity import Identity
    from ..core.peer import PeerIdentity

__all__ = [
    "Connection",
    "WSMessage",
    "WSMsgType",
    "CloseCode",
    "accept_websocket",
    "is_upgrade",
    "HANDSHAKE_DONE",
]
# The listener puts a callable here; called once the 101 is sent, the handshake no longer counts as in progress.
HANDSHAKE_DONE: web.RequestKey[Callable[[], None]] = web.RequestKey("wsgate.handshake-done")


_ENDED = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


SLOW_DROP_GRACE = 2.0  # a slow consumer closed with 1008 is aborted if it has not taken the close by then


class WriteWatch:
    """Stands in for the protocol aiohttp's WebSocket writer waits on, to time a blocked send.

    The writer asks ``_paused`` once per ``writer_limit`` bytes and calls ``_drain_helper`` only
    when the transport has paused writing (its buffer is over the high-water mark), so a timer is
    armed only while a send is actually waiting for the peer, never per message. A send still
    waiting after ``timeout`` seconds drops the connection as a slow consumer.
    """

    __slots__ = ("protocol", "timeout", "connection")

    def __init__(self, protocol: Any, timeout: float, connection: Connection) -> None:
        self.protocol = protocol
        self.timeout = timeout
        # Weak: a cycle through the writer would leave connections (and the back-end streams in their
        # context) to the cyclic collector, which may finalise them in a worker thread.
        self.connection = weakref.ref(connection)

    @property
    def _paused(self) -> bool:
        return bool(self.protocol._paused)

    async def _drain_helper(self) -> None:
        timer = asyncio.get_running_loop().call_later(self.timeout, self.stalled)
        try:
            await self.protocol._drain_helper()
        finally:
            timer.cancel()

    def stalled(self) -> None:
        connection = self.connection()
        if connection is not None:
            connection.drop_slow(f"a send waited {self.timeout:g}s for the peer to read")


class Connection:
    """One accepted WebSocket with what later layers need to know about its peer."""

    __slots__ = (
        "ws",
        "transport",
        "service",
        "remote",
        "peer",
        "identity",
        "id",
        "started",
        "opened",
        "context",
        "receive",
        "send_bytes",
        "send_str",
        "_expiry",
        "_closing",
        "deadline",
        "closed_with",
        "peer_reason",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "slow",
        "on_slow",
        "__weakref__",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        service: str,
        remote: str,
        peer: PeerIdentity | None,
        write_timeout: float | None = None,
    ) -> None:
        self.ws = ws
        # Bound once: the per-message calls cost no extra Python frame.
        self.receive = ws.receive
        self.send_bytes = ws.send_bytes
        self.send_str = ws.send_str
        self.transport = transport
        self.service = service
        self.remote = remote
        self.peer = peer
        self.opened = time.monotonic()
        self.identity: Identity | None = None
        self.id = ""
        self.started = time.time()  # wall clock, for session-timeout
        self._expiry: asyncio.TimerHandle | None = None
        self.deadline: float | None = None  # wall clock: when the credentials or session run out
        self.closed_with: int | None = None  # the code the gateway closed with, if it closed first
        self.peer_reason = ""  # the reason in the client's close frame, if it closed first
        self._closing: asyncio.Task[None] | None = None
        self.context: object = None  # what the service prepared before the upgrade
        # Counted by the services' loops (payload sizes; text in characters), read by the metrics collector.
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self.slow = False  # dropped as a slow consumer
        self.on_slow: Callable[[Connection, str], None] | None = None  # the service counts and logs the drop
        writer = getattr(ws, "_writer", None)
        if write_timeout and writer is not None:
            writer.protocol = WriteWatch(writer.protocol, write_timeout, self)

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> WSMessage:
        msg = await self.receive()
        if msg.type in _ENDED:
            if msg.type is WSMsgType.CLOSE:
                self.peer_reason = msg.extra or ""
                await self.answer_close()
            raise StopAsyncIteration
        return msg

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with ``code``; reasons are short and never carry internal detail."""
        ws = self.ws
        if ws.closed:
            return
        if ws.close_code is not None:  # the client's close frame came first: answer it instead
            await self.answer_close()
            return
        if self.closed_with is None:
            self.closed_with = code
        await ws.close(code=code, message=reason.encode()[:120])

    async def answer_close(self) -> None:
        """Answer the client's close frame: 1000, or fail with 1002 if its code is one no client may send."""
        failed = await answer_close(self.ws)
        if failed is not None and self.closed_with is None:
            self.closed_with = failed

    def expire_at(self, deadline: float | None, reason: str = "session expired") -> None:
        """Close with 1008 at wall-clock ``deadline`` (None: never); replaces an earlier deadline."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.deadline = deadline
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(max(0.0, deadline - time.time()), self.expire, reason)

    def expire(self, reason: str, grace: float = 2.0) -> None:
        """Close with 1008 ``reason`` now; a peer that does not answer within ``grace`` is aborted."""
        self.end(CloseCode.POLICY_VIOLATION, reason, grace)

    def end(self, code: int, reason: str, grace: float = 2.0) -> None:
        """Close with ``code`` now, from outside the service's loop; abort after ``grace``."""
        if self._closing is None and not self.ws.closed:
            self._closing = asyncio.get_running_loop().create_task(self._close_or_abort(code, reason, grace))

    async def _close_or_abort(self, code: int, reason: str, grace: float) -> None:
        """The abort is a timer, not a cancelled close: cancelling a close that waits in aiohttp's drain
        cancels the drain future every sender shares, and a closing transport with a full buffer then
        waits for the peer forever."""
        timer = asyncio.get_running_loop().call_later(grace, self.abort)
        try:
            await self.close(code, reason)
        except OSError:
            self.abort()
        finally:
            if self.transport is None or not self.transport.get_write_buffer_size():
                timer.cancel()

    def drop_slow(self, why: str) -> None:
        """Close a peer that does not take what is sent: 1008 "too slow" now, aborted 2 s later."""
        if self.slow or self.ws.closed:
            return
        self.slow = True
        if self.on_slow is not None:
            self.on_slow(self, why)
        self.end(CloseCode.POLICY_VIOLATION, "too slow", SLOW_DROP_GRACE)

    def cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()

    def abort(self) -> None:
        """Drop the socket without a close handshake (a peer that stopped reading)."""
        if self.transport is not None:
            self.transport.abort()

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @property
    def close_code(self) -> int | None:
        """The code that ended the connection: the gateway's if it closed first, else the peer's.

        aiohttp fails a connection on a bad frame (1002, 1007, 1009) and then reports 1006 because the
        reader stays broken while it waits for the answer; the error it kept says what was sent.
        """
        if self.closed_with is not None:
            return self.closed_with
        error = self.ws.exception()
        if isinstance(error, WebSocketError):
            return int(error.code)
        code = self.ws.close_code
        return CloseCode.NO_STATUS if code == 0 else code


def is_upgrade(request: web.BaseRequest) -> bool:
    """Does the request ask for a WebSocket (any ``Upgrade`` line naming it)? ``check_handshake`` checks the rest."""
    return wants_upgrade(request.headers)


def request_host(request: web.BaseRequest) -> str | None:
    """The host a request is routed by, lowercased; None for a ``Host`` that is not ASCII or no URL can carry."""
    if not request.host.isascii():
        return None
    try:
        host = request.url.host
    except ValueError:  # UnicodeError from IDNA: non-ASCII, surrogate-escaped or control bytes
        return None
    return (host or "").lower().rstrip(".")


async def answer_close(ws: web.WebSocketResponse) -> int | None:
    """Answer a client's close frame (aiohttp's autoclose answers everything with 1000).

    Returns 1002 if the client used a code no endpoint may send (1005, 1006, 5000, ...) and the
    connection was failed, else None.
    """
    if ws.closed:
        return None
    if client_may_send(ws.close_code or 0):
        await ws.close(drain=False)
        return None
    await ws.close(code=CloseCode.PROTOCOL_ERROR, message=b"invalid close code", drain=False)
    return CloseCode.PROTOCOL_ERROR


class MaskedFrames:
    """Stands in front of aiohttp's frame reader: every client frame must be masked (RFC 6455 §5.1).

    Both aiohttp readers (``reader_c``, which production uses, and ``reader_py``) unmask a frame when
    its mask bit is set and take it as it is otherwise; neither has a per-frame hook. So this walks the
    frame headers of the byte stream: a subtraction per chunk inside a payload, a few integer
    operations per frame, no allocation unless a header is split between reads. The first unmasked
    frame and everything after it never reach the reader; the connection fails with 1002.
    """

    __slots__ = ("reader", "queue", "skip", "head", "failed")

    def __init__(self, reader: Any, queue: Any) -> None:
        self.reader = reader
        self.queue = queue
        self.skip = 0  # bytes before the next frame header
        self.head = b""  # the start of a frame header cut by the end of the last read
        self.failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.failed:
            return True, b""
        skip = self.skip
        if skip >= len(data) and not self.head:
            self.skip = skip - len(data)
            return self.reader.feed_data(data)  # type: ignore[no-any-return]
        bad = self._walk(data)
        if bad is None:
            return self.reader.feed_data(data)  # type: ignore[no-any-return]
        self.failed = True
        if bad > 0:
            self.reader.feed_data(data[:bad])
        self.queue.set_exception(WebSocketError(CloseCode.PROTOCOL_ERROR, "unmasked client frame"))
        return True, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()

    def _walk(self, data: bytes) -> int | None:
        """Where in ``data`` the first unmasked frame starts (None: all masked); keeps the position of the next."""
        cut = len(self.head)
        buffer = self.head + data if cut else data
        end = len(buffer)
        pos = self.skip
        while pos < end:
            if end - pos < 2:
                break
            second = buffer[pos + 1]
            if not second & 0x80:
                return max(pos - cut, 0)
            length = second & 0x7F
            if length < 126:
                pos += 6 + length
            elif length == 126:
                if end - pos < 4:
                    break
                pos += 8 + (buffer[pos + 2] << 8 | buffer[pos + 3])
            else:
                if end - pos < 10:
                    break
                pos += 14 + int.from_bytes(buffer[pos + 2 : pos + 10], "big")
        if pos >= end:
            self.skip, self.head = pos - end, b""
        else:
            self.skip, self.head = 0, buffer[pos:]
        return None


class GuardedResponse(web.WebSocketResponse):
    """aiohttp's server WebSocket with ``MaskedFrames`` in front of its frame reader."""

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        handler: Any = request.protocol
        early, handler._message_tail = handler._message_tail, b""  # frames sent with the request: checked too
        super()._post_start(request, protocol, writer)
        guard = MaskedFrames(self._parser, self._reader)
        handler._payload_parser = guard
        if early:
            guard.feed_data(early)


async def accept_websocket(
    request: web.BaseRequest,
    options: AcceptOptions,
    writer_limit: int = 64 * 1024,
    protocols: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> web.WebSocketResponse:
    """Complete the upgrade with the service's limits applied.

    ``ws.inactivity.timeout`` T: ping after T/2 of silence, close if no pong within
    another T/2 (Kaazing semantics). Compression is off: it costs CPU per message
    and mixes secrets with attacker-chosen data (CRIME-style leaks).
    """
    timeout = options.inactivity_timeout
    ws = GuardedResponse(
        heartbeat=timeout / 2 if timeout else None,
        autoclose=False,  # Connection answers the client's close frame (answer_close)
        compress=False,
        max_msg_size=options.max_message_size + 1,  # aiohttp refuses sizes >= its limit; ours allows ==
        writer_limit=writer_limit,
        protocols=protocols,
    )
    if headers:
        ws.headers.update(headers)
    if timeout:
        ws._pong_heartbeat = timeout / 2  # aiohttp waits heartbeat/2 for the pong; Kaazing waits T/2
    await ws.prepare(_without_token_offers(request))
    done = request.get(HANDSHAKE_DONE)
    if done is not None:
        done()
    return ws


def _without_token_offers(request: web.BaseRequest) -> web.BaseRequest:
    """The request as aiohttp's handshake should see it: no ``wsgate.token.`` subprotocol offers.

    aiohttp logs the client's offers when none is accepted; credentials must not be among them
    (and are never selected, so the 101 is the same).
    """
    header = request.headers.get("Sec-WebSocket-Protocol")
    if header is None or SUBPROTOCOL_TOKEN_PREFIX not in header.lower():
        return request
    offers = without_token_offers(offered_subprotocols(header))
    headers = CIMultiDict(request.headers)
    del headers["Sec-WebSocket-Protocol"]
    if offers:
        headers["Sec-WebSocket-Protocol"] = ", ".join(offers)
    return request.clone(headers=headers)
