"""Malformed requests are the client's error: never a 5xx and never an ERROR record, on any service type."""

from __future__ import annotations

import asyncio
import logging

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import port_of, tcp_echo_server

USERS = """<?xml version="1.0"?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>
</jaas-config>
"""

GATEWAY = """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
  - name: proxy
    accept: ws://127.0.0.1:0/proxy
    connect: tcp://127.0.0.1:{backend}
    type: proxy
  - name: feed
    accept: ws://127.0.0.1:0/feed
    type: broadcast
    properties:
      accept: tcp://127.0.0.1:0
  - name: static
    accept: http://127.0.0.1:0/static
    type: directory
    properties:
      directory: web
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    realm-name: basic
  - name: metrics
    accept: http://127.0.0.1:0/metrics
    type: metrics
  - name: basic-echo
    accept: ws://127.0.0.1:0/basic-echo
    type: echo
    realm-name: basic
    authorization-constraint:
      require-role: AUTHORIZED
  - name: token-echo
    accept: ws://127.0.0.1:0/token-echo
    type: echo
    realm-name: tokens
    authorization-constraint:
      require-role: "*"
security:
  realm:
    - name: basic
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
        http-cookie: token
        login-modules:
          login-module:
            type: jwt
            options:
              key-file: jwt.pem
              issuer: https://issuer.test
              audience: wsgate
"""

PATHS = {
    "echo": "/echo",
    "proxy": "/proxy",
    "feed": "/feed",
    "static": "/static/index.html",
    "admin": "/admin/connections",
    "metrics": "/metrics",
    "basic-echo": "/basic-echo",
    "token-echo": "/token-echo",
}
# Appended to each service's path.
BAD_SUFFIXES = {
    "pct-nul": b"/%00",
    "pct-nul-mid": b"%00x",
    "raw-nul": b"/\x00",
    "pct-invalid-utf8": b"/%ff%fe",
    "pct-overlong-slash": b"/%c0%af",
    "raw-high": b"/\xc3\xa9\xff",
    "raw-control": b"/\x01\x7f",
    "pct-bad-escape": b"/%zz%",
    "long": b"/" + b"a" * 7000,
    "query-nul": b"?x=%00&y=\xff",
}
SECURITY_HEADERS = (
    "Host",
    "Origin",
    "Connection",
    "Upgrade",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Authorization",
    "Cookie",
    "X-Token",
)
BAD_VALUES = {
    "utf8": "caf\u00e9".encode(),
    "latin1": b"caf\xe9",
    "invalid-utf8": b"\xff\xfe\xc0\xaf",
    "control": b"a\x01b\x1bc",
    "basic-latin1": b"Basic \xe9\xe9\xe9",
    "basic-invalid-b64-utf8": b"Basic /+/+/w==",
    "bearer-utf8": "Bearer \u00e9t\u00e9".encode(),
    "long": b"v" * 7000,
}
UPGRADE = {
    "Host": b"127.0.0.1",
    "Upgrade": b"websocket",
    "Connection": b"Upgrade",
    "Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": b"13",
}


def raw_request(target: bytes, headers: dict[str, bytes]) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1"] + [name.encode() + b": " + value for name, value in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def status_of(port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1]) if line else 0
    finally:
        writer.transport.abort()


def cases() -> list[tuple[str, bytes, dict[str, bytes]]]:
    out: list[tuple[str, bytes, dict[str, bytes]]] = []
    for service, path in PATHS.items():
        for upgrade in (True, False):
            base = dict(UPGRADE) if upgrade else {"Host": b"127.0.0.1"}
            kind = "upgrade" if upgrade else "plain"
            for name, suffix in BAD_SUFFIXES.items():
                out.append((f"{service} {kind} path {name}", path.encode() + suffix, base))
            for header in SECURITY_HEADERS:
                for name, value in BAD_VALUES.items():
                    out.append((f"{service} {kind} {header}: {name}", path.encode(), {**base, header: value}))
    return out


@pytest.fixture
async def gw(start_gateway, tmp_path):
    (tmp_path / "jaas-config.xml").write_text(USERS)
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("hello")
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "jwt.pem").write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    backend, _ = await tcp_echo_server()
    async with backend:
        yield await start_gateway(GATEWAY.format(backend=port_of(backend)))


async def test_no_malformed_request_gets_a_5xx_or_an_error_line(gw, caplog):
    caplog.set_level(logging.INFO)
    failures = []
    for label, target, headers in cases():
        service = label.split()[0]
        status = await status_of(gw.port_of(service), raw_request(target, headers))
        if status >= 500 or status == 0:
            failures.append(f"{label}: {status}")
    errors = [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, "\n".join(failures)
    assert not errors, "\n".join(errors[:20])


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("Authorization", b"Basic \xe9\xe9\xe9", 403),  # credentials presented to the realm: refused, not 503
        ("Authorization", b"Basic " + b"////", 403),
        ("Host", b"caf\xc3\xa9", 400),
        ("Sec-WebSocket-Key", b"\xff" * 24, 400),
        ("Connection", b"Upgr\xe9de", 400),
    ],
)
async def test_non_ascii_security_headers_get_4xx(gw, header: str, value: bytes, expected: int):
    request = raw_request(b"/basic-echo", {**UPGRADE, header: value})
    assert await status_of(gw.port_of("basic-echo"), request) == expected
