"""A tcp:// or ssl:// back end as an ``asyncio.Protocol``: the proxy's back-end leg.

``TcpBackend`` (transport/backend.py) reads through a ``StreamReader`` and writes through a
``StreamWriter``: every message costs a task switch each way, a copy into the reader's buffer and a drain
check. ``TcpLeg`` is the loop's (or aiofastnet's) transport and a small protocol, in one of two modes:

- **generic**: the ``Backend`` interface (``receive``/``send``/``finish``/``close``) the proxy's relay
  uses, with the same backpressure as ``TcpBackend``: reading pauses while more than ``max_pending``
  bytes wait for ``receive``; ``send`` waits while more than ``max_pending`` bytes wait for the socket;
- **spliced** (``transport/splice.py``): ``data_received`` hands every read straight to the client's
  WebSocket and the flow control is the transports' own ``pause_reading``/``resume_reading``.

What the proxy sees of the back end's end is as before: EOF (or a loss without an error) is ``None``
from ``receive``, a loss with an error is that ``OSError``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Protocol, cast

from ..config.values import Uri
from ..core.close import CloseCode
from .backend import CLOSE_GRACE, READ_CHUNK, dial

__all__ = ["CLIENT", "EOF", "LOST", "RULES", "TcpLeg", "open_leg"]

# How a splice (transport/splice.py) ended: the client's side ended; the back end's EOF; its loss (the leg's
# ``error``); rules or a policy appeared (the relay carries on).
CLIENT, EOF, LOST, RULES = "client", "eof", "lost", "rules"


class LegSplice(Protocol):
    """What the leg tells a splice (``transport.splice.Splice``) while one carries its bytes."""

    def give(self, data: bytes) -> bool: ...

    def backend_full(self) -> None: ...

    def backend_drained(self) -> None: ...

    def backend_ended(self, error: OSError | None) -> None: ...


class TcpLeg(asyncio.Protocol):
    """One back-end connection; ``splice`` is set while a splice carries its bytes."""

    def __init__(self, max_pending: int, secure: bool) -> None:
        self.max_pending = max_pending
        self.secure = secure  # TLS: EOF closes the transport (no half-close over TLS)
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()  # generic mode: read, not yet received
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None  # receive waits for bytes
        self.drained: asyncio.Future[None] | None = None  # send waits for the socket's buffer to drain
        self.paused = False  # reading paused (our buffer is full, or the client's socket is)
        self.eof = False
        self.error: OSError | None = None
        self.lost = False
        self.gone: asyncio.Future[None] | None = None  # close waits for connection_lost
        self.splice: LegSplice | None = None
        self.close_code: int | None = None  # TCP has none (the Backend interface's ws back ends do)

    # -- protocol callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # aiofastnet's are not asyncio's classes
        transport.set_write_buffer_limits(high=self.max_pending)

    def data_received(self, data: bytes) -> None:
        splice = self.splice
        if splice is not None and splice.give(data):
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > self.max_pending:
            self.pause()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._ended()
        return not self.secure  # plain TCP: the client may still send after the back end's half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and not self.eof:
            self.error = exc if isinstance(exc, OSError) else ConnectionResetError(str(exc) or type(exc).__name__)
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)  # the sender sees ``lost``
        gone, self.gone = self.gone, None
        if gone is not None and not gone.done():
            gone.set_result(None)
        self._ended()

    def pause_writing(self) -> None:
        if self.drained is None:
            self.drained = asyncio.get_running_loop().create_future()
        if self.splice is not None:
            self.splice.backend_full()

    def resume_writing(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self.splice is not None:
            self.splice.backend_drained()

    def _ended(self) -> None:
        if self.splice is not None:
            self.splice.backend_ended(self.error)
        self._wake()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the Backend interface (generic mode) ----------------------------------------------------

    async def receive(self) -> bytes | None:
        """What the back end sent (up to ``READ_CHUNK`` at a time); ``None`` at EOF; its ``OSError`` if lost."""
        chunks = self.chunks
        while not chunks:
            if self.error is not None:
                raise self.error
            if self.eof or self.lost:
                return None
            self.resume()  # nothing buffered: whatever paused reading (a splice's client) is over
            self.waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        data = chunks.popleft()
        if len(data) > READ_CHUNK:
            chunks.appendleft(data[READ_CHUNK:])
            data = data[:READ_CHUNK]
        elif chunks and len(data) + len(chunks[0]) <= READ_CHUNK:  # small reads: one message, as a stream's read
            parts = [data]
            size = len(data)
            while chunks and size + len(chunks[0]) <= READ_CHUNK:
                size += len(chunks[0])
                parts.append(chunks.popleft())
            data = b"".join(parts)
        self.buffered -= len(data)
        if self.paused and self.buffered <= self.max_pending // 2:
            self.resume()
        return data

    async def send(self, data: bytes | str) -> None:
        """Write; wait while the back end's socket holds more than ``max_pending`` bytes. After the back end
        is gone the bytes are dropped (its loss reaches the client through ``receive``)."""
        transport = self.transport
        if transport is None or self.lost:
            return
        transport.write(data.encode() if isinstance(data, str) else data)
        drained = self.drained
        if drained is not None:
            await asyncio.shield(drained)  # shared by every sender
            if self.lost:
                raise ConnectionResetError("the back end connection was lost")

    def finish(self) -> None:
        """Half-close: the client is done sending; the back end may still answer."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection (``code`` and ``reason`` are for ws back ends); a back end that does not read
        what is still buffered for it is aborted after ``CLOSE_GRACE``."""
        transport = self.transport
        if transport is None or self.lost:
            return
        gone = self.gone
        if gone is None:
            self.gone = gone = asyncio.get_running_loop().create_future()
        transport.close()
        abort = asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)
        try:
            await gone
        finally:
            abort.cancel()

    def pause(self) -> None:
        """Stop reading from the back end."""
        if not self.paused and self.transport is not None and not self.lost:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        """Read from the back end again."""
        if self.paused and self.transport is not None and not self.lost:
            self.paused = False
            self.transport.resume_reading()


async def open_leg(uri: Uri, context: ssl.SSLContext | None, max_pending: int) -> TcpLeg:
    """Dial ``uri``; ``BackendError`` as ``open_tcp``'s: 1014 for TLS refused, 1011 for anything else."""
    loop = asyncio.get_running_loop()
    _, leg = await dial(
        uri,
        loop.create_connection(
            lambda: TcpLeg(max_pending, context is not None),
            uri.host,
            uri.port,
            ssl=context,
            server_hostname=uri.host if context else None,
        ),
    )
    return leg
