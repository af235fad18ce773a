"""The ldap login module against a real slapd on loopback."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil

import aiohttp
import pytest

from .slapd import ADMIN_DN, ADMIN_PW, SUFFIX, Slapd

pytestmark = pytest.mark.skipif(
    shutil.which("slapd") is None
    and not __import__("os").path.exists("/usr/sbin/slapd")
    and not __import__("os").environ.get("CI"),
    reason="slapd not installed (make test installs it)",
)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def slapd(tmp_path, ca):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "ldap-cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "ldap-key.pem"))
    server = Slapd(tmp_path / "slapd", tmp_path / "ldap-cert.pem", tmp_path / "ldap-key.pem")
    server.setup()
    server.start()
    yield server
    server.stop()


def ldap_config(slapd: Slapd, extra: str = "", scheme: str = "ldap") -> str:
    return f"""
service:
  - name: users
    accept: ws://127.0.0.1:0/users
    type: echo
    realm-name: directory
    authorization-constraint:
      require-role: USER
  - name: admins
    accept: ws://127.0.0.1:0/admins
    type: echo
    realm-name: directory
    authorization-constraint:
      require-role: ADMIN
security:
  realm:
    name: directory
    description: Corporate directory
    authentication:
      http-challenge-scheme: Application Basic
      login-modules:
        login-module:
          type: ldap
          options:
            userProvider: {scheme}://127.0.0.1:{slapd.port}/ou=people,{SUFFIX}
            userFilter: (uid={{USERNAME}})
            bind-dn: {ADMIN_DN}
            bind-password-file: ldap-admin.pw
            group-base: ou=groups,{SUFFIX}
            role.ADMIN: gw-admins
            role.USER: gw-users
            timeout: 2s
{extra}"""


@pytest.fixture
async def directory(start_gateway, slapd, tmp_path):
    (tmp_path / "ldap-admin.pw").write_text(ADMIN_PW + "\n")

    async def start(extra: str = ""):
        return await start_gateway(ldap_config(slapd, extra))

    return start


async def connect(http, gw, service: str, headers: dict[str, str]) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(f"ws://127.0.0.1:{gw.port_of(service)}/{service}", headers=headers)


async def status_of(http, gw, service: str, headers: dict[str, str] | None = None) -> int:
    try:
        ws = await connect(http, gw, service, headers or {})
    except aiohttp.WSServerHandshakeError as error:
        return error.status
    await ws.close()
    return 101


async def test_groups_become_roles(directory, http):
    gw = await directory()
    assert await status_of(http, gw, "admins", basic("alice", "alicepw")) == 101
    assert await status_of(http, gw, "users", basic("bob", "bobpw")) == 101
    assert await status_of(http, gw, "admins", basic("bob", "bobpw")) == 403
    assert await status_of(http, gw, "users", basic("carol", "carolpw")) == 403  # in no group


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "wrong"),
        ("mallory", "alicepw"),
        ("alice", ""),  # an empty password would be an LDAP unauthenticated bind
        ("*", "alicepw"),
        ("alice)(uid=*", "alicepw"),
        ("*)(|(uid=*", "alicepw"),
        ("al*", "alicepw"),
        ("alice\\2a", "alicepw"),
        ("admin,dc=example,dc=test", ADMIN_PW),
    ],
    ids=[
        "wrong-password",
        "unknown-user",
        "empty-password",
        "star",
        "filter-break",
        "or-injection",
        "wildcard",
        "escaped-star",
        "dn-as-user",
    ],
)
async def test_ldap_failures_and_injection_attempts_are_403(directory, http, user, password):
    gw = await directory()
    assert await status_of(http, gw, "users", basic(user, password)) == 403
    assert await status_of(http, gw, "users") == 401  # nothing presented: challenged


async def test_authz_identity_names_the_user(directory, http, caplog):
    gw = await directory('            authzIdentity: "{mail}"')
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        assert await status_of(http, gw, "users", basic("alice", "alicepw")) == 101
    decisions = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("decision")]
    assert decisions[-1]["decision"] == "authenticated" and decisions[-1]["user"] == "alice@example.test"


async def test_starttls_verified_against_the_ca(start_gateway, slapd, tmp_path, http, ca, other_ca):
    (tmp_path / "ldap-admin.pw").write_text(ADMIN_PW)
    ca.cert_pem.write_to_path(str(tmp_path / "ldap-ca.pem"))
    other_ca.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    gw = await start_gateway(
        ldap_config(slapd, "            starttls: true\n            ca-file: ldap-ca.pem"), name="tls.yaml"
    )
    assert await status_of(http, gw, "users", basic("bob", "bobpw")) == 101
    gw = await start_gateway(
        ldap_config(slapd, "            starttls: true\n            ca-file: other-ca.pem"), name="bad.yaml"
    )
    assert await status_of(http, gw, "users", basic("bob", "bobpw")) == 503  # cannot verify: never access


async def test_ldap_down_is_503_live_connections_stay_and_service_recovers(directory, http, slapd):
    gw = await directory()
    live = await connect(http, gw, "users", basic("bob", "bobpw"))
    slapd.stop()
    assert await status_of(http, gw, "users", basic("bob", "bobpw")) == 503
    assert await status_of(http, gw, "users", basic("bob", "wrong")) == 503  # an outage is not "wrong password"
    await live.send_str("still up")
    assert (await asyncio.wait_for(live.receive(), 2)).data == "still up"
    slapd.start()
    assert await status_of(http, gw, "users", basic("bob", "bobpw")) == 101
    await live.close()
