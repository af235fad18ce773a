"""Multi-certificate (SNI) wss listeners on the production loop (uvloop + aiofastnet).

aiofastnet 1.2's direct TLS engine segfaults on a context with an SNI callback
(bench/upstream/aiofastnet-1.py); the listener picks the certificate from the peeked ClientHello instead
(transport/sni.py). The first test runs ``wsgate run`` itself, so a crash is a failed test, not a dead run.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import ssl
import sys
from pathlib import Path

import pytest
import trustme

from wsgate.cli import new_event_loop

from .conftest import client_ssl

aiofastnet = pytest.importorskip("aiofastnet")

CONFIG = """
service:
  - name: echo
    accept: [wss://localhost:0/echo, wss://other.test:0/echo]
    type: echo
    accept-options:
      wss.bind: 127.0.0.1:0
{limits}
security:
  keystore:
    type: PEM
    file: keystore.pem
"""


@pytest.fixture
def two_certificates(tmp_path: Path, ca: trustme.CA) -> Path:
    first = ca.issue_cert("localhost", "127.0.0.1")
    second = ca.issue_cert("other.test")
    (tmp_path / "keystore.pem").write_bytes(
        first.private_key_and_cert_chain_pem.bytes() + second.private_key_and_cert_chain_pem.bytes()
    )
    return tmp_path


def config(folder: Path, limits: str = "") -> Path:
    path = folder / "gateway.yaml"
    path.write_text(CONFIG.format(limits=limits))
    return path


async def served_name(port: int, context: ssl.SSLContext, server_hostname: str | None) -> str:
    """The first DNS name (or IP) of the certificate the listener presents for ``server_hostname``."""
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_hostname), 5
    )
    try:
        return str(writer.get_extra_info("peercert")["subjectAltName"][0][1])
    finally:
        writer.close()


async def test_wsgate_run_serves_each_name_its_certificate(two_certificates, ca):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wsgate", "run", str(config(two_certificates)), stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        port = None
        while port is None:
            line = (await asyncio.wait_for(process.stderr.readline(), 15)).decode()
            assert line, "wsgate exited before listening"
            if match := re.search(r"listening on tls://127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
        context = client_ssl(ca)
        for _ in range(2):  # and again: the process survived the first round
            assert await served_name(port, context, "other.test") == "other.test"
            assert await served_name(port, context, "localhost") == "localhost"
            assert await served_name(port, context, None) == "localhost"  # an IP address: no SNI sent
        assert process.returncode is None
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
        code = await asyncio.wait_for(process.wait(), 10)
        assert code != -signal.SIGSEGV, "wsgate run crashed (SIGSEGV) in a TLS handshake"


async def test_every_name_gets_aiofastnets_direct_engine(two_certificates, ca, start_gateway):
    """The point of choosing before the engine starts: no fallback to the stdlib SSLObject engine."""
    gw = await start_gateway(config(two_certificates).read_text())
    server = next(iter(gw.listeners.values()))._server
    assert type(server).__module__.startswith("aiofastnet"), "the tests should run on the production loop"
    port = gw.port_of("echo")
    context = client_ssl(ca)
    for name, expected in (("other.test", "other.test"), (None, "localhost")):
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name)
        assert writer.get_extra_info("peercert")["subjectAltName"][0][1] == expected
        transports = {type(t).__name__ for t in server._clients}  # type: ignore[union-attr]
        assert transports == {"SSLTransport_Socket"}, transports
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)


def client_hello(ca: trustme.CA, name: str) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_ssl(ca).wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return tls, incoming, outgoing, outgoing.read()


async def complete(reader, writer, tls, incoming, outgoing) -> None:  # type: ignore[no-untyped-def]
    """Pump a client handshake whose ClientHello is already sent."""
    while True:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "the gateway closed the connection during the handshake"
        incoming.write(data)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            writer.write(outgoing.read())
            continue
        writer.write(outgoing.read())
        return


async def test_a_client_hello_in_two_segments_still_gets_its_certificate(two_certificates, ca, start_gateway):
    gw = await start_gateway(config(two_certificates).read_text())
    tls, incoming, outgoing, hello = client_hello(ca, "other.test")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("echo"))
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        writer.write(hello[:40])  # the server name comes later
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(hello[40:])
        await complete(reader, writer, tls, incoming, outgoing)
        assert tls.getpeercert()["subjectAltName"][0][1] == "other.test"
    finally:
        writer.close()


async def test_a_silent_client_is_dropped_at_the_handshake_timeout_and_audited(two_certificates, start_gateway):
    gw = await start_gateway(config(two_certificates, "limits:\n  handshake-timeout: 300ms").read_text())
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("echo"))
    try:
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the gateway, not by the test
    finally:
        writer.close()
    failures = gw.runtime.metrics.registry.get_sample_value(
        "wsgate_tls_handshake_failures_total", {"reason": "timeout"}
    )
    assert failures == 1


@pytest.mark.parametrize("stalls", ["in the TLS handshake", "before the request head"])
async def test_the_handshake_timeout_counts_from_the_accept_peek_included(stalls, two_certificates, ca, start_gateway):
    """A ClientHello sent late, then silence: dropped at the timeout after the accept, not after the peek."""
    gw = await start_gateway(config(two_certificates, "limits:\n  handshake-timeout: 1s").read_text())
    loop = asyncio.get_running_loop()
    tls, incoming, outgoing, hello = client_hello(ca, "other.test")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("echo"))
    started = loop.time()
    try:
        await asyncio.sleep(0.7)
        writer.write(hello)
        if stalls == "before the request head":
            await complete(reader, writer, tls, incoming, outgoing)
        while await asyncio.wait_for(reader.read(65536), 5):
            pass  # the server's flight (or session tickets), then EOF when it gives up
        elapsed = loop.time() - started
    finally:
        writer.close()
    assert 0.9 <= elapsed < 1.5, elapsed  # 1.7 s if the timeout restarted after the peek


async def test_plain_http_on_the_port_fails_the_handshake_and_the_listener_goes_on(two_certificates, ca, start_gateway):
    gw = await start_gateway(config(two_certificates).read_text())
    port = gw.port_of("echo")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: other.test\r\n\r\n")
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
        assert b"HTTP/1.1" not in answer  # a TLS alert at most
    finally:
        writer.close()
    assert await served_name(port, client_ssl(ca), "other.test") == "other.test"


@pytest.mark.parametrize("keylog", ["", "keys.txt"])
def test_key_logging_runs_without_aiofastnet(keylog, tmp_path, monkeypatch, caplog):
    """SSLKEYLOGFILE makes ssl.create_default_context() log keys, on which aiofastnet's engine segfaults."""
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / keylog) if keylog else "")
    loop = new_event_loop("auto")
    try:
        patched = getattr(getattr(loop.create_connection, "func", None), "__module__", "") or ""
        assert patched.startswith("aiofastnet") is not bool(keylog)
        assert ("running without aiofastnet" in caplog.text) is bool(keylog)
    finally:
        loop.close()
