"""Realms on loopback, attacker's view: every denied upgrade gets the exact status and the back end
never sees a byte; accepted ones are bounded by session timeouts and can be revoked."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from pathlib import Path

import aiohttp
import bcrypt
import jwt
import pytest
from aiohttp import web
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .conftest import port_of, tcp_echo_server

ISSUER = "https://issuer.test"
AUDIENCE = "wsgate-tests"


def basic(user: str, password: str, scheme: str = "Basic") -> dict[str, str]:
    return {"Authorization": f"{scheme} " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def users(tmp_path: Path) -> Path:
    argon = PasswordHasher().hash("s3cret")
    hashed = bcrypt.hashpw(b"hunter2", bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "jaas-config.xml"
    path.write_text(f"""<?xml version="1.0"?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>
  <user><name>ann</name><password>{argon}</password><role-name>AUTHORIZED</role-name><role-name>TRADER</role-name></user>
  <user><name>bob</name><password>{hashed}</password><role-name>AUTHORIZED</role-name></user>
  <user><name>eve</name><password>pa:ss wörd</password></user>
</jaas-config>
""")
    return path


class Issuer:
    """A JWKS endpoint on loopback whose keys can rotate, counting fetches."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.kids = {"rsa1": self.rsa, "ec1": self.ec}
        self.fetches = 0
        self.up = True
        self.runner: web.AppRunner | None = None
        self.url = ""

    def jwks(self) -> dict:
        keys = []
        for kid, key in self.kids.items():
            algorithm = (
                jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
            )
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    async def start(self) -> None:
        async def handler(request: web.Request) -> web.Response:
            self.fetches += 1
            if not self.up:
                return web.Response(status=503)
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/jwks.json", handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/jwks.json"  # type: ignore[union-attr]

    def token(self, kid: str = "rsa1", **claims: object) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, "iat": now, "roles": ["AUTHORIZED"]}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        key = self.kids[kid]
        algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid})


@pytest.fixture
async def issuer():
    issuer = Issuer()
    await issuer.start()
    yield issuer
    assert issuer.runner is not None
    await issuer.runner.cleanup()


@pytest.fixture
async def backend():
    server, received = await tcp_echo_server()
    connections: list[int] = []
    original = server._protocol_factory  # count connections through a wrapper

    def counting_factory():
        connections.append(1)
        return original()

    server._protocol_factory = counting_factory
    async with server:
        yield server, received, connections


def realm_config(backend_port: int, jwks_url: str, extra_realm: str = "", session_timeout: str = "") -> str:
    timeout = f"\n        session-timeout: {session_timeout}" if session_timeout else ""
    return f"""
service:
  - name: files
    accept: ws://127.0.0.1:0/files
    connect: tcp://127.0.0.1:{backend_port}
    type: proxy
    realm-name: files
    authorization-constraint:
      require-role: AUTHORIZED
  - name: trading
    accept: ws://127.0.0.1:0/trading
    connect: tcp://127.0.0.1:{backend_port}
    type: proxy
    realm-name: files
    authorization-constraint:
      require-role: [AUTHORIZED, TRADER]
  - name: tokens
    accept: ws://127.0.0.1:0/tokens
    connect: tcp://127.0.0.1:{backend_port}
    type: proxy
    realm-name: tokens
    authorization-constraint:
      require-role: "*"
  - name: token-admin
    accept: ws://127.0.0.1:0/token-admin
    type: echo
    realm-name: tokens
    authorization-constraint:
      require-role: ADMIN
security:
  realm:
    - name: files
      description: Files Realm
      authentication:
        http-challenge-scheme: Application Basic{timeout}
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
    - name: tokens
      description: Token Realm
      authentication:
        http-challenge-scheme: Application Token
        http-header: X-Token
        http-query-parameter: access_token
        http-cookie: token
        login-modules:
          login-module:
            type: jwt
            options:
              jwks-url: {jwks_url}
              issuer: {ISSUER}
              audience: {AUDIENCE}
              jwks-refetch-interval: 1s
{extra_realm}"""


@pytest.fixture
async def gw(start_gateway, users, issuer, backend):
    server, _, _ = backend
    return await start_gateway(realm_config(port_of(server), issuer.url))


async def refused(http, gw, service: str, headers=None, params=None, protocols=()) -> aiohttp.WSServerHandshakeError:
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await http.ws_connect(
            f"ws://127.0.0.1:{gw.port_of(service)}/{service}", headers=headers, params=params, protocols=protocols
        )
    return error.value


async def echo_through(http, gw, service: str, **kwargs) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"ws://127.0.0.1:{gw.port_of(service)}/{service}", **kwargs)
    await ws.send_bytes(b"hello")
    assert (await asyncio.wait_for(ws.receive(), 5)).data == b"hello"
    return ws


# -- Basic / file module ---------------------------------------------------------------------

# Kaazing's rules (reference §3.2): no answer to the challenge → 401 and the challenge again;
# an answer that fails → 403. Within each class every failure looks exactly the same.
BASIC_FAILURES = {
    "missing": (None, 401),
    "wrong-scheme": ({"Authorization": "Bearer abc.def.ghi"}, 401),
    "bare-scheme": ({"Authorization": "Basic"}, 401),
    "wrong-password": (basic("joe", "WELCOME"), 403),
    "unknown-user": (basic("mallory", "welcome"), 403),
    "empty-password": (basic("joe", ""), 403),
    "garbled-base64": ({"Authorization": "Basic !!!not-base64!!!"}, 403),
    "no-colon": ({"Authorization": "Basic " + base64.b64encode(b"joewelcome").decode()}, 403),
    "empty-user": (basic("", "welcome"), 403),
    "ldap-injection-user": (basic("*)(uid=*))(|(uid=*", "x"), 403),
    "sql-injection-user": (basic("joe' OR '1'='1", "x"), 403),
    "nul-byte-user": (basic("joe\x00admin", "welcome"), 403),
    "huge-header": ({"Authorization": "Basic " + "A" * 6000}, 403),
    "latin1-password": ({"Authorization": "Basic " + base64.b64encode("joe:wélcome".encode("latin-1")).decode()}, 403),
    "duplicate-header": ("duplicate", 400),  # refused by the listener before the realm (ambiguous header)
    "application-basic-wrong-password": (basic("joe", "nope", "Application Basic"), 403),
}


@pytest.mark.parametrize("case", list(BASIC_FAILURES), ids=list(BASIC_FAILURES))
async def test_basic_failures_look_the_same_within_their_status(gw, http, backend, case):
    headers, status = BASIC_FAILURES[case]
    if headers == "duplicate":
        from multidict import CIMultiDict

        headers = CIMultiDict(
            [
                ("Authorization", basic("joe", "welcome")["Authorization"]),
                ("Authorization", basic("ann", "s3cret")["Authorization"]),
            ]
        )
    error = await refused(http, gw, "files", headers=headers)
    assert error.status == status
    if status == 401:
        assert error.headers["WWW-Authenticate"] == 'Application Basic realm="Files Realm"'
    else:  # 403 for refused credentials, 400 for ambiguous ones
        assert "WWW-Authenticate" not in error.headers
    assert backend[2] == [] and backend[1] == []  # the back end never saw a connection or a byte


@pytest.mark.parametrize(
    ("user", "password", "scheme"),
    [("joe", "welcome", "Basic"), ("ann", "s3cret", "Basic"), ("bob", "hunter2", "Application Basic")],
    ids=["plain", "argon2", "bcrypt-application-basic"],
)
async def test_basic_success_reaches_the_back_end(gw, http, backend, user, password, scheme):
    ws = await echo_through(http, gw, "files", headers=basic(user, password, scheme))
    await ws.close()
    assert backend[2] == [1]


async def test_authenticated_without_the_role_is_403(gw, http, backend):
    error = await refused(http, gw, "trading", headers=basic("joe", "welcome"))
    assert error.status == 403 and "WWW-Authenticate" not in error.headers
    assert backend[2] == []
    error = await refused(http, gw, "files", headers=basic("eve", "pa:ss wörd"))  # valid user, no roles at all
    assert error.status == 403
    ws = await echo_through(http, gw, "trading", headers=basic("ann", "s3cret"))
    await ws.close()


async def test_audit_log_has_the_reason_and_never_the_secret(gw, http, caplog):
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        await refused(http, gw, "files", headers=basic("joe", "not-the-password"))
        ws = await echo_through(http, gw, "files", headers=basic("joe", "welcome"))
        await ws.close()
    assert "bad user name or password for 'joe'" in caplog.text
    granted = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("decision") == "authenticated"]
    assert granted[-1]["user"] == "joe" and granted[-1]["via"] == "credentials"
    assert granted[-1]["roles"] == ["AUTHORIZED"] and granted[-1]["service"] == "files"
    assert "not-the-password" not in caplog.text and "welcome" not in caplog.text


# -- JWT -------------------------------------------------------------------------------------


async def test_jwt_from_every_source(gw, http, issuer, backend, caplog):
    token = issuer.token()
    with caplog.at_level(logging.DEBUG):
        for kwargs in (
            {"headers": {"Authorization": f"Bearer {token}"}},
            {"headers": {"Authorization": f"Application Token {token}"}},
            {"headers": {"X-Token": token}},
            {"params": {"access_token": token}},
            {"headers": {"Cookie": f"token={token}"}},
        ):
            ws = await echo_through(http, gw, "tokens", **kwargs)
            await ws.close()
    assert token not in caplog.text  # query tokens (and all others) are never logged
    assert len(backend[2]) == 5


async def test_jwt_in_subprotocol_is_never_selected(gw, http, issuer):
    ws = await echo_through(http, gw, "tokens", protocols=(f"wsgate.token.{issuer.token()}",))
    assert ws.protocol is None
    await ws.close()


def hs256(claims: dict, secret: bytes) -> str:
    """Algorithm confusion: HMAC-sign with the issuer's public key as the secret (PyJWT refuses to)."""
    import hashlib
    import hmac

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = part(b'{"alg":"HS256","typ":"JWT","kid":"rsa1"}') + "." + part(json.dumps(claims).encode())
    return signing_input + "." + part(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def forged_tokens(issuer: Issuer) -> dict[str, str]:
    now = int(time.time())
    good = issuer.token()
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["ADMIN"]
    tampered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    public_pem = issuer.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT","kid":"rsa1"}').rstrip(b"=").decode()
    return {
        "expired": issuer.token(exp=now - 3600),
        "not-yet-valid": issuer.token(nbf=now + 3600),
        "wrong-issuer": issuer.token(iss="https://evil.test"),
        "wrong-audience": issuer.token(aud="someone-else"),
        "no-exp": issuer.token(exp=None),
        "no-sub": issuer.token(sub=None),
        "alg-none": f"{unsigned}.{payload}.",
        "hs256-with-public-key": hs256(claims, public_pem),
        "tampered-payload": f"{header}.{tampered}.{signature}",
        "signed-by-stranger": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60},
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
            headers={"kid": "rsa1"},
        ),
        "ec-key-claimed-as-rsa": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60},
            issuer.ec,
            algorithm="ES256",
            headers={"kid": "rsa1"},
        ),
        "not-a-jwt": "abc.def",
        "empty": "",
    }


FORGED = [
    "expired",
    "not-yet-valid",
    "wrong-issuer",
    "wrong-audience",
    "no-exp",
    "no-sub",
    "alg-none",
    "hs256-with-public-key",
    "tampered-payload",
    "signed-by-stranger",
    "ec-key-claimed-as-rsa",
    "not-a-jwt",
    "empty",
]


@pytest.mark.parametrize("case", FORGED)
async def test_bad_tokens_are_refused_and_never_reach_the_back_end(gw, http, issuer, backend, case):
    token = forged_tokens(issuer)[case]
    headers = {"Authorization": f"Bearer {token}"} if token else {"Authorization": "Bearer"}
    error = await refused(http, gw, "tokens", headers=headers)
    if token:  # a token was presented and failed: 403, with no hint why
        assert error.status == 403 and "WWW-Authenticate" not in error.headers
    else:  # nothing presented: challenged
        assert error.status == 401 and error.headers["WWW-Authenticate"] == "Application Token"
    assert backend[2] == [] and backend[1] == []


async def test_token_realm_challenges_when_no_token_is_presented(gw, http):
    for headers in ({}, basic("joe", "welcome")):  # Basic is the wrong base scheme for a token realm
        error = await refused(http, gw, "tokens", headers=headers)
        assert error.status == 401 and error.headers["WWW-Authenticate"] == "Application Token"


async def test_token_without_the_role_is_403(gw, http, issuer):
    error = await refused(http, gw, "token-admin", headers={"Authorization": f"Bearer {issuer.token()}"})
    assert error.status == 403
    ws = await echo_through(
        http, gw, "token-admin", headers={"Authorization": f"Bearer {issuer.token(roles=['ADMIN'])}"}
    )
    await ws.close()


async def test_kid_rotation_refetches_the_jwks_once(gw, http, issuer):
    ws = await echo_through(http, gw, "tokens", headers={"Authorization": f"Bearer {issuer.token()}"})
    await ws.close()
    assert issuer.fetches == 1
    issuer.kids["rsa2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await asyncio.sleep(1.1)  # past jwks-refetch-interval
    ws = await echo_through(http, gw, "tokens", headers={"Authorization": f"Bearer {issuer.token('rsa2')}"})
    await ws.close()
    assert issuer.fetches == 2
    # Unknown kids do not make the gateway hammer the issuer.
    for _ in range(5):
        error = await refused(http, gw, "tokens", headers={"Authorization": f"Bearer {issuer.token('rsa2')[:-4]}AAAA"})
        assert error.status == 403
    stranger = issuer.token("ec1").replace(
        issuer.token("ec1").split(".")[0],
        base64.urlsafe_b64encode(b'{"alg":"ES256","kid":"nope"}').rstrip(b"=").decode(),
    )
    for _ in range(5):
        assert (await refused(http, gw, "tokens", headers={"Authorization": f"Bearer {stranger}"})).status == 403
    assert issuer.fetches <= 3


async def test_jwks_down_with_nothing_cached_is_503(start_gateway, http, users, issuer, backend):
    issuer.up = False
    server, received, connections = backend
    gw = await start_gateway(realm_config(port_of(server), issuer.url))
    error = await refused(http, gw, "tokens", headers={"Authorization": f"Bearer {issuer.token()}"})
    assert error.status == 503
    assert connections == []


# -- session bounds and revocation -----------------------------------------------------------


async def test_jwt_expiry_closes_a_live_proxy_connection(gw, http, issuer, backend):
    token = issuer.token(exp=int(time.time()) + 2)
    ws = await echo_through(http, gw, "tokens", headers={"Authorization": f"Bearer {token}"})
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra == "session expired"


async def test_session_timeout_closes_a_live_proxy_connection_and_its_back_end(
    start_gateway, http, users, issuer, backend
):
    server, received, connections = backend
    gw = await start_gateway(realm_config(port_of(server), issuer.url, session_timeout="1s"))
    ws = await echo_through(http, gw, "files", headers=basic("joe", "welcome"))
    started = time.monotonic()
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra == "session expired"
    assert 0.8 < time.monotonic() - started < 3
    for _ in range(100):
        if not gw.runtime.connections:
            break
        await asyncio.sleep(0.02)
    assert not gw.runtime.connections


async def test_revocation_by_user_closes_only_that_users_connections(gw, http, issuer):
    joe = await echo_through(http, gw, "files", headers=basic("joe", "welcome"))
    ann = await echo_through(http, gw, "files", headers=basic("ann", "s3cret"))
    started = time.monotonic()
    assert await gw.revoke(user="joe") == 1
    msg = await asyncio.wait_for(joe.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra == "revoked"
    assert time.monotonic() - started < 1.0
    await ann.send_bytes(b"still here")
    assert (await asyncio.wait_for(ann.receive(), 2)).data == b"still here"
    await ann.close()


async def test_revocation_by_token(gw, http, issuer):
    first, second = issuer.token(jti="1"), issuer.token(jti="2")
    a = await echo_through(http, gw, "tokens", headers={"Authorization": f"Bearer {first}"})
    b = await echo_through(http, gw, "tokens", headers={"Authorization": f"Bearer {second}"})
    assert await gw.revoke(token=first) == 1
    msg = await asyncio.wait_for(a.receive(), 2)
    assert msg.data == 1008
    await b.send_bytes(b"ok")
    assert (await asyncio.wait_for(b.receive(), 2)).data == b"ok"
    await b.close()


# -- certificate module and custom modules ---------------------------------------------------


async def test_certificate_realm_maps_subject_to_roles(start_gateway, http, ca, pem_stores):
    from .conftest import SECURITY_PEM, client_ssl

    gw = await start_gateway(
        """
service:
  - name: desk
    accept: wss://localhost:0/desk
    type: echo
    accept-options:
      ssl.verify-client: optional
    realm-name: certs
    authorization-constraint:
      require-role: TRADER
"""
        + SECURITY_PEM
        + """
  realm:
    name: certs
    authentication:
      login-modules:
        login-module:
          type: certificate
          options:
            principal: subject-cn
            role.TRADER: "OU=Trading"
"""
    )
    url = f"wss://localhost:{gw.port_of('desk')}/desk"
    trader = ca.issue_cert("alice@example.test", common_name="alice", organization_unit_name="Trading")
    clerk = ca.issue_cert("bob@example.test", common_name="bob", organization_unit_name="Back Office")
    async with http.ws_connect(url, ssl=client_ssl(ca, trader)) as ws:
        await ws.send_str("hi")
        assert (await ws.receive()).data == "hi"
    for context in (client_ssl(ca, clerk), client_ssl(ca)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
            await http.ws_connect(url, ssl=context)
        assert error.value.status == 403  # no challenge scheme: failures are 403


CUSTOM_MODULE = """
from wsgate.security.login import Failed, Succeeded


class AllowList:
    def __init__(self, options):
        self.allowed = set(options["addresses"].split(","))

    async def login(self, attempt):
        if attempt.remote in self.allowed:
            return Succeeded(f"host:{attempt.remote}", frozenset({"INTERNAL"}))
        return Failed("address not allowed")
"""


async def test_custom_class_module(start_gateway, http, tmp_path, monkeypatch):
    (tmp_path / "my_login.py").write_text(CUSTOM_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = """
        service:
          - name: internal
            accept: ws://127.0.0.1:0/internal
            type: echo
            realm-name: net
            authorization-constraint:
              require-role: INTERNAL
        security:
          realm:
            name: net
            authentication:
              login-modules:
                login-module:
                  type: class:my_login.AllowList
                  options:
                    addresses: {addresses}
    """
    gw = await start_gateway(config.format(addresses="127.0.0.1"), name="allowed.yaml")
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('internal')}/internal") as ws:
        await ws.send_str("in")
        assert (await ws.receive()).data == "in"
    gw = await start_gateway(config.format(addresses="10.9.9.9"), name="denied.yaml")
    error = await refused(http, gw, "internal")
    assert error.status == 403


@pytest.mark.parametrize(
    ("module", "options", "message"),
    [
        ("class:no_such_module.X", "{}", "cannot import 'no_such_module'"),
        ("class:json.NoSuchClass", "{}", "module 'json' has no 'NoSuchClass'"),
        ("class:collections.OrderedDict", "{}", "has no 'async def login(self, attempt)' method"),
        ("jwt", "{issuer: x, audience: y}", "needs exactly one of jwks-url, jwks-file, key-file"),
        ("jwt", "{jwks-url: 'http://x', issuer: x, audience: y, algorithms: 'HS256,none'}", "HS256, none not allowed"),
        ("jwt", "{jwks-url: 'http://x', audience: y}", "options/issuer: is required"),
        ("file", "{}", "options/file: is required"),
        ("file", "{file: missing.xml}", "cannot read"),
        ("certificate", "{principal: nickname}", "'nickname' is not one of subject-cn"),
        ("certificate", "{role.X: 'OU=('}", "is not a regular expression"),
        ("certificate", "{role.X: '('}", "'(' is not ATTRIBUTE=REGEX"),
        ("jndi", "{}", "the jndi login module is not supported yet"),
        ("ldap", "{}", "options/userProvider: is required"),
        ("ldap", "{userProvider: 'http://x/dc=a'}", "is not an ldap:// or ldaps:// URL"),
        ("ldap", "{userProvider: 'ldap://x/dc=a', userFilter: '(uid=joe)'}", "must contain {USERNAME}"),
        ("ldap", "{userProvider: 'ldap://x/dc=a', usrFilter: '(uid={USERNAME})'}", "options/usrFilter: unknown option"),
        ("ldap", "{userProvider: 'ldap://x/dc=a', starttls: maybe}", "options/starttls: 'maybe' is not one of"),
        ("ldap", "{userProvider: 'ldap://x/dc=a', timeout: soon}", "options/timeout: 'soon' is not a duration"),
        ("ldap", "{userProvider: 'ldap://x/dc=a', pool-size: '0'}", "options/pool-size: '0' is not a positive"),
        ("ldap", "{userProvider: 'ldap://x/dc=a', authenticate: trust}", "options/authenticate: 'trust' is not one of"),
        ("jwt", "{jwks-url: 'http://x', issuer: x, audience: y, leeway: lots}", "options/leeway: 'lots' is not a duration"),
    ],
)
def test_login_module_config_errors_are_located(tmp_path, module, options, message):
    from wsgate.catalog import load_config
    from wsgate.errors import ConfigError
    from wsgate.gateway import Gateway

    path = tmp_path / "g.yaml"
    path.write_text(f"""
service:
  - name: s
    accept: ws://127.0.0.1:0/s
    type: echo
    realm-name: r
    authorization-constraint:
      require-valid-user: ""
security:
  realm:
    name: r
    authentication:
      login-modules:
        login-module:
          type: "{module}"
          options: {options}
""")
    with pytest.raises(ConfigError) as error:
        Gateway(load_config(path))
    assert str(error.value).startswith("security/realm[r]/authentication/login-modules/login-module[1]")
    assert message in str(error.value)


# -- sessions, refresh, authorization-timeout --------------------------------------------------

SESSION_CONFIG = """
service:
  - name: files
    accept: ws://127.0.0.1:0/files
    connect: tcp://127.0.0.1:{port}
    type: proxy
    realm-name: staff
    authorization-constraint:
      require-role: AUTHORIZED
  - name: trading
    accept: ws://127.0.0.1:0/trading
    type: echo
    realm-name: staff
    authorization-constraint:
      require-role: TRADER
security:
  realm:
    name: staff
    description: Staff
    authentication:
      http-challenge-scheme: Application Basic
      authorization-mode: recycle
      authorization-timeout: {authorization_timeout}
      login-modules:
        login-module:
          type: file
          options:
            file: jaas-config.xml
"""


@pytest.fixture
async def staff(start_gateway, users, backend):
    async def start(authorization_timeout: str = "1 hour"):
        server, _, _ = backend
        return await start_gateway(
            SESSION_CONFIG.format(port=port_of(server), authorization_timeout=authorization_timeout)
        )

    return start


def url(gw, service: str, tail: str = "") -> str:
    return f"http://127.0.0.1:{gw.port_of(service)}/{service}{tail}"


async def test_session_cookie_gives_single_sign_on_across_the_realm(staff, http):
    gw = await staff()
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(url(gw, "files", "/.wsgate/session"), headers=basic("ann", "s3cret")) as response:
            assert response.status == 200
            body = await response.json()
            assert body["user"] == "ann" and body["roles"] == ["AUTHORIZED", "TRADER"]
            cookie = response.cookies["wsgate_staff"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        for service in ("files", "trading"):  # no credentials: the cookie alone
            ws = await browser.ws_connect(url(gw, service).replace("http", "ws"))
            await ws.send_bytes(b"sso")
            assert (await asyncio.wait_for(ws.receive(), 5)).data == b"sso"
            await ws.close()
        async with browser.get(url(gw, "files", "/.wsgate/session")) as response:
            assert (await response.json())["user"] == "ann"


async def test_session_login_failures_and_forged_cookies(staff, http):
    gw = await staff()
    async with http.post(url(gw, "files", "/.wsgate/session"), headers=basic("ann", "wrong")) as response:
        assert response.status == 403 and "Set-Cookie" not in response.headers
    async with http.post(url(gw, "files", "/.wsgate/session")) as response:
        assert response.status == 401 and "Set-Cookie" not in response.headers
        assert response.headers["WWW-Authenticate"] == 'Application Basic realm="Staff"'
    forged = {"Cookie": "wsgate_staff=" + "A" * 43}
    assert (await refused(http, gw, "files", headers=forged)).status == 401
    async with http.get(url(gw, "files", "/.wsgate/session"), headers=forged) as response:
        assert response.status == 401
    async with http.post(
        url(gw, "files", "/.wsgate/session"), headers={**basic("ann", "s3cret"), "Origin": "http://evil.example"}
    ) as response:
        assert response.status == 403
    async with http.put(url(gw, "files", "/.wsgate/session"), headers=basic("ann", "s3cret")) as response:
        assert response.status == 405
    async with http.get(url(gw, "files", "/.wsgate/unknown")) as response:
        assert response.status == 404


async def test_logout_closes_the_sessions_live_connections(staff):
    gw = await staff()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(url(gw, "files", "/.wsgate/session"), headers=basic("joe", "welcome")):
            pass
        ws = await browser.ws_connect(url(gw, "files").replace("http", "ws"))
        async with browser.delete(url(gw, "files", "/.wsgate/session")) as response:
            assert (await response.json()) == {"closed": 1}
        msg = await asyncio.wait_for(ws.receive(), 2)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra == "logged out"
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
            await browser.ws_connect(url(gw, "files").replace("http", "ws"))
        assert error.value.status == 401


async def test_revocation_also_ends_the_users_sessions(staff, http):
    gw = await staff()
    async with http.post(url(gw, "files", "/.wsgate/session"), headers=basic("joe", "welcome")) as response:
        token = response.cookies["wsgate_staff"].value
    ws = await http.ws_connect(url(gw, "files").replace("http", "ws"), headers={"Cookie": f"wsgate_staff={token}"})
    assert await gw.revoke(user="joe") == 1
    assert (await asyncio.wait_for(ws.receive(), 2)).data == 1008
    assert (await refused(http, gw, "files", headers={"Cookie": f"wsgate_staff={token}"})).status == 401


async def test_authorization_timeout_closes_unless_refreshed_in_place(staff, http, backend):
    gw = await staff(authorization_timeout="1.5s")
    ws = await echo_through(http, gw, "files", headers=basic("joe", "welcome"))
    refresh = ws._response.headers["Wsgate-Refresh"]
    connection_id = ws._response.headers["Wsgate-Connection-Id"]
    assert refresh == f"/files/.wsgate/refresh/{connection_id}"
    assert abs(int(ws._response.headers["Wsgate-Expires"]) - (time.time() + 1.5)) < 2
    base = f"http://127.0.0.1:{gw.port_of('files')}"
    for _ in range(3):  # 3 refreshes, 0.8 s apart: 2.4 s in all, well past the 1.5 s timeout
        await asyncio.sleep(0.8)
        async with http.post(base + refresh, headers=basic("joe", "welcome")) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["expires"] is None or True
        await ws.send_bytes(b"alive")
        assert (await asyncio.wait_for(ws.receive(), 2)).data == b"alive"
    assert backend[2] == [1]  # the same back-end connection all along
    msg = await asyncio.wait_for(ws.receive(), 3)  # no more refreshes
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra == "authorization expired"


async def test_refresh_needs_the_same_users_fresh_credentials(staff, http):
    gw = await staff()
    ws = await echo_through(http, gw, "files", headers=basic("joe", "welcome"))
    base = f"http://127.0.0.1:{gw.port_of('files')}"
    refresh = ws._response.headers["Wsgate-Refresh"]
    async with http.post(base + refresh, headers=basic("ann", "s3cret")) as response:
        assert response.status == 403  # another user cannot take the connection over
    async with http.post(base + refresh, headers=basic("joe", "nope")) as response:
        assert response.status == 403
    async with http.post(base + refresh) as response:
        assert response.status == 401
    async with http.post(base + "/files/.wsgate/refresh/not-a-connection", headers=basic("joe", "welcome")) as response:
        assert response.status == 404
    async with http.post(
        f"http://127.0.0.1:{gw.port_of('trading')}/trading/.wsgate/refresh/"
        + ws._response.headers["Wsgate-Connection-Id"],
        headers=basic("ann", "s3cret"),
    ) as response:
        assert response.status == 404  # ids are per service
    await ws.close()


async def test_renewing_the_session_extends_its_connections(staff):
    gw = await staff(authorization_timeout="1.5s")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(url(gw, "files", "/.wsgate/session"), headers=basic("joe", "welcome")):
            pass
        ws = await browser.ws_connect(url(gw, "files").replace("http", "ws"))
        await asyncio.sleep(1.0)
        async with browser.post(url(gw, "files", "/.wsgate/session"), headers=basic("joe", "welcome")) as response:
            assert (await response.json())["extended"] == 1
        await asyncio.sleep(1.0)  # past the first deadline
        await ws.send_bytes(b"renewed")
        assert (await asyncio.wait_for(ws.receive(), 2)).data == b"renewed"
        await ws.close()


async def test_a_session_past_its_authorization_timeout_opens_nothing_until_renewed(staff):
    gw = await staff(authorization_timeout="0.5s")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(url(gw, "files", "/.wsgate/session"), headers=basic("joe", "welcome")):
            pass
        await asyncio.sleep(0.7)
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
            await browser.ws_connect(url(gw, "files").replace("http", "ws"))
        assert error.value.status == 401
        async with browser.post(url(gw, "files", "/.wsgate/session"), headers=basic("joe", "welcome")) as response:
            assert response.status == 200
        ws = await browser.ws_connect(url(gw, "files").replace("http", "ws"))
        await ws.close()


async def test_cross_origin_app_signs_in_after_a_preflight(start_gateway, users, backend):
    server, _, _ = backend
    config = SESSION_CONFIG.format(port=port_of(server), authorization_timeout="1 hour").replace(
        "    realm-name: staff\n    authorization-constraint:\n      require-role: AUTHORIZED\n",
        "    realm-name: staff\n    authorization-constraint:\n      require-role: AUTHORIZED\n"
        "    cross-site-constraint:\n      allow-origin: https://app.example\n      allow-methods: GET,POST,DELETE\n"
        "      allow-headers: Authorization\n",
        1,
    )
    gw = await start_gateway(config)
    login = url(gw, "files", "/.wsgate/session")
    async with aiohttp.ClientSession() as http:
        preflight = {
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        }
        async with http.options(login, headers=preflight) as response:  # no credentials on a preflight
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Headers"] == "authorization"
        async with http.post(login, headers={**basic("joe", "welcome"), "Origin": "https://app.example"}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "wsgate_staff" in response.cookies
        async with http.options(login, headers={**preflight, "Origin": "https://evil.example"}) as response:
            assert response.status == 403


async def test_session_timeout_and_refresh_apply_to_broadcast_clients_too(start_gateway, http, users):
    gw = await start_gateway("""
service:
  - name: feed
    accept: ws://127.0.0.1:0/feed
    type: broadcast
    properties:
      accept: tcp://127.0.0.1:0
    realm-name: staff
    authorization-constraint:
      require-role: AUTHORIZED
security:
  realm:
    name: staff
    authentication:
      http-challenge-scheme: Basic
      authorization-timeout: 1s
      login-modules:
        login-module:
          type: file
          options:
            file: jaas-config.xml
""")
    assert (await refused(http, gw, "feed")).status == 401
    ws = await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('feed')}/feed", headers=basic("joe", "welcome"))
    kept = await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('feed')}/feed", headers=basic("bob", "hunter2"))
    await asyncio.sleep(0.6)
    refresh = f"http://127.0.0.1:{gw.port_of('feed')}" + kept._response.headers["Wsgate-Refresh"]
    async with http.post(refresh, headers=basic("bob", "hunter2")) as response:
        assert response.status == 200
    msg = await asyncio.wait_for(ws.receive(), 3)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra == "authorization expired"
    _, writer = await asyncio.open_connection("127.0.0.1", gw.services["feed"].feed_port)
    writer.write(b"tick")
    await writer.drain()
    assert (await asyncio.wait_for(kept.receive(), 2)).data == b"tick"  # the refreshed one still gets the feed
    writer.close()
    await kept.close()


CHALLENGING_MODULE = '''
from wsgate.security.login import Challenged, Failed, Succeeded


class TwoRounds:
    """Accepts only the token it handed out in a first 401 (as a Negotiate exchange would)."""

    def __init__(self, options):
        pass

    async def login(self, attempt):
        if attempt.credentials.bearer() == "round-2":
            return Succeeded("carol", frozenset({"R"}))
        if attempt.credentials.bearer():
            return Failed("wrong continuation")
        return Challenged("first round", "next=round-2")
'''


async def test_a_module_challenge_puts_its_data_in_the_401(start_gateway, http, tmp_path, monkeypatch):
    (tmp_path / "two_rounds.py").write_text(CHALLENGING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    gw = await start_gateway("""
        service:
          - name: s
            accept: ws://127.0.0.1:0/s
            type: echo
            realm-name: r
            authorization-constraint:
              require-role: R
        security:
          realm:
            name: r
            authentication:
              http-challenge-scheme: Application Token
              login-modules:
                login-module:
                  type: class:two_rounds.TwoRounds
    """)
    error = await refused(http, gw, "s")
    assert error.status == 401 and error.headers["WWW-Authenticate"] == "Application Token next=round-2"
    assert (await refused(http, gw, "s", headers={"Authorization": "Bearer guess"})).status == 403
    ws = await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('s')}/s", headers={"Authorization": "Bearer round-2"})
    await ws.close()


async def test_a_subprotocol_token_never_reaches_a_websocket_back_end(start_gateway, http, users, issuer):
    seen: list[str] = []

    async def backend_handler(request: web.Request) -> web.WebSocketResponse:
        seen.append(request.headers.get("Sec-WebSocket-Protocol", ""))
        ws = web.WebSocketResponse(protocols=("mqtt",))
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", backend_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    backend_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        gw = await start_gateway(
            realm_config(0, issuer.url).replace(
                "connect: tcp://127.0.0.1:0\n    type: proxy\n    realm-name: tokens",
                f"connect: ws://127.0.0.1:{backend_port}/ws\n    type: proxy\n    realm-name: tokens",
            )
        )
        token = issuer.token()
        ws = await http.ws_connect(
            f"ws://127.0.0.1:{gw.port_of('tokens')}/tokens", protocols=(f"wsgate.token.{token}", "mqtt")
        )
        assert ws.protocol == "mqtt"
        await ws.send_str("through")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "through"
        await ws.close()
        assert seen == ["mqtt"] and token not in seen[0]
    finally:
        await runner.cleanup()
