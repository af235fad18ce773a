"""Security hardening of realms: no fail-open realm, only the realm's own credentials count, ambiguous
credentials are a bad request, revocation outlives the connection, nothing opens that is already expired."""

from __future__ import annotations

import textwrap

import pytest

from wsgate.cli import main

from .test_realms import basic, refused, users  # noqa: F401  (users is a fixture)

# -- 1. a realm-name without authorization-constraint --------------------------------------------

KAAZING_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<gateway-config xmlns="http://xmlns.kaazing.org/{version}/gateway">
  <service>
    <name>echo</name>
    <accept>ws://127.0.0.1:0/echo</accept>
    <type>echo</type>
    <realm-name>demo</realm-name>
  </service>
  <service>
    <name>open</name>
    <accept>ws://127.0.0.1:0/open</accept>
    <type>echo</type>
  </service>
  <security>
    <realm>
      <name>demo</name>
      <description>Demo</description>
      <authentication>
        <http-challenge-scheme>Application Basic</http-challenge-scheme>
        <login-modules>
          <login-module>
            <type>file</type>
            <success>required</success>
            <options><file>jaas-config.xml</file></options>
          </login-module>
        </login-modules>
      </authentication>
    </realm>
  </security>
</gateway-config>
"""

UNCONSTRAINED_YAML = """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    realm-name: demo
security:
  realm:
    name: demo
    description: Demo
    authentication:
      http-challenge-scheme: Application Basic
      login-modules:
        login-module:
          type: file
          options:
            file: jaas-config.xml
"""


@pytest.mark.parametrize(
    ("name", "text"),
    [("gateway-config.xml", KAAZING_XML.format(version="2016/06")), ("gateway.yaml", UNCONSTRAINED_YAML)],
    ids=["kaazing-2016-06", "yaml"],
)
async def test_realm_without_constraint_requires_an_authenticated_user(start_gateway, http, users, name, text):  # noqa: F811
    gw = await start_gateway(text, name=name)
    error = await refused(http, gw, "echo")
    assert error.status == 401 and error.headers["WWW-Authenticate"] == 'Application Basic realm="Demo"'
    assert (await refused(http, gw, "echo", headers=basic("joe", "wrong"))).status == 403
    ws = await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo", headers=basic("eve", "pa:ss wörd"))
    await ws.close()  # any authenticated user, even one without roles


@pytest.mark.parametrize("version", ["2014/09", "2015/11"])
async def test_older_kaazing_schemas_drop_an_unconstrained_realm(start_gateway, http, users, version, caplog):  # noqa: F811
    gw = await start_gateway(KAAZING_XML.format(version=version), name="gateway-config.xml")
    assert gw.config.service("echo").realm_name is None and gw.config.service("echo").dropped_realm == "demo"
    assert "is NOT authenticated" in caplog.text
    ws = await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo")  # as Kaazing's translator leaves it
    await ws.close()


def check_config(tmp_path, capsys, text: str, name: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    return str(capsys.readouterr().out)


def test_check_config_shows_realm_roles_and_origins_per_service(tmp_path, capsys, users):  # noqa: F811
    text = UNCONSTRAINED_YAML.replace(
        "security:",
        """  - name: trading
    accept: ws://127.0.0.1:0/trading
    type: echo
    realm-name: demo
    authorization-constraint:
      require-role: [TRADER, AUTHORIZED]
    cross-site-constraint:
      - allow-origin: https://app.example.com
      - allow-origin: https://ops.example.com:8443
  - name: public
    accept: ws://127.0.0.1:0/public
    type: echo
    cross-site-constraint:
      allow-origin: "*"
security:""",
    )
    out = check_config(tmp_path, capsys, text, "gateway.yaml")
    assert (
        "service[echo] (echo): ws://127.0.0.1:0/echo\n  realm: demo\n  required roles: any authenticated user\n"
        "  origins: same-origin only\n"
    ) in out
    assert (
        "  realm: demo\n  required roles: AUTHORIZED, TRADER (all of them)\n"
        "  origins: same-origin and https://app.example.com:443, https://ops.example.com:8443\n"
    ) in out
    assert (
        "service[public] (echo): ws://127.0.0.1:0/public\n  realm: none (no authentication)\n  required roles: none\n"
        "  origins: any (cross-site-constraint allow-origin *)\n"
    ) in out
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING: service[public] is reachable without authentication although the config defines realm(s) demo; "
        "add realm-name if it should be protected"
    ]


def test_check_config_warns_about_a_dropped_realm(tmp_path, capsys, users):  # noqa: F811
    out = check_config(tmp_path, capsys, KAAZING_XML.format(version="2015/11"), "gateway-config.xml")
    assert "service[echo] (echo): ws://127.0.0.1:0/echo\n  realm: none (no authentication)\n" in out
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2
    assert warnings[0].startswith("WARNING: service[echo] is reachable without authentication: its realm-name 'demo'")
    assert warnings[1].startswith("WARNING: service[open] is reachable without authentication")
    out = check_config(tmp_path, capsys, KAAZING_XML.format(version="2016/06"), "gateway-config.xml")
    assert "  realm: demo\n  required roles: any authenticated user\n" in out
    assert [line for line in out.splitlines() if line.startswith("WARNING")] == [
        "WARNING: service[open] is reachable without authentication although the config defines realm(s) demo; "
        "add realm-name if it should be protected"
    ]
