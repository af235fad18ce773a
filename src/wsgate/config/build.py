"""Node tree → typed ``GatewayConfig``, collecting every located error in one pass.

Paths in messages follow the element names: ``service[echo]/accept-options/ssl.verify-client``.
Unknown elements are errors (with a "did you mean"); elements Kaazing has but
wsgate does not implement yet give a distinct "not supported yet" error.
"""

from __future__ import annotations

import difflib
import re
import socket
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigError, ConfigErrors
from . import model as m
from .ciphers import parse_ciphers
from .loaders import LEGACY_REALM_NAMESPACES
from .patterns import parse_pattern
from .schema import Catalog, Property, RuleSchema, ServiceTypeSchema
from .tree import Node
from .values import (
    Uri,
    parse_bind,
    parse_choice,
    parse_count,
    parse_csv,
    parse_duration,
    parse_enabled,
    parse_rate,
    parse_size,
    parse_uri,
)

T = TypeVar("T")


class _Failed:
    """An option value that did not parse (its error is recorded); a parser may well return None."""


_FAILED = _Failed()

_PROPERTY_REF = re.compile(r"\$\{([^}]*)\}")
# Cardinality: "1" exactly one, "?" at most one, "*" any, "+" at least one.
Schema = Mapping[str, str]

TOP = {"properties": "?", "service": "*", "service-defaults": "?", "security": "?", "limits": "?", "state": "?"}
STATE = {
    "type": "?",
    "url": "?",
    "password-file": "?",
    "ca-file": "?",
    "key-prefix": "?",
    "node": "?",
    "heartbeat": "?",
    "timeout": "?",
    "shared-limits": "?",
}
LIMITS = {"connections": "?", "handshakes": "?", "handshake-timeout": "?", "header-size": "?"}
TOP_UNSUPPORTED = {
    "cluster": "Kaazing's Hazelcast cluster; wsgate nodes share state through Redis instead: a top-level "
    "state element with type redis (docs/operations.md, 'Scale-out')",
}
SERVICE = {
    "name": "1",
    "description": "?",
    "accept": "*",
    "connect": "*",
    "type": "1",
    "properties": "?",
    "accept-options": "?",
    "connect-options": "?",
    "realm-name": "?",
    "authorization-constraint": "*",
    "authorization-rule": "*",
    "cross-site-constraint": "*",
    "mime-mapping": "*",
}
RULE = {"allow": "*", "deny": "*", "role": "*", "then": "?"}
SERVICE_UNSUPPORTED = {"balance": "balancing", "notify": "notify (push)"}
SERVICE_DEFAULTS = {"accept-options": "?", "connect-options": "?", "mime-mapping": "*"}
SECURITY = {"keystore": "?", "truststore": "?", "realm": "*", "revocation-timeout": "?"}
STORE = {"type": "?", "file": "1", "password-file": "?"}
REALM = {"name": "1", "description": "?", "user-principal-class": "*", "authentication": "?"}
AUTHENTICATION = {
    "http-challenge-scheme": "?",
    "http-header": "*",
    "http-query-parameter": "*",
    "http-cookie": "*",
    "authorization-mode": "?",
    "session-timeout": "?",
    "authorization-timeout": "?",
    "login-modules": "?",
    "login-concurrency": "?",
    "login-queue": "?",
}
LOGIN_MODULE = {"type": "1", "success": "?", "options": "?"}
AUTHZ_CONSTRAINT = {"require-role": "*", "require-valid-user": "?"}
CROSS_SITE = {"allow-origin": "1", "allow-methods": "?", "allow-headers": "?", "maximum-age": "?"}
MIME_MAPPING = {"extension": "1", "mime-type": "1"}

ACCEPT_SCHEMES = ("ws", "wss", "http", "https")
CONNECT_SCHEMES = ("tcp", "ssl", "tls", "ws", "wss")
BIND_SCHEMES = ("ws", "wss", "http", "https", "ssl", "tls", "tcp")
# A URI's bind is looked up on its own scheme first, then on the layers beneath it.
BIND_LAYERS = {
    "ws": ("ws", "http", "tcp"),
    "http": ("http", "tcp"),
    "wss": ("wss", "https", "ssl", "tls", "tcp"),
    "https": ("https", "ssl", "tls", "tcp"),
}
# Kaazing schemes wsgate does not serve yet, with what they are (for "not supported yet").
UNSUPPORTED_ACCEPT_SCHEMES = {
    "tcp": "TCP without HTTP or WebSocket",
    "ssl": "TLS without HTTP or WebSocket",
    "tls": "TLS without HTTP or WebSocket",
    "udp": "UDP",
    "pipe": "Kaazing's in-memory pipes",
}
UNSUPPORTED_CONNECT_SCHEMES = {"udp": "UDP", "pipe": "Kaazing's in-memory pipes", "http": "HTTP", "https": "HTTPS"}
CHALLENGE_SCHEMES = ("Basic", "Application Basic", "Negotiate", "Application Negotiate", "Application Token")
SUCCESS_FLAGS = ("required", "requisite", "sufficient", "optional")
STORE_TYPES = ("JKS", "JCEKS", "PKCS12", "PEM")
VERIFY_CLIENT = ("none", "optional", "required")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
INSECURE_TLS_VERSIONS = ("SSLv2Hello", "SSLv3", "TLSv1", "TLSv1.1")
PROPERTIES_UNSUPPORTED = {
    "maximum.recovery.interval": "maximum.recovery.interval",
    "internal.maximum.transferred.bytes": "internal.maximum.transferred.bytes",
    "virtual.host": "virtual.host",
    "repeat": "echo repeat",
}


def parse_tls_protocols(text: str) -> tuple[str, ...]:
    """Keep TLS 1.2/1.3; older versions listed by a migrated config are dropped, never enabled (``Builder``
    warns about them: ``dropped_tls_protocols``)."""
    wanted = parse_csv(text)
    known = {v.lower(): v for v in TLS_VERSIONS + INSECURE_TLS_VERSIONS}
    unknown = [p for p in wanted if p.lower() not in known]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} is not a TLS protocol; valid: {', '.join(TLS_VERSIONS)}")
    kept = tuple(known[p.lower()] for p in wanted if known[p.lower()] in TLS_VERSIONS)
    if not kept:
        raise ValueError(f"{text!r} enables no secure protocol; wsgate supports {', '.join(TLS_VERSIONS)} only")
    return kept


def dropped_tls_protocols(text: str) -> list[str]:
    """The entries of a valid ``ssl.protocols`` list that ``parse_tls_protocols`` drops, as written."""
    insecure = {v.lower() for v in INSECURE_TLS_VERSIONS}
    return [p for p in parse_csv(text) if p.lower() in insecure]


# Kaazing's built-in properties (ConfigParameter.resolveAndReplace in kaazing/gateway's util module): used
# only when neither <properties> nor a -D/--property defines the name. ${cloud.host} and ${cloud.instanceId}
# asked AWS's instance metadata (169.254.169.254) over HTTP at load time; wsgate does not, and says so.
CLOUD_PROPERTIES = ("cloud.host", "cloud.instanceId")


def builtin_property(name: str) -> str | None:
    """``${hostname}``: this machine's host name, as Java's ``InetAddress.getLocalHost().getHostName()`` gives it
    (the name the system is configured with, not resolved to a fully qualified one); None for other names."""
    if name == "hostname":
        return socket.gethostname() or None
    return None


def parse_duration_or_off(text: str) -> float | None:
    """A duration where 0 means "never" (None)."""
    return parse_duration(text) or None


def parse_window_bits(text: str) -> int:
    """``ws.compression.window.bits``: 9 to 15 (a 512-byte to 32 KiB window; zlib cannot deflate raw with 8)."""
    value = text.strip()
    if not value.isdigit() or not 9 <= int(value) <= 15:
        raise ValueError(f"{text!r}: write a whole number from 9 (512-byte window) to 15 (32 KiB, the default)")
    return int(value)


@dataclass(frozen=True)
class Option:
    """One accept- or connect-option: the model field it fills (None: checked only), its parser and default."""

    field: str | None
    parse: Callable[..., Any]
    default: Any = None
    args: tuple[Any, ...] = ()


# The one list of option names: the parser reads exactly these tables, and "did you mean" hints list them.
# Order is the order values are read (and so the order of their errors).
BIND_OPTIONS = tuple(f"{s}.bind" for s in BIND_SCHEMES)
ACCEPT_TLS_OPTIONS: Mapping[str, Option] = {
    "ssl.ciphers": Option("ciphers", parse_ciphers),
    "ssl.protocols": Option("protocols", parse_tls_protocols, ()),
    "ssl.encryption": Option("encryption", parse_enabled, True),
    "ssl.verify-client": Option("verify_client", parse_choice, "none", (VERIFY_CLIENT,)),
}
ACCEPT_OPTIONS: Mapping[str, Option] = {
    "ws.maximum.message.size": Option("max_message_size", parse_size, m.DEFAULT_MAX_MESSAGE_SIZE),
    "ws.inactivity.timeout": Option("inactivity_timeout", parse_duration),
    "http.server.header": Option("server_header", parse_enabled, True),
    "connection.limit": Option("max_connections", parse_count),
    "connection.limit.per.ip": Option("max_connections_per_ip", parse_count),
    "handshake.rate.per.ip": Option("handshake_rate", parse_rate),
    "http.keepalive.timeout": Option("keepalive_timeout", parse_duration, m.DEFAULT_KEEPALIVE_TIMEOUT),
    "ws.write.timeout": Option("write_timeout", parse_duration_or_off, m.DEFAULT_WRITE_TIMEOUT),
    "ws.emulation": Option("emulation", parse_enabled, True),  # wsgate's: WSE (<path>/;e/…) on or off
}
# wsgate's permessage-deflate (RFC 7692; Kaazing had none): read together by ``Builder.deflate``.
COMPRESSION_CHOICES = ("permessage-deflate", "disabled")
DEFLATE_OPTIONS: Mapping[str, Option] = {
    "ws.compression.window.bits": Option("window_bits", parse_window_bits, 15),
    "ws.compression.context.takeover": Option("context_takeover", parse_enabled, False),
}
CONNECT_TLS_OPTIONS: Mapping[str, Option] = {
    "ssl.ciphers": Option("ciphers", parse_ciphers),
    "ssl.protocols": Option("protocols", parse_tls_protocols, ()),
    "ssl.client-certificate": Option("client_certificate", str),
}
CONNECT_OPTIONS: Mapping[str, Option] = {
    "ws.inactivity.timeout": Option("inactivity_timeout", parse_duration),
    "ws.version": Option(None, parse_choice, None, (("rfc6455",),)),
}


def parse_tunnel_wait(text: str) -> float:
    """``socks.timeout``, ``socks.retry.maximum.interval``: a duration above 0 (0 would answer every client 503
    without waiting, or re-dial a DMZ that is down in a busy loop)."""
    seconds = parse_duration(text)
    if not seconds > 0:
        raise ValueError(f"{text!r}: must be more than 0, e.g. 500ms or 2 seconds")
    return seconds


# Reverse connectivity (docs/dmz.md): Kaazing's socks options where they map, and wsgate's tunnel.* beside them.
TUNNEL_SETTINGS: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    "socks.retry.maximum.interval": ("retry_max", parse_tunnel_wait),
    "socks.timeout": ("timeout", parse_tunnel_wait),
    "tunnel.audience": ("audience", str.strip),
    "tunnel.issuer": ("issuer", str.strip),
    "tunnel.client-certificate": ("client_certificate", str.strip),
    "tunnel.peer": ("peers", parse_csv),
}
TUNNEL_OPTIONS = frozenset(
    {
        "http.transport",
        "ws.transport",
        "socks.mode",
        "socks.transport",
        "tunnel.assertion.key",
        "tunnel.assertion.public-key",
        *TUNNEL_SETTINGS,
    }
)
TUNNEL_PREFIXES = ("socks.", "tunnel.")
ACCEPT_OPTION_NAMES = (*BIND_OPTIONS, *ACCEPT_TLS_OPTIONS, *ACCEPT_OPTIONS, "ws.compression", *DEFLATE_OPTIONS)
CONNECT_OPTION_NAMES = (*CONNECT_TLS_OPTIONS, *CONNECT_OPTIONS)
# Kaazing options wsgate does not implement: "not supported yet" rather than "unknown".
OPTIONS_UNSUPPORTED = (
    "tcp.maximum.outbound.rate",
    "http.maximum.redirects",
    "http.keepalive",
    "http.keepalive.timeout",  # connect side only: accept-options reads it
    "http.keepalive.connections",
    "http.max.authentication.attempts",
)


class Builder:
    """Walks the tree once; every problem becomes a located ``ConfigError``."""

    def __init__(
        self, properties: Mapping[str, str], base_dir: Path, catalog: Catalog, legacy_realms: bool = False
    ) -> None:
        self.properties = dict(properties)
        self.catalog = catalog
        self.base_dir = base_dir
        self.legacy_realms = legacy_realms  # a 2014/09 or 2015/11 XML config: see ``unconstrained_realm``
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []

    # -- helpers -----------------------------------------------------------------------------

    def fail(self, path: str, message: str) -> None:
        self.errors.append(ConfigError(path, message))

    def warn(self, path: str, message: str) -> None:
        """Something the config asks for that wsgate deliberately does differently: loads, and is said."""
        self.warnings.append(f"{path}: {message}")

    def text(self, node: Node, path: str) -> str:
        """The element's text with ``${name}`` substituted from the properties."""
        if node.children:
            self.fail(path, "expected a value, found nested elements")
        return self.substitute(node.text, path)

    def substitute(self, value: str, path: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in self.properties:
                return self.properties[name]
            builtin = builtin_property(name)
            if builtin:
                return builtin
            if name in CLOUD_PROPERTIES:
                self.fail(
                    path,
                    f"property ${{{name}}} is Kaazing's AWS instance-metadata look-up, which wsgate does not do; "
                    f"pass --property {name}=VALUE (or -D{name}=VALUE in WSGATE_OPTS) or add it to <properties>",
                )
            else:
                self.fail(
                    path,
                    f"property ${{{name}}} is not defined; add it to <properties> or pass --property {name}=VALUE",
                )
            return match.group(0)

        return _PROPERTY_REF.sub(replace, value)

    def parse(self, node: Node, path: str, parser: Callable[..., T], *args: Any) -> T | None:
        try:
            return parser(self.text(node, path), *args)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None

    def group(
        self, node: Node, path: str, schema: Schema, unsupported: Mapping[str, str] | None = None
    ) -> dict[str, list[Node]]:
        """Children by name, checked against ``schema``'s names and cardinalities."""
        groups: dict[str, list[Node]] = defaultdict(list)
        for child in node.children:
            if child.name in schema:
                groups[child.name].append(child)
            elif unsupported and child.name in unsupported:
                self.fail(_join(path, child.name), f"not supported yet: {unsupported[child.name]}")
            else:
                self.unknown(_join(path, child.name), child.name, schema)
        for name, cardinality in schema.items():
            count = len(groups.get(name, ()))
            if cardinality == "1" and count != 1 or cardinality == "+" and count == 0:
                self.fail(_join(path, name), "is required" if count == 0 else f"must appear once, found {count}")
            elif cardinality == "?" and count > 1:
                self.fail(_join(path, name), f"may appear at most once, found {count}")
        return groups

    def unknown(self, path: str, name: str, valid: Mapping[str, Any] | tuple[str, ...]) -> None:
        names = list(valid)
        hint = difflib.get_close_matches(name, names, n=1)
        suggestion = f"did you mean '{hint[0]}'? " if hint else ""
        self.fail(path, f"unknown element; {suggestion}valid here: {', '.join(names) or '(none)'}")

    def one(
        self, groups: Mapping[str, list[Node]], name: str, path: str, parser: Callable[..., T], *args: Any
    ) -> T | None:
        nodes = groups.get(name)
        return self.parse(nodes[-1], f"{path}/{name}", parser, *args) if nodes else None

    def many(self, groups: Mapping[str, list[Node]], name: str, path: str) -> tuple[str, ...]:
        return tuple(self.text(node, f"{path}/{name}") for node in groups.get(name, ()))

    def file_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    # -- top level ---------------------------------------------------------------------------

    def gateway(self, root: Node) -> tuple[m.Service, ...] | None:
        groups = self.group(root, "", TOP, TOP_UNSUPPORTED)
        defaults = groups.get("service-defaults", [Node("service-defaults")])[0]
        default_groups = self.group(defaults, "service-defaults", SERVICE_DEFAULTS)
        services = [self.service(node, default_groups) for node in groups.get("service", ())]
        return tuple(s for s in services if s is not None)

    def top_properties(self, root: Node, overrides: Mapping[str, str]) -> None:
        """Fill ``self.properties`` first: later text may reference them."""
        for node in root.children:
            if node.name != "properties":
                continue
            for child in node.children:
                if child.name == "property":
                    groups = self.group(child, "properties/property", {"name": "1", "value": "1"})
                    if groups.get("name") and groups.get("value"):
                        self.properties.setdefault(groups["name"][0].text, groups["value"][0].text)
                else:  # YAML shorthand: properties: {name: value}
                    self.properties.setdefault(child.name, child.text)
        self.properties.update(overrides)
        for name, value in list(self.properties.items()):  # values may use other (possibly overridden) ones
            if name not in overrides:
                self.properties[name] = self.substitute(value, f"properties/{name}")

    # -- services ----------------------------------------------------------------------------

    def service(self, node: Node, defaults: Mapping[str, list[Node]]) -> m.Service | None:
        name_node = node.first("name")
        name = name_node.text if name_node is not None and name_node.text else None
        index = f"service[{name}]" if name else "service[?]"
        errors_before = len(self.errors)
        groups = self.group(node, index, SERVICE, SERVICE_UNSUPPORTED)
        type_ = self.one(groups, "type", index, str) or ""
        spec = self.service_type(type_, f"{index}/type") if groups.get("type") else None  # else: "is required"
        accept_schemes = spec.accept if spec else ACCEPT_SCHEMES
        accepts = self.uris(groups, "accept", index, accept_schemes, f"type {type_}" if spec else "wsgate")
        # Connect URIs and properties mean what the type says: a type that is unknown (or not supported) cannot
        # judge them, so only its own error is reported.
        property_nodes, legacy_connects = self.connect_properties(groups.get("properties", []))
        connect_schemes = (spec.connect_schemes or CONNECT_SCHEMES) if spec else ()
        connects = (
            self.uris(groups, "connect", index, connect_schemes, f"type {type_}")
            + self.uris(
                {"properties/connect": legacy_connects},
                "properties/connect",
                index,
                connect_schemes,
                f"type {type_}",
            )
            if spec
            else ()
        )
        if not groups.get("accept"):
            self.fail(f"{index}/accept", "a service needs at least one accept URI")
        if spec:
            low, high = spec.connect
            given = len(groups.get("connect", ())) + len(legacy_connects)  # a bad one has its own error
            if not low <= given <= high:
                want = (
                    "no connect URI"
                    if high == 0
                    else f"{low}..{high} connect URI(s)"
                    if low != high
                    else "exactly one connect URI"
                )
                self.fail(f"{index}/connect", f"a {type_} service takes {want}, found {given}")
        properties, settings = (
            self.service_properties(property_nodes, index, spec.properties) if spec else (m.EMPTY, m.EMPTY)
        )
        accept_options = self.accept_options(
            defaults.get("accept-options", []) + groups.get("accept-options", []), index
        )
        connect_options = self.connect_options(
            defaults.get("connect-options", []) + groups.get("connect-options", []), index
        )
        mime = self.mime_mappings(defaults.get("mime-mapping", []) + groups.get("mime-mapping", []), index)
        constraints = tuple(
            self.authz_constraint(n, f"{index}/authorization-constraint")
            for n in groups.get("authorization-constraint", ())
        )
        cross_site = tuple(
            c
            for n in groups.get("cross-site-constraint", ())
            if (c := self.cross_site(n, f"{index}/cross-site-constraint"))
        )
        rules = self.rules(groups.get("authorization-rule", []), index, spec) if spec else ()
        realm_name = self.one(groups, "realm-name", index, str)
        if len(self.errors) > errors_before:
            return None
        service = m.Service(
            name=name or "",
            type=type_,
            accepts=accepts,
            connects=connects,
            description=self.one(groups, "description", index, str) or "",
            properties=properties,
            accept_options=accept_options,
            connect_options=connect_options,
            realm_name=realm_name or None,
            authorization_constraints=constraints,
            cross_site_constraints=cross_site,
            mime_mappings=mime,
            settings=settings,
            rules=rules,
        )
        assert spec is not None  # an unknown type is an error above
        if spec.finish is not None:
            return spec.finish(service, index, self.fail)
        return self.unconstrained_realm(service)

    def unconstrained_realm(self, service: m.Service) -> m.Service:
        """A ``realm-name`` without ``authorization-constraint`` never means "no authentication" silently.

        Kaazing 2016/06 (and wsgate's YAML) requires an authenticated user there (role ``*``); Kaazing's
        translators of 2014/09 and 2015/11 configs drop such a realm, so those services stay open, as they
        were, and ``check-config`` warns about them.
        """
        if not service.realm_name or service.authorization_constraints:
            return service
        if self.legacy_realms:
            return replace(service, realm_name=None, dropped_realm=service.realm_name)
        return replace(service, authorization_constraints=(m.AuthorizationConstraint(("*",)),))

    def service_type(self, type_: str, path: str) -> ServiceTypeSchema | None:
        types = self.catalog.services
        if type_ in types:
            return types[type_]
        if type_ in self.catalog.unsupported_services:
            instead = self.catalog.unsupported_services[type_]
            if instead:
                self.fail(path, f"service type '{type_}' is not supported: {instead}")
            else:
                self.fail(path, f"service type '{type_}' is not supported yet; supported: {', '.join(types)}")
        else:
            self.fail(path, f"'{type_}' is not a service type; valid: {', '.join(types)}")
        return None

    @staticmethod
    def connect_properties(nodes: list[Node]) -> tuple[list[Node], list[Node]]:
        """Kaazing's older form of a connect URI, ``<properties><connect>URI</connect></properties>``: Kaazing's
        GatewayContextResolver moves it to the service's connect URIs, whatever the type. → (the properties
        without it, the ``connect`` property elements)."""
        kept, connects = [], []
        for node in nodes:
            connects += [c for c in node.children if c.name == "connect"]
            kept.append(replace(node, children=[c for c in node.children if c.name != "connect"]))
        return kept, connects

    def uris(
        self, groups: Mapping[str, list[Node]], name: str, path: str, schemes: tuple[str, ...], who: str
    ) -> tuple[Uri, ...]:
        """The ``name`` URIs; a scheme Kaazing has but ``who`` does not take (yet) is "not supported yet"."""
        found = []
        unsupported = UNSUPPORTED_ACCEPT_SCHEMES if name == "accept" else UNSUPPORTED_CONNECT_SCHEMES
        for node in groups.get(name, ()):
            text = self.text(node, f"{path}/{name}")
            scheme = text.strip().partition("://")[0].lower()
            if scheme not in schemes and scheme in unsupported:
                verb = "accepting" if name == "accept" else "connecting to"
                self.fail(
                    f"{path}/{name}",
                    f"{text.strip()!r}: {verb} {scheme}:// ({unsupported[scheme]}) is not supported yet; {who} takes "
                    f"{', '.join(s + '://' for s in schemes)}",
                )
                continue
            try:
                found.append(parse_uri(text, schemes))
            except ValueError as exc:
                self.fail(f"{path}/{name}", str(exc))
        return tuple(found)

    def service_properties(
        self, nodes: list[Node], path: str, schema: Mapping[str, Property]
    ) -> tuple[Mapping[str, tuple[str, ...]], Mapping[str, Any]]:
        """The properties as text (name → values) and, for those the schema parses, parsed (name → last value)."""
        values: dict[str, list[str]] = defaultdict(list)
        for node in nodes:
            for child in node.children:
                child_path = f"{path}/properties/{child.name}"
                spec = schema.get(child.name)
                if spec is not None and spec.fields:
                    values[child.name].append(self.nested_property(child, child_path, spec.fields))
                elif spec is not None:
                    text = self.text(child, child_path)
                    values[child.name].append(str(self.file_path(text.strip())) if spec.file else text)
                    if spec.warning:
                        self.warn(child_path, spec.warning)
                elif child.name in PROPERTIES_UNSUPPORTED:
                    self.fail(child_path, f"not supported yet: {PROPERTIES_UNSUPPORTED[child.name]}")
                else:
                    self.unknown(child_path, child.name, tuple(n for n, p in schema.items() if p.listed))
        settings: dict[str, Any] = {}
        for name, spec in schema.items():
            if spec.cardinality == "1" and not values.get(name):
                self.fail(f"{path}/properties/{name}", "is required for this service type")
            if spec.parse is None:
                continue
            for value in values.get(name, ()):
                try:
                    settings[name] = spec.parse(value)  # a file property's value is already resolved
                except ValueError as exc:
                    self.fail(f"{path}/properties/{name}", str(exc))
        return MappingProxyType({name: tuple(v) for name, v in values.items()}), MappingProxyType(settings)

    def nested_property(self, node: Node, path: str, fields: tuple[str, ...]) -> str:
        """A property made of elements (a directory ``location``), kept as their texts joined by newlines."""
        groups = self.group(node, path, dict.fromkeys(fields, "1"))
        return "\n".join(self.one(groups, name, path, str) or "" for name in fields)

    # -- options -----------------------------------------------------------------------------

    def option_values(self, nodes: list[Node], path: str) -> dict[str, tuple[str, str]]:
        """Merge option elements (defaults first, service last) → name → (text, path).

        ``tls.*`` is accepted as an alias of ``ssl.*``, as in Kaazing 5.
        """
        merged: dict[str, tuple[str, str]] = {}
        for node in nodes:
            for child in node.children:
                name = "ssl." + child.name[4:] if child.name.startswith("tls.") else child.name
                child_path = f"{path}/{child.name}"
                merged[name] = (self.text(child, child_path), child_path)
        return merged

    def accept_options(self, nodes: list[Node], service_path: str) -> m.AcceptOptions:
        path = f"{service_path}/accept-options"
        values = self.option_values(nodes, path)
        binds: dict[str, m.Bind] = {}
        for scheme in BIND_SCHEMES:
            if (item := values.pop(f"{scheme}.bind", None)) is not None:
                bind = self.value(item, parse_bind)
                if not isinstance(bind, _Failed):
                    binds[scheme] = m.Bind(*bind)
        self.warn_dropped_protocols(values)
        tunnel = self.tunnel(values, path, "accept")
        tls = m.TlsOptions(**self.read_options(values, ACCEPT_TLS_OPTIONS))
        if tunnel is not None and (item := values.get("ssl.verify-client")) is not None:
            self.warn(
                item[1],
                "no effect on a tunnelled service: the internal gateway accepts no connection; it presents its "
                "certificate to the DMZ gateway, which requires it",
            )
        deflate = self.deflate(values, path)
        options = m.AcceptOptions(
            binds=MappingProxyType(binds),
            tls=tls,
            tunnel=tunnel,
            deflate=deflate,
            **self.read_options(values, ACCEPT_OPTIONS),
        )
        self.leftover_options(values, "accept-options", ACCEPT_OPTION_NAMES)
        return options

    def deflate(self, values: dict[str, tuple[str, str]], path: str) -> m.Deflate | None:
        """``ws.compression`` and its ``ws.compression.*`` settings → a ``Deflate``, or None (the default: off).
        Takes its options out of ``values``; a setting without ``ws.compression permessage-deflate`` is an error
        (it would silently do nothing)."""
        item = values.pop("ws.compression", None)
        choice = "disabled" if item is None else self.value(item, parse_choice, COMPRESSION_CHOICES)
        settings = {name: values[name] for name in DEFLATE_OPTIONS if name in values}
        fields = self.read_options(values, DEFLATE_OPTIONS)
        if choice == "permessage-deflate":
            return m.Deflate(**fields)
        if choice == "disabled":
            for _, item_path in settings.values():
                self.fail(item_path, "has no effect without ws.compression permessage-deflate beside it")
        return None

    def connect_options(self, nodes: list[Node], service_path: str) -> m.ConnectOptions:
        values = self.option_values(nodes, f"{service_path}/connect-options")
        tunnel = self.tunnel(values, f"{service_path}/connect-options", "connect")
        item = values.pop("ssl.verify-client", None) if tunnel is not None else None
        if item is not None and self.value(item, parse_choice, VERIFY_CLIENT) not in ("required", _FAILED):
            self.fail(item[1], "the tunnel listener always requires the internal gateway's certificate: required")
        if (item := values.pop("ssl.verify-client", None)) is not None:
            self.fail(
                item[1], "verify-client belongs in accept-options; back ends are always verified against the truststore"
            )
        if (item := values.pop("ssl.encryption", None)) is not None and self.value(item, parse_enabled) is False:
            self.fail(
                item[1],
                "'disabled' is not supported yet in connect-options (Kaazing's plain text on a TLS connect, for "
                "Enterprise Shield); for a plain-text back end connect with tcp:// or ws://",
            )
        self.warn_dropped_protocols(values)
        if tunnel is not None and (item := values.get("ws.inactivity.timeout")) is not None:
            self.warn(
                item[1],
                "no effect on the DMZ end: the internal gateway's accept-options ws.inactivity.timeout pings the "
                "tunnels",
            )
        tls = m.TlsOptions(**self.read_options(values, CONNECT_TLS_OPTIONS))
        options = m.ConnectOptions(tls=tls, tunnel=tunnel, **self.read_options(values, CONNECT_OPTIONS))
        self.leftover_options(values, "connect-options", CONNECT_OPTION_NAMES)
        return options

    def tunnel(self, values: dict[str, tuple[str, str]], path: str, side: str) -> m.Tunnel | None:
        """Kaazing's reverse connectivity options (and wsgate's ``tunnel.*``) → a ``Tunnel``, or None when
        the side is not tunnelled. Takes its options out of ``values``; what does not map is a located error
        saying why (docs/dmz.md)."""
        items = {
            name: values.pop(name)
            for name in list(values)
            if name in TUNNEL_OPTIONS or name.startswith(TUNNEL_PREFIXES)
        }
        transport = [items.pop(name) for name in ("http.transport", "ws.transport") if name in items]
        if not transport:
            for _, item_path in items.values():
                self.fail(item_path, "needs http.transport socks://dmz-host:port and socks.mode reverse beside it")
            return None
        address: Uri | None = None
        for text, item_path in transport:
            scheme = text.strip().partition("://")[0].lower()
            if scheme != "socks":
                self.fail(item_path, f"{text.strip()!r}: only socks:// (reverse connectivity to a DMZ gateway) maps")
                continue
            try:
                address = parse_uri(text.strip().replace("socks://", "tcp://", 1), ("tcp",))
            except ValueError as exc:
                self.fail(item_path, str(exc).replace("tcp", "socks"))
        mode = items.pop("socks.mode", None)
        if mode is None or mode[0].strip().lower() != "reverse":
            self.fail(
                mode[1] if mode else f"{path}/socks.mode",
                "wsgate's tunnels are reverse only (socks.mode reverse): the internal gateway dials out, so the "
                "firewall into the trusted network opens no inbound port",
            )
        rendezvous = self.tunnel_transport(items.pop("socks.transport", None), address)
        key_name = "tunnel.assertion.key" if side == "connect" else "tunnel.assertion.public-key"
        other_key = "tunnel.assertion.public-key" if side == "connect" else "tunnel.assertion.key"
        if (item := items.pop(other_key, None)) is not None:
            where = "accept-options (internal gateway)" if side == "connect" else "connect-options (DMZ gateway)"
            self.fail(item[1], f"belongs in {where}; this side takes {key_name}")
        key_item = items.pop(key_name, None)
        key_files: tuple[Path, ...] = ()
        if key_item is None:
            what = "Ed25519 private key (PEM) signing" if side == "connect" else "pinned Ed25519 public key (PEM) of"
            self.fail(f"{path}/{key_name}", f"required: the {what} the identity assertions (wsgate dmz-keys)")
        else:
            key_files = tuple(self.file_path(name) for name in parse_csv(key_item[0]))
            if side == "connect" and len(key_files) != 1:
                self.fail(
                    key_item[1], "one private key signs; during a rotation the internal end pins both public keys"
                )
            for key_file in key_files:
                if not key_file.is_file():
                    self.fail(key_item[1], f"{key_file}: no such file (wsgate dmz-keys writes a key pair)")
        if side == "accept" and (item := items.pop("tunnel.peer", None)) is not None:
            self.fail(
                item[1],
                "belongs in the DMZ end's connect-options; this end checks the DMZ gateway's certificate against "
                "the truststore and the host name of socks.transport",
            )
        elsewhere = {
            "connect": ("socks.retry.maximum.interval", "the internal gateway dials the tunnels"),
            "accept": ("socks.timeout", "the DMZ gateway waits for the tunnels' answers"),
        }[side]
        if (item := items.get(elsewhere[0])) is not None:
            self.warn(item[1], f"no effect on this end: {elsewhere[1]}; set it there")
        fields: dict[str, Any] = {}
        for name, (field_name, parser) in TUNNEL_SETTINGS.items():
            if (item := items.pop(name, None)) is not None:
                parsed = self.value(item, parser)
                if not isinstance(parsed, _Failed):
                    fields[field_name] = parsed
        for _, item_path in items.values():
            self.fail(
                item_path,
                "not supported in wsgate's tunnels: their TLS is the gateway's keystore and truststore, and "
                "docs/dmz.md lists the options that map",
            )
        if rendezvous is None or not key_files:
            return None
        return m.Tunnel(rendezvous=rendezvous, key_files=key_files, **fields)

    def tunnel_transport(self, item: tuple[str, str] | None, address: Uri | None) -> Uri | None:
        """``socks.transport`` → the tunnel's wss:// URI (always TLS; default: the socks address, path /)."""
        if item is None:
            return None if address is None else parse_uri(f"wss://{address.host}:{address.port}/", ("wss",))
        text, item_path = item[0].strip(), item[1]
        scheme, _, rest = text.partition("://")
        if scheme.lower() not in ("wsn+ssl", "wss", "ssl", "tls", "wsn+tls"):
            self.fail(
                item_path,
                f"{text!r}: a tunnel is always TLS with client certificates; write wsn+ssl://host:port/path "
                "(or wss://, ssl://)",
            )
            return None
        try:
            return parse_uri(f"wss://{rest}", ("wss",))
        except ValueError as exc:
            self.fail(item_path, str(exc))
            return None

    def warn_dropped_protocols(self, values: Mapping[str, tuple[str, str]]) -> None:
        """``ssl.protocols`` entries older than TLS 1.2 load (a migrated config keeps working) but are never enabled:
        say which, at the element (an invalid list is ``parse_tls_protocols``'s error instead)."""
        item = values.get("ssl.protocols")
        if item is None:
            return
        try:
            kept = parse_tls_protocols(item[0])
        except ValueError:
            return
        dropped = dropped_tls_protocols(item[0])
        if dropped:
            self.warn(
                item[1],
                f"{', '.join(dropped)} dropped: wsgate never enables TLS older than 1.2; this side speaks "
                f"{', '.join(kept)} only",
            )

    def read_options(self, values: dict[str, tuple[str, str]], table: Mapping[str, Option]) -> dict[str, Any]:
        """Take the options ``table`` names out of ``values``: model field → parsed value (or the default)."""
        fields: dict[str, Any] = {}
        for name, option in table.items():
            item = values.pop(name, None)
            parsed = option.default if item is None else self.value(item, option.parse, *option.args)
            if option.field is not None:
                fields[option.field] = option.default if parsed is _FAILED else parsed
        return fields

    def value(self, item: tuple[str, str], parser: Callable[..., T], *args: Any) -> T | _Failed:
        try:
            return parser(item[0], *args)
        except ValueError as exc:
            self.fail(item[1], str(exc))
            return _FAILED

    def leftover_options(self, values: dict[str, tuple[str, str]], kind: str, valid: tuple[str, ...]) -> None:
        for name, (_, path) in values.items():
            unsupported = name.endswith((".transport", ".realm")) or name.split(".")[0] in ("socks", "udp", "pipe")
            if unsupported or name in OPTIONS_UNSUPPORTED:
                self.fail(path, f"not supported yet in {kind}")
            else:
                self.unknown(path, name, valid)

    # -- constraints and mappings ------------------------------------------------------------

    def authz_constraint(self, node: Node, path: str) -> m.AuthorizationConstraint:
        groups = self.group(node, path, AUTHZ_CONSTRAINT)
        roles = self.many(groups, "require-role", path)
        valid_user = "require-valid-user" in groups
        if not roles and not valid_user:
            self.fail(path, "needs require-role or require-valid-user")
        return m.AuthorizationConstraint(roles, valid_user)

    def rules(self, nodes: list[Node], service_path: str, spec: ServiceTypeSchema) -> tuple[m.Rule, ...]:
        """``authorization-rule`` elements, checked against what the type lets rules govern."""
        if nodes and spec.rules is None:
            self.fail(
                f"{service_path}/authorization-rule",
                f"a {spec.name} service takes no authorization-rule (authorization inside the connection is "
                "for WebSocket services; use authorization-constraint for who may connect)",
            )
            return ()
        assert spec.rules is not None or not nodes
        rules = []
        for number, node in enumerate(nodes, 1):
            rule = self.rule(node, f"{service_path}/authorization-rule[{number}]", spec.rules)  # type: ignore[arg-type]
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def rule(self, node: Node, path: str, schema: RuleSchema) -> m.Rule | None:
        """One rule: ``allow`` or ``deny`` (operations, comma-separated or repeated; ``*``: all), ``role``
        (repeated), the type's fields (patterns) and ``then``."""
        declared = {f: "?" for op in schema.operations.values() for f in op if f not in schema.field_prefixes}
        prefixed = {c.name: "?" for c in node.children if c.name.startswith(schema.field_prefixes or ("\0",))}
        groups = self.group(node, path, {**RULE, **declared, **prefixed}, None)
        fields = [name for name in groups if name not in RULE]
        allows = [op for n in groups.get("allow", ()) for op in parse_csv(self.text(n, f"{path}/allow"))]
        denies = [op for n in groups.get("deny", ()) for op in parse_csv(self.text(n, f"{path}/deny"))]
        if bool(allows) == bool(denies):
            self.fail(path, "needs exactly one of allow or deny, naming the operations it decides")
            return None
        key = "allow" if allows else "deny"
        valid = tuple(schema.operations)
        operations = valid if "*" in (allows or denies) else tuple(dict.fromkeys(allows or denies))
        unknown = [op for op in operations if op not in schema.operations]
        for op in unknown:
            self.fail(f"{path}/{key}", f"unknown operation {op!r}; valid here: {', '.join(valid)}, or * for all")
        if unknown:
            return None
        patterns: dict[str, str] = {}
        for name in fields:
            text = self.text(groups[name][0], f"{path}/{name}")
            misfits = [op for op in operations if not schema.takes(op, name)]
            if misfits:
                self.fail(
                    f"{path}/{name}",
                    f"does not apply to {', '.join(misfits)}: a rule on several operations may only match the "
                    "fields they all have; write one rule per operation",
                )
                continue
            if schema.check_field is not None:
                try:
                    schema.check_field(name, text)
                except ValueError as exc:
                    self.fail(f"{path}/{name}", str(exc))
                    continue
            if self.parse(groups[name][0], f"{path}/{name}", parse_pattern, schema.separator(name)) is not None:
                patterns[name] = text
        then = self.one(groups, "then", path, str)
        if then is not None:
            if not schema.outcomes:
                self.fail(f"{path}/then", "this service type refuses in one way only: remove then")
            elif then not in schema.outcomes:
                self.fail(f"{path}/then", f"{then!r} is not a refusal; valid here: {', '.join(schema.outcomes)}")
        roles = self.many(groups, "role", path)
        return m.Rule(
            allow=bool(allows),
            operations=operations,
            roles=tuple(r for n in roles for r in parse_csv(n)),
            fields=MappingProxyType(patterns),
            then=then,
            path=path,
        )

    def cross_site(self, node: Node, path: str) -> m.CrossSiteConstraint | None:
        groups = self.group(node, path, CROSS_SITE)
        origin = self.one(groups, "allow-origin", path, parse_origin)
        if origin is None:
            return None
        return m.CrossSiteConstraint(
            allow_origin=origin,
            allow_methods=self.one(groups, "allow-methods", path, parse_csv) or (),
            allow_headers=self.one(groups, "allow-headers", path, parse_csv) or (),
            maximum_age=self.one(groups, "maximum-age", path, parse_duration),
        )

    def mime_mappings(self, nodes: list[Node], path: str) -> Mapping[str, str]:
        mapping: dict[str, str] = {}
        for node in nodes:
            groups = self.group(node, f"{path}/mime-mapping", MIME_MAPPING)
            ext = self.one(groups, "extension", f"{path}/mime-mapping", str)
            mime = self.one(groups, "mime-type", f"{path}/mime-mapping", str)
            if ext and mime:
                mapping[ext.lstrip(".").lower()] = mime
        return MappingProxyType(mapping)

    # -- security ----------------------------------------------------------------------------

    def limits(self, root: Node) -> m.Limits:
        node = root.first("limits")
        if node is None:
            return m.Limits()
        groups = self.group(node, "limits", LIMITS)
        default = m.Limits()
        handshakes = self.one(groups, "handshakes", "limits", parse_count)
        timeout = self.one(groups, "handshake-timeout", "limits", parse_duration)
        size = self.one(groups, "header-size", "limits", parse_size)
        return m.Limits(
            connections=self.one(groups, "connections", "limits", parse_count),
            handshakes=handshakes if handshakes is not None else default.handshakes,
            handshake_timeout=timeout if timeout is not None else default.handshake_timeout,
            header_size=size if size is not None else default.header_size,
        )

    def state(self, root: Node) -> m.State:
        """Where sessions, revocations and the connection registry live: this process, or Redis."""
        node = root.first("state")
        if node is None:
            return m.State()
        path = "state"
        groups = self.group(node, path, STATE)
        kind = self.one(groups, "type", path, parse_choice, ("memory", "redis")) or "redis"
        url = self.one(groups, "url", path, str)
        if kind == "redis" and not url:
            self.fail(f"{path}/url", "is required for type redis, e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS)")
        elif url and not url.startswith(("redis://", "rediss://", "unix://")):
            self.fail(f"{path}/url", f"{url!r} is not a redis://, rediss:// or unix:// URL")
        elif url and urlsplit(url).password is not None:
            self.fail(f"{path}/url", "holds a password: put it in password-file instead (URLs end up in logs)")
        password = self.password(groups, path, None)
        ca_file = self.one(groups, "ca-file", path, str)
        if ca_file and not self.file_path(ca_file).is_file():
            self.fail(f"{path}/ca-file", f"cannot read {str(self.file_path(ca_file))!r}")
        default = m.State()
        heartbeat = self.one(groups, "heartbeat", path, parse_duration)
        timeout = self.one(groups, "timeout", path, parse_duration)
        prefix = self.one(groups, "key-prefix", path, str)
        return m.State(
            type=kind,
            url=url,
            password=password,
            ca_file=self.file_path(ca_file) if ca_file else None,
            key_prefix=prefix if prefix else default.key_prefix,
            node=self.one(groups, "node", path, str),
            heartbeat=heartbeat if heartbeat else default.heartbeat,
            timeout=timeout if timeout else default.timeout,
            shared_limits=self._shared_limits(groups, path),
        )

    def _shared_limits(self, groups: dict[str, list[Node]], path: str) -> tuple[str, ...]:
        text = self.one(groups, "shared-limits", path, str)
        names = parse_csv(text or "")
        unknown = [n for n in names if n not in ("handshake-rate", "none")]
        if unknown:
            self.fail(f"{path}/shared-limits", f"{', '.join(unknown)}: valid are handshake-rate, none")
        return tuple(n for n in names if n == "handshake-rate")

    def security(self, root: Node) -> m.Security:
        node = root.first("security")
        if node is None:
            return m.Security()
        groups = self.group(node, "security", SECURITY)
        realms: dict[str, m.Realm] = {}
        for realm_node in groups.get("realm", ()):
            realm = self.realm(realm_node)
            if realm and realm.name in realms:
                self.fail(f"security/realm[{realm.name}]", "is defined twice")
            elif realm:
                realms[realm.name] = realm
        revocation_timeout = self.one(groups, "revocation-timeout", "security", parse_duration)
        if revocation_timeout is not None and revocation_timeout <= 0:
            self.fail("security/revocation-timeout", "must be longer than 0, e.g. 24 hours")
        return m.Security(
            keystore=self.store(groups.get("keystore"), "security/keystore", None),
            truststore=self.store(groups.get("truststore"), "security/truststore", "changeit"),
            realms=MappingProxyType(realms),
            revocation_timeout=revocation_timeout or m.DEFAULT_REVOCATION_TIMEOUT,
        )

    def password(self, groups: dict[str, list[Node]], path: str, default: str | None) -> str | None:
        """The content of ``password-file`` (trailing newline dropped), else ``default``."""
        password_file = self.one(groups, "password-file", path, str)
        if not password_file:
            return default
        try:
            return self.file_path(password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            self.fail(f"{path}/password-file", f"cannot read {str(self.file_path(password_file))!r}: {exc.strerror}")
            return default

    def store(self, nodes: list[Node] | None, path: str, default_password: str | None) -> m.Store | None:
        if not nodes:
            return None
        groups = self.group(nodes[0], path, STORE)
        type_ = self.one(groups, "type", path, parse_choice, STORE_TYPES)
        file_ = self.one(groups, "file", path, str)
        password = self.password(groups, path, default_password)
        if not file_:
            return None
        try:  # here, so that a missing store is reported with every other error of the config
            with self.file_path(file_).open("rb"):
                pass
        except OSError as exc:
            self.fail(f"{path}/file", f"cannot read {str(self.file_path(file_))!r}: {exc.strerror}")
        return m.Store(type_, self.file_path(file_), password, path)

    def realm(self, node: Node) -> m.Realm | None:
        name_node = node.first("name")
        path = f"security/realm[{name_node.text if name_node is not None else '?'}]"
        groups = self.group(node, path, REALM)
        name = self.one(groups, "name", path, str)
        auth_nodes = groups.get("authentication")
        auth = self.authentication(auth_nodes[0], f"{path}/authentication") if auth_nodes else m.Authentication()
        if not name:
            return None
        return m.Realm(
            name=name,
            description=self.one(groups, "description", path, str) or "",
            user_principal_classes=self.many(groups, "user-principal-class", path),
            authentication=auth,
        )

    def authentication(self, node: Node, path: str) -> m.Authentication:
        groups = self.group(node, path, AUTHENTICATION)
        modules_node = groups.get("login-modules")
        modules: tuple[m.LoginModule, ...] = ()
        if modules_node:
            module_groups = self.group(modules_node[0], f"{path}/login-modules", {"login-module": "*"})
            modules = tuple(
                mod
                for i, n in enumerate(module_groups.get("login-module", ()))
                if (mod := self.login_module(n, f"{path}/login-modules/login-module[{i + 1}]"))
            )
        return m.Authentication(
            http_challenge_scheme=self.one(groups, "http-challenge-scheme", path, parse_choice, CHALLENGE_SCHEMES),
            http_headers=self.many(groups, "http-header", path),
            http_query_parameters=self.many(groups, "http-query-parameter", path),
            http_cookies=self.many(groups, "http-cookie", path),
            authorization_mode=self.one(
                groups, "authorization-mode", path, parse_choice, ("challenge", "recycle", "validate")
            )
            or "challenge",
            session_timeout=self.one(groups, "session-timeout", path, parse_duration),
            authorization_timeout=self.one(groups, "authorization-timeout", path, parse_duration),
            login_modules=modules,
            login_concurrency=self.one(groups, "login-concurrency", path, parse_count),
            login_queue=self.one(groups, "login-queue", path, parse_count),
        )

    def login_module(self, node: Node, path: str) -> m.LoginModule | None:
        groups = self.group(node, path, LOGIN_MODULE)
        type_ = self.one(groups, "type", path, str)
        types = self.catalog.login_modules
        if type_ and not type_.startswith("class:") and type_ not in types:
            self.fail(
                f"{path}/type",
                f"'{type_}' is not a login-module type; valid: {', '.join(types)}, class:package.module.Name",
            )
        success = self.one(groups, "success", path, parse_choice, SUCCESS_FLAGS) or "required"
        options = {}
        for options_node in groups.get("options", ()):
            for child in options_node.children:
                child_path = f"{path}/options/{child.name}"
                if child.children:
                    self.fail(
                        child_path,
                        "nested option elements are not supported yet (Kaazing handed them only to gateway "
                        "extensions' own option parsers); give each option one text value",
                    )
                    continue
                options[child.name] = self.text(child, child_path)
        return m.LoginModule(type_, success, MappingProxyType(options)) if type_ else None


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def parse_origin(text: str) -> str:
    """``*`` or ``scheme://host[:port]`` (http/https, no path), default port filled in."""
    value = text.strip()
    if value == "*":
        return value
    try:
        uri = parse_uri(value, ("http", "https"))
    except ValueError:
        raise ValueError(f"{text!r} is not an origin; write * or e.g. https://app.example.com:8443") from None
    if uri.path not in ("", "/") or value.rstrip("/").count("/") > 2:
        raise ValueError(f"{text!r} must not have a path; write e.g. https://app.example.com")
    return f"{uri.scheme}://{uri.host}:{uri.port}"


def check_cross_references(services: tuple[m.Service, ...], security: m.Security, builder: Builder) -> None:
    """Checks that need the whole config: names, realms, keystores, shared ports."""
    seen_names: set[str] = set()
    seen_uris: dict[tuple[str, int, str], str] = {}
    for service in services:
        path = f"service[{service.name}]"
        if service.name in seen_names:
            builder.fail(path, "service names must be unique; this one is used twice")
        seen_names.add(service.name)
        if service.authorization_constraints and not service.realm_name and service.accept_options.tunnel is None:
            builder.fail(
                f"{path}/authorization-constraint", "needs a realm-name on the service to authenticate against"
            )
        if service.realm_name and service.realm_name not in security.realms:
            defined = ", ".join(security.realms) or "none"
            builder.fail(f"{path}/realm-name", f"unknown realm '{service.realm_name}' (defined in security: {defined})")
        needs_keystore = any(u.secure for u in service.accepts) and service.accept_options.tls.encryption
        if needs_keystore and security.keystore is None:
            builder.fail(
                f"{path}/accept",
                "a wss/https accept needs security/keystore "
                "(or accept-options ssl.encryption disabled behind a TLS offloader)",
            )
        if service.connect_options.tls.client_certificate and security.keystore is None:
            builder.fail(f"{path}/connect-options/ssl.client-certificate", "needs security/keystore holding that alias")
        for uri in service.accepts:
            key = (uri.host, uri.port, uri.path.rstrip("/") or "/")
            if key in seen_uris and uri.port != 0:
                builder.fail(f"{path}/accept", f"{uri} is already accepted by service[{seen_uris[key]}]")
            seen_uris[key] = service.name


TUNNEL_ENDPOINT_TYPE = "dmz.tunnel"


def check_tunnels(services: tuple[m.Service, ...], security: m.Security, builder: Builder) -> tuple[m.Service, ...]:
    """Tunnel ends where the type allows them, their mTLS material, and on a DMZ gateway one ``dmz.tunnel``
    service per rendezvous URI: the listener the internal gateway's tunnels dial (client certificate required).
    """
    endpoints: dict[tuple[str, int, str], m.Service] = {}
    for service in services:
        path = f"service[{service.name}]"
        inward, outward = service.accept_options.tunnel, service.connect_options.tunnel
        if service.type == TUNNEL_ENDPOINT_TYPE:
            builder.fail(f"{path}/type", "dmz.tunnel is made by wsgate from a proxy's connect-options; remove it")
            continue
        injection = service.settings.get("identity.injection", "none")
        if injection != "none" and (
            inward is None or not service.connects or service.connects[0].scheme in ("ws", "wss")
        ):
            builder.fail(
                f"{path}/properties/identity.injection",
                "injects the identity a DMZ gateway asserted into a tcp:// or ssl:// back end: it needs "
                "accept-options socks.mode reverse and such a connect URI",
            )
        if inward is None and outward is None:
            if service.settings.get("connect.strategy") == "prepared":
                builder.fail(
                    f"{path}/properties/connect.strategy",
                    "'prepared' is the DMZ end's strategy (its ready tunnels, docs/dmz.md); a direct proxy dials "
                    "immediate or deferred",
                )
            if service.settings.get("prepared.connection.count") is not None:
                builder.fail(
                    f"{path}/properties/prepared.connection.count",
                    "prepared connections are the tunnels of a DMZ deployment (socks.mode reverse, docs/dmz.md); "
                    "a direct proxy dials its back end per client",
                )
            continue
        spec = builder.catalog.services.get(service.type)
        if spec is None or not spec.tunnels:
            builder.fail(f"{path}/type", f"type {service.type} cannot be tunnelled; use type proxy")
            continue
        if inward is not None and outward is not None:
            builder.fail(path, "a service is either the DMZ end (connect-options) or the internal end (accept-options)")
            continue
        if security.keystore is None:
            builder.fail(f"{path}/accept", "a tunnel is mutual TLS: it needs security/keystore (and a truststore)")
        if outward is not None:
            if service.settings.get("prepared.connection.count") is not None:
                builder.warn(
                    f"{path}/properties/prepared.connection.count",
                    "the internal gateway keeps the tunnels ready (it dials out): set prepared.connection.count on "
                    "its service; here it has no effect",
                )
            if not outward.peers:  # deny by default: a client's certificate from the same CA must not carry tunnels
                builder.fail(
                    f"{path}/connect-options/tunnel.peer",
                    "required: the internal gateway certificate's common name or sha256:<fingerprint>; without it "
                    "any certificate the truststore accepts could carry this service's tunnels and read its clients' "
                    "traffic",
                )
            uri = outward.rendezvous
            key = (uri.host, uri.port, uri.path.rstrip("/") or "/")
            if key not in endpoints:
                endpoints[key] = m.Service(
                    name=f"dmz.tunnel {uri.host}:{uri.port}{uri.path}",
                    type=TUNNEL_ENDPOINT_TYPE,
                    accepts=(uri,),
                    description="the internal gateway's tunnels (made from connect-options socks.transport)",
                    accept_options=m.AcceptOptions(tls=m.TlsOptions(verify_client="required"), write_timeout=None),
                )
        elif service.setting("connect.strategy") == "prepared":
            builder.fail(
                f"{path}/properties/connect.strategy",
                "'prepared' is the DMZ end's strategy; the internal end dials its back end immediate or deferred",
            )
    return services + tuple(endpoints.values())


def build_config(
    root: Node,
    catalog: Catalog,
    source: Path | None = None,
    overrides: Mapping[str, str] | None = None,
    web_root: Path | None = None,
) -> m.GatewayConfig:
    """Validate the whole tree against ``catalog``'s types and return the model, or raise ``ConfigErrors``
    listing every problem."""
    base_dir = source.parent if source else Path.cwd()
    builder = Builder({}, base_dir, catalog, legacy_realms=root.namespace in LEGACY_REALM_NAMESPACES)
    builder.top_properties(root, overrides or {})
    services = builder.gateway(root) or ()
    security = builder.security(root)
    limits = builder.limits(root)
    state = builder.state(root)
    services = check_tunnels(services, security, builder)
    check_cross_references(services, security, builder)
    if builder.errors:
        raise ConfigErrors(builder.errors)
    if web_root is None:
        web_root = base_dir.parent / "web" if base_dir.name == "conf" else base_dir
    return m.GatewayConfig(
        services,
        security,
        MappingProxyType(builder.properties),
        source,
        web_root,
        limits,
        tuple(builder.warnings),
        state,
    )
