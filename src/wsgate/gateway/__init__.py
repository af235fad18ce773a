"""The gateway: turns a validated config into services and listeners, runs, reloads and stops them.

Everything that can fail (keystores, TLS options, directories, port plans) fails
in ``Gateway(config)`` before any socket is bound. A reload plans the new config (``plan.py``: values,
nothing built), diffs it against the running plan, and ``apply`` builds and starts only what changed
beside what runs, then switches to it in one step.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..catalog import service_type
from ..config.model import GatewayConfig, TlsOptions
from ..core.close import CloseCode
from ..core.session import LiveSession
from ..errors import ConfigError, ConfigErrors, GatewayError, ReloadFailed, bind_error
from ..management.service import GatewayControl, registry_entry
from ..observe.metrics import Metrics
from ..observe.redact import REDACTOR
from ..security.admission import Admission, offloaded_tls
from ..security.keystore import KeyMaterial, load_store
from ..security.limits import GatewayLimits, ServiceLimits
from ..security.login.jwt import unverified_claims
from ..security.oidc import EXTENDED as OIDC_EXTENDED
from ..security.realms import RealmGate, RealmRuntime
from ..security.tls import ListenerTls
from ..services.base import HttpService, ResourceService, Runtime, ServiceHandler, WebSocketService
from ..state.connections import Selector
from ..state.redis import (
    OPERATIONS,
    REVOKED,
    ClusterConnections,
    RedisRates,
    RedisRevocations,
    RedisSessions,
    RedisState,
    StateUnavailable,
)
from ..state.registry import NodeRegistry
from ..state.revocations import (
    MemoryRevocations,
    RevocationList,
    identity_keys,
    token_digest,
    token_key,
    user_key,
)
from ..state.sessions import cookie_name
from ..transport.endpoint import Endpoint
from ..transport.http import reply_endpoint
from ..transport.http_client import HTTP, fetch_json
from ..transport.listener import Listener, Route
from ..transport.resource import resource_endpoint
from ..transport.upgrade import websocket_endpoint
from ..transport.wse.adapter import WseAdapter
from .plan import BindKey, Changes, LimitValues, ListenerPlan, Plan, TlsGroup, bind_source, diff, plan

__all__ = ["Changes", "Deployment", "Gateway", "Plan", "check_bind_hosts", "diff", "load_plan", "plan"]

log = logging.getLogger("wsgate")

# What a reload replaces: the switch in ``apply`` assigns a new ``Deployment`` (its fields are the per-config
# state). Every other attribute outlives reloads (tests check that each attribute is in exactly one of the two).
_PER_CONFIG = ("deployment",)
_KEPT = (
    "reuse_port",
    "loader",
    "started",
    "retired",
    "retiring",
    "_reloading",
    "revocations",
    "registry",
    "shared",
    "shared_rates",
    "_warned_emulation",
)


@dataclass
class Deployment:
    """What runs for one plan. A reload builds the next one beside it, sharing what it keeps."""

    plan: Plan
    runtime: Runtime
    gate: GatewayLimits
    realms: dict[str, RealmRuntime] = field(default_factory=dict)
    services: dict[str, ServiceHandler] = field(default_factory=dict)
    service_limits: dict[str, ServiceLimits | None] = field(default_factory=dict)
    listeners: dict[BindKey, Listener] = field(default_factory=dict)


def load_plan(config: GatewayConfig) -> Plan:
    """Read the key material ``config`` names, then plan it (``plan.plan``: no other I/O)."""
    keys, trust, errors = read_stores(config)
    if errors:
        raise ConfigErrors.of(errors)
    return plan(config, keys, trust)


def read_stores(config: GatewayConfig) -> tuple[KeyMaterial | None, KeyMaterial | None, list[ConfigError]]:
    """The keystore's and the truststore's key material (None where there is none), and why each that is
    named could not be read."""
    loaded: list[KeyMaterial | None] = []
    errors: list[ConfigError] = []
    for store in (config.security.keystore, config.security.truststore):
        try:
            loaded.append(load_store(store) if store else None)
        except ConfigError as exc:
            loaded.append(None)
            errors.append(exc)
    return loaded[0], loaded[1], errors


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        reuse_port: bool = False,
        loader: Callable[[], GatewayConfig] | None = None,
    ) -> None:
        """``loader`` re-reads the configuration for ``reload`` (SIGHUP, the management API)."""
        self.reuse_port = reuse_port
        self._warned_emulation = False  # the --workers caveat of WebSocket emulation, said once
        self.loader = loader
        self.started = time.time()
        self.retired: list[Listener] = []  # listeners replaced by a reload, still serving their connections
        self.retiring: set[asyncio.Task[None]] = set()  # handlers a reload replaced, stopped once their connections end
        self._reloading = asyncio.Lock()
        # Shared with other processes and nodes when the config names a Redis (state: {type: redis}).
        self.shared = RedisState(config.state) if config.state.type == "redis" else None
        self.revocations: RevocationList = MemoryRevocations()
        self.shared_rates: RedisRates | None = None  # the handshake rate per client address, counted by every node
        if self.shared is not None:
            self.revocations = RedisRevocations(self.shared)
            if "handshake-rate" in config.state.shared_limits:
                self.shared_rates = RedisRates(self.shared)
            self.shared.subscribe(REVOKED, self._revoked_elsewhere)
            self.shared.subscribe(OIDC_EXTENDED, self._oidc_refreshed_elsewhere)
            self.shared.on_reconnect.append(self._resync_revocations)
        keys, trust, errors = read_stores(config)  # reported with what the build finds (check-config: all at once)
        try:
            planned = plan(config, keys, trust)
        except ConfigError as exc:
            raise ConfigErrors.of([*errors, exc]) from None
        changes = diff(None, planned)
        deployment = self._deployment(changes, None)
        metrics = deployment.runtime.metrics = Metrics(lambda: self.runtime.connections)
        # This node's connections in the cluster-wide registry (state: redis), for every node's management API.
        self.registry: NodeRegistry[LiveSession] | None = None
        if self.shared is not None:
            shared = self.shared
            connections = deployment.runtime.connections
            assert isinstance(connections, ClusterConnections)
            self.registry = NodeRegistry(
                shared, lambda: self.runtime.connections, registry_entry, worker=self.reuse_port
            )
            connections.published = self.registry
            metrics.watch_state(lambda: shared.up, OPERATIONS)
            shared.on_error = lambda operation: metrics.state_errors.labels(operation).inc()
        self._build(changes, deployment, None, errors)
        self.deployment = deployment

    # What runs now (``deployment``'s parts, replaced together by a reload).
    @property
    def plan(self) -> Plan:
        return self.deployment.plan

    @property
    def config(self) -> GatewayConfig:
        return self.deployment.plan.config

    @property
    def runtime(self) -> Runtime:
        return self.deployment.runtime

    @property
    def realms(self) -> dict[str, RealmRuntime]:
        return self.deployment.realms

    @property
    def services(self) -> dict[str, ServiceHandler]:
        return self.deployment.services

    @property
    def service_limits(self) -> dict[str, ServiceLimits | None]:
        return self.deployment.service_limits

    @property
    def gate(self) -> GatewayLimits:
        return self.deployment.gate

    @property
    def listeners(self) -> dict[BindKey, Listener]:
        return self.deployment.listeners

    # -- building ----------------------------------------------------------------------------

    def _deployment(self, changes: Changes, current: Deployment | None) -> Deployment:
        """An empty deployment for ``changes.new`` that shares what outlives a reload with ``current``:
        the live connections, metrics, revocations (a reload never lifts one) and, if the limits are
        unchanged, the gate (its count of handshakes in progress)."""
        new = changes.new
        runtime = Runtime(keys=new.keys, trust=new.trust, realms=dict(new.config.security.realms))
        runtime.config_dir = new.base_dir  # where a service's message.policy class may be found
        runtime.revocations = self.revocations
        runtime.shared = self.shared
        if self.shared is not None and current is None:
            runtime.connections = ClusterConnections(self.shared)
        control: GatewayControl = self  # what the management service may ask of it (checked by mypy)
        runtime.control = control
        gate = GatewayLimits(new.limits.connections, new.limits.handshakes)
        if current is not None:
            runtime.connections = current.runtime.connections
            runtime.metrics = current.runtime.metrics
            runtime.tunnels = current.runtime.tunnels  # a DMZ's ready tunnels (services/dmz.py): the listener's pools
            if changes.gate_kept:
                gate = current.gate
        return Deployment(new, runtime, gate)

    def _build(
        self,
        changes: Changes,
        deployment: Deployment,
        current: Deployment | None,
        errors: list[ConfigError] | None = None,
    ) -> None:
        """Fill ``deployment`` with what ``changes`` keeps from ``current`` and builds anew (realms,
        handlers, limits, listeners with their TLS contexts), binding and starting nothing.
        Raises what cannot be built, every such error together with ``errors`` (found before: the stores);
        what it built so far is in ``deployment`` (to release)."""
        errors = list(errors or ())
        planned = changes.new
        config = planned.config
        runtime = deployment.runtime
        for realm in config.security.realms.values():  # the names this config reads credentials from are masked in logs
            auth = realm.authentication
            cookies = (
                *auth.http_cookies,
                cookie_name(realm.name),
                cookie_name(realm.name) + "_oidc",
            )  # and an OIDC sign-in's
            REDACTOR.add(auth.http_query_parameters, auth.http_headers, cookies)
        for name, realm_plan in planned.realms.items():
            if current is not None and name in changes.realms_kept:
                deployment.realms[name] = current.realms[name]  # its sessions and pools survive
                continue
            try:
                realm_runtime = RealmRuntime(realm_plan.config, planned.base_dir, fetch_json, HTTP)
            except ConfigError as exc:
                errors.append(exc)
                continue
            realm_runtime.metrics = runtime.metrics
            realm_runtime.revocations = self.revocations
            if self.shared is not None:
                realm_runtime.sessions = RedisSessions(self.shared, name)
                if realm_runtime.oidc is not None:  # a refresh on this node extends the session's sockets everywhere
                    realm_runtime.oidc.publish = partial(self.shared.publish, OIDC_EXTENDED)
            deployment.realms[name] = realm_runtime
        for name, service_plan in planned.services.items():
            if current is not None and name in changes.unchanged:
                deployment.services[name] = current.services[name]  # its handler and live connections
                deployment.service_limits[name] = current.service_limits[name]  # its counts of open connections
                continue
            service = service_plan.config
            kind = service_type(service.type)
            try:
                handler = kind.create(service, runtime)
                if kind.web_root and config.web_root is not None:
                    handler.configure(config.web_root)
            except ConfigError as exc:
                errors.append(exc)
                continue
            deployment.services[name] = handler
            deployment.service_limits[name] = _service_limits(service_plan.limits)
        for key, listener_plan in planned.listeners.items():
            tls = listener_plan.tls
            listener_tls = None
            if tls is not None and key not in changes.listeners_kept:
                if tls.keys is None and errors:  # the keystore could not be read: its error says so
                    continue
                try:
                    listener_tls = self._listener_tls(tls)
                except ConfigError as exc:
                    errors.append(exc)
                    continue
            if errors:  # its routes need every realm and service: only their TLS is checked
                continue
            listener = self._listener(listener_plan, deployment)
            if listener_tls is not None:
                listener.ssl_context = listener_tls.context
                listener.ssl_select = listener_tls.select if listener_tls.several else None
            deployment.listeners[key] = listener
        if errors:
            raise ConfigErrors.of(errors)
        for warning in config.warnings:
            log.warning("%s", warning)
        for service in config.services:
            if service.dropped_realm:
                log.warning(
                    "service[%s]/realm-name: %r has no authorization-constraint; as in Kaazing's %s schema the realm "
                    "is dropped and the service is NOT authenticated (add require-role to protect it)",
                    service.name,
                    service.dropped_realm,
                    "2014/09 and 2015/11",
                )
            if not service.accept_options.server_header:
                log.warning(
                    "service[%s]/accept-options/http.server.header: 'disabled' still sends 'Server: wsgate' "
                    "(never a version); the header itself cannot be removed yet",
                    service.name,
                )

    def _listener(self, planned: ListenerPlan, deployment: Deployment) -> Listener:
        """The listener ``planned`` describes, with its routes (no TLS context: ``_listener_tls``)."""
        runtime = deployment.runtime
        listener = Listener(
            host=planned.key[0],
            port=planned.key[1],
            reuse_port=self.reuse_port,
            metrics=runtime.metrics,
            handshake_timeout=planned.handshake_timeout,
            header_size=planned.header_size,
        )
        for route in planned.routes:
            uri = route.uri
            service = deployment.plan.services[route.service].config
            handler = deployment.services[service.name]
            listener.add(
                Route(
                    host=uri.host,
                    path=uri.path.rstrip("/"),
                    service=handler,
                    endpoint=_endpoint(handler),
                    admission=self._admission(handler, route.verify_client, deployment),
                    prefix=service_type(service.type).prefix,
                    control=bool(service.realm_name),
                    keepalive_timeout=service.accept_options.keepalive_timeout,
                    emulation=_emulation(handler),
                )
            )
        if self.reuse_port and any(r.emulation for r in listener.routes) and not self._warned_emulation:
            self._warned_emulation = True
            log.warning(
                "WebSocket emulation with --workers: an emulated session lives in one worker and its later requests "
                "may reach another (404); serve emulated clients from one worker per port, or set "
                "accept-options/ws.emulation disabled (docs/emulation.md)"
            )
        return listener

    def _admission(self, handler: ServiceHandler, verify_client: str, deployment: Deployment) -> Admission:
        """What a route decides before its service runs (security/admission.py)."""
        service = handler.config
        runtime = deployment.runtime
        offloaded = offloaded_tls(service)
        realm = None
        if service.realm_name:
            realm = RealmGate(
                deployment.realms[service.realm_name],
                service.name,
                service_type(service.type).plain_http,
                service.authorization_constraints,
                [uri.path for uri in service.accepts],
                runtime.connections,
                runtime.expire,
                offloaded,
            )
        return Admission(
            service=service.name,
            cors=service_type(service.type).cors,
            websocket=isinstance(handler, WebSocketService),
            cross_site=service.cross_site_constraints,
            offloaded_tls=offloaded,
            verify_client=verify_client,
            realm=realm,
            limits=deployment.service_limits[service.name],
            gate=deployment.gate,
            open_connections=runtime.connections,
            metrics=runtime.metrics,
            closing=lambda: handler.runtime.closing,
            origin_lines=handler.origin_lines,
            shared_rate=self.shared_rates,
        )

    @staticmethod
    def _listener_tls(tls: TlsGroup) -> ListenerTls:
        assert tls.keys is not None  # the config builder demands a keystore for wss
        trusted = tls.trust.trusted_pem if tls.trust else None
        return ListenerTls(
            tls.keys,
            list(tls.hosts),
            TlsOptions(tls.ciphers, tls.protocols),
            tls.verify_client,
            trusted,
            tls.element,
        )

    # -- running -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the services, then bind every listener; on failure stop what started and raise
        a ``ConfigError`` naming the service(s), the address and the cause."""
        if self.shared is not None:
            await self.shared.start()  # a Redis that does not answer is a start-up error, before any port opens
        if self.registry is not None:
            await self.registry.start()
        try:
            for service in self.services.values():
                await _start_service(service)
            for listener in self.listeners.values():
                await _bind(listener)
        except BaseException:
            await self.stop(0)
            raise

    def port_of(self, service_name: str, index: int = 0) -> int:
        """The bound port of a service's accept URI (tests use port 0)."""
        return self.listeners[self.plan.listener_of(service_name, index)].port

    async def stop(self, grace: float = 10.0) -> None:
        """Graceful shutdown: stop accepting, close WebSockets (the console's feeds too) with 1001, wait for drains.

        Peers that do not finish the close handshake within ``grace`` are aborted,
        so a client that stopped reading cannot hold the shutdown hostage.
        """
        self.runtime.closing = True
        for listener in [*self.listeners.values(), *self.retired]:
            listener.stop_accepting()
        for service in self.services.values():  # what they hold outside the registry: the console's feeds
            service.going_away(grace)
        sessions = list(self.runtime.connections)
        if sessions:
            log.info("closing %d connection(s) with 1001", len(sessions))
            closes = [
                asyncio.ensure_future(s.channel.close(CloseCode.GOING_AWAY, "gateway shutting down")) for s in sessions
            ]
            _, late = await asyncio.wait(closes, timeout=grace)
            for task in late:
                task.cancel()
        for session in list(self.runtime.connections):
            session.channel.abort()
        listeners = [*self.listeners.values(), *self.retired]
        await asyncio.gather(*(listener.shutdown(min(grace, 1.0)) for listener in listeners))
        if self.retiring:  # their connections are closed: the handlers a reload replaced stop too (a DMZ dialler)
            await asyncio.wait(list(self.retiring), timeout=grace)
        for service in self.services.values():
            await service.stop()
        for realm in self.realms.values():
            await realm.close()
        if self.registry is not None:
            await self.registry.close()  # this node's entries go now (connections closed above)
        if self.shared is not None:
            await self.shared.close()

    async def revoke(self, user: str | None = None, token: str | None = None, reason: str = "revoked") -> int:
        """Refuse ``user`` (or the presented ``token``) from now on, and close their live connections now.

        A user stays refused for ``security/revocation-timeout``; a token until its own expiry (its
        ``exp``, or that of the live connections that presented it), else as long as a user. Tokens are
        known by their JWT ``jti``, else by ``token_digest`` (a JWT's signed part); the token itself is never
        kept. Live connections close with 1008 and are aborted after 1 s; the user's realm sessions end.
        """
        now = time.time()
        ttl = self.config.security.revocation_timeout
        digest = token_digest(token) if token else None

        selectors = [Selector(user=user)] if user is not None else []
        if digest is not None:
            selectors.append(Selector(token=digest))
        revoked: dict[str, float] = {}
        if user is not None:
            revoked[user_key(user)] = now + ttl
        if token is not None and digest is not None:
            token_id, expires_at = unverified_claims(token)
            revoked[token_key(token_id, digest)] = expires_at if expires_at and expires_at > now else now + ttl
        matched = {c.id: c for selector in selectors for c in self.runtime.connections.select(selector)}
        for connection in matched.values():  # the tokens they presented, until those expire
            identity = connection.identity
            if identity is not None and identity.token_digest is not None:
                key = token_key(identity.token_id, identity.token_digest)
                revoked[key] = max(revoked.get(key, 0.0), identity.expires_at or now + ttl)
        try:
            for key, until in revoked.items():
                await self.revocations.revoke(key, until)
        finally:  # shared state down (StateUnavailable): this node's connections close all the same
            for connection in matched.values():
                connection.end(CloseCode.POLICY_VIOLATION, reason, grace=1.0)
        closed = len(matched)
        if user is not None:
            for realm in self.realms.values():
                await realm.sessions.drop_user(user)
        log.info("revoked %d key(s), closed %d connection(s) (%s)", len(revoked), closed, reason)
        return closed

    async def _revoked_elsewhere(self, message: dict[str, Any]) -> None:
        """Another node revoked keys: close this node's connections they refuse (its own were closed by ``revoke``)."""
        if self.shared is not None and self.shared.mine(message):
            return
        keys = message.get("keys")
        if isinstance(keys, dict):
            self._end_revoked({str(key): float(until) for key, until in keys.items()}, "revoked")

    async def _oidc_refreshed_elsewhere(self, message: dict[str, Any]) -> None:
        """Another node refreshed an OpenID Connect session: extend this node's connections of it."""
        if self.shared is not None and self.shared.mine(message):
            return
        realm = self.realms.get(str(message.get("realm")))
        if realm is not None and realm.oidc is not None:
            try:
                await realm.oidc.extended_elsewhere(message)
            except StateUnavailable as exc:  # the connections close at their old deadline; the listener goes on
                log.warning("oidc refresh from another node not applied: %s", exc)

    async def _resync_revocations(self) -> None:
        """Back from a Redis outage: messages published meanwhile were lost; the keys were not.

        ``StateUnavailable`` (gone again) reaches the listener, which reconnects and calls this again."""
        self._end_revoked(await self.revocations.entries(), "revoked")

    def _end_revoked(self, revoked: dict[str, float], reason: str) -> int:
        now = time.time()
        in_force = {key for key, until in revoked.items() if until > now}
        closed = 0
        for connection in self.runtime.connections:
            identity = connection.identity
            if identity is None:
                continue
            if in_force.intersection(identity_keys(identity.user, identity.token_id, identity.token_digest)):
                connection.end(CloseCode.POLICY_VIOLATION, reason, grace=1.0)
                closed += 1
        if closed:
            log.info("closed %d connection(s) revoked on another node", closed)
        return closed

    @property
    def node(self) -> str | None:
        return self.shared.node if self.shared is not None else None

    async def remote_sessions(self) -> list[dict[str, Any]]:
        if self.registry is None:
            return []
        return await self.registry.sessions(exclude=self.registry.node)

    async def session_node(self, connection_id: str) -> str | None:
        return None if self.registry is None else await self.registry.holder(connection_id)

    async def revocations_in_force(self) -> dict[str, float]:
        return await self.revocations.entries()

    async def lift_revocation(self, key: str) -> bool:
        lifted = await self.revocations.lift(key)
        if lifted:
            log.warning("revocation of %s lifted", key)
        return lifted

    # -- reloading -------------------------------------------------------------------------

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config; apply it only if it is entirely valid (the old one keeps running otherwise).

        Services whose config (realm, and key material for TLS back ends, included) is unchanged keep
        their handler and live connections; changed services' connections close with 1012 (service restart) so
        clients reconnect to the new version; removed services' with 1001. Listeners keep their
        socket unless their TLS material changed (then new handshakes get the new certificates).

        Returns ``(True, changes)`` or ``(False, located error)`` for a refused config. Any other
        failure is logged with its traceback, counted as ``failed``, undone, and raised as ``ReloadFailed``.
        """
        metrics = self.runtime.metrics
        assert metrics is not None
        async with self._reloading:
            if self.loader is None:
                return False, "this gateway was not started from a config file"
            try:
                config = self.loader()
                if config.state != self.config.state:
                    raise ConfigError("state", "takes effect at a restart only; the running state stays")
                changes = diff(self.plan, load_plan(config))
                await self.apply(changes)
            except GatewayError as exc:
                metrics.reloads.labels("rejected").inc()
                log.error("reload rejected, the running configuration stays: %s", exc)
                return False, str(exc)
            except Exception as exc:
                metrics.reloads.labels("failed").inc()
                log.exception("reload failed, the running configuration stays")
                raise ReloadFailed(
                    f"reload failed, the running configuration stays: {type(exc).__name__}: {exc} "
                    "(an internal error: the gateway log has the traceback; please report it)"
                ) from exc
            metrics.reloads.labels("applied").inc()
            log.info("configuration reloaded: %s", changes)
            return True, str(changes)

    async def apply(self, changes: Changes) -> None:
        """Make ``changes.new`` the running plan, or raise with the running one untouched.

        Everything that can fail (building realms, handlers and TLS contexts, starting services, binding
        sockets) happens beside what runs and is undone if it fails; then ``_switch``, which cannot fail.
        """
        current = self.deployment
        assert changes.old is current.plan, "changes are applied to the plan they were computed from"
        deployment = self._deployment(changes, current)
        started: list[ServiceHandler] = []
        undo: list[Callable[[], Awaitable[None]]] = []
        try:
            self._build(changes, deployment, current)
            for name in changes.started:
                await _start_service(deployment.services[name])
                started.append(deployment.services[name])
            for key in changes.bound:
                listener = deployment.listeners[key]
                replaced = current.listeners.get(key)
                if replaced is not None:  # new TLS material: a new socket on the same port
                    replaced.stop_accepting()
                    undo.append(replaced.resume)
                    listener.port = replaced.port  # the same port, even where the config says 0
                await _bind(listener)
                undo.append(listener.abandon)
        except BaseException:
            for step in reversed(undo):
                await step()
            for handler in started:
                await handler.stop()
            for name, realm in deployment.realms.items():
                if current.realms.get(name) is not realm:
                    await realm.close()
            raise
        self._switch(changes, current, deployment)

    def _switch(self, changes: Changes, current: Deployment, deployment: Deployment) -> None:
        """Run ``deployment`` instead of ``current``: nothing here can fail."""
        for name in changes.unchanged:
            deployment.services[name].runtime = deployment.runtime
        for name in changes.rules_changed:
            deployment.services[name].update_rules(changes.new.services[name].config)
        for name in changes.removed:
            for connection in self.runtime.connections.select(Selector(service=name)):
                connection.end(CloseCode.GOING_AWAY, "service removed")
        for name in changes.changed:
            for connection in self.runtime.connections.select(Selector(service=name)):
                connection.end(CloseCode.SERVICE_RESTART, "service restarted")
        for key, listener in deployment.listeners.items():
            kept = current.listeners.get(key)
            if key in changes.listeners_kept and kept is not None:
                # Same socket, new routes and limits: nothing in flight is touched.
                kept.routes = listener.routes  # with their admissions: limits, realms, the gate
                kept.handshake_timeout = listener.handshake_timeout
                deployment.listeners[key] = kept
            elif kept is not None:  # rebound: the old socket serves its connections to the end
                self.retired.append(kept)
        for key, listener in current.listeners.items():
            if key in changes.listeners_retired:
                listener.stop_accepting()
                self.retired.append(listener)
        retiring = [current.services[name] for name in sorted(changes.removed | changes.changed)]
        for handler in retiring:
            handler.retiring()  # e.g. a DMZ internal end's ready tunnels: the next client gets the new config
        old_realms = [r for name, r in current.realms.items() if deployment.realms.get(name) is not r]
        self.deployment = deployment
        task = asyncio.get_running_loop().create_task(self._retire(retiring, old_realms))
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def _retire(self, handlers: list[ServiceHandler], realms: list[RealmRuntime]) -> None:
        """Release what removed or changed services held, once their connections are gone."""
        names = {h.name for h in handlers}
        for _ in range(100):
            if not any(c.service in names for c in self.runtime.connections):
                break
            await asyncio.sleep(0.05)
        for handler in handlers:
            await handler.stop()
        for realm in realms:
            await realm.close()


def _endpoint(handler: ServiceHandler) -> Endpoint:
    """Where the listener hands a request the admission accepted (transport/endpoint.py)."""
    if isinstance(handler, WebSocketService):
        return websocket_endpoint(handler)
    if isinstance(handler, HttpService):
        return reply_endpoint(handler)
    if isinstance(handler, ResourceService):  # management, metrics, kdc.proxy: bodies read on demand, own WebSockets
        return resource_endpoint(handler)
    raise TypeError(f"service[{handler.name}]: {type(handler).__name__} is neither WebSocket nor HTTP")


def _emulation(handler: ServiceHandler) -> WseAdapter | None:
    """A WebSocket service's emulated resources (``<path>/;e/…``), unless ``ws.emulation disabled``."""
    if isinstance(handler, WebSocketService) and handler.config.accept_options.emulation:
        return WseAdapter(handler, handler.runtime.metrics)
    return None


async def _start_service(handler: ServiceHandler) -> None:
    """Services that bind or dial at start (a broadcast feed) fail with their name and the cause."""
    try:
        await handler.start()
    except OSError as exc:
        raise bind_error(exc, f"service[{handler.name}]") from None


async def _bind(listener: Listener) -> None:
    """Bind ``listener``; a failure names the services it serves, the address and a fix for the cause."""
    try:
        await listener.start()
    except OSError as exc:
        names = sorted({route.service.name for route in listener.routes})
        where = ", ".join(f"service[{name}]/accept" for name in names)
        raise bind_error(exc, where, f"{listener.host or '*'}:{listener.port}") from None


def _service_limits(values: LimitValues | None) -> ServiceLimits | None:
    """A new count of one service's open connections against its limits (None: it has none)."""
    if values is None:
        return None
    return ServiceLimits(values.max_connections, values.max_per_ip, values.rate, values.burst)


def check_bind_hosts(config: GatewayConfig) -> None:
    """Every host a listener binds resolves (``check-config``: ``run`` would fail at the bind)."""
    errors: list[ConfigError] = []
    for service in config.services:
        for uri in service.accepts:
            (host, port), element = bind_source(service, uri)
            if host is None:
                continue
            try:
                socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except socket.gaierror as exc:
                errors.append(
                    ConfigError(
                        element,
                        f"{uri} binds {host}:{port}, but {host!r} does not resolve ({exc.strerror}); "
                        "fix the host name or use an IP address",
                    )
                )
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
