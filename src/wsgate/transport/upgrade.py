"""The aiohttp side of an admitted WebSocket upgrade: prepare, 101, serve, bookkeeping.

Once admission said ``Accept`` (who, until when, what to add to the 101), ``upgrade`` runs the
rest for any ``WebSocketEndpoint`` (``services.base.WebSocketService``):

1. ``prepare(handshake, accept)``: the service's work before the 101 (a proxy dials its back end); a
   ``Reply`` as its context refuses the upgrade with that HTTP answer (a DMZ gateway without a tunnel: 503);
2. revocation checked again (one may have come while the back end was dialled), then the 101
   through ``GuardedResponse``; a client that leaves anywhere in between never leaves the back end open;
3. an ``AiohttpChannel`` and a ``LiveSession`` (deadline armed, slow-consumer watch), registered;
4. revocation checked once more (one may have come while the 101 was on its way), then
   ``serve(session, channel)`` (through the service's ``channel_for``: its message policy, if any);
   an unexpected error closes with 1011, a write to a client that
   left is the client's loss;
5. deregistered, closed, the access line and the metrics (``closed``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from ..config.model import Service
from ..core.channel import Channel
from ..core.close import CloseCode
from ..core.handshake import Accept, Handshake, Reply
from ..core.identity import Identity
from ..core.peer import PeerIdentity
from ..core.session import LiveSession
from .channel import AiohttpChannel
from .endpoint import Endpoint
from .extended_handshake import EXTENDED_KEY, extended_upgrade
from .http import response_for
from .websocket import accept_websocket

log = logging.getLogger("wsgate.service")
# Sends the 101 with the subprotocols the service accepts and the headers given; the WebSocket it opened.
Opener = Callable[[tuple[str, ...], dict[str, str]], Awaitable[web.WebSocketResponse]]


class WebSocketEndpoint(Protocol):
    """What the upgrade runner needs of a WebSocket service (``services.base.WebSocketService``)."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> Service: ...

    @property
    def writer_limit(self) -> int: ...

    async def prepare(self, handshake: Handshake, accept: Accept) -> tuple[tuple[str, ...], object]: ...

    async def abandon(self, context: object) -> None: ...

    async def revoked(self, identity: Identity) -> bool: ...

    def deny(self, identity: Identity, remote: str, reason: str) -> Reply: ...

    def identity_headers(self, connection_id: str, deadline: float | None) -> dict[str, str]: ...

    def register(self, session: LiveSession) -> None: ...

    def channel_for(self, session: LiveSession, channel: Channel) -> Channel: ...

    async def serve(self, session: LiveSession, channel: Channel) -> None: ...

    def lost(self, session: LiveSession, exc: BaseException) -> None: ...

    def deregister(self, session: LiveSession) -> None: ...

    def closed(self, session: LiveSession) -> None: ...


def websocket_endpoint(service: WebSocketEndpoint) -> Endpoint:
    """The listener's endpoint for a WebSocket service: ``upgrade`` with it."""

    async def endpoint(
        request: web.BaseRequest, peer: PeerIdentity | None, handshake: Handshake, accept: Accept
    ) -> web.StreamResponse:
        if EXTENDED_KEY in request:  # x-kaazing-handshake: admission and the 101 again, inside the WebSocket
            return await extended_upgrade(service, request, handshake, accept, upgrade)
        return await upgrade(service, request, handshake, accept)

    return endpoint


async def upgrade(
    service: WebSocketEndpoint,
    request: web.BaseRequest,
    handshake: Handshake,
    accept: Accept,
    opener: Opener | None = None,
) -> web.StreamResponse:
    """Complete an admitted upgrade and serve the connection until it ends (see the module's steps).

    ``opener``: how the 101 is sent, if not as aiohttp's HTTP response (the extended handshake's in-band one).
    """
    identity, deadline, peer = accept.identity, accept.deadline, handshake.peer
    remote = handshake.remote
    protocols, context = await service.prepare(handshake, accept)
    if isinstance(context, Reply):  # refused before the 101 (a DMZ gateway without a ready tunnel: 503)
        return response_for(context)
    if accept.subprotocol is not None:
        protocols = (accept.subprotocol,)
    connection_id = secrets.token_urlsafe(16)
    try:  # from here a client that leaves (cancelling this task) must not leave the back end open
        if identity is not None and await service.revoked(identity):  # revoked while the back end was dialled
            await service.abandon(context)
            return response_for(service.deny(identity, remote, "revoked before the upgrade"))
        headers = service.identity_headers(connection_id, deadline) if identity else {}
        if accept.headers:
            headers.update(accept.headers)
        options = service.config.accept_options
        if opener is None:
            ws = await accept_websocket(request, options, service.writer_limit, protocols, headers)
        else:
            ws = await opener(protocols, headers)
    except BaseException:
        await service.abandon(context)
        raise
    transport = request.transport
    channel = AiohttpChannel(ws, transport)
    session = LiveSession(connection_id, service.name, channel, remote, peer, identity, accept.opened_at)
    session.context = context
    session.tls = _tls(transport)
    session.transport = handshake.transport
    if options.write_timeout:
        channel.watch_writes(options.write_timeout, session)
    session.expire_at(deadline, accept.deadline_reason)
    service.register(session)
    try:
        if identity is not None and await service.revoked(identity):  # revoked while the 101 was on its way
            await service.abandon(context)
            await channel.close(CloseCode.POLICY_VIOLATION, "revoked")
        else:
            await service.serve(session, service.channel_for(session, channel))  # message policy, if any
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and channel.gone:  # a write to a client that left: its loss
            service.lost(session, exc)
        else:
            log.exception("service[%s]: unexpected error; closing the connection with 1011", service.name)
            await channel.close(CloseCode.INTERNAL_ERROR, "internal error, see gateway log")
    finally:
        session.cancel_expiry()
        service.deregister(session)
        if not channel.closed:
            await channel.close()
        service.closed(session)
    return ws


def _tls(transport: asyncio.BaseTransport | None) -> tuple[str | None, str | None] | None:
    """The TLS version and cipher of the client's connection, for the management API."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return ssl_object.version(), cipher[0] if cipher else None
