"""TLS session resumption on wsgate's wss listeners (issue 13, P4): a client that kept the session of its last
connection (a TLS 1.3 ticket, or a TLS 1.2 ticket) skips the certificate and key exchange on the next one."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from .conftest import client_ssl

GATEWAY = """
service:
  - name: echo
    accept: wss://127.0.0.1:0/echo
    type: echo
{tls}
security:
  keystore:
    type: PEM
    file: keystore.pem
"""
UPGRADE = (
    "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def upgrade(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession, str]:
    """One wss upgrade on a blocking socket: (resumed?, the session to offer next time, the TLS version)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with raw, context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        tls.sendall(UPGRADE.encode())
        head = b""
        while b"\r\n\r\n" not in head:  # reading past the handshake takes in the TLS 1.3 tickets too
            chunk = tls.recv(4096)
            assert chunk, "closed before the 101"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
        assert tls.session is not None
        return tls.session_reused, tls.session, str(tls.version())


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
async def test_a_second_connection_resumes_the_first_ones_session(start_gateway, pem_stores, ca, version):
    gw = await start_gateway(GATEWAY.format(tls=""))
    port = gw.port_of("echo")
    context = client_ssl(ca)
    context.maximum_version = context.minimum_version = ssl.TLSVersion[version.replace(".", "_")]
    loop = asyncio.get_running_loop()
    reused, session, negotiated = await loop.run_in_executor(None, upgrade, port, context, None)
    assert not reused and negotiated == version
    reused, _, _ = await loop.run_in_executor(None, upgrade, port, context, session)
    assert reused


async def test_a_session_from_another_gateway_is_a_full_handshake(start_gateway, pem_stores, ca):
    """Tickets are sealed with keys of the listener's own TLS context (random, in memory): a session from another
    gateway with the same certificate (another ``--workers`` process, or one started again) is not resumed, and
    is no error either."""
    first = await start_gateway(GATEWAY.format(tls=""))
    second = await start_gateway(GATEWAY.format(tls=""), name="second.yaml")
    context = client_ssl(ca)
    loop = asyncio.get_running_loop()
    _, session, _ = await loop.run_in_executor(None, upgrade, first.port_of("echo"), context, None)
    reused, _, _ = await loop.run_in_executor(None, upgrade, second.port_of("echo"), context, session)
    assert not reused


async def test_sessions_survive_a_reload_that_keeps_the_port_tls(start_gateway, pem_stores, ca, tmp_path):
    """A reload keeps a port's socket and TLS context while its TLS settings are unchanged, and with them the
    ticket keys: clients reconnecting after a reload still resume."""
    gw = await start_gateway(GATEWAY.format(tls=""))
    port = gw.port_of("echo")
    context = client_ssl(ca)
    loop = asyncio.get_running_loop()
    _, session, _ = await loop.run_in_executor(None, upgrade, port, context, None)
    text = (tmp_path / "gateway.yaml").read_text()
    (tmp_path / "gateway.yaml").write_text(text.replace("type: echo", "type: echo\n    description: changed"))
    reloaded, message = await gw.reload()
    assert reloaded and "1 changed" in message, message
    reused, _, _ = await loop.run_in_executor(None, upgrade, gw.port_of("echo"), context, session)
    assert reused
