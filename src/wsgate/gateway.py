"""The gateway: turns a validated config into services and listeners, runs and stops them.

Everything that can fail (keystores, TLS options, directories, port plans) fails
in ``Gateway(config)`` before any socket is bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from .config.build import BIND_LAYERS
from .config.model import GatewayConfig, Service, TlsOptions
from .config.values import Uri
from .errors import ConfigError
from .security.keystore import load_store
from .security.realms import RealmGuard, RealmRuntime
from .security.tls import ListenerTls
from .services import create_service
from .services.base import Runtime, ServiceHandler
from .services.directory import DirectoryService
from .transport.listener import Listener, Route
from .transport.websocket import CloseCode, Connection

log = logging.getLogger("wsgate")

BindKey = tuple[str | None, int]


class Gateway:
    def __init__(self, config: GatewayConfig, reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port
        security = config.security
        self.runtime = Runtime(
            keys=load_store(security.keystore) if security.keystore else None,
            trust=load_store(security.truststore) if security.truststore else None,
        )
        base_dir = config.source.parent if config.source else Path.cwd()
        self.realms = {name: RealmRuntime(realm, base_dir) for name, realm in security.realms.items()}
        self.runtime.realms = dict(security.realms)
        self.services: dict[str, ServiceHandler] = {}
        for service in config.services:
            handler = create_service(service, self.runtime)
            if isinstance(handler, DirectoryService) and config.web_root is not None:
                handler.configure(config.web_root)
            self.services[service.name] = handler
        self.listeners = self._plan_listeners()
        for service in config.services:
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
        listener = Listener(host=key[0], port=key[1], reuse_port=self.reuse_port)
        verify = self._verify_client_modes(tls_entries)
        tls_level = next(iter(verify)) if len(verify) == 1 else "optional"
        if tls_entries:
            listener.ssl_context = self._listener_tls(tls_entries, tls_level).context
        for service, uri in entries:
            handler = self.services[service.name]
            listener.add(
                Route(
                    host=uri.host,
                    path=uri.path.rstrip("/"),
                    service=RealmGuard(handler, self.realms[service.realm_name], self.runtime)
                    if service.realm_name and service.protected
                    else handler,
                    prefix=service.type == "directory",
                    control=service.protected,
                    verify_client=service.accept_options.tls.verify_client if uri.secure else "none",
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
        for service in self.services.values():
            await service.start()
        try:
            for listener in self.listeners.values():
                await listener.start()
        except OSError as exc:
            await self.stop(0)
            raise ConfigError(
                "service/accept", f"cannot bind: {exc.strerror or exc}; is another process on that port?"
            ) from None

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
        for listener in self.listeners.values():
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
        await asyncio.gather(*(listener.shutdown(min(grace, 1.0)) for listener in self.listeners.values()))
        for service in self.services.values():
            await service.stop()
        for realm in self.realms.values():
            await realm.close()

    def revoke(self, user: str | None = None, token: str | None = None, reason: str = "revoked") -> int:
        """Close every live connection of ``user`` (or presented ``token``) now: 1008, aborted after 1 s."""
        digest = hashlib.sha256(token.encode()).hexdigest() if token else None

        def match(connection: Connection) -> bool:
            identity = connection.identity
            return identity is not None and (
                user is not None and identity.user == user or digest is not None and identity.token_digest == digest
            )

        closed = self.runtime.expire_where(match, reason)
        if user is not None:
            for realm in self.realms.values():
                realm.sessions.drop_user(user)
        if closed:
            log.info("revoked %d connection(s) (%s)", closed, reason)
        return closed


def _bind_key(service: Service, uri: Uri) -> BindKey:
    binds = service.accept_options.binds
    for layer in BIND_LAYERS[uri.scheme]:
        if layer in binds:
            bind = binds[layer]
            return (bind.host, bind.port)  # a port-only bind listens on every interface, as in Kaazing
    return (uri.host, uri.port)
