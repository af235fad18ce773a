"""``plan`` and ``diff`` as values: what a config runs and what a reload changes, without sockets or threads.

The socket-level guarantees (sockets kept, connections closed with 1012/1001, all-or-nothing) are in
test_reload.py and test_management.py; these tables pin the decisions behind them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from wsgate.catalog import load_config
from wsgate.errors import ConfigError
from wsgate.gateway import Changes, Plan, diff, plan
from wsgate.security.keystore import KeyEntry, KeyMaterial

# Key material is compared by value: two loads of the same store are equal, a rotated one is not.
KEYS = KeyMaterial((KeyEntry("gw", b"key", b"chain", frozenset({"localhost"})),), b"")
ROTATED = KeyMaterial((KeyEntry("gw", b"new key", b"new chain", frozenset({"localhost"})),), b"")
TRUST = KeyMaterial((), b"ca")

STORES = """
security:
  keystore:
    type: PEM
    file: keystore.pem
  truststore:
    type: PEM
    file: truststore.pem
"""

REALMS = """
  realm:
    name: files
    authentication:
      http-challenge-scheme: Application Basic
      login-modules:
        login-module:
          type: file
          options:
            file: users.xml
"""

REALM = "\nsecurity:" + REALMS
USERS = "<jaas-config><user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>"


def echo(name: str, accept: str = "", extra: str = "") -> str:
    accept = accept or f"ws://localhost:8000/{name}"
    return f"  - name: {name}\n    accept: {accept}\n    type: echo\n" + textwrap.indent(textwrap.dedent(extra), "    ")


def planned(tmp_path: Path, *services: str, tail: str = "", keys: KeyMaterial | None = KEYS) -> Plan:
    path = tmp_path / "gateway.yaml"
    path.write_text("service:\n" + "".join(services) + tail)
    if not (tmp_path / "users.xml").exists():
        (tmp_path / "users.xml").write_text(USERS + "</jaas-config>")
    for store in ("keystore.pem", "truststore.pem"):  # named by STORES; their material is KEYS and TRUST
        (tmp_path / store).touch()
    return plan(load_config(path), keys, TRUST)


def summary(changes: Changes) -> str:
    return str(changes)


# -- plan ----------------------------------------------------------------------------------------


def test_one_listener_per_bind_address_with_the_services_it_routes(tmp_path):
    result = planned(
        tmp_path,
        echo("a"),
        echo("b"),
        echo("c", "ws://localhost:9000/c"),
        echo("d", "ws://public.example:80/d", "accept-options:\n  ws.bind: 8000\n"),
    )
    assert list(result.listeners) == [("localhost", 8000), ("localhost", 9000), (None, 8000)]
    assert result.listeners["localhost", 8000].services == ("a", "b")
    assert [r.uri.path for r in result.listeners["localhost", 8000].routes] == ["/a", "/b"]
    assert result.listeners[None, 8000].services == ("d",)
    assert all(listener.tls is None for listener in result.listeners.values())
    assert result.listener_of("d") == (None, 8000)


def test_a_tls_port_is_one_group_with_one_verify_client_mode(tmp_path):
    result = planned(
        tmp_path,
        echo("a", "wss://localhost:8443/a", "accept-options:\n  ssl.verify-client: required\n"),
        echo("b", "wss://localhost:8443/b"),
        echo("c", "wss://localhost:9443/c", "accept-options:\n  ssl.verify-client: required\n"),
        tail=STORES,
    )
    mixed, alone = result.listeners["localhost", 8443], result.listeners["localhost", 9443]
    assert mixed.tls is not None and alone.tls is not None
    assert mixed.tls.verify_client == "optional"  # the context asks; each route enforces its own mode
    assert [r.verify_client for r in mixed.routes] == ["required", "none"]
    assert alone.tls.verify_client == "required"
    assert mixed.tls.hosts == ("localhost", "localhost") and mixed.tls.keys is KEYS and mixed.tls.trust is TRUST


def test_one_port_with_and_without_tls_is_refused_with_its_message(tmp_path):
    with pytest.raises(ConfigError) as error:
        planned(tmp_path, echo("plain", "ws://localhost:8000/a"), echo("secure", "wss://localhost:8000/b"), tail=STORES)
    assert str(error.value) == (
        "service[secure]/accept: service[secure] wss://localhost:8000/b and service[plain] ws://localhost:8000/a "
        "bind the same port 8000 with and without TLS; give them different ports"
    )


def test_different_ciphers_on_one_tls_port_are_refused_with_their_message(tmp_path):
    with pytest.raises(ConfigError) as error:
        planned(
            tmp_path,
            echo("a", "wss://localhost:8443/a"),
            echo("b", "wss://localhost:8443/b", "accept-options:\n  ssl.ciphers: ECDHE+AESGCM\n"),
            tail=STORES,
        )
    assert str(error.value) == (
        "service[b]/accept-options: ssl.ciphers/ssl.protocols differ from service[a] on the same port; "
        "use the same values or another port"
    )


def test_services_carry_their_limits_realm_and_back_end_key_material(tmp_path):
    result = planned(
        tmp_path,
        echo("open"),
        echo("limited", extra="accept-options:\n  connection.limit: 5\n  handshake.rate.per.ip: 2/s\n"),
        echo("guarded", extra="realm-name: files\nauthorization-constraint:\n  require-role: AUTHORIZED\n"),
        "  - name: tls-proxy\n    accept: ws://localhost:8000/p\n    connect: wss://backend.example/x\n    type: proxy\n",
        "  - name: tcp-proxy\n    accept: ws://localhost:8000/q\n    connect: tcp://backend.example:9\n    type: proxy\n",
        tail=STORES + REALMS,
    )
    services = result.services
    assert services["open"].limits is None
    limited = services["limited"].limits
    assert limited is not None and (limited.max_connections, limited.max_per_ip, limited.rate) == (5, None, 2.0)
    assert services["guarded"].realm is result.config.security.realms["files"]
    assert result.realms_used == {"files"}
    assert services["tls-proxy"].backend_keys == (KEYS, TRUST)
    assert services["tcp-proxy"].backend_keys is None  # accept-side certificates belong to the listener
    assert result.realms["files"].files[0][0] == "login-module[1]/file"


# -- diff ----------------------------------------------------------------------------------------

A, B, C = echo("a"), echo("b"), echo("c")
TLS_A = echo("a", "wss://localhost:8443/a")
GUARDED = echo("g", extra="realm-name: files\nauthorization-constraint:\n  require-role: AUTHORIZED\n")
PROXY = "  - name: p\n    accept: ws://localhost:8000/p\n    connect: wss://backend.example/x\n    type: proxy\n"


def reload_of(tmp_path: Path, before: dict[str, object], after: dict[str, object]) -> Changes:
    old = planned(tmp_path, *before["services"], tail=str(before.get("tail", "")), keys=before.get("keys", KEYS))  # type: ignore[arg-type]
    new = planned(tmp_path, *after["services"], tail=str(after.get("tail", "")), keys=after.get("keys", KEYS))  # type: ignore[arg-type]
    return diff(old, new)


CASES = {
    "nothing changes": (
        {"services": (A, B)},
        {"services": (A, B)},
        "2 unchanged, 0 added, 0 changed, 0 removed",
        {"kept": {("localhost", 8000)}},
    ),
    "a service is added on a new port": (
        {"services": (A,)},
        {"services": (A, echo("b", "ws://localhost:9000/b"))},
        "1 unchanged, 1 added, 0 changed, 0 removed (b)",
        {"kept": {("localhost", 8000)}, "added": {("localhost", 9000)}},
    ),
    "a service's limit changes": (
        {"services": (A, B)},
        {"services": (echo("a", extra="accept-options:\n  connection.limit: 1\n"), B)},
        "1 unchanged, 0 added, 1 changed, 0 removed (a)",
        {"kept": {("localhost", 8000)}},
    ),
    "a service moves to another port": (
        {"services": (A, B)},
        {"services": (A, echo("b", "ws://localhost:9000/b"))},
        "1 unchanged, 0 added, 1 changed, 0 removed (b)",
        {"kept": {("localhost", 8000)}, "added": {("localhost", 9000)}},
    ),
    "the last service on a port is removed": (
        {"services": (A, echo("b", "ws://localhost:9000/b"))},
        {"services": (A,)},
        "1 unchanged, 0 added, 0 changed, 1 removed (b)",
        {"kept": {("localhost", 8000)}, "retired": {("localhost", 9000)}},
    ),
    "a cipher changes": (
        {"services": (TLS_A,), "tail": STORES},
        {
            "services": (echo("a", "wss://localhost:8443/a", "accept-options:\n  ssl.ciphers: ECDHE+AESGCM\n"),),
            "tail": STORES,
        },
        "0 unchanged, 0 added, 1 changed, 0 removed (a)",
        {"rebound": {("localhost", 8443)}},
    ),
    "the certificate is rotated": (
        {"services": (TLS_A,), "tail": STORES},
        {"services": (TLS_A,), "tail": STORES, "keys": ROTATED},
        "1 unchanged, 0 added, 0 changed, 0 removed",  # the service keeps its connections, the port a new socket
        {"rebound": {("localhost", 8443)}},
    ),
    "a service joins a TLS port": (
        {"services": (TLS_A,), "tail": STORES},
        {"services": (TLS_A, echo("b", "wss://localhost:8443/b")), "tail": STORES},
        "1 unchanged, 1 added, 0 changed, 0 removed (b)",
        {"rebound": {("localhost", 8443)}},  # its host takes part in choosing the default certificate
    ),
    "a TLS back end's key material changes": (
        {"services": (PROXY,), "tail": STORES},
        {"services": (PROXY,), "tail": STORES, "keys": ROTATED},
        "0 unchanged, 0 added, 1 changed, 0 removed (p)",
        {"kept": {("localhost", 8000)}},
    ),
    "the header size changes": (
        {"services": (A,)},
        {"services": (A,), "tail": "limits:\n  header-size: 4096\n"},
        "1 unchanged, 0 added, 0 changed, 0 removed",
        {"rebound": {("localhost", 8000)}},
    ),
    "a realm's config changes": (
        {"services": (GUARDED,), "tail": REALM},
        {"services": (GUARDED,), "tail": REALM.replace("Application Basic", "Basic")},
        "0 unchanged, 0 added, 1 changed, 0 removed (g)",
        {"kept": {("localhost", 8000)}},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_diff(tmp_path, name):
    before, after, expected, listeners = CASES[name]
    changes = reload_of(tmp_path, before, after)  # type: ignore[arg-type]
    assert summary(changes) == expected
    assert changes.listeners_kept == listeners.get("kept", set())
    assert changes.listeners_rebound == listeners.get("rebound", set())
    assert changes.listeners_added == listeners.get("added", set())
    assert changes.listeners_retired == listeners.get("retired", set())


def test_a_realm_is_kept_while_its_config_and_files_are_unchanged(tmp_path):
    first = planned(tmp_path, GUARDED, tail=REALM)
    assert diff(first, planned(tmp_path, GUARDED, tail=REALM)).realms_kept == {"files"}
    (tmp_path / "users.xml").write_text(USERS.replace("joe", "former-joe") + "</jaas-config>")
    edited = diff(first, planned(tmp_path, GUARDED, tail=REALM))
    assert edited.realms_kept == frozenset()  # a new realm runtime reads the edited file
    assert edited.unchanged == {"g"}  # the service's config did not change: its connections stay


def test_the_gate_is_kept_while_the_gateway_limits_are_unchanged(tmp_path):
    one = "limits:\n  connections: 1\n"
    assert diff(planned(tmp_path, A, tail=one), planned(tmp_path, A, B, tail=one)).gate_kept
    assert not diff(planned(tmp_path, A), planned(tmp_path, A, tail=one)).gate_kept


def test_starting_from_nothing_adds_everything(tmp_path):
    changes = diff(None, planned(tmp_path, A, echo("b", "ws://localhost:9000/b")))
    assert (changes.added, changes.unchanged, changes.removed) == ({"a", "b"}, frozenset(), frozenset())
    assert changes.bound == [("localhost", 8000), ("localhost", 9000)]
    assert changes.started == ["a", "b"]


# -- the management API's summaries (management/summary.py) ---------------------------------------


def test_the_api_summaries_are_values_of_the_config(tmp_path):
    from wsgate.management.summary import VERSION, gateway_summary, service_summaries

    proxy = "  - name: p\n    accept: ws://localhost:8000/p\n    connect: ws://svc:secret@backend.example/x\n    type: proxy\n"
    config = planned(tmp_path, GUARDED, proxy, tail=STORES + REALMS).config
    info = gateway_summary(config, 1000.0, 3)
    assert list(info) == ["product", "version", "pid", "started", "uptime", "connections", "config"]
    assert (info["product"], info["version"], info["started"], info["connections"]) == ("wsgate", VERSION, 1000.0, 3)
    assert info["config"] == {
        "source": str(tmp_path / "gateway.yaml"),
        "services": service_summaries(config),
        "realms": [
            {
                "name": "files",
                "challenge": "Application Basic",
                "login-modules": [{"type": "file", "success": "required"}],
            }
        ],
        "keystore": {"type": "PEM", "file": str(tmp_path / "keystore.pem")},
        "truststore": {"type": "PEM", "file": str(tmp_path / "truststore.pem")},
    }
    assert service_summaries(config) == [
        {
            "name": "g",
            "type": "echo",
            "accept": ["ws://localhost:8000/g"],
            "connect": [],
            "realm": "files",
            "require-role": ["AUTHORIZED"],
        },
        {
            "name": "p",
            "type": "proxy",
            "accept": ["ws://localhost:8000/p"],
            "connect": ["ws://***@backend.example/x"],  # no password in the API
            "realm": None,
            "require-role": [],
        },
    ]
