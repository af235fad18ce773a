"""The internal gateway's side of a DMZ tunnel: one outbound mTLS WebSocket as a ``core.channel.Channel``.

The internal gateway dials ``wss://dmz:port/path`` presenting its client certificate and naming the
service it carries (``Wsgate-Tunnel``) and the tunnel's id (``Wsgate-Tunnel-Id``, so both gateways'
management shows the same id). ``ClientChannel`` gives services the same ``Channel`` they get for an
accepted client, so the internal proxy relays a tunnel exactly as it relays a WebSocket client (one
tunnel per client connection: backpressure stays per connection).
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from ..config.values import Uri
from ..core.channel import Data, Messages
from ..core.close import CloseCode
from ..errors import BackendError
from .backend import ClientSessions, connect_ws

__all__ = ["ClientChannel", "TunnelDialer"]

DIAL_TIMEOUT = 5.0
_BINARY, _TEXT, _CLOSE = aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.CLOSE


class ClientChannel(Messages):
    """An aiohttp client WebSocket (a tunnel the internal gateway dialled) as a ``Channel``."""

    __slots__ = (
        "ws",
        "closed_with",
        "peer_reason",
        "_closing",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "__weakref__",
    )

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.closed_with: int | None = None
        self.peer_reason = ""
        self._closing: asyncio.Task[None] | None = None
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0

    @property
    def transport(self) -> asyncio.Transport | None:
        writer = getattr(self.ws, "_writer", None)
        return getattr(writer, "transport", None)

    async def receive(self) -> Data | None:
        msg = await self.ws.receive()
        kind = msg.type
        if kind is _BINARY or kind is _TEXT:
            data: Data = msg.data
            self.messages_in += 1
            self.bytes_in += len(data)
            return data
        if kind is _CLOSE:
            self.peer_reason = msg.extra or ""
        return None

    async def send(self, data: Data) -> None:
        if type(data) is str:
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)  # type: ignore[arg-type]
        self.messages_out += 1
        self.bytes_out += len(data)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if self.ws.closed:
            return
        if self.closed_with is None and self.ws.close_code is None:
            self.closed_with = code
        try:
            await self.ws.close(code=code, message=reason.encode()[:120])
        except (TimeoutError, OSError):
            self.abort()

    def close_soon(self, code: int, reason: str, grace: float) -> None:
        if self._closing is None and not self.ws.closed:
            self._closing = asyncio.get_running_loop().create_task(self._close_or_abort(code, reason, grace))

    async def _close_or_abort(self, code: int, reason: str, grace: float) -> None:
        timer = asyncio.get_running_loop().call_later(grace, self.abort)
        try:
            await self.close(code, reason)
        finally:
            timer.cancel()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @property
    def gone(self) -> bool:
        transport = self.transport
        return self.ws.closed or transport is None or transport.is_closing()

    @property
    def close_code(self) -> int | None:
        if self.closed_with is not None:
            return self.closed_with
        code = self.ws.close_code
        return CloseCode.NO_STATUS if code == 0 else code

    @property
    def peer_close(self) -> tuple[int | None, str]:
        if self.closed_with is not None:
            return None, ""
        code = self.ws.close_code
        if code is None:
            return None, ""
        return (CloseCode.NO_STATUS if code == 0 else code), self.peer_reason


class TunnelDialer(ClientSessions):
    """Dials the DMZ gateway's tunnel listener for one service; aiohttp's client session lives here.

    ``heartbeat``: the tunnel is pinged after that much silence, so a DMZ gateway (or a firewall between)
    that vanished is noticed and the tunnel re-dialled (Kaazing's ``ws.inactivity.timeout`` on the tunnel).
    """

    def __init__(self, uri: Uri, context: ssl.SSLContext, heartbeat: float | None, max_message_size: int) -> None:
        super().__init__()
        self.uri = uri
        self.context = context
        self.heartbeat = heartbeat
        self.max_message_size = max_message_size

    async def dial(self, service_uri: str, tunnel_id: str) -> ClientChannel:
        """A new tunnel, or ``BackendError`` saying why not (refused, TLS, no such service at the DMZ)."""
        if self.session is None:
            raise BackendError(f"{self.uri}: the service is not running", CloseCode.INTERNAL_ERROR)
        headers = {"Wsgate-Tunnel": service_uri, "Wsgate-Tunnel-Id": tunnel_id}
        ws = await connect_ws(
            self.session,
            self.uri,
            self.context,
            self.max_message_size,
            self.heartbeat,
            headers=headers,
            timeout=DIAL_TIMEOUT,
        )
        return ClientChannel(ws)
