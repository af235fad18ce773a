"""The management API and the metrics service in memory: ``respond(handshake, accept, body)``, no sockets.

The services answer ``Reply`` values (and the console's feed an ``Upgrade``); transport/resource.py
writes them. test_management.py runs the same API over real sockets; these pin what the service
itself decides: status codes, JSON, headers, when the body is read, the log lines, the live feed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest

from wsgate.config.model import GatewayConfig
from wsgate.core.close import CloseCode
from wsgate.core.handshake import Accept, BodyTooLarge, Handshake, NoBody, Reply, Upgrade, handshake_headers
from wsgate.core.identity import Identity
from wsgate.core.session import LiveSession
from wsgate.errors import ReloadFailed
from wsgate.management import service as management
from wsgate.management.service import ManagementService, MetricsService
from wsgate.observe.metrics import CONTENT_TYPE, Metrics
from wsgate.services.base import Runtime

from .test_channel_services import FakeChannel, service_config

CONFIG = """
service:
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    properties:
      insecure: true
    cross-site-constraint:
      allow-origin: https://ops.example
  - name: metrics
    accept: http://127.0.0.1:0/metrics
    type: metrics
"""
ROOT = Accept(Identity("corp", "root", frozenset({"ADMINISTRATOR"}), None))
NOBODY = Accept()
JSON = ("Content-Type", "application/json; charset=utf-8")
NO_STORE = ("Cache-Control", "no-store")


class Control:
    """A ``GatewayControl`` that records what the API asked of it."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.started = time.time() - 5
        self.revoked: list[tuple[str | None, str | None, str]] = []
        self.entries = {"user:joe": 2e9}
        self.reloaded: tuple[bool, str] | Exception = (True, "1 unchanged")
        self.node: str | None = None  # state: memory (test_state_registry.py runs the cluster on Redis)

    async def remote_sessions(self) -> list[dict[str, object]]:
        return []

    async def session_node(self, connection_id: str) -> str | None:
        return None

    async def revoke(self, user: str | None = None, token: str | None = None, reason: str = "revoked") -> int:
        self.revoked.append((user, token, reason))
        return 2

    async def revocations_in_force(self) -> dict[str, float]:
        return dict(self.entries)

    async def lift_revocation(self, key: str) -> bool:
        return self.entries.pop(key, None) is not None

    async def reload(self) -> tuple[bool, str]:
        if isinstance(self.reloaded, Exception):
            raise self.reloaded
        return self.reloaded


class Body:
    """A request body as the transport hands it over; ``read`` counts how often the service asked."""

    def __init__(self, data: bytes | BaseException = b"", charset: str = "utf-8") -> None:
        self.data = data
        self.charset = charset
        self.reads = 0

    async def read(self) -> bytes:
        self.reads += 1
        if isinstance(self.data, BaseException):
            raise self.data
        return self.data

    async def text(self) -> str:
        return (await self.read()).decode(self.charset)


@pytest.fixture
def admin(tmp_path: Path) -> ManagementService:
    config = service_config(tmp_path, CONFIG, "admin")
    runtime = Runtime(control=Control(load(tmp_path)))
    runtime.metrics = Metrics(lambda: runtime.connections)
    return ManagementService(config, runtime)


def load(tmp_path: Path) -> GatewayConfig:
    from wsgate.catalog import load_config

    return load_config(tmp_path / "gateway.yaml")


def request(method: str, path: str, *headers: tuple[str, str], remote: str = "192.0.2.7") -> Handshake:
    head = handshake_headers([("Host", "127.0.0.1:8000"), *headers])
    return Handshake(method, "127.0.0.1", path, head, remote=remote, authority="127.0.0.1:8000")


def upgrade(path: str, *headers: tuple[str, str]) -> Handshake:
    return request("GET", path, ("Upgrade", "websocket"), ("Connection", "Upgrade"), *headers)


def decoded(reply: Reply | Upgrade) -> object:
    assert isinstance(reply, Reply)
    return json.loads(reply.body)


async def test_reads_answer_json_that_no_one_caches(admin):
    for path in ("/admin/api/info", "/admin/api/services", "/admin/api/sessions", "/admin/api/revocations"):
        reply = await admin.respond(request("GET", path), ROOT, NoBody())
        assert isinstance(reply, Reply) and reply.status == 200, path
        assert reply.headers == (JSON, NO_STORE) and reply.content_type is None, path
    info = decoded(await admin.respond(request("GET", "/admin/api/info"), ROOT, NoBody()))
    assert info["product"] == "wsgate" and info["uptime"] >= 5  # type: ignore[index]
    services = decoded(await admin.respond(request("GET", "/admin/api/services"), ROOT, NoBody()))
    assert [(s["name"], s["open"]) for s in services] == [("admin", 0), ("metrics", 0)]  # type: ignore[attr-defined]
    revocations = decoded(await admin.respond(request("GET", "/admin/api/revocations"), ROOT, NoBody()))
    assert revocations == [{"key": "user:joe", "until": 2e9}]


async def test_the_console_page_and_the_metrics(admin):
    page = await admin.respond(request("GET", "/admin/"), ROOT, NoBody())
    assert isinstance(page, Reply) and page.file == management.CONSOLE and page.status == 200
    assert page.headers == (*management.CONSOLE_HEADERS.items(), NO_STORE)
    metrics = await admin.respond(request("GET", "/admin/metrics"), ROOT, NoBody())
    assert isinstance(metrics, Reply) and metrics.headers == (("Content-Type", CONTENT_TYPE), NO_STORE)
    assert b"wsgate_" in metrics.body


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("GET", "/admin/api/nothing", 404, "Not Found\n"),
        ("PUT", "/admin/api/info", 405, "Method Not Allowed\n"),
        ("HEAD", "/admin/", 405, "Method Not Allowed\n"),  # as before: the console page is GET only
        ("GET", "/admin/api/reload", 405, "Method Not Allowed\n"),
    ],
)
async def test_unknown_resources_and_methods(admin, method, path, status, text):
    reply = await admin.respond(request(method, path), ROOT, NoBody())
    assert isinstance(reply, Reply) and (reply.status, reply.body.decode()) == (status, text)
    assert reply.headers == (("Content-Type", "text/plain; charset=utf-8"), NO_STORE)


async def test_a_revocation_reads_the_body_and_names_the_administrator(admin, caplog):
    body = Body(b'{"user": "joe"}')
    with caplog.at_level(logging.WARNING, "wsgate.management"):
        reply = await admin.respond(request("POST", "/admin/api/revocations"), ROOT, body)
    assert decoded(reply) == {"closed": 2} and body.reads == 1
    assert admin.control.revoked == [("joe", None, "closed by administrator")]
    assert "service[admin]: administrator 'root' revoked user 'joe', closing 2 connection(s)" in caplog.messages
    latin = Body('{"user": "dé"}'.encode("latin-1"), charset="latin-1")  # decoded with the request's charset
    await admin.respond(request("POST", "/admin/api/revocations"), NOBODY, latin)
    assert admin.control.revoked[-1] == ("dé", None, "closed by administrator")
    caplog.clear()
    with caplog.at_level(logging.WARNING, "wsgate.management"):
        await admin.respond(request("POST", "/admin/api/revocations"), NOBODY, Body(b'{"token": "a.b.c"}'))
    assert caplog.messages == [
        "service[admin]: unauthenticated client 192.0.2.7 revoked a token, closing 2 connection(s)"
    ]


@pytest.mark.parametrize(
    "data",
    [b'{"user": "joe"', b'{"user": 1}', b'{"user": ""}', b'{"user": "a", "token": "b"}', b"[1]", b"\xff\xfe", b""],
)
async def test_a_body_that_is_not_one_user_or_token_is_a_400(admin, data):
    reply = await admin.respond(request("POST", "/admin/api/revocations"), ROOT, Body(data))
    assert isinstance(reply, Reply) and reply.status == 400 and decoded(reply) == {"error": "bad request"}
    assert reply.headers == (JSON, NO_STORE) and admin.control.revoked == []


async def test_a_client_that_left_mid_body_gets_a_bare_400_and_a_body_too_large_is_the_transports(admin):
    reply = await admin.respond(request("POST", "/admin/api/revocations"), ROOT, Body(ConnectionResetError()))
    assert reply == Reply(400)  # nobody reads it: no headers, no body
    with pytest.raises(BodyTooLarge):  # the transport answers 413, as aiohttp did
        await admin.respond(request("POST", "/admin/api/revocations"), ROOT, Body(BodyTooLarge(1024)))


async def test_a_body_is_never_read_for_a_request_refused_or_routed_without_one(admin):
    foreign = ("Origin", "https://evil.example")
    for method, path in (("POST", "/admin/api/revocations"), ("POST", "/admin/api/reload"), ("DELETE", "/admin/x")):
        body = Body(b'{"user": "joe"}')
        reply = await admin.respond(request(method, path, foreign), ROOT, body)
        assert isinstance(reply, Reply) and (reply.status, reply.body) == (403, b"Forbidden\n")
        assert reply.headers == (("Content-Type", "text/plain; charset=utf-8"),)  # as before: no Cache-Control
        assert body.reads == 0
    body = Body(b"x" * 10)
    reply = await admin.respond(request("POST", "/admin/api/reload", ("Origin", "https://ops.example")), ROOT, body)
    assert decoded(reply) == {"reloaded": True, "message": "1 unchanged"} and body.reads == 0
    body = Body(b"{}")
    assert decoded(await admin.respond(request("GET", "/admin/api/sessions", foreign), ROOT, body)) == []
    assert body.reads == 0  # reads are allowed from anywhere (CORS decides what a page may see)


async def test_reload_answers(admin):
    admin.control.reloaded = (False, "service[x]/type: 'ecko' is not a service type")
    reply = await admin.respond(request("POST", "/admin/api/reload"), ROOT, NoBody())
    assert isinstance(reply, Reply) and reply.status == 422
    assert decoded(reply) == {"reloaded": False, "message": "service[x]/type: 'ecko' is not a service type"}
    admin.control.reloaded = ReloadFailed("reload failed, the running configuration stays: RuntimeError: x")
    reply = await admin.respond(request("POST", "/admin/api/reload"), ROOT, NoBody())
    assert isinstance(reply, Reply) and reply.status == 500 and reply.headers == (JSON, NO_STORE)
    assert decoded(reply) == {"reloaded": False, "message": str(admin.control.reloaded)}


async def test_sessions_close_and_revocations_lift(admin, caplog):
    reply = await admin.respond(request("DELETE", "/admin/api/sessions/nope"), ROOT, NoBody())
    assert isinstance(reply, Reply) and reply.status == 404 and decoded(reply) == {"closed": 0}
    channel = FakeChannel()
    admin.runtime.connections.add(LiveSession("c-1", "echo", channel, "192.0.2.9"))
    with caplog.at_level(logging.WARNING, "wsgate.management"):
        reply = await admin.respond(request("DELETE", "/admin/api/sessions/c-1"), ROOT, NoBody())
        await asyncio.sleep(0)
    assert decoded(reply) == {"closed": 1} and channel.closes == [(1008, "closed by administrator")]
    assert "service[admin]: administrator 'root' closed connection c-1" in caplog.messages
    reply = await admin.respond(request("DELETE", "/admin/api/principals/"), ROOT, NoBody())
    assert isinstance(reply, Reply) and reply.status == 400
    reply = await admin.respond(request("DELETE", "/admin/api/principals/joe"), ROOT, NoBody())
    assert decoded(reply) == {"closed": 2} and admin.control.revoked == [("joe", None, "closed by administrator")]
    reply = await admin.respond(request("DELETE", "/admin/api/revocations/user:joe"), ROOT, NoBody())
    assert decoded(reply) == {"lifted": True}
    reply = await admin.respond(request("DELETE", "/admin/api/revocations/user:joe"), ROOT, NoBody())
    assert isinstance(reply, Reply) and reply.status == 404 and decoded(reply) == {"lifted": False}


async def test_the_metrics_service(tmp_path):
    config = service_config(tmp_path, CONFIG, "metrics")
    runtime = Runtime()
    runtime.metrics = Metrics(lambda: runtime.connections)
    metrics = MetricsService(config, runtime)
    for method in ("GET", "HEAD"):
        reply = await metrics.respond(request(method, "/metrics"), NOBODY, NoBody())
        assert isinstance(reply, Reply) and reply.status == 200
        assert reply.headers == (("Content-Type", CONTENT_TYPE), NO_STORE)
    reply = await metrics.respond(request("POST", "/metrics"), NOBODY, Body(b"x"))
    assert reply == Reply(405, headers=(("Allow", "GET, HEAD"),))


# -- the console's live feed ----------------------------------------------------------------------


async def test_the_live_feed_needs_an_upgrade_from_its_own_origin(admin):
    reply = await admin.respond(request("GET", "/admin/live"), ROOT, NoBody())
    assert reply == Reply(426, headers=(("Upgrade", "websocket"), NO_STORE))
    reply = await admin.respond(upgrade("/admin/live", ("Origin", "https://evil.example")), ROOT, NoBody())
    assert isinstance(reply, Reply) and reply.status == 403
    assert reply.headers == (("Content-Type", "text/plain; charset=utf-8"), NO_STORE)
    for origin in ("http://127.0.0.1:8000", "https://ops.example"):
        answer = await admin.respond(upgrade("/admin/live", ("Origin", origin)), ROOT, NoBody())
        assert isinstance(answer, Upgrade) and (answer.max_message_size, answer.heartbeat) == (4095, 30.0)


async def test_the_live_feed_sends_snapshots_until_the_client_closes(admin, monkeypatch):
    monkeypatch.setattr(management, "LIVE_INTERVAL", 0.01)
    answer = await admin.respond(upgrade("/admin/live"), ROOT, NoBody())
    assert isinstance(answer, Upgrade)
    channel = FakeChannel("ignored")  # what the console sends is read and ignored
    feed = asyncio.create_task(answer.serve(channel))
    while len(channel.sent) < 3:
        await asyncio.sleep(0.01)
    assert admin.live == {channel}
    snapshot = json.loads(channel.sent[0])
    assert set(snapshot) == {"time", "services", "sessions"} and snapshot["sessions"] == []
    channel.peer_closes(CloseCode.GOING_AWAY)
    await asyncio.wait_for(feed, 2)
    assert admin.live == set()


async def test_a_deaf_live_client_is_dropped_as_a_slow_consumer(admin):
    admin.config = replace(admin.config, accept_options=replace(admin.config.accept_options, write_timeout=0.05))

    class Deaf(FakeChannel):
        async def send(self, data: str | bytes) -> None:
            await asyncio.sleep(10)

    answer = await admin.respond(upgrade("/admin/live"), ROOT, NoBody())
    assert isinstance(answer, Upgrade)
    channel = Deaf()
    await asyncio.wait_for(answer.serve(channel), 2)
    assert channel.aborted and admin.live == set()
    assert admin.runtime.metrics.registry.get_sample_value("wsgate_slow_consumers_total", {"service": "admin"}) == 1


async def test_stop_closes_the_live_feeds_with_1001(admin):
    answer = await admin.respond(upgrade("/admin/live"), ROOT, NoBody())
    assert isinstance(answer, Upgrade)
    channel = FakeChannel()
    feed = asyncio.create_task(answer.serve(channel))
    while not admin.live:
        await asyncio.sleep(0.01)
    await admin.stop()
    await asyncio.wait_for(feed, 2)
    assert channel.closes == [(CloseCode.GOING_AWAY, "gateway shutting down")]


async def test_going_away_closes_the_live_feeds_with_1001_before_the_listeners_shut(admin):
    answer = await admin.respond(upgrade("/admin/live"), ROOT, NoBody())
    assert isinstance(answer, Upgrade)
    channel = FakeChannel()
    feed = asyncio.create_task(answer.serve(channel))
    while not admin.live:
        await asyncio.sleep(0.01)
    admin.going_away(1.0)  # Gateway.stop: not awaited, a deaf peer is aborted after the grace
    await asyncio.wait_for(feed, 2)
    assert channel.closes == [(CloseCode.GOING_AWAY, "gateway shutting down")] and admin.live == set()
