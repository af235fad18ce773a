"""Kaazing's extended handshake (x-kaazing-handshake) on loopback, with a real aiohttp WebSocket client.

``Khp`` speaks the client side as the k3po scripts do (binary request, one binary response) or, with
``kaazing=True``, as Kaazing's JavaScript client does (``?.kl=Y``: text request, the balancer message
after each 101, an empty message after each response). The gateway is real (config text, port 0),
its realms real (the file module, a scripted token module), the proxy's back ends real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from wsgate.core.extended import BALANCER_OPEN, ExtendedResponse, format_request, parse_response
from wsgate.security.login import Failed, LoginAttempt, Succeeded

from .conftest import port_of, tcp_echo_server

KHP = "x-kaazing-handshake"
CHALLENGE = 'Application Basic realm="Files Realm"'


def basic(user: str, password: str, scheme: str = "Basic") -> dict[str, str]:
    return {"Authorization": f"{scheme} " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Tokens:
    """A login module (``type: class:tests.test_extended_loopback.Tokens``): ``ok.<user>`` succeeds."""

    def __init__(self, options: dict[str, str]) -> None:
        self.options = options

    async def login(self, attempt: LoginAttempt) -> Any:
        token = attempt.credentials.bearer()
        if token is None:
            return Failed("no token")
        if token.startswith("ok."):
            return Succeeded(token[3:], frozenset({"AUTHORIZED"}))
        return Failed("unknown token")


def config(tcp_port: int, ws_port: int, session_timeout: str = "") -> str:
    timeout = f"\n        session-timeout: {session_timeout}" if session_timeout else ""
    return f"""
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
  - name: files
    accept: ws://127.0.0.1:0/files
    type: echo
    realm-name: files
    authorization-constraint:
      require-role: AUTHORIZED
    cross-site-constraint:
      allow-origin: https://app.example
  - name: basic
    accept: ws://127.0.0.1:0/basic
    type: echo
    realm-name: basic
    authorization-constraint:
      require-role: AUTHORIZED
  - name: tokens
    accept: ws://127.0.0.1:0/tokens
    type: echo
    realm-name: tokens
    authorization-constraint:
      require-role: AUTHORIZED
  - name: tcp
    accept: ws://127.0.0.1:0/tcp
    connect: tcp://127.0.0.1:{tcp_port}
    type: proxy
    realm-name: files
    authorization-constraint:
      require-role: AUTHORIZED
  - name: stomp
    accept: ws://127.0.0.1:0/stomp
    connect: ws://127.0.0.1:{ws_port}/ws
    type: proxy
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
    - name: basic
      description: Basic Realm
      authentication:
        http-challenge-scheme: Basic
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
    - name: tokens
      authentication:
        http-challenge-scheme: Application Token
        http-header: X-Token
        login-modules:
          login-module:
            type: class:tests.test_extended_loopback.Tokens
"""


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "jaas-config.xml"
    path.write_text("""<?xml version="1.0"?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>
  <user><name>ann</name><password>s3cret</password><role-name>AUTHORIZED</role-name></user>
  <user><name>eve</name><password>nothing</password></user>
</jaas-config>
""")
    return path


@pytest.fixture
async def backends():
    """A TCP echo back end (its received bytes) and a WebSocket back end that speaks v2.stomp."""
    server, received = await tcp_echo_server()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v2.stomp",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    async with server:
        yield port_of(server), site._server.sockets[0].getsockname()[1], received  # type: ignore[union-attr]
    await asyncio.wait_for(runner.cleanup(), 5)


@pytest.fixture
async def gw(start_gateway, users, backends):
    return await start_gateway(config(backends[0], backends[1]))


class Khp:
    """The client side of the extended handshake over an aiohttp WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, path: str, kaazing: bool) -> None:
        self.ws = ws
        self.path = path
        self.kaazing = kaazing

    @classmethod
    async def connect(
        cls, http: aiohttp.ClientSession, gw: Any, service: str, kaazing: bool = False, **kwargs: Any
    ) -> Khp:
        query = "?.kl=Y" if kaazing else ""
        protocols = kwargs.pop("protocols", (KHP,))
        url = f"ws://127.0.0.1:{gw.port_of(service)}/{service}{query}"
        ws = await http.ws_connect(url, protocols=protocols, autoclose=False, **kwargs)
        assert ws.protocol == KHP
        client = cls(ws, f"/{service}", kaazing)
        if kaazing:
            assert await client.message() == BALANCER_OPEN  # Kaazing's client sends nothing before it
        return client

    async def message(self, timeout: float = 5) -> bytes:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        return bytes(msg.data)

    async def request(self, headers: dict[str, str] | None = None, path: str | None = None) -> ExtendedResponse:
        data = format_request(path or self.path, headers)
        await (self.ws.send_str(data.decode()) if self.kaazing else self.ws.send_bytes(data))
        return await self.response()

    async def response(self) -> ExtendedResponse:
        response = parse_response(await self.message())
        if self.kaazing:
            assert await self.message() == b""  # the terminator Kaazing's client waits for
            if response.status == 101:
                assert await self.message() == BALANCER_OPEN  # and the "open" after the inner 101
        return response

    async def closed(self, timeout: float = 5) -> aiohttp.WSMessage:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        await self.ws.close()
        return msg

    async def echo(self, data: str = "hello") -> None:
        await self.ws.send_str(data)
        assert (await asyncio.wait_for(self.ws.receive(), 5)).data == data


async def wait_for_no_connections(gw: Any) -> None:
    for _ in range(100):
        if not gw.runtime.connections:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("connections left open")


# -- opening handshake -----------------------------------------------------------------------


async def test_client_not_offering_the_protocol_is_unchanged(gw, http):
    """opening/fails.to.upgrade.without.handshake.protocol: a native client never gets x-kaazing-handshake,
    a protected service still challenges in the 101's place, and no message arrives before its own."""
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo") as ws:
        assert ws.protocol is None
        await ws.send_str("native")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "native"
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('files')}/files", protocols=("amqp",))
    assert error.value.status == 401 and error.value.headers["WWW-Authenticate"] == CHALLENGE


async def test_protocol_negotiated_on_a_protected_service_without_credentials(gw, http):
    """opening/extended.handshake.protocol.negotiated: the opening needs no credentials (they move into the
    extended handshake); server.sends.message.between...: nothing comes before the extended response."""
    client = await Khp.connect(http, gw, "files")
    response = await client.request()
    assert response.status == 401 and response.headers["WWW-Authenticate"] == CHALLENGE
    assert response.body == b"<html><head></head><body><h1>401 Unauthorized</h1></body></html>"
    assert not gw.runtime.connections  # not a registered connection before the extended 101
    await client.ws.close()


async def test_origin_is_checked_on_the_opening(gw, http):
    """Origin rules apply before any credential: a page on another site gets the native 403."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await Khp.connect(http, gw, "files", headers={"Origin": "https://evil.example"})
    assert error.value.status == 403
    client = await Khp.connect(http, gw, "files", headers={"Origin": "https://app.example"})
    assert (await client.request(basic("joe", "welcome"))).status == 101
    await client.echo()
    await client.ws.close()


async def test_inner_origin_cannot_replace_the_browsers(gw, http):
    """The inner request's Origin is ignored: the browser's one (outer) is what admission checks."""
    client = await Khp.connect(http, gw, "files", headers={"Origin": "https://app.example"})
    assert (await client.request({**basic("joe", "welcome"), "Origin": "https://evil.example"})).status == 101
    await client.ws.close()


# -- unprotected and protected services ------------------------------------------------------


@pytest.mark.parametrize("kaazing", [False, True], ids=["spec", "kaazing-client"])
async def test_unprotected_echo(gw, http, kaazing):
    """extended/connection.established(.data.exchanged.close): inner 101, then the service as usual."""
    client = await Khp.connect(http, gw, "echo", kaazing=kaazing)
    response = await client.request()
    assert response.status == 101 and "Sec-WebSocket-Protocol" not in response.headers
    assert response.headers["Sec-WebSocket-Accept"] == client.ws._response.headers["Sec-WebSocket-Accept"]
    assert "Wsgate-Connection-Id" not in response.headers  # no identity: nothing to refresh
    await client.echo("AAA")
    (session,) = gw.runtime.connections
    assert session.transport == "x-kaazing-handshake" and session.identity is None
    await client.ws.close()
    await wait_for_no_connections(gw)


@pytest.mark.parametrize("kaazing", [False, True], ids=["spec", "kaazing-client"])
async def test_application_basic_challenge_then_credentials(gw, http, kaazing, caplog):
    """extended/connection.established.with.authorization: inner 401 with the realm's challenge, the request
    replayed with Authorization on the same WebSocket, inner 101 with the identity headers."""
    client = await Khp.connect(http, gw, "files", kaazing=kaazing)
    first = await client.request()
    assert first.status == 401 and first.headers["WWW-Authenticate"] == CHALLENGE
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        second = await client.request(basic("joe", "welcome", "Application Basic"))
    assert second.status == 101
    connection_id = second.headers["Wsgate-Connection-Id"]
    assert second.headers["Wsgate-Refresh"] == f"/files/.wsgate/refresh/{connection_id}"
    await client.echo()
    (session,) = gw.runtime.connections
    assert session.identity.user == "joe" and session.id == connection_id
    assert session.transport == "x-kaazing-handshake"
    granted = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("decision") == "authenticated"]
    assert granted and granted[-1]["user"] == "joe" and granted[-1]["service"] == "files"
    assert "welcome" not in caplog.text
    await client.ws.close()


async def test_plain_basic_realm(gw, http):
    client = await Khp.connect(http, gw, "basic", kaazing=True)
    first = await client.request()
    assert first.status == 401 and first.headers["WWW-Authenticate"] == 'Basic realm="Basic Realm"'  # as native
    assert (await client.request(basic("ann", "s3cret"))).status == 101
    await client.echo()
    await client.ws.close()


@pytest.mark.parametrize(
    "credentials",
    [{"Authorization": "Token ok.kim"}, {"Authorization": "Bearer ok.kim"}, {"X-Token": "ok.kim"}],
    ids=["application-token", "bearer", "realm-header"],
)
async def test_application_token_realm(gw, http, credentials):
    client = await Khp.connect(http, gw, "tokens", kaazing=True)
    first = await client.request()
    assert first.status == 401 and first.headers["WWW-Authenticate"] == "Application Token"
    assert (await client.request(credentials)).status == 101
    (session,) = gw.runtime.connections
    assert session.identity.user == "kim"
    await client.ws.close()


async def test_token_offered_as_subprotocol_inside_is_never_selected(gw, http):
    client = await Khp.connect(http, gw, "tokens")
    response = await client.request({"Sec-WebSocket-Protocol": "wsgate.token.ok.kim"})
    assert response.status == 101 and "Sec-WebSocket-Protocol" not in response.headers
    await client.ws.close()


# -- failures look as they do natively --------------------------------------------------------

FAILURES = {
    "wrong-password": (basic("joe", "WELCOME"), 403),
    "unknown-user": (basic("mallory", "welcome"), 403),
    "no-role": (basic("eve", "nothing"), 403),
    "garbled": ({"Authorization": "Basic !!!"}, 403),
    "wrong-scheme": ({"Authorization": "Bearer abc"}, 401),
}


@pytest.mark.parametrize("case", list(FAILURES), ids=list(FAILURES))
async def test_failures_have_the_native_status(gw, http, case):
    """The same status as a native handshake with the same credentials; a 403 ends the connection (1008)."""
    headers, status = FAILURES[case]
    with pytest.raises(aiohttp.WSServerHandshakeError) as native:
        await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('files')}/files", headers=headers)
    assert native.value.status == status
    client = await Khp.connect(http, gw, "files")
    response = await client.request(headers)
    assert response.status == status
    if status == 403:
        assert "WWW-Authenticate" not in response.headers
        assert response.body == b"<html><head></head><body><h1>403 Forbidden</h1></body></html>"
        assert (await client.closed()).data == 1008
    else:
        await client.ws.close()
    assert not gw.runtime.connections


async def test_too_many_attempts_close_the_connection(gw, http, caplog):
    client = await Khp.connect(http, gw, "files", kaazing=True)
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        for _ in range(4):
            response = await client.request()
            assert response.status == 401  # every one looks the same, the last one too
        msg = await client.closed()
    assert msg.data == 1008
    assert "too many extended handshake attempts" in caplog.text


async def test_client_message_that_is_no_request(gw, http, caplog):
    """extended/client.sends.message.between.opening.and.extended.handshake: "Hello" → in-band 400, closed."""
    client = await Khp.connect(http, gw, "echo")
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        await client.ws.send_bytes(b"Hello")
        response = await client.response()
        msg = await client.closed()
    assert response.status == 400 and "Date" in response.headers
    assert msg.data == 1002
    assert "extended handshake failed" in caplog.text


async def test_another_path_inside_is_refused(gw, http):
    client = await Khp.connect(http, gw, "echo")
    assert (await client.request(path="/files")).status == 400
    assert (await client.closed()).data == 1002


async def test_oversized_request_is_refused(gw, http):
    client = await Khp.connect(http, gw, "echo")
    response = await client.request({"X-Pad": "A" * 20000})
    assert response.status == 400
    assert (await client.closed()).data == 1009


async def test_no_request_in_time(start_gateway, users, backends, http):
    gw = await start_gateway("limits:\n  handshake-timeout: 0.5s\n" + config(backends[0], backends[1]))
    client = await Khp.connect(http, gw, "files")
    started = time.monotonic()
    msg = await client.closed(timeout=5)
    assert msg.data == 1008 and 0.4 < time.monotonic() - started < 3


async def test_client_close_during_the_extended_handshake(gw, http):
    client = await Khp.connect(http, gw, "files")
    await client.ws.close()
    assert client.ws.close_code == 1000
    assert not gw.runtime.connections


async def test_connection_limits_are_counted_once(start_gateway, users, backends, http):
    """The opening holds the per-IP connection slot; the extended 101 does not take a second one."""
    text = config(backends[0], backends[1]).replace(
        "    type: echo\n    realm-name: files",
        "    type: echo\n    accept-options:\n      connection.limit.per.ip: 1\n    realm-name: files",
        1,
    )
    gw = await start_gateway(text)
    client = await Khp.connect(http, gw, "files")
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:  # the slot is held during the handshake
        await Khp.connect(http, gw, "files")
    assert error.value.status in (429, 503)
    assert (await client.request(basic("joe", "welcome"))).status == 101
    await client.echo()
    await client.ws.close()
    await wait_for_no_connections(gw)
    again = await Khp.connect(http, gw, "files")  # released when the connection ended
    await again.ws.close()


async def test_the_handshake_is_in_progress_until_the_inner_101(start_gateway, users, backends, http):
    """``limits/handshakes`` counts the extended handshake (the login happens inside it) until the inner 101."""
    gw = await start_gateway("limits:\n  handshakes: 1\n" + config(backends[0], backends[1]))
    client = await Khp.connect(http, gw, "files")
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo")
    assert error.value.status == 503
    assert (await client.request(basic("joe", "welcome"))).status == 101
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo") as ws:
        await ws.send_str("free again")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "free again"
    await client.ws.close()


# -- the connection after the extended 101 is a native one ------------------------------------


async def test_session_timeout_applies(start_gateway, users, backends, http):
    gw = await start_gateway(config(backends[0], backends[1], session_timeout="1s"))
    client = await Khp.connect(http, gw, "files")
    assert (await client.request(basic("joe", "welcome"))).status == 101
    started = time.monotonic()
    msg = await client.closed()
    assert msg.data == 1008 and msg.extra == "session expired"
    assert 0.7 < time.monotonic() - started < 3


async def test_revocation_closes_it(gw, http):
    client = await Khp.connect(http, gw, "files")
    assert (await client.request(basic("joe", "welcome"))).status == 101
    assert await gw.revoke(user="joe") == 1
    msg = await client.closed(timeout=3)
    assert msg.data == 1008 and msg.extra == "revoked"
    again = await Khp.connect(http, gw, "files")
    assert (await again.request(basic("joe", "welcome"))).status == 403  # as native: revoked looks refused
    assert (await again.closed()).data == 1008


async def test_refresh_extends_it_in_place(start_gateway, users, backends, http):
    gw = await start_gateway(config(backends[0], backends[1], session_timeout="1.5s"))
    client = await Khp.connect(http, gw, "files")
    response = await client.request(basic("joe", "welcome"))
    refresh = response.headers["Wsgate-Refresh"]
    expires = int(response.headers["Wsgate-Expires"])
    assert abs(expires - (time.time() + 1.5)) < 2
    async with http.post(f"http://127.0.0.1:{gw.port_of('files')}{refresh}", headers=basic("joe", "welcome")) as r:
        assert r.status == 200, await r.text()
    async with http.post(f"http://127.0.0.1:{gw.port_of('files')}{refresh}", headers=basic("ann", "s3cret")) as r:
        assert r.status == 403  # another user cannot take it over


async def test_proxy_to_a_tcp_back_end(gw, http, backends):
    client = await Khp.connect(http, gw, "tcp", kaazing=True)
    assert (await client.request()).status == 401
    assert backends[2] == []  # nothing dialled before the credentials
    assert (await client.request(basic("joe", "welcome"))).status == 101
    await client.ws.send_bytes(b"through")
    assert (await asyncio.wait_for(client.ws.receive(), 5)).data == b"through"
    assert b"".join(backends[2]) == b"through"  # the extended handshake never reached the back end
    await client.ws.close()


async def test_application_subprotocol_is_negotiated_inside(gw, http):
    """The spec: protocols other than x-kaazing-handshake are offered in the extended request; the inner 101
    selects the one the back end chose."""
    client = await Khp.connect(http, gw, "stomp", protocols=(KHP, "mqtt", "v2.stomp"))
    response = await client.request({"Sec-WebSocket-Protocol": "mqtt, v2.stomp"})
    assert response.status == 101 and response.headers["Sec-WebSocket-Protocol"] == "v2.stomp"
    await client.ws.send_str("hi")
    assert (await asyncio.wait_for(client.ws.receive(), 5)).data == "echo:hi"
    await client.ws.close()


async def test_management_view_shows_the_transport(gw, http):
    from wsgate.management.service import session_view

    client = await Khp.connect(http, gw, "echo")
    assert (await client.request()).status == 101
    (session,) = gw.runtime.connections
    assert session_view(session, time.time())["transport"] == "x-kaazing-handshake"
    await client.ws.close()
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo") as ws:
        await ws.send_str("x")
        await ws.receive()
        (native,) = gw.runtime.connections
        assert session_view(native, time.time())["transport"] == "websocket"


# -- the k3po script on a raw socket ----------------------------------------------------------

DEMO = """
service:
  - name: auth
    accept: ws://127.0.0.1:0/auth
    type: echo
    realm-name: demo
    authorization-constraint:
      require-role: AUTHORIZED
security:
  realm:
    - name: demo
      description: Kaazing WebSocket Gateway Demo
      authentication:
        http-challenge-scheme: Application Basic
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
"""


def masked(payload: bytes, opcode: int = 0x2, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def test_connection_established_with_authorization_byte_for_byte(start_gateway, users):
    """extended/connection.established.with.authorization, on a socket: the frames the script reads."""
    gw = await start_gateway(DEMO)
    port = gw.port_of("auth")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                f"GET /auth HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: x-kaazing-handshake\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
        assert b"\r\nSec-WebSocket-Protocol: x-kaazing-handshake\r\n" in head
        writer.write(masked(b"GET /auth HTTP/1.1\r\n\r\n"))  # [0x82 0x96]
        assert await asyncio.wait_for(reader.readexactly(4), 5) == bytes([0x82, 0x7E, 0x00, 0xD6])
        assert await reader.readexactly(0xD6) == (
            b"HTTP/1.1 401 Unauthorized\r\n"
            b"Content-Type: text/html\r\n"
            b'WWW-Authenticate: Application Basic realm="Kaazing WebSocket Gateway Demo"\r\n'
            b"Content-Length: 64\r\n"
            b"\r\n"
            b"<html><head></head><body><h1>401 Unauthorized</h1></body></html>"
        )
        writer.write(masked(b"GET /auth HTTP/1.1\r\nAuthorization: Basic am9lOndlbGNvbWU=\r\n\r\n"))  # [0x82 0xbd]
        first = await asyncio.wait_for(reader.readexactly(4), 5)
        assert first[:2] == bytes([0x82, 0x7E])
        lines = (await reader.readexactly(int.from_bytes(first[2:], "big"))).split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 101 ")
        assert lines[1] == b"Connection: Upgrade" and lines[2].startswith(b"Date: ")
        assert lines[3] == b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert lines[4].startswith(b"Server: ") and lines[5] == b"Upgrade: websocket"
        assert lines[-2:] == [b"", b""]  # the head ends with an empty line (wsgate's identity headers before it)
        writer.write(masked(b"AAA", opcode=0x1))  # connection.established.data.exchanged.close
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"\x81\x03AAA"
        writer.write(masked(b"", opcode=0x8))  # the script's empty close is answered as wsgate answers any: 1000
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x88\x02\x03\xe8"
    finally:
        writer.close()
