"""Shared fixtures: a private CA (trustme), PEM stores, and gateways started from config text on port 0."""

from __future__ import annotations

import asyncio
import gc
import os
import ssl
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from wsgate.catalog import load_config
from wsgate.gateway import Gateway

from .kdc import Kdc
from .mosquitto import mosquitto  # noqa: F401 (session fixtures, registered here once: a module that imported
from .netns import dmz_topology  # noqa: F401 (one would get its own broker, provider or namespaces)
from .oidc_provider import oidc_provider, oidc_provider_session  # noqa: F401
from .rabbitmq import rabbitmq  # noqa: F401
from .redis_server import RedisServer

StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="wsgate test CA")


@pytest.fixture(scope="session")
def other_ca() -> trustme.CA:
    return trustme.CA(organization_name="someone else's CA")


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1", "gw.test")


@pytest.fixture(scope="session")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kdc]:
    """An MIT KDC for realm EXAMPLE.TEST on loopback; the test process reads its ``krb5.conf``."""
    from . import kdc as module

    if not module.installed():
        pytest.skip("MIT Kerberos KDC not installed (make test installs krb5-kdc)")
    server = Kdc(tmp_path_factory.mktemp("kdc"))
    server.setup()
    server.start()
    saved = {name: os.environ.get(name) for name in ("KRB5_CONFIG", "KRB5RCACHEDIR", "KRB5CCNAME")}
    os.environ["KRB5_CONFIG"] = str(server.config)
    os.environ["KRB5RCACHEDIR"] = str(server.folder)  # never the machine's /var/tmp default
    os.environ["KRB5CCNAME"] = f"FILE:{server.folder / 'no-ccache'}"  # never the developer's own tickets
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own on loopback (``stop()``/``start()`` make an outage)."""
    from . import redis_server as module

    if not module.installed():
        pytest.skip("redis-server not installed (make test installs it)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pem_stores(tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert) -> dict[str, Path]:
    """keystore.pem (key + chain) and truststore.pem (the CA) beside the config."""
    keystore = tmp_path / "keystore.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(keystore))
    truststore = tmp_path / "truststore.pem"
    ca.cert_pem.write_to_path(str(truststore))
    return {"keystore": keystore, "truststore": truststore}


SECURITY_PEM = """
security:
  keystore:
    type: PEM
    file: keystore.pem
  truststore:
    type: PEM
    file: truststore.pem
"""


def client_ssl(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """A client context that trusts only the test CA and optionally presents ``cert``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every module is imported: freeze what exists (modules, classes, constants) so the collection after
    each test scans only what tests made. A full collection of the whole heap took 0.12 s, four minutes of
    the suite's sixteen."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def collect_garbage_on_the_loop_thread() -> Iterator[None]:
    """Streams a test leaves behind sit in reference cycles: collected later in a worker thread (a realm's
    verifier), their finalizers would touch a transport from the wrong thread and fail an unrelated test."""
    yield
    gc.collect()


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[StartGateway]:
    """``await start_gateway(yaml_or_xml_text, name="gateway.yaml")`` → a started ``Gateway``."""
    started: list[Gateway] = []

    async def start(text: str, name: str = "gateway.yaml", **overrides: str) -> Gateway:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        gateway = Gateway(load_config(path, overrides), loader=lambda: load_config(path, overrides))
        await gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop(grace=2.0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def tcp_echo_server(
    host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> tuple[asyncio.AbstractServer, list[bytes]]:
    """A real TCP echo back end; returns the server and a log of every chunk it received."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                received.append(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, 0, ssl=ssl_context)
    return server, received


def port_of(server: asyncio.AbstractServer) -> int:
    return int(server.sockets[0].getsockname()[1])


def pytest_asyncio_loop_factories(config, item):  # type: ignore[no-untyped-def]
    """Tests run on the loop ``wsgate run`` uses: uvloop + aiofastnet when installed."""
    from wsgate.cli import new_event_loop

    return {"gateway-loop": lambda: new_event_loop("auto")}
