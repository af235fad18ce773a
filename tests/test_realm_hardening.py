"""Security hardening of realms: no fail-open realm, only the realm's own credentials count, ambiguous
credentials are a bad request, revocation outlives the connection, nothing opens that is already expired."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import textwrap
import time

import jwt
import pytest
from aiohttp import web
from multidict import CIMultiDict

from wsgate.cli import main

from .conftest import port_of
from .test_realms import backend, basic, gw, issuer, realm_config, refused, users  # noqa: F401  (fixtures among them)

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
    gateway = await start_gateway(text, name=name)
    error = await refused(http, gateway, "echo")
    assert error.status == 401 and error.headers["WWW-Authenticate"] == 'Application Basic realm="Demo"'
    assert (await refused(http, gateway, "echo", headers=basic("joe", "wrong"))).status == 403
    ws = await http.ws_connect(f"ws://127.0.0.1:{gateway.port_of('echo')}/echo", headers=basic("eve", "pa:ss wörd"))
    await ws.close()  # any authenticated user, even one without roles


@pytest.mark.parametrize("version", ["2014/09", "2015/11"])
async def test_older_kaazing_schemas_drop_an_unconstrained_realm(start_gateway, http, users, version, caplog):  # noqa: F811
    gateway = await start_gateway(KAAZING_XML.format(version=version), name="gateway-config.xml")
    assert gateway.config.service("echo").realm_name is None and gateway.config.service("echo").dropped_realm == "demo"
    assert "is NOT authenticated" in caplog.text
    ws = await http.ws_connect(f"ws://127.0.0.1:{gateway.port_of('echo')}/echo")  # as Kaazing's translator leaves it
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


# -- 2. a realm reads only its own scheme and its configured token locations --------------------

MIXED_REALMS = """
service:
  - name: tokens
    accept: ws://127.0.0.1:0/tokens
    type: echo
    realm-name: tokens
  - name: basic
    accept: ws://127.0.0.1:0/basic
    type: echo
    realm-name: basic
  - name: nochallenge
    accept: ws://127.0.0.1:0/nochallenge
    type: echo
    realm-name: nochallenge
security:
  realm:
    - name: tokens
      authentication:
        http-challenge-scheme: Application Token
        login-modules:
          login-module:
            - type: jwt
              success: sufficient
              options: {{jwks-url: "{jwks}", issuer: "https://issuer.test", audience: wsgate-tests}}
            - type: file
              success: sufficient
              options: {{file: jaas-config.xml}}
    - name: basic
      description: Basic
      authentication:
        http-challenge-scheme: Basic
        login-modules:
          login-module:
            - type: jwt
              success: sufficient
              options: {{jwks-url: "{jwks}", issuer: "https://issuer.test", audience: wsgate-tests}}
            - type: file
              success: sufficient
              options: {{file: jaas-config.xml}}
    - name: nochallenge
      authentication:
        login-modules:
          login-module:
            type: file
            options: {{file: jaas-config.xml}}
"""


@pytest.fixture
async def mixed(start_gateway, users, issuer):  # noqa: F811
    return await start_gateway(MIXED_REALMS.format(jwks=issuer.url))


async def test_credentials_of_another_scheme_never_reach_the_login_modules(mixed, http, issuer):  # noqa: F811
    token = issuer.token()
    for service, headers, challenge in [
        ("tokens", basic("joe", "welcome"), "Application Token"),  # the file module must not see it
        ("tokens", basic("joe", "welcome", "Application Basic"), "Application Token"),
        ("tokens", {"Authorization": "Negotiate YIIBhg=="}, "Application Token"),
        ("tokens", {"Authorization": ""}, "Application Token"),
        ("tokens", {"Authorization": "   "}, "Application Token"),
        ("basic", {"Authorization": f"Bearer {token}"}, 'Basic realm="Basic"'),  # the jwt module must not see it
        ("basic", {"Authorization": f"Token {token}"}, 'Basic realm="Basic"'),
        ("basic", {"Authorization": ""}, 'Basic realm="Basic"'),
    ]:
        error = await refused(http, mixed, service, headers=headers)
        assert (error.status, error.headers.get("WWW-Authenticate")) == (401, challenge), (service, headers)
    # a subprotocol token is read by token realms only
    error = await refused(http, mixed, "basic", protocols=(f"wsgate.token.{token}",))
    assert error.status == 401
    # a realm without a challenge scheme reads no Authorization header at all
    assert (await refused(http, mixed, "nochallenge", headers=basic("joe", "welcome"))).status == 403
    # each realm still takes its own credentials
    for service, headers in [("tokens", {"Authorization": f"Bearer {token}"}), ("basic", basic("joe", "welcome"))]:
        ws = await http.ws_connect(f"ws://127.0.0.1:{mixed.port_of(service)}/{service}", headers=headers)
        await ws.close()
    ws = await http.ws_connect(f"ws://127.0.0.1:{mixed.port_of('tokens')}/tokens", protocols=(f"wsgate.token.{token}",))
    await ws.close()


# -- 10. duplicated or disagreeing credentials are a bad request -----------------------------------


def twice(name: str, first: str, second: str) -> CIMultiDict[str]:
    return CIMultiDict([(name, first), (name, second)])


async def test_duplicated_or_disagreeing_credentials_are_400_before_any_login(gw, http, issuer, backend, caplog):  # noqa: F811
    token, other = issuer.token(jti="a"), issuer.token(jti="b")
    bearer = f"Bearer {token}"
    cases = {
        "two-authorization-headers": ({"headers": twice("Authorization", bearer, bearer)}, "tokens"),
        "two-authorization-basic": (
            {"headers": twice("Authorization", basic("joe", "welcome")["Authorization"], "Basic")},
            "files",
        ),
        "authorization-of-another-scheme-twice": ({"headers": twice("Authorization", "Basic x", bearer)}, "tokens"),
        "token-header-twice": ({"headers": twice("X-Token", token, token)}, "tokens"),
        "authorization-and-other-query-token": (
            {"headers": {"Authorization": bearer}, "params": {"access_token": other}},
            "tokens",
        ),
        "query-token-twice": ({"params": [("access_token", token), ("access_token", token)]}, "tokens"),
        "cookie-twice": ({"headers": {"Cookie": f"token={token}; token={other}"}}, "tokens"),
        "cookie-headers-twice": ({"headers": twice("Cookie", f"token={token}", f"token={token}")}, "tokens"),
        "header-and-other-cookie": ({"headers": {"X-Token": token, "Cookie": f"token={other}"}}, "tokens"),
        "two-subprotocol-tokens": ({"protocols": (f"wsgate.token.{token}", f"wsgate.token.{token}")}, "tokens"),
        "subprotocol-and-other-header": (
            {"protocols": (f"wsgate.token.{token}",), "headers": {"Authorization": f"Bearer {other}"}},
            "tokens",
        ),
    }
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        for case, (kwargs, service) in cases.items():
            error = await refused(http, gw, service, **kwargs)
            assert error.status == 400, case
            assert "WWW-Authenticate" not in error.headers
    assert issuer.fetches == 0  # the jwt module never ran: its keys were never even fetched
    assert backend[2] == [] and backend[1] == []
    reasons = [r.msg["reason"] for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("status") == 400]
    assert len(reasons) == len(cases)  # the listener refuses duplicated Authorization and Cookie lines itself
    assert "Duplicate Authorization header." in reasons and "header:x-token given more than once" in reasons
    assert token not in caplog.text and other not in caplog.text
    # the same token in several places agrees: accepted
    ws = await http.ws_connect(
        f"ws://127.0.0.1:{gw.port_of('tokens')}/tokens",
        headers={"Authorization": bearer, "X-Token": token, "Cookie": f"token={token}"},
        params={"access_token": token},
    )
    await ws.close()


async def test_two_session_cookies_are_400(start_gateway, http, users):  # noqa: F811
    from .test_realms import SESSION_CONFIG

    gateway = await start_gateway(SESSION_CONFIG.format(port=1, authorization_timeout="1 hour"))
    base = f"http://127.0.0.1:{gateway.port_of('trading')}/trading"
    async with http.post(base + "/.wsgate/session", headers=basic("ann", "s3cret")) as response:
        cookie = response.cookies["wsgate_staff"].value
    ws = await http.ws_connect(base.replace("http", "ws"), headers={"Cookie": f"wsgate_staff={cookie}"})
    await ws.close()
    doubled = {"Cookie": f"wsgate_staff={cookie}; wsgate_staff={'A' * 43}"}
    with pytest.raises(Exception) as error:
        await http.ws_connect(base.replace("http", "ws"), headers=doubled)
    assert getattr(error.value, "status", None) == 400


# -- 14. nothing opens that is already due to close; JWT dates are JSON numbers -------------------


async def raw_upgrade(port: int, path: str, headers: dict[str, str], frame: bytes = b"") -> bytes:
    """An upgrade request and (in the same write) a client frame, as a fast client sends them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + frame)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    return head


def masked_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x82, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_token_past_exp_inside_the_leeway_never_opens_nor_dials(gw, http, issuer, backend):  # noqa: F811
    server, received, connections = backend
    late = issuer.token(exp=int(time.time()) - 2)  # the jwt module's 30 s leeway accepts it
    head = await raw_upgrade(
        gw.port_of("tokens"), "/tokens", {"Authorization": f"Bearer {late}"}, masked_frame(b"must not pass")
    )
    assert head.startswith(b"HTTP/1.1 403 "), head
    assert b"101" not in head.split(b"\r\n")[0]
    await asyncio.sleep(0.05)  # give a (wrongly) forwarded frame time to arrive
    assert received == [] and connections == []  # the back end got nothing, was not even dialled
    # a refresh or a new session with it is refused alike
    ws = await http.ws_connect(
        f"ws://127.0.0.1:{gw.port_of('tokens')}/tokens", headers={"Authorization": f"Bearer {issuer.token()}"}
    )
    refresh = f"http://127.0.0.1:{gw.port_of('tokens')}" + ws._response.headers["Wsgate-Refresh"]
    async with http.post(refresh, headers={"Authorization": f"Bearer {late}"}) as response:
        assert response.status == 403
    await ws.send_bytes(b"still open")
    assert (await asyncio.wait_for(ws.receive(), 2)).data == b"still open"
    await ws.close()


def signed(issuer, **claims: object) -> str:  # noqa: F811
    """A token with claims exactly as given (null, NaN, strings), which ``issuer.token`` cannot express."""
    now = int(time.time())
    body = {"iss": "https://issuer.test", "aud": "wsgate-tests", "sub": "alice", "exp": now + 300, "iat": now}
    body.update(claims)
    payload = json.dumps(body).encode()  # NaN and Infinity come out as the bare words Python's json reads back
    return jwt.api_jws.encode(payload, issuer.rsa, algorithm="RS256", headers={"kid": "rsa1"})


NON_NUMERIC_DATES = {
    "exp-string": {"exp": str(int(time.time()) + 3600)},
    "exp-float-string": {"exp": f"{time.time() + 3600:.1f}"},
    "exp-true": {"exp": True},
    "exp-null": {"exp": None},
    "exp-nan": {"exp": float("nan")},
    "exp-infinity": {"exp": float("inf")},
    "exp-list": {"exp": [int(time.time()) + 3600]},
    "nbf-string": {"nbf": str(int(time.time()) - 60)},
    "nbf-false": {"nbf": False},
    "nbf-null": {"nbf": None},
    "iat-string": {"iat": str(int(time.time()))},
    "iat-true": {"iat": True},
    "iat-nan": {"iat": float("nan")},
}


@pytest.mark.parametrize("case", list(NON_NUMERIC_DATES))
async def test_jwt_dates_that_are_not_json_numbers_are_refused(gw, http, issuer, backend, case):  # noqa: F811
    token = signed(issuer, **NON_NUMERIC_DATES[case])
    error = await refused(http, gw, "tokens", headers={"Authorization": f"Bearer {token}"})
    assert error.status == 403 and "WWW-Authenticate" not in error.headers
    assert backend[2] == []


async def test_numeric_dates_still_pass(gw, http, issuer):  # noqa: F811
    token = signed(issuer, exp=time.time() + 300.5, nbf=int(time.time()) - 5, iat=time.time() - 1.25)
    ws = await http.ws_connect(
        f"ws://127.0.0.1:{gw.port_of('tokens')}/tokens", headers={"Authorization": f"Bearer {token}"}
    )
    await ws.close()


# -- 7. revocation outlives the connection ------------------------------------------------------


ROOT = basic("root", "t0ps3cret")


@pytest.fixture
async def revoking(start_gateway, users, issuer, backend):  # noqa: F811
    """The realms of test_realms (files: Basic, tokens: JWT with sessions) plus a management service."""

    async def start(revocation_timeout: str = "") -> object:
        users.write_text(
            users.read_text().replace(
                "</jaas-config>",
                "<user><name>root</name><password>t0ps3cret</password><role-name>ADMINISTRATOR</role-name></user>\n"
                "</jaas-config>",
            )
        )
        text = realm_config(port_of(backend[0]), issuer.url).replace(
            "security:\n",
            "  - name: admin\n    accept: http://127.0.0.1:0/admin\n    type: management\n    realm-name: files\n"
            "security:\n" + (f"  revocation-timeout: {revocation_timeout}\n" if revocation_timeout else ""),
        )
        text = text.replace(
            "http-challenge-scheme: Application Token\n",
            "http-challenge-scheme: Application Token\n        authorization-mode: recycle\n",
        )
        return await start_gateway(text)

    return start


def ws_url(gateway, service: str) -> str:
    return f"ws://127.0.0.1:{gateway.port_of(service)}/{service}"


def admin_url(gateway, tail: str) -> str:
    return f"http://127.0.0.1:{gateway.port_of('admin')}/admin{tail}"


async def test_a_revoked_user_stays_refused_until_the_revocation_is_lifted(revoking, http):
    gateway = await revoking()
    joe = await http.ws_connect(ws_url(gateway, "files"), headers=basic("joe", "welcome"))
    async with http.delete(admin_url(gateway, "/api/principals/joe"), headers=ROOT) as response:
        assert await response.json() == {"closed": 1}
    assert (await asyncio.wait_for(joe.receive(), 2)).data == 1008
    error = await refused(http, gateway, "files", headers=basic("joe", "welcome"))
    assert error.status == 403 and "WWW-Authenticate" not in error.headers  # like any refused credential
    ann = await http.ws_connect(ws_url(gateway, "files"), headers=basic("ann", "s3cret"))
    await ann.close()
    assert (await gateway.reload())[0]  # a reload keeps revocations
    assert (await refused(http, gateway, "files", headers=basic("joe", "welcome"))).status == 403
    async with http.get(admin_url(gateway, "/api/revocations"), headers=ROOT) as response:
        [entry] = await response.json()
    assert entry["key"] == "user:joe" and abs(entry["until"] - (time.time() + 24 * 3600)) < 60  # the default
    async with http.delete(admin_url(gateway, "/api/revocations/user:joe"), headers=ROOT) as response:
        assert response.status == 200 and await response.json() == {"lifted": True}
    async with http.delete(admin_url(gateway, "/api/revocations/user:joe"), headers=ROOT) as response:
        assert response.status == 404
    joe = await http.ws_connect(ws_url(gateway, "files"), headers=basic("joe", "welcome"))
    await joe.close()


async def test_a_revoked_users_token_stays_refused_until_its_exp(revoking, http, issuer):  # noqa: F811
    gateway = await revoking(revocation_timeout="1s")
    exp = int(time.time()) + 300
    token = issuer.token(jti="t1", exp=exp)
    live = await http.ws_connect(ws_url(gateway, "tokens"), headers={"Authorization": f"Bearer {token}"})
    assert await gateway.revoke(user="alice") == 1
    assert (await asyncio.wait_for(live.receive(), 2)).data == 1008
    entries = await gateway.revocations_in_force()
    assert entries["jti:t1"] == exp and abs(entries["user:alice"] - (time.time() + 1)) < 2
    reencoded = issuer.token("ec1", jti="t1", exp=exp)  # the same jti, another encoding and signature
    for again in (token, reencoded):
        assert (await refused(http, gateway, "tokens", headers={"Authorization": f"Bearer {again}"})).status == 403
    await asyncio.sleep(1.1)  # past revocation-timeout: alice may come back, but not with the revoked token
    assert (await refused(http, gateway, "tokens", headers={"Authorization": f"Bearer {token}"})).status == 403
    fresh = await http.ws_connect(ws_url(gateway, "tokens"), headers={"Authorization": f"Bearer {issuer.token()}"})
    await fresh.close()


async def test_a_revoked_token_is_refused_at_upgrade_refresh_and_session(revoking, http, issuer):  # noqa: F811
    gateway = await revoking()
    plain = issuer.token()  # no jti: known by its SHA-256
    other = issuer.token(jti="other")
    async with http.post(admin_url(gateway, "/api/revocations"), headers=ROOT, json={"token": plain}) as response:
        assert await response.json() == {"closed": 0}
    async with http.get(admin_url(gateway, "/api/revocations"), headers=ROOT) as response:
        [entry] = await response.json()
    assert entry["key"].startswith("token:") and len(entry["key"]) == 6 + 64 and plain not in entry["key"]
    assert (await refused(http, gateway, "tokens", headers={"Authorization": f"Bearer {plain}"})).status == 403
    # in-place refresh with the revoked token, on a live connection of the same user
    live = await http.ws_connect(ws_url(gateway, "tokens"), headers={"Authorization": f"Bearer {other}"})
    refresh = f"http://127.0.0.1:{gateway.port_of('tokens')}" + live._response.headers["Wsgate-Refresh"]
    async with http.post(refresh, headers={"Authorization": f"Bearer {plain}"}) as response:
        assert response.status == 403
    await live.close()
    # a session opened before the token was revoked opens nothing afterwards
    session_url = f"http://127.0.0.1:{gateway.port_of('tokens')}/tokens/.wsgate/session"
    async with http.post(session_url, headers={"Authorization": f"Bearer {other}"}) as response:
        cookie = {"Cookie": f"wsgate_tokens={response.cookies['wsgate_tokens'].value}"}
    ws = await http.ws_connect(ws_url(gateway, "tokens"), headers=cookie)
    await ws.close()
    await gateway.revoke(token=other)
    error = await refused(http, gateway, "tokens", headers=cookie)
    assert error.status == 401  # the session no longer counts: nothing valid presented
    async with http.get(session_url, headers=cookie) as response:
        assert response.status == 401
    async with http.post(session_url, headers={"Authorization": f"Bearer {other}"}) as response:
        assert response.status == 403 and "Set-Cookie" not in response.headers


async def test_memory_revocations_expire_and_never_shorten():
    from wsgate.state import MemoryRevocations, identity_keys

    store = MemoryRevocations()
    await store.revoke("user:joe", 100.0)
    await store.revoke("user:joe", 50.0)  # a shorter second revocation does not lift the first early
    assert await store.revoked(["user:ann", "user:joe"], now=99.0) == "user:joe"
    assert await store.revoked(["user:joe"], now=100.0) is None
    assert await store.entries(now=99.0) == {"user:joe": 100.0}
    assert await store.entries(now=100.0) == {}  # expired entries are pruned
    assert identity_keys("joe", "j1", "ab") == ["user:joe", "jti:j1", "token:ab"]
    assert identity_keys(None, None, None) == []


@pytest.mark.parametrize("version", ["2015/11", "2016/06"])
def test_a_management_service_keeps_its_realm_and_administrator_default_in_every_namespace(
    tmp_path,
    users,  # noqa: F811
    version,
):
    from wsgate.catalog import load_config

    text = KAAZING_XML.format(version=version).replace(
        "  <security>",
        "  <service>\n    <name>admin</name>\n    <accept>http://127.0.0.1:0/admin</accept>\n"
        "    <type>management</type>\n    <realm-name>demo</realm-name>\n  </service>\n  <security>",
    )
    path = tmp_path / "gateway-config.xml"
    path.write_text(text)
    admin = load_config(path).service("admin")
    assert admin.realm_name == "demo" and admin.authorization_constraints[0].require_roles == ("ADMINISTRATOR",)


async def test_a_revocation_while_the_back_end_is_dialled_refuses_the_upgrade(start_gateway, http, users, issuer):  # noqa: F811
    dialled, release = asyncio.Event(), asyncio.Event()
    frames: list[object] = []

    async def slow_backend(request: web.Request) -> web.WebSocketResponse:
        dialled.set()
        await release.wait()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            frames.append(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", slow_backend)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        gateway = await start_gateway(
            realm_config(0, issuer.url).replace(
                "connect: tcp://127.0.0.1:0\n    type: proxy\n    realm-name: files",
                f"connect: ws://127.0.0.1:{port}/ws\n    type: proxy\n    realm-name: files",
                1,
            )
        )
        upgrade = asyncio.ensure_future(
            raw_upgrade(gateway.port_of("files"), "/files", basic("joe", "welcome"), masked_frame(b"late"))
        )
        await asyncio.wait_for(dialled.wait(), 5)  # authenticated; the gateway is dialling the back end
        assert await gateway.revoke(user="joe") == 0  # nothing live yet
        release.set()
        head = await upgrade
        assert head.startswith(b"HTTP/1.1 403 "), head
        assert frames == []
    finally:
        release.set()
        await runner.cleanup()
