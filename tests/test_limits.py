"""Limits: the policy without I/O, then on loopback as an attacker meets them (429/503, slowloris,
oversized headers), checked before any login and counted in the metrics."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest

from wsgate.config.values import parse_rate
from wsgate.security.limits import GatewayLimits, ServiceLimits, TokenBucket

from .test_management import REALM, USERS


def test_token_bucket_grants_a_burst_then_the_rate():
    bucket = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # one token back after 1/rate
    assert bucket.take(0.5) > 0


def test_service_limits_count_per_ip_and_in_total():
    limits = ServiceLimits(max_connections=3, max_per_ip=2)
    assert limits.enter("1.1.1.1") is None and limits.enter("1.1.1.1") is None
    refusal = limits.enter("1.1.1.1")
    assert refusal is not None and (refusal.status, refusal.limit) == (429, "connections-per-ip")
    assert limits.enter("2.2.2.2") is None
    refusal = limits.enter("3.3.3.3")
    assert refusal is not None and (refusal.status, refusal.limit) == (503, "connections")
    limits.leave("1.1.1.1")
    assert limits.enter("3.3.3.3") is None
    for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3"):
        limits.leave(ip)
    assert limits.open == 0 and limits.per_ip == {}  # nothing kept for addresses that left


def test_rate_limit_per_ip():
    limits = ServiceLimits(rate=1.0, burst=2.0)
    assert limits.enter("a", now=1000.0) is None and limits.enter("a", now=1000.0) is None
    refusal = limits.enter("a", now=1000.0)
    assert refusal is not None and refusal.limit == "handshake-rate" and refusal.retry_after >= 1
    assert limits.enter("b", now=1000.0) is None  # another client is not affected


def test_gateway_limits():
    gate = GatewayLimits(max_connections=10, max_handshakes=1)
    assert gate.enter_handshake(open_connections=0) is None
    assert gate.enter_handshake(0).limit == "handshakes"
    gate.leave_handshake()
    assert gate.enter_handshake(10).limit == "gateway-connections"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10/s", (10.0, 10.0)), ("600/min", (10.0, 10.0)), ("5/s burst 20", (5.0, 20.0)), ("60/min", (1.0, 1.0))],
)
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["0/s", "ten/s", "10/fortnight", "10/s burst", "10/s burst 0"])
def test_parse_rate_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_rate(text)


LIMITED = (
    """
limits:
  handshake-timeout: 500ms
  header-size: 4k
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    accept-options:
      connection.limit: 3
      connection.limit.per.ip: 2
  - name: login
    accept: ws://127.0.0.1:0/login
    type: echo
    accept-options:
      handshake.rate.per.ip: 2/s
    realm-name: corp
    authorization-constraint:
      require-role: AUTHORIZED
"""
    + REALM
)


@pytest.fixture
async def gw(start_gateway, tmp_path):
    (tmp_path / "jaas-config.xml").write_text(USERS)
    return await start_gateway(LIMITED)


async def status(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        ws = await http.ws_connect(url, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status, (exc.headers or {}).get("Retry-After", "")
    await ws.close()
    return 101, ""


async def test_connection_limits_per_ip_then_per_service(gw, http):
    url = f"ws://127.0.0.1:{gw.port_of('echo')}/echo"
    first, second = await http.ws_connect(url), await http.ws_connect(url)
    assert await status(http, url) == (429, "5")
    await first.close()
    third = await http.ws_connect(url)  # a slot came back
    # The per-service limit counts every client: the 4th connection from another source address.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as other:
        fourth = await other.ws_connect(url.replace("127.0.0.1", "127.0.0.1"))
        assert await status(other, url) == (503, "5")
        await fourth.close()
    for ws in (second, third):
        await ws.close()
    text = gw.runtime.metrics.exposition().decode()
    assert 'wsgate_limited_total{limit="connections-per-ip",service="echo"} 1.0' in text
    assert 'wsgate_limited_total{limit="connections",service="echo"} 1.0' in text
    assert 'wsgate_handshakes_total{outcome="429",service="echo"} 1.0' in text


async def test_rate_limit_comes_before_the_login(gw, http):
    url = f"ws://127.0.0.1:{gw.port_of('login')}/login"
    wrong = {"Authorization": "Basic " + base64.b64encode(b"joe:guess").decode()}
    assert (await status(http, url, wrong))[0] == 403
    assert (await status(http, url, wrong))[0] == 403
    assert (await status(http, url, wrong))[0] == 429  # a password-guessing client is slowed down
    await asyncio.sleep(0.6)
    right = {"Authorization": "Basic " + base64.b64encode(b"joe:welcome").decode()}
    assert await status(http, url, right) == (101, "")


async def test_slow_clients_are_dropped_after_the_handshake_timeout(gw):
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("echo"))
    writer.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ... and never the rest
    await writer.drain()
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 3) == b""  # closed without an answer
    assert asyncio.get_running_loop().time() - started < 1.5
    writer.close()
    text = gw.runtime.metrics.exposition().decode()
    assert 'wsgate_limited_total{limit="handshake-timeout",service=""} 1.0' in text


async def test_a_client_that_sends_its_request_in_time_is_not_dropped(gw, http):
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo") as ws:
        await asyncio.sleep(0.8)  # longer than the handshake timeout: an open WebSocket is not a handshake
        await ws.send_str("still")
        assert (await ws.receive()).data == "still"


async def test_oversized_headers_are_refused(gw, http):
    url = f"http://127.0.0.1:{gw.port_of('echo')}/echo"
    async with http.get(url, headers={"X-Big": "a" * 5000}) as response:
        assert response.status in (400, 431)
    async with http.get(url, headers={"X-Fine": "a" * 3000}) as response:
        assert response.status == 426  # within the limit: the service answers


KEEPALIVE = """
limits:
  handshake-timeout: 1s
service:
  - name: site
    accept: http://127.0.0.1:0/
    type: directory
    properties:
      directory: /
    accept-options:
      http.keepalive.timeout: 1500ms
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
"""


async def keepalive_gateway(start_gateway, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    return await start_gateway(KEEPALIVE)


async def fast_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"GET /a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 1" in head
    assert await reader.readexactly(1) == b"a"


async def test_every_request_head_has_a_deadline_not_only_the_first(start_gateway, tmp_path):
    gw = await keepalive_gateway(start_gateway, tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("site"))
    await fast_get(reader, writer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    closed_at = None
    for byte in b"GET /a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 100:  # one byte per 0.2 s
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                closed_at = loop.time()
                break
        except TimeoutError:
            continue
        except ConnectionError:
            closed_at = loop.time()
            break
    writer.close()
    assert closed_at is not None and closed_at - started < 2.0, "the slow second request was held open"
    text = gw.runtime.metrics.exposition().decode()
    assert 'wsgate_limited_total{limit="handshake-timeout",service=""} 1.0' in text


async def test_idle_keepalive_connections_close_after_the_keepalive_timeout(start_gateway, tmp_path):
    gw = await keepalive_gateway(start_gateway, tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("site"))
    await fast_get(reader, writer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 1.3 < loop.time() - started < 2.5  # http.keepalive.timeout 1500ms, not the 1 s head deadline
    writer.close()
    # A client that keeps asking within the timeout keeps its connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("site"))
    for _ in range(3):
        await fast_get(reader, writer)
        await asyncio.sleep(1.0)
    await fast_get(reader, writer)
    writer.close()


async def test_websocket_connections_are_not_touched_by_the_request_timers(start_gateway, tmp_path, http):
    gw = await keepalive_gateway(start_gateway, tmp_path)
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo") as ws:
        for _ in range(4):  # 2.4 s: past the head deadline and the keep-alive timeout
            await asyncio.sleep(0.6)
            await ws.send_str("x" * 3)  # data after the 101 must not arm a head deadline
            assert (await ws.receive()).data == "xxx"
        await asyncio.sleep(1.6)  # silent past both
        await ws.send_str("still")
        assert (await ws.receive()).data == "still"
