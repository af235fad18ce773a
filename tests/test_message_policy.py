"""Message policy end to end: a real gateway on port 0, real WebSocket clients, a JWT realm.

Per-role ``send`` and ``receive`` rules on echo, proxy (to a real WebSocket back end) and broadcast (the
docs example, run as shipped but for its ports); ``then: close`` closes with 1008; the ``message.policy``
callable; a reload that changes only rules and a re-authentication that changes roles both apply to the
next message of a connection that stays open. The decisions themselves: test_message_policy_units.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wsgate.gateway import Gateway

from .conftest import port_of, tcp_echo_server

DOCS = Path(__file__).parent.parent / "docs"
KEY = ec.generate_private_key(ec.SECP256R1())
QUIET = 0.3  # how long a refused message is given to show up anyway


def token(user: str, *roles: str) -> str:
    claims = {"iss": "https://issuer.test", "aud": "wsgate", "sub": user, "exp": int(time.time() + 300)}
    return jwt.encode({**claims, "roles": list(roles)}, KEY, algorithm="ES256")


def bearer(user: str, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, *roles)}"}


POLICY = """
from wsgate.services.messages import ALLOW, CLOSE, DROP


class Scripted:
    def __call__(self, identity, direction, data):
        if data == "raise":
            raise RuntimeError(data)
        return {"ok": ALLOW, "bye": CLOSE}.get(data, DROP)
"""

CHAT_RULES = """
    authorization-rule:
      - allow: send
        role: writer
      - allow: receive
        role: [reader, writer]
        json.channel: public
      - allow: receive
        role: admin
"""

CONFIG = """
service:
  - name: chat
    accept: ws://127.0.0.1:0/chat
    type: echo
    realm-name: tokens
{chat_rules}
  - name: plain
    accept: ws://127.0.0.1:0/plain
    type: echo
    realm-name: tokens
{plain_rules}
  - name: relay
    accept: ws://127.0.0.1:0/relay
    connect: ws://127.0.0.1:{backend}/
    type: proxy
    realm-name: tokens
    authorization-rule:
      - deny: send
        json.cmd: drop-table
        then: close
      - allow: send
        role: [reader, writer]
        json.to: "*"
      - allow: receive
        role: writer
      - allow: receive
        role: reader
        json.channel: public
  - name: scripted
    accept: ws://127.0.0.1:0/scripted
    type: echo
    properties:
      message.policy: class:loop_message_policy.Scripted
security:
  realm:
    name: tokens
    authentication:
      http-challenge-scheme: Application Token
      login-modules:
        login-module:
          type: jwt
          options:
            key-file: issuer.pem
            issuer: https://issuer.test
            audience: wsgate
            algorithms: ES256
"""


class Backend:
    """A real WebSocket back end: echoes text and binary, keeps what reached it."""

    def __init__(self) -> None:
        self.received: list[str | bytes] = []

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            self.received.append(msg.data)
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws


@pytest.fixture
async def backend() -> AsyncIterator[tuple[Backend, int]]:
    served = Backend()
    app = web.Application()
    app.router.add_get("/", served.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield served, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await asyncio.wait_for(runner.cleanup(), 5)


def write_config(folder: Path, port: int, plain_rules: str = "", chat_rules: str = CHAT_RULES) -> Path:
    path = folder / "gateway.yaml"
    path.write_text(CONFIG.format(backend=port, chat_rules=chat_rules, plain_rules=plain_rules))
    return path


@pytest.fixture
async def gw(start_gateway, tmp_path, backend, monkeypatch) -> AsyncIterator[Gateway]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "issuer.pem").write_bytes(
        KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "loop_message_policy.py").write_text(POLICY)
    write_config(tmp_path, backend[1])
    yield await start_gateway((tmp_path / "gateway.yaml").read_text())
    sys.modules.pop("loop_message_policy", None)


def url(gw: Gateway, service: str) -> str:
    return f"ws://127.0.0.1:{gw.port_of(service)}/{service}"


async def nothing(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Nothing arrives for a while (a refused message was dropped, not delayed)."""
    with pytest.raises(asyncio.TimeoutError):
        msg = await asyncio.wait_for(ws.receive(), QUIET)
        pytest.fail(f"got {msg!r}")


async def text(ws: aiohttp.ClientWebSocketResponse) -> str:
    msg = await asyncio.wait_for(ws.receive(), 3)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return str(msg.data)


async def closed_1008(ws: aiohttp.ClientWebSocketResponse) -> None:
    msg = await asyncio.wait_for(ws.receive(), 3)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1008, "message refused")


def denied(gw: Gateway, service: str, operation: str) -> float:
    metrics = gw.runtime.metrics
    assert metrics is not None
    return float(metrics.denied.labels(service, operation)._value.get())


PUBLIC, SECRET = '{"channel": "public", "n": 1}', '{"channel": "desk-7"}'


async def test_echo_send_and_receive_rules_per_role(gw, http):
    async with (
        http.ws_connect(url(gw, "chat"), headers=bearer("wendy", "writer")) as writer,
        http.ws_connect(url(gw, "chat"), headers=bearer("rita", "reader")) as reader,
        http.ws_connect(url(gw, "chat"), headers=bearer("ada", "writer", "admin")) as admin,
    ):
        await writer.send_str(SECRET)  # sent, but the writer may receive the public channel only
        await writer.send_str(PUBLIC)
        assert await text(writer) == PUBLIC
        await admin.send_str(SECRET)
        assert await text(admin) == SECRET
        await reader.send_str(PUBLIC)  # readers may not send
        await nothing(reader)
        await writer.send_bytes(b'{"channel": "public"}')  # JSON in a binary frame is read all the same
        msg = await asyncio.wait_for(writer.receive(), 3)
        assert msg.type is aiohttp.WSMsgType.BINARY
        await writer.send_str('{"channel": "public", "channel": "desk-7"}')  # ambiguous: refused
        await nothing(writer)
    assert denied(gw, "chat", "send") == 1 and denied(gw, "chat", "receive") == 2


async def test_proxy_send_rules_before_the_back_end_and_close_1008(gw, http, backend):
    served, _ = backend
    async with http.ws_connect(url(gw, "relay"), headers=bearer("gus", "guest")) as guest:
        await guest.send_str('{"to": "x"}')
        await nothing(guest)
    assert served.received == []  # a refused send never reaches the back end
    async with http.ws_connect(url(gw, "relay"), headers=bearer("wendy", "writer")) as writer:
        await writer.send_str('{"to": "bob", "channel": "desk-7"}')
        assert json.loads(await text(writer))["to"] == "bob"
        await writer.send_str('{"cmd": "drop-table", "to": "all"}')
        await closed_1008(writer)
    assert served.received == ['{"to": "bob", "channel": "desk-7"}']


async def test_proxy_receive_rules_decide_what_the_back_end_sends_per_role(gw, http, backend):
    served, _ = backend
    async with http.ws_connect(url(gw, "relay"), headers=bearer("rita", "reader")) as reader:
        await reader.send_str('{"to": "a", "channel": "desk-7"}')
        await reader.send_str('{"to": "a", "channel": "public"}')
        assert json.loads(await text(reader))["channel"] == "public"
        await nothing(reader)
    assert len(served.received) == 2  # both reached the back end; only one came back
    assert denied(gw, "relay", "receive") == 1


async def test_the_policy_callable_allows_drops_closes_and_fails_closed(gw, http, caplog):
    async with http.ws_connect(url(gw, "scripted")) as ws:
        for data in ("nope", "raise", "ok"):
            await ws.send_str(data)
        assert await text(ws) == "ok"
        await ws.send_str("bye")
        await closed_1008(ws)
    metrics = gw.runtime.metrics
    assert metrics is not None and metrics.policy_errors.labels("scripted")._value.get() == 1
    assert denied(gw, "scripted", "send") == 3
    assert "raised RuntimeError" in caplog.text


async def test_a_reload_that_changes_only_rules_applies_to_the_next_message(gw, http, tmp_path, backend):
    async with (
        http.ws_connect(url(gw, "plain"), headers=bearer("rita", "reader")) as plain,
        http.ws_connect(url(gw, "chat"), headers=bearer("wendy", "writer")) as chat,
    ):
        await plain.send_str("before")
        assert await text(plain) == "before"
        await chat.send_str(PUBLIC)
        assert await text(chat) == PUBLIC
        # plain gets rules (it had none when the connection opened); chat loses its rules
        write_config(tmp_path, backend[1], plain_rules=CHAT_RULES, chat_rules="")
        ok, changes = await gw.reload()
        assert ok and "rules of chat, plain replaced" in changes, changes
        await plain.send_str(PUBLIC)  # a reader may not send any more
        await nothing(plain)
        await chat.send_str(SECRET)  # no rules: everything passes again
        assert await text(chat) == SECRET
        assert not plain.closed and not chat.closed


async def test_a_reload_applies_to_a_message_a_connection_was_already_waiting_for(gw, http, tmp_path, backend):
    """The echo waits in receive when the reload lands: the message it then gets is decided by the new rules."""
    async with http.ws_connect(url(gw, "plain"), headers=bearer("rita", "reader")) as plain:
        await plain.send_str("warm")
        assert await text(plain) == "warm"
        write_config(tmp_path, backend[1], plain_rules=CHAT_RULES)
        assert (await gw.reload())[0]
        await plain.send_str(PUBLIC)
        await nothing(plain)


async def test_roles_changed_by_reauthentication_apply_to_the_next_message(gw, http):
    async with http.ws_connect(url(gw, "chat"), headers=bearer("rita", "reader")) as ws:
        refresh = f"http://127.0.0.1:{gw.port_of('chat')}" + ws._response.headers["Wsgate-Refresh"]
        await ws.send_str(PUBLIC)
        await nothing(ws)
        async with http.post(refresh, headers=bearer("rita", "writer")) as response:
            assert response.status == 200
        await ws.send_str(PUBLIC)
        assert await text(ws) == PUBLIC
        async with http.post(refresh, headers=bearer("rita", "reader")) as response:
            assert response.status == 200
        await ws.send_str(PUBLIC)
        await nothing(ws)
    assert denied(gw, "chat", "send") == 2


# -- the docs example, as shipped but for its ports -----------------------------------------------------


@pytest.fixture
async def example(start_gateway, tmp_path, monkeypatch) -> AsyncIterator[Gateway]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("jaas-config.xml", "order_limits.py"):
        shutil.copy(DOCS / "examples" / name, tmp_path / name)
    server, _ = await tcp_echo_server()
    text = (DOCS / "examples" / "message-policy.yaml").read_text()
    text = text.replace("localhost:8000", "127.0.0.1:0").replace("127.0.0.1:5555", f"127.0.0.1:{port_of(server)}")
    yield await start_gateway(text)
    server.close()
    sys.modules.pop("order_limits", None)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_docs_example_broadcast_subscribers_see_what_their_roles_allow(example, http):
    desk = url(example, "desk")
    async with (
        http.ws_connect(desk, headers=basic("joe", "welcome")) as joe,
        http.ws_connect(desk, headers=basic("admin", "admin")) as admin,
    ):
        await asyncio.sleep(0.1)  # both subscribed
        ops = json.dumps({"from": "joe", "channel": "ops", "text": "restart at 6"})
        public = json.dumps({"from": "joe", "channel": "public", "text": "hello"})
        await joe.send_str(ops)
        await joe.send_str(public)
        assert [await text(admin), await text(admin)] == [ops, public]
        assert await text(joe) == public  # joe never sees ops
        await joe.send_str(json.dumps({"from": "admin", "channel": "public", "text": "impostor"}))
        await closed_1008(joe)
        await nothing(admin)


async def test_docs_example_orders_pass_the_rules_then_the_policy(example, http):
    async with http.ws_connect(url(example, "orders"), headers=basic("joe", "welcome")) as joe:
        small = json.dumps({"type": "order", "account": "joe", "quantity": 5})
        await joe.send_str(json.dumps({"type": "order", "account": "admin", "quantity": 5}))  # the rules refuse
        await joe.send_str(json.dumps({"type": "order", "account": "joe", "quantity": 5000}))  # the policy does
        await joe.send_str(small)
        msg = await asyncio.wait_for(joe.receive(), 3)  # the TCP back end echoes bytes
        assert msg.data == small.encode()
        await nothing(joe)
