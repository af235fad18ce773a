"""What a configuration asks the gateway to run, and what changes between two of them: values only.

``plan(config, keys, trust)`` describes the listeners (bind address, routes, one TLS group per
port with its merged verify-client mode), the services (with what their handler depends on: the
config, the realm config, the key material of TLS back ends, the limits) and the realms (config and
the content of their files). It binds nothing and builds nothing; the port errors a config can only
show here (one port with and without TLS, different ``ssl.ciphers`` on one port) are raised by it.

``diff(old, new)`` says what a reload keeps, builds anew, and retires; ``Gateway.apply`` does it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config.build import BIND_LAYERS
from ..config.model import GatewayConfig, Limits, Realm, Service
from ..config.values import Uri
from ..errors import ConfigError
from ..security.keystore import KeyMaterial
from ..security.realms import module_files
from ..state.sessions import cookie_name

BindKey = tuple[str | None, int]


@dataclass(frozen=True)
class LimitValues:
    """A service's ``connection.limit``, ``connection.limit.per.ip`` and ``handshake.rate.per.ip``."""

    max_connections: int | None
    max_per_ip: int | None
    rate: float | None
    burst: float


@dataclass(frozen=True)
class ServicePlan:
    """One service and everything its handler is built from: equal plans mean the handler is kept."""

    config: Service
    realm: Realm | None  # the config of the realm in front of it
    # A TLS back end's client certificate and trust belong to the service (accept-side ones to the listener).
    backend_keys: tuple[KeyMaterial | None, KeyMaterial | None] | None
    limits: LimitValues | None

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class RealmPlan:
    """A realm: its config and the content (SHA-256) of the files its login modules read."""

    config: Realm
    files: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class TlsGroup:
    """What one port's TLS context is built from: a reload keeps the socket only while this is unchanged."""

    hosts: tuple[str, ...]  # the accept hosts (sorted): they choose the default certificate
    verify_client: str  # the port's one mode: "optional" when its services ask for different ones
    ciphers: str | None
    protocols: tuple[str, ...]
    keys: KeyMaterial | None
    trust: KeyMaterial | None
    element: str = field(default="", compare=False)  # where TLS setup errors point


@dataclass(frozen=True)
class RoutePlan:
    service: str
    uri: Uri
    verify_client: str  # the service's ssl.verify-client on a secure accept, else "none"


@dataclass(frozen=True)
class ListenerPlan:
    key: BindKey
    routes: tuple[RoutePlan, ...]  # in config order
    tls: TlsGroup | None
    header_size: int
    handshake_timeout: float

    @property
    def socket(self) -> tuple[TlsGroup | None, int]:
        """What the socket, its TLS context and its parser are built from."""
        return self.tls, self.header_size

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.service for r in self.routes))


@dataclass(frozen=True)
class Plan:
    config: GatewayConfig
    base_dir: Path
    keys: KeyMaterial | None
    trust: KeyMaterial | None
    services: Mapping[str, ServicePlan]  # in config order
    realms: Mapping[str, RealmPlan]
    listeners: Mapping[BindKey, ListenerPlan]  # in order of first accept

    @property
    def limits(self) -> Limits:
        return self.config.limits

    @property
    def realms_used(self) -> frozenset[str]:
        return frozenset(s.config.realm_name for s in self.services.values() if s.config.realm_name)

    def listener_of(self, service_name: str, index: int = 0) -> BindKey:
        service = self.services[service_name].config
        return bind_key(service, service.accepts[index])


def plan(config: GatewayConfig, keys: KeyMaterial | None = None, trust: KeyMaterial | None = None) -> Plan:
    """Describe what ``config`` runs, with ``keys``/``trust`` the key material its stores hold.

    Raises ``ConfigError`` for what only the combination of services shows: realms sharing a session
    cookie, a port with and without TLS, a port whose services ask for different ciphers or protocols.
    """
    base_dir = config.source.parent if config.source else Path.cwd()
    realms = config.security.realms
    _check_cookie_names(realms)
    planned: dict[BindKey, list[tuple[Service, Uri]]] = defaultdict(list)
    for service in config.services:
        if service.accept_options.tunnel is not None:  # accepted through tunnels it dials out: no listener
            continue
        for uri in service.accepts:
            planned[bind_key(service, uri)].append((service, uri))
    return Plan(
        config=config,
        base_dir=base_dir,
        keys=keys,
        trust=trust,
        services={s.name: _service_plan(s, realms, keys, trust) for s in config.services},
        realms={name: RealmPlan(realm, module_files(realm, base_dir)) for name, realm in realms.items()},
        listeners={key: _listener_plan(key, entries, config.limits, keys, trust) for key, entries in planned.items()},
    )


def _service_plan(
    service: Service, realms: Mapping[str, Realm], keys: KeyMaterial | None, trust: KeyMaterial | None
) -> ServicePlan:
    backend_tls = any(u.secure for u in service.connects)
    return ServicePlan(
        config=service,
        realm=realms.get(service.realm_name) if service.realm_name else None,
        backend_keys=(keys, trust) if backend_tls else None,
        limits=service_limit_values(service),
    )


def service_limit_values(service: Service) -> LimitValues | None:
    options = service.accept_options
    rate, burst = options.handshake_rate or (None, 1.0)
    limits = LimitValues(options.max_connections, options.max_connections_per_ip, rate, burst)
    active = limits.max_connections is not None or limits.max_per_ip is not None or limits.rate is not None
    return limits if active else None


def _listener_plan(
    key: BindKey,
    entries: list[tuple[Service, Uri]],
    limits: Limits,
    keys: KeyMaterial | None,
    trust: KeyMaterial | None,
) -> ListenerPlan:
    tls_entries = [(s, u) for s, u in entries if u.secure and s.accept_options.tls.encryption]
    if tls_entries and len(tls_entries) != len(entries):
        plain = next(f"service[{s.name}] {u}" for s, u in entries if (s, u) not in tls_entries)
        secure = f"service[{tls_entries[0][0].name}] {tls_entries[0][1]}"
        raise ConfigError(
            f"service[{tls_entries[0][0].name}]/accept",
            f"{secure} and {plain} bind the same port {key[1]} with and without TLS; give them different ports",
        )
    routes = tuple(RoutePlan(s.name, u, s.accept_options.tls.verify_client if u.secure else "none") for s, u in entries)
    return ListenerPlan(
        key=key,
        routes=routes,
        tls=_tls_group(tls_entries, keys, trust) if tls_entries else None,
        header_size=limits.header_size,
        handshake_timeout=limits.handshake_timeout,
    )


def verify_client_mode(modes: set[str]) -> str:
    """One port, one TLS context: services that ask for different client-certificate modes get
    "optional" there, and each route enforces its own (``required`` routes refuse peers without one)."""
    return next(iter(modes)) if len(modes) == 1 else "optional"


def _tls_group(entries: list[tuple[Service, Uri]], keys: KeyMaterial | None, trust: KeyMaterial | None) -> TlsGroup:
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
    return TlsGroup(
        hosts=tuple(sorted(u.host for _, u in entries)),
        verify_client=verify_client_mode({s.accept_options.tls.verify_client for s, _ in entries}),
        ciphers=options.ciphers,
        protocols=options.protocols,
        keys=keys,
        trust=trust,
        element=f"service[{first.name}]/accept-options",
    )


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


def bind_key(service: Service, uri: Uri) -> BindKey:
    return bind_source(service, uri)[0]


def bind_source(service: Service, uri: Uri) -> tuple[BindKey, str]:
    """Where ``uri`` binds, and the config element that says so (the accept, or the ``*.bind`` used)."""
    binds = service.accept_options.binds
    for layer in BIND_LAYERS[uri.scheme]:
        if layer in binds:
            bind = binds[layer]
            # a port-only bind listens on every interface, as in Kaazing
            return (bind.host, bind.port), f"service[{service.name}]/accept-options/{layer}.bind"
    return (uri.host, uri.port), f"service[{service.name}]/accept"


# -- diff --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """What a reload from ``old`` to ``new`` does (``old`` None: a gateway starting from nothing)."""

    old: Plan | None
    new: Plan
    unchanged: frozenset[str] = frozenset()  # services whose handler (and live connections) are kept
    rules_changed: frozenset[str] = frozenset()  # unchanged but for their authorization-rule list (swapped live)
    added: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()  # a new handler; the old one's connections close with 1012
    removed: frozenset[str] = frozenset()  # their connections close with 1001
    realms_kept: frozenset[str] = frozenset()  # same config, same files: sessions and pools survive
    listeners_kept: frozenset[BindKey] = frozenset()  # same socket, new routes and limits
    listeners_rebound: frozenset[BindKey] = frozenset()  # new TLS material or header size: a new socket, same port
    listeners_added: frozenset[BindKey] = frozenset()
    listeners_retired: frozenset[BindKey] = frozenset()  # stop accepting, keep serving their connections
    gate_kept: bool = False  # the gateway-wide limits are unchanged: their count of handshakes in progress too

    @property
    def started(self) -> list[str]:
        """Services that get a new handler, in the order they start."""
        return sorted(self.added | self.changed)

    @property
    def bound(self) -> list[BindKey]:
        """Listeners that get a new socket, in plan order."""
        return [key for key in self.new.listeners if key in self.listeners_added | self.listeners_rebound]

    def __str__(self) -> str:
        touched = self.added | self.changed | self.removed
        rules = f", rules of {', '.join(sorted(self.rules_changed))} replaced" if self.rules_changed else ""
        return (
            f"{len(self.unchanged)} unchanged, {len(self.added)} added, {len(self.changed)} changed, "
            f"{len(self.removed)} removed" + (f" ({', '.join(sorted(touched))})" if touched else "") + rules
        )


def _without_rules(plan: ServicePlan) -> ServicePlan:
    return replace(plan, config=replace(plan.config, rules=()))


def diff(old: Plan | None, new: Plan) -> Changes:
    if old is None:
        return Changes(
            None, new, added=frozenset(new.services), listeners_added=frozenset(new.listeners), gate_kept=False
        )
    unchanged = frozenset(name for name, service in new.services.items() if old.services.get(name) == service)
    rules_changed = frozenset(
        name
        for name, service in new.services.items()
        if name in old.services
        and name not in unchanged
        and _without_rules(old.services[name]) == _without_rules(service)
    )
    unchanged |= rules_changed
    removed = frozenset(old.services) - frozenset(new.services)
    kept_keys = frozenset(new.listeners) & frozenset(old.listeners)
    same_socket = frozenset(k for k in kept_keys if old.listeners[k].socket == new.listeners[k].socket)
    return Changes(
        old,
        new,
        unchanged=unchanged,
        rules_changed=rules_changed,
        added=frozenset(new.services) - frozenset(old.services),
        changed=frozenset(old.services) - removed - unchanged,
        removed=removed,
        realms_kept=frozenset(name for name, realm in new.realms.items() if old.realms.get(name) == realm),
        listeners_kept=same_socket,
        listeners_rebound=kept_keys - same_socket,
        listeners_added=frozenset(new.listeners) - frozenset(old.listeners),
        listeners_retired=frozenset(old.listeners) - frozenset(new.listeners),
        gate_kept=old.limits == new.limits,
    )
