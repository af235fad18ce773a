"""Types declare themselves: every service type and login module is one declaration in its own module,
collected by ``wsgate.catalog``; the config builder walks whatever schemas it is given."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest

from wsgate import catalog
from wsgate.catalog import CATALOG, LOGIN_MODULES, SERVICE_TYPES, build_config
from wsgate.config.build import (
    ACCEPT_OPTION_NAMES,
    ACCEPT_OPTIONS,
    ACCEPT_TLS_OPTIONS,
    CONNECT_OPTION_NAMES,
    CONNECT_OPTIONS,
    CONNECT_TLS_OPTIONS,
    DEFLATE_OPTIONS,
)
from wsgate.config.build import build_config as build_with
from wsgate.config.loaders import parse_yaml
from wsgate.config.model import AcceptOptions, ConnectOptions, Deflate, LoginModule, TlsOptions
from wsgate.config.schema import Catalog, LoginModuleSchema, Property, ServiceTypeSchema
from wsgate.config.values import parse_count
from wsgate.errors import ConfigError, ConfigErrors
from wsgate.security.login import build_module
from wsgate.services.base import Runtime, ServiceHandler, ServiceType


def tree(text: str):
    return parse_yaml(text.encode(), "test.yaml")


def service_yaml(type_: str, extra: str = "", accept: str = "ws://localhost:8000/x") -> str:
    return f"service:\n  - name: s\n    accept: {accept}\n    type: {type_}\n{extra}"


# -- the declarations --------------------------------------------------------------------------


def test_the_catalog_lists_types_in_the_documented_order():
    assert list(SERVICE_TYPES) == [
        "echo",
        "directory",
        "proxy",
        "broadcast",
        "management",
        "metrics",
        "kdc.proxy",
        "amqp.proxy",
        "mqtt.proxy",
    ]
    assert list(LOGIN_MODULES) == ["file", "ldap", "kerberos5", "gss", "jndi", "keystore", "jwt", "certificate", "oidc"]
    assert CATALOG.services == SERVICE_TYPES and CATALOG.login_modules == LOGIN_MODULES


@pytest.mark.parametrize("name", list(SERVICE_TYPES))
def test_each_service_type_is_declared_on_its_handler_class(name):
    kind = SERVICE_TYPES[name]
    assert isinstance(kind.factory, type) and issubclass(kind.factory, ServiceHandler)
    assert kind.factory.TYPE is kind  # the class that declares it builds it
    assert kind.factory.__module__ != "wsgate.services.base"


def test_routing_and_realm_behaviour_come_from_the_declarations():
    plain = {name for name, kind in SERVICE_TYPES.items() if kind.plain_http}
    assert plain == {"directory", "management", "metrics", "kdc.proxy"}
    assert {name for name, kind in SERVICE_TYPES.items() if kind.prefix} == {"directory", "management"}
    assert {name for name, kind in SERVICE_TYPES.items() if kind.web_root} == {"directory"}
    for kind in SERVICE_TYPES.values():  # plain HTTP types accept http(s), WebSocket types ws(s)
        assert set(kind.accept) == ({"http", "https"} if kind.plain_http else {"ws", "wss"})


def test_a_declared_type_creates_its_handler():
    config = build_config(tree(service_yaml("echo")))
    handler = catalog.service_type("echo").create(config.services[0], Runtime())
    assert type(handler).__name__ == "EchoService" and handler.name == "s"


def test_a_descriptor_without_a_class_says_so():
    with pytest.raises(TypeError, match="no factory"):
        ServiceType(name="loose", accept=("ws",)).create(
            build_config(tree(service_yaml("echo"))).services[0], Runtime()
        )


@pytest.mark.parametrize("name", ["jndi", "keystore"])
def test_unsupported_login_modules_load_but_do_not_build(name):
    assert LOGIN_MODULES[name].unsupported == f"the {name} login module is not supported yet"
    with pytest.raises(ConfigError, match=f"realm/type: the {name} login module is not supported yet"):
        build_module(LoginModule(name), "realm", Path())


def test_strict_login_modules_refuse_options_they_do_not_declare():
    ldap = LOGIN_MODULES["ldap"]
    assert ldap.unknown_options({"userProvider": "ldap://h/dc=x", "role.admin": "cn=a", "bogus": "1"}) == ["bogus"]
    assert LOGIN_MODULES["jwt"].unknown_options({"anything": "1"}) == []  # lenient, as before
    assert LOGIN_MODULES["certificate"].valid_options == "principal, roles, role.NAME"
    with pytest.raises(ConfigError, match=r"m/options/nope: unknown option; valid: principal, roles, role.NAME"):
        build_module(LoginModule("certificate", options=MappingProxyType({"nope": "1"})), "m", Path())


def test_ambient_credentials_are_declared_by_the_module():
    assert {name for name, kind in LOGIN_MODULES.items() if kind.ambient} == {"certificate"}


def test_a_name_declared_twice_is_refused():
    echo = ServiceTypeSchema(name="echo", accept=("ws",))
    with pytest.raises(ValueError, match="service type echo declared twice"):
        Catalog.of((echo, echo), ())
    with pytest.raises(ValueError, match="both declared and unsupported"):
        Catalog.of((echo,), (), ("echo",))
    with pytest.raises(ValueError, match="login module file declared twice"):
        Catalog.of((), (LoginModuleSchema(name="file"),) * 2)


# -- the builder walks the schemas it is given ---------------------------------------------------


COUNTER = ServiceTypeSchema(
    name="counter",
    accept=("ws",),
    connect=(0, 1),
    properties={"start": Property("1", parse_count), "label": Property("?"), "tag": Property("*", listed=False)},
)
SMALL = Catalog.of((COUNTER,), (LoginModuleSchema(name="file"),))


def test_a_new_type_is_one_declaration_away():
    config = build_with(tree(service_yaml("counter", "    properties:\n      start: '5'\n      label: x\n")), SMALL)
    service = config.services[0]
    assert service.type == "counter" and service.setting("start") == 5 and service.prop("label") == "x"


def test_the_builder_knows_only_the_types_it_is_given():
    with pytest.raises(ConfigErrors, match=r"'echo' is not a service type; valid: counter"):
        build_with(tree(service_yaml("echo")), SMALL)


def test_property_schemas_check_names_cardinality_and_values():
    with pytest.raises(ConfigErrors) as caught:
        build_with(tree(service_yaml("counter", "    properties:\n      start: none\n      lable: x\n")), SMALL)
    assert [str(e) for e in caught.value.errors] == [
        "service[s]/properties/lable: unknown element; did you mean 'label'? valid here: start, label",
        "service[s]/properties/start: 'none' is not a positive whole number",
    ]
    with pytest.raises(ConfigErrors, match=r"service\[s\]/properties/start: is required for this service type"):
        build_with(tree(service_yaml("counter")), SMALL)
    with pytest.raises(ConfigErrors, match=r"a counter service takes 0..1 connect URI\(s\), found 2"):
        twice = (
            "    connect:\n      - tcp://localhost:1\n      - tcp://localhost:2\n    properties:\n      start: '1'\n"
        )
        build_with(tree(service_yaml("counter", twice)), SMALL)


def test_properties_are_parsed_once_by_their_schema():
    proxy = build_config(
        tree(
            service_yaml(
                "proxy",
                "    connect: tcp://localhost:9\n    properties:\n"
                "      maximum.pending.bytes: 16k\n      connect.strategy: DEFERRED\n",
            )
        )
    ).services[0]
    assert proxy.setting("maximum.pending.bytes") == 16 * 1024
    assert proxy.setting("connect.strategy") == "deferred"  # canonical spelling, as the check accepted it
    assert proxy.prop("connect.strategy") == "DEFERRED"  # the text stays as written


# -- one list of option names ---------------------------------------------------------------------


def test_the_option_tables_fill_every_option_field():
    def fields(cls):
        return {f.name for f in dataclasses.fields(cls)}

    assert {o.field for o in ACCEPT_OPTIONS.values()} == fields(AcceptOptions) - {"binds", "tls", "tunnel", "deflate"}
    assert {o.field for o in DEFLATE_OPTIONS.values()} == fields(Deflate)
    assert {o.field for o in ACCEPT_TLS_OPTIONS.values()} == fields(TlsOptions) - {"client_certificate"}
    assert {o.field for o in CONNECT_OPTIONS.values()} - {None} == fields(ConnectOptions) - {"tls", "tunnel"}
    assert {o.field for o in CONNECT_TLS_OPTIONS.values()} == {"ciphers", "protocols", "client_certificate"}
    assert set(ACCEPT_OPTIONS) | set(ACCEPT_TLS_OPTIONS) <= set(ACCEPT_OPTION_NAMES)
    assert set(CONNECT_OPTIONS) | set(CONNECT_TLS_OPTIONS) == set(CONNECT_OPTION_NAMES)


def test_an_empty_type_is_an_error_not_a_service_of_no_type():
    with pytest.raises(ConfigErrors, match=r"service\[s\]/type: '' is not a service type; valid: echo, directory"):
        build_config(tree(service_yaml("''")))
