"""The service interface and the registry of service types.

A service gets requests the listener has already routed (host + path) and, for
TLS, whose client certificate is already checked. WebSocket services implement
``serve(connection)`` only; the upgrade, limits and bookkeeping live here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from ..config.model import Service
from ..security.keystore import KeyMaterial
from ..security.origin import origin_allowed
from ..security.realms import IDENTITY_KEY
from ..transport.websocket import CloseCode, Connection, accept_websocket

if TYPE_CHECKING:
    from ..security.realms import Identity
    from ..security.tls import PeerIdentity

log = logging.getLogger("wsgate.service")


@dataclass
class Runtime:
    """What services share with the gateway: key material and the live connections."""

    keys: KeyMaterial | None = None
    trust: KeyMaterial | None = None
    connections: set[Connection] = field(default_factory=set)
    session_timeouts: dict[str, float] = field(default_factory=dict)  # realm name → session-timeout
    closing: bool = False


class ServiceHandler:
    """Base of every service type; one instance per configured service."""

    def __init__(self, config: Service, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.name = config.name

    async def start(self) -> None:
        """Prepare back-end resources before the listeners open."""

    async def stop(self) -> None:
        """Release back-end resources after the connections are closed."""

    async def handle(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        raise NotImplementedError


class WebSocketService(ServiceHandler):
    """A service whose clients speak WebSocket; subclasses implement ``serve``."""

    writer_limit = 64 * 1024

    @property
    def offloaded_tls(self) -> bool:
        """wss accepts with ``ssl.encryption disabled``: browsers still see an https origin."""
        return not self.config.accept_options.tls.encryption and any(u.secure for u in self.config.accepts)

    async def handle(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        if request.method != "GET" or request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(
                status=426,
                text="This is a WebSocket endpoint: connect with a WebSocket client.\n",
                headers={"Upgrade": "websocket"},
            )
        if self.runtime.closing:
            return web.Response(status=503, text="Gateway is shutting down.\n")
        own_origin = f"{'https' if request.secure or self.offloaded_tls else 'http'}://{request.host}"
        if not origin_allowed(request.headers.get("Origin"), own_origin, self.config.cross_site_constraints):
            log.warning(
                "service[%s]: refused cross-origin upgrade from %s (Origin %.100r)",
                self.name,
                request.remote,
                request.headers.get("Origin"),
            )
            return web.Response(status=403, text="Forbidden\n")
        protocols, context = await self.before_upgrade(request)
        try:
            ws = await accept_websocket(request, self.config.accept_options, self.writer_limit, protocols)
        except BaseException:
            await self.abandon(context)
            raise
        connection = Connection(ws, request.transport, self.name, request.remote or "?", peer)
        connection.context = context
        identity = connection.identity = request.get(IDENTITY_KEY)
        if identity is not None:
            connection.expire_at(self.session_deadline(identity))
        self.runtime.connections.add(connection)
        try:
            await self.serve(connection)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("service[%s]: unexpected error; closing the connection with 1011", self.name)
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error, see gateway log")
        finally:
            connection.cancel_expiry()
            self.runtime.connections.discard(connection)
            if not connection.closed:
                await connection.close()
        return ws

    def session_deadline(self, identity: Identity) -> float | None:
        """The earlier of the realm's ``session-timeout`` and the credentials' own expiry."""
        timeout = self.runtime.session_timeouts.get(identity.realm)
        deadlines = [d for d in (identity.expires_at, time.time() + timeout if timeout else None) if d is not None]
        return min(deadlines) if deadlines else None

    async def before_upgrade(self, request: web.BaseRequest) -> tuple[tuple[str, ...], object]:
        """Work before the 101: the subprotocols to accept and state for ``serve`` (``connection.context``)."""
        return (), None

    async def abandon(self, context: object) -> None:
        """The upgrade failed after ``before_upgrade``: release what it prepared."""

    async def serve(self, connection: Connection) -> None:
        raise NotImplementedError


SERVICE_TYPES: dict[str, Callable[[Service, Runtime], ServiceHandler]] = {}


def service_type(name: str) -> Callable[[type[ServiceHandler]], type[ServiceHandler]]:
    def register(cls: type[ServiceHandler]) -> type[ServiceHandler]:
        SERVICE_TYPES[name] = cls
        return cls

    return register


def create_service(config: Service, runtime: Runtime) -> ServiceHandler:
    return SERVICE_TYPES[config.type](config, runtime)
