"""Kerberos realms against a real MIT KDC on loopback: SPNEGO tokens from python-gssapi with the user's
ticket cache, validated by the gateway's ``kerberos5`` module with its keytab. Every refusal is the
realm's 401/403 and the back end never sees a byte."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from wsgate.catalog import load_config
from wsgate.errors import ConfigError
from wsgate.gateway import Gateway

from .conftest import port_of, tcp_echo_server
from .kdc import REALM, Kdc, realm_yaml

gssapi = pytest.importorskip("gssapi")
SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")


def realm_config(kdc: Kdc, scheme: str = "Negotiate", options: str = "", modules: str = "") -> str:
    return f"""
service:
  - name: kerberized
    accept: ws://localhost:0/k
    type: echo
    realm-name: corp
    authorization-constraint:
      require-role: AUTHORIZED
security:
{realm_yaml(kdc, scheme, options, modules)}"""


def initiator(ccache: Path, service: str = "HTTP@localhost") -> Any:
    """A SPNEGO initiator with the ticket cache ``ccache`` (what a browser or ``curl --negotiate`` does)."""
    credentials = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{ccache}"})
    return gssapi.SecurityContext(
        name=gssapi.Name(service, gssapi.NameType.hostbased_service),
        mech=SPNEGO,
        usage="initiate",
        creds=credentials,
        flags=gssapi.RequirementFlag.mutual_authentication,
    )


def negotiate(token: bytes, scheme: str = "Negotiate") -> dict[str, str]:
    return {"Authorization": f"{scheme} {base64.b64encode(token).decode()}"}


async def refused(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Any:
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await http.ws_connect(url, headers=headers or {})
    return error.value


@pytest.fixture
def alice(kdc: Kdc, tmp_path: Path) -> Path:
    return kdc.kinit("alice", tmp_path / "alice.cc")


async def test_a_ticket_opens_the_socket_and_the_server_proves_itself(start_gateway, kdc, alice, http) -> None:
    gateway = await start_gateway(realm_config(kdc))
    port = gateway.port_of("kerberized")
    url = f"http://localhost:{port}/k"
    first = await refused(http, url)
    assert first.status == 401 and first.headers["WWW-Authenticate"] == "Negotiate"
    context = initiator(alice)
    async with http.ws_connect(url, headers=negotiate(context.step())) as ws:
        scheme, _, token = ws._response.headers["WWW-Authenticate"].partition(" ")
        assert scheme == "Negotiate"
        context.step(base64.b64decode(token))  # the gateway's AP-REP: mutual authentication
        assert context.complete
        await ws.send_str("hello")
        assert (await ws.receive()).data == "hello"


async def test_the_connection_lives_no_longer_than_the_ticket(start_gateway, kdc, tmp_path, http) -> None:
    ccache = kdc.kinit("bob", tmp_path / "short.cc", lifetime="4s")
    gateway = await start_gateway(realm_config(kdc))
    url = f"http://localhost:{gateway.port_of('kerberized')}/k"
    async with http.ws_connect(url, headers=negotiate(initiator(ccache).step())) as ws:
        expires = int(ws._response.headers["Wsgate-Expires"])
        assert expires <= time.time() + 5
        message = await asyncio.wait_for(ws.receive(), 10)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008


async def test_replayed_garbled_and_foreign_tokens_are_refused(start_gateway, kdc, alice, http) -> None:
    gateway = await start_gateway(realm_config(kdc))
    url = f"http://localhost:{gateway.port_of('kerberized')}/k"
    token = initiator(alice).step()
    async with http.ws_connect(url, headers=negotiate(token)):
        pass
    for headers in (
        negotiate(token),  # the same token again: a replay
        negotiate(token[:-7] + b"garbage"),
        {"Authorization": "Negotiate not*base64"},
        negotiate(b"\x60\x03\x06\x01\x00"),  # well-formed DER, no mechanism
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers=headers)
        assert refused.value.status == 403, headers


async def test_a_user_without_the_role_is_forbidden(start_gateway, kdc, tmp_path, http) -> None:
    carol = kdc.kinit("carol", tmp_path / "carol.cc")
    gateway = await start_gateway(realm_config(kdc))
    url = f"http://localhost:{gateway.port_of('kerberized')}/k"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers=negotiate(initiator(carol).step()))
    assert refused.value.status == 403


async def test_a_realm_the_module_does_not_accept_is_forbidden(start_gateway, kdc, alice, http) -> None:
    gateway = await start_gateway(realm_config(kdc, options="                realms: OTHER.TEST"))
    url = f"http://localhost:{gateway.port_of('kerberized')}/k"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers=negotiate(initiator(alice).step()))
    assert refused.value.status == 403


async def test_application_negotiate_for_kaazing_clients(start_gateway, kdc, alice, http) -> None:
    gateway = await start_gateway(realm_config(kdc, scheme="Application Negotiate"))
    url = f"http://localhost:{gateway.port_of('kerberized')}/k"
    first = await refused(http, url)
    assert first.status == 401 and first.headers["WWW-Authenticate"] == "Application Negotiate"
    context = initiator(alice)
    async with http.ws_connect(url, headers=negotiate(context.step(), "Application Negotiate")) as ws:
        scheme, _, token = ws._response.headers["WWW-Authenticate"].rpartition(" ")
        assert scheme == "Application Negotiate"
        context.step(base64.b64decode(token))
        assert context.complete


async def test_nothing_reaches_the_back_end_without_a_ticket(start_gateway, kdc, http) -> None:
    backend, received = await tcp_echo_server()
    text = realm_config(kdc).replace("type: echo", f"type: proxy\n    connect: tcp://127.0.0.1:{port_of(backend)}")
    gateway = await start_gateway(text)
    url = f"http://localhost:{gateway.port_of('kerberized')}/k"
    for headers in ({}, {"Authorization": "Negotiate AAAA"}, {"Authorization": "Basic YWxpY2U6YWxpY2Vwdw=="}):
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(url, headers=headers)
    backend.close()
    assert received == []


@pytest.mark.parametrize(
    ("change", "element", "message"),
    [
        (('isInitiator: "false"', 'isInitiator: "true"'), "options/isInitiator", "must be false"),
        (("principal: HTTP/localhost", "principal: HTTP/nokey"), "options/keyTab", "no key for"),
        (("http-challenge-scheme: Negotiate", "http-challenge-scheme: Basic"), "http-challenge-scheme", "Negotiate"),
    ],
)
def test_config_errors_name_the_element(kdc, tmp_path, change, element, message) -> None:
    text = realm_config(kdc).replace(*change)
    (tmp_path / "gateway.yaml").write_text(text)
    with pytest.raises(ConfigError) as error:
        Gateway(load_config(tmp_path / "gateway.yaml"))
    assert element in str(error.value) and message in str(error.value)


def test_gss_alone_is_refused_at_load(kdc, tmp_path) -> None:
    text = realm_config(kdc).replace(
        "            - type: kerberos5", "            - type: gss\n            - type: kerberos5"
    )
    (tmp_path / "gateway.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"login-module\[1\]/type.*put a kerberos5"):
        Gateway(load_config(tmp_path / "gateway.yaml"))


async def test_an_expired_ticket_is_refused(start_gateway, kdc, tmp_path, http) -> None:
    ccache = kdc.kinit("alice", tmp_path / "old.cc", lifetime="2s")
    gateway = await start_gateway(realm_config(kdc))
    url = f"http://localhost:{gateway.port_of('kerberized')}/k"
    token = initiator(ccache).step()  # made while the ticket was valid, presented after its end
    await asyncio.sleep(3.5)  # the ticket's 2 s, then the test krb5.conf's 1 s clockskew
    assert (await refused(http, url, negotiate(token))).status == 403


async def test_a_fresh_ticket_extends_the_connection_in_place(start_gateway, kdc, tmp_path, http) -> None:
    short = kdc.kinit("bob", tmp_path / "short.cc", lifetime="3s")
    gateway = await start_gateway(realm_config(kdc))
    port = gateway.port_of("kerberized")
    async with http.ws_connect(f"http://localhost:{port}/k", headers=negotiate(initiator(short).step())) as ws:
        first = int(ws._response.headers["Wsgate-Expires"])
        refresh = f"http://localhost:{port}{ws._response.headers['Wsgate-Refresh']}"
        fresh = kdc.kinit("bob", tmp_path / "fresh.cc")
        async with http.post(refresh, headers=negotiate(initiator(fresh).step())) as answer:
            assert answer.status == 200, await answer.text()
            assert answer.headers["WWW-Authenticate"].startswith("Negotiate ")  # the gateway proves itself again
        await asyncio.sleep(4)  # past the first ticket's end: still open
        await ws.send_str("still here")
        assert (await asyncio.wait_for(ws.receive(), 3)).data == "still here"
        assert first <= time.time()
        alice = kdc.kinit("alice", tmp_path / "alice2.cc")
        async with http.post(refresh, headers=negotiate(initiator(alice).step())) as answer:
            assert answer.status == 403  # another principal cannot take the connection over


async def test_a_protected_http_resource_answers_with_the_mutual_token(
    start_gateway, kdc, alice, tmp_path, http
) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("inside")
    text = (
        realm_config(kdc)
        .replace(
            "    type: echo\n",
            "    type: directory\n    properties:\n      directory: /web\n      welcome-file: index.html\n",
        )
        .replace("accept: ws://localhost:0/k", "accept: http://localhost:0/k")
    )
    gateway = await start_gateway(text)
    url = f"http://localhost:{gateway.port_of('kerberized')}/k/"
    async with http.get(url) as first:
        assert first.status == 401 and first.headers["WWW-Authenticate"] == "Negotiate"
    context = initiator(alice)
    async with http.get(url, headers=negotiate(context.step())) as answer:
        assert answer.status == 200 and await answer.text() == "inside"
        context.step(base64.b64decode(answer.headers["WWW-Authenticate"].partition(" ")[2]))
        assert context.complete


def test_a_replaced_keytab_rebuilds_the_realm_on_reload(kdc, tmp_path) -> None:
    from wsgate.security.realms import module_files

    (tmp_path / "gateway.yaml").write_text(realm_config(kdc))
    realm = load_config(tmp_path / "gateway.yaml").security.realms["corp"]
    before = module_files(realm, tmp_path)
    assert any(name.endswith("/keyTab") for name, _ in before)
    keytab = tmp_path / "copy.keytab"
    keytab.write_bytes(kdc.keytab.read_bytes() + b"\0")
    moved = realm_config(kdc).replace(str(kdc.keytab), str(keytab))
    (tmp_path / "gateway.yaml").write_text(moved)
    realm = load_config(tmp_path / "gateway.yaml").security.realms["corp"]
    first = module_files(realm, tmp_path)
    keytab.write_bytes(kdc.keytab.read_bytes())
    assert module_files(realm, tmp_path) != first


def test_the_replay_guard_remembers_a_window_and_is_bounded() -> None:
    from wsgate.security.login.kerberos import ReplayGuard

    guard = ReplayGuard(window=10, limit=3)
    assert guard.first(b"a", now=0) and not guard.first(b"a", now=5)
    assert guard.first(b"a", now=11)  # outside the window: Kerberos itself refuses so old an authenticator
    for token in (b"b", b"c", b"d"):
        assert guard.first(token, now=12)
    assert len(guard.seen) <= 3


def test_the_replay_cache_folder_must_be_private(kdc, tmp_path) -> None:
    folder = tmp_path / "open"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    text = realm_config(kdc).replace(f"replay-cache: {kdc.folder / 'rcache'}", f"replay-cache: {folder}")
    (tmp_path / "gateway.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"options/replay-cache.*chmod 700"):
        Gateway(load_config(tmp_path / "gateway.yaml"))


async def test_bare_kerberos_tokens_pass_and_other_mechanisms_do_not(start_gateway, kdc, alice, http) -> None:
    gateway = await start_gateway(realm_config(kdc))
    url = f"http://localhost:{gateway.port_of('kerberized')}/k"
    credentials = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{alice}"})
    target = gssapi.Name("HTTP@localhost", gssapi.NameType.hostbased_service)
    bare = gssapi.SecurityContext(name=target, mech=gssapi.MechType.kerberos, usage="initiate", creds=credentials)
    async with http.ws_connect(url, headers=negotiate(bare.step())) as ws:
        await ws.send_str("bare")
        assert (await ws.receive()).data == "bare"
    iakerb = gssapi.OID.from_int_seq("1.3.6.1.5.2.5")  # the gateway would relay the client's KDC traffic
    relaying = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{alice}"}, mechs=[iakerb])
    relay = gssapi.SecurityContext(name=target, mech=iakerb, usage="initiate", creds=relaying)
    assert (await refused(http, url, negotiate(relay.step()))).status == 403


def test_a_refused_ticket_leaves_nothing_for_gss_or_later_modules(kdc, tmp_path) -> None:
    from wsgate.security.challenges import Credentials
    from wsgate.security.login import LoginAttempt
    from wsgate.security.login.kerberos import Kerberos5LoginModule, _Done

    options = {"keyTab": str(kdc.keytab), "principal": f"HTTP/localhost@{REALM}", "replay-cache": str(tmp_path / "rc")}
    module = Kerberos5LoginModule(options, "realm/login-module[1]", tmp_path)
    attempt = LoginAttempt(Credentials(), "192.0.2.1")
    for done in (_Done(f"alice@{REALM}", 0, None), _Done("alice@OTHER.TEST", 600, None)):
        assert type(module._succeeded(done, attempt)).__name__ == "Failed"
    assert attempt.shared == {}  # a gss after an optional kerberos5 finds no principal to confirm


async def test_gss_after_an_optional_kerberos5_that_failed_lets_nobody_in(start_gateway, kdc, http) -> None:
    text = realm_config(kdc).replace(
        "            - type: kerberos5\n", "            - type: kerberos5\n              success: optional\n"
    )
    assert "success: optional" in text
    gateway = await start_gateway(text)
    url = f"http://localhost:{gateway.port_of('kerberized')}/k"
    for headers in ({"Authorization": "Negotiate AAAA"}, {"Authorization": "Negotiate YIIB"}):
        assert (await refused(http, url, headers)).status in (401, 403)
