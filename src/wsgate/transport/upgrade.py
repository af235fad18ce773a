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

import asyncio
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
from .websocket import HANDSHAKE_DONE, accept_websocket, chosen_subprotocol

try:  # the lean data path (the "fast" extra); without it every WebSocket runs on aiohttp's
    from .picows_channel import Detachable, PicowsChannel, hand_off
except ImportError:  # pragma: no cover - picows not installed
    hand_off = None  # type: ignore[assignment]

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
        if opener is None and not options.compression_enabled and lean(request):  # picows has no deflate
            channel = _open_picows(service, request, handshake, protocols, headers)
            _spawn(service, channel, handshake, accept, connection_id, context, request)
            return web.StreamResponse(status=101)  # nothing is written: the socket is picows's now
        if opener is None:
            ws = await accept_websocket(request, options, service.writer_limit, protocols, headers)
        else:
            ws = await opener(protocols, headers)
    except BaseException:
        await service.abandon(context)
        raise
    transport = request.transport
    aio = AiohttpChannel(ws, transport)
    tls = tls_of(transport)
    session = open_session(service, aio, handshake, accept, connection_id, context, tls, handshake.transport)
    if options.write_timeout:
        aio.watch_writes(options.write_timeout, session)
    await serve_session(service, session, aio)
    return ws


def lean(request: web.BaseRequest) -> bool:
    """Does this upgrade go to the picows data path? When picows is installed and the connection can let go
    of its socket (the listener's ``HttpConnection``)."""
    return hand_off is not None and getattr(request.protocol, "detach", None) is not None


def _open_picows(
    service: WebSocketEndpoint,
    request: web.BaseRequest,
    handshake: Handshake,
    protocols: tuple[str, ...],
    headers: dict[str, str],
) -> PicowsChannel:
    """Send the 101 through picows (the subprotocol chosen as aiohttp would) and return its channel."""
    if request.transport is None or request.transport.is_closing():  # aiohttp takes this as the client's leaving
        raise ConnectionResetError("the client left before the 101")
    options = service.config.accept_options
    chosen = chosen_subprotocol(handshake.headers.get("Sec-WebSocket-Protocol"), protocols)
    if chosen is not None:
        headers["Sec-WebSocket-Protocol"] = chosen
    key = handshake.headers.get("Sec-WebSocket-Key", "")
    connection: Detachable = request.protocol  # type: ignore[assignment]  # checked by lean()
    channel = hand_off(connection, key, headers, options.max_message_size, service.writer_limit)
    done = request.get(HANDSHAKE_DONE)
    if done is not None:
        done()
    if options.inactivity_timeout:
        channel.watch_inactivity(options.inactivity_timeout)
    return channel


def _spawn(
    service: WebSocketEndpoint,
    channel: PicowsChannel,
    handshake: Handshake,
    accept: Accept,
    connection_id: str,
    context: object,
    request: web.BaseRequest,
) -> None:
    """Serve the connection in a task of its own: aiohttp's request, handler and task end now. The listener
    keeps the task (``Listener.serving``), so its shutdown waits for it as aiohttp's waits for its handlers."""
    hold = accept.hold.transfer()  # released when the connection ends, not when this request returns
    transport = channel.transport
    session = open_session(service, channel, handshake, accept, connection_id, context, tls_of(transport))
    options = service.config.accept_options
    if options.write_timeout:
        channel.watch_writes(options.write_timeout, session)

    async def serve() -> None:
        try:  # released when the connection ends: by serve_session, or once the socket of a parked one closes
            await serve_session(service, session, channel, hold.release)
        except BaseException:
            hold.release()
            raise
        finally:
            if not channel.parked:  # the service is done with the socket: close it once its buffer is written
                channel.release()

    task = asyncio.get_running_loop().create_task(serve())
    serving: set[asyncio.Task[None]] = request.protocol.listener.serving  # type: ignore[attr-defined]  # HttpConnection (lean())
    serving.add(task)  # also the strong reference the loop does not keep
    task.add_done_callback(serving.discard)
