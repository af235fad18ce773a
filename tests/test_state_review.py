"""Review of the shared state (Redis): regressions for defects found by an attacker-minded review."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import pytest

from wsgate.config.model import State
from wsgate.core.identity import Identity
from wsgate.state.redis import RedisSessions, RedisState


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
async def state(redis_server):
    shared = RedisState(State(type="redis", url=redis_server.url, node="review"))
    await shared.start()
    try:
        yield shared
    finally:
        await shared.close()


async def test_a_users_session_set_expires_with_its_last_session(state) -> None:
    sessions = RedisSessions(state, "demo")
    expires_at = time.time() + 60
    await sessions.issue(Identity("demo", "joe", frozenset(), None, None, time.time()), expires_at)
    ttl = await state.client.pttl(state.key("user-sessions", "demo", "joe"))
    assert 0 < ttl <= 60_000  # -1 (no expiry): one set per user that ever logged in, kept for ever


@pytest.fixture
def node(start_gateway, redis_server, tmp_path):
    from .test_state_redis import USERS, node_config

    (tmp_path / "users.xml").write_text(USERS)

    async def start(name: str = "n0"):
        return await start_gateway(node_config(redis_server.url, name), name=f"{name}.yaml")

    return start


async def test_a_session_value_this_version_cannot_read_is_no_session_not_a_500(node, http) -> None:
    """A value written by another version of wsgate (a rolling upgrade), or damaged: 401, never a 500."""
    gateway = await node()
    base = f"http://127.0.0.1:{gateway.port_of('echo')}/echo"
    async with http.post(f"{base}/.wsgate/session", headers=basic("joe", "welcome")) as signed:
        cookie = signed.headers["Set-Cookie"].split(";")[0]
    shared = gateway.shared
    keys = [key async for key in shared.client.scan_iter(match=shared.key("session", "demo", "*"))]
    assert len(keys) == 1
    for value in ('{"realm": "demo"}', "not json", "[]"):
        await shared.client.set(keys[0], value)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"ws://127.0.0.1:{gateway.port_of('echo')}/echo", headers={"Cookie": cookie})
        assert refused.value.status == 401
        async with http.get(f"{base}/.wsgate/session", headers={"Cookie": cookie}) as whoami:
            assert whoami.status == 401


async def test_a_revocation_value_this_version_cannot_read_still_refuses(node, http) -> None:
    gateway = await node()
    await gateway.shared.client.set(gateway.shared.key("revocation", "user:joe"), "garbage")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"ws://127.0.0.1:{gateway.port_of('echo')}/echo", headers=basic("joe", "welcome"))
    assert refused.value.status == 403


async def test_a_resync_that_fails_with_a_bug_does_not_end_the_listener(state, redis_server) -> None:
    """Whatever a resync raises, the listener lives on: without it no logout or revocation of another node
    would close this node's connections any more."""
    got: list[dict] = []
    state.subscribe("probe", got.append)
    failures = [RuntimeError("a bug in a resync")]

    async def resync() -> None:
        if failures:
            raise failures.pop()

    state.on_reconnect.append(resync)
    await state.close()  # the fixture's listener started before the handler: start one that has it
    state.client = type(state.client).from_url(redis_server.url, decode_responses=True)
    state.subscriber = type(state.subscriber).from_url(redis_server.url)
    state.subscribed.clear()
    await state.start()
    redis_server.stop()
    redis_server.start()
    for _ in range(100):
        try:
            await state.publish("probe", {"n": 1})
        except Exception:
            pass
        await asyncio.sleep(0.1)
        if got:
            break
    assert got and got[0]["n"] == 1
    assert state.listener is not None and not state.listener.done()


async def test_a_revocation_during_a_redis_outage_still_closes_this_nodes_connections(node, redis_server, http) -> None:
    """The revocation cannot be recorded (503 for the operator), but what this node can do, it does: the
    revoked user's live connections here close, and their reconnects are refused (503) until Redis is back."""
    from wsgate.state.redis import StateUnavailable

    gateway = await node()
    ws = await http.ws_connect(f"ws://127.0.0.1:{gateway.port_of('echo')}/echo", headers=basic("joe", "welcome"))
    await ws.send_str("open")
    assert (await ws.receive()).data == "open"
    redis_server.stop()
    with pytest.raises(StateUnavailable):
        await gateway.revoke(user="joe")
    message = await asyncio.wait_for(ws.receive(), 3)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008


async def test_an_end_request_with_a_field_of_the_wrong_type_closes_nothing(node, http) -> None:
    """A field this version cannot read must not be dropped: that would widen the selector (here from one
    session of joe's to every connection of joe's)."""
    import json

    gateway = await node()
    ws = await http.ws_connect(f"ws://127.0.0.1:{gateway.port_of('echo')}/echo", headers=basic("joe", "welcome"))
    message = {"selector": {"user": "joe", "session": ["other"]}, "code": 1008, "reason": "x", "origin": "another"}
    await gateway.shared.client.publish(gateway.shared.key("end"), json.dumps(message))
    await ws.send_str("still open")
    received = await asyncio.wait_for(ws.receive(), 2)
    assert received.type == aiohttp.WSMsgType.TEXT and received.data == "still open"
    await ws.close()


async def test_a_resync_reads_the_revocation_index_not_the_keyspace(node, http) -> None:
    """However many sessions and rate keys Redis holds, a resync reads only the revocations in force."""
    gateway = await node()
    client = gateway.shared.client
    await client.mset({gateway.shared.key("session", "demo", f"{i:064x}"): "{}" for i in range(2000)})
    await gateway.revocations.revoke("user:mallory", time.time() + 60)
    calls: list[str] = []
    original = client.scan_iter

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("scan")
        return original(*args, **kwargs)

    client.scan_iter = spy
    entries = await gateway.revocations.entries()
    assert list(entries) == ["user:mallory"] and calls == []
    assert await gateway.revocations.lift("user:mallory") and await gateway.revocations.entries() == {}
