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


# -- the principal is the directory's, bad input is a refused credential ---------------------


@pytest.mark.parametrize("typed", ["alice", "ALICE", " alice", "alice ", "Alice"])
async def test_principal_is_the_stored_uid_not_what_was_typed(directory, http, caplog, typed):
    gw = await directory()
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        assert await status_of(http, gw, "users", basic(typed, "alicepw")) == 101
    decisions = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("decision")]
    assert decisions[-1]["decision"] == "authenticated" and decisions[-1]["user"] == "alice"


async def test_revoking_the_principal_closes_every_spelling(directory, http):
    gw = await directory()
    spellings = ["alice", "ALICE", " alice", "alice "]
    sockets = [await connect(http, gw, "users", basic(name, "alicepw")) for name in spellings]
    assert await gw.revoke(user="alice") == len(spellings)
    for ws in sockets:
        assert (await asyncio.wait_for(ws.receive(), 2)).data == 1008
        await ws.close()


async def test_principal_falls_back_to_the_entry_dn_when_the_filter_names_no_single_attribute(
    start_gateway, slapd, tmp_path, http, caplog
):
    (tmp_path / "ldap-admin.pw").write_text(ADMIN_PW)
    config = ldap_config(slapd).replace("(uid={USERNAME})", "(|(uid={USERNAME})(mail={USERNAME}))")
    gw = await start_gateway(config)
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        assert await status_of(http, gw, "users", basic("ALICE@example.test", "alicepw")) == 101
        assert await status_of(http, gw, "users", basic("Alice", "alicepw")) == 101
    users = [r.msg["user"] for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("decision")]
    assert users[-2:] == [f"uid=alice,ou=people,{SUFFIX}"] * 2


HOSTILE = ["a\x00b", "\x07", "pw\x07", "\uffff", "alicepw\uffff", "\x00"]


@pytest.mark.parametrize("password", HOSTILE, ids=["nul", "bel", "bel-suffix", "u+ffff", "u+ffff-suffix", "only-nul"])
async def test_passwords_ldap_cannot_carry_are_refused_not_an_outage(directory, http, password):
    gw = await directory()
    assert await status_of(http, gw, "users", basic("alice", password)) == 403


@pytest.mark.parametrize("user", ["ali\x00ce", "\x07", "alice\uffff", "\uffff"], ids=["nul", "bel", "u+ffff", "only"])
async def test_user_names_ldap_cannot_carry_are_refused_not_an_outage(directory, http, user):
    gw = await directory()
    assert await status_of(http, gw, "users", basic(user, "alicepw")) == 403


async def test_input_ldap3_cannot_encode_is_failed_in_the_module(slapd, tmp_path):
    """Lone surrogates cannot come from Basic (strict UTF-8), but may from shared state."""
    from wsgate.security.challenges import Credentials
    from wsgate.security.login import Failed, LoginAttempt
    from wsgate.security.login.ldap import LdapLoginModule

    (tmp_path / "pw").write_text(ADMIN_PW)
    options = {"userProvider": f"{slapd.url}/ou=people,{SUFFIX}", "bind-dn": ADMIN_DN, "bind-password-file": "pw"}
    module = LdapLoginModule(options, "m", tmp_path)
    try:
        for name, password in [("alice\ud800", "alicepw"), ("alice", "x\udcff"), ("alice", "a\x00")]:
            attempt = LoginAttempt(Credentials(), "r", shared={"name": name, "password": password})
            assert isinstance(await module.login(attempt), Failed)
    finally:
        await module.close()


async def test_ldap_logins_count_against_the_realm_bound(directory, http):
    """The ldap module runs on its own pool but is admitted by the realm's verifier: a full
    verifier answers 503 with Retry-After and counts it, without calling the directory."""
    import threading

    gw = await directory("      login-concurrency: 1\n      login-queue: 1")
    verifier = gw.realms["directory"].verifier
    release = threading.Event()
    holders = [asyncio.ensure_future(verifier.run(release.wait, 5)) for _ in range(2)]
    await asyncio.sleep(0)
    assert verifier.pending == 2
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
            await connect(http, gw, "users", basic("bob", "bobpw"))
        assert error.value.status == 503 and error.value.headers["Retry-After"] == "1"
        scrape = gw.runtime.metrics.exposition().decode()
        assert 'wsgate_limited_total{limit="auth-concurrency",service="users"} 1.0' in scrape
    finally:
        release.set()
        await asyncio.gather(*holders)
    assert await status_of(http, gw, "users", basic("bob", "bobpw")) == 101


async def test_an_unknown_user_costs_the_same_directory_work_as_a_wrong_password(slapd, tmp_path, monkeypatch):
    """No timing tells who exists: a name no entry matches is still followed by a (failing) bind."""
    import ldap3

    from wsgate.security.challenges import Credentials
    from wsgate.security.login import Failed, LoginAttempt
    from wsgate.security.login.ldap import LdapLoginModule

    (tmp_path / "pw").write_text(ADMIN_PW)
    options = {"userProvider": f"{slapd.url}/ou=people,{SUFFIX}", "bind-dn": ADMIN_DN, "bind-password-file": "pw"}
    module = LdapLoginModule(options, "m", tmp_path)
    binds: list[str | None] = []
    bind = ldap3.Connection.bind

    def counting_bind(connection: ldap3.Connection, *args, **kwargs):  # type: ignore[no-untyped-def]
        binds.append(connection.user)
        return bind(connection, *args, **kwargs)

    monkeypatch.setattr(ldap3.Connection, "bind", counting_bind)

    async def operations(user: str) -> int:
        binds.clear()
        credentials = Credentials("basic", base64.b64encode(f"{user}:wrong".encode()).decode())
        assert isinstance(await module.login(LoginAttempt(credentials, "r")), Failed)
        return len(binds)

    try:
        await operations("alice")  # the pooled service connection is bound once, first
        known = await operations("alice")
        assert known == 1
        for unknown in ("nobody", "al*", "alice)(uid=bob"):
            assert await operations(unknown) == known, unknown
    finally:
        await module.close()


async def test_an_authz_identity_the_entry_cannot_fill_is_not_a_name_users_share(directory, http, caplog):
    """``emp-{employeeNumber}`` for entries without employeeNumber must not make bob and carol both ``emp-``."""
    gw = await directory('            authzIdentity: "emp-{employeeNumber}"')
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        for user, password in (("alice", "alicepw"), ("bob", "bobpw")):
            assert await status_of(http, gw, "users", basic(user, password)) == 101
    users = [r.msg["user"] for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("decision")]
    assert users[-2:] == ["emp-1001", "bob"]  # bob has no employeeNumber: the stored uid, as documented


# -- authenticate: chain (roles for a user an earlier module authenticated) ----------------------


def chained_config(slapd: Slapd, kdc, first: str) -> str:
    return f"""
service:
  - name: admins
    accept: ws://localhost:0/admins
    type: echo
    realm-name: corp
    authorization-constraint:
      require-role: ADMIN
security:
  realm:
    name: corp
    authentication:
      http-challenge-scheme: Negotiate
      login-modules:
        login-module:
{first}
          - type: ldap
            options:
              authenticate: chain
              strip-realm: "true"
              userProvider: ldap://127.0.0.1:{slapd.port}/ou=people,{SUFFIX}
              userFilter: (uid={{USERNAME}})
              bind-dn: {ADMIN_DN}
              bind-password-file: ldap-admin.pw
              group-base: ou=groups,{SUFFIX}
              role.ADMIN: gw-admins
"""


KERBEROS5 = """          - type: kerberos5
            options:
              keyTab: {keytab}
              principal: HTTP/localhost@EXAMPLE.TEST
              replay-cache: {rcache}
"""


async def test_directory_groups_give_a_kerberos_user_roles(start_gateway, slapd, kdc, tmp_path, http):
    pytest.importorskip("gssapi")
    from .test_kerberos import initiator, negotiate

    (tmp_path / "ldap-admin.pw").write_text(ADMIN_PW + "\n")
    first = KERBEROS5.format(keytab=kdc.keytab, rcache=tmp_path / "rcache")
    gw = await start_gateway(chained_config(slapd, kdc, first))
    url = f"ws://localhost:{gw.port_of('admins')}/admins"
    alice = initiator(kdc.kinit("alice", tmp_path / "alice.cc"))
    async with http.ws_connect(url, headers=negotiate(alice.step())) as ws:  # alice is in gw-admins
        await ws.send_str("hi")
        assert (await ws.receive()).data == "hi"
    bob = initiator(kdc.kinit("bob", tmp_path / "bob.cc"))  # a valid ticket, not in gw-admins
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers=negotiate(bob.step()))
    assert refused.value.status == 403


async def test_a_chained_ldap_module_alone_lets_nobody_in(start_gateway, slapd, kdc, tmp_path, http):
    (tmp_path / "ldap-admin.pw").write_text(ADMIN_PW + "\n")
    text = chained_config(slapd, kdc, "").replace("Negotiate", "Basic")
    gw = await start_gateway(text)
    url = f"ws://localhost:{gw.port_of('admins')}/admins"
    for headers in ({}, basic("alice", "alicepw"), basic("alice", "wrong")):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers=headers)
        assert refused.value.status in (401, 403)
