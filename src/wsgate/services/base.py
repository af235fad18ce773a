"""The service interface and the registry of service types.

A service gets requests the listener has already routed (host + path) and, for
TLS, whose client certificate is already checked. WebSocket services implement
``serve(connection)`` only; the upgrade, limits and bookkeeping live here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..config.model import Realm, Service
from ..core.close import CloseCode
from ..core.identity import Identity
from ..observe.logs import LogLimiter, get_logger
from ..security.keystore import KeyMaterial
from ..state.connections import MemoryConnections, Selector
from ..state.revocations import RevocationStore, identity_keys
from ..transport.http import ACCEPT_KEY
from ..transport.websocket import Connection, accept_websocket

if TYPE_CHECKING:
    from ..core.peer import PeerIdentity
    from ..observe.metrics import Metrics

log = logging.getLogger("wsgate.service")
access = get_logger("wsgate.access")
audit = get_logger("wsgate.audit")


@dataclass
class Runtime:
    """What services share with the gateway: key material and the live connections."""

    keys: KeyMaterial | None = None
    trust: KeyMaterial | None = None
    connections: MemoryConnections[Connection] = field(default_factory=MemoryConnections)
    realms: dict[str, Realm] = field(default_factory=dict)
    closing: bool = False
    metrics: Metrics | None = None
    revocations: RevocationStore | None = None  # the gateway's, checked again at the upgrade
    control: Any = None  # the gateway, for the management service (management.service.GatewayControl)

    async def expire(self, selector: Selector, reason: str) -> int:
        """Close every live connection ``selector`` matches with 1008 ``reason`` now (aborted after 1 s)."""
        return await self.connections.end(selector, CloseCode.POLICY_VIOLATION, reason, grace=1.0)


class ServiceHandler:
    """Base of every service type; one instance per configured service."""

    def __init__(self, config: Service, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.name = config.name
        self.slow_lines = LogLimiter("slow consumer")
        self.lost_lines = LogLimiter("client lost")
        self.origin_lines = LogLimiter("cross-origin refusal")

    async def start(self) -> None:
        """Prepare back-end resources before the listeners open."""

    async def stop(self) -> None:
        """Release back-end resources after the connections are closed."""

    async def handle(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        raise NotImplementedError

    def dropped_slow(self, remote: str | None, why: str) -> None:
        """A peer dropped for not reading: counted always, logged at INFO within the rate limit."""
        if self.runtime.metrics is not None:
            self.runtime.metrics.slow_consumers.labels(self.name).inc()
        if self.slow_lines.allow():
            log.info("service[%s]: dropping slow consumer %s with 1008: %s", self.name, remote, why)


class WebSocketService(ServiceHandler):
    """A service whose clients speak WebSocket; subclasses implement ``serve``."""

    writer_limit = 64 * 1024

    async def handle(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        accept = request[ACCEPT_KEY]  # the admission (security/admission.py) decided everything before this
        identity, deadline, why = accept.identity, accept.deadline, accept.deadline_reason
        started = time.time() if accept.opened_at is None else accept.opened_at
        protocols, context = await self.before_upgrade(request)
        connection_id = secrets.token_urlsafe(16)
        try:  # from here a client that leaves (cancelling this task) must not leave the back end open
            if identity is not None and await self.revoked(identity):  # revoked while the back end was dialled
                await self.abandon(context)
                return self.refuse_upgrade(request, identity, "revoked before the upgrade")
            headers = self.identity_headers(connection_id, deadline) if identity else {}
            ws = await accept_websocket(request, self.config.accept_options, self.writer_limit, protocols, headers)
        except BaseException:
            await self.abandon(context)
            raise
        options = self.config.accept_options
        connection = Connection(ws, request.transport, self.name, request.remote or "?", peer, options.write_timeout)
        connection.on_slow = self.slow_consumer
        connection.id, connection.started, connection.context, connection.identity = (
            connection_id,
            started,
            context,
            identity,
        )
        connection.expire_at(deadline, why)
        self.runtime.connections.add(connection)
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.connections_total.labels(self.name).inc()
            metrics.handshakes.labels(self.name, "101").inc()
        try:
            if identity is not None and await self.revoked(identity):  # revoked while the 101 was on its way
                await self.abandon(context)
                await connection.close(CloseCode.POLICY_VIOLATION, "revoked")
            else:
                await self.serve(connection)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and client_gone(connection):  # a write to a client that left: its loss
                client_lost(self, connection, exc)
            else:
                log.exception("service[%s]: unexpected error; closing the connection with 1011", self.name)
                await connection.close(CloseCode.INTERNAL_ERROR, "internal error, see gateway log")
        finally:
            connection.cancel_expiry()
            self.runtime.connections.discard(connection)
            if not connection.closed:
                await connection.close()
            self.closed(connection)
        return ws

    async def revoked(self, identity: Identity) -> bool:
        """Revocation is checked again here: one may have come while the back end was being dialled."""
        store = self.runtime.revocations
        keys = identity_keys(identity.user, identity.token_id, identity.token_digest)
        return store is not None and await store.revoked(keys) is not None

    def refuse_upgrade(self, request: web.BaseRequest, identity: Identity, reason: str) -> web.Response:
        """As the realm refuses presented credentials: 403, the reason in the audit log only."""
        audit.info(
            "authentication denied",
            service=self.name,
            realm=identity.realm,
            remote=request.remote,
            decision="denied",
            status=403,
            reason=reason,
        )
        return web.Response(status=403, text="Forbidden\n")

    def slow_consumer(self, connection: Connection, why: str) -> None:
        self.dropped_slow(connection.remote, why)

    def closed(self, connection: Connection) -> None:
        """The access line and the metrics of a connection that ended."""
        if self.runtime.metrics is not None:
            self.runtime.metrics.connection_closed(connection)
        identity = connection.identity
        access.info(
            "connection closed",
            service=self.name,
            id=connection.id,
            principal=identity.user if identity else None,
            remote=connection.remote,
            duration=round(time.monotonic() - connection.opened, 3),
            messages_in=connection.messages_in,
            messages_out=connection.messages_out,
            bytes_in=connection.bytes_in,
            bytes_out=connection.bytes_out,
            close_code=connection.close_code,
        )

    def identity_headers(self, connection_id: str, deadline: float | None) -> dict[str, str]:
        """What an authenticated client needs to re-authenticate before ``deadline`` without disconnecting."""
        path = self.config.accepts[0].path.rstrip("/")
        headers = {"Wsgate-Connection-Id": connection_id, "Wsgate-Refresh": f"{path}/.wsgate/refresh/{connection_id}"}
        if deadline is not None:
            headers["Wsgate-Expires"] = str(int(deadline))
        return headers

    async def before_upgrade(self, request: web.BaseRequest) -> tuple[tuple[str, ...], object]:
        """Work before the 101: the subprotocols to accept and state for ``serve`` (``connection.context``)."""
        return (), None

    async def abandon(self, context: object) -> None:
        """The upgrade failed after ``before_upgrade``: release what it prepared."""

    async def serve(self, connection: Connection) -> None:
        raise NotImplementedError


def client_lost(service: ServiceHandler, connection: Connection, exc: BaseException) -> None:
    """A client that left mid-write: its loss, logged at INFO within the rate limit (a dropped slow
    consumer's loss is its drop, already logged)."""
    if not connection.slow and service.lost_lines.allow():
        log.info("service[%s]: client %s lost: %s", service.name, connection.remote, exc)


def client_gone(connection: Connection) -> bool:
    """Is the client's socket closed or closing (so a failed write is the client's loss, not a fault)?"""
    transport = connection.transport
    return connection.closed or transport is None or transport.is_closing()


SERVICE_TYPES: dict[str, Callable[[Service, Runtime], ServiceHandler]] = {}


def service_type(name: str) -> Callable[[type[ServiceHandler]], type[ServiceHandler]]:
    def register(cls: type[ServiceHandler]) -> type[ServiceHandler]:
        SERVICE_TYPES[name] = cls
        return cls

    return register


def create_service(config: Service, runtime: Runtime) -> ServiceHandler:
    return SERVICE_TYPES[config.type](config, runtime)
