"""``wsgate-client`` run as a real subprocess (stdin pipes, signals) against a real gateway.

Each failure must name its cause on stderr and end with the exit status docs/clients.md lists.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from wsgate.client import cli
from wsgate.state.connections import Selector

from .conftest import SECURITY_PEM, port_of

USERS = (
    '<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">'
    "<user><name>joe</name><password>welcome</password><role-name>USER</role-name></user></jaas-config>"
)


@pytest.fixture
async def silent_backend():
    """A TCP back end that accepts and reads but never answers."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server
    server.close()


@pytest.fixture
async def gw(start_gateway, tmp_path, pem_stores, silent_backend):
    (tmp_path / "jaas-config.xml").write_text(USERS)
    return await start_gateway(
        f"""
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
  - name: basic
    accept: ws://127.0.0.1:0/basic
    type: echo
    realm-name: files
    authorization-constraint:
      require-role: USER
  - name: full
    accept: ws://127.0.0.1:0/full
    type: echo
    accept-options:
      connection.limit: 1
  - name: silent
    accept: ws://127.0.0.1:0/silent
    connect: tcp://127.0.0.1:{port_of(silent_backend)}
    type: proxy
  - name: mtls
    accept: wss://localhost:0/mtls
    type: echo
    accept-options:
      ssl.verify-client: required
"""
        + SECURITY_PEM
        + """
  realm:
    - name: files
      authentication:
        http-challenge-scheme: Application Basic
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
"""
    )


def url(gw, name: str, path: str | None = None) -> str:
    return f"ws://127.0.0.1:{gw.port_of(name)}/{path or name}"


async def start(*args: str, env: dict[str, str] | None = None, **options) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from wsgate.client.cli import main; sys.exit(main())",
        *args,
        stdin=options.pop("stdin", asyncio.subprocess.PIPE),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "WSGATE_TEST_PW": "welcome", **(env or {})},
        **options,
    )


async def finish(process: asyncio.subprocess.Process, timeout: float = 15) -> tuple[int, str, str]:
    """Exit status, stdout and stderr; a command still running after ``timeout`` fails the test."""
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        pytest.fail(f"wsgate-client still running after {timeout} s; stderr: {err.decode()!r}")
    assert b"Traceback" not in err, err.decode()
    return process.returncode if process.returncode is not None else -1, out.decode(), err.decode()


async def run(*args: str, env: dict[str, str] | None = None, **options) -> tuple[int, str, str]:
    process = await start(*args, env=env, stdin=options.pop("stdin", asyncio.subprocess.DEVNULL), **options)
    return await finish(process)


async def read_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), 10)).decode().rstrip("\n")


def closes(gw, service: str, code: int) -> int:
    sample = gw.runtime.metrics.registry.get_sample_value(
        "wsgate_closes_total", {"service": service, "code": str(code)}
    )
    return int(sample or 0)


async def test_ctrl_c_leaves_interactive_mode_and_closes_the_connection(gw):
    process = await start(url(gw, "echo"))
    assert process.stdin is not None
    process.stdin.write(b"typed\n")
    assert await read_line(process) == "typed"
    process.send_signal(signal.SIGINT)  # stdin stays open: only the signal can end it
    code, _, err = await finish(process, timeout=8)
    assert code == 130 and "interrupted" in err
    for _ in range(50):
        if closes(gw, "echo", 1000):
            break
        await asyncio.sleep(0.1)
    assert closes(gw, "echo", 1000) == 1  # a clean close, not a dropped socket


async def test_a_close_by_the_gateway_ends_interactive_mode(gw):
    process = await start(url(gw, "echo"))
    assert process.stdin is not None
    process.stdin.write(b"first\n")
    assert await read_line(process) == "first"
    assert await gw.runtime.expire(Selector.every(), "dropped by the operator") == 1
    code, _, err = await finish(process, timeout=8)  # stdin is still open
    assert code == 1 and "closed by the gateway: 1008 dropped by the operator" in err


async def test_end_of_input_ends_interactive_mode(gw):
    process = await start(url(gw, "echo"))
    out, err = await asyncio.wait_for(process.communicate(b"one\ntwo"), 10)  # the last line has no newline
    assert process.returncode == 0, err
    assert out.decode().splitlines() == ["one", "two"]


async def test_not_found_and_unavailable_are_not_authentication_failures(gw, http):
    code, _, err = await run(url(gw, "basic", "nowhere"), "--send", "x")
    assert code == 4 and "no such service" in err and "HTTP 404" in err
    assert "authentication" not in err
    async with http.ws_connect(url(gw, "full")):  # the only connection "full" allows
        code, _, err = await run(url(gw, "full"), "--send", "x")
    assert code == 4 and "unavailable (HTTP 503)" in err and "authentication" not in err


async def test_wrong_credentials_are_authentication_failures(gw):
    code, _, err = await run(url(gw, "basic"), "--send", "x")  # no credentials for the challenge
    assert code == 3 and "Application Basic" in err
    env = {"WSGATE_TEST_PW": "wrong"}
    code, _, err = await run(
        url(gw, "basic"), "--user", "joe", "--password-env", "WSGATE_TEST_PW", "--send", "x", env=env
    )
    assert code == 3 and "credentials refused" in err


async def test_a_reply_timeout_names_the_cause(gw):
    code, _, err = await run(url(gw, "silent"), "--send", "anyone?", "--timeout", "1")
    assert code == 1 and "no reply to message 1 within 1 s" in err


async def test_an_unset_password_variable_is_refused_before_connecting(gw):
    args = (url(gw, "basic"), "--user", "joe", "--password-env", "WSGATE_UNSET_PASSWORD", "--send", "x")
    code, _, err = await run(*args)
    assert code == 2 and "WSGATE_UNSET_PASSWORD is not set" in err
    code, _, err = await run(*args, env={"WSGATE_UNSET_PASSWORD": ""})
    assert code == 2 and "WSGATE_UNSET_PASSWORD is empty" in err
    registry = gw.runtime.metrics.registry
    assert not registry.get_sample_value("wsgate_auth_seconds_count", {"realm": "files", "module": "file"})


async def test_user_without_a_terminal_is_a_usage_error(gw):
    # a new session has no controlling terminal: nowhere to ask for the password
    code, _, err = await run(url(gw, "basic"), "--user", "joe", "--send", "x", start_new_session=True)
    assert code == 2 and "no terminal" in err and "--password-env" in err


async def test_tls_failures_name_their_cause(gw, start_gateway, tmp_path, ca):
    mtls = f"wss://localhost:{gw.port_of('mtls')}/mtls"
    truststore = str(tmp_path / "truststore.pem")
    code, _, err = await run(mtls, "--cacert", truststore, "--send", "x")
    assert code == 1 and "requires a client certificate" in err and "--cert" in err
    tls13 = await start_gateway(
        """
service:
  - name: mtls
    accept: wss://localhost:0/mtls
    type: echo
    accept-options:
      ssl.verify-client: required
      ssl.protocols: TLSv1.3
"""
        + SECURITY_PEM,
        name="tls13.yaml",
    )
    only13 = f"wss://localhost:{tls13.port_of('mtls')}/mtls"  # the certificate is checked after the handshake
    code, _, err = await run(only13, "--cacert", truststore, "--send", "x")
    assert code == 1 and "requires a client certificate" in err and "--cert" in err
    code, _, err = await run(mtls, "--send", "x")  # the system CAs do not know the test CA
    assert code == 1 and "certificate is not trusted" in err and "--cacert" in err
    code, _, err = await run(mtls, "--cacert", truststore, "--cert", str(tmp_path / "missing.pem"), "--send", "x")
    assert code == 2 and "cannot load --cert" in err and "missing.pem" in err
    cert = ca.issue_cert("ops@example.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    code, out, _ = await run(mtls, "--cacert", truststore, "--cert", str(tmp_path / "client.pem"), "--send", "ok")
    assert code == 0 and out.strip() == "ok"


async def test_usage_errors_name_the_option(gw, tmp_path):
    code, _, err = await run(url(gw, "echo"), "--token-file", str(tmp_path / "absent"))
    assert code == 2 and "cannot read --token-file" in err
    code, _, err = await run("http://127.0.0.1/echo")
    assert code == 2 and "not a ws:// or wss:// URL" in err
    code, _, err = await run(url(gw, "echo"), "--password-env", "WSGATE_TEST_PW")
    assert code == 2 and "--password-env needs --user" in err


async def test_cannot_connect_names_the_address(unused_tcp_port):
    code, _, err = await run(f"ws://127.0.0.1:{unused_tcp_port}/echo", "--send", "x")
    assert code == 1 and f"127.0.0.1:{unused_tcp_port}" in err and "refused" in err.lower()


def test_docs_list_every_exit_status():
    text = (Path(__file__).parent.parent / "docs" / "clients.md").read_text()
    table = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.M)}
    statuses = {cli.OK, cli.FAILED, cli.USAGE, cli.AUTHENTICATION, cli.REFUSED, cli.INTERRUPTED}
    assert documented == statuses == {0, 1, 2, 3, 4, 130}  # the tests above use the numbers: they are the interface
