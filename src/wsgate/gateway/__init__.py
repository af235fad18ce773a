"""The gateway: turns a validated config into services and listeners, runs and stops them.

Everything that can fail (keystores, TLS options, directories, port plans) fails
in ``Gateway(config)`` before any socket is bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..config.build import BIND_LAYERS
from ..config.model import GatewayConfig, Realm, Service, Store, TlsOptions
from ..config.values import Uri
from ..core.close import CloseCode
from ..errors import ConfigError, ConfigErrors, GatewayError, ReloadFailed, bind_error
from ..observe.metrics import Metrics
from ..observe.redact import REDACTOR
from ..security.keystore import load_store
from ..security.limits import GatewayLimits, ServiceLimits
from ..security.login.jwt import unverified_claims
from ..security.realms import RealmGuard, RealmRuntime
from ..security.sessions import cookie_name
from ..security.tls import ListenerTls
from ..services import create_service
from ..services.base import Runtime, ServiceHandler
from ..services.directory import DirectoryService
from ..state.connections import Selector
from ..state.revocations import MemoryRevocations, RevocationStore, token_digest, token_key, user_key
from ..transport.listener import Listener, Route

log = logging.getLogger("wsgate")
_USERINFO = re.compile(r"://[^/@]*@")
try:
    VERSION = version("wsgate")
except PackageNotFoundError:  # running from a source tree
    VERSION = "unknown"

BindKey = tuple[str | None, int]
# What a reload replaces: the switch in ``_adopt`` assigns each of these from the new gateway. Every
# other attribute outlives reloads (tests check that each attribute is in exactly one of the two).
_PER_CONFIG = ("config", "runtime", "realms", "services", "service_limits", "gate", "listeners")
_KEPT = ("reuse_port", "loader", "started", "retired", "_reloading", "revocations")


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        reuse_port: bool = False,
        loader: Callable[[], GatewayConfig] | None = None,
    ) -> None:
        """``loader`` re-reads the configuration for ``reload`` (SIGHUP, the management API)."""
        self.config = config
        self.reuse_port = reuse_port
        self.loader = loader
        self.started = time.time()
        self.retired: list[Listener] = []  # listeners replaced by a reload, still serving their connections
        self._reloading = asyncio.Lock()
        security = config.security
        self.runtime = Runtime(
            keys=load_store(security.keystore) if security.keystore else None,
            trust=load_store(security.truststore) if security.truststore else None,
        )
        self.runtime.metrics = Metrics(lambda: self.runtime.connections)
        self.runtime.control = self
        base_dir = config.source.parent if config.source else Path.cwd()
        _check_cookie_names(security.realms)
        self.realms = {name: RealmRuntime(realm, base_dir) for name, realm in security.realms.items()}
        self.revocations: RevocationStore = MemoryRevocations()
        self.runtime.revocations = self.revocations
        for realm_runtime in self.realms.values():
            realm_runtime.metrics = self.runtime.metrics
            realm_runtime.revocations = self.revocations
        self.runtime.realms = dict(security.realms)
        for realm in security.realms.values():  # the names this config reads credentials from are masked in logs
            auth = realm.authentication
            REDACTOR.add(auth.http_query_parameters, auth.http_headers, (*auth.http_cookies, cookie_name(realm.name)))
        self.services: dict[str, ServiceHandler] = {}
        for service in config.services:
            handler = create_service(service, self.runtime)
            if isinstance(handler, DirectoryService) and config.web_root is not None:
                handler.configure(config.web_root)
            self.services[service.name] = handler
        self.gate = GatewayLimits(config.limits.connections, config.limits.handshakes)
        self.service_limits = {s.name: _service_limits(s) for s in config.services}
        self.listeners = self._plan_listeners()
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

    # -- planning ----------------------------------------------------------------------------

    def _plan_listeners(self) -> dict[BindKey, Listener]:
        planned: dict[BindKey, list[tuple[Service, Uri]]] = defaultdict(list)
        for service in self.config.services:
            for uri in service.accepts:
                planned[_bind_key(service, uri)].append((service, uri))
        return {key: self._listener(key, entries) for key, entries in planned.items()}

    def _listener(self, key: BindKey, entries: list[tuple[Service, Uri]]) -> Listener:
        tls_entries = [(s, u) for s, u in entries if u.secure and s.accept_options.tls.encryption]
        if tls_entries and len(tls_entries) != len(entries):
            plain = next(f"service[{s.name}] {u}" for s, u in entries if (s, u) not in tls_entries)
            secure = f"service[{tls_entries[0][0].name}] {tls_entries[0][1]}"
            raise ConfigError(
                f"service[{tls_entries[0][0].name}]/accept",
                f"{secure} and {plain} bind the same port {key[1]} with and without TLS; give them different ports",
            )
        limits = self.config.limits
        listener = Listener(
            host=key[0],
            port=key[1],
            reuse_port=self.reuse_port,
            metrics=self.runtime.metrics,
            gate=self.gate,
            open_connections=self.runtime.connections,
            handshake_timeout=limits.handshake_timeout,
            header_size=limits.header_size,
        )
        verify = self._verify_client_modes(tls_entries)
        tls_level = next(iter(verify)) if len(verify) == 1 else "optional"
        if tls_entries:
            listener.ssl_context = self._listener_tls(tls_entries, tls_level).context
            # What the TLS context was built from: a reload keeps the socket only if this is unchanged.
            listener.tls_source = (
                tuple(sorted(u.host for _, u in tls_entries)),
                tls_level,
                tuple((s.accept_options.tls.ciphers, s.accept_options.tls.protocols) for s, _ in tls_entries),
                self.runtime.keys,
                self.runtime.trust,
            )
        for service, uri in entries:
            handler = self.services[service.name]
            listener.add(
                Route(
                    host=uri.host,
                    path=uri.path.rstrip("/"),
                    service=RealmGuard(handler, self.realms[service.realm_name], self.runtime)
                    if service.realm_name
                    else handler,
                    prefix=service.type in ("directory", "management"),
                    control=bool(service.realm_name),
                    verify_client=service.accept_options.tls.verify_client if uri.secure else "none",
                    limits=self.service_limits[service.name],
                    keepalive_timeout=service.accept_options.keepalive_timeout,
                )
            )
        return listener

    @staticmethod
    def _verify_client_modes(entries: Iterable[tuple[Service, Uri]]) -> set[str]:
        return {s.accept_options.tls.verify_client for s, _ in entries}

    def _listener_tls(self, entries: list[tuple[Service, Uri]], verify_client: str) -> ListenerTls:
        first = entries[0][0]
        options = first.accept_options.tls
        for service, _ in entries[1:]:
            other = service.accept_options.tls
            if (other.ciphers, other.protocols) != (options.ciphers, options.protocols):
                raise ConfigError(
                    f"service[{service.name}]/accept-options",
                    f"ssl.ciphers/ssl.protocols differ from service[{first.name}] on the same port; "
                    "use the same values or another port",
                )
        assert self.runtime.keys is not None  # the config builder demands a keystore for wss
        trusted = self.runtime.trust.trusted_pem if self.runtime.trust else None
        hosts = [u.host for _, u in entries]
        return ListenerTls(
            self.runtime.keys,
            hosts,
            TlsOptions(options.ciphers, options.protocols),
            verify_client,
            trusted,
            f"service[{first.name}]/accept-options",
        )

    # -- running -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the services, then bind every listener; on failure stop what started and raise
        a ``ConfigError`` naming the service(s), the address and the cause."""
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
        service = self.config.service(service_name)
        return self.listeners[_bind_key(service, service.accepts[index])].port

    async def stop(self, grace: float = 10.0) -> None:
        """Graceful shutdown: stop accepting, close WebSockets with 1001, wait for drains.

        Peers that do not finish the close handshake within ``grace`` are aborted,
        so a client that stopped reading cannot hold the shutdown hostage.
        """
        self.runtime.closing = True
        for listener in [*self.listeners.values(), *self.retired]:
            listener.stop_accepting()
        connections = list(self.runtime.connections)
        if connections:
            log.info("closing %d connection(s) with 1001", len(connections))
            closes = [
                asyncio.ensure_future(c.close(CloseCode.GOING_AWAY, "gateway shutting down")) for c in connections
            ]
            _, late = await asyncio.wait(closes, timeout=grace)
            for task in late:
                task.cancel()
        for connection in list(self.runtime.connections):
            connection.abort()
        listeners = [*self.listeners.values(), *self.retired]
        await asyncio.gather(*(listener.shutdown(min(grace, 1.0)) for listener in listeners))
        for service in self.services.values():
            await service.stop()
        for realm in self.realms.values():
            await realm.close()

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
        for key, until in revoked.items():
            await self.revocations.revoke(key, until)
        for connection in matched.values():
            connection.end(CloseCode.POLICY_VIOLATION, reason, grace=1.0)
        closed = len(matched)
        if user is not None:
            for realm in self.realms.values():
                realm.sessions.drop_user(user)
        log.info("revoked %d key(s), closed %d connection(s) (%s)", len(revoked), closed, reason)
        return closed

    async def revocations_in_force(self) -> dict[str, float]:
        return await self.revocations.entries()

    async def lift_revocation(self, key: str) -> bool:
        lifted = await self.revocations.lift(key)
        if lifted:
            log.warning("revocation of %s lifted", key)
        return lifted

    # -- operations --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What the management API shows about this gateway: no passwords, no option values."""
        config = self.config
        security = config.security
        return {
            "product": "wsgate",
            "version": VERSION,
            "pid": os.getpid(),
            "started": self.started,
            "uptime": round(time.time() - self.started, 1),
            "connections": len(self.runtime.connections),
            "config": {
                "source": str(config.source) if config.source else None,
                "services": self.service_summaries(),
                "realms": [
                    {
                        "name": realm.name,
                        "challenge": realm.authentication.http_challenge_scheme,
                        "login-modules": [
                            {"type": m.type, "success": m.success} for m in realm.authentication.login_modules
                        ],
                    }
                    for realm in security.realms.values()
                ],
                "keystore": _store_summary(security.keystore),
                "truststore": _store_summary(security.truststore),
            },
        }

    def service_summaries(self) -> list[dict[str, Any]]:
        return [_service_summary(s) for s in self.config.services]

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
                fresh = Gateway(self.loader(), self.reuse_port, self.loader)
                changes = await self._adopt(fresh)
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
            return True, changes

    async def _adopt(self, fresh: Gateway) -> str:
        """Make ``fresh`` the running gateway, or raise with the running one untouched.

        Everything that can fail (starting services, binding sockets) happens before the switch and is
        undone if it fails; the switch itself replaces every attribute in ``_PER_CONFIG`` at once.
        """
        unchanged = {name for name in fresh.services if self._unchanged(name, fresh)}
        removed = set(self.services) - set(fresh.services)
        changed = set(self.services) - removed - unchanged
        added = set(fresh.services) - set(self.services)
        await self._share_state(fresh, unchanged)
        started: list[ServiceHandler] = []
        try:
            for name in sorted(added | changed):
                await _start_service(fresh.services[name])
                started.append(fresh.services[name])
            await self._swap_listeners(fresh)
        except BaseException:
            for handler in started:
                await handler.stop()
            for name, realm in fresh.realms.items():
                if self.realms.get(name) is not realm:
                    await realm.close()
            raise
        # The switch: nothing from here on can fail.
        for name in unchanged:
            self.services[name].runtime = fresh.runtime
        for name in removed:
            for connection in self.runtime.connections.select(Selector(service=name)):
                connection.end(CloseCode.GOING_AWAY, "service removed")
        for name in changed:
            for connection in self.runtime.connections.select(Selector(service=name)):
                connection.end(CloseCode.SERVICE_RESTART, "service restarted")
        retiring = [self.services[name] for name in removed | changed]
        old_realms = [r for name, r in self.realms.items() if fresh.realms.get(name) is not r]
        for attribute in _PER_CONFIG:
            setattr(self, attribute, getattr(fresh, attribute))
        self.runtime.control = self
        asyncio.get_running_loop().create_task(self._retire(retiring, old_realms))
        return f"{len(unchanged)} unchanged, {len(added)} added, {len(changed)} changed, {len(removed)} removed" + (
            f" ({', '.join(sorted(added | changed | removed))})" if added | changed | removed else ""
        )

    async def _share_state(self, fresh: Gateway, unchanged: set[str]) -> None:
        """Give ``fresh`` what outlives a reload (connections, metrics, revocations, kept services and
        realms, their counters); changes only ``fresh``."""
        # Realms whose config and files did not change keep their runtime: sessions and pools survive.
        for name, realm in list(fresh.realms.items()):
            old = self.realms.get(name)
            if old is not None and old.config == realm.config and old.files == realm.files:
                await realm.close()
                fresh.realms[name] = self.realms[name]
        # One registry of live connections across reloads; kept handlers move to the new runtime at the switch.
        fresh.runtime.connections = self.runtime.connections
        fresh.runtime.metrics = self.runtime.metrics
        for name in unchanged:
            fresh.services[name] = self.services[name]
            fresh.service_limits[name] = self.service_limits[name]  # its counts of open connections
        if fresh.config.limits == self.config.limits:
            fresh.gate = self.gate  # its count of handshakes in progress
        fresh.revocations = fresh.runtime.revocations = self.revocations  # a reload never lifts a revocation
        for realm_runtime in fresh.realms.values():
            realm_runtime.metrics = fresh.runtime.metrics
            realm_runtime.revocations = self.revocations
        fresh.listeners = fresh._plan_listeners()

    def _unchanged(self, name: str, fresh: Gateway) -> bool:
        if name not in self.services:
            return False
        old, new = self.config.service(name), fresh.config.service(name)
        if old != new:
            return False
        realms_old, realms_new = self.config.security.realms, fresh.config.security.realms
        if new.realm_name and realms_old.get(new.realm_name) != realms_new.get(new.realm_name):
            return False
        # Accept-side certificates belong to the listener (rotated there); a TLS back end's client
        # certificate and trust belong to the service.
        backend_tls = any(u.secure for u in new.connects)
        same_keys = (self.runtime.keys, self.runtime.trust) == (fresh.runtime.keys, fresh.runtime.trust)
        return not backend_tls or same_keys

    async def _swap_listeners(self, fresh: Gateway) -> None:
        """Bind what ``fresh`` needs anew (undone if any bind fails), then hand kept sockets their new routes."""
        undo: list[Callable[[], Awaitable[None]]] = []
        try:
            for key, listener in fresh.listeners.items():
                current = self.listeners.get(key)
                if current is not None and _same_socket(current, listener):
                    continue
                if current is not None:  # new TLS material: a new socket on the same port
                    current.stop_accepting()
                    undo.append(current.resume)
                    listener.port = current.port  # the same port, even where the config says 0
                await _bind(listener)
                undo.append(listener.abandon)
        except BaseException:
            for step in reversed(undo):
                await step()
            raise
        for key, listener in list(fresh.listeners.items()):
            current = self.listeners.get(key)
            if current is not None and _same_socket(current, listener):
                # Same socket, new routes and limits: nothing in flight is touched.
                current.routes, current.gate = listener.routes, listener.gate
                current.handshake_timeout = listener.handshake_timeout
                fresh.listeners[key] = current
            elif current is not None:
                self.retired.append(current)
        for key, listener in self.listeners.items():
            if key not in fresh.listeners:
                listener.stop_accepting()
                self.retired.append(listener)
        fresh.retired = self.retired

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


def _same_socket(current: Listener, planned: Listener) -> bool:
    """A reload keeps a listener's socket while what its TLS context and parser were built from is unchanged."""
    return (current.tls_source, current.header_size) == (planned.tls_source, planned.header_size)


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


def _check_cookie_names(realms: Mapping[str, Realm]) -> None:
    """Realm names that map to one session cookie (``a.b`` and ``a_b``) would read each other's sessions."""
    seen: dict[str, str] = {}
    for name in realms:
        other = seen.setdefault(cookie_name(name), name)
        if other != name:
            raise ConfigError(
                f"security/realm[{name}]/name",
                f"shares its session cookie {cookie_name(name)!r} with realm {other!r}; rename one of them",
            )


def _service_summary(service: Service) -> dict[str, Any]:
    return {
        "name": service.name,
        "type": service.type,
        "accept": [str(u) for u in service.accepts],
        "connect": [_USERINFO.sub("://***@", str(u)) for u in service.connects],
        "realm": service.realm_name,
        "require-role": sorted({r for c in service.authorization_constraints for r in c.require_roles}),
    }


def _service_limits(service: Service) -> ServiceLimits | None:
    options = service.accept_options
    rate, burst = options.handshake_rate or (None, 1.0)
    limits = ServiceLimits(options.max_connections, options.max_connections_per_ip, rate, burst)
    return limits if limits.active else None


def _store_summary(store: Store | None) -> dict[str, Any] | None:
    return None if store is None else {"type": store.type, "file": str(store.file)}


def _bind_key(service: Service, uri: Uri) -> BindKey:
    return _bind_source(service, uri)[0]


def _bind_source(service: Service, uri: Uri) -> tuple[BindKey, str]:
    """Where ``uri`` binds, and the config element that says so (the accept, or the ``*.bind`` used)."""
    binds = service.accept_options.binds
    for layer in BIND_LAYERS[uri.scheme]:
        if layer in binds:
            bind = binds[layer]
            # a port-only bind listens on every interface, as in Kaazing
            return (bind.host, bind.port), f"service[{service.name}]/accept-options/{layer}.bind"
    return (uri.host, uri.port), f"service[{service.name}]/accept"


def check_bind_hosts(config: GatewayConfig) -> None:
    """Every host a listener binds resolves (``check-config``: ``run`` would fail at the bind)."""
    errors: list[ConfigError] = []
    for service in config.services:
        for uri in service.accepts:
            (host, port), element = _bind_source(service, uri)
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
