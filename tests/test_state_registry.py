"""The connection registry on a real redis-server: the management API of one node lists and closes the
sessions of every node; nodes that stop, die or outlive a Redis restart keep the registry right."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .processes import free_port, wait_for_port

HEARTBEAT = 0.3
SRC = Path(__file__).resolve().parent.parent / "src"
WSGATE = Path(sys.executable).parent / "wsgate"
USERS = """<jaas-config><user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user></jaas-config>"""
JOE = {"Authorization": "Basic " + base64.b64encode(b"joe:welcome").decode()}
ADMIN_SERVICE = """
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    properties:
      insecure: true
"""


def node_config(url: str, node: str, admin: bool = False, port: int = 0) -> str:
    return f"""
service:
  - name: echo
    accept: ws://127.0.0.1:{port}/echo
    type: echo
    realm-name: demo
    authorization-constraint:
      require-role: AUTHORIZED
{ADMIN_SERVICE if admin else ""}
security:
  realm:
    - name: demo
      authentication:
        http-challenge-scheme: Basic
        login-modules:
          login-module:
            type: file
            options:
              file: users.xml
state:
  type: redis
  url: {url}
  node: {node}
  heartbeat: {int(HEARTBEAT * 1000)}ms
"""


@pytest.fixture
def nodes(redis_server, start_gateway, tmp_path):  # Redis first: it stops after the gateways
    """``await nodes("n0", "n1")``: gateways sharing the test's Redis; the first has the management API."""
    (tmp_path / "users.xml").write_text(USERS)

    async def start(*names: str):
        return [
            await start_gateway(node_config(redis_server.url, name, admin=i == 0), name=f"{name}.yaml")
            for i, name in enumerate(names)
        ]

    return start


def echo_url(gateway) -> str:
    return f"ws://127.0.0.1:{gateway.port_of('echo')}/echo"


def admin_url(gateway) -> str:
    return f"http://127.0.0.1:{gateway.port_of('admin')}/admin"


async def listing(http: aiohttp.ClientSession, admin: str) -> list[dict[str, Any]]:
    async with http.get(f"{admin}/api/sessions") as response:
        assert response.status == 200
        return list(await response.json())


async def wait_listing(http, admin: str, check, seconds: float = 5.0) -> list[dict[str, Any]]:
    """Poll ``GET /api/sessions`` until ``check(sessions)``; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        sessions = await listing(http, admin)
        if check(sessions):
            return sessions
        if loop.time() > deadline:
            pytest.fail(f"the listing never matched: {sessions}")
        await asyncio.sleep(0.05)


async def node_keys(gateway, node: str) -> list[str]:
    """What Redis holds of ``node`` in the registry (read through ``gateway``'s client)."""
    client = gateway.shared.client
    keys = [key async for key in client.scan_iter(match=f"wsgate:node:{node}*")]
    if await client.sismember("wsgate:nodes", node):
        keys.append("wsgate:nodes member")
    return sorted(keys)


async def test_the_management_api_of_one_node_lists_and_closes_sessions_on_the_others(nodes, http) -> None:
    a, b, c = await nodes("n0", "n1", "n2")
    on_a = await http.ws_connect(echo_url(a), headers=JOE)
    on_b = await http.ws_connect(echo_url(b), headers=JOE)
    on_c = await http.ws_connect(echo_url(c), headers=JOE)
    await on_a.send_str("hello")
    assert (await on_a.receive()).data == "hello"
    admin = admin_url(a)
    sessions = await wait_listing(http, admin, lambda s: {x["node"] for x in s} == {"n0", "n1", "n2"})
    assert len(sessions) == 3
    by_node = {s["node"]: s for s in sessions}
    local, remote = by_node["n0"], by_node["n1"]
    assert local["messages_in"] == 1 and local["bytes_in"] == 5  # this node's: counted as before
    assert remote["principal"] == "joe" and remote["service"] == "echo" and remote["realm"] == "demo"
    assert remote["roles"] == ["AUTHORIZED"] and remote["remote"] == "127.0.0.1" and remote["tls"] is None
    assert remote["messages_in"] is None and remote["age"] >= 0  # traffic is known only where it flows
    assert set(remote) == set(local)  # the same fields wherever the connection is

    # The registry holds the management view, never a credential.
    published = await a.shared.client.hgetall("wsgate:node:n1:connections")
    assert list(published) == [remote["id"]]
    entry = json.loads(published[remote["id"]])
    assert set(entry) == {
        "service",
        "principal",
        "roles",
        "realm",
        "remote",
        "opened",
        "expires",
        "tls",
        "transport",
        "tunnel",
    }
    assert "welcome" not in published[remote["id"]] and "Basic" not in published[remote["id"]]

    async with http.delete(f"{admin}/api/sessions/{remote['id']}") as response:
        assert response.status == 200 and await response.json() == {"closed": 1, "node": "n1"}
    message = await asyncio.wait_for(on_b.receive(), 2)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008  # as the API documents
    sessions = await wait_listing(http, admin, lambda s: {x["node"] for x in s} == {"n0", "n2"})
    async with http.delete(f"{admin}/api/sessions/{local['id']}") as response:  # this node's own, as before
        assert await response.json() == {"closed": 1, "node": "n0"}
    async with http.delete(f"{admin}/api/sessions/{remote['id']}") as response:  # gone everywhere
        assert response.status == 404 and await response.json() == {"closed": 0}
    assert (await asyncio.wait_for(on_a.receive(), 2)).data == 1008
    await on_c.send_str("untouched")
    assert (await on_c.receive()).data == "untouched"
    await on_c.close()
    await wait_listing(http, admin, lambda s: s == [])


async def test_a_node_that_stops_cleanly_leaves_no_entries(nodes, http) -> None:
    a, b = await nodes("n0", "n1")
    ws = await http.ws_connect(echo_url(b), headers=JOE)
    await wait_listing(http, admin_url(a), lambda s: [x["node"] for x in s] == ["n1"])
    assert set(await node_keys(a, "n1")) == {"wsgate:nodes member", "wsgate:node:n1", "wsgate:node:n1:connections"}
    await b.stop(grace=1.0)
    assert (await asyncio.wait_for(ws.receive(), 2)).data == 1001
    assert await node_keys(a, "n1") == []  # at once, not when the heartbeat expires
    assert await listing(http, admin_url(a)) == []


async def test_the_sessions_of_a_killed_node_vanish_within_three_heartbeats(nodes, redis_server, http, tmp_path):
    (a,) = await nodes("n0")
    port = free_port()
    config = tmp_path / "doomed.yaml"
    config.write_text(textwrap.dedent(node_config(redis_server.url, "doomed", port=port)))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with (tmp_path / "doomed.log").open("wb") as log:
        process = subprocess.Popen([str(WSGATE), "run", str(config)], cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        await asyncio.to_thread(wait_for_port, port, "wsgate run")
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/echo", headers=JOE)
        admin = admin_url(a)
        await wait_listing(http, admin, lambda s: [x["node"] for x in s] == ["doomed"])
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait)
        loop = asyncio.get_running_loop()
        killed = loop.time()
        await wait_listing(http, admin, lambda s: s == [], seconds=3 * HEARTBEAT + 2.0)
        gone_after = loop.time() - killed
        assert gone_after < 3 * HEARTBEAT + 0.5, gone_after
        assert await node_keys(a, "doomed") == []  # expired or dropped by the listing: nothing left behind
        await ws.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_after_a_redis_restart_every_node_publishes_its_sessions_again(nodes, redis_server, http) -> None:
    a, b = await nodes("n0", "n1")
    admin = admin_url(a)
    on_a = await http.ws_connect(echo_url(a), headers=JOE)
    on_b = await http.ws_connect(echo_url(b), headers=JOE)
    await wait_listing(http, admin, lambda s: sorted(x["node"] for x in s) == ["n0", "n1"])
    redis_server.stop()  # no persistence: the registry is lost with it
    async with http.get(f"{admin}/api/sessions") as response:  # what this node knows, said to be partial
        assert response.status == 200 and [s["node"] for s in await response.json()] == ["n0"]
        assert "shared state unavailable" in response.headers["Warning"]
    async with http.get(f"{admin}/metrics") as response:
        text = await response.text()
    assert "wsgate_state_up 0.0" in text
    errors = {
        line.split('"')[1]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("wsgate_state_errors_total{")
    }
    assert set(errors) == {"read", "write", "publish", "listen", "registry"}  # every label, from the start
    assert errors["read"] >= 1  # the listing above
    redis_server.start()
    loop = asyncio.get_running_loop()
    restarted = loop.time()
    await wait_listing(http, admin, lambda s: sorted(x["node"] for x in s) == ["n0", "n1"], seconds=8.0)
    assert loop.time() - restarted < 8.0
    assert await b.shared.client.hlen("wsgate:node:n1:connections") == 1
    async with http.get(f"{admin}/metrics") as response:
        assert "wsgate_state_up 1.0" in await response.text()
    await on_a.close()
    await on_b.close()
