"""The layered DMZ with real network separation (tests/netns.py): client, dmz, internal and backend namespaces.

The internal namespace accepts no inbound connection (nftables drops it), so the only way in is the tunnels the
internal gateway dials out. Both gateways run as ``wsgate run`` processes of this checkout, loading
docs/examples/dmz/*.yaml with the topology's addresses as properties (the same configs docs/dmz.md shows).
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.netns import (
    BackendProcess,
    GatewayProcess,
    Topology,
    missing_tools,
    write_tls,
)
from wsgate.security.assertion import generate_key_pair

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or "")

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples" / "dmz"
JOE = {"Authorization": "Basic " + base64.b64encode(b"joe:welcome").decode()}
WRONG = {"Authorization": "Basic " + base64.b64encode(b"joe:wrong").decode()}
USERS = (
    "<jaas-config><user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>"
    "</jaas-config>"
)
PREPARED = 3
FLOOD = 256 * 1024 * 1024  # bytes the "bulk" back end pushes at each client
DMZ_PORT, TUNNEL_PORT, DMZ_METRICS, INTERNAL_METRICS = 8443, 1080, 9100, 9101


@dataclass
class Deployment:
    topology: Topology
    folder: Path
    backend: BackendProcess
    flood: BackendProcess
    dmz: GatewayProcess
    internal: GatewayProcess

    def url(self, path: str = "app1") -> str:
        return f"wss://{self.topology.addr('dmz')}:{DMZ_PORT}/{path}"

    def client(self, path: str = "app1", **options: object) -> dict[str, object]:
        return self.topology.client_ws(self.url(path), ca=self.folder / "tls" / "ca.pem", **options)  # type: ignore[arg-type]

    def echo(self, text: str) -> str:
        """Send ``text`` as joe and return all the echo: the back end also echoes the identity line it reads first,
        as its own message or with ``text`` (TCP keeps no boundaries), so wait for two at most 3 s."""
        result = self.client(headers=JOE, send=[text], expect=2, timeout=3.0)
        assert result["status"] == 101, result
        return "".join(result["messages"])  # type: ignore[arg-type]

    def metrics(self, ns: str) -> dict[str, float]:
        """The gateway's wsgate_tunnel_* samples, read from inside its namespace (its metrics listen on loopback)."""
        port = DMZ_METRICS if ns == "dmz" else INTERNAL_METRICS

        async def scrape() -> str:
            async with (
                aiohttp.ClientSession(connector=self.topology.connector(ns)) as http,
                http.get(f"http://127.0.0.1:{port}/metrics") as response,
            ):
                return await response.text()

        text = asyncio.run(scrape())
        samples: dict[str, float] = {}
        for name, labels, value in re.findall(r"^(wsgate_tunnel_\w+)\{([^}]*)\} (\S+)$", text, re.M):
            found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            outcome = found.get("outcome")
            samples[f"{name}{'/' + outcome if outcome else ''}/{found['service']}"] = float(value)
        return samples

    def ready(self, count: int = PREPARED, service: str = "app1", timeout: float = 10.0) -> float:
        """Wait until the DMZ reports ``count`` ready tunnels for ``service``; how long it took."""
        started = time.monotonic()
        while True:
            try:
                if self.metrics("dmz").get(f"wsgate_tunnel_ready/{service}", 0) >= count:
                    return time.monotonic() - started
            except aiohttp.ClientError:
                pass  # the DMZ gateway is (re)starting
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"no {count} ready tunnels:\n{self.internal.log()[-3000:]}")
            time.sleep(0.05)


def _configs(folder: Path, backend: str) -> None:
    """The documented configs with this topology's names, stores and the metrics services added."""
    dmz = (EXAMPLES / "dmz-gateway.yaml").read_text()
    internal = (EXAMPLES / "internal-gateway.yaml").read_text()
    for text_name, text in (("dmz.yaml", dmz), ("internal.yaml", internal)):
        text = text.replace("../keystore.p12", "tls/KEY.pem").replace("type: PKCS12", "type: PEM")
        text = text.replace("    password-file: ../keystore.pw\n", "").replace("../truststore.pem", "tls/ca.pem")
        text = text.replace("../jaas-config.xml", "users.xml").replace("127.0.0.1:3101", backend)
        text = text.replace("dmz-assertion-example.key", "dmz.key").replace("dmz-assertion-example.pub", "dmz.pub")
        side = "dmz" if text_name == "dmz.yaml" else "internal"
        text = text.replace("tls/KEY.pem", f"tls/{side}.pem")
        port = DMZ_METRICS if side == "dmz" else INTERNAL_METRICS
        metrics = f"  - name: metrics\n    accept: http://127.0.0.1:{port}/metrics\n    type: metrics\n"
        if side == "internal":  # bound on every address: only the firewall keeps the other namespaces out
            metrics += f"    accept-options:\n      http.bind: 0.0.0.0:{port}\n"
        metrics += "\n"
        text = text.replace("\nsecurity:\n", f"\n{metrics}security:\n", 1)
        (folder / text_name).write_text(text)


def _more_services(folder: Path, backend: str, flood: str) -> None:
    """Two more service pairs: "forged", whose internal end pins another key (every assertion it gets is
    forged), and "bulk", whose back end pushes a flood at each client (a slow reader's backpressure)."""
    for name in ("dmz.yaml", "internal.yaml"):
        text = (folder / name).read_text()
        block = text[text.index("  - name: app1") : text.index("  - name: metrics")]
        forged = block.replace("name: app1", "name: forged").replace("/app1", "/forged")
        forged = forged.replace("tunnel.assertion.public-key: dmz.pub", "tunnel.assertion.public-key: rogue.pub")
        forged = forged.replace("prepared.connection.count: 8", "prepared.connection.count: 1")
        bulk = block.replace("name: app1", "name: bulk").replace("/app1", "/bulk").replace(backend, flood)
        bulk = bulk.replace("prepared.connection.count: 8", "prepared.connection.count: 2")
        (folder / name).write_text(text.replace("  - name: metrics", forged + bulk + "  - name: metrics", 1))


@pytest.fixture(scope="module")
def deployment(
    dmz_topology: Topology, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("dmz-netns")
    write_tls(dmz_topology, ca, folder / "tls")
    (folder / "users.xml").write_text(USERS)
    private, public = generate_key_pair()
    (folder / "dmz.key").write_bytes(private)
    (folder / "dmz.pub").write_bytes(public)
    (folder / "rogue.pub").write_bytes(generate_key_pair()[1])
    backend = dmz_topology.backend_echo()
    flood = dmz_topology.backend_echo(flood=FLOOD)
    _configs(folder, backend.address)
    _more_services(folder, backend.address, flood.address)
    properties = {
        "public.hostname": dmz_topology.addr("dmz"),
        "dmz.backplane.hostname": dmz_topology.addr("dmz", facing="internal"),
    }
    for name in ("dmz.yaml", "internal.yaml"):  # prepared.connection.count 8 → PREPARED, to keep it quick
        path = folder / name
        path.write_text(
            path.read_text().replace("prepared.connection.count: 8", f"prepared.connection.count: {PREPARED}")
        )
    dmz = dmz_topology.gateway("dmz", folder / "dmz.yaml", properties=properties)
    dmz.listening(3)
    internal = dmz_topology.gateway("internal", folder / "internal.yaml", properties=properties)
    internal.listening(1)
    made = Deployment(dmz_topology, folder, backend, flood, dmz, internal)
    made.ready()
    try:
        yield made
    finally:
        internal.stop()
        dmz.stop()
        backend.stop()
        flood.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_nothing_dials_into_the_internal_gateway_yet_the_tunnels_are_up(deployment: Deployment) -> None:
    topology = deployment.topology
    # the internal gateway listens (its metrics, on every address for this proof), but no one outside gets in
    assert not topology.can_connect("dmz", topology.addr("internal"), INTERNAL_METRICS, timeout=0.5)
    assert not topology.can_connect("client", topology.addr("internal"), INTERNAL_METRICS, timeout=0.5)
    assert not topology.can_connect("client", topology.addr("backend"), deployment.backend.port, timeout=0.5)
    stats = deployment.metrics("dmz")
    assert stats["wsgate_tunnel_ready/app1"] >= PREPARED  # ... while the outbound tunnels are up


def test_a_valid_user_reaches_the_back_end_which_sees_the_identity(deployment: Deployment) -> None:
    before = len(deployment.backend.connections())
    assert deployment.echo("hello").endswith("hello")  # after the identity line, which this back end echoes too
    first = deployment.backend.wait_connections(before + 1)[-1]["first"]
    assert first.startswith("WSGATE-IDENTITY ")
    assert '"sub":"joe"' in first and '"roles":["AUTHORIZED"]' in first
    assert f'"remote":"{deployment.topology.addr("client")}' in first  # the client's address, not the DMZ's


def test_a_wrong_password_is_refused_at_the_edge_and_no_tunnel_is_used(deployment: Deployment) -> None:
    deployment.ready()
    before = deployment.metrics("dmz")
    connections = len(deployment.backend.connections())
    result = deployment.client(headers=WRONG, send=["x"], expect=1)
    assert result["status"] in (401, 403), result
    after = deployment.metrics("dmz")
    assert after["wsgate_tunnel_ready/app1"] == before["wsgate_tunnel_ready/app1"]
    assert after.get("wsgate_tunnel_exhausted_total/app1", 0) == before.get("wsgate_tunnel_exhausted_total/app1", 0)
    internal = deployment.metrics("internal")
    assert internal.get("wsgate_tunnel_assertions_total/refused/app1", 0) == 0
    assert len(deployment.backend.connections()) == connections


def test_a_forged_assertion_never_becomes_a_connection(deployment: Deployment) -> None:
    deployment.ready(1, service="forged")
    connections = len(deployment.backend.connections())
    result = deployment.client("forged", headers=JOE, send=["x"], expect=1)
    assert result["status"] == 403, result
    assert deployment.metrics("internal")["wsgate_tunnel_assertions_total/refused/forged"] >= 1
    assert len(deployment.backend.connections()) == connections


def test_slow_clients_keep_their_backpressure_across_the_tunnel(deployment: Deployment) -> None:
    deployment.ready(2, service="bulk")
    ca = deployment.folder / "tls" / "ca.pem"
    # a slow client reads nothing for 5 s while its back end floods it; a fast one drains the same flood for 2 s
    slow = deployment.topology.client_ws_background(
        deployment.url("bulk"), ca=ca, headers=JOE, hold=5.0, wait_close=False
    )
    slow.connected()
    fast = deployment.client("bulk", headers=JOE, drain=2.0, timeout=15.0)
    assert fast["status"] == 101, fast
    started = time.monotonic()
    assert deployment.echo("quick").endswith("quick")  # and the other service is not affected
    assert time.monotonic() - started < 5.0
    assert slow.result(timeout=20.0)["status"] == 101
    slow_leg, fast_leg = deployment.flood.wait_closed(2)[:2]  # in the order they connected
    # the slow client stalled its own tunnel and back-end connection: the back end could send it only what the
    # buffers along the way hold, while the fast one, over its own tunnel at the same time, got far more
    assert fast["received"] > 4 * slow_leg["sent"], (fast["received"], slow_leg["sent"], fast_leg["sent"])
    assert slow_leg["sent"] < FLOOD


def test_a_restarted_dmz_gateway_gets_its_pool_back_within_seconds(deployment: Deployment) -> None:
    deployment.dmz.restart()
    deployment.dmz.listening(3)
    took = deployment.ready(timeout=5.0)
    assert took < 3.0
    assert deployment.metrics("internal").get("wsgate_tunnel_redials_total/app1", 0) >= PREPARED
    assert deployment.echo("again").endswith("again")


def test_a_restarted_internal_gateway_closes_clients_cleanly(deployment: Deployment) -> None:
    deployment.ready()
    held = deployment.topology.client_ws_background(
        deployment.url(), ca=deployment.folder / "tls" / "ca.pem", headers=JOE, send=["held"]
    )
    held.connected()
    time.sleep(0.3)
    deployment.internal.restart()
    result = held.result(timeout=10.0)
    assert result["close_code"] == 1001, result
    deployment.internal.listening(1)
    deployment.ready(timeout=5.0)
    assert deployment.echo("new").endswith("new")
