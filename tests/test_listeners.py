"""Listener planning: binds, shared ports, TLS offload, conflicts found before binding."""

from __future__ import annotations

import asyncio
import logging
import socket
import textwrap
from unittest import mock

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from wsgate.catalog import load_config, load_default_config
from wsgate.cli import main
from wsgate.errors import ConfigError
from wsgate.gateway import Gateway
from wsgate.transport import listener as listener_module

from .conftest import SECURITY_PEM


def plan(tmp_path, text: str) -> Gateway:
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(text))
    return Gateway(load_config(path))


def test_ws_and_wss_on_one_port_is_a_located_error(tmp_path, pem_stores):
    with pytest.raises(ConfigError) as error:
        plan(
            tmp_path,
            """
service:
  - name: plain
    accept: ws://localhost:8000/a
    type: echo
  - name: secure
    accept: wss://localhost:8000/b
    type: echo
"""
            + SECURITY_PEM,
        )
    message = str(error.value)
    assert message.startswith("service[secure]/accept: service[secure] wss://localhost:8000/b and service[plain]")
    assert "bind the same port 8000 with and without TLS" in message


def test_different_ciphers_on_one_tls_port_is_a_located_error(tmp_path, pem_stores):
    with pytest.raises(ConfigError, match=r"^service\[b\]/accept-options: ssl.ciphers/ssl.protocols differ"):
        plan(
            tmp_path,
            """
service:
  - name: a
    accept: wss://localhost:8443/a
    type: echo
  - name: b
    accept: wss://localhost:8443/b
    type: echo
    accept-options:
      ssl.ciphers: ECDHE+AESGCM
"""
            + SECURITY_PEM,
        )


def test_bad_cipher_string_is_a_located_error(tmp_path, pem_stores):
    with pytest.raises(ConfigError, match=r"service\[a\]/accept-options/ssl.ciphers: unknown cipher\(s\) NOPE"):
        plan(
            tmp_path,
            """
service:
  - name: a
    accept: wss://localhost:8443/a
    type: echo
    accept-options:
      ssl.ciphers: NOPE
"""
            + SECURITY_PEM,
        )


def test_binds_pick_the_listener_by_scheme_layers(tmp_path):
    gateway = plan(
        tmp_path,
        """
        service:
          - name: a
            accept: ws://public.example.com:80/a
            type: echo
            accept-options:
              http.bind: 127.0.0.1:8080
          - name: b
            accept: ws://public.example.com:80/b
            type: echo
            accept-options:
              tcp.bind: "9090"
        """,
    )
    assert set(gateway.listeners) == {("127.0.0.1", 8080), (None, 9090)}


async def test_port_only_bind_listens_on_all_interfaces(start_gateway, http):
    gw = await start_gateway("""
        service:
          - name: echo
            accept: ws://gateway.example.com/echo
            type: echo
            accept-options:
              ws.bind: "0"
    """)
    port = gw.port_of("echo")
    async with http.ws_connect(f"ws://127.0.0.1:{port}/echo", headers={"Host": "gateway.example.com"}) as ws:
        await ws.send_str("bound")
        assert (await ws.receive()).data == "bound"


async def test_tls_offloaded_service_listens_plain_and_accepts_https_origin(start_gateway, http):
    gw = await start_gateway("""
        service:
          - name: echo
            accept: wss://gateway.example.com/echo
            type: echo
            accept-options:
              ssl.encryption: disabled
              wss.bind: 127.0.0.1:0
    """)
    port = gw.port_of("echo")
    headers = {"Host": "gateway.example.com", "Origin": "https://gateway.example.com"}
    async with http.ws_connect(f"ws://127.0.0.1:{port}/echo", headers=headers) as ws:
        await ws.send_str("offloaded")
        assert (await ws.receive()).data == "offloaded"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"ws://127.0.0.1:{port}/echo", headers={**headers, "Origin": "https://evil.example"})
    assert refused.value.status == 403


async def test_port_in_use_is_a_clear_error(start_gateway, tmp_path):
    gw = await start_gateway("""
        service:
          - name: echo
            accept: ws://127.0.0.1:0/echo
            type: echo
    """)
    second = plan(
        tmp_path, f"service:\n  - name: x\n    accept: ws://127.0.0.1:{gw.port_of('echo')}/x\n    type: echo\n"
    )
    port = gw.port_of("echo")
    with pytest.raises(ConfigError) as error:
        await second.start()
    assert str(error.value) == (
        f"service[x]/accept: cannot bind 127.0.0.1:{port}: address already in use; "
        "another process listens there: stop it or choose another port"
    )


NOWHERE = "service:\n  - name: echo\n    accept: ws://nohost.invalid:8000/echo\n    type: echo\n"


def test_check_config_names_a_bind_host_that_does_not_resolve(tmp_path, capsys):
    (tmp_path / "g.yaml").write_text(NOWHERE)
    assert main(["check-config", str(tmp_path / "g.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "wsgate: service[echo]/accept: ws://nohost.invalid:8000/echo binds nohost.invalid:8000, but 'nohost.invalid' "
        "does not resolve ("
    )
    assert err.endswith("); fix the host name or use an IP address\n")
    bind = "service:\n  - name: echo\n    accept: ws://localhost:8000/echo\n    type: echo\n"
    (tmp_path / "g.yaml").write_text(bind + "    accept-options:\n      ws.bind: nohost.invalid:8000\n")
    assert main(["check-config", str(tmp_path / "g.yaml")]) == 2
    assert "wsgate: service[echo]/accept-options/ws.bind: ws://localhost:8000/echo binds" in capsys.readouterr().err


async def test_run_names_the_service_the_address_and_the_fix_when_the_host_does_not_resolve(tmp_path):
    gateway = plan(tmp_path, NOWHERE)
    with pytest.raises(ConfigError) as error:
        await gateway.start()
    message = str(error.value)
    assert message.startswith("service[echo]/accept: cannot bind nohost.invalid:8000: host does not resolve (")
    assert message.endswith("); fix the host name (or its *.bind) or use an IP address")


ECHO_ONLY = """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
"""


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /echo?access_token=" + b"A" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"B" * 9000 + b"\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nbad header line\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n",
        b"GET /echo HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=["long-line", "long-header", "no-colon", "bad-length", "bad-version"],
)
async def test_a_request_aiohttp_cannot_parse_is_an_audit_line_not_an_error(start_gateway, caplog, request_bytes):
    """A malformed request is the client's business: 400, one info audit line, no ERROR and no traceback."""
    caplog.set_level(logging.DEBUG)
    gw = await start_gateway(ECHO_ONLY)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("echo"))
    writer.write(request_bytes)
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.split()[1] == b"400"
    for _ in range(50):
        lines = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "bad request"]
        if lines:
            break
        await asyncio.sleep(0.02)
    assert lines and lines[0]["status"] == 400 and lines[0]["remote"] == "127.0.0.1"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Traceback" not in caplog.text


# -- host names: the loopback names, and a Host no service on the port names ------------------------------------


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
async def default_gateway():
    """The embedded default config, as ``make run`` starts it, on a free port."""
    gateway = Gateway(load_default_config({"gateway.port": "0"}))
    await gateway.start()
    yield gateway
    await gateway.stop(grace=1.0)


async def test_the_default_config_answers_on_every_loopback_name(default_gateway, http):
    port = default_gateway.port_of("demo")
    hosts = ["localhost", "127.0.0.1"] + (["[::1]"] if ipv6_loopback() else [])
    for host in hosts:
        async with http.get(f"http://{host}:{port}/") as page:
            assert page.status == 200, host
        async with http.ws_connect(f"ws://{host}:{port}/echo") as ws:
            await ws.send_str(f"via {host}")
            assert (await ws.receive()).data == f"via {host}"
    async with http.get(f"http://127.0.0.1:{port}/nothing-here") as missing:  # a name that is served, no such path
        assert (missing.status, await missing.text()) == (404, "Not Found\n")


async def test_a_host_no_service_answers_gets_a_404_that_names_the_port_s_hosts(default_gateway, http, caplog):
    caplog.set_level(logging.DEBUG, logger="wsgate.listener")
    port = default_gateway.port_of("demo")
    async with http.get(f"http://127.0.0.1:{port}/", headers={"Host": f"gw.example.org:{port}"}) as response:
        assert response.status == 404
        assert await response.text() == (
            "No service for host 'gw.example.org' on this port; it serves: localhost, 127.0.0.1, [::1]\n"
        )
    line = next(r.getMessage() for r in caplog.records if "no service for host" in r.getMessage())
    assert f"no service for host 'gw.example.org' on localhost:{port} (path /, client 127.0.0.1)" in line
    assert line.endswith("this port serves localhost, 127.0.0.1, [::1]")


@pytest.mark.parametrize(("remote", "named"), [("127.0.0.1", True), ("::1", True), ("203.0.113.9", False)])
async def test_only_a_client_on_this_machine_is_told_the_port_s_host_names(default_gateway, remote, named):
    listener = default_gateway.listeners[default_gateway.plan.listener_of("demo")]
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (remote, 1234) if name == "peername" else default
    request = make_mocked_request("GET", "/", headers={"Host": "gw.example.org"}, transport=transport)
    response = await listener.handle(request)
    assert response.status == 404
    assert response.text is not None
    assert response.text.startswith("No service for host 'gw.example.org' on this port")
    assert ("localhost" in response.text) is named


async def test_localhost_binds_the_loopback_addresses_this_host_has(monkeypatch, http, caplog):
    """A host without IPv6 (or without ::1): the default config still starts, on the addresses there are.

    203.0.113.7 (TEST-NET-3) is no address of this machine: it fails to bind as ::1 does where IPv6 is off.
    """
    caplog.set_level(logging.INFO, logger="wsgate.listener")
    monkeypatch.setattr(
        listener_module, "LOOPBACK_ADDRESSES", ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "203.0.113.7"))
    )
    gateway = Gateway(load_default_config({"gateway.port": "0"}))
    await gateway.start()
    try:
        async with http.get(f"http://127.0.0.1:{gateway.port_of('demo')}/") as page:
            assert page.status == 200
        assert "localhost: 203.0.113.7 cannot be bound on this host" in caplog.text
    finally:
        await gateway.stop(grace=1.0)
