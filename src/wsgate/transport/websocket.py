"""The per-connection WebSocket interface services use.

Services see only ``Connection``: ``receive()``, ``send_bytes()``, ``send_str()``,
``close()``. Today it wraps aiohttp's ``WebSocketResponse``; a picows listener can
provide the same methods where it measures faster (see issue "benchmark harness").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WSMessage
from multidict import CIMultiDict

from ..config.model import AcceptOptions
from ..security.challenges import SUBPROTOCOL_TOKEN_PREFIX, offered_subprotocols

if TYPE_CHECKING:
    from ..security.realms import Identity
    from ..security.tls import PeerIdentity

__all__ = ["Connection", "WSMessage", "WSMsgType", "CloseCode", "accept_websocket", "is_upgrade", "HANDSHAKE_DONE"]
# The listener puts a callable here; called once the 101 is sent, the handshake no longer counts as in progress.
HANDSHAKE_DONE: web.RequestKey[Callable[[], None]] = web.RequestKey("wsgate.handshake-done")


_ENDED = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class CloseCode:
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    BAD_GATEWAY = 1014


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
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        service: str,
        remote: str,
        peer: PeerIdentity | None,
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
        self._closing: asyncio.Task[None] | None = None
        self.context: object = None  # what the service prepared before the upgrade
        # Counted by the services' loops (payload sizes; text in characters), read by the metrics collector.
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> WSMessage:
        msg = await self.receive()
        if msg.type in _ENDED:
            raise StopAsyncIteration
        return msg

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with ``code``; reasons are short and never carry internal detail."""
        if self.closed_with is None and not self.ws.closed:
            self.closed_with = code
        await self.ws.close(code=code, message=reason.encode()[:120])

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
        self.expire_now(CloseCode.POLICY_VIOLATION, reason, grace)

    def expire_now(self, code: int, reason: str, grace: float = 2.0) -> None:
        """Close with ``code`` now, from outside the service's loop; abort after ``grace``."""
        if self._closing is None and not self.ws.closed:
            self._closing = asyncio.get_running_loop().create_task(self._close_or_abort(code, reason, grace))

    async def _close_or_abort(self, code: int, reason: str, grace: float) -> None:
        try:
            await asyncio.wait_for(self.close(code, reason), grace)
        except TimeoutError:
            self.abort()

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
        """The code that ended the connection: the gateway's if it closed first, else the peer's."""
        return self.closed_with if self.closed_with is not None else self.ws.close_code


def is_upgrade(request: web.BaseRequest) -> bool:
    """Does the request ask for a WebSocket?"""
    return request.headers.get("Upgrade", "").lower() == "websocket"


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
    ws = web.WebSocketResponse(
        heartbeat=timeout / 2 if timeout else None,
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
    offers = [o for o in offered_subprotocols(header) if not o.lower().startswith(SUBPROTOCOL_TOKEN_PREFIX)]
    headers = CIMultiDict(request.headers)
    del headers["Sec-WebSocket-Protocol"]
    if offers:
        headers["Sec-WebSocket-Protocol"] = ", ".join(offers)
    return request.clone(headers=headers)
