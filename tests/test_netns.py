"""The layered-DMZ network harness itself (tests/netns.py): who reaches whom, the internal firewall, processes in
namespaces running this checkout's code, and cleanup that leaves nothing behind."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.netns import (
    FIREWALL_TABLE,
    IP,
    NFT,
    PREFIX,
    ROLES,
    SRC,
    Topology,
    missing_tools,
    namespaces,
    remove_leftovers,
    write_tls,
)

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or "")


@pytest.fixture
def listener(dmz_topology: Topology) -> Iterator[socket.socket]:  # noqa: F811
    """A listening socket in the dmz on every address (port 0: the kernel picks)."""
    sock = dmz_topology.listen("dmz", "0.0.0.0")
    yield sock
    sock.close()


def port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def test_client_reaches_the_dmz(dmz_topology: Topology, listener: socket.socket) -> None:  # noqa: F811
    assert dmz_topology.dial("client", dmz_topology.addr("dmz"), port(listener)) == "connected"
    # and the dmz's other address is not on the client's link: no route
    assert dmz_topology.dial("client", dmz_topology.addr("dmz", facing="internal"), port(listener)) == "unreachable"


def test_internal_dials_out_to_the_dmz(dmz_topology: Topology, listener: socket.socket) -> None:  # noqa: F811
    dmz = dmz_topology.addr("dmz", facing="internal")
    sock = dmz_topology.socket("internal")
    sock.settimeout(2)
    sock.connect((dmz, port(listener)))
    accepted, peer = listener.accept()
    with sock, accepted:
        assert peer[0] == dmz_topology.addr("internal")  # the DMZ sees the tunnel coming from internal
        sock.sendall(b"outbound works")
        accepted.settimeout(2)
        assert accepted.recv(100) == b"outbound works"
        accepted.sendall(b"and replies come back")  # established traffic passes the internal firewall
        assert sock.recv(100) == b"and replies come back"


def test_nothing_dials_into_internal(dmz_topology: Topology) -> None:  # noqa: F811
    inner = dmz_topology.listen("internal", "0.0.0.0")
    with inner:
        before = dmz_topology.dropped_inbound()
        # from the dmz: a route exists, the firewall drops the SYN (no refusal, no answer at all)
        assert dmz_topology.dial("dmz", dmz_topology.addr("internal"), port(inner), timeout=0.5) == "timeout"
        assert dmz_topology.dropped_inbound() > before
        # from the back end: the same
        assert (
            dmz_topology.dial("backend", dmz_topology.addr("internal", facing="backend"), port(inner), 0.5) == "timeout"
        )
        # from the client: not even a route
        assert dmz_topology.dial("client", dmz_topology.addr("internal"), port(inner)) == "unreachable"
        # while inside internal, loopback works
        assert dmz_topology.dial("internal", "127.0.0.1", port(inner)) == "connected"


def test_the_firewall_is_what_stops_the_dial() -> None:
    """A scratch topology without the rules: the same dial from the dmz connects; with them, it does not."""
    with Topology(firewall=False) as scratch:
        inner = scratch.listen("internal", "0.0.0.0")
        with inner:
            assert scratch.dial("dmz", scratch.addr("internal"), port(inner)) == "connected"
            scratch.set_firewall(True)
            assert scratch.dial("dmz", scratch.addr("internal"), port(inner), timeout=0.5) == "timeout"
            assert scratch.dropped_inbound() >= 1
            scratch.set_firewall(False)
            assert scratch.dial("dmz", scratch.addr("internal"), port(inner)) == "connected"


def test_only_internal_reaches_the_backend(dmz_topology: Topology) -> None:  # noqa: F811
    backend = dmz_topology.backend_echo()
    try:
        host = dmz_topology.addr("backend")
        assert backend.host == host and backend.port > 0
        assert dmz_topology.dial("client", host, backend.port) == "unreachable"
        assert dmz_topology.dial("dmz", host, backend.port) == "unreachable"
        sock = dmz_topology.socket("internal")
        sock.settimeout(3)
        with sock:
            sock.connect((host, backend.port))
            sock.sendall(b"X-Identity: alice\n")
            assert sock.recv(100) == b"X-Identity: alice\n"
        seen = backend.wait_connections(1)[0]
        assert seen["first"] == "X-Identity: alice\n"
        assert seen["peer"].startswith(dmz_topology.addr("internal", facing="backend") + ":")
    finally:
        backend.stop()


def test_no_namespace_forwards(dmz_topology: Topology) -> None:  # noqa: F811
    for role in ("client", "dmz", "internal", "backend"):
        out = dmz_topology.run(role, ["cat", "/proc/sys/net/ipv4/ip_forward"], check=True).stdout
        assert out.strip() == "0", role


def test_a_slow_reader_stalls_the_backend_flood(dmz_topology: Topology) -> None:  # noqa: F811
    """The back end's ``sent`` count shows backpressure: a reader that never reads holds it far below the flood,
    and reading lets it move on."""
    flood = 64 * 1024 * 1024
    backend = dmz_topology.backend_echo(flood=flood)
    try:
        sock = dmz_topology.socket("internal")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(5)
        with sock:
            sock.connect((backend.host, backend.port))
            sock.sendall(b"hello")
            backend.wait_connections(1)
            stalled = _steady(lambda: backend.connections()[0]["sent"])
            assert stalled < flood // 4
            drained = 0
            while drained < stalled + 4 * 1024 * 1024:
                data = sock.recv(1 << 20)
                assert data, "the back end closed early"
                drained += len(data)
        final = backend.wait_closed(1)[0]  # its last counts
        assert final["sent"] >= drained > stalled
    finally:
        backend.stop()


def _steady(read: Callable[[], int], period: float = 0.3, timeout: float = 10.0) -> int:
    """The value ``read`` returns once it stays the same for ``period`` seconds."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(period)
        value = read()
        if value == last:
            return value
        last = value
    raise AssertionError(f"still changing after {timeout} s: {last}")


def test_a_tls_backend_with_the_topology_certificates(dmz_topology: Topology, tls_files: dict[str, Path]) -> None:  # noqa: F811
    backend = dmz_topology.backend_echo(kind="ws", tls=tls_files["backend"])
    try:
        url = f"wss://{backend.address}/secure"
        result = dmz_topology.client_ws(url, ca=tls_files["ca"], send=["over tls"], expect=1, ns="internal")
        assert result["messages"] == ["over tls"], result
        result = dmz_topology.client_ws(url, send=["x"], expect=1, ns="internal")  # the system CAs: refused
        assert result["status"] is None and "certificate" in result["error"].lower(), result
    finally:
        backend.stop()


def test_namespace_processes_run_this_checkout(dmz_topology: Topology) -> None:  # noqa: F811
    result = dmz_topology.run("internal", [sys.executable, "-c", "import wsgate; print(wsgate.__file__)"], check=True)
    assert Path(result.stdout.strip()).resolve().is_relative_to(SRC.resolve())


@pytest.fixture(scope="module")
def tls_files(dmz_topology: Topology, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    return write_tls(dmz_topology, ca, tmp_path_factory.mktemp("netns-tls"))


def test_gateway_in_the_dmz_serves_the_client_and_restarts(dmz_topology: Topology, tls_files: dict[str, Path]) -> None:  # noqa: F811
    dmz = dmz_topology.addr("dmz")
    config = tls_files["ca"].parent / "dmz-echo.yaml"
    config.write_text(
        "service:\n  - name: echo\n    accept: wss://${netns.dmz}:9443/echo\n    type: echo\n"
        "security:\n  keystore:\n    type: PEM\n    file: dmz.pem\n"
        "  truststore:\n    type: PEM\n    file: ca.pem\n"
    )
    gateway = dmz_topology.gateway("dmz", config)
    try:
        assert gateway.listening() == [("tls", dmz, 9443)]
        url = f"wss://{dmz}:9443/echo"
        result = dmz_topology.client_ws(url, ca=tls_files["ca"], send=["one", "two"], expect=2)
        assert result["status"] == 101 and result["messages"] == ["one", "two"], result
        # a client that stays while the gateway restarts gets a clean close (1001: going away)
        held = dmz_topology.client_ws_background(url, ca=tls_files["ca"])
        held.connected()
        gateway.restart()
        assert gateway.listening() == [("tls", dmz, 9443)]
        assert held.result()["close_code"] == 1001
        result = dmz_topology.client_ws(url, ca=tls_files["ca"], send=["after restart"], expect=1)
        assert result["messages"] == ["after restart"], result
        assert "listening on" in gateway.log()
    finally:
        gateway.stop()
    assert gateway.returncode == 0, gateway.log()


def test_client_ws_reports_a_refusal(dmz_topology: Topology) -> None:  # noqa: F811
    backend = dmz_topology.backend_echo(7003, kind="ws")
    try:
        url = f"ws://{dmz_topology.addr('backend')}:7003/feed?x=1"
        result = dmz_topology.client_ws(url, headers={"X-Identity": "alice"}, send=["hi"], expect=1, ns="internal")
        assert result["status"] == 101 and result["messages"] == ["hi"], result
        seen = backend.wait_connections(1)[0]
        assert seen["path"] == "/feed?x=1" and seen["headers"]["X-Identity"] == "alice"
        # no route from the client: an error, no status
        result = dmz_topology.client_ws(url, timeout=3)
        assert result["status"] is None and result["error"], result
    finally:
        backend.stop()


async def test_in_process_client_in_the_client_namespace(dmz_topology: Topology) -> None:  # noqa: F811
    """``connector("client")``: aiohttp from the test process, its connections made inside the client namespace."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.Response(text=request.remote or "")

    app = web.Application()
    app.router.add_get("/", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = dmz_topology.listen("dmz", dmz_topology.addr("dmz"))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        async with aiohttp.ClientSession(connector=dmz_topology.connector("client")) as http:
            async with http.get(f"http://{dmz_topology.addr('dmz')}:{port(sock)}/") as response:
                assert await response.text() == dmz_topology.addr("client")
            with pytest.raises(aiohttp.ClientConnectorError):
                await http.get(f"http://{dmz_topology.addr('backend')}:7999/")
    finally:
        await asyncio.wait_for(runner.cleanup(), 5)


def test_close_leaves_nothing_behind() -> None:
    scratch = Topology().start()
    names = [scratch.name(role) for role in ("client", "dmz", "internal", "backend")]
    assert set(names) <= set(namespaces())
    sleeper = scratch.popen("dmz", ["sleep", "60"])
    stray = subprocess.Popen([IP, "netns", "exec", scratch.name("internal"), "sleep", "60"])  # not tracked
    scratch.close()
    assert not set(names) & set(namespaces())
    assert sleeper.returncode is not None
    assert stray.wait(5) is not None
    assert not scratch.folder.exists()


def _host_view() -> str:
    """The host namespace's addresses, routes, links and firewall, as text."""
    views = [[IP, "-o", "addr"], [IP, "route"], [IP, "-o", "link"], [NFT, "list", "ruleset"]]
    return "\n".join(subprocess.run(argv, capture_output=True, text=True, check=True).stdout for argv in views)


def test_the_host_namespace_is_left_alone(dmz_topology: Topology) -> None:  # noqa: F811
    """While the topology exists, none of its addresses, links or rules shows in the host namespace."""
    host = _host_view()
    assert "10.231." not in host
    assert FIREWALL_TABLE not in host
    for role in ROLES:
        for line in dmz_topology.run(role, [IP, "-o", "link"], check=True, python=False).stdout.splitlines():
            interface = line.split(":")[1].strip().split("@")[0]
            if interface != "lo":
                assert f" {interface}:" not in host and f" {interface}@" not in host, interface
    # and its own namespaces do have them (the check above can fail)
    assert "10.231.2.1/30" in dmz_topology.run("internal", [IP, "-o", "addr"], python=False).stdout
    assert FIREWALL_TABLE in dmz_topology.run("internal", [NFT, "list", "ruleset"], python=False).stdout


def test_leftovers_of_dead_runs_are_removed(dmz_topology: Topology) -> None:  # noqa: F811
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}-{dead.pid}-abc123-dmz"
    live = f"{PREFIX}-{dmz_topology.run_id.split('-')[0]}-abc123-dmz"
    for name in (stale, live):
        subprocess.run([IP, "netns", "add", name], check=True)
    try:
        assert stale in remove_leftovers()
        assert stale not in namespaces()
        assert live in namespaces() and dmz_topology.name("dmz") in namespaces()  # a live run's stay
    finally:
        for name in (stale, live):
            subprocess.run([IP, "netns", "delete", name], capture_output=True)
