"""Clients do not control log volume; internal errors keep formatted tracebacks in JSON."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from wsgate.observe.logs import LogLimiter, get_logger, log_formatter

from .conftest import SECURITY_PEM

SECRET = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJqb2UifQ.c2lnbmF0dXJl"


@pytest.fixture
def json_lines():
    """What wsgate's JSON handler writes for records of ``wsgate.test.*`` loggers."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_formatter("json"))
    logger = logging.getLogger("wsgate.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def fail() -> None:
    raise ZeroDivisionError(f"boom with {SECRET}")


@pytest.mark.parametrize("kind", ["stdlib", "structlog", "structlog-exc-info"])
def test_exceptions_are_a_formatted_masked_traceback_string(json_lines, kind: str):
    try:
        fail()
    except ZeroDivisionError as exc:
        if kind == "stdlib":
            logging.getLogger("wsgate.test.std").exception("internal error")
        elif kind == "structlog":
            get_logger("wsgate.test.struct").exception("internal error")
        else:
            get_logger("wsgate.test.struct").error("internal error", exc_info=exc)
    (line,) = json_lines()
    assert line["level"] == "error" and "exc_info" not in line
    text = line["exception"]
    assert isinstance(text, str)
    assert text.startswith("Traceback (most recent call last):") and "in fail" in text
    assert "ZeroDivisionError: boom with" in text and "eyJ" not in text


async def test_the_limiter_lets_a_burst_through_then_one_summary(caplog):
    caplog.set_level(logging.INFO)
    limiter = LogLimiter("test event", per_second=5)
    allowed = sum(limiter.allow() for _ in range(500))
    assert allowed == 5
    for _ in range(40):  # the window ends: one line says how many were left out
        if limiter.suppressed == 0:
            break
        await asyncio.sleep(0.05)
    summaries = [r.getMessage() for r in caplog.records if "suppressed" in r.getMessage()]
    assert len(summaries) == 1 and "suppressed 495 similar lines" in summaries[0]
    assert limiter.allow()  # a new window


async def test_a_flood_of_bad_requests_is_counted_exactly_and_logged_boundedly(start_gateway, caplog):
    caplog.set_level(logging.INFO)
    gw = await start_gateway("""
        service:
          - name: echo
            accept: ws://127.0.0.1:0/echo
            type: echo
    """)
    port = gw.port_of("echo")
    requests = [
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",  # the parser refuses it
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",  # the listener refuses it (no key)
        b"GET /echo HTTP/1.1\r\nHost: caf\xe9\r\n\r\n",  # not a host
    ]

    async def send(request: bytes) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), 10)
        writer.transport.abort()
        return int(line.split()[1])

    statuses = [await send(requests[i % 3]) for i in range(501)]
    assert set(statuses) == {400}
    registry = gw.runtime.metrics.registry
    counted = sum(
        registry.get_sample_value("wsgate_bad_requests_total", {"service": service}) or 0 for service in ("", "echo")
    )
    assert counted == 501
    lines = [r for r in caplog.records if r.name.startswith("wsgate") or r.name.startswith("aiohttp")]
    assert len(lines) < 60, len(lines)
    assert not [r for r in lines if r.levelno >= logging.WARNING]


async def test_a_flood_of_failed_tls_handshakes_is_counted_exactly_and_logged_boundedly(
    start_gateway, pem_stores, caplog
):
    caplog.set_level(logging.INFO)
    config = "service:\n  - name: echo\n    accept: wss://127.0.0.1:0/echo\n    type: echo\n"
    gw = await start_gateway(config + SECURITY_PEM)
    port = gw.port_of("echo")
    for _ in range(200):  # plain HTTP on a TLS port: a protocol mismatch each
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            await asyncio.wait_for(reader.read(), 5)
        except (ConnectionError, TimeoutError):
            pass
        writer.transport.abort()
    registry = gw.runtime.metrics.registry
    for _ in range(100):
        if registry.get_sample_value("wsgate_tls_handshake_failures_total", {"reason": "protocol mismatch"}) == 200:
            break
        await asyncio.sleep(0.05)
    assert registry.get_sample_value("wsgate_tls_handshake_failures_total", {"reason": "protocol mismatch"}) == 200
    lines = [r for r in caplog.records if "tls handshake failed" in r.getMessage()]
    assert 1 <= len(lines) <= 40, len(lines)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_refused_cross_origin_upgrades_are_info_lines_within_the_limit(start_gateway, caplog):
    caplog.set_level(logging.INFO)
    gw = await start_gateway("""
        service:
          - name: echo
            accept: ws://127.0.0.1:0/echo
            type: echo
    """)
    request = (
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for _ in range(100):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("echo"))
        writer.write(request)
        assert (await asyncio.wait_for(reader.readline(), 10)).split()[1] == b"403"
        writer.transport.abort()
    lines = [r for r in caplog.records if "cross-origin" in r.getMessage()]
    assert 1 <= len(lines) <= 20 and all(r.levelno == logging.INFO for r in lines)
