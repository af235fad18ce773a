"""Outbound connections to back ends: tcp://, ssl://, ws://, wss://.

Both kinds offer one small interface (``receive``/``send``/``finish``/``close``)
so the proxy relays without caring which it has. Failures become ``BackendError``
carrying the close code the client should get; the detail goes to the log only.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp

from ..config.values import Uri
from ..core.close import CloseCode
from ..errors import BackendError

T = TypeVar("T")
CONNECT_TIMEOUT = 10.0
READ_CHUNK = 64 * 1024
CLOSE_GRACE = 2.0  # how long a closing back end may take to read what is still buffered for it
UNAVAILABLE, BAD_GATEWAY = CloseCode.INTERNAL_ERROR, CloseCode.BAD_GATEWAY


class TcpBackend:
    """A byte stream; ``send`` waits only when more than ``max_pending`` bytes are queued."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_pending: int) -> None:
        self.reader = reader
        self.writer = writer
        self.max_pending = max_pending
        writer.transport.set_write_buffer_limits(high=max_pending)
        self.close_code: int | None = None

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.writer.transport  # type: ignore[return-value]

    async def receive(self) -> bytes | None:
        data = await self.reader.read(READ_CHUNK)
        return data or None

    async def send(self, data: bytes | str) -> None:
        writer = self.writer
        writer.write(data.encode() if isinstance(data, str) else data)
        if writer.transport.get_write_buffer_size() > self.max_pending:
            await writer.drain()

    def finish(self) -> None:
        """Half-close: the client is done sending; the back end may still answer."""
        if not self.writer.is_closing() and self.writer.can_write_eof():
            self.writer.write_eof()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the stream (TCP has no close code: ``code`` and ``reason`` are for ws back ends).

        A back end that does not read what is still buffered for it is aborted after ``CLOSE_GRACE``.
        """
        self.writer.close()
        abort = asyncio.get_running_loop().call_later(CLOSE_GRACE, self.writer.transport.abort)
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
        finally:
            abort.cancel()


class WsBackend:
    """A WebSocket back end; message boundaries and text/binary types are kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.protocol = ws.protocol  # the subprotocol the back end chose, passed on to the client

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    @property
    def transport(self) -> asyncio.Transport | None:
        """The socket's transport, which aiohttp's client WebSocket keeps in its frame writer."""
        writer = getattr(self.ws, "_writer", None)
        return getattr(writer, "transport", None)

    async def receive(self) -> bytes | str | None:
        msg = await self.ws.receive()
        if msg.type is aiohttp.WSMsgType.BINARY or msg.type is aiohttp.WSMsgType.TEXT:
            return msg.data  # type: ignore[no-any-return]
        return None

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    def finish(self) -> None:
        """WebSocket has no half-close; ``close`` sends the close frame."""

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with the client's ``code`` and ``reason`` (the proxy maps them, see ProxyService.client_close)."""
        await self.ws.close(code=code, message=reason.encode())


Backend = TcpBackend | WsBackend


async def open_tcp(uri: Uri, context: ssl.SSLContext | None, max_pending: int) -> TcpBackend:
    reader, writer = await dial(
        uri,
        asyncio.open_connection(
            uri.host, uri.port, ssl=context, server_hostname=uri.host if context else None, limit=max_pending
        ),
    )
    return TcpBackend(reader, writer, max_pending)


async def dial(uri: Uri, connecting: Awaitable[T]) -> T:
    """``connecting`` within ``CONNECT_TIMEOUT``; a failure is the ``BackendError`` whose close code the client
    gets: 1014 when TLS was refused, 1011 for anything else (the detail goes to the log only)."""
    try:
        return await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
    except ssl.SSLCertVerificationError as exc:
        raise BackendError(f"{uri}: TLS verification failed: {exc.verify_message}", BAD_GATEWAY) from None
    except ssl.SSLError as exc:
        raise BackendError(f"{uri}: TLS handshake failed: {exc.reason or exc}", BAD_GATEWAY) from None
    except (TimeoutError, OSError) as exc:
        raise BackendError(f"{uri}: cannot connect: {_describe(exc)}", UNAVAILABLE) from None


async def open_ws(
    session: aiohttp.ClientSession,
    uri: Uri,
    context: ssl.SSLContext | None,
    max_message_size: int,
    inactivity_timeout: float | None = None,
    protocols: tuple[str, ...] = (),
) -> WsBackend:
    """``inactivity_timeout`` T: ping the back end after T/2 of silence, give up after another T/2."""
    heartbeat = inactivity_timeout / 2 if inactivity_timeout else None
    return WsBackend(await connect_ws(session, uri, context, max_message_size, heartbeat, protocols=protocols))


async def connect_ws(
    session: aiohttp.ClientSession,
    uri: Uri,
    context: ssl.SSLContext | None,
    max_message_size: int,
    heartbeat: float | None,
    *,
    protocols: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> aiohttp.ClientWebSocketResponse:
    """A client WebSocket to ``uri`` (a ws back end, a DMZ tunnel), or ``BackendError``: 1014 for TLS
    verification or a refused handshake, 1011 for anything else; ``heartbeat``: ping after that much silence."""
    try:
        return await asyncio.wait_for(
            session.ws_connect(
                uri.raw,
                ssl=context if context is not None else False,
                headers=headers,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                max_msg_size=max_message_size + 1,
                compress=0,
                autoping=True,
                heartbeat=heartbeat,
                protocols=protocols,
            ),
            timeout,
        )
    except aiohttp.ClientConnectorCertificateError as exc:
        raise BackendError(f"{uri}: TLS verification failed: {exc.certificate_error}", BAD_GATEWAY) from None
    except aiohttp.WSServerHandshakeError as exc:
        raise BackendError(f"{uri}: WebSocket handshake refused: HTTP {exc.status}", BAD_GATEWAY) from None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise BackendError(f"{uri}: cannot connect: {_describe(exc, timeout)}", UNAVAILABLE) from None


class ClientSessions:
    """aiohttp's client session for one service's outbound WebSockets, kept here, not in the service.

    ``start`` and ``close`` bracket the service's life; every dial is a fresh connection (no pooling:
    each client gets its own back-end connection or tunnel).
    """

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))

    async def close(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()


class WsDialer(ClientSessions):
    """Dials ws:// and wss:// back ends for one service."""

    async def dial(
        self,
        uri: Uri,
        context: ssl.SSLContext | None,
        max_message_size: int,
        inactivity_timeout: float | None = None,
        protocols: tuple[str, ...] = (),
    ) -> WsBackend:
        if self.session is None:
            raise BackendError(f"{uri}: cannot connect: the service is not running", UNAVAILABLE)
        return await open_ws(self.session, uri, context, max_message_size, inactivity_timeout, protocols)


def _describe(exc: BaseException, timeout: float = CONNECT_TIMEOUT) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
