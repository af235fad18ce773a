"""The service interface and the descriptor every service type declares.

A service gets requests the listener has already routed (host + path) and, for
TLS, whose client certificate is already checked. WebSocket services implement
``serve(session, channel)`` (``core.session.LiveSession``, ``core.channel.Channel``) and
never see aiohttp: ``transport.upgrade`` runs the upgrade and calls the hooks here for the
bookkeeping (registry, metrics, access line). Plain HTTP services implement ``reply(handshake)``
and answer ``core.handshake.Reply`` values; those that read the request's body (or run a WebSocket
of their own) implement ``respond(handshake, accept, body)`` instead (``ResourceService``).

Each service type declares itself on its handler class (``TYPE = ServiceType(...)``): name, accept
schemes, connect count, property schema, how it is routed and authenticated. ``wsgate.catalog``
collects the declarations; nothing else lists type names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..config.model import Realm, Service
from ..config.schema import ServiceTypeSchema
from ..core.channel import Channel
from ..core.close import CloseCode
from ..core.handshake import Accept, Body, Handshake, Reply, Upgrade
from ..core.identity import Identity
from ..core.session import LiveSession
from ..observe.logs import LogLimiter, get_logger
from ..security.keystore import KeyMaterial
from ..security.rules import Decision, RuleSet, audit_refusal
from ..state.connections import MemoryConnections, Selector
from ..state.redis import RedisState, StateUnavailable
from ..state.revocations import RevocationList, identity_keys

if TYPE_CHECKING:
    from ..observe.metrics import Metrics

log = logging.getLogger("wsgate.service")
access = get_logger("wsgate.access")
audit = get_logger("wsgate.audit")


@dataclass
class Runtime:
    """What services share with the gateway: key material and the live connections."""

    keys: KeyMaterial | None = None
    trust: KeyMaterial | None = None
    connections: MemoryConnections[LiveSession] = field(default_factory=MemoryConnections)
    realms: dict[str, Realm] = field(default_factory=dict)
    closing: bool = False
    metrics: Metrics | None = None
    revocations: RevocationList | None = None  # the gateway's, checked again at the upgrade
    control: Any = None  # the gateway, for the management service (management.service.GatewayControl)
    shared: RedisState | None = None  # the state shared with other nodes (``state: {type: redis}``), if any
    tunnels: dict[str, Any] = field(default_factory=dict)  # a DMZ gateway's ready tunnels by service URI (dmz.py)
    config_dir: Path | None = None  # the config file's folder: operator code (``message.policy``) is imported from it

    async def expire(self, selector: Selector, reason: str) -> int:
        """Close every live connection ``selector`` matches with 1008 ``reason`` now (aborted after 1 s)."""
        return await self.connections.end(selector, CloseCode.POLICY_VIOLATION, reason, grace=1.0)


@dataclass(frozen=True, kw_only=True)
class ServiceType(ServiceTypeSchema):
    """A service type as the gateway sees it: the config schema plus how to build, route and guard it.

    Declared as the ``TYPE`` class attribute of its handler class, which then is its ``factory``.
    """

    plain_http: bool = False  # plain HTTP resources: a realm's 401 lets browsers show their login dialog
    cors: bool = False  # a plain HTTP service that answers CORS preflights and adds CORS headers, realm or not
    prefix: bool = False  # serves every path under its accept path, not only the path itself
    web_root: bool = False  # resolves its files under the gateway's web root (``ServiceHandler.configure``)
    descriptors_per_connection: int = 1  # file descriptors one open connection holds (a proxied one: two)
    factory: Callable[[Service, Runtime], ServiceHandler] | None = field(default=None, compare=False, repr=False)

    def __set_name__(self, owner: type[ServiceHandler], name: str) -> None:
        if self.factory is None:  # the class it is declared on builds its services
            object.__setattr__(self, "factory", owner)

    def create(self, config: Service, runtime: Runtime) -> ServiceHandler:
        """The handler for one configured service of this type."""
        if self.factory is None:
            raise TypeError(f"service type {self.name!r} has no factory: declare it as TYPE on its handler class")
        return self.factory(config, runtime)


class ServiceHandler:
    """Base of every service type; one instance per configured service."""

    TYPE: ClassVar[ServiceType]  # each concrete service type declares itself

    def __init__(self, config: Service, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.name = config.name
        self.slow_lines = LogLimiter("slow consumer")
        self.lost_lines = LogLimiter("client lost")
        self.origin_lines = LogLimiter("cross-origin refusal")
        self.denied_lines = LogLimiter("operation denied", per_second=50)
        self.rules = RuleSet(config.rules, self.TYPE.rules)

    def update_rules(self, config: Service) -> None:
        """A reload changed only this service's ``authorization-rule`` list: live connections keep going
        and the next operation of each is decided by the new rules."""
        self.config = config
        self.rules = RuleSet(config.rules, self.TYPE.rules)

    def refused(self, session: LiveSession, operation: str, decision: Decision, **fields: str) -> None:
        """An operation the rules refused: counted, and audited within the rate limit (a client chooses how
        often it tries); the service then refuses it its own way."""
        if self.runtime.metrics is not None:
            self.runtime.metrics.denied.labels(self.name, operation).inc()
        if self.denied_lines.allow():
            audit_refusal(self.name, session.identity, session.remote, operation, decision, **fields)

    def configure(self, web_root: Path) -> None:
        """Resolve files under the gateway's web root (types declared with ``web_root=True``)."""

    async def start(self) -> None:
        """Prepare back-end resources before the listeners open."""

    async def stop(self) -> None:
        """Release back-end resources after the connections are closed."""

    def going_away(self, grace: float) -> None:
        """The gateway stops: close what this service holds open outside ``runtime.connections`` with 1001
        (the console's feeds) before the listeners shut; a peer that does not answer within ``grace`` s is aborted."""

    def retiring(self) -> None:
        """A reload replaced or removed this service: stop taking new work outside ``runtime.connections`` now
        (its connections are being closed; ``stop`` follows once they are gone)."""

    def dropped_slow(self, remote: str | None, why: str) -> None:
        """A peer dropped for not reading: counted always, logged at INFO within the rate limit."""
        if self.runtime.metrics is not None:
            self.runtime.metrics.slow_consumers.labels(self.name).inc()
        if self.slow_lines.allow():
            log.info("service[%s]: dropping slow consumer %s with 1008: %s", self.name, remote, why)


class HttpService(ServiceHandler):
    """A plain HTTP service that answers ``Reply`` values (``directory``); admission answers preflights
    and the listener adds the CORS headers it decided."""

    async def reply(self, handshake: Handshake) -> Reply:
        raise NotImplementedError


class ResourceService(ServiceHandler):
    """A plain HTTP service that may read the request's body, and answers ``Reply`` values or an
    ``Upgrade`` (``management``, ``metrics``, ``kdc.proxy``): ``transport.resource.resource_endpoint``
    calls ``respond`` for every admitted request, with the admission's ``Accept`` (identity, CORS
    headers) and the ``Body``, read from the client only if ``respond`` asks for it."""

    async def respond(self, handshake: Handshake, accept: Accept, body: Body) -> Reply | Upgrade:
        raise NotImplementedError

    def relative(self, path: str) -> str:
        """``path`` below the accept path it came in on (``/`` for the accept path itself)."""
        for uri in self.config.accepts:
            base = uri.path.rstrip("/")
            if path == base or path.startswith(base + "/"):
                return path[len(base) :] or "/"
        return "/"


class WebSocketService(ServiceHandler):
    """A service whose clients speak WebSocket; subclasses implement ``serve``."""

    writer_limit = 64 * 1024

    async def revoked(self, identity: Identity) -> bool:
        """Revocation is checked again here: one may have come while the back end was being dialled."""
        store = self.runtime.revocations
        keys = identity_keys(identity.user, identity.token_id, identity.token_digest)
        try:
            return store is not None and await store.revoked(keys) is not None
        except StateUnavailable:  # cannot be checked (Redis down): refused, as a revoked one would be
            return True

    def deny(self, identity: Identity, remote: str, reason: str) -> Reply:
        """As the realm refuses presented credentials: 403, the reason in the audit log only."""
        audit.info(
            "authentication denied",
            service=self.name,
            realm=identity.realm,
            remote=remote,
            decision="denied",
            status=403,
            reason=reason,
        )
        return Reply.text(403, "Forbidden\n")

    def register(self, session: LiveSession) -> None:
        """A connection that got its 101: live, counted, and told whom to call when it is too slow."""
        session.on_slow = self.slow_consumer
        self.runtime.connections.add(session)
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.connections_total.labels(self.name).inc()
            metrics.handshakes.labels(self.name, "101").inc()

    def deregister(self, session: LiveSession) -> None:
        self.runtime.connections.discard(session)

    def slow_consumer(self, session: LiveSession, why: str) -> None:
        self.dropped_slow(session.remote, why)

    def lost(self, session: LiveSession, exc: BaseException) -> None:
        """A client that left mid-write: its loss, logged at INFO within the rate limit (a dropped slow
        consumer's loss is its drop, already logged)."""
        if not session.slow and self.lost_lines.allow():
            log.info("service[%s]: client %s lost: %s", self.name, session.remote, exc)

    def closed(self, session: LiveSession) -> None:
        """The access line and the metrics of a connection that ended."""
        if self.runtime.metrics is not None:
            self.runtime.metrics.connection_closed(session)
        identity = session.identity
        channel = session.channel
        access.info(
            "connection closed",
            service=self.name,
            id=session.id,
            principal=identity.user if identity else None,
            remote=session.remote,
            duration=round(time.monotonic() - session.opened, 3),
            messages_in=channel.messages_in,
            messages_out=channel.messages_out,
            bytes_in=channel.bytes_in,
            bytes_out=channel.bytes_out,
            close_code=channel.close_code,
        )

    def identity_headers(self, connection_id: str, deadline: float | None) -> dict[str, str]:
        """What an authenticated client needs to re-authenticate before ``deadline`` without disconnecting."""
        path = self.config.accepts[0].path.rstrip("/")
        headers = {"Wsgate-Connection-Id": connection_id, "Wsgate-Refresh": f"{path}/.wsgate/refresh/{connection_id}"}
        if deadline is not None:
            headers["Wsgate-Expires"] = str(int(deadline))
        return headers

    async def prepare(self, handshake: Handshake, accept: Accept) -> tuple[tuple[str, ...], object]:
        """``before_upgrade`` for services that need the admission's answer (who was admitted); a ``Reply`` as
        the context refuses the upgrade with that HTTP answer instead of a 101."""
        return await self.before_upgrade(handshake)

    async def before_upgrade(self, handshake: Handshake) -> tuple[tuple[str, ...], object]:
        """Work before the 101: the subprotocols to accept and state for ``serve`` (``session.context``)."""
        return (), None

    async def abandon(self, context: object) -> None:
        """The upgrade failed after ``before_upgrade``: release what it prepared."""

    def channel_for(self, session: LiveSession, channel: Channel) -> Channel:
        """The channel ``serve`` gets: the transport's own, or one that checks each message
        (``services.messages.MessageService``)."""
        return channel

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        raise NotImplementedError
