"""No credential reaches a log line: every logger, every level, JSON and console, tracebacks too.

The gateway is attacked with credentials in every place a client can put them (subprotocol offers,
headers, query, cookies, over-long and malformed requests, failing and succeeding logins, the realm
session), in-process at DEBUG for every logger and as a ``wsgate run`` subprocess with JSON logs at
debug; then every captured line is searched for each secret and its base64 forms.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import signal
import urllib.parse

import aiohttp
import pytest
import structlog
from multidict import CIMultiDict

from wsgate.observe import logs
from wsgate.transport import upgrade

from .test_cli_run import wsgate_run


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JWT = ".".join(
    (
        b64url(b'{"alg":"HS256","typ":"JWT"}'),
        b64url(json.dumps({"sub": "alice", "nonce": secrets.token_hex(8)}).encode()),
        b64url(secrets.token_bytes(32)),
    )
)
OPAQUE = "opq" + secrets.token_hex(16)  # a token that looks like nothing in particular
HEADER_TOKEN = "hdr" + secrets.token_hex(16)
QUERY_TOKEN = "qry" + secrets.token_hex(16)
COOKIE_TOKEN = "ck" + secrets.token_hex(16)
PASSWORD = "Zebra-" + secrets.token_hex(6)
WRONG_PASSWORD = "Okapi-" + secrets.token_hex(6)
SECRETS = {
    "jwt": JWT,
    "opaque": OPAQUE,
    "header token": HEADER_TOKEN,
    "query token": QUERY_TOKEN,
    "cookie token": COOKIE_TOKEN,
    "password": PASSWORD,
    "wrong password": WRONG_PASSWORD,
    "basic": base64.b64encode(f"joe:{PASSWORD}".encode()).decode(),
    "wrong basic": base64.b64encode(f"joe:{WRONG_PASSWORD}".encode()).decode(),
}

USERS = f"""<?xml version="1.0"?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>joe</name><password>{PASSWORD}</password><role-name>AUTHORIZED</role-name></user>
</jaas-config>
"""

CONFIG = """
limits:
  handshake-timeout: 1s
  header-size: 2k
service:
  - name: open
    accept: ws://127.0.0.1:{port}/open
    type: echo
  - name: locked
    accept: ws://127.0.0.1:{port}/locked
    type: echo
    realm-name: corp
    authorization-constraint:
      require-role: AUTHORIZED
security:
  realm:
    - name: corp
      authentication:
        http-challenge-scheme: Application Basic
        http-header: X-Api-Token
        http-query-parameter: auth
        http-cookie: sso
        authorization-mode: recycle
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
"""


def forms(secret: str) -> set[str]:
    """The secret as it could appear: raw, base64 (standard and URL-safe, padded or not), percent-encoded."""
    raw = secret.encode()
    encoded = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return {secret, urllib.parse.quote(secret, safe=""), *encoded, *(e.rstrip("=") for e in encoded)}


def leaks(text: str, extra: dict[str, str] | None = None) -> list[str]:
    found = []
    for name, secret in {**SECRETS, **(extra or {})}.items():
        found += [f"{name} ({form[:12]}…)" for form in forms(secret) if form in text]
    return found


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 3)
    except (ConnectionError, TimeoutError):
        return b""
    finally:
        writer.close()


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"joe:{password}".encode()).decode()


async def attack(port: int) -> str:
    """Every way a client presents credentials; returns the realm session cookie it was given."""
    open_url, locked_url = f"ws://127.0.0.1:{port}/open", f"ws://127.0.0.1:{port}/locked"
    async with aiohttp.ClientSession() as http:
        # A token offered as a subprotocol to a service that selects none: aiohttp's "don't overlap" warning.
        async with http.ws_connect(open_url, protocols=(f"wsgate.token.{JWT}", "chat")) as ws:
            await ws.close()
        attempts = [
            {"headers": {"Authorization": f"Bearer {JWT}"}},
            {"headers": {"Authorization": f"Token {OPAQUE}"}},
            {"headers": {"Authorization": basic(WRONG_PASSWORD)}},
            {"headers": {"Proxy-Authorization": basic(WRONG_PASSWORD), "X-Api-Token": HEADER_TOKEN}},
            {"headers": {"Cookie": f"sso={COOKIE_TOKEN}; theme=dark"}},
            {"params": {"access_token": JWT}},
            {"params": {"auth": QUERY_TOKEN}},
            {"protocols": (f"wsgate.token.{OPAQUE}",)},
        ]
        for options in attempts:
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(locked_url, **options)  # failing logins
        async with http.ws_connect(locked_url, headers={"Authorization": basic(PASSWORD)}) as ws:
            await ws.send_str("in")
            assert (await ws.receive()).data == "in"
        async with http.post(
            f"http://127.0.0.1:{port}/locked/.wsgate/session", headers={"Authorization": basic(PASSWORD)}
        ) as response:
            assert response.status == 200
            session = response.cookies["wsgate_corp"].value
        async with http.ws_connect(locked_url, headers={"Cookie": f"wsgate_corp={session}"}) as ws:
            await ws.close()
    padding = "x" * 3000
    await raw(port, f"GET /locked?access_token={JWT}&auth={QUERY_TOKEN}&p={padding} HTTP/1.1\r\n\r\n".encode())
    await raw(port, f"GET /locked HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {JWT}{padding}\r\n\r\n".encode())
    await raw(port, f"GET /locked HTTP/1.1\r\nHost: a\r\nX-Api-Token: {HEADER_TOKEN}{padding}\r\n\r\n".encode())
    await raw(port, f"GET /locked HTTP/1.1\r\nHost: a\r\nCookie: sso={COOKIE_TOKEN};{padding}\r\n\r\n".encode())
    for malformed in (
        f"GET /locked?token={OPAQUE} HTTP/1.1\r\nHost: a\r\nAuthorization: {basic(WRONG_PASSWORD)}\r\nBroken\r\n\r\n",
        f"GET /locked?token={OPAQUE} HTTP/9.9\r\nAuthorization: Bearer {JWT}\r\n\r\n",
        f"G\x00T /locked?access_token={JWT} HTTP/1.1\r\n\r\n",
        f"GET /locked HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\nAuthorization: Bearer {JWT}\r\n\r\n",
        f"GET /locked HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Protocol: wsgate.token.{JWT}\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ):
        await raw(port, malformed.encode())
    return session


async def test_no_credential_reaches_any_log_line(start_gateway, tmp_path, caplog, unused_tcp_port):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    (tmp_path / "jaas-config.xml").write_text(USERS)
    gw = await start_gateway(CONFIG.format(port=0))
    port = gw.port_of("open")
    session = await attack(port)
    # Libraries log credentials in ways the gateway cannot prevent: a header dump at DEBUG, an exception.
    logging.getLogger("ldap3").debug("request headers %r", CIMultiDict({"Authorization": basic(PASSWORD)}))
    logging.getLogger("aiohttp.client").debug("cookies: %s", f"wsgate_corp={session}; sso={COOKIE_TOKEN}")
    try:
        raise ValueError(f"invalid token {OPAQUE!r} in https://x.test/cb?code=1&access_token={QUERY_TOKEN}")
    except ValueError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
        structlog.get_logger("wsgate.test").error("login failed", exc_info=True, authorization=basic(PASSWORD))
    await asyncio.sleep(1.2)  # let the slow and malformed connections end

    extra = {"session cookie": session}
    texts = [caplog.text]
    formatters = [logs.log_formatter(f) for f in ("json", "console")] if hasattr(logs, "log_formatter") else []
    for record in caplog.records:
        texts.append(repr(record.msg) + repr(record.args) + str(record.exc_text))
        texts += [formatter.format(record) for formatter in formatters]
        if formatters:
            json.loads(formatters[0].format(record))  # masking keeps every JSON line JSON
    found = leaks("\n".join(texts), extra)
    assert not found, found
    if upgrade.hand_off is None:  # aiohttp chose the subprotocol: it never saw the token offer (not just masked)
        assert "Client protocols ['chat'] don" in caplog.text
    assert len(caplog.records) > 20 and "Traceback" in caplog.text  # the lines are there, only masked


async def test_no_credential_in_wsgate_run_json_debug_logs(tmp_path, unused_tcp_port):
    (tmp_path / "jaas-config.xml").write_text(USERS)
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=unused_tcp_port))
    process = await wsgate_run(config, "--log-level", "debug", "--log-format", "json")
    lines: list[str] = []
    try:
        while not any("ready at" in line for line in lines):
            line = (await asyncio.wait_for(process.stderr.readline(), 10)).decode()
            assert line, "wsgate exited before it was ready:\n" + "".join(lines)
            lines.append(line)
        session = await attack(unused_tcp_port)
        await asyncio.sleep(1.2)
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 10)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = "".join(lines) + rest.decode(errors="replace")
    found = leaks(output, {"session cookie": session})
    assert not found, found
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(r.get("event") == "authentication denied" for r in records)
    if upgrade.hand_off is None:  # picows: the gateway chooses the subprotocol and logs nothing of the offers
        assert any(re.search(r"Client protocols \['chat'\] don", r.get("event", "")) for r in records)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"Authorization: Bearer {JWT}", "Authorization: "),
        (f"<CIMultiDictProxy('Host': 'a', 'Authorization': '{basic(PASSWORD)}')>", "'Host': 'a'"),
        (f"'Client protocols ['wsgate.token.{JWT}', 'chat']", "'chat'"),
        (f"GET /echo?access_token={QUERY_TOKEN}&x=1 HTTP/1.1", "x=1"),
        (f"Got more than 2048 bytes when reading: b'{HEADER_TOKEN}xxxx'", "Got more than 2048 bytes"),
        (f"Bad status line: b'G\\x00T /?q={OPAQUE}'", "Bad status line: b'"),
        (f"ValueError: invalid token {OPAQUE!r}", "ValueError: invalid token"),
        (f"Cookie: wsgate_corp={OPAQUE}; theme=dark", "Cookie: "),
        (f"Set-Cookie: wsgate_corp={OPAQUE}; Path=/", "Set-Cookie: "),
        (f"X-Api-Token: {HEADER_TOKEN}", "X-Api-Token: "),
        (f"Proxy-Authorization: Negotiate {OPAQUE}", "Proxy-Authorization"),
        (f'WWW-Authenticate: Application Basic realm="corp" {basic(PASSWORD)}', 'realm="corp"'),
        (f"truncated header eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIi{OPAQUE[:4]}", "truncated header"),
        (f"{{'password': '{PASSWORD}', 'user': 'joe'}}", "'user': 'joe'"),
    ],
)
def test_the_redactor_masks_each_form(text, kept):
    from wsgate.observe.redact import REDACTOR

    REDACTOR.add(headers=("X-Api-Token",), cookies=("wsgate_corp",))
    masked = REDACTOR.text(text)
    assert not leaks(masked) and OPAQUE[:8] not in masked and "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" not in masked
    assert kept in masked and "[redacted]" in masked


def test_the_redactor_leaves_ordinary_lines_alone():
    from wsgate.observe.redact import REDACTOR

    for line in (
        "service[echo] (echo) ready at ws://127.0.0.1:8000/echo (port 8000)",
        "authentication denied",
        "closing 3 connection(s) with 1001",
        "listening on tls://*:443 (2 route(s))",
        "login failed (file: no user name and password presented)",
        "login failed (file: bad user name or password for 'joe')",
        "token expired",
    ):
        assert REDACTOR.text(line) == line


def test_a_masked_json_line_is_still_json():
    from wsgate.observe.redact import REDACTOR

    line = json.dumps({"event": f'client sent "Authorization: Bearer {OPAQUE}" and "Cookie: sso={COOKIE_TOKEN}"'})
    masked = REDACTOR.text(line)
    assert not leaks(masked) and json.loads(masked)["event"].startswith('client sent "Authorization: [redacted]"')
