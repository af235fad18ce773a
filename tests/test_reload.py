"""Reload sequences end to end: every reload applies or is refused and reported, never half-done,
and the next one works (issue: a reload that added a service broke every later reload)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest

from wsgate import errors
from wsgate.catalog import load_config
from wsgate.gateway import Gateway


def service(name: str, extra: str = "", port: int = 0) -> str:
    return f"  - name: {name}\n    accept: ws://127.0.0.1:{port}/{name}\n    type: echo\n{extra}"


def write(tmp_path: Path, *services: str, limits: str = "") -> None:
    (tmp_path / "gateway.yaml").write_text("service:\n" + "".join(services) + limits)


async def echoes(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.ws_connect(url) as ws:
            await ws.send_str("ping")
            return (await asyncio.wait_for(ws.receive(), 3)).data == "ping"
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 404
        return False


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    msg = await asyncio.wait_for(ws.receive(), 3)
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    return msg.data  # type: ignore[no-any-return]


def reloads(gw: Gateway, result: str) -> float:
    metrics = gw.runtime.metrics
    assert metrics is not None
    return metrics.reloads.labels(result)._value.get()  # type: ignore[no-any-return]


async def test_add_add_change_remove_invalid_valid(start_gateway, http, tmp_path):
    gw = await start_gateway("service:\n" + service("a"))
    base = f"ws://127.0.0.1:{gw.port_of('a')}"
    steps: list[tuple[tuple[str, ...], str]] = [
        ((service("a"), service("b")), "1 unchanged, 1 added, 0 changed, 0 removed (b)"),
        ((service("a"), service("b"), service("c")), "2 unchanged, 1 added, 0 changed, 0 removed (c)"),
    ]
    for services, expected in steps:
        write(tmp_path, *services)
        assert await gw.reload() == (True, expected)
    assert [await echoes(http, f"{base}/{n}") for n in "abc"] == [True, True, True]
    a, b = await http.ws_connect(f"{base}/a"), await http.ws_connect(f"{base}/b")
    limit = "    accept-options:\n      connection.limit: 1\n"
    write(tmp_path, service("a", limit), service("b"), service("c"))
    assert await gw.reload() == (True, "2 unchanged, 0 added, 1 changed, 0 removed (a)")
    assert await closed_with(a) == 1012
    async with http.ws_connect(f"{base}/a") as first:  # the changed service's new limit holds
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{base}/a")
        assert refused.value.status == 503
        await first.close()
    write(tmp_path, service("a", limit), service("c"))
    assert await gw.reload() == (True, "2 unchanged, 0 added, 0 changed, 1 removed (b)")
    assert await closed_with(b) == 1001
    assert not await echoes(http, f"{base}/b")
    (tmp_path / "gateway.yaml").write_text("service: [")
    ok, message = await gw.reload()
    assert not ok and "gateway.yaml" in message
    assert [await echoes(http, f"{base}/{n}") for n in "ac"] == [True, True]
    write(tmp_path, service("a", limit), service("c"), service("d"))
    assert await gw.reload() == (True, "2 unchanged, 1 added, 0 changed, 0 removed (d)")
    assert [await echoes(http, f"{base}/{n}") for n in "acd"] == [True, True, True]
    assert (reloads(gw, "applied"), reloads(gw, "rejected"), reloads(gw, "failed")) == (5, 1, 0)


async def test_gateway_limits_set_by_a_reload_survive_the_next_reload(start_gateway, http, tmp_path):
    gw = await start_gateway("service:\n" + service("a"))
    url = f"ws://127.0.0.1:{gw.port_of('a')}/a"
    one_connection = "limits:\n  connections: 1\n"
    write(tmp_path, service("a"), limits=one_connection)
    assert (await gw.reload())[0]
    write(tmp_path, service("a"), service("b"), limits=one_connection)
    assert (await gw.reload())[0]
    async with http.ws_connect(url) as first:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == 503
        await first.close()


def test_every_gateway_attribute_is_either_replaced_or_kept_by_a_reload(tmp_path):
    """A new piece of gateway state must be classified, or the next reload forgets (or keeps) it silently."""
    from wsgate.gateway import _KEPT, _PER_CONFIG

    write(tmp_path, service("a"))
    gateway = Gateway(load_config(tmp_path / "gateway.yaml"))
    assert not set(_PER_CONFIG) & set(_KEPT)
    assert set(vars(gateway)) == set(_PER_CONFIG) | set(_KEPT)


async def test_a_reload_that_cannot_bind_is_undone_and_named(start_gateway, http, tmp_path, unused_tcp_port):
    gw = await start_gateway("service:\n" + service("a"))
    base = f"ws://127.0.0.1:{gw.port_of('a')}"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    try:
        # "b" binds a new free port first, then "c" finds its port taken: b's socket must be given back.
        write(tmp_path, service("a"), service("b", port=unused_tcp_port), service("c", port=taken))
        ok, message = await gw.reload()
        assert not ok
        assert message == (
            f"service[c]/accept: cannot bind 127.0.0.1:{taken}: address already in use; "
            "another process listens there: stop it or choose another port"
        )
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.ws_connect(f"ws://127.0.0.1:{unused_tcp_port}/b")
        assert await echoes(http, f"{base}/a")
        assert gw.config.service("a") and [s.name for s in gw.config.services] == ["a"]
    finally:
        busy.close()
    assert (await gw.reload())[0]  # the port is free now: the same config applies
    assert await echoes(http, f"ws://127.0.0.1:{unused_tcp_port}/b")
    assert await echoes(http, f"ws://127.0.0.1:{taken}/c")


ADMIN = "  - name: admin\n    accept: http://127.0.0.1:0/admin\n    type: management\n    properties:\n      insecure: true\n"


async def test_reloads_through_the_api_add_add_fail_valid(start_gateway, http, tmp_path, caplog):
    gw = await start_gateway("service:\n" + ADMIN)
    api = f"http://127.0.0.1:{gw.port_of('admin')}/admin/api/reload"
    for services in ((ADMIN, service("a")), (ADMIN, service("a"), service("b"))):
        write(tmp_path, *services)
        async with http.post(api) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["reloaded"] is True
    loader = gw.loader

    def broken() -> object:
        raise RuntimeError("disk on fire")

    gw.loader = broken  # type: ignore[assignment]
    async with http.post(api) as response:
        assert response.status == 500
        body = await response.json()
    assert body["reloaded"] is False
    assert body["message"].startswith("reload failed, the running configuration stays: RuntimeError: disk on fire")
    assert any(r.exc_info and "reload failed" in r.getMessage() for r in caplog.records)  # with its traceback
    with pytest.raises(errors.ReloadFailed):
        await gw.reload()
    gw.loader = loader
    write(tmp_path, ADMIN, service("a"), service("b"), service("c"))
    async with http.post(api) as response:
        assert response.status == 200 and (await response.json())["message"].startswith("3 unchanged, 1 added")
    base = f"ws://127.0.0.1:{gw.port_of('a')}"
    assert [await echoes(http, f"{base}/{n}") for n in "abc"] == [True, True, True]
    async with http.get(api.replace("/api/reload", "/metrics")) as response:
        text = await response.text()
    assert 'wsgate_reloads_total{result="failed"} 2.0' in text
    assert 'wsgate_reloads_total{result="applied"} 3.0' in text


async def test_a_refused_reload_leaves_the_running_deployment_as_it_was(start_gateway, http, tmp_path):
    """Built beside what runs: a reload that fails at its last bind changes nothing that runs."""
    gw = await start_gateway("service:\n" + service("a") + service("b"))
    before = gw.deployment
    handlers, listeners = dict(gw.services), dict(gw.listeners)
    a = await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('a')}/a")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        limit = "    accept-options:\n      connection.limit: 1\n"
        write(tmp_path, service("a", limit), service("c", port=busy.getsockname()[1]))
        ok, message = await gw.reload()
    finally:
        busy.close()
    assert not ok and "cannot bind" in message
    assert gw.deployment is before and gw.services == handlers and gw.listeners == listeners
    await a.send_str("still here")  # "a" would have been changed (1012), "b" removed (1001): neither happened
    assert (await asyncio.wait_for(a.receive(), 3)).data == "still here"
    await a.close()
