"""RFC 6455 on the wire: handshakes refused before any login or back-end work, masked client frames,
close codes (what a client may send, what the gateway answers, what it records) and the proxy's close relay.

Wire tests write hand-built requests and frames on plain sockets; nothing here is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp._websocket import reader as active_reader
from aiohttp._websocket import reader_c, reader_py
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_websocket import WebSocketError
from multidict import CIMultiDict

from wsgate.core import http
from wsgate.core.close import client_may_send
from wsgate.observe import metrics
from wsgate.transport import websocket

from .conftest import port_of

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example
TEXT, BINARY, CLOSE, PING = 0x1, 0x2, 0x8, 0x9

ECHO = """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    accept-options:
      ws.maximum.message.size: 1k
"""


# -- wire helpers ----------------------------------------------------------------------------------------


def request_bytes(
    path: str,
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    drop: tuple[str, ...] = (),
    extra: tuple[tuple[str, str], ...] = (),
    **replace: str,
) -> bytes:
    """A WebSocket handshake, valid unless told otherwise (``Sec_WebSocket_Key="x"`` replaces a header)."""
    headers = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    headers.update({name.replace("_", "-"): value for name, value in replace.items()})
    lines = [f"{method} {path} {version}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name not in drop]
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Wire:
    """One raw client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Wire:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def response(self, request: bytes) -> tuple[int, CIMultiDict[str], bytes]:
        """Send ``request``; the status, headers and (for non-101) body of the answer."""
        self.writer.write(request)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers: CIMultiDict[str] = CIMultiDict(line.split(": ", 1) for line in lines)
        status = int(status_line.split()[1])
        body = b""
        if status != 101 and "Content-Length" in headers:
            body = await self.reader.readexactly(int(headers["Content-Length"]))
        return status, headers, body

    def send(self, frame_bytes: bytes) -> None:
        self.writer.write(frame_bytes)

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the gateway (servers never mask)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        assert not second & 0x80, "a server frame must not be masked"
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return first & 0x0F, await self.reader.readexactly(length)

    async def close_code(self) -> int:
        """Frames until the gateway's close frame: its code."""
        while True:
            opcode, payload = await self.frame()
            if opcode == CLOSE:
                return int(struct.unpack("!H", payload[:2])[0])

    async def eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    async def finish(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def frame(opcode: int, payload: bytes = b"", *, mask: bool = True, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    size = len(payload)
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)


async def upgraded(port: int, path: str = "/echo") -> Wire:
    wire = await Wire.open(port)
    status, _, _ = await wire.response(request_bytes(path))
    assert status == 101
    return wire


class CountingBackend:
    """A TCP echo back end that counts the connections it accepted and keeps what it received."""

    def __init__(self) -> None:
        self.accepted = 0
        self.received = bytearray()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return port_of(self.server)


@pytest.fixture
async def counting_backend() -> AsyncIterator[CountingBackend]:
    backend = CountingBackend()
    backend.server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    yield backend
    backend.server.close()
    for writer in backend.writers:  # a connection the gateway should not have opened must not hang the test
        writer.transport.abort()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(backend.server.wait_closed(), 2)


def proxy_to(port: int, scheme: str = "tcp") -> str:
    return f"""
service:
  - name: proxy
    accept: ws://127.0.0.1:0/proxy
    connect: {scheme}://127.0.0.1:{port}{"/ws" if scheme == "ws" else ""}
    type: proxy
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    accept-options:
      ws.maximum.message.size: 1k
"""


# -- the handshake, sans I/O -----------------------------------------------------------------------------

GOOD = {
    "Host": "gw.test",
    "Upgrade": "websocket",
    "Connection": "keep-alive, Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def headers_with(**changes: str | None) -> CIMultiDict[str]:
    headers = CIMultiDict(GOOD)
    for name, value in changes.items():
        name = name.replace("_", "-")
        headers.popall(name, None)
        if value is not None:
            headers[name] = value
    return headers


def test_a_valid_handshake_passes() -> None:
    assert http.check_handshake("GET", (1, 1), CIMultiDict(GOOD)) is None


@pytest.mark.parametrize(
    ("method", "version", "changes", "status"),
    [
        ("POST", (1, 1), {}, 400),
        ("GET", (1, 0), {}, 400),
        ("GET", (1, 1), {"Connection": "keep-alive"}, 400),
        ("GET", (1, 1), {"Connection": None}, 400),
        ("GET", (1, 1), {"Upgrade": "websocket, h2c"}, 400),
        ("GET", (1, 1), {"Sec_WebSocket_Key": None}, 400),
        ("GET", (1, 1), {"Sec_WebSocket_Key": "c2hvcnQ="}, 400),  # 5 bytes
        ("GET", (1, 1), {"Sec_WebSocket_Key": base64.b64encode(b"x" * 17).decode()}, 400),
        ("GET", (1, 1), {"Sec_WebSocket_Key": "dGhlIHNhbXBsZSBub25jZQ!="}, 400),  # not base64
        ("GET", (1, 1), {"Sec_WebSocket_Key": "dGhlIHNhbXBsZSBub25jZé=="}, 400),  # not ASCII
        ("GET", (1, 1), {"Sec_WebSocket_Version": None}, 400),
        ("GET", (1, 1), {"Sec_WebSocket_Version": "8"}, 426),
        ("GET", (1, 1), {"Sec_WebSocket_Version": "7"}, 426),
    ],
)
def test_invalid_handshakes_are_refused(
    method: str, version: tuple[int, int], changes: dict[str, str | None], status: int
) -> None:
    refusal = http.check_handshake(method, version, headers_with(**changes))
    assert refusal is not None and refusal.status == status
    if status == 426:
        assert refusal.headers == {"Sec-WebSocket-Version": "13"}


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "Origin",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "Upgrade",
        "Authorization",
        "Cookie",
    ],
)
def test_a_duplicated_security_header_refuses_the_handshake(name: str) -> None:
    headers = CIMultiDict(GOOD)
    value = headers.get(name, "a")
    headers.add(name, value)
    headers.add(name, value)  # twice more: the same value repeated is still ambiguous to a proxy
    refusal = http.check_handshake("GET", (1, 1), headers)
    assert refusal is not None and refusal.status == 400 and name in refusal.text


def test_plain_requests_refuse_duplicates_that_matter_to_them() -> None:
    for name in ("Host", "Origin", "Authorization", "Cookie"):
        refusal = http.check_request(CIMultiDict([(name, "a"), (name, "b")]))
        assert refusal is not None and refusal.status == 400
    assert http.check_request(CIMultiDict([("Accept", "a"), ("Accept", "b"), ("Host", "x")])) is None


def test_key_must_be_16_bytes_of_base64() -> None:
    assert http.valid_key(KEY)
    assert not http.valid_key(None) and not http.valid_key("") and not http.valid_key(KEY[:-2])


# -- the handshake, on the wire --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        request_bytes("/echo", extra=(("Origin", "http://127.0.0.1"), ("Origin", "http://evil.example"))),
        request_bytes("/echo", extra=(("Sec-WebSocket-Protocol", "a"), ("Sec-WebSocket-Protocol", "b"))),
        request_bytes("/echo", extra=(("Host", "127.0.0.1"),)),
        request_bytes("/echo", extra=(("Cookie", "a=1"), ("Cookie", "a=2"))),
    ],
    ids=["origin", "protocol", "host", "cookie"],
)
async def test_duplicated_headers_are_400_at_the_listener(start_gateway, request_: bytes) -> None:
    gw = await start_gateway(ECHO)
    wire = await Wire.open(gw.port_of("echo"))
    status, _, body = await wire.response(request_)
    assert status == 400 and b"Duplicate" in body
    await wire.finish()


async def test_duplicated_host_on_plain_http_is_400(start_gateway) -> None:
    gw = await start_gateway(ECHO)
    wire = await Wire.open(gw.port_of("echo"))
    status, _, _ = await wire.response(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: other.example\r\n\r\n")
    assert status == 400
    await wire.finish()


async def test_duplicated_authorization_is_400_before_any_login(start_gateway, tmp_path: Path, caplog) -> None:
    (tmp_path / "jaas-config.xml").write_text(
        '<?xml version="1.0"?><jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">'
        "<user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>"
        "</jaas-config>"
    )
    gw = await start_gateway(
        ECHO
        + """    realm-name: files
    authorization-constraint:
      require-role: AUTHORIZED
security:
  realm:
    - name: files
      authentication:
        http-challenge-scheme: Basic
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
"""
    )
    joe = "Basic " + base64.b64encode(b"joe:welcome").decode()
    other = "Basic " + base64.b64encode(b"eve:guess").decode()
    wire = await Wire.open(gw.port_of("echo"))
    with caplog.at_level(logging.INFO):
        status, _, _ = await wire.response(
            request_bytes("/echo", extra=(("Authorization", joe), ("Authorization", other)))
        )
    assert status == 400
    audited = [r.msg for r in caplog.records if r.name == "wsgate.audit"]
    assert [a["event"] for a in audited] == ["bad request"], "no login module may run"
    assert audited[0]["reason"] == "Duplicate Authorization header." and "welcome" not in caplog.text
    await wire.finish()


BAD_HANDSHAKES = {
    "no key": request_bytes("/proxy", drop=("Sec-WebSocket-Key",)),
    "short key": request_bytes("/proxy", Sec_WebSocket_Key="c2hvcnQ="),
    "no Connection: Upgrade": request_bytes("/proxy", Connection="keep-alive"),
    "version 8": request_bytes("/proxy", Sec_WebSocket_Version="8"),
    "HTTP/1.0": request_bytes("/proxy", version="HTTP/1.0"),
    "POST": request_bytes("/proxy", method="POST"),
    "two keys": request_bytes("/proxy", extra=(("Sec-WebSocket-Key", KEY),)),
}


async def test_invalid_handshakes_never_dial_the_back_end(start_gateway, counting_backend) -> None:
    gw = await start_gateway(proxy_to(counting_backend.port))
    for name, request_ in BAD_HANDSHAKES.items():
        wire = await Wire.open(gw.port_of("proxy"))
        status, _, _ = await wire.response(request_)
        assert status in (400, 426), name
        await wire.finish()
    await asyncio.sleep(0.1)
    assert counting_backend.accepted == 0
    wire = await upgraded(gw.port_of("proxy"), "/proxy")  # a valid one does
    wire.send(frame(BINARY, b"hi"))
    assert await wire.frame() == (BINARY, b"hi")
    assert counting_backend.accepted == 1
    await wire.finish()


@pytest.mark.parametrize("version", ["7", "8"])
async def test_old_websocket_versions_get_426_naming_13(start_gateway, version: str) -> None:
    gw = await start_gateway(ECHO)
    wire = await Wire.open(gw.port_of("echo"))
    status, headers, _ = await wire.response(request_bytes("/echo", Sec_WebSocket_Version=version))
    assert status == 426 and headers["Sec-WebSocket-Version"] == "13"
    await wire.finish()


async def test_http_1_0_upgrade_is_refused(start_gateway) -> None:
    gw = await start_gateway(ECHO)
    wire = await Wire.open(gw.port_of("echo"))
    status, _, body = await wire.response(request_bytes("/echo", version="HTTP/1.0"))
    assert status == 400 and b"HTTP/1.1" in body
    await wire.finish()


# -- frames ----------------------------------------------------------------------------------------------


def test_production_uses_the_compiled_reader() -> None:
    """MaskedFrames is what enforces masking with it (below): reader_c has no check of its own."""
    assert active_reader.WebSocketReader is reader_c.WebSocketReader


@pytest.mark.parametrize("module", [reader_c, reader_py], ids=["reader_c", "reader_py"])
async def test_masked_frames_pass_whole_or_split_and_the_first_unmasked_one_fails(module) -> None:
    loop = asyncio.get_running_loop()
    stream = (
        frame(TEXT, b"one")
        + frame(BINARY, b"x" * 300)
        + frame(BINARY, b"y" * 70000)
        + frame(PING, b"p")
        + frame(BINARY, b"z", mask=False)
        + frame(TEXT, b"never")
    )
    for step in (len(stream), 1, 3, 7):
        queue = module.WebSocketDataQueue(BaseProtocol(loop), 1 << 20, loop=loop)
        guard = websocket.MaskedFrames(module.WebSocketReader(queue, 1 << 20, compress=False, decode_text=True), queue)
        results = [guard.feed_data(stream[i : i + step]) for i in range(0, len(stream), step)]
        assert results[-1] == (True, b"")
        messages = []
        with pytest.raises(WebSocketError) as error:
            while True:
                messages.append(await queue.read())
        assert error.value.code == 1002
        assert [m.data for m in messages] == ["one", b"x" * 300, b"y" * 70000, b"p"], step


@pytest.mark.parametrize("service", ["echo", "proxy"])
async def test_an_unmasked_client_frame_closes_1002_and_nothing_is_forwarded(
    start_gateway, counting_backend, service: str
) -> None:
    gw = await start_gateway(proxy_to(counting_backend.port))
    wire = await upgraded(gw.port_of(service), f"/{service}")
    wire.send(frame(BINARY, b"masked"))
    assert await wire.frame() == (BINARY, b"masked")
    wire.send(frame(BINARY, b"unmasked", mask=False) + frame(BINARY, b"after"))
    assert await wire.close_code() == 1002  # no echo of either came first
    assert await wire.eof()
    await asyncio.sleep(0.1)
    if service == "proxy":
        assert bytes(counting_backend.received) == b"masked"
    await wire.finish()


async def test_an_unmasked_frame_sent_with_the_handshake_is_caught_too(start_gateway) -> None:
    gw = await start_gateway(ECHO)
    wire = await Wire.open(gw.port_of("echo"))
    wire.writer.write(request_bytes("/echo") + frame(TEXT, b"early", mask=False))
    status, _, _ = await wire.response(b"")
    assert status == 101
    assert await wire.close_code() == 1002
    await wire.finish()


def test_close_codes_a_client_may_send() -> None:
    allowed = {0, *range(1000, 1004), *range(1007, 1015), *range(3000, 5000)}
    assert all(client_may_send(code) == (code in allowed) for code in range(70000))


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
async def test_a_client_close_code_no_endpoint_may_send_is_answered_1002(start_gateway, code: int) -> None:
    gw = await start_gateway(ECHO)
    wire = await upgraded(gw.port_of("echo"))
    wire.send(close_frame(code))
    assert await wire.close_code() == 1002
    await wire.finish()


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1011, 1014, 3000, 4999])
async def test_a_valid_client_close_is_answered_1000(start_gateway, code: int) -> None:
    gw = await start_gateway(ECHO)
    wire = await upgraded(gw.port_of("echo"))
    wire.send(close_frame(code, b"bye"))
    assert await wire.close_code() == 1000
    assert await wire.eof()
    await wire.finish()


async def test_invalid_utf8_text_closes_1007(start_gateway) -> None:
    gw = await start_gateway(ECHO)
    wire = await upgraded(gw.port_of("echo"))
    wire.send(frame(TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"))  # a UTF-16 surrogate
    assert await wire.close_code() == 1007
    await wire.finish()


# -- what is recorded ------------------------------------------------------------------------------------


def test_close_labels_are_bounded() -> None:
    assert [metrics.close_label(c) for c in (1000, 1002, 1005, 1006, 1015, None)] == [
        "1000",
        "1002",
        "1005",
        "1006",
        "1015",
        "1006",
    ]
    assert {metrics.close_label(c) for c in range(3000, 4000)} == {"3xxx"}
    assert {metrics.close_label(c) for c in range(4000, 5000)} == {"4xxx"}
    assert {metrics.close_label(c) for c in (0, 999, 1004, 1016, 2999, 5000, 65535)} == {"invalid"}


async def closes_recorded(gw, caplog, count: int) -> tuple[list[int], str]:
    """The access log's close codes (once ``count`` connections closed) and the metrics text."""
    for _ in range(100):
        codes = [r.msg["close_code"] for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("close_code")]
        if len(codes) >= count:
            return codes, gw.runtime.metrics.exposition().decode()
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {codes} closed")


async def test_failed_connections_record_the_code_the_gateway_sent(start_gateway, caplog) -> None:
    gw = await start_gateway(ECHO)
    failures = {
        1002: frame(BINARY, b"x", mask=False),
        1007: frame(TEXT, b"\xff"),
        1009: frame(BINARY, b"x" * 1025),
    }
    with caplog.at_level(logging.INFO):
        for code, bad in failures.items():
            wire = await upgraded(gw.port_of("echo"))
            wire.send(bad)
            assert await wire.close_code() == code
            await wire.finish()
        codes, text = await closes_recorded(gw, caplog, 3)
    assert sorted(codes) == [1002, 1007, 1009]
    for code in failures:
        assert f'wsgate_closes_total{{code="{code}",service="echo"}} 1.0' in text
    assert 'code="1006"' not in text


async def test_client_chosen_codes_are_bucketed_in_metrics_but_raw_in_the_access_log(start_gateway, caplog) -> None:
    gw = await start_gateway(ECHO)
    with caplog.at_level(logging.INFO):
        for code in (4321, 4322, 5000):
            wire = await upgraded(gw.port_of("echo"))
            wire.send(close_frame(code))
            await wire.close_code()
            await wire.finish()
        codes, text = await closes_recorded(gw, caplog, 3)
    assert sorted(codes) == [1002, 4321, 4322]  # 5000 is no client's to send: the gateway failed it
    assert 'wsgate_closes_total{code="4xxx",service="echo"} 2.0' in text
    assert 'wsgate_closes_total{code="1002",service="echo"} 1.0' in text
    assert 'code="4321"' not in text


async def test_a_client_that_resets_while_its_echo_is_blocked_is_its_own_loss(start_gateway, caplog) -> None:
    """The echo's write fails because the client left: logged as the client's loss, no 1011 to a dead socket."""
    gw = await start_gateway(ECHO)
    wire = await upgraded(gw.port_of("echo"))
    message = frame(BINARY, b"e" * 1000)
    with caplog.at_level(logging.INFO):
        for _ in range(20000):  # 20 MB echoed to a client that never reads: the gateway's writes block
            wire.writer.write(message)
        await asyncio.sleep(1.0)
        wire.writer.transport.abort()
        codes, _ = await closes_recorded(gw, caplog, 1)
    assert not [r for r in caplog.records if r.name == "wsgate.service" and r.levelno >= logging.WARNING]
    assert codes != [1011]
    assert any("client" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)
