"""The Python client forced to WebSocket emulation (``connect(..., transport="wse")``, ``wsgate-client
--transport wse``), and ``transport="auto"`` behind a proxy that strips ``Upgrade``: the same ``Connection``
API as over a WebSocket, against a real gateway on loopback."""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import pytest

from wsgate.client import AuthenticationError, BasicChallengeHandler, connect
from wsgate.state.connections import Selector

from .wse_proxy import BlockingProxy

USERS = (
    '<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">'
    "<user><name>joe</name><password>welcome</password><role-name>USER</role-name></user></jaas-config>"
)

CONFIG = """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    accept-options:
      tcp.bind: 127.0.0.1:0
  - name: basic
    accept: ws://127.0.0.1:0/basic
    type: echo
    realm-name: files
    authorization-constraint:
      require-role: USER
    accept-options:
      tcp.bind: 127.0.0.1:0
security:
  realm:
    - name: files
      authentication:
        http-challenge-scheme: Application Basic
        authorization-timeout: 2s
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
"""


@pytest.fixture
async def gw(start_gateway, tmp_path):
    (tmp_path / "jaas-config.xml").write_text(USERS)
    return await start_gateway(CONFIG)


def url(gw, name: str) -> str:
    return f"ws://127.0.0.1:{gw.port_of(name)}/{name}"


def joe(password: str = "welcome") -> BasicChallengeHandler:
    return BasicChallengeHandler(lambda challenge: ("joe", password))


async def wait_until(check, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_forced_emulation_echoes_text_and_binary_and_closes_with_its_code(gw):
    connection = await asyncio.wait_for(connect(url(gw, "echo"), transport="wse"), 10)
    try:
        assert connection.transport == "wse"
        (session,) = gw.runtime.connections
        assert session.transport == "wse"
        messages = ["héllo", bytes(range(256)) * 2, "", b"\x00"]
        for message in messages:
            await connection.send(message)
        received = []
        async for message in connection:
            received.append(message)
            if len(received) == len(messages):
                break
        assert received == messages
    finally:
        await asyncio.wait_for(connection.close(1000), 10)
    assert connection.closed and connection.close_code == 1000
    await wait_until(lambda: not gw.runtime.connections)  # the gateway saw the close too


async def test_a_close_by_the_gateway_reads_1005_and_sends_then_fail(gw):
    connection = await asyncio.wait_for(connect(url(gw, "echo"), transport="wse"), 10)
    assert await gw.runtime.expire(Selector.every(), "dropped by the operator") == 1
    msg = await asyncio.wait_for(connection.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1005  # WSE's CLOSE has no code
    assert connection.closed and connection.close_code == 1005
    with pytest.raises(aiohttp.ClientConnectionResetError):
        await connection.send("too late")
    assert (await connection.receive()).type == aiohttp.WSMsgType.CLOSED
    await asyncio.wait_for(connection.close(), 5)
    await wait_until(lambda: not gw.runtime.connections)


async def test_challenges_are_answered_at_create_and_credentials_renewed_in_place(gw):
    with pytest.raises(AuthenticationError) as unanswered:
        await connect(url(gw, "basic"), transport="wse")
    assert unanswered.value.status == 401
    with pytest.raises(AuthenticationError) as refused:
        await connect(url(gw, "basic"), transport="wse", challenge_handler=joe("wrong"))
    assert refused.value.status == 403
    connection = await connect(url(gw, "basic"), transport="wse", challenge_handler=joe(), refresh_margin=1)
    try:
        assert connection.transport == "wse" and connection.id and connection.refresh_url
        first = connection.expires
        assert first is not None and first - time.time() <= 2.5
        later = await connection.refresh()
        assert later is not None and later >= first
        await asyncio.sleep(3)  # past the 2 s authorization-timeout: only renewals keep it open
        await connection.send("still here")
        msg = await asyncio.wait_for(connection.receive(), 5)
        assert msg.data == "still here"
        assert connection.expires is not None and connection.expires > first + 1
    finally:
        await asyncio.wait_for(connection.close(), 10)
    assert connection.close_code == 1000


async def test_auto_falls_back_to_emulation_where_a_proxy_strips_upgrade(gw):
    proxy = await BlockingProxy(f"http://127.0.0.1:{gw.port_of('echo')}").start()
    try:
        behind = await connect(f"ws://127.0.0.1:{proxy.port}/echo", transport="auto")
        direct = await connect(url(gw, "echo"), transport="auto")
        for connection, transport in ((behind, "wse"), (direct, "websocket")):
            assert connection.transport == transport
            await connection.send(b"\x01\x02")
            assert (await asyncio.wait_for(connection.receive(), 5)).data == b"\x01\x02"
            await asyncio.wait_for(connection.close(), 10)
        assert proxy.upgrades == 1
        with pytest.raises(ValueError, match="transport must be one of"):
            await connect(url(gw, "echo"), transport="comet")
    finally:
        await proxy.stop()


async def test_wsgate_client_transport_wse(gw):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from wsgate.client.cli import main; sys.exit(main())",
        url(gw, "echo"),
        "--transport",
        "wse",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write("héllo\n".encode())
        assert await asyncio.wait_for(process.stdout.readline(), 10) == "héllo\n".encode()
        assert [c.transport for c in gw.runtime.connections] == ["wse"]
        process.stdin.close()
        out, err = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, err.decode()
    await wait_until(lambda: not gw.runtime.connections)


def test_the_create_url_and_the_urls_a_create_may_answer_with():
    """SPEC "Client Handshake Requirements": the URLs stay on the gateway's host, under the service, https if
    the create was; the create keeps the WebSocket URL's query (a token parameter is admitted there)."""
    from yarl import URL

    from wsgate.client.wse import create_url, emulation_urls
    from wsgate.core.wse_frames import WseError

    create = create_url(URL("wss://gw.example:8443/trade/?token=abc"))
    assert str(create) == "https://gw.example:8443/trade/;e/cbm?token=abc"
    up, down = emulation_urls(
        create, "https://gw.example:8443/trade/;e/ubm/u1\nhttps://gw.example:8443/trade/;e/dbm/d1\n"
    )
    assert (up.path, down.path) == ("/trade/;e/ubm/u1", "/trade/;e/dbm/d1")
    for bad in (
        "http://gw.example:8443/trade/;e/ubm/u\nhttps://gw.example:8443/trade/;e/dbm/d\n",  # down from https
        "https://evil.example/trade/;e/ubm/u\nhttps://gw.example:8443/trade/;e/dbm/d\n",  # another host
        "https://gw.example:8443/other/;e/ubm/u\nhttps://gw.example:8443/trade/;e/dbm/d\n",  # not under the service
        "https://gw.example:8443/trade/;e/ubm/u\n",  # one URL
    ):
        with pytest.raises(WseError):
            emulation_urls(create, bad)
