"""What the config builder must know about a service type or login module, as plain values.

The types themselves live above ``config/`` (``services/``, ``management/``, ``security/login/``) and
declare their schema next to their code; ``wsgate.catalog`` collects them and hands a ``Catalog`` to
``build_config``. This module only defines the shapes, so the builder can read them without importing
any service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .model import Service

# Cardinality of an element or property: "1" exactly one, "?" at most one, "*" any, "+" at least one.
Cardinality = str
# A located failure: (element path, message).
Fail = Callable[[str, str], None]


@dataclass(frozen=True)
class Property:
    """One service property: how often it may appear and how its text is checked.

    ``parse`` raises ``ValueError`` with what would be valid; the builder adds the element path. Its
    result is kept in ``Service.settings`` (the last value of the property), so a service reads it
    parsed and never parses it again. ``fields`` makes the property a nested element whose children
    (all required) are kept joined by newlines (a directory's ``location``); ``listed`` says whether
    the "valid here" hint names it.

    ``file``: the text is a file name, resolved against the config's folder before ``parse`` sees it (a
    password file). ``warning``: a Kaazing property the type accepts and ignores; loading it adds this
    located warning.
    """

    cardinality: Cardinality = "?"
    parse: Callable[[str], Any] | None = None
    fields: tuple[str, ...] = ()
    listed: bool = True
    file: bool = False
    warning: str | None = None


@dataclass(frozen=True)
class RuleSchema:
    """What a service type's ``authorization-rule`` elements may say (``config.model.Rule``).

    ``operations`` maps each operation rules may govern to the fields a rule may match on it;
    ``separators`` gives each field's level separator (``config.patterns``; absent: the whole value is
    one level); ``field_prefixes`` are families of fields the type names itself (``json.``: a path in a
    JSON message); ``outcomes`` the values ``then`` may take (the first is the default; none: ``then``
    is refused). ``check_field(name, pattern)``, if given, raises ``ValueError`` for a field the type
    cannot use (a malformed ``json.`` path, a ``type`` that is neither text nor binary); the builder
    reports it at the field's element.
    """

    operations: Mapping[str, tuple[str, ...]]
    separators: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    field_prefixes: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    check_field: Callable[[str, str], None] | None = field(default=None, compare=False)

    def takes(self, operation: str, name: str) -> bool:
        """May a rule on ``operation`` match the field ``name``?"""
        fields = self.operations.get(operation, ())
        return name in fields or any(name.startswith(p) and p in fields for p in self.field_prefixes)

    def separator(self, name: str) -> str | None:
        return self.separators.get(name)


def _no_properties() -> Mapping[str, Property]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class ServiceTypeSchema:
    """The config side of a service type: its name, URIs and properties.

    ``finish`` may adjust or refuse a built service (``None``: refused, after calling ``fail``); without
    it a realm-name without authorization-constraint means "any authenticated user" (see
    ``Builder.unconstrained_realm``).
    """

    name: str
    accept: tuple[str, ...]  # accept URI schemes
    connect: tuple[int, int] = (0, 0)  # how many connect URIs: (least, most)
    connect_schemes: tuple[str, ...] = ()  # the connect URI schemes it takes; (): every one the gateway knows
    properties: Mapping[str, Property] = field(default_factory=_no_properties)
    rules: RuleSchema | None = None  # None: the type takes no authorization-rule
    finish: Callable[[Service, str, Fail], Service | None] | None = None
    tunnels: bool = False  # may be either end of a DMZ tunnel (socks.mode reverse, docs/dmz.md)


@dataclass(frozen=True, kw_only=True)
class LoginModuleSchema:
    """The config side of a login module type.

    ``options`` names the options the module takes; ``option_prefixes`` the families it takes
    (``role.NAME``); ``strict`` modules refuse any other option. ``unsupported`` is the message for a
    Kaazing module type wsgate does not implement yet (the config loads; building the realm fails).
    """

    name: str
    options: tuple[str, ...] = ()
    option_prefixes: tuple[str, ...] = ()
    strict: bool = False
    unsupported: str | None = None

    def unknown_options(self, options: Mapping[str, str]) -> list[str]:
        """The option names a strict module does not take (none for a lenient one)."""
        if not self.strict:
            return []
        return [name for name in options if name not in self.options and not name.startswith(self.option_prefixes)]

    @property
    def valid_options(self) -> str:
        """``a, b, role.NAME``: for "unknown option" messages."""
        return ", ".join((*self.options, *(f"{prefix}NAME" for prefix in self.option_prefixes)))


@dataclass(frozen=True)
class Catalog:
    """Every type the builder may meet, in the order messages list them."""

    services: Mapping[str, ServiceTypeSchema]
    login_modules: Mapping[str, LoginModuleSchema]
    # Kaazing service types wsgate does not implement → what to use instead ("": nothing yet).
    unsupported_services: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(
        cls,
        services: tuple[ServiceTypeSchema, ...],
        login_modules: tuple[LoginModuleSchema, ...],
        unsupported_services: tuple[str, ...] | Mapping[str, str] = (),
    ) -> Catalog:
        """From declarations; a name declared twice is a programming error. ``unsupported_services``: names,
        or names with what to use instead."""
        names = [s.name for s in services]
        modules = [m.name for m in login_modules]
        for kind, seen in (("service type", names), ("login module", modules)):
            duplicates = sorted({n for n in seen if seen.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind} {', '.join(duplicates)} declared twice")
        overlap = set(names) & set(unsupported_services)
        if overlap:
            raise ValueError(f"service type {', '.join(sorted(overlap))} is both declared and unsupported")
        hints = unsupported_services
        if not isinstance(hints, Mapping):
            hints = dict.fromkeys(hints, "")
        return cls(
            MappingProxyType({s.name: s for s in services}),
            MappingProxyType({m.name: m for m in login_modules}),
            MappingProxyType(dict(hints)),
        )
