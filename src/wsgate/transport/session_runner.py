"""What every transport adapter does with an admitted connection once its client can be answered.

The native upgrade (``transport.upgrade``) and WebSocket emulation (``transport.wse``) differ in how
the connection is opened (a 101, a 201 with two URLs) and in their ``Channel``; from there on they
share these steps, so a service, the registry, the metrics and the access line cannot tell them apart:

3. ``open_session``: a ``LiveSession`` (its transport named for the management API and metrics),
   the deadline armed, registered with the service;
4. ``serve_session``: revocation checked once more (one may have come while the answer was on its
   way), then ``serve(session, channel)`` through the service's ``channel_for`` (its message policy, if
   any); an unexpected error closes with 1011, a write to a client that left is the client's loss;
5. deregistered, closed, the access line and the metrics (``closed``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Protocol

from ..config.model import Service
from ..core.channel import Channel
from ..core.close import CloseCode
from ..core.handshake import Accept, Handshake, Reply
from ..core.identity import Identity
from ..core.session import LiveSession

log = logging.getLogger("wsgate.service")

__all__ = ["WebSocketEndpoint", "open_session", "serve_session", "tls_of"]


class WebSocketEndpoint(Protocol):
    """What the adapters need of a WebSocket service (``services.base.WebSocketService``)."""

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


def open_session(
    service: WebSocketEndpoint,
    channel: Channel,
    handshake: Handshake,
    accept: Accept,
    connection_id: str,
    context: object,
    tls: tuple[str | None, str | None] | None = None,
    transport: str = "websocket",
) -> LiveSession:
    """Step 3: the live session of an opened connection, its deadline armed, registered."""
    session = LiveSession(
        connection_id, service.name, channel, handshake.remote, handshake.peer, accept.identity, accept.opened_at
    )
    session.context = context
    session.tls = tls
    session.transport = transport
    session.expire_at(accept.deadline, accept.deadline_reason)
    service.register(session)
    return session


async def serve_session(
    service: WebSocketEndpoint, session: LiveSession, channel: Channel, ended: Callable[[], None] | None = None
) -> None:
    """Steps 4 and 5: serve the session until it ends, then the bookkeeping; ``ended()`` after it.

    A service may *park* a channel that can (``PicowsChannel.park``: echo answers in the frame callback) and
    return at once: the task ends, and step 5 runs when the socket closes."""
    identity, context = session.identity, session.context
    parked = False
    try:
        if identity is not None and await service.revoked(identity):  # revoked while the answer was on its way
            await service.abandon(context)
            await channel.close(CloseCode.POLICY_VIOLATION, "revoked")
        else:
            await service.serve(session, service.channel_for(session, channel))  # message policy, if any
            parked = getattr(channel, "parked", False) is True
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and channel.gone:  # a write to a client that left: its loss
            service.lost(session, exc)
        else:
            log.exception("service[%s]: unexpected error; closing the connection with 1011", service.name)
            await channel.close(CloseCode.INTERNAL_ERROR, "internal error, see gateway log")
    finally:
        if not parked:
            session.cancel_expiry()
            service.deregister(session)
            if not channel.closed:
                await channel.close()
            service.closed(session)
            if ended is not None:
                ended()
    if parked:
        channel.when_gone(partial(_parked_ended, service, session, ended))  # type: ignore[attr-defined]


def _parked_ended(service: WebSocketEndpoint, session: LiveSession, ended: Callable[[], None] | None) -> None:
    """Step 5 for a parked channel, from its socket's close (the channel is closed by then)."""
    try:
        if getattr(session.channel, "stalled", False):  # an echo waited for a peer that left: its loss, as a send's
            service.lost(session, ConnectionResetError("the peer is gone"))
        session.cancel_expiry()
        service.deregister(session)
        service.closed(session)
    finally:
        if ended is not None:
            ended()


def tls_of(transport: asyncio.BaseTransport | None) -> tuple[str | None, str | None] | None:
    """The TLS version and cipher of the client's connection, for the management API."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return ssl_object.version(), cipher[0] if cipher else None
