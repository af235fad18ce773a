"""aiohttp's server WebSocket as a ``core.channel.Channel``: what services read, write and close.

``AiohttpChannel`` answers the client's close frame itself (1002 for codes no client may send),
records the code that really ended the connection, counts messages and payload bytes as they pass
(text in characters), and closes from outside the service's loop with a close-or-abort timer. The
per-message path is one Python frame each way over aiohttp's own work: the reader's ``receive`` and
the frame writer's ``send_frame`` are bound once, nothing is allocated or logged per message.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WebSocketError

from ..core.channel import Data, Messages
from ..core.close import CloseCode
from .websocket import answer_close

__all__ = ["AiohttpChannel", "WriteWatch"]

_BINARY, _TEXT, _CLOSE = WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CLOSE
_ENDED = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class Slow(Protocol):
    """Who is told when a send waits too long (``core.session.LiveSession.drop_slow``)."""

    def drop_slow(self, why: str) -> None: ...


class WriteWatch:
    """Stands in for the protocol aiohttp's WebSocket writer waits on, to time a blocked send.

    The writer asks ``_paused`` once per ``writer_limit`` bytes and calls ``_drain_helper`` only
    when the transport has paused writing (its buffer is over the high-water mark), so a timer is
    armed only while a send is actually waiting for the peer, never per message. A send still
    waiting after ``timeout`` seconds drops the connection as a slow consumer.
    """

    __slots__ = ("protocol", "timeout", "owner")

    def __init__(self, protocol: Any, timeout: float, owner: Slow) -> None:
        self.protocol = protocol
        self.timeout = timeout
        # Weak: a cycle through the writer would leave sessions (and the back-end streams in their
        # context) to the cyclic collector, which may finalise them in a worker thread.
        self.owner = weakref.ref(owner)

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
        owner = self.owner()
        if owner is not None:
            owner.drop_slow(f"a send waited {self.timeout:g}s for the peer to read")


class AiohttpChannel(Messages):
    """One accepted aiohttp WebSocket (``GuardedResponse``, ``autoclose=False``) as a ``Channel``."""

    __slots__ = (
        "ws",
        "transport",
        "_receive",
        "_send_frame",
        "_closing",
        "closed_with",
        "peer_reason",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "__weakref__",
    )

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
        self.ws = ws
        self.transport = transport
        # Bound once: the per-message calls cost no extra Python frame.
        self._receive = ws.receive
        writer = ws._writer
        assert writer is not None, "the WebSocket is prepared (101 sent)"
        self._send_frame = writer.send_frame
        self._closing: asyncio.Task[None] | None = None
        self.closed_with: int | None = None  # the code the gateway closed with, if it closed first
        self.peer_reason = ""  # the reason in the client's close frame, if it closed first
        # Payload sizes, text in characters; read by the metrics collector and the access line.
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0

    def watch_writes(self, timeout: float, owner: Slow) -> None:
        """A send that waits ``timeout`` s for the peer to read calls ``owner.drop_slow`` (``ws.write.timeout``)."""
        writer = self.ws._writer
        if writer is not None:
            writer.protocol = WriteWatch(writer.protocol, timeout, owner)  # type: ignore[assignment]

    # -- messages ---------------------------------------------------------------------------

    async def receive(self) -> Data | None:
        receive = self._receive
        while True:
            msg = await receive()
            kind = msg.type
            if kind is _BINARY or kind is _TEXT:
                data: Data = msg.data
                self.messages_in += 1
                self.bytes_in += len(data)
                return data
            if kind in _ENDED:
                await self._ended(msg.type, msg.extra)
                return None

    async def _ended(self, kind: WSMsgType, extra: str | None) -> None:
        if kind is _CLOSE:
            self.peer_reason = extra or ""
            await self.answer_close()

    async def send(self, data: Data) -> None:
        if type(data) is str:
            await self._send_frame(data.encode(), _TEXT)
        else:
            await self._send_frame(data, _BINARY)  # type: ignore[arg-type]
        self.messages_out += 1
        self.bytes_out += len(data)

    # -- closing ----------------------------------------------------------------------------

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

    def close_soon(self, code: int, reason: str, grace: float) -> None:
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

    def abort(self) -> None:
        """Drop the socket without a close handshake (a peer that stopped reading)."""
        if self.transport is not None:
            self.transport.abort()

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @property
    def gone(self) -> bool:
        """Is the client's socket closed or closing (so a failed write is the client's loss, not a fault)?"""
        transport = self.transport
        return self.ws.closed or transport is None or transport.is_closing()

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

    @property
    def peer_close(self) -> tuple[int | None, str]:
        """The client's close frame if it closed first (``NO_STATUS`` for one without a code)."""
        if self.closed_with is not None:
            return None, ""
        code = self.ws.close_code
        if code is None:
            return None, ""
        return (CloseCode.NO_STATUS if code == 0 else code), self.peer_reason
