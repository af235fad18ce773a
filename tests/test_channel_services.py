"""Services against an in-memory ``Channel``: no aiohttp, no client socket, no gateway.

The services implement ``serve(session, channel)`` only; these tests hand them a ``FakeChannel`` (a
queue of messages in, a list of messages out, the close it was asked for) and, for the proxy, a real
TCP back end on 127.0.0.1. The socket tests (test_proxy.py, test_websocket_protocol.py, ...) cover
the aiohttp adapter; these pin what the services themselves decide.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wsgate.catalog import load_config
from wsgate.config.model import Service
from wsgate.core.channel import Channel, Data
from wsgate.core.close import CloseCode
from wsgate.core.handshake import Handshake, handshake_headers
from wsgate.core.session import LiveSession
from wsgate.errors import BackendError
from wsgate.services.base import Runtime
from wsgate.services.directory import DirectoryService
from wsgate.services.echo import EchoService
from wsgate.services.proxy import ProxyService


class FakeChannel:
    """A ``core.channel.Channel`` in memory: what the peer sends is queued, what the service sends is kept."""

    def __init__(self, *incoming: Data | None) -> None:
        self.incoming: asyncio.Queue[Data | tuple[int, str] | None] = asyncio.Queue()
        for data in incoming:
            self.incoming.put_nowait(data)
        self.sent: list[Data] = []
        self.closes: list[tuple[int, str]] = []
        self.aborted = False
        self.peer: tuple[int | None, str] = (None, "")
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0

    def peer_closes(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """The peer's close frame, after what is already queued."""
        self.incoming.put_nowait((code, reason))

    async def receive(self) -> Data | None:
        if self.closed and self.incoming.empty():
            return None
        data = await self.incoming.get()
        if isinstance(data, tuple):  # the peer's close frame
            self.peer = data
            return None
        if data is not None:
            self.messages_in += 1
            self.bytes_in += len(data)
        return data

    def __aiter__(self) -> AsyncIterator[Data]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Data]:
        while (data := await self.receive()) is not None:
            yield data

    async def send(self, data: Data) -> None:
        if self.closed:
            raise ConnectionResetError("closed")
        self.sent.append(data)
        self.messages_out += 1
        self.bytes_out += len(data)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if not self.closed:
            self.closes.append((code, reason))
            self.incoming.put_nowait(None)  # the peer answers the close: receive ends

    def close_soon(self, code: int, reason: str, grace: float) -> None:
        asyncio.get_running_loop().create_task(self.close(code, reason))

    def abort(self) -> None:
        self.aborted = True

    @property
    def closed(self) -> bool:
        return bool(self.closes) or self.peer[0] is not None

    @property
    def gone(self) -> bool:
        return self.closed or self.aborted

    @property
    def close_code(self) -> int | None:
        return self.closes[0][0] if self.closes else self.peer[0]

    @property
    def peer_close(self) -> tuple[int | None, str]:
        return (None, "") if self.closes else self.peer


def service_config(tmp_path: Path, text: str, name: str) -> Service:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path).service(name)


def session_of(channel: Channel, service: str, context: object = None) -> LiveSession:
    session = LiveSession("id-1", service, channel, "127.0.0.1")
    session.context = context
    return session


def upgrade_request(path: str, **headers: str) -> Handshake:
    return Handshake("GET", "127.0.0.1", path, handshake_headers(list(headers.items())))


def test_the_fake_channel_is_a_channel() -> None:
    channel: Channel = FakeChannel()  # mypy checks the protocol; this keeps the test honest at runtime too
    assert channel.peer_close == (None, "")


async def test_echo_sends_every_message_back_and_the_channel_counts_them(tmp_path: Path) -> None:
    config = service_config(
        tmp_path, "service:\n  - {name: echo, type: echo, accept: 'ws://127.0.0.1:0/echo'}\n", "echo"
    )
    echo = EchoService(config, Runtime())
    channel = FakeChannel("hé", b"\x00\x01", "")
    channel.peer_closes(CloseCode.GOING_AWAY, "bye")
    await asyncio.wait_for(echo.serve(session_of(channel, "echo"), channel), 5)
    assert channel.sent == ["hé", b"\x00\x01", ""]  # text stays text, binary stays binary
    assert (channel.messages_in, channel.messages_out, channel.bytes_in, channel.bytes_out) == (3, 3, 4, 4)
    assert channel.closes == []  # the peer closed: the adapter answers, the service does not close again


PROXY = """
service:
  - name: proxy
    type: proxy
    accept: ws://127.0.0.1:0/proxy
    connect: {connect}
    properties:
      connect.strategy: {strategy}
"""


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ((None, ""), (CloseCode.GOING_AWAY, "client gone")),  # vanished, or the gateway closed it
        ((CloseCode.NO_STATUS, ""), (CloseCode.NORMAL, "")),  # an empty close frame
        ((CloseCode.NORMAL, "done"), (CloseCode.NORMAL, "done")),
        ((4001, "app"), (4001, "app")),  # the application range is relayed as it is
        ((CloseCode.ABNORMAL, ""), (CloseCode.GOING_AWAY, "client gone")),  # never sent by a client
    ],
)
def test_the_proxy_maps_the_clients_close_for_a_ws_back_end(
    peer: tuple[int | None, str], expected: tuple[int, str]
) -> None:
    channel = FakeChannel()
    channel.peer = peer
    assert ProxyService.client_close(channel) == expected


async def test_the_proxy_relays_to_a_tcp_back_end_and_closes_1000_when_it_ends(tmp_path: Path) -> None:
    got: list[bytes] = []

    async def answers_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.readexactly(4))
        writer.write(b"pong")
        await writer.drain()
        writer.close()

    backend = await asyncio.start_server(answers_once, "127.0.0.1", 0)
    async with backend:
        port = backend.sockets[0].getsockname()[1]
        config = service_config(
            tmp_path, PROXY.format(connect=f"tcp://127.0.0.1:{port}", strategy="immediate"), "proxy"
        )
        proxy = ProxyService(config, Runtime())
        await proxy.start()
        try:
            protocols, context = await proxy.before_upgrade(upgrade_request("/proxy"))
            assert protocols == ()
            channel = FakeChannel(b"ping")
            await asyncio.wait_for(proxy.serve(session_of(channel, "proxy", context), channel), 5)
        finally:
            await proxy.stop()
    assert got == [b"ping"]
    assert b"".join(d for d in channel.sent if isinstance(d, bytes)) == b"pong"
    assert channel.closes == [(CloseCode.NORMAL, "back end closed")]
    assert channel.messages_in == 1 and channel.bytes_in == 4 and channel.bytes_out == 4


async def test_the_proxy_closes_1011_when_its_back_end_is_unavailable(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there now
    config = service_config(tmp_path, PROXY.format(connect=f"tcp://127.0.0.1:{port}", strategy="deferred"), "proxy")
    proxy = ProxyService(config, Runtime())
    await proxy.start()
    try:
        protocols, context = await proxy.before_upgrade(upgrade_request("/proxy"))
        assert (protocols, context) == ((), None)  # deferred: nothing is dialled before the first message
        channel = FakeChannel(b"first")
        await asyncio.wait_for(proxy.serve(session_of(channel, "proxy"), channel), 15)
        assert channel.closes == [(CloseCode.INTERNAL_ERROR, "back end unavailable")]
    finally:
        await proxy.stop()


async def test_the_proxy_keeps_a_dial_failure_for_after_the_upgrade(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    config = service_config(tmp_path, PROXY.format(connect=f"tcp://127.0.0.1:{port}", strategy="immediate"), "proxy")
    proxy = ProxyService(config, Runtime())
    await proxy.start()
    try:
        _, context = await proxy.before_upgrade(upgrade_request("/proxy"))
        assert isinstance(context, BackendError) and context.close_code == CloseCode.INTERNAL_ERROR
        channel = FakeChannel()
        await proxy.serve(session_of(channel, "proxy", context), channel)
        assert channel.closes == [(CloseCode.INTERNAL_ERROR, "back end unavailable")]
    finally:
        await proxy.stop()


async def test_a_slow_consumer_is_closed_1008_once_and_counted_by_its_service() -> None:
    channel = FakeChannel()
    session = session_of(channel, "echo")
    dropped: list[str] = []
    session.on_slow = lambda s, why: dropped.append(why)
    session.drop_slow("a send waited 1s for the peer to read")
    session.drop_slow("again")  # already being dropped
    await asyncio.sleep(0)
    assert session.slow and dropped == ["a send waited 1s for the peer to read"]
    assert channel.closes == [(CloseCode.POLICY_VIOLATION, "too slow")]


async def test_a_session_expires_with_1008_at_its_deadline() -> None:
    channel = FakeChannel()
    session = session_of(channel, "echo")
    session.expire_at(time.time() + 0.05, "authorization expired")
    assert session.deadline is not None
    for _ in range(100):
        if channel.closes:
            break
        await asyncio.sleep(0.01)
    assert channel.closes == [(CloseCode.POLICY_VIOLATION, "authorization expired")]


async def test_the_directory_answers_replies(tmp_path: Path) -> None:
    web = tmp_path / "web"
    (web / "site" / "sub").mkdir(parents=True)
    (web / "site" / "index.html").write_text("<p>hi</p>")
    (web / "site" / ".env").write_text("SECRET=1")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "service:\n  - {name: web, type: directory, accept: 'http://127.0.0.1:0/', "
        "properties: {directory: /site, welcome-file: index.html, options: indexes}}\n"
    )
    directory = DirectoryService(load_config(path).service("web"), Runtime())
    directory.configure(web)

    def get(path: str, method: str = "GET") -> Handshake:
        return Handshake(method, "127.0.0.1", path, handshake_headers([]))

    index = await directory.reply(get("/"))
    assert index.status == 200 and index.file == (web / "site" / "index.html").resolve()
    assert ("Content-Type", "text/html; charset=utf-8") in index.headers
    assert ("X-Content-Type-Options", "nosniff") in index.headers
    hidden = await directory.reply(get("/.env"))
    assert hidden.status == 404 and hidden.file is None and hidden.body == b"Not Found\n"
    moved = await directory.reply(get("/sub"))
    assert moved.status == 301 and ("Location", "/sub/") in moved.headers
    refused = await directory.reply(get("/", "POST"))
    assert refused.status == 405 and ("Allow", "GET, HEAD") in refused.headers
