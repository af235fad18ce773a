"""Scale-out with real processes: three ``wsgate run`` nodes and one ``--workers 2`` node on one redis-server.

Each node is a separate process with its own config (they differ only in ``state/node`` and the port): an
echo service behind a file realm with ``authorization-mode: recycle`` and a management service on the same
port. What one node does (a sign-in, a logout, a revocation) must hold on every other and in both workers; a
Redis outage must fail closed for new logins and leave open connections alone.

Which worker served a connection is read from the management API: ``GET /admin/api/info`` over a new TCP
connection reaches one worker (the kernel spreads connections over the port) and says its pid and how many
WebSockets it holds. The only WebSockets on the workers' port are the test's, so two pids that each hold
some prove that both workers accepted them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from .processes import free_port
from .redis_server import RedisServer

SRC = str(Path(__file__).resolve().parents[1] / "src")  # the nodes run this tree's code, not the installed one
USERS = ("joe", "ann", "bob", "carl", "dora")
PASSWORD = "Tr0ub4dor-secret"
CLOSE_WITHIN = 1.0  # a revocation closes connections on every node within this


def basic(user: str, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def users_xml() -> str:
    entries = "".join(
        f"<user><name>{user}</name><password>{PASSWORD}</password><role-name>AUTHORIZED</role-name></user>"
        for user in USERS
    )
    return f"<jaas-config>{entries}</jaas-config>"


def node_config(port: int, node: str, url: str, extra: str = "") -> str:
    """The configuration every node runs: only ``port`` and ``node`` differ between nodes."""
    return f"""
service:
  - name: echo
    accept: ws://127.0.0.1:{port}/echo
    type: echo
    realm-name: demo
    authorization-constraint:
      require-role: AUTHORIZED
  - name: admin
    accept: http://127.0.0.1:{port}/admin
    type: management
    properties:
      insecure: true
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
{extra}"""


@dataclass
class Node:
    """One ``wsgate run`` (its supervisor, with ``--workers``) and every line it wrote on stderr."""

    name: str
    port: int
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self.changed.set()
        self.changed.set()

    async def expect(self, pattern: str, count: int = 1, after: int = 0, timeout: float = 15.0) -> list[str]:
        """Wait until ``count`` lines from line ``after`` on match ``pattern``; return them."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = [line for line in self.lines[after:] if re.search(pattern, line)]
            if len(found) >= count:
                return found
            if self.process.returncode is not None and self.reader is not None and self.reader.done():
                raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{''.join(self.lines)}")
            self.changed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: {count} x {pattern!r} not logged:\n{''.join(self.lines[after:])}")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass

    def records(self, after: int = 0) -> list[dict[str, object]]:
        """The JSON log records written since line ``after``."""
        found = []
        for line in self.lines[after:]:
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
        return found

    @property
    def echo(self) -> str:
        return f"ws://127.0.0.1:{self.port}/echo"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # its workers too, whatever happened
        except ProcessLookupError:
            pass
        await self.process.wait()
        if self.reader is not None:
            await self.reader


async def wsgate(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    """``python -m wsgate ARGS`` running this tree's code, in its own process group, stderr piped."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (SRC, os.environ.get("PYTHONPATH"))))}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsgate",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


async def start_node(folder: Path, name: str, url: str, workers: int = 1, extra: str = "") -> Node:
    port = free_port()
    config = folder / f"{name}.yaml"
    config.write_text(node_config(port, name, url, extra))
    args = ["run", str(config)] + (["--workers", str(workers)] if workers > 1 else [])
    node = Node(name, port, await wsgate(*args, cwd=folder))
    node.reader = asyncio.create_task(node.read())
    return node


@dataclass
class Cluster:
    a: Node
    b: Node
    c: Node
    w: Node  # two workers sharing one port
    redis: RedisServer

    @property
    def nodes(self) -> list[Node]:
        return [self.a, self.b, self.c, self.w]


@pytest.fixture
async def cluster(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Cluster]:
    (tmp_path / "users.xml").write_text(users_xml())
    nodes = [await start_node(tmp_path, name, redis_server.url) for name in ("a", "b", "c")]
    nodes.append(await start_node(tmp_path, "w", redis_server.url, workers=2))
    try:
        # Every worker logs "ready at" for both services once it serves.
        await asyncio.gather(
            *(node.expect(r"service\[admin\].*ready at", 2 if node.name == "w" else 1) for node in nodes)
        )
        yield Cluster(*nodes, redis=redis_server)
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


# -- clients -------------------------------------------------------------------------------------------------


async def sign_in(http: aiohttp.ClientSession, node: Node, user: str) -> str:
    """A realm session from ``node``: the ``Cookie`` header value that presents it."""
    async with http.post(f"{node.base}/echo/.wsgate/session", headers=basic(user)) as signed:
        assert signed.status == 200, await signed.text()
        return signed.headers["Set-Cookie"].split(";")[0]


async def open_ws(http: aiohttp.ClientSession, node: Node, headers: dict[str, str]) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket to ``node``'s echo service that answered once (so it is open, and past admission)."""
    ws = await http.ws_connect(node.echo, headers=headers)
    await ws.send_str("hello")
    assert (await asyncio.wait_for(ws.receive(), 5)).data == "hello"
    return ws


async def refused(http: aiohttp.ClientSession, node: Node, headers: dict[str, str]) -> int:
    """The status with which ``node`` refuses a WebSocket (fails if it accepts)."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await (await http.ws_connect(node.echo, headers=headers)).close()
    return error.value.status


async def serving_workers(node: Node, expected: int, tries: int = 60) -> dict[int, int]:
    """Ask the workers' port for ``/admin/api/info`` over new TCP connections until the pids seen account for
    ``expected`` WebSockets: {pid: open WebSockets}."""
    seen: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        for _ in range(tries):
            async with fresh.get(f"{node.base}/admin/api/info") as answer:
                info = await answer.json()
            seen[info["pid"]] = info["connections"]
            if len(seen) >= 2 and sum(seen.values()) == expected:
                break
    return seen


async def closed_after(ws: aiohttp.ClientWebSocketResponse, started: float, timeout: float = 5.0) -> float:
    """Seconds from ``started`` (loop time) until ``ws`` receives its close (1008), failing on anything else."""
    message = await asyncio.wait_for(ws.receive(), timeout)
    elapsed = asyncio.get_running_loop().time() - started
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008, message
    return elapsed


async def revoke(http: aiohttp.ClientSession, node: Node, user: str) -> dict[str, int]:
    async with http.post(f"{node.base}/admin/api/revocations", json={"user": user}) as answer:
        assert answer.status == 200, await answer.text()
        return dict(await answer.json())


# -- the tests -----------------------------------------------------------------------------------------------


async def test_a_cookie_from_one_node_opens_sockets_on_every_node_and_worker_and_a_logout_anywhere_closes_them(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b, w = cluster.a, cluster.b, cluster.w
    cookie = {"Cookie": await sign_in(http, a, "joe")}
    on_a = await open_ws(http, a, cookie)
    on_b = await open_ws(http, b, cookie)
    on_w = [await open_ws(http, w, cookie) for _ in range(12)]  # new TCP connections: spread over both workers
    pids = await serving_workers(w, 12)
    assert len(pids) == 2 and all(pids.values()) and sum(pids.values()) == 12, pids

    async with http.delete(f"{b.base}/echo/.wsgate/session", headers=cookie) as out:  # logout on B
        assert out.status == 200
    started = asyncio.get_running_loop().time()
    for ws in [on_a, on_b, *on_w]:  # A's connections, and both workers'
        assert await closed_after(ws, started, 2) < CLOSE_WITHIN
    assert await refused(http, a, cookie) == 401  # the session is gone everywhere
    assert await refused(http, w, cookie) == 401

    # A logout on one worker reaches the other (both run node "w": they must still hear each other).
    cookie = {"Cookie": await sign_in(http, w, "joe")}
    on_a = await open_ws(http, a, cookie)
    on_w = [await open_ws(http, w, cookie) for _ in range(12)]
    assert len(await serving_workers(w, 12)) == 2
    async with http.delete(f"{w.base}/echo/.wsgate/session", headers=cookie) as out:
        assert out.status == 200
    started = asyncio.get_running_loop().time()
    for ws in [on_a, *on_w]:
        assert await closed_after(ws, started, 2) < CLOSE_WITHIN


async def test_a_revocation_on_c_closes_connections_on_a_b_and_both_workers_within_a_second(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b, c, w = cluster.a, cluster.b, cluster.c, cluster.w
    on_a = await open_ws(http, a, basic("ann"))
    on_b = await open_ws(http, b, {"Cookie": await sign_in(http, a, "ann")})
    on_w = [await open_ws(http, w, basic("ann")) for _ in range(8)]
    assert len(await serving_workers(w, 8)) == 2
    loop = asyncio.get_running_loop()
    started = loop.time()
    closes = asyncio.gather(*(closed_after(ws, started, 3) for ws in [on_a, on_b, *on_w]))
    assert (await revoke(http, c, "ann"))["closed"] == 0  # none of ann's connections is on C
    latencies = await closes
    print(f"\nrevocation on C -> close received on A, B, workers: max {max(latencies) * 1000:.0f} ms", latencies)
    assert max(latencies) < CLOSE_WITHIN
    for node in (a, b, w, w):  # and every node refuses her from now on
        assert await refused(http, node, basic("ann")) == 403

    # A revocation by one worker closes the other worker's connections too (same node name, different process).
    on_w = [await open_ws(http, w, basic("bob")) for _ in range(8)]
    assert len(await serving_workers(w, 8)) == 2
    started = loop.time()
    closes = asyncio.gather(*(closed_after(ws, started, 3) for ws in on_w))
    await revoke(http, w, "bob")
    assert max(await closes) < CLOSE_WITHIN


async def test_redis_killed_then_restarted_fails_closed_keeps_connections_and_recovers(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b, c, w = cluster.a, cluster.b, cluster.c, cluster.w
    loop = asyncio.get_running_loop()
    cookie = {"Cookie": await sign_in(http, a, "joe")}
    kept = [await open_ws(http, a, basic("joe")), await open_ws(http, b, cookie)]
    kept += [await open_ws(http, w, basic("joe")) for _ in range(6)]
    marks = {node.name: len(node.lines) for node in cluster.nodes}

    cluster.redis.kill()  # SIGKILL: no goodbye, and (no persistence) every key is lost
    assert await refused(http, a, basic("ann")) == 503  # a login whose revocation cannot be checked
    assert await refused(http, b, cookie) == 503  # a session that cannot be looked up
    assert await refused(http, w, basic("ann")) == 503
    async with http.post(f"{a.base}/echo/.wsgate/session", headers=basic("ann")) as signed:
        assert signed.status == 503 and signed.headers["Retry-After"] == "5"
    async with http.post(f"{c.base}/admin/api/revocations", json={"user": "joe"}) as answer:
        assert answer.status == 503 and "unavailable" in (await answer.json())["error"]  # nothing to revoke into
    for ws in kept:  # what was open keeps going
        await ws.send_str("during the outage")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "during the outage"
    await asyncio.sleep(1.5)  # long enough for the listeners to back off

    cluster.redis.start()
    restarted = loop.time()
    for _ in range(50):  # revoke joe on C at once, while the others' listeners may still be reconnecting
        async with http.post(f"{c.base}/admin/api/revocations", json={"user": "joe"}) as answer:
            if answer.status == 200:
                break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("C could not revoke within 5 s of Redis restarting")
    revoked = loop.time()
    closes = asyncio.gather(*(closed_after(ws, revoked, 8) for ws in kept))
    for _ in range(50):  # meanwhile, new logins work again
        try:
            await (await open_ws(http, a, basic("ann"))).close()
            break
        except aiohttp.WSServerHandshakeError:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("no recovery within 5 s")
    recovered = loop.time() - restarted
    await (await open_ws(http, w, basic("ann"))).close()
    latencies = await closes
    print(f"\nlogins again {recovered:.2f} s after the restart; joe revoked on C {revoked - restarted:.2f} s after it")
    print(f"closed on A, B, W after max {max(latencies):.2f} s", latencies)
    assert recovered < 2.0
    assert max(latencies) < 6.0  # by the message, or by the resync once the listener is back (backoff <= 5 s)

    # One WARNING when Redis went away and one INFO when it was back, per process (two workers on w).
    for node in cluster.nodes:
        await node.expect(r"reachable again", 2 if node is w else 1, after=marks[node.name], timeout=6)
        records = [r for r in node.records(marks[node.name]) if r.get("logger") == "wsgate.state"]
        down = [r for r in records if r["level"] == "warning" and "unavailable" in str(r["event"])]
        up = [r for r in records if r["level"] == "info" and "reachable again" in str(r["event"])]
        assert len(down) == len(up) == (2 if node is w else 1), (node.name, "\n".join(map(str, records)))
    # The 503s were audited, with the reason.
    for node, count in ((a, 2), (b, 1), (w, 1)):  # A: a WebSocket and a session sign-in; B: a session cookie
        audited = [
            r for r in node.records(marks[node.name]) if r.get("logger") == "wsgate.audit" and r.get("status") == 503
        ]
        assert len(audited) == count, audited
        assert all(r["level"] == "warning" and "Redis" in str(r["reason"]) for r in audited), audited


async def test_a_revocation_whose_message_was_lost_is_applied_when_the_listeners_resubscribe(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """The revocation's key and index entry without its message (as when a node's subscription was down when it
    was published):
    open connections stay until the node resynchronises from the keys after its listener reconnects."""
    from redis import asyncio as aioredis

    a, w = cluster.a, cluster.w
    on_a = await open_ws(http, a, basic("carl"))
    on_w = [await open_ws(http, w, basic("carl")) for _ in range(6)]
    client = aioredis.Redis.from_url(cluster.redis.url)
    try:
        until = time.time() + 60
        await client.set("wsgate:revocation:user:carl", repr(until), pxat=int(until * 1000))
        await client.zadd("wsgate:revocations", {"user:carl": until})  # its index entry, written with it
        assert await refused(http, a, basic("carl")) == 403  # the key alone refuses new logins at once
        await on_a.send_str("no message, still open")
        assert (await on_a.receive()).data == "no message, still open"
        loop = asyncio.get_running_loop()
        started = loop.time()
        killed = await client.client_kill_filter(_type="pubsub")  # every node's subscription drops and reconnects
        assert killed >= 5  # a, b, c and two workers
        latencies = await asyncio.gather(*(closed_after(ws, started, 5) for ws in [on_a, *on_w]))
        assert max(latencies) < 2.0, latencies
    finally:
        await client.aclose()
