"""The admission decision in memory: every 400/401/403/426/429/503 a handshake can get, without a socket.

A gateway is built from config text (``Gateway(config)`` binds nothing until ``start``); each row of
``MATRIX`` hands a hand-built ``Handshake`` to one route's ``Admission`` and checks what comes back:
the status, the headers the client sees (``WWW-Authenticate``, ``Retry-After``) and the reason that
only ``wsgate.audit`` gets. The same refusals on the wire are covered by the socket tests.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import MultiDict, MultiDictProxy

from wsgate.catalog import load_config
from wsgate.core.handshake import BAD_REQUEST, NO_CERTIFICATE, Accept, Handshake, Reject, Reply, handshake_headers
from wsgate.core.peer import PeerIdentity
from wsgate.gateway import Gateway
from wsgate.security.admission import Admission
from wsgate.security.limits import GatewayLimits, ServiceLimits
from wsgate.security.login import Challenged, Failed, LoginAttempt, Succeeded, Unavailable

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HOST = "127.0.0.1"
ISSUER, AUDIENCE = "https://issuer.test", "wsgate"
PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Scripted:
    """A login module through the public config path (``type: class:tests.test_admission.Scripted``).

    The token says what happens: ``ok.<user>.<role>``, ``down``, ``more``; anything else fails.
    """

    def __init__(self, options: dict[str, str]) -> None:
        self.options = options

    async def login(self, attempt: LoginAttempt) -> Any:
        token = attempt.credentials.bearer()
        if token is None:
            return Failed("no token")
        if token.startswith("ok."):
            _, user, role = token.split(".")
            return Succeeded(user, frozenset({role}))
        if token == "down":
            return Unavailable("the directory is down")
        if token == "more":
            return Challenged("another round", "round-2")
        return Failed("unknown token")


CONFIG = """
limits:
  handshakes: 2
service:
  - name: open
    accept: ws://127.0.0.1:0/open
    type: echo
    cross-site-constraint:
      allow-origin: https://app.example
    accept-options:
      connection.limit.per.ip: 1
  - name: staff
    accept: ws://127.0.0.1:0/staff
    type: echo
    realm-name: staff
    authorization-constraint:
      require-role: AUTHORIZED
    cross-site-constraint:
      allow-origin: https://app.example
  - name: traders
    accept: ws://127.0.0.1:0/traders
    type: echo
    realm-name: staff
    authorization-constraint:
      require-role: TRADER
  - name: tokens
    accept: ws://127.0.0.1:0/tokens
    type: echo
    realm-name: tokens
    authorization-constraint:
      require-role: AUTHORIZED
  - name: jwt
    accept: ws://127.0.0.1:0/jwt
    type: echo
    realm-name: jwt
    authorization-constraint:
      require-role: "*"
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    realm-name: staff
    authorization-constraint:
      require-role: AUTHORIZED
security:
  realm:
    - name: staff
      description: Staff Realm
      authentication:
        http-challenge-scheme: Application Basic
        authorization-mode: recycle
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
    - name: tokens
      authentication:
        http-challenge-scheme: Application Token
        http-header: X-Token
        http-query-parameter: access_token
        login-modules:
          login-module:
            type: class:tests.test_admission.Scripted
    - name: jwt
      authentication:
        http-challenge-scheme: Application Token
        login-modules:
          login-module:
            type: jwt
            options:
              key-file: issuer.pem
              issuer: https://issuer.test
              audience: wsgate
              leeway: 30s
"""


@pytest.fixture
async def gateway(tmp_path: Path) -> Gateway:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()  # checked on the realm's verifier
    (tmp_path / "jaas-config.xml").write_text(f"""<?xml version="1.0"?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>
  <user><name>ann</name><password>{hashed}</password><role-name>AUTHORIZED</role-name><role-name>TRADER</role-name></user>
</jaas-config>
""")
    public = PRIVATE.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "issuer.pem").write_bytes(public)
    (tmp_path / "gateway.yaml").write_text(CONFIG)
    gw = Gateway(load_config(tmp_path / "gateway.yaml"))
    yield gw
    for realm in gw.realms.values():
        await realm.close()


def admission(gw: Gateway, service: str) -> Admission:
    return next(r.admission for listener in gw.listeners.values() for r in listener.routes if r.service.name == service)


# -- handshakes built by hand --------------------------------------------------------------------------


def upgrade(
    path: str,
    *extra: tuple[str, str],
    method: str = "GET",
    query: tuple[tuple[str, str], ...] = (),
    remote: str = "192.0.2.1",
    secure: bool = False,
    peer: PeerIdentity | None = None,
) -> Handshake:
    headers = [
        ("Host", HOST),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
    changed = {name.lower() for name, _ in extra}
    headers = [h for h in headers if h[0].lower() not in changed or h[0] == "Host"] + list(extra)
    return request(method, path, headers, query, remote, secure, peer)


def plain(method: str, path: str, *extra: tuple[str, str], remote: str = "192.0.2.1") -> Handshake:
    return request(method, path, [("Host", HOST), *extra], (), remote)


def request(
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    query: tuple[tuple[str, str], ...] = (),
    remote: str = "192.0.2.1",
    secure: bool = False,
    peer: PeerIdentity | None = None,
) -> Handshake:
    return Handshake(
        method,
        HOST,
        path,
        handshake_headers(headers),
        MultiDictProxy(MultiDict(query)),
        remote=remote,
        peer=peer,
        secure=secure,
        authority=HOST,
    )


def basic(user: str, password: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def signed(exp_offset: float) -> str:
    now = time.time()
    claims = {"sub": "joe", "iss": ISSUER, "aud": AUDIENCE, "exp": int(now + exp_offset), "iat": int(now - 60)}
    return jwt.encode(claims, PRIVATE, algorithm="RS256")


# -- the matrix ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    service: str
    head: Handshake | Callable[[], Handshake]  # a callable is built when the row runs (JWTs' exp is relative to now)
    status: int  # 101: an Accept; else the Reject's (or Reply's) status
    headers: dict[str, str] = field(default_factory=dict)  # what the client must see (a subset)
    reason: str | None = None  # a part of the audit-only reason
    user: str | None = None  # the Accept's identity
    event: str | None = None

    @property
    def handshake(self) -> Handshake:
        return self.head() if callable(self.head) else self.head


MATRIX: dict[str, Row] = {
    # the request head itself, before anything else
    "duplicated Authorization": Row(
        "staff",
        upgrade("/staff", basic("joe", "welcome"), basic("joe", "x")),
        400,
        reason="Duplicate Authorization header.",
        event=BAD_REQUEST,
    ),
    "Origin not ASCII": Row("open", upgrade("/open", ("Origin", "https://é.example")), 400, event=BAD_REQUEST),
    "a POST handshake": Row("open", upgrade("/open", method="POST"), 400, reason="must be a GET", event=BAD_REQUEST),
    "key of 5 bytes": Row("open", upgrade("/open", ("Sec-WebSocket-Key", "c2hvcnQ=")), 400, event=BAD_REQUEST),
    "WebSocket version 8": Row(
        "open",
        upgrade("/open", ("Sec-WebSocket-Version", "8")),
        426,
        {"Sec-WebSocket-Version": "13"},
        event=BAD_REQUEST,
    ),
    "plain request with two Cookie lines": Row(
        "admin", plain("GET", "/admin/api/info", ("Cookie", "a=1"), ("Cookie", "b=2")), 400, event=BAD_REQUEST
    ),
    # a WebSocket service
    "not an upgrade": Row("open", plain("GET", "/open"), 426, {"Upgrade": "websocket"}),
    "no Origin (not a browser)": Row("open", upgrade("/open"), 101),
    "same origin": Row("open", upgrade("/open", ("Origin", f"http://{HOST}")), 101),
    "listed origin": Row("open", upgrade("/open", ("Origin", "https://app.example")), 101),
    "cross origin": Row("open", upgrade("/open", ("Origin", "https://evil.example")), 403, reason="cross-origin"),
    "null origin": Row("open", upgrade("/open", ("Origin", "null")), 403),
    # a Basic realm (Application Basic on a WebSocket service)
    "no credentials": Row(
        "staff", upgrade("/staff"), 401, {"WWW-Authenticate": 'Application Basic realm="Staff Realm"'}, reason="(file: "
    ),
    "wrong password": Row("staff", upgrade("/staff", basic("joe", "nope")), 403, reason="file: "),
    "unknown user": Row("staff", upgrade("/staff", basic("mallory", "x")), 403),
    "another scheme is no answer": Row(
        "staff", upgrade("/staff", bearer("abc")), 401, {"WWW-Authenticate": 'Application Basic realm="Staff Realm"'}
    ),
    "valid credentials": Row("staff", upgrade("/staff", basic("joe", "welcome")), 101, user="joe"),
    "without the role": Row(
        "traders", upgrade("/traders", basic("joe", "welcome")), 403, reason="authorization denied"
    ),
    "with the role": Row("traders", upgrade("/traders", basic("ann", "s3cret")), 101, user="ann"),
    "valid credentials, cross origin": Row(
        "staff",
        upgrade("/staff", basic("joe", "welcome"), ("Origin", "https://evil.example")),
        403,
        reason="cross-origin",
    ),
    "two session cookies": Row(
        "staff", upgrade("/staff", ("Cookie", "wsgate_staff=a; wsgate_staff=b")), 400, reason="given more than once"
    ),
    # plain HTTP through the same realm: browsers get their own dialog (no "Application")
    "plain HTTP without credentials": Row(
        "admin", plain("GET", "/admin/api/info"), 401, {"WWW-Authenticate": 'Basic realm="Staff Realm"'}
    ),
    "plain HTTP with credentials": Row(
        "admin", plain("GET", "/admin/api/info", basic("joe", "welcome")), 101, user="joe"
    ),
    "a CORS preflight before the realm": Row(
        "staff",
        plain("OPTIONS", "/staff", ("Origin", "https://app.example"), ("Access-Control-Request-Method", "GET")),
        204,
        {"Access-Control-Allow-Origin": "https://app.example"},
    ),
    "a CORS preflight from elsewhere": Row(
        "staff",
        plain("OPTIONS", "/staff", ("Origin", "https://evil.example"), ("Access-Control-Request-Method", "GET")),
        403,
    ),
    # a token realm with a login module through the public config path
    "no token": Row("tokens", upgrade("/tokens"), 401, {"WWW-Authenticate": "Application Token"}, reason="no token"),
    "bad token": Row("tokens", upgrade("/tokens", bearer("forged")), 403, reason="unknown token"),
    "token in the header": Row("tokens", upgrade("/tokens", ("X-Token", "ok.joe.AUTHORIZED")), 101, user="joe"),
    "token in the query": Row(
        "tokens", upgrade("/tokens", query=(("access_token", "ok.joe.AUTHORIZED"),)), 101, user="joe"
    ),
    "token as a subprotocol": Row(
        "tokens",
        upgrade("/tokens", ("Sec-WebSocket-Protocol", "chat, wsgate.token.ok.joe.AUTHORIZED")),
        101,
        user="joe",
    ),
    "tokens that disagree": Row(
        "tokens",
        upgrade("/tokens", ("X-Token", "ok.joe.AUTHORIZED"), query=(("access_token", "ok.bob.AUTHORIZED"),)),
        400,
        reason="different tokens",
    ),
    "token of a user without the role": Row(
        "tokens", upgrade("/tokens", bearer("ok.eve.GUEST")), 403, reason="authorization denied"
    ),
    "a module asks for another round": Row(
        "tokens", upgrade("/tokens", bearer("more")), 401, {"WWW-Authenticate": "Application Token round-2"}
    ),
    "a module that cannot decide": Row(
        "tokens", upgrade("/tokens", bearer("down")), 503, {"Retry-After": "5"}, reason="the directory is down"
    ),
    # JWTs
    "a valid JWT": Row("jwt", lambda: upgrade("/jwt", bearer(signed(600))), 101, user="joe"),
    "a JWT expired inside the leeway": Row(
        "jwt", lambda: upgrade("/jwt", bearer(signed(-5))), 403, reason="credentials already expired"
    ),
    "a JWT expired beyond the leeway": Row("jwt", lambda: upgrade("/jwt", bearer(signed(-600))), 403),
}


@pytest.mark.parametrize("case", list(MATRIX))
async def test_admission_matrix(gateway: Gateway, case: str, caplog: pytest.LogCaptureFixture) -> None:
    row = MATRIX[case]
    handshake = row.handshake
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        decision = await admission(gateway, row.service).admit(handshake)
    check(decision, row)
    secret = handshake.headers.get("Authorization", "").partition(" ")[2]
    if len(secret) > 8:  # Basic credentials, a JWT (the scripted tokens are words an audit reason may contain)
        assert secret not in caplog.text  # no credential in any log line


def check(decision: Accept | Reject | Reply, row: Row) -> None:
    if row.status == 101:
        assert isinstance(decision, Accept), decision
        assert (decision.identity.user if decision.identity else None) == row.user
        decision.hold.release()
        return
    assert not isinstance(decision, Accept), decision
    assert decision.status == row.status
    headers = dict(decision.headers)
    for name, value in row.headers.items():
        assert headers.get(name) == value, (name, headers)
    if decision.status in (401, 403) and "WWW-Authenticate" not in row.headers:
        assert "WWW-Authenticate" not in headers or decision.status == 401
    if isinstance(decision, Reject):
        assert decision.event == row.event
        if row.reason is not None:
            assert row.reason in decision.reason, decision.reason
        if decision.status in (401, 403) and decision.event is None:
            assert decision.text in ("Unauthorized\n", "Forbidden\n")  # every failure looks the same


async def test_every_auth_failure_looks_the_same_to_the_client(gateway: Gateway) -> None:
    """Unknown user, wrong password, missing role, revoked: the same 403 body and headers."""
    answers = set()
    for service, handshake in [
        ("staff", upgrade("/staff", basic("joe", "nope"))),
        ("staff", upgrade("/staff", basic("mallory", "x"))),
        ("traders", upgrade("/traders", basic("joe", "welcome"))),
        ("tokens", upgrade("/tokens", bearer("forged"))),
    ]:
        decision = await admission(gateway, service).admit(handshake)
        assert isinstance(decision, Reject)
        answers.add((decision.status, decision.text, tuple(decision.headers.items())))
    assert answers == {(403, "Forbidden\n", ())}


async def test_audit_lines_name_the_decision_not_the_secret(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        await admission(gateway, "staff").admit(upgrade("/staff", basic("joe", "nope"), remote="198.51.100.7"))
        await admission(gateway, "staff").admit(upgrade("/staff", basic("joe", "welcome"), remote="198.51.100.7"))
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    denied, authenticated = events[-2], events[-1]
    assert denied["event"] == "authentication denied"
    assert {k: denied[k] for k in ("service", "realm", "remote", "decision", "status")} == {
        "service": "staff",
        "realm": "staff",
        "remote": "198.51.100.7",
        "decision": "denied",
        "status": 403,
    }
    assert authenticated["event"] == "authenticated" and authenticated["via"] == "credentials"
    assert authenticated["user"] == "joe" and authenticated["roles"] == ["AUTHORIZED"]
    assert "welcome" not in caplog.text and "nope" not in caplog.text


async def test_a_revoked_user_is_refused_like_any_bad_credential(gateway: Gateway) -> None:
    await gateway.revoke(user="joe")
    decision = await admission(gateway, "staff").admit(upgrade("/staff", basic("joe", "welcome")))
    assert isinstance(decision, Reject) and (decision.status, decision.text, decision.reason) == (
        403,
        "Forbidden\n",
        "revoked",
    )
    assert isinstance(await admission(gateway, "traders").admit(upgrade("/traders", basic("ann", "s3cret"))), Accept)


async def test_a_busy_verifier_is_503_retry_after_1_and_counted(gateway: Gateway) -> None:
    verifier = gateway.realms["staff"].verifier
    verifier.pending = verifier.limit  # every slot taken by logins in progress
    try:
        decision = await admission(gateway, "staff").admit(upgrade("/staff", basic("ann", "s3cret")))
    finally:
        verifier.pending = 0
    assert isinstance(decision, Reject)
    assert (decision.status, decision.headers, decision.limit) == (503, {"Retry-After": "1"}, "auth-concurrency")
    assert limited(gateway, "staff", "auth-concurrency") == 1


async def test_the_service_limit_per_ip_holds_until_the_connection_ends(gateway: Gateway) -> None:
    gate = admission(gateway, "open")
    first = await gate.admit(upgrade("/open"))
    assert isinstance(first, Accept)
    second = await gate.admit(upgrade("/open"))
    assert isinstance(second, Reject)
    assert (second.status, second.headers, second.limit) == (429, {"Retry-After": "5"}, "connections-per-ip")
    assert limited(gateway, "open", "connections-per-ip") == 1
    assert isinstance(await gate.admit(upgrade("/open", remote="192.0.2.2")), Accept)  # another client
    first.hold.handshake_done()  # the 101 is sent: the connection still counts
    assert isinstance(await gate.admit(upgrade("/open")), Reject)
    first.hold.release()  # it ended
    again = await gate.admit(upgrade("/open"))
    assert isinstance(again, Accept)
    again.hold.release()


async def test_handshakes_in_progress_are_bounded_until_the_101(gateway: Gateway) -> None:
    """``limits/handshakes: 2``: a third concurrent handshake is 503 Retry-After 1; a sent 101 frees a slot."""
    staff = admission(gateway, "staff")
    held = [await staff.admit(upgrade("/staff", basic("joe", "welcome"), remote=f"192.0.2.{i}")) for i in (1, 2)]
    assert all(isinstance(d, Accept) for d in held)
    third = await staff.admit(upgrade("/staff", basic("joe", "welcome"), remote="192.0.2.3"))
    assert isinstance(third, Reject)
    assert (third.status, third.headers, third.limit) == (503, {"Retry-After": "1"}, "handshakes")
    assert limited(gateway, "staff", "handshakes") == 1
    refused = await staff.admit(upgrade("/staff", remote="192.0.2.4"))  # refused by the realm
    assert isinstance(refused, Reject) and refused.status == 503  # still full: the gate comes before the realm
    assert isinstance(held[0], Accept)
    held[0].hold.handshake_done()
    assert gateway.gate.handshakes == 1
    refused = await staff.admit(upgrade("/staff", remote="192.0.2.4"))
    assert isinstance(refused, Reject) and refused.status == 401
    assert gateway.gate.handshakes == 1  # a refusal gives its slot back at once
    for decision in held:
        assert isinstance(decision, Accept)
        decision.hold.release()
    assert gateway.gate.handshakes == 0


async def test_plain_http_takes_no_handshake_slot(gateway: Gateway) -> None:
    decisions = [
        await admission(gateway, "admin").admit(plain("GET", "/admin/api/info", basic("joe", "welcome")))
        for _ in range(3)
    ]
    assert all(isinstance(d, Accept) for d in decisions) and gateway.gate.handshakes == 0


async def test_the_gateway_closing_is_503(gateway: Gateway) -> None:
    gateway.runtime.closing = True
    decision = await admission(gateway, "open").admit(upgrade("/open"))
    assert isinstance(decision, Reject) and decision.status == 503
    assert gateway.gate.handshakes == 0


async def test_verify_client_required_without_a_certificate_is_403() -> None:
    """On a port shared with ``ssl.verify-client optional`` services: no certificate, no admission."""
    gate = Admission("vault", "echo", verify_client="required")
    decision = await gate.admit(upgrade("/vault", secure=True))
    assert isinstance(decision, Reject)
    assert (decision.status, decision.text, decision.event) == (
        403,
        "A client certificate is required.\n",
        NO_CERTIFICATE,
    )
    peer = PeerIdentity("CN=client", "CN=test CA", (), (), "00" * 32, b"")
    assert isinstance(await gate.admit(upgrade("/vault", secure=True, peer=peer)), Accept)
    assert isinstance(await gate.admit(upgrade("/vault")), Accept)  # not over TLS here: the rule is the port's


async def test_limits_without_a_gateway() -> None:
    """An ``Admission`` needs no gateway: limits and the gate are plain objects."""
    gate = Admission("echo", "echo", limits=ServiceLimits(max_connections=1), gate=GatewayLimits(max_connections=5))
    first = await gate.admit(upgrade("/echo"))
    assert isinstance(first, Accept)
    second = await gate.admit(upgrade("/echo", remote="192.0.2.9"))
    assert isinstance(second, Reject) and (second.status, second.limit) == (503, "connections")
    first.hold.release()
    gate.open_connections = [object()] * 5
    full = await gate.admit(upgrade("/echo"))
    assert isinstance(full, Reject) and (full.status, full.limit, full.headers) == (
        503,
        "gateway-connections",
        {"Retry-After": "5"},
    )


async def test_a_session_cookie_admits_without_the_login_chain(gateway: Gateway) -> None:
    staff = admission(gateway, "staff")
    login = await staff.admit(plain("POST", "/staff/.wsgate/session", basic("joe", "welcome")))
    assert isinstance(login, Reply) and login.status == 200 and login.content_type == "application/json"
    cookie = dict(login.headers)["Set-Cookie"]
    assert cookie.startswith("wsgate_staff=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/" in cookie and "Secure" not in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    decision = await staff.admit(upgrade("/staff", ("Cookie", f"wsgate_staff={token}")))
    assert isinstance(decision, Accept) and decision.identity is not None and decision.identity.user == "joe"
    decision.hold.release()
    logout = await staff.admit(plain("DELETE", "/staff/.wsgate/session", ("Cookie", f"wsgate_staff={token}")))
    assert isinstance(logout, Reply) and logout.body == b'{"closed": 0}'
    assert "Max-Age=0" in dict(logout.headers)["Set-Cookie"]
    again = await staff.admit(upgrade("/staff", ("Cookie", f"wsgate_staff={token}")))
    assert isinstance(again, Reject) and again.status == 401


async def test_control_resources_check_the_origin_and_answer_cors(gateway: Gateway) -> None:
    staff = admission(gateway, "staff")
    evil = await staff.admit(
        plain("POST", "/staff/.wsgate/session", basic("joe", "welcome"), ("Origin", "https://evil.example"))
    )
    assert isinstance(evil, Reply) and evil.status == 403 and not any(n == "Set-Cookie" for n, _ in evil.headers)
    listed = await staff.admit(plain("GET", "/staff/.wsgate/session", ("Origin", "https://app.example")))
    assert isinstance(listed, Reply) and listed.status == 401
    assert ("Access-Control-Allow-Origin", "https://app.example") in listed.headers
    unknown = await staff.admit(plain("PUT", "/staff/.wsgate/session"))
    assert isinstance(unknown, Reply) and unknown.status == 405


async def test_an_accepted_upgrade_carries_its_deadline(gateway: Gateway) -> None:
    decision = await admission(gateway, "jwt").admit(upgrade("/jwt", bearer(signed(600))))
    assert isinstance(decision, Accept) and decision.identity is not None
    assert decision.deadline == decision.identity.expires_at and decision.deadline_reason == "session expired"
    assert decision.opened_at is not None and abs(decision.opened_at - time.time()) < 5
    decision.hold.release()


def limited(gw: Gateway, service: str, limit: str) -> float:
    metrics = gw.runtime.metrics
    assert metrics is not None
    return metrics.limited.labels(service, limit)._value.get()  # type: ignore[no-any-return]
