"""Shared state on a real redis-server: several gateways (nodes) in one test share sessions and revocations."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest

from wsgate.catalog import load_config
from wsgate.errors import ConfigErrors


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def node_config(url: str, node: str) -> str:
    return f"""
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    realm-name: demo
    authorization-constraint:
      require-role: AUTHORIZED
security:
  realm:
    - name: demo
      authentication:
        http-challenge-scheme: Basic
        authorization-mode: recycle
        login-modules:
          login-module:
            type: file
            options:
              file: users.xml
state:
  type: redis
  url: {url}
  node: {node}
"""


USERS = """<jaas-config><user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user></jaas-config>"""


@pytest.fixture
def nodes(start_gateway, redis_server, tmp_path):
    (tmp_path / "users.xml").write_text(USERS)

    async def start(count: int = 2):
        return [await start_gateway(node_config(redis_server.url, f"n{i}"), name=f"n{i}.yaml") for i in range(count)]

    return start


async def test_a_session_cookie_from_one_node_opens_sockets_on_another(nodes, http) -> None:
    a, b = await nodes(2)
    async with http.post(
        f"http://127.0.0.1:{a.port_of('echo')}/echo/.wsgate/session", headers=basic("joe", "welcome")
    ) as signed:
        assert signed.status == 200
        cookie = signed.headers["Set-Cookie"].split(";")[0]
    async with http.ws_connect(f"ws://127.0.0.1:{b.port_of('echo')}/echo", headers={"Cookie": cookie}) as ws:
        await ws.send_str("on b")
        assert (await ws.receive()).data == "on b"


async def test_a_revocation_on_one_node_closes_connections_on_the_other(nodes, http) -> None:
    a, b = await nodes(2)
    ws = await http.ws_connect(f"ws://127.0.0.1:{b.port_of('echo')}/echo", headers=basic("joe", "welcome"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await a.revoke(user="joe")
    message = await asyncio.wait_for(ws.receive(), 2)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008
    assert loop.time() - started < 1.0
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # and b refuses new logins of joe
        await http.ws_connect(f"ws://127.0.0.1:{b.port_of('echo')}/echo", headers=basic("joe", "welcome"))
    assert refused.value.status == 403


async def test_redis_down_fails_closed_and_recovers(nodes, redis_server, http) -> None:
    (a,) = await nodes(1)
    url = f"ws://127.0.0.1:{a.port_of('echo')}/echo"
    ws = await http.ws_connect(url, headers=basic("joe", "welcome"))
    await ws.send_str("open")
    assert (await ws.receive()).data == "open"  # past the gateway's last revocation check of an opening connection
    redis_server.stop()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers=basic("joe", "welcome"))
    assert refused.value.status == 503  # a login whose revocation cannot be checked never opens
    await ws.send_str("still open")
    assert (await ws.receive()).data == "still open"  # what was open keeps going
    redis_server.start()
    for _ in range(50):
        try:
            await (await http.ws_connect(url, headers=basic("joe", "welcome"))).close()
            break
        except aiohttp.WSServerHandshakeError:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("no recovery within 5 s")
    await ws.close()


def test_state_config_errors_are_located(tmp_path) -> None:
    (tmp_path / "g.yaml").write_text(
        "service:\n  - name: e\n    accept: ws://127.0.0.1:0/e\n    type: echo\nstate:\n  type: redis\n  url: redis://u:secret@h:6379/0\n  colour: blue\n"
    )
    with pytest.raises(ConfigErrors) as errors:
        load_config(tmp_path / "g.yaml")
    text = str(errors.value)
    assert "state/url: holds a password" in text and "state/colour" in text


async def test_logout_on_one_node_closes_the_sessions_connections_on_another(nodes, http) -> None:
    a, b = await nodes(2)
    async with http.post(
        f"http://127.0.0.1:{a.port_of('echo')}/echo/.wsgate/session", headers=basic("joe", "welcome")
    ) as signed:
        cookie = signed.headers["Set-Cookie"].split(";")[0]
    ws = await http.ws_connect(f"ws://127.0.0.1:{a.port_of('echo')}/echo", headers={"Cookie": cookie})
    async with http.delete(
        f"http://127.0.0.1:{b.port_of('echo')}/echo/.wsgate/session", headers={"Cookie": cookie}
    ) as out:
        assert out.status == 200
    message = await asyncio.wait_for(ws.receive(), 2)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # the session is gone everywhere
        await http.ws_connect(f"ws://127.0.0.1:{a.port_of('echo')}/echo", headers={"Cookie": cookie})
    assert refused.value.status == 401


async def test_a_shared_handshake_rate_counts_every_nodes_handshakes(start_gateway, redis_server, http) -> None:
    def config(node: str, shared: str) -> str:
        return f"""
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    accept-options:
      handshake.rate.per.ip: 2/minute burst 2
state:
  type: redis
  url: {redis_server.url}
  node: {node}
  shared-limits: {shared}
"""

    a = await start_gateway(config("a", "handshake-rate"), name="a.yaml")
    b = await start_gateway(config("b", "handshake-rate"), name="b.yaml")
    statuses = []
    for gateway in (a, b, a, b):
        try:
            await (await http.ws_connect(f"ws://127.0.0.1:{gateway.port_of('echo')}/echo")).close()
            statuses.append(101)
        except aiohttp.WSServerHandshakeError as error:
            statuses.append(error.status)
    assert statuses[:2] == [101, 101] and statuses[2:] == [429, 429]  # 2 a minute across both nodes
    c = await start_gateway(config("c", "none"), name="c.yaml")  # not shared: only its own bucket
    await (await http.ws_connect(f"ws://127.0.0.1:{c.port_of('echo')}/echo")).close()
    redis_server.stop()  # Redis gone: each node's own bucket still limits (a has used its 2)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"ws://127.0.0.1:{a.port_of('echo')}/echo")
    assert refused.value.status == 429
