"""Two real gateways on loopback joined by tunnels (mTLS via trustme), and a back end that reports what it got.

``dmz_pair`` writes the DMZ gateway's and the internal gateway's configs (YAML, the form docs/dmz.md
documents) beside their PEM stores and an Ed25519 key pair, and starts them in this test process.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from wsgate.catalog import load_config
from wsgate.gateway import Gateway
from wsgate.security.assertion import generate_key_pair

USERS = (
    "<jaas-config>"
    "<user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>"
    "<user><name>ann</name><password>secret</password><role-name>GUEST</role-name></user>"
    "</jaas-config>"
)
JOE = {"Authorization": "Basic " + base64.b64encode(b"joe:welcome").decode()}
ANN = {"Authorization": "Basic " + base64.b64encode(b"ann:secret").decode()}
WRONG = {"Authorization": "Basic " + base64.b64encode(b"joe:nope").decode()}
SERVICE_URI = "wss://app.internal.test:443/app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DMZ = """
service:
  - name: dmz-app
    accept: ws://127.0.0.1:0/app
    connect: {service_uri}
    type: proxy
    realm-name: demo
    authorization-constraint:
      require-role: "{dmz_role}"
    connect-options:
      http.transport: socks://127.0.0.1:{tunnel_port}
      socks.mode: reverse
      socks.transport: wsn+ssl://127.0.0.1:{tunnel_port}/shield
      socks.timeout: 2 seconds
      ssl.verify-client: required
      tunnel.assertion.key: dmz-private.pem
      tunnel.peer: internal-gateway
    properties:
      connect.strategy: prepared
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    properties:
      insecure: true
security:
  keystore:
    type: PEM
    file: dmz-keystore.pem
  truststore:
    type: PEM
    file: truststore.pem
  realm:
    - name: demo
      authentication:
        http-challenge-scheme: Basic
        login-modules:
          login-module:
            type: file
            options:
              file: users.xml
"""

INTERNAL = """
service:
  - name: internal-app
    accept: {service_uri}
    connect: tcp://127.0.0.1:{backend_port}
    type: proxy
    authorization-constraint:
      require-role: "{internal_role}"
{internal_extra}
    accept-options:
      http.transport: socks://127.0.0.1:{tunnel_port}
      socks.mode: reverse
      socks.transport: wsn+ssl://127.0.0.1:{tunnel_port}/shield
      socks.retry.maximum.interval: 500ms
      tunnel.assertion.public-key: dmz-public.pem
    properties:
      prepared.connection.count: {prepared}
      identity.injection: line
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    properties:
      insecure: true
security:
  keystore:
    type: PEM
    file: internal-keystore.pem
  truststore:
    type: PEM
    file: truststore.pem
"""


@dataclass
class Backend:
    """A tcp back end: reads the identity line, then echoes; records every identity and connection."""

    identities: list[str] = field(default_factory=list)
    connections: int = 0
    server: asyncio.AbstractServer | None = None
    pause: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            line = await reader.readline()
            self.identities.append(line.decode().strip())
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@dataclass
class Pair:
    folder: Path
    values: dict[str, Any]
    backend: Backend
    dmz: Gateway | None = None
    internal: Gateway | None = None

    async def start_dmz(self) -> Gateway:
        self.dmz = await _start(self.folder / "dmz.yaml", DMZ.format(**self.values))
        return self.dmz

    async def start_internal(self) -> Gateway:
        self.internal = await _start(self.folder / "internal.yaml", INTERNAL.format(**self.values))
        return self.internal

    def pool(self) -> Any:
        assert self.dmz is not None
        return self.dmz.runtime.tunnels[SERVICE_URI]

    def internal_handler(self) -> Any:
        assert self.internal is not None
        return self.internal.deployment.services["internal-app"]

    def admin(self, gateway: Gateway | None) -> str:
        assert gateway is not None
        return f"http://127.0.0.1:{gateway.port_of('admin')}/admin"

    def tunnel_url(self) -> str:
        return f"wss://127.0.0.1:{self.values['tunnel_port']}/shield"

    def url(self) -> str:
        assert self.dmz is not None
        return f"ws://127.0.0.1:{self.dmz.port_of('dmz-app')}/app"

    async def ready(self, count: int, timeout: float = 5.0) -> float:
        """Wait until the DMZ holds ``count`` ready tunnels; how long it took."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while len(self.pool().idle) < count:
            if loop.time() - start > timeout:
                raise AssertionError(f"{len(self.pool().idle)} ready tunnels after {timeout}s, wanted {count}")
            await asyncio.sleep(0.02)
        return loop.time() - start


async def _start(path: Path, text: str) -> Gateway:
    path.write_text(textwrap.dedent(text))
    gateway = Gateway(load_config(path), loader=lambda: load_config(path))
    await gateway.start()
    return gateway


async def _stop(gateway: Gateway | None) -> None:
    if gateway is not None:
        await asyncio.wait_for(gateway.stop(grace=1.0), 10.0)


def write_material(folder: Path, ca: trustme.CA) -> None:
    """PEM stores for both gateways (one test CA), the users, and the assertion key pair."""
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(folder / "dmz-keystore.pem")
    )
    ca.issue_cert("internal-gateway.test", common_name="internal-gateway").private_key_and_cert_chain_pem.write_to_path(
        str(folder / "internal-keystore.pem")
    )
    ca.cert_pem.write_to_path(str(folder / "truststore.pem"))
    (folder / "users.xml").write_text(USERS)
    private, public = generate_key_pair()
    (folder / "dmz-private.pem").write_bytes(private)
    (folder / "dmz-public.pem").write_bytes(public)


PairFactory = Callable[..., Awaitable[Pair]]


@pytest.fixture
async def dmz_pair(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[PairFactory]:
    """``await dmz_pair(prepared=2, internal_role="AUTHORIZED")``: both gateways started, tunnels ready."""
    pairs: list[Pair] = []
    write_material(tmp_path, ca)

    async def make(
        prepared: int = 2, internal_role: str = "AUTHORIZED", dmz_role: str = "*", internal_extra: str = ""
    ) -> Pair:
        backend = Backend()
        backend.server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
        values = {
            "service_uri": SERVICE_URI,
            "tunnel_port": free_port(),
            "backend_port": backend.port,
            "prepared": prepared,
            "internal_role": internal_role,
            "dmz_role": dmz_role,
            "internal_extra": internal_extra,  # more of the internal service (indented 4): rules, properties
        }
        pair = Pair(tmp_path, values, backend)
        pairs.append(pair)
        await pair.start_dmz()
        await pair.start_internal()
        await pair.ready(prepared)
        return pair

    yield make
    for pair in pairs:
        await _stop(pair.internal)
        await _stop(pair.dmz)
        if pair.backend.server is not None:
            pair.backend.server.close()
