"""WebSocket emulation (WSE) on loopback: real HTTP clients against a started gateway.

Each test names the k3po script (``specification/wse/src/main/scripts/org/kaazing/specification/wse/…``)
whose server side it checks, where there is one.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from wsgate.management.service import session_view

from .conftest import port_of
from .wse_client import WseClient

ECHO = """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
"""


def base(gw, service: str, path: str | None = None) -> str:
    return f"http://127.0.0.1:{gw.port_of(service)}/{path or service}"


async def test_echo_text_and_binary_over_a_streaming_downstream(start_gateway, http):
    """data/echo.text.payload.length.127, data/echo.binary.payload.length.128, closing/client.send.close."""
    gw = await start_gateway(ECHO)
    client = WseClient(http, base(gw, "echo"))
    created = await client.create()
    assert created.status == 201
    assert client.upstream.startswith(base(gw, "echo") + "/") and client.downstream.startswith(base(gw, "echo") + "/")
    down = await client.open()
    assert down.response.status == 200
    assert down.response.headers["Content-Type"] == "application/octet-stream"
    assert down.response.headers["Connection"] == "close"
    assert "Transfer-Encoding" not in down.response.headers
    text, binary = "é" * 127, bytes(range(128))
    assert await client.send(text, binary) == 200
    assert await down.data() == text
    assert await down.data() == binary
    assert await client.close() == 200
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]


def service(name: str, type_: str = "echo", extra: str = "", connect: str = "") -> str:
    """One service entry of a YAML config (``extra``: more lines at the service's indentation)."""
    lines = [f"  - name: {name}", f"    accept: ws://127.0.0.1:0/{name}", f"    type: {type_}"]
    if connect:
        lines.append(f"    connect: {connect}")
    lines += [f"    {line}" for line in textwrap.dedent(extra).strip().splitlines()] if extra else []
    return "\n".join(lines) + "\n"


async def wait_until(check, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def closes(caplog) -> list[int]:
    """The close codes of the access lines so far."""
    return [int(r.msg["close_code"]) for r in caplog.records if isinstance(r.msg, dict) and "close_code" in r.msg]


def emulated(gw) -> list:
    return [c for c in gw.runtime.connections if c.transport == "wse"]


# -- the wire ---------------------------------------------------------------------------------


async def test_long_polling_answers_with_content_length_and_reconnect(start_gateway, http):
    """proxies/server.send.data.on.longpolling.request: a ``.ki=p`` downstream is one response with a length,
    its frames then RECONNECT; the next long-poll takes the next data."""
    gw = await start_gateway(ECHO)
    client = WseClient(http, base(gw, "echo"), create="cb")
    assert (await client.create()).status == 201
    poll = asyncio.ensure_future(client.open("?.ki=p"))
    await asyncio.sleep(0.1)
    assert await client.send(b"data1") == 200
    down = await asyncio.wait_for(poll, 5)
    assert down.response.headers["Content-Length"] == str(len(b"\x80\x05data1") + 4)
    assert await down.rest() == [b"data1", ("cmd", "01")]
    assert await client.send("data2") == 200  # cb: binary frames only, text travels as bytes
    down = await client.open("?.ki=p")
    assert await down.rest() == [b"data2", ("cmd", "01")]
    assert await client.close() == 200
    down = await client.open("?.ki=p")
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]


async def test_a_new_downstream_ends_the_attached_one_with_reconnect(start_gateway, http):
    """browsers/client.reconnect.downstream and proxies/client.send.overlapping.downstream.request."""
    gw = await start_gateway(ECHO)
    client = WseClient(http, base(gw, "echo"))
    await client.create()
    first = await client.open()
    await asyncio.sleep(0.05)
    second = await client.open()
    assert await first.rest() == [("cmd", "01")]
    assert await client.send("after") == 200
    assert await second.data() == "after"
    await client.close()
    assert await second.rest() == [("cmd", "02"), ("cmd", "01")]


async def test_kb_budget_padding_and_heartbeat(start_gateway, http):
    """browsers/client.send.kb.parameter.in.downstream.request (RECONNECT once ``.kb`` KiB are sent),
    browsers/client.request.padded.response (``.kp``), proxies/client.request.heartbeat.interval (``.kkt``)."""
    gw = await start_gateway(ECHO)
    client = WseClient(http, base(gw, "echo"))
    await client.create()
    down = await client.open("?.kb=1&.kp=256&.kkt=1")
    assert await down.next() == ("cmd", "00")
    assert down.frames == [("cmd", "00")] * 127  # the rest of the padding
    down.frames.clear()
    started = time.monotonic()
    assert await down.next(3) == ("cmd", "00")  # a heartbeat within ~1 s
    assert time.monotonic() - started < 2.5
    assert await client.send(b"x" * 1024) == 200
    assert await down.data() == b"x" * 1024
    assert await down.rest() == [("cmd", "01")]  # over 1 KiB: RECONNECT, the response ends
    down = await client.open()
    assert await client.send(b"more") == 200
    assert await down.data() == b"more"
    await client.close()


async def test_ping_is_answered_with_pong_and_refused_from_clients_that_did_not_accept_commands(start_gateway, http):
    """control/client.send.ping, control/client.send.unexpected.ping (400, then CLOSE + RECONNECT)."""
    gw = await start_gateway(ECHO)
    client = WseClient(http, base(gw, "echo"))
    await client.create()
    down = await client.open()
    assert await client.send(raw=b"\x89\x00\x01" + b"01" + b"\xff") == 200
    assert await down.next() == "pong"
    await client.close()
    plain = WseClient(http, base(gw, "echo"))
    await plain.create(X_Accept_Commands="")  # present, and not "ping"
    assert plain.created is not None and plain.created.status == 400  # opening/...x.accept.commands.not.ping
    plain = WseClient(http, base(gw, "echo"))
    send = {"X-WebSocket-Version": "wseb-1.0", "X-Sequence-No": "1"}
    async with http.post(base(gw, "echo") + "/;e/cbm", headers=send) as response:
        assert response.status == 201
        plain.upstream, plain.downstream = (await response.text()).split("\n")[:2]
        plain.up_seq = plain.down_seq = 1
    down = await plain.open()
    assert await plain.send(raw=b"\x89\x00" + b"\x01" + b"01" + b"\xff") == 400
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]


async def test_out_of_order_and_missing_sequence_numbers_fail_the_session(start_gateway, http, caplog):
    """upstream/request.out.of.order, downstream/request.out.of.order: 400 and the session fails
    (CLOSE + RECONNECT on the downstream); a ``.ksn`` query parameter counts as the header
    (browsers/client.send.ksn.parameter)."""
    caplog.set_level(logging.INFO, "wsgate.access")
    gw = await start_gateway(ECHO)
    client = WseClient(http, base(gw, "echo"))
    await client.create(sequence=10)
    down = await client.open()
    client.up_seq += 1  # skips one
    assert await client.send(b"lost") == 400
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]
    await wait_until(lambda: not emulated(gw))
    assert closes(caplog) == [1002]

    client = WseClient(http, base(gw, "echo"))
    await client.create(sequence=0)
    async with http.get(client.downstream + "?.ksn=1") as response:  # the spec's .ksn: in order
        assert response.status == 200
        client.down_seq = 1
        async with http.post(client.upstream, data=b"\x80\x01!\x01" + b"01" + b"\xff") as missing:
            assert missing.status == 400  # no sequence number at all
        assert await response.read() == b"\x01" + b"02" + b"\xff\x01" + b"01" + b"\xff"


async def test_create_requirements(start_gateway, http):
    """opening/request.header.x.websocket.version.{missing,not.wseb-1.0}, x.sequence.number.{missing,negative,
    non.integer,out.of.range}, request.method.not.post.or.get: 400; request.method.get: 201; an unknown
    create suffix is not a resource (404)."""
    gw = await start_gateway(ECHO)
    url = base(gw, "echo") + "/;e/cb"
    good = {"X-WebSocket-Version": "wseb-1.0", "X-Sequence-No": "1"}
    bad_headers = [
        {"X-Sequence-No": "1"},
        {"X-WebSocket-Version": "wseb-2.0", "X-Sequence-No": "1"},
        {"X-WebSocket-Version": "wseb-1.0"},
        {"X-WebSocket-Version": "wseb-1.0", "X-Sequence-No": "-1"},
        {"X-WebSocket-Version": "wseb-1.0", "X-Sequence-No": "one"},
        {"X-WebSocket-Version": "wseb-1.0", "X-Sequence-No": str(2**53)},
        {**good, "X-Accept-Commands": "not-ping"},
    ]
    for headers in bad_headers:
        async with http.post(url, headers=headers) as response:
            assert response.status == 400, headers
    async with http.put(url, headers=good) as response:
        assert response.status == 400
    async with http.get(url, headers=good) as response:
        assert response.status == 201
    async with http.post(url, headers=good, data=b"ignored body") as response:
        assert response.status == 201  # opening/request.with.body
    async with http.post(base(gw, "echo") + "/;e/cx", headers=good) as response:
        assert response.status == 404
    async with http.get(base(gw, "echo") + "/;e/db/not-a-session", headers={"X-Sequence-No": "2"}) as response:
        assert response.status == 404  # SPEC "Server Downstream Requirements"
    async with http.post(base(gw, "echo") + "/;e/ub/not-a-session", headers={"X-Sequence-No": "2"}) as response:
        assert response.status == 404  # SPEC "Server Upstream Requirements"


async def test_text_and_escaped_text_encodings(start_gateway, http):
    """text.encoding/echo.binary.payload.all.byte.values (``ctm``: UTF-8 text up, windows-1252 down) and
    text.escaped.encoding/echo.escaped.characters (``ctem``)."""
    gw = await start_gateway(ECHO)
    client = WseClient(http, base(gw, "echo"), create="ctm")
    await client.create()
    down = await client.open()
    assert down.response.headers["Content-Type"] == "text/plain;charset=windows-1252"
    all_bytes = bytes(range(256))
    frame = b"\x80\x82\x00" + all_bytes + b"\x01" + b"01" + b"\xff"
    assert await client.send(raw=frame.decode("latin-1").encode("utf-8")) == 200
    assert await down.data() == all_bytes
    await client.send(raw=("\x01" + "02" + "\xff\x01" + "01" + "\xff").encode())
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]

    client = WseClient(http, base(gw, "echo"), create="ctem")
    await client.create()
    response = await http.get(client.downstream, headers={"X-Sequence-No": str(client.down_seq + 1)})
    upstream = bytes([0xC2, 0x80, 0x04, 0x7F, 0x00, 0x7F, 0x72, 0x7F, 0x6E, 0x7F, 0x7F, 0x01]) + b"01\xc3\xbf"
    client.up_seq += 1
    async with http.post(client.upstream, data=upstream, headers={"X-Sequence-No": str(client.up_seq)}) as sent:
        assert sent.status == 200
    wanted = bytes([0x80, 0x04, 0x7F, 0x30, 0x7F, 0x72, 0x7F, 0x6E, 0x7F, 0x7F])
    assert await asyncio.wait_for(response.content.readexactly(len(wanted)), 5) == wanted
    response.close()


async def test_oversized_and_empty_upstream_requests(start_gateway, http):
    """A message over ``ws.maximum.message.size``: 413 and the session ends (1009); upstream/zero.content.length
    .request: 400."""
    gw = await start_gateway("service:\n" + service("echo", extra="accept-options:\n  ws.maximum.message.size: 1k"))
    client = WseClient(http, base(gw, "echo"))
    await client.create()
    down = await client.open()
    assert await client.send(b"x" * 1024) == 200
    assert await down.data() == b"x" * 1024
    assert await client.send(b"x" * 1025) == 413
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]

    client = WseClient(http, base(gw, "echo"))
    await client.create()
    down = await client.open()
    assert await client.send(raw=b"") == 400
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]


# -- the same security as native --------------------------------------------------------------

JAAS = """<?xml version="1.0"?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>
  <user><name>eve</name><password>evil</password></user>
</jaas-config>
"""


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def realm_config(timeouts: str = "", extra: str = "") -> str:
    return (
        "service:\n"
        + service(
            "files",
            extra="""
            realm-name: files
            authorization-constraint:
              require-role: AUTHORIZED
            """,
        )
        + extra
        + f"""
security:
  realm:
    - name: files
      description: Files Realm
      authentication:
        http-challenge-scheme: Basic{timeouts}
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
"""
    )


@pytest.fixture
def jaas(tmp_path: Path) -> Path:
    path = tmp_path / "jaas-config.xml"
    path.write_text(JAAS)
    return path


async def test_create_is_admitted_like_an_upgrade_401_403_then_201(start_gateway, http, jaas):
    """The realm's challenge on create (as a native upgrade gets it), a user without the role 403, then 201 with
    the connection id and refresh URL a native 101 carries; the session is the user's."""
    gw = await start_gateway(realm_config())
    client = WseClient(http, base(gw, "files"))
    created = await client.create()
    assert created.status == 401
    assert created.headers["WWW-Authenticate"].startswith("Basic realm=")
    for headers in ({}, basic("joe", "nope"), basic("eve", "evil")):
        with pytest.raises(aiohttp.WSServerHandshakeError) as native:
            await http.ws_connect(base(gw, "files").replace("http", "ws"), headers=headers)
        refused = await client.create(**headers)
        assert (refused.status, refused.headers.get("WWW-Authenticate")) == (
            native.value.status,
            native.value.headers.get("WWW-Authenticate"),
        )
    assert refused.status == 403
    created = await client.create(**basic("joe", "welcome"))
    assert created.status == 201
    connection_id = created.headers["Wsgate-Connection-Id"]
    assert created.headers["Wsgate-Refresh"] == f"/files/.wsgate/refresh/{connection_id}"
    (session,) = emulated(gw)
    assert session.id == connection_id and session.identity.user == "joe"
    down = await client.open()
    assert await client.send("hi") == 200
    assert await down.data() == "hi"
    await client.close()


async def test_session_timeout_closes_an_emulated_session_unless_refreshed(start_gateway, http, jaas, caplog):
    """``authorization-timeout`` closes it (CLOSE on the downstream, 1008 in the access line); a refresh at
    ``<path>/.wsgate/refresh/<connection-id>`` extends it, as for a native connection."""
    caplog.set_level(logging.INFO, "wsgate.access")
    gw = await start_gateway(realm_config("\n        authorization-timeout: 1s"))
    client = WseClient(http, base(gw, "files"), **basic("joe", "welcome"))
    created = await client.create()
    refresh = f"http://127.0.0.1:{gw.port_of('files')}" + created.headers["Wsgate-Refresh"]
    down = await client.open()
    for _ in range(2):  # 2 refreshes 0.6 s apart: 1.2 s in all, past the 1 s timeout
        await asyncio.sleep(0.6)
        async with http.post(refresh, headers=basic("joe", "welcome")) as response:
            assert response.status == 200, await response.text()
        assert await client.send("alive") == 200
        assert await down.data() == "alive"
    assert await down.rest(3) == [("cmd", "02"), ("cmd", "01")]
    await wait_until(lambda: closes(caplog) == [1008])


async def test_revocation_closes_an_emulated_session(start_gateway, http, jaas):
    gw = await start_gateway(realm_config())
    client = WseClient(http, base(gw, "files"), **basic("joe", "welcome"))
    await client.create()
    down = await client.open()
    assert await gw.revoke(user="joe") == 1
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]
    assert (await client.create()).status == 403  # revoked: the next create is refused


async def test_origin_rules_and_cors(start_gateway, http):
    """A cross-origin page is refused at create (403) unless a cross-site constraint allows it; an allowed one gets
    its CORS headers on create, upstream and downstream, and its preflight is granted with the WSE headers."""
    gw = await start_gateway(
        "service:\n"
        + service(
            "echo",
            extra="""
            cross-site-constraint:
              allow-origin: http://app.example
            """,
        )
    )
    evil = WseClient(http, base(gw, "echo"), Origin="http://evil.example")
    assert (await evil.create()).status == 403
    port = gw.port_of("echo")
    same = WseClient(http, base(gw, "echo"), Origin=f"http://127.0.0.1:{port}")
    assert (await same.create()).status == 201
    async with http.options(
        base(gw, "echo") + "/;e/cbm",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-websocket-version, x-sequence-no, x-accept-commands",
        },
    ) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert "x-websocket-version" in response.headers["Access-Control-Allow-Headers"]
    app = WseClient(http, base(gw, "echo"), Origin="http://app.example")
    created = await app.create()
    assert created.status == 201 and created.headers["Access-Control-Allow-Origin"] == "http://app.example"
    down = await app.open()
    assert down.response.headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert await app.send("x") == 200
    assert await down.data() == "x"
    # The session's URLs are not the evil page's to use, even from the same address, nor with two Origins.
    evil.upstream, evil.up_seq = app.upstream, app.up_seq
    assert await evil.send("y") == 404
    async with http.get(
        app.downstream,
        headers=[("X-Sequence-No", "2"), ("Origin", "http://app.example"), ("Origin", "http://evil.example")],
    ) as response:
        assert response.status == 400
    await app.close()


async def test_limits_refuse_at_create_and_count_emulated_sessions(start_gateway, http):
    """``connection.limit`` (503) and ``connection.limit.per.ip`` (429) count emulated sessions as connections;
    a closed session gives its place back."""
    gw = await start_gateway(
        "service:\n"
        + service("one", extra="accept-options:\n  connection.limit: 1")
        + service("perip", extra="accept-options:\n  connection.limit.per.ip: 1")
    )
    first = WseClient(http, base(gw, "one"))
    assert (await first.create()).status == 201
    second = WseClient(http, base(gw, "one"))
    created = await second.create()
    assert created.status == 503 and "Retry-After" in created.headers
    mine = WseClient(http, base(gw, "perip"))
    assert (await mine.create()).status == 201
    assert (await WseClient(http, base(gw, "perip")).create()).status == 429
    refused = gw.runtime.metrics.registry.get_sample_value
    assert refused("wsgate_handshakes_total", {"service": "one", "outcome": "503"}) == 1
    assert refused("wsgate_handshakes_total", {"service": "perip", "outcome": "429"}) == 1
    down = await first.open()
    await first.close()
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]
    await wait_until(lambda: not any(c.service == "one" for c in gw.runtime.connections))
    assert (await second.create()).status == 201


async def test_a_session_is_served_to_its_own_client_only(start_gateway, http):
    """Another client address presenting the session's URLs gets 404, as for an unknown id."""
    gw = await start_gateway(ECHO)
    client = WseClient(http, base(gw, "echo"))
    await client.create()
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        thief = WseClient(other, base(gw, "echo"))
        thief.upstream, thief.downstream, thief.up_seq, thief.down_seq = (
            client.upstream,
            client.downstream,
            client.up_seq,
            client.down_seq,
        )
        down = await thief.open()
        assert down.response.status == 404
        assert await thief.send("x") == 404
    down = await client.open()  # the owner's sequence numbers are untouched
    assert await client.send("mine") == 200
    assert await down.data() == "mine"
    await client.close()


async def test_idle_sessions_expire(start_gateway, http, caplog):
    """A session with no downstream and no upstream request for ``ws.inactivity.timeout`` ends (1006) and its
    ids are gone."""
    caplog.set_level(logging.INFO, "wsgate.access")
    gw = await start_gateway("service:\n" + service("echo", extra="accept-options:\n  ws.inactivity.timeout: 0.5s"))
    client = WseClient(http, base(gw, "echo"))
    await client.create()
    down = await client.open()
    assert await client.send("x") == 200
    assert await down.data() == "x"
    down.close()  # the client goes away without a word
    await wait_until(lambda: not emulated(gw), 5)
    assert closes(caplog) == [1006]
    assert (await client.open()).response.status == 404


async def test_management_and_metrics_show_the_transport(start_gateway, http):
    gw = await start_gateway(ECHO)
    client = WseClient(http, base(gw, "echo"))
    await client.create()
    (session,) = emulated(gw)
    assert session_view(session, time.time())["transport"] == "wse"
    scrape = gw.runtime.metrics.exposition().decode()
    assert 'wsgate_connections_open_by_transport{service="echo",transport="wse"} 1.0' in scrape
    down = await client.open()
    await client.close()
    await down.rest()


async def test_emulation_can_be_turned_off_per_service(start_gateway, http):
    gw = await start_gateway("service:\n" + service("echo", extra="accept-options:\n  ws.emulation: disabled"))
    assert (await WseClient(http, base(gw, "echo")).create()).status == 404


# -- services cannot tell -----------------------------------------------------------------------


async def test_proxy_to_a_real_tcp_back_end_and_server_close(start_gateway, http):
    """Bytes relay both ways through a proxy service; the back end closing ends the session from the server side
    (closing/server.send.close: CLOSE then RECONNECT, the response ends)."""
    received: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while data := await reader.read(65536):
            received.append(data)
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    backend = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with backend:
        gw = await start_gateway("service:\n" + service("tcp", "proxy", connect=f"tcp://127.0.0.1:{port_of(backend)}"))
        client = WseClient(http, base(gw, "tcp"))
        await client.create()
        down = await client.open()
        assert await client.send(b"hello") == 200
        assert await down.data() == b"HELLO"
        await wait_until(lambda: received == [b"hello"])
        writers[0].close()  # the back end hangs up
        assert await down.rest() == [("cmd", "02"), ("cmd", "01")]
        await client.close()  # the client's answer
        await wait_until(lambda: not emulated(gw))


async def test_broadcast_reaches_native_and_emulated_clients_alike(start_gateway, http):
    gw = await start_gateway(
        "service:\n"
        + service(
            "chat",
            "broadcast",
            extra="""
            properties:
              accept: tcp://127.0.0.1:0
              on.client.message: broadcast
            """,
        )
    )
    chat = gw.services["chat"]
    emulated_client = WseClient(http, base(gw, "chat"))
    await emulated_client.create()
    down = await emulated_client.open()
    async with http.ws_connect(base(gw, "chat").replace("http", "ws")) as native:
        await wait_until(lambda: len(chat.subscribers) == 2)
        _, feed = await asyncio.open_connection("127.0.0.1", chat.feed_port)
        feed.write(b"tick")
        await feed.drain()
        assert await down.data() == b"tick"
        assert (await asyncio.wait_for(native.receive(), 5)).data == b"tick"
        assert await emulated_client.send("from-wse") == 200
        assert (await asyncio.wait_for(native.receive(), 5)).data == "from-wse"
        await native.send_str("from-native")
        assert [await down.data(), await down.data()] == ["from-wse", "from-native"]  # everyone gets each message
        feed.close()
    await emulated_client.close()
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]


# -- Kaazing's JavaScript client: httpxe envelopes ------------------------------------------------


async def raw_request(port: int, head: str, body: bytes = b"") -> tuple[bytes, bytes]:
    """One request on a fresh socket: the response head and the body (read until the server closes or a
    Content-Length is complete)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + body)
        await writer.drain()
        response_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = next(
            (
                int(line.split(b":")[1])
                for line in response_head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            None,
        )
        data = await asyncio.wait_for(reader.readexactly(length) if length is not None else reader.read(), 5)
        return response_head, data
    finally:
        writer.close()


async def test_a_bridge_client_gets_its_challenge_and_create_in_an_envelope(start_gateway, jaas):
    """kaazing/gateway transport/wseb shouldPropagateSubjectApplicationBasic.rpt and
    up.and.down.streams.httpxe.no.authentication.rpt: a create with ``X-Origin`` (Kaazing's bridge) gets
    ``200`` with ``HTTP/1.1 401 …`` and the challenge in the body, then the 201 the same way; its upstream and
    downstream answers are enveloped too (httpxe SPEC "Response Requirements")."""
    gw = await start_gateway(realm_config())
    port = gw.port_of("files")
    create = (
        "GET /files/;e/ctm?.kn=1 HTTP/1.1\nHost: 127.0.0.1:{port}\nContent-Type: text/plain; charset=utf-8\n"
        "X-WebSocket-Version: wseb-1.0\nX-Accept-Commands: ping\nX-Sequence-No: 0\n"
        "X-Origin: http://127.0.0.1:{port}\n{auth}\n"
    )
    head, body = await raw_request(port, create.format(port=port, auth=""))
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Type: text/plain;charset=UTF-8\r\n" in head
    assert body.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"\r\nWWW-Authenticate: Basic realm=" in body
    head, body = await raw_request(port, create.format(port=port, auth="Authorization: Basic am9lOndlbGNvbWU=\n"))
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    inner, _, urls = body.partition(b"\r\n\r\n")
    assert inner.startswith(b"HTTP/1.1 201 Created\r\n") and b"Content-Type: text/plain;charset=utf-8" in inner
    upstream, downstream = urls.decode().split("\n")[:2]
    assert "/files/;e/utm/" in upstream and "/files/;e/dtm/" in downstream
    up_path = upstream.split(str(port), 1)[1]
    down_path = downstream.split(str(port), 1)[1]

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {down_path}?.ksn=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Origin: http://127.0.0.1:{port}\r\n"
        "Content-Length: 3\r\n\r\n>|<".encode()
    )
    await writer.drain()
    outer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert outer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in outer
    inner = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert inner == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain;charset=windows-1252\r\n\r\n"
    up_head = f"POST {up_path} HTTP/1.1\nHost: 127.0.0.1:{port}\nX-Sequence-No: 1\nX-Origin: http://127.0.0.1:{port}\n"
    message = b"\xc2\x80\x02Hi\x01" + b"01\xc3\xbf"  # [0x80 0x02] "Hi" RECONNECT, text-encoded
    head, body = await raw_request(port, up_head + f"Content-Length: {len(message)}\n\n", message)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"HTTP/1.1 200 OK\r\n\r\n"
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x80\x02Hi"
    writer.close()


async def test_x_origin_follows_the_origin_rules(start_gateway):
    """A bridge speaking for a page of another site is refused as that page would be."""
    gw = await start_gateway(ECHO)
    port = gw.port_of("echo")
    head, body = await raw_request(
        port,
        f"POST /echo/;e/cbm HTTP/1.1\nHost: 127.0.0.1:{port}\nX-WebSocket-Version: wseb-1.0\nX-Sequence-No: 0\n"
        "X-Origin: http://evil.example\nContent-Length: 0\n\n",
    )
    assert head.startswith(b"HTTP/1.1 200 OK") and body.startswith(b"HTTP/1.1 403 Forbidden\r\n")


async def test_subprotocol_negotiated_through_a_proxy_to_a_websocket_back_end(start_gateway, http):
    """opening/request.header.x.websocket.protocol: ``X-WebSocket-Protocol: primary, secondary`` is offered to the
    back end as a native client's ``Sec-WebSocket-Protocol`` would be, and its choice comes back on the 201."""
    offered: list[str | None] = []

    async def backend_ws(request: web.Request) -> web.WebSocketResponse:
        offered.append(request.headers.get("Sec-WebSocket-Protocol"))
        ws = web.WebSocketResponse(protocols=("primary",))
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data.upper())
        return ws

    app = web.Application()
    app.router.add_get("/back", backend_ws)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        gw = await start_gateway("service:\n" + service("ws", "proxy", connect=f"ws://127.0.0.1:{port}/back"))
        client = WseClient(http, base(gw, "ws"))
        created = await client.create(X_WebSocket_Protocol="primary, secondary")
        assert created.status == 201 and created.headers["X-WebSocket-Protocol"] == "primary"
        assert [o.replace(" ", "") for o in offered if o] == ["primary,secondary"]
        down = await client.open()
        assert await client.send("hi") == 200
        assert await down.data() == "HI"
        await client.close()
        assert await down.rest() == [("cmd", "02"), ("cmd", "01")]
    finally:
        await runner.cleanup()


async def test_a_client_that_does_not_read_is_dropped_as_a_slow_consumer(start_gateway, http):
    """The service's sends wait while more than its writer limit is buffered for the downstream; one that waits
    ``ws.write.timeout`` drops the session (1008), counted like a native slow consumer."""
    gw = await start_gateway("service:\n" + service("echo", extra="accept-options:\n  ws.write.timeout: 0.3s"))
    client = WseClient(http, base(gw, "echo"))
    await client.create()
    for _ in range(3):  # echoed into a downstream nobody attaches: over 64 KiB buffered
        assert await client.send(b"x" * 100_000) == 200
    await wait_until(lambda: not emulated(gw), 8)
    slow = gw.runtime.metrics.registry.get_sample_value("wsgate_slow_consumers_total", {"service": "echo"})
    assert slow == 1


async def test_workers_get_a_warning_about_emulated_sessions(tmp_path, caplog):
    """With ``--workers`` a session's later requests may reach another worker: said at start-up, once."""
    from wsgate.catalog import load_config
    from wsgate.gateway import Gateway

    path = tmp_path / "gateway.yaml"
    path.write_text(ECHO)
    gateway = Gateway(load_config(path), reuse_port=True)
    await gateway.start()
    try:
        warnings = [r.getMessage() for r in caplog.records if "WebSocket emulation with --workers" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        await gateway.stop(grace=1.0)
