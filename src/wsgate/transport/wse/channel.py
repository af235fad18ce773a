"""One emulated WebSocket as a ``core.channel.Channel``: what services read, write and close.

``EmulatedChannel`` knows nothing of HTTP. Upstream requests ``deliver`` the messages they decoded
(and wait while the service has not read enough of them: the spec lets an upstream response wait,
which is the client's backpressure); ``send`` encodes a message into the downstream buffer and
waits while that buffer is over the service's writer limit, as a native send waits for the socket;
a send that waits longer than ``ws.write.timeout`` drops the session as a slow consumer. The
downstream responses ``take`` what is buffered.

Closing follows the spec's handshake: the side that closes sends ``CLOSE`` (then ``RECONNECT``),
the other answers with its own. WSE's close command carries no code or reason, so the client sees
a clean close (1005 in a browser's emulated WebSocket); the code the gateway closed with is kept
for the access line and the metrics, and a client's ``CLOSE`` reads as ``NO_STATUS`` (1005),
a session lost without one as ``ABNORMAL`` (1006).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable

from ...core.channel import Data, Messages
from ...core.close import CloseCode
from ...core.session import LiveSession
from ...core.wse_frames import CLOSE, PONG, RECONNECT, Encoding, binary_frame, escape_downstream, text_frame

__all__ = ["EmulatedChannel"]

CLOSE_TIMEOUT = 5.0  # how long a gateway close waits for the client's CLOSE before it gives up
_CLOSING = CLOSE + RECONNECT


class EmulatedChannel(Messages):
    """The service's side of one emulated WebSocket (see the module docstring)."""

    __slots__ = (
        "encoding",
        "writer_limit",
        "inbox_limit",
        "write_timeout",
        "owner",
        "on_end",
        "pending",
        "pending_size",
        "inbox",
        "inbox_size",
        "_arrived",
        "_space",
        "_writable",
        "wake",
        "_eof",
        "_closed",
        "_finished",
        "_closing",
        "closed_with",
        "_peer",
        "lost",
        "aborted",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "__weakref__",
    )

    def __init__(
        self, encoding: Encoding, writer_limit: int, inbox_limit: int, write_timeout: float | None = None
    ) -> None:
        self.encoding = encoding
        self.writer_limit = writer_limit
        self.inbox_limit = inbox_limit
        self.write_timeout = write_timeout
        self.owner: weakref.ref[LiveSession] | None = None  # told when a send waits too long
        self.on_end: Callable[[], None] | None = None  # the adapter ends the session's downstream and timers
        self.pending: list[bytes] = []  # encoded frames for the next downstream response
        self.pending_size = 0
        self.inbox: deque[Data] = deque()
        self.inbox_size = 0
        self._arrived = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._writable = asyncio.Event()
        self._writable.set()
        self.wake = asyncio.Event()  # a downstream waits on it: frames to take, or the end
        self._eof = False  # receive returns None from now on
        self._closed = False  # CLOSE sent (or the session dropped): no more sends
        self._finished = asyncio.Event()  # the close handshake completed (or the session was dropped)
        self._closing: asyncio.Task[None] | None = None
        self.closed_with: int | None = None  # the code the gateway closed with, if it closed first
        self._peer: tuple[int | None, str] = (None, "")
        self.lost = False  # dropped without a close handshake (downstream gone too long, aborted)
        self.aborted = False  # abort() was called: nothing more is sent
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0

    # -- messages ---------------------------------------------------------------------------

    async def receive(self) -> Data | None:
        inbox = self.inbox
        while not inbox:
            if self._eof:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        data = inbox.popleft()
        size = len(data)
        self.inbox_size -= size
        if self.inbox_size <= self.inbox_limit:
            self._space.set()
        self.messages_in += 1
        self.bytes_in += size
        return data

    async def deliver(self, data: Data) -> None:
        """A message from an upstream request; waits while the service has more than its share unread."""
        if self._eof:
            return
        self.inbox.append(data)
        self.inbox_size += len(data)
        self._arrived.set()
        if self.inbox_size > self.inbox_limit:
            self._space.clear()
            await self._space.wait()

    async def send(self, data: Data) -> None:
        if self._closed:
            raise ConnectionResetError("the emulated WebSocket is closed")
        encoding = self.encoding
        if type(data) is str:
            payload = data.encode()
            frame = text_frame(payload) if encoding.mixed else binary_frame(payload)
        else:
            frame = binary_frame(data)  # type: ignore[arg-type]
        if encoding.escaped:
            frame = escape_downstream(frame)
        self.pending.append(frame)
        self.pending_size += len(frame)
        self.wake.set()
        self.messages_out += 1
        self.bytes_out += len(data)
        if self.pending_size > self.writer_limit:
            await self._wait_writable()

    async def _wait_writable(self) -> None:
        self._writable.clear()
        if self.write_timeout is None:
            await self._writable.wait()
            return
        try:
            await asyncio.wait_for(self._writable.wait(), self.write_timeout)
        except TimeoutError:
            owner = self.owner() if self.owner is not None else None
            if owner is not None:
                owner.drop_slow(f"a send waited {self.write_timeout:g}s for the client to read")
        if self._closed:
            raise ConnectionResetError("the emulated WebSocket is closed")

    async def pong(self) -> None:
        """Answer a client's PING (only clients that sent ``X-Accept-Commands: ping`` may send one).

        A PONG is buffered for the downstream as a message is, and waits as a send does while the buffer is
        over the writer limit: a client that sends PINGs and reads nothing must not grow it without end."""
        if self._closed:
            return
        self.pending.append(PONG)
        self.pending_size += len(PONG)
        self.wake.set()
        if self.pending_size > self.writer_limit:
            await self._wait_writable()

    def take(self) -> bytes:
        """Everything buffered for the downstream, at once (and room for the service's next sends)."""
        pending = self.pending
        if not pending:
            return b""
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self.pending_size = 0
        self._writable.set()
        return data

    @property
    def finishing(self) -> bool:
        """``CLOSE`` + ``RECONNECT`` are buffered or taken: the downstream ends after them."""
        return self._closed

    # -- closing ----------------------------------------------------------------------------

    def peer_closed(self) -> None:
        """The client's ``CLOSE`` command: the handshake is answered (or completed, if the gateway closed first)."""
        if self._peer[0] is None and self.closed_with is None:
            self._peer = (CloseCode.NO_STATUS, "")
        self._eof = True
        self._arrived.set()
        if not self._closed:
            self._queue_close()
        self._finished.set()

    def _queue_close(self) -> None:
        self._closed = True
        self.pending.append(_CLOSING)
        self.pending_size += len(_CLOSING)
        self.wake.set()
        self._writable.set()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send ``CLOSE`` (+ ``RECONNECT``) and wait a while for the client's ``CLOSE``."""
        if self._closed:
            return
        if self.closed_with is None:
            self.closed_with = code
        self._eof = True
        self._arrived.set()
        self._queue_close()
        try:
            await asyncio.wait_for(self._finished.wait(), CLOSE_TIMEOUT)
        except TimeoutError:
            pass

    def close_soon(self, code: int, reason: str, grace: float) -> None:
        if self._closing is None and not self._closed:
            self._closing = asyncio.get_running_loop().create_task(self._close_or_abort(code, reason, grace))

    async def _close_or_abort(self, code: int, reason: str, grace: float) -> None:
        timer = asyncio.get_running_loop().call_later(grace, self.abort)
        try:
            await self.close(code, reason)
        finally:
            timer.cancel()

    def abort(self) -> None:
        """Drop the session without a close handshake (its downstream ends without ``CLOSE``)."""
        self.aborted = True
        if not self._finished.is_set():
            self.lost = not self._closed and self.closed_with is None
            self._closed = True
            self._eof = True
            self._arrived.set()
            self._space.set()
            self._writable.set()
            self.wake.set()
            self._finished.set()
        if self.on_end is not None:
            self.on_end()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def gone(self) -> bool:
        return self._closed

    @property
    def close_code(self) -> int | None:
        if self.closed_with is not None:
            return self.closed_with
        if self.lost:
            return CloseCode.ABNORMAL
        return self._peer[0]

    @property
    def peer_close(self) -> tuple[int | None, str]:
        if self.closed_with is not None:
            return None, ""
        if self.lost:
            return CloseCode.ABNORMAL, ""
        return self._peer
