"""Operations on loopback: the management API and its authorization, metrics, access and audit logs,
hot reload under live traffic."""

from __future__ import annotations

import asyncio
import base64
import logging
import textwrap
from pathlib import Path

import aiohttp
import pytest

from wsgate.catalog import load_config
from wsgate.errors import ConfigErrors

from .conftest import port_of, tcp_echo_server


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = basic("root", "t0ps3cret")
JOE = basic("joe", "welcome")

USERS = """<?xml version="1.0"?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>
  <user><name>root</name><password>t0ps3cret</password><role-name>ADMINISTRATOR</role-name></user>
</jaas-config>
"""

REALM = """
security:
  realm:
    - name: corp
      authentication:
        http-challenge-scheme: Application Basic
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
"""

GATEWAY = (
    """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    realm-name: corp
    authorization-constraint:
      require-role: AUTHORIZED
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    realm-name: corp
"""
    + REALM
)


@pytest.fixture
async def gw(start_gateway, tmp_path):
    (tmp_path / "jaas-config.xml").write_text(USERS)
    return await start_gateway(GATEWAY)


def urls(gw) -> tuple[str, str]:
    return f"ws://127.0.0.1:{gw.port_of('echo')}/echo", f"http://127.0.0.1:{gw.port_of('admin')}/admin"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "check.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_management_needs_a_realm_unless_loopback_and_marked_insecure(tmp_path):
    exposed = "service:\n  - name: admin\n    accept: http://0.0.0.0:9999/admin\n    type: management\n"
    with pytest.raises(ConfigErrors, match=r"service\[admin\]/realm-name: a management service needs a realm"):
        load_config(write_config(tmp_path, exposed))
    loopback = exposed.replace("0.0.0.0", "127.0.0.1")
    with pytest.raises(ConfigErrors, match="it has no realm-name"):
        load_config(write_config(tmp_path, loopback))
    insecure = loopback + "    properties:\n      insecure: true\n"
    assert load_config(write_config(tmp_path, insecure)).service("admin").realm_name is None
    bound_out = insecure + "    accept-options:\n      http.bind: 0.0.0.0:9998\n"
    with pytest.raises(ConfigErrors, match="not only loopback"):
        load_config(write_config(tmp_path, bound_out))


def test_management_defaults_to_the_administrator_role(tmp_path):
    (tmp_path / "jaas-config.xml").write_text(USERS)
    config = load_config(write_config(tmp_path, GATEWAY))
    assert config.service("admin").authorization_constraints[0].require_roles == ("ADMINISTRATOR",)


async def test_api_answers_administrators_only(gw, http):
    _, admin = urls(gw)
    async with http.get(f"{admin}/api/info") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="corp"'  # a browser's own login dialog
    for path in ("/api/info", "/api/services", "/api/sessions", "/metrics", "/"):
        async with http.get(admin + path, headers=JOE) as response:
            assert response.status == 403, path
    async with http.delete(f"{admin}/api/principals/root", headers=JOE) as response:
        assert response.status == 403
    async with http.post(f"{admin}/api/reload", headers=JOE) as response:
        assert response.status == 403
    async with http.get(f"{admin}/api/info", headers=ADMIN) as response:
        assert response.status == 200
        info = await response.json()
        text = await response.text()
    assert info["product"] == "wsgate" and info["pid"] > 0
    assert [s["name"] for s in info["config"]["services"]] == ["echo", "admin"]
    assert info["config"]["realms"][0]["login-modules"] == [{"type": "file", "success": "required"}]
    assert "welcome" not in text and "t0ps3cret" not in text and "jaas-config" not in text


async def test_sessions_are_listed_and_closed_one_by_one_or_by_principal(gw, http):
    echo, admin = urls(gw)
    first = await http.ws_connect(echo, headers=JOE)
    second = await http.ws_connect(echo, headers=JOE)
    third = await http.ws_connect(echo, headers=JOE)
    await first.send_str("hello")
    assert (await first.receive()).data == "hello"
    async with http.get(f"{admin}/api/services", headers=ADMIN) as response:
        services = {s["name"]: s for s in await response.json()}
    assert services["echo"]["open"] == 3 and services["echo"]["require-role"] == ["AUTHORIZED"]
    async with http.get(f"{admin}/api/sessions", headers=ADMIN) as response:
        sessions = await response.json()
    assert {s["principal"] for s in sessions} == {"joe"} and len(sessions) == 3
    counted = next(s for s in sessions if s["messages_in"] == 1)
    assert counted["bytes_in"] == 5 and counted["messages_out"] == 1 and counted["remote"] == "127.0.0.1"

    async with http.delete(f"{admin}/api/sessions/{counted['id']}", headers=ADMIN) as response:
        assert response.status == 200 and await response.json() == {"closed": 1}
    msg = await asyncio.wait_for(first.receive(), 1.5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra == "closed by administrator"
    async with http.delete(f"{admin}/api/sessions/{counted['id']}", headers=ADMIN) as response:
        assert response.status == 404

    async with http.delete(f"{admin}/api/principals/joe", headers=ADMIN) as response:
        assert await response.json() == {"closed": 2}
    for ws in (second, third):
        msg = await asyncio.wait_for(ws.receive(), 1.5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008
    for ws in (first, second, third):
        await ws.close()


async def test_state_changes_from_another_site_are_refused(gw, http):
    echo, admin = urls(gw)
    async with http.ws_connect(echo, headers=JOE):
        foreign = {**ADMIN, "Origin": "https://evil.example"}
        async with http.delete(f"{admin}/api/principals/joe", headers=foreign) as response:
            assert response.status == 403
        async with http.post(f"{admin}/api/reload", headers=foreign) as response:
            assert response.status == 403
        same = {**ADMIN, "Origin": admin.rsplit("/admin", 1)[0]}
        async with http.get(f"{admin}/api/sessions", headers=same) as response:
            assert len(await response.json()) == 1


async def test_metrics_count_handshakes_auth_traffic_and_closes(gw, http):
    echo, admin = urls(gw)
    async with http.ws_connect(echo, headers=JOE) as ws:
        await ws.send_bytes(b"12345678")
        await ws.receive()
        async with http.get(f"{admin}/metrics", headers=ADMIN) as response:
            live = await response.text()
        assert 'wsgate_connections_open{service="echo"} 1.0' in live
        assert 'wsgate_bytes_total{direction="in",service="echo"} 8.0' in live
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(echo)  # 401
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(echo, headers=basic("joe", "wrong"))  # 403
    await asyncio.sleep(0.1)
    async with http.get(f"{admin}/metrics", headers=ADMIN) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    for line in (
        'wsgate_connections_total{service="echo"} 1.0',
        'wsgate_handshakes_total{outcome="101",service="echo"} 1.0',
        'wsgate_handshakes_total{outcome="401",service="echo"} 1.0',
        'wsgate_handshakes_total{outcome="403",service="echo"} 1.0',
        'wsgate_closes_total{code="1000",service="echo"} 1.0',
        'wsgate_messages_total{direction="out",service="echo"} 1.0',
        'wsgate_bytes_total{direction="in",service="echo"} 8.0',
        'wsgate_auth_seconds_count{module="file",realm="corp"}',
    ):
        assert line in text, line
    assert 'wsgate_connections_open{service="echo"}' not in text


async def test_metrics_service_without_a_realm(start_gateway, http):
    gw = await start_gateway(
        """
        service:
          - name: metrics
            accept: http://127.0.0.1:0/metrics
            type: metrics
        """
    )
    async with http.get(f"http://127.0.0.1:{gw.port_of('metrics')}/metrics") as response:
        assert response.status == 200
        assert "wsgate_reloads_total" in await response.text() or "wsgate_connections" in await response.text()


async def test_access_and_audit_lines_carry_fields_never_secrets(gw, http, caplog):
    echo, _ = urls(gw)
    with caplog.at_level(logging.INFO):
        async with http.ws_connect(echo, headers=JOE) as ws:
            await ws.send_str("abc")
            await ws.receive()
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(echo, headers=basic("joe", "not-the-password"))
        await asyncio.sleep(0.1)
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    access = next(e for e in events if e["event"] == "connection closed")
    assert access["service"] == "echo" and access["principal"] == "joe" and access["close_code"] == 1000
    assert access["messages_in"] == 1 and access["bytes_out"] == 3 and access["remote"] == "127.0.0.1"
    audit = [e for e in events if e.get("realm") == "corp"]
    assert {e["decision"] for e in audit} == {"authenticated", "denied"}
    denied = next(e for e in audit if e["decision"] == "denied")
    assert denied["status"] == 403 and "bad user name or password for 'joe'" in denied["reason"]
    assert "not-the-password" not in caplog.text and "welcome" not in caplog.text


RELOAD_BEFORE = """
service:
  - name: proxy
    accept: ws://127.0.0.1:{port}/proxy
    connect: tcp://127.0.0.1:{backend}
    type: proxy
  - name: old
    accept: ws://127.0.0.1:{port}/old
    type: echo
  - name: changing
    accept: ws://127.0.0.1:{port}/changing
    type: echo
"""
RELOAD_AFTER = """
service:
  - name: proxy
    accept: ws://127.0.0.1:{port}/proxy
    connect: tcp://127.0.0.1:{backend}
    type: proxy
  - name: new
    accept: ws://127.0.0.1:{port}/new
    type: echo
  - name: changing
    accept: ws://127.0.0.1:{port}/changing
    type: echo
    accept-options:
      ws.maximum.message.size: 1k
"""


async def test_reload_under_live_proxy_traffic_loses_nothing(start_gateway, http, tmp_path, unused_tcp_port):
    backend, _ = await tcp_echo_server()
    values = {"port": unused_tcp_port, "backend": port_of(backend)}
    gw = await start_gateway(RELOAD_BEFORE.format(**values))
    base = f"ws://127.0.0.1:{unused_tcp_port}"
    proxy = await http.ws_connect(f"{base}/proxy")
    old = await http.ws_connect(f"{base}/old")
    changing = await http.ws_connect(f"{base}/changing")
    sent: list[bytes] = []
    count = 600  # ~1 ms apart: the reload happens while they flow

    async def stream() -> None:
        for n in range(count):
            data = f"{n:08d};".encode()
            await proxy.send_bytes(data)
            sent.append(data)
            await asyncio.sleep(0.001)

    async def collect() -> bytes:
        got = b""
        while len(got) < 9 * count:
            msg = await asyncio.wait_for(proxy.receive(), 5)
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            got += msg.data
        return got

    writer, reader = asyncio.create_task(stream()), asyncio.create_task(collect())
    await asyncio.sleep(0.2)
    (tmp_path / "gateway.yaml").write_text(textwrap.dedent(RELOAD_AFTER.format(**values)))
    ok, message = await gw.reload()
    assert ok, message
    assert "1 unchanged, 1 added, 1 changed, 1 removed" in message
    msg = await asyncio.wait_for(old.receive(), 3)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
    msg = await asyncio.wait_for(changing.receive(), 3)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1012
    async with http.ws_connect(f"{base}/new") as new:
        await new.send_str("hi")
        assert (await new.receive()).data == "hi"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{base}/old")
    assert refused.value.status == 404
    assert not writer.done(), "the reload did not happen while messages were flowing"
    await writer
    got = await reader
    assert got == b"".join(sent)  # every message, in order, across the reload
    await proxy.close()
    backend.close()
    await backend.wait_closed()


async def test_a_bad_reload_is_rejected_and_the_old_config_keeps_running(start_gateway, http, tmp_path):
    gw = await start_gateway("service:\n  - name: echo\n    accept: ws://127.0.0.1:0/echo\n    type: echo\n")
    url = f"ws://127.0.0.1:{gw.port_of('echo')}/echo"
    async with http.ws_connect(url) as ws:
        (tmp_path / "gateway.yaml").write_text(
            "service:\n  - name: echo\n    accept: ws://127.0.0.1:0/echo\n    type: ecko\n"
        )
        ok, message = await gw.reload()
        assert not ok and "service[echo]/type: 'ecko' is not a service type" in message
        await ws.send_str("still here")
        assert (await ws.receive()).data == "still here"
    async with http.ws_connect(url) as again:
        await again.send_str("new")
        assert (await again.receive()).data == "new"
    text = gw.runtime.metrics.exposition().decode()
    assert 'wsgate_reloads_total{result="rejected"} 1.0' in text


async def test_reload_rotates_the_certificate_without_dropping_connections(
    start_gateway, http, ca, pem_stores, tmp_path
):
    from .conftest import SECURITY_PEM, client_ssl

    config = "service:\n  - name: echo\n    accept: wss://127.0.0.1:0/echo\n    type: echo\n" + SECURITY_PEM
    gw = await start_gateway(config)
    port = gw.port_of("echo")
    context = client_ssl(ca)

    async def serial_seen() -> tuple[int, aiohttp.ClientWebSocketResponse]:
        ws = await http.ws_connect(f"wss://127.0.0.1:{port}/echo", ssl=context)
        ssl_object = ws.get_extra_info("ssl_object")
        from cryptography import x509

        return x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True)).serial_number, ws

    before, old = await serial_seen()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(pem_stores["keystore"]))
    ok, message = await gw.reload()
    assert ok and "1 unchanged" in message, message
    assert gw.port_of("echo") == port
    after, new = await serial_seen()
    assert after != before  # new handshakes get the rotated certificate
    await old.send_str("kept")
    assert (await old.receive()).data == "kept"  # the connection made before keeps going
    for ws in (old, new):
        await ws.close()


async def test_backend_failures_are_counted(start_gateway, http, unused_tcp_port):
    gw = await start_gateway(
        f"""
        service:
          - name: proxy
            accept: ws://127.0.0.1:0/proxy
            connect: tcp://127.0.0.1:{unused_tcp_port}
            type: proxy
        """
    )
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('proxy')}/proxy") as ws:
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011
    for _ in range(40):  # the server side finishes its close handshake after the client saw the frame
        text = gw.runtime.metrics.exposition().decode()
        if 'wsgate_closes_total{code="1011",service="proxy"} 1.0' in text:
            break
        await asyncio.sleep(0.05)
    assert 'wsgate_closes_total{code="1011",service="proxy"} 1.0' in text, "\n".join(
        line for line in text.splitlines() if ("closes" in line or "open" in line) and not line.startswith("#")
    )
    assert 'wsgate_backend_connect_failures_total{service="proxy"} 1.0' in text


async def test_an_insecure_management_service_on_loopback_answers_without_credentials(start_gateway, http):
    gw = await start_gateway(
        """
        service:
          - name: admin
            accept: http://127.0.0.1:0/admin
            type: management
            properties:
              insecure: true
        """
    )
    async with http.get(f"http://127.0.0.1:{gw.port_of('admin')}/admin/api/info") as response:
        assert response.status == 200 and (await response.json())["config"]["services"][0]["name"] == "admin"
    async with http.get(f"http://127.0.0.1:{gw.port_of('admin')}/admin/") as response:
        assert response.status == 200 and "wsgate console" in await response.text()
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    async with http.get(f"http://127.0.0.1:{gw.port_of('admin')}/admin/api/nothing") as response:
        assert response.status == 404


INSECURE = """
service:
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    properties:
      insecure: true
"""


async def raw_post(port: int, path: str, body: bytes, *headers: str, declared: int | None = None) -> bytes:
    """A POST over a raw socket; ``declared``: a Content-Length other than the body's (a body never sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = len(body) if declared is None else declared
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {length}\r\n"
    writer.write((head + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode() + body)
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    finally:
        writer.close()


async def test_a_body_over_the_limit_is_a_413_and_nothing_is_revoked(start_gateway):
    gw = await start_gateway(INSECURE)
    body = b'{"user": "' + b"x" * (1024 * 1024) + b'"}'
    head = await raw_post(gw.port_of("admin"), "/admin/api/revocations", body)
    assert head.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert b"Cache-Control" not in head  # aiohttp's own answer, as it always was
    assert await gw.revocations_in_force() == {}
    head = await raw_post(gw.port_of("admin"), "/admin/api/revocations", b'{"user": "mallory"}')
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and "user:mallory" in await gw.revocations_in_force()


async def test_a_cross_origin_post_is_refused_without_waiting_for_its_body(start_gateway):
    gw = await start_gateway(INSECURE)
    foreign = "Origin: https://evil.example"
    head = await raw_post(gw.port_of("admin"), "/admin/api/revocations", b"", foreign, declared=100)
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")  # within 3 s: the body was never awaited


async def test_the_live_feed_sends_snapshots_and_closes_with_1001_when_the_gateway_stops(start_gateway, http):
    gw = await start_gateway(INSECURE)
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('admin')}/admin/live") as ws:
        snapshot = await asyncio.wait_for(ws.receive_json(), 3)
        assert set(snapshot) == {"time", "services", "sessions"} and snapshot["services"][0]["name"] == "admin"
        assert ws.protocol is None and len(gw.services["admin"].live) == 1
        stopping = asyncio.create_task(gw.stop(grace=2.0))
        msg = await asyncio.wait_for(ws.receive(), 5)
        while msg.type is aiohttp.WSMsgType.TEXT:  # a snapshot already on its way
            msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001 and msg.extra == "gateway shutting down"
        await stopping


async def test_an_open_live_feed_holds_no_handshake_slot(start_gateway, http):
    """Once its 101 is sent the console's feed is no longer a handshake in progress (``limits/handshakes``)."""
    gw = await start_gateway(
        "limits:\n  handshakes: 1\n" + INSECURE + "  - name: echo\n    accept: ws://127.0.0.1:0/echo\n    type: echo\n"
    )
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('admin')}/admin/live") as feed:
        await asyncio.wait_for(feed.receive_json(), 3)
        async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo") as ws:
            await ws.send_str("in")
            assert (await ws.receive()).data == "in"


async def test_a_body_in_an_unknown_charset_is_a_400_not_a_server_error(start_gateway, caplog):
    gw = await start_gateway(INSECURE)
    content_type = "Content-Type: application/json; charset=nonesuch"
    head = await raw_post(gw.port_of("admin"), "/admin/api/revocations", b'{"user": "x"}', content_type)
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert await gw.revocations_in_force() == {}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
