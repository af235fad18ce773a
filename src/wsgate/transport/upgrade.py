"""The aiohttp side of an admitted WebSocket upgrade: prepare, 101, serve, bookkeeping.

Once admission said ``Accept`` (who, until when, what to add to the 101), ``upgrade`` runs the
rest for any ``WebSocketEndpoint`` (``services.base.WebSocketService``):

1. ``prepare(handshake, accept)``: the service's work before the 101 (a proxy dials its back end); a
   ``Reply`` as its context refuses the upgrade with that HTTP answer (a DMZ gateway without a tunnel: 503);
2. revocation checked again (one may have come while the back end was dialled), then the 101
   through ``GuardedResponse``; a client that leaves anywhere in between never leaves the back end open;
3.–5. on an ``AiohttpChannel`` (slow-consumer watch), ``transport.session_runner``'s steps, which
   WebSocket emulation (``transport.wse``) shares: session, deadline, register, serve (through the
   service's ``channel_for``: its message policy, if any), bookkeeping.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..core.handshake import Accept, Handshake, Reply
from ..core.peer import PeerIdentity
from .channel import AiohttpChannel
from .endpoint import Endpoint
from .extended_handshake import EXTENDED_KEY, extended_upgrade
from .http import response_for
from .session_runner import WebSocketEndpoint, open_session, serve_session, tls_of
from .websocket import accept_websocket

__all__ = ["Opener", "WebSocketEndpoint", "upgrade", "websocket_endpoint"]
# Sends the 101 with the subprotocols the service accepts and the headers given; the WebSocket it opened.
Opener = Callable[[tuple[str, ...], dict[str, str]], Awaitable[web.WebSocketResponse]]


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
    identity, deadline = accept.identity, accept.deadline
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
    tls = tls_of(transport)
    session = open_session(service, channel, handshake, accept, connection_id, context, tls, handshake.transport)
    if options.write_timeout:
        channel.watch_writes(options.write_timeout, session)
    await serve_session(service, session, channel)
    return ws
