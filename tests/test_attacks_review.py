"""Hostile-client review of the realm, revocation, redaction, directory and listener fixes.

Each test is an attack that got through before its fix; they run against real gateways on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest
from multidict import CIMultiDict

from .test_echo_directory import HIDDEN_SITE, hidden_site, raw_get, site, without_date  # noqa: F401
from .test_realm_hardening import (  # noqa: F401  (fixtures among them)
    ROOT,
    UNCONSTRAINED_YAML,
    admin_url,
    check_config,
    revoking,
    signed,
    ws_url,
)
from .test_realms import backend, basic, gw, issuer, refused, users  # noqa: F401  (fixtures among them)

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def padded(token: str) -> str:
    """The same JWT with its signature base64-padded, which PyJWT accepts (as some issuers pad)."""
    signing_input, signature = token.rsplit(".", 1)
    return f"{signing_input}.{signature}" + "=" * (-len(signature) % 4)


# -- revocation by token digest --------------------------------------------------------------------


async def test_a_revoked_token_without_jti_is_refused_however_its_signature_is_spelled(revoking, http, issuer):  # noqa: F811
    gateway = await revoking()
    token = issuer.token()  # no jti: the revocation is keyed by the token's digest
    ws = await http.ws_connect(ws_url(gateway, "tokens"), headers={"Authorization": f"Bearer {padded(token)}"})
    await ws.close()  # the padded spelling is a valid token
    async with http.post(admin_url(gateway, "/api/revocations"), headers=ROOT, json={"token": token}) as response:
        assert response.status == 200
    for spelling in (token, padded(token)):
        error = await refused(http, gateway, "tokens", headers={"Authorization": f"Bearer {spelling}"})
        assert error.status == 403, spelling[-8:]
    # and the other way round: revoking a variant spelling revokes the token as issued
    other = issuer.token(sub="bob")
    await gateway.revoke(token=padded(other))
    assert (await refused(http, gateway, "tokens", headers={"Authorization": f"Bearer {other}"})).status == 403


def high_s(token: str) -> str:
    """The other valid ECDSA signature of an ES256 token, ``(r, n - s)``: no key needed."""
    signing_input, signature = token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature + "==")
    s = int.from_bytes(raw[32:], "big")
    other = raw[:32] + (P256_ORDER - s).to_bytes(32, "big")
    return f"{signing_input}." + base64.urlsafe_b64encode(other).rstrip(b"=").decode()


async def test_a_revoked_es256_token_without_jti_is_refused_with_its_other_signature(revoking, http, issuer):  # noqa: F811
    gateway = await revoking()
    token = issuer.token("ec1")
    ws = await http.ws_connect(ws_url(gateway, "tokens"), headers={"Authorization": f"Bearer {high_s(token)}"})
    await ws.close()  # the re-signed token is valid
    await gateway.revoke(token=token)
    for spelling in (token, high_s(token)):
        assert (await refused(http, gateway, "tokens", headers={"Authorization": f"Bearer {spelling}"})).status == 403


# -- directory: paths the file system cannot look up ------------------------------------------------


@pytest.mark.parametrize("path", ["/%00", "/sub/x%00.txt", "/" + "a" * 300, "/sub/" + "b" * 300 + "/c"])
async def test_a_path_the_file_system_cannot_look_up_is_missing_not_a_server_error(
    start_gateway,
    hidden_site,  # noqa: F811
    path,
    caplog,
):
    gateway = await start_gateway(HIDDEN_SITE)
    port = gateway.port_of("site")
    response = await raw_get(port, path)
    assert without_date(response) == without_date(await raw_get(port, "/no-such-file")), response[:40]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback per request


# -- request bodies trickled forever --------------------------------------------------------------

SLOW_BODY = """
limits:
  handshake-timeout: 1s
service:
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    properties:
      insecure: "true"
"""


async def trickle_body(port: int, head: bytes, seconds: float) -> float | None:
    """Send ``head``, then one chunk of a chunked body every 0.2 s: when did the gateway hang up?"""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    started = loop.time()
    try:
        while loop.time() - started < seconds:
            writer.write(b"1\r\n \r\n")
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1024), 0.2) == b"":
                    return loop.time() - started
            except TimeoutError:
                continue
    except ConnectionError:
        return loop.time() - started
    finally:
        writer.close()
    return None


async def test_a_request_body_trickled_forever_is_dropped_at_the_request_deadline(start_gateway, caplog):
    gateway = await start_gateway(SLOW_BODY)
    head = (
        b"POST /admin/api/revocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    dropped = await trickle_body(gateway.port_of("admin"), head, 4.0)
    assert dropped is not None and dropped < 2.5, "a body trickled forever held the request open"
    text = gateway.runtime.metrics.exposition().decode()
    assert 'wsgate_limited_total{limit="handshake-timeout",service=""} 1.0' in text
    await asyncio.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a dropped client is no server error
    # a body that arrives in time is read as before
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port_of("admin"))
    body = b'{"user": "mallory"}'
    writer.write(
        b"POST /admin/api/revocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    await asyncio.sleep(0.5)  # the body a moment after the head, well within the deadline
    writer.write(body)
    assert (await asyncio.wait_for(reader.read(), 3)).startswith(b"HTTP/1.1 200")
    writer.close()
    assert "user:mallory" in await gateway.revocations_in_force()


# -- credentials in a repeated header -------------------------------------------------------------


async def test_token_offers_in_two_subprotocol_headers_are_ambiguous(gw, http, issuer, backend):  # noqa: F811
    token, other = issuer.token(jti="a"), issuer.token(jti="b", sub="mallory")
    headers = CIMultiDict([("Sec-WebSocket-Protocol", f"wsgate.token.{token}"), ("Sec-WebSocket-Protocol", "chat")])
    headers.add("Sec-WebSocket-Protocol", f"wsgate.token.{other}")
    error = await refused(http, gw, "tokens", headers=headers)
    assert error.status == 400  # not "the first header wins"
    assert backend[2] == []


# -- redaction: header names as keys and in (name, value) pairs --------------------------------------

OPAQUE = "opq" + "7f3a9c2e5b1d4f60a8e2"


def test_credential_headers_are_masked_as_event_keys_before_and_after_a_config_adds_names():
    from wsgate.observe.redact import MASK, Redactor

    redactor = Redactor()
    event = {"event": "request", "headers": {"X-Api-Key": OPAQUE, "Host": "a"}, "x_api_key": OPAQUE}
    for _ in range(2):
        masked = redactor.value(event)
        assert masked["headers"] == {"X-Api-Key": MASK, "Host": "a"} and masked["x_api_key"] == MASK
        redactor.add(parameters=("auth",), headers=("X-Token",))
    assert redactor.value({"headers": {"x-token": OPAQUE}})["headers"]["x-token"] == MASK
    # names the list calls too common to mask as keys stay readable after a config adds its own names
    assert redactor.value({"code": 1008, "session": "s-1", "ticket": "T-9"}) == {
        "code": 1008,
        "session": "s-1",
        "ticket": "T-9",
    }


@pytest.mark.parametrize(
    "text",
    [
        str([("Host", "a"), ("X-Api-Key", OPAQUE)]),
        str((("Host", "a"), ("Authorization", "Basic YTpi"))),
        '[["Host", "a"], ["X-Token", "' + OPAQUE + '"]]',
    ],
)
def test_credential_headers_are_masked_in_name_value_pairs(text):
    from wsgate.observe.redact import Redactor

    redactor = Redactor()
    redactor.add(headers=("X-Token",))
    masked = redactor.text(text)
    assert OPAQUE not in masked and "YTpi" not in masked and "'Host', 'a'" in masked.replace('"', "'")


# -- check-config: any origin with credentials a browser sends by itself -------------------------------

AMBIENT = """
service:
  - name: basic-any
    accept: ws://127.0.0.1:0/basic-any
    type: echo
    realm-name: basic
    cross-site-constraint:
      allow-origin: "*"
  - name: basic-listed
    accept: ws://127.0.0.1:0/basic-listed
    type: echo
    realm-name: basic
    cross-site-constraint:
      allow-origin: https://app.example.com
  - name: token-any
    accept: ws://127.0.0.1:0/token-any
    type: echo
    realm-name: token
    cross-site-constraint:
      allow-origin: "*"
  - name: cookie-any
    accept: ws://127.0.0.1:0/cookie-any
    type: echo
    realm-name: cookie
    cross-site-constraint:
      allow-origin: "*"
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    realm-name: basic
    cross-site-constraint:
      allow-origin: "*"
security:
  realm:
    - name: basic
      authentication:
        http-challenge-scheme: Application Basic
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
    - name: token
      authentication:
        http-challenge-scheme: Application Token
        http-header: X-Token
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
    - name: cookie
      authentication:
        http-challenge-scheme: Application Token
        authorization-mode: recycle
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
"""


def test_check_config_warns_when_any_origin_may_use_credentials_a_browser_sends_by_itself(tmp_path, capsys, users):  # noqa: F811
    out = check_config(tmp_path, capsys, AMBIENT, "gateway.yaml")
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert [w.split()[1] for w in warnings] == ["service[basic-any]", "service[cookie-any]", "service[admin]"], out
    assert "Basic" in warnings[0] and "session cookie" in warnings[1] and "allow-origin *" in warnings[2]


# -- redaction: a URL's userinfo ---------------------------------------------------------------------

JWKS_PASSWORD = "Jwks-Pw-" + "5d1c0e"


async def test_a_password_in_a_jwks_url_never_reaches_the_audit_log(start_gateway, http, caplog, unused_tcp_port):
    gateway = await start_gateway(f"""
service:
  - name: tokens
    accept: ws://127.0.0.1:0/tokens
    type: echo
    realm-name: tokens
security:
  realm:
    name: tokens
    authentication:
      http-challenge-scheme: Application Token
      login-modules:
        login-module:
          type: jwt
          options:
            jwks-url: http://jwks:{JWKS_PASSWORD}@127.0.0.1:{unused_tcp_port}/jwks.json
            issuer: https://issuer.test
            audience: wsgate
""")
    with caplog.at_level(logging.DEBUG):
        error = await refused(
            http, gateway, "tokens", headers={"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}
        )
    assert error.status == 503
    assert "unreachable" in caplog.text and JWKS_PASSWORD not in caplog.text
    for record in caplog.records:
        assert JWKS_PASSWORD not in repr(record.msg) + repr(record.args)


@pytest.mark.parametrize(
    "text",
    [
        f"JWKS https://svc:{JWKS_PASSWORD}@idp.example/jwks.json unreachable",
        f"back end ws://svc:{JWKS_PASSWORD}@10.0.0.1:8080/x lost",
        f"connect ldaps://cn=admin:{JWKS_PASSWORD}@ldap.example/",
    ],
)
def test_a_urls_password_is_masked(text):
    from wsgate.observe.redact import Redactor

    masked = Redactor().text(text)
    assert JWKS_PASSWORD not in masked and ("://svc:[redacted]@" in masked or "://cn=admin:[redacted]@" in masked)


# -- reload: a realm's files are part of the realm --------------------------------------------------


async def test_a_user_removed_from_the_users_file_is_refused_after_a_reload(start_gateway, http, users):  # noqa: F811
    gateway = await start_gateway(
        UNCONSTRAINED_YAML.replace(
            "realm-name: demo", "realm-name: demo\n    authorization-constraint:\n      require-role: AUTHORIZED"
        )
    )
    url = f"ws://127.0.0.1:{gateway.port_of('echo')}/echo"
    ws = await http.ws_connect(url, headers=basic("joe", "welcome"))
    await ws.close()
    users.write_text(users.read_text().replace("<user><name>joe</name>", "<user><name>former-joe</name>"))
    ok, message = await gateway.reload()
    assert ok, message
    error = await refused(http, gateway, "echo", headers=basic("joe", "welcome"))
    assert error.status == 403  # the file the operator edited counts, not the one read at start
    ws = await http.ws_connect(url, headers=basic("former-joe", "welcome"))
    await ws.close()
    realm = gateway.realms["demo"]
    assert (await gateway.reload())[0]
    assert gateway.realms["demo"] is realm  # nothing changed since: the realm (its sessions, pools) is kept


# -- a client that stops reading its response -----------------------------------------------------

BIG_FILE = """
service:
  - name: site
    accept: http://127.0.0.1:0/
    type: directory
    properties:
      directory: /
    accept-options:
      http.keepalive.timeout: 1s
"""


async def test_a_client_that_stops_reading_a_response_is_dropped_after_the_keepalive_timeout(
    start_gateway, tmp_path, caplog
):
    size = 32 * 1024 * 1024  # far more than the socket buffers on both sides hold
    with (tmp_path / "big.bin").open("wb") as file:
        file.truncate(size)
    gateway = await start_gateway(BIG_FILE)
    request = b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def fetch(stall: float) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port_of("site"), limit=4096)
        writer.write(request)
        await asyncio.sleep(stall)  # reads nothing meanwhile: the server's writes pile up, then stall
        received = 0
        try:
            while received < size:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
                if not chunk:
                    break
                received += len(chunk)
        except ConnectionError:
            pass
        finally:
            writer.close()
        return received

    assert await fetch(3.0) < size  # dropped while it read nothing: not held for as long as it likes
    assert await fetch(0.5) > size  # a pause shorter than the timeout is nobody's business (head + body)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- JWT dates beyond a float ----------------------------------------------------------------------


@pytest.mark.parametrize("claims", [{"exp": 10**400}, {"exp": 10**400, "nbf": -(10**400)}, {"iat": -(10**400)}])
async def test_jwt_dates_no_float_can_hold_are_refused_not_an_outage(gw, http, issuer, backend, caplog, claims):  # noqa: F811
    token = signed(issuer, **claims)
    error = await refused(http, gw, "tokens", headers={"Authorization": f"Bearer {token}"})
    assert error.status == 403 and "Retry-After" not in error.headers
    assert backend[2] == [] and not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_token_with_an_exp_no_float_can_hold_can_still_be_revoked(revoking, http, issuer):  # noqa: F811
    gateway = await revoking()
    token = signed(issuer, exp=10**400, jti="huge")
    async with http.post(admin_url(gateway, "/api/revocations"), headers=ROOT, json={"token": token}) as response:
        assert response.status == 200
    assert "jti:huge" in await gateway.revocations_in_force()


# -- directory: the trailing-slash redirect stays on this host ---------------------------------------


@pytest.mark.parametrize("path", ["//sub", "///sub", "/%2Fsub", "//sub/"])
async def test_the_directory_redirect_never_points_to_another_host(start_gateway, hidden_site, path):  # noqa: F811
    gateway = await start_gateway(HIDDEN_SITE)
    response = await raw_get(gateway.port_of("site"), path)
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    locations = [line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("location:")]
    assert all(not location.startswith("//") for location in locations), head  # "//sub/" is http://sub/
    if locations:
        assert locations == ["/sub/"]
