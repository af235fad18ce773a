"""The typed, immutable configuration model.

Both front ends (Kaazing XML and native YAML) build exactly these objects, so
everything past ``config/`` sees one shape and never re-validates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .values import Uri

EMPTY: Mapping[str, Any] = MappingProxyType({})

DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024
DEFAULT_MAX_PENDING_BYTES = 64 * 1024
DEFAULT_REVOCATION_TIMEOUT = 24 * 3600.0
DEFAULT_KEEPALIVE_TIMEOUT = 30.0  # Kaazing's http.keepalive.timeout default
DEFAULT_WRITE_TIMEOUT = 30.0  # ws.write.timeout: how long one send may wait for a peer that does not read


@dataclass(frozen=True)
class Bind:
    """Where a public accept URI is really bound (from ``*.bind``)."""

    host: str | None
    port: int


@dataclass(frozen=True)
class TlsOptions:
    """``ssl.*`` / ``tls.*`` options of one side (accept or connect)."""

    ciphers: str | None = None
    protocols: tuple[str, ...] = ()
    encryption: bool = True
    verify_client: str = "none"  # accept side only: none | optional | required
    client_certificate: str | None = None  # connect side only: keystore alias (wsgate extension)


@dataclass(frozen=True)
class Tunnel:
    """Reverse connectivity (Kaazing's ``*.transport socks://`` with ``socks.mode reverse``, docs/dmz.md).

    On a DMZ gateway's proxy (``connect-options``) the gateway listens at ``rendezvous`` (mTLS, client
    certificate required) for the internal gateway's tunnels and signs an identity assertion with
    ``key_files[0]`` (Ed25519 private key); on the internal gateway's proxy (``accept-options``) nothing
    listens: the gateway keeps tunnels dialled out to ``rendezvous`` and verifies every assertion with the
    pinned public key(s) ``key_files`` (two while a rotation is under way).
    """

    rendezvous: Uri  # wss://dmz-host:port/path: socks.transport (wsn+ssl:// and ssl:// become wss://)
    key_files: tuple[Path, ...]  # tunnel.assertion.key (DMZ: one, private) or tunnel.assertion.public-key (internal)
    retry_max: float = 1.0  # socks.retry.maximum.interval: the longest wait between two dials (internal)
    timeout: float = 2.0  # socks.timeout: how long the DMZ waits for a ready tunnel and for the inward answer
    audience: str = "wsgate-internal"  # tunnel.audience: the assertion's aud, the internal gateway's own name
    issuer: str = "wsgate-dmz"  # tunnel.issuer: the assertion's iss, the DMZ gateway's name
    client_certificate: str | None = None  # tunnel.client-certificate: keystore alias the internal side presents
    # tunnel.peer (DMZ end): who may carry tunnels: the internal gateway certificate's common name(s), or
    # "sha256:<hex>" fingerprints; (): nobody (the config builder requires it on the DMZ end)
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Deflate:
    """RFC 7692 permessage-deflate as a service offers it (``ws.compression permessage-deflate``).

    ``window_bits`` caps the gateway's own compression window (``server_max_window_bits``, 9-15: zlib cannot
    deflate raw with 8). ``context_takeover`` False (the default) answers ``server_no_context_takeover`` and
    ``client_no_context_takeover``: every message is compressed on its own, so a secret in one message is no
    dictionary for attacker-chosen bytes in the next (docs/security.md#compression).
    """

    window_bits: int = 15
    context_takeover: bool = False


@dataclass(frozen=True)
class AcceptOptions:
    binds: Mapping[str, Bind] = field(default_factory=lambda: EMPTY)  # scheme → Bind
    tls: TlsOptions = TlsOptions()
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    inactivity_timeout: float | None = None
    server_header: bool = True
    max_connections: int | None = None  # connection.limit → 503
    max_connections_per_ip: int | None = None  # connection.limit.per.ip → 429
    handshake_rate: tuple[float, float] | None = None  # handshake.rate.per.ip: (per second, burst) → 429
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT  # http.keepalive.timeout: idle time between requests
    write_timeout: float | None = DEFAULT_WRITE_TIMEOUT  # ws.write.timeout: a send blocked this long drops the peer
    emulation: bool = True  # ws.emulation: a WebSocket service also answers WebSocket emulation (<path>/;e/…)
    tunnel: Tunnel | None = None  # internal gateway: accepted through tunnels it dials to a DMZ gateway
    deflate: Deflate | None = None  # ws.compression permessage-deflate (wsgate's; off by default)

    @property
    def compression_enabled(self) -> bool:
        """Does the service negotiate permessage-deflate? Such a service needs a data path that has it (aiohttp's)."""
        return self.deflate is not None


@dataclass(frozen=True)
class ConnectOptions:
    tls: TlsOptions = TlsOptions()
    inactivity_timeout: float | None = None
    tunnel: Tunnel | None = None  # DMZ gateway: connects through tunnels the internal gateway dialled in


@dataclass(frozen=True)
class AuthorizationConstraint:
    require_roles: tuple[str, ...] = ()
    require_valid_user: bool = False


@dataclass(frozen=True)
class CrossSiteConstraint:
    allow_origin: str
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    maximum_age: float | None = None


@dataclass(frozen=True)
class Rule:
    """One ``authorization-rule`` of a service: authorization inside the connection (wsgate extension).

    The first rule whose operation, roles and fields all match an operation decides it; a service with
    rules refuses what no rule allows (``security/rules.py``). ``fields`` maps a field the service type
    declares (``exchange``, ``topic``, ...) to a pattern: levels split by the field's separator, ``*`` or
    ``+`` one level, ``#`` the rest (last level only), ``{user}`` the authenticated user's name, literally.
    """

    allow: bool
    operations: tuple[str, ...]
    roles: tuple[str, ...] = ()  # (): every connection; "*": every authenticated one
    fields: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    then: str | None = None  # what a refusal does where the type offers a choice (its RuleSchema.outcomes)
    path: str = ""  # "service[x]/authorization-rule[2]": for errors and the audit log


@dataclass(frozen=True)
class Service:
    name: str
    type: str
    accepts: tuple[Uri, ...]
    connects: tuple[Uri, ...] = ()
    description: str = ""
    properties: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: EMPTY)
    accept_options: AcceptOptions = AcceptOptions()
    connect_options: ConnectOptions = ConnectOptions()
    realm_name: str | None = None
    authorization_constraints: tuple[AuthorizationConstraint, ...] = ()
    cross_site_constraints: tuple[CrossSiteConstraint, ...] = ()
    mime_mappings: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    dropped_realm: str | None = None  # a realm-name without constraint that a 2014/09 or 2015/11 config loses
    # Properties whose type declares a parser, parsed once by the builder: name → the last value, parsed.
    settings: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    # authorization-rule elements, in order. A reload that changes only these keeps the service's handler
    # and connections: the new rules apply from the next operation (gateway/plan.py, ``rules_changed``).
    rules: tuple[Rule, ...] = ()

    def prop(self, name: str, default: str | None = None) -> str | None:
        """The last value of a single-valued service property."""
        values = self.properties.get(name)
        return values[-1] if values else default

    def setting(self, name: str, default: Any = None) -> Any:
        """A property as its type's schema parsed it (``default`` when absent)."""
        return self.settings.get(name, default)

    @property
    def protected(self) -> bool:
        """A realm always means authentication: deny by default, whatever the constraints say."""
        return bool(self.realm_name)


@dataclass(frozen=True)
class Store:
    """A keystore or truststore element."""

    type: str | None  # JKS | JCEKS | PKCS12 | PEM, None = detect from the file
    file: Path
    password: str | None = field(default=None, repr=False)
    path: str = ""  # the element, for error messages


@dataclass(frozen=True)
class LoginModule:
    type: str
    success: str = "required"
    options: Mapping[str, str] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class Authentication:
    http_challenge_scheme: str | None = None
    http_headers: tuple[str, ...] = ()
    http_query_parameters: tuple[str, ...] = ()
    http_cookies: tuple[str, ...] = ()
    authorization_mode: str = "challenge"
    session_timeout: float | None = None
    authorization_timeout: float | None = None
    login_modules: tuple[LoginModule, ...] = ()
    login_concurrency: int | None = None  # verifier threads; None: half the CPUs, at least 1
    login_queue: int | None = None  # logins that may wait beyond those; None: 32


@dataclass(frozen=True)
class Realm:
    name: str
    description: str = ""
    user_principal_classes: tuple[str, ...] = ()
    authentication: Authentication = Authentication()


@dataclass(frozen=True)
class Security:
    keystore: Store | None = None
    truststore: Store | None = None
    realms: Mapping[str, Realm] = field(default_factory=lambda: EMPTY)
    # How long a revoked principal, or a revoked token without expiry, stays refused (wsgate).
    revocation_timeout: float = DEFAULT_REVOCATION_TIMEOUT


@dataclass(frozen=True)
class Limits:
    """The top-level ``limits`` element: protection for the whole gateway."""

    connections: int | None = None  # open WebSockets → 503
    handshakes: int | None = 1000  # handshakes in progress (TLS + HTTP + login) → 503
    handshake_timeout: float = 10.0  # from TCP accept to complete request headers; then the socket is dropped
    header_size: int = 8190  # longest request line or header field → 400


@dataclass(frozen=True)
class State:
    """The top-level ``state`` element: where realm sessions, revocations and the connection registry live.

    ``memory`` (default): this process. ``redis``: shared by every process and node that names the same
    Redis and ``key_prefix`` (docs/operations.md, "Scale-out").
    """

    type: str = "memory"
    url: str | None = None  # redis://host:port/db, rediss:// (TLS), unix:///path
    password: str | None = field(default=None, repr=False)  # Redis AUTH, from password-file
    ca_file: Path | None = None  # for rediss://
    key_prefix: str = "wsgate"
    node: str | None = None  # this node's name in the registry (default: host name and process id)
    heartbeat: float = 2.0  # seconds between the node's heartbeats; 3 missed: the node is gone
    timeout: float = 1.0  # seconds a Redis command may take before the store counts as unavailable
    shared_limits: tuple[str, ...] = ()  # limits every node counts together: "handshake-rate"


@dataclass(frozen=True)
class GatewayConfig:
    services: tuple[Service, ...]
    security: Security = Security()
    properties: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    source: Path | None = None
    web_root: Path | None = None
    limits: Limits = Limits()
    # Located warnings ("element path: message"): what the config asks for and wsgate does differently, on purpose.
    # ``check-config`` prints them and the gateway logs them at every start and reload.
    warnings: tuple[str, ...] = ()
    state: State = State()

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)
