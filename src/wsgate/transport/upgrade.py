"""The aiohttp side of an admitted WebSocket upgrade: prepare, 101, serve, bookkeeping.

Once admission said ``Accept`` (who, until when, what to add to the 101), ``upgrade`` runs the
rest for any ``WebSocketEndpoint`` (``services.base.WebSocketService``):

1. ``before_upgrade(handshake)``: the service's work before the 101 (a proxy dials its back end);
2. revocation checked again (one may have come while the back end was dialled), then the 101
   through ``GuardedResponse``; a client that leaves anywhere in between never leaves the back end open;
3.–5. on an ``AiohttpChannel`` (slow-consumer watch), ``transport.session_runner``'s steps, which
   WebSocket emulation (``transport.wse``) shares: session, deadline, register, serve, bookkeeping.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from ..core.handshake import Accept, Handshake
from ..core.peer import PeerIdentity
from .channel import AiohttpChannel
from .endpoint import Endpoint
from .http import response_for
from .session_runner import WebSocketEndpoint, open_session, serve_session, tls_of
from .websocket import accept_websocket

__all__ = ["WebSocketEndpoint", "upgrade", "websocket_endpoint"]


def websocket_endpoint(service: WebSocketEndpoint) -> Endpoint:
    """The listener's endpoint for a WebSocket service: ``upgrade`` with it."""

    async def endpoint(
        request: web.BaseRequest, peer: PeerIdentity | None, handshake: Handshake, accept: Accept
    ) -> web.StreamResponse:
        return await upgrade(service, request, handshake, accept)

    return endpoint


async def upgrade(
    service: WebSocketEndpoint, request: web.BaseRequest, handshake: Handshake, accept: Accept
) -> web.StreamResponse:
    """Complete an admitted upgrade and serve the connection until it ends (see the module's steps)."""
    identity, deadline = accept.identity, accept.deadline
    remote = handshake.remote
    protocols, context = await service.before_upgrade(handshake)
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
        ws = await accept_websocket(request, options, service.writer_limit, protocols, headers)
    except BaseException:
        await service.abandon(context)
        raise
    transport = request.transport
    channel = AiohttpChannel(ws, transport)
    session = open_session(service, channel, handshake, accept, connection_id, context, tls_of(transport))
    if options.write_timeout:
        channel.watch_writes(options.write_timeout, session)
    await serve_session(service, session, channel)
    return ws
