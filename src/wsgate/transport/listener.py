"""Listeners: one socket per bind address, many services routed by host + path.

The listener is the only place that accepts sockets. It decides nothing about
services: it finds the route, enforces the route's client-certificate rule
(for ports shared by services with different ``ssl.verify-client``), and hands
the request on.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web, web_response

from ..management.metrics import handshake_outcome
from ..security.tls import PeerIdentity

if TYPE_CHECKING:
    from ..management.metrics import Metrics
    from ..security.realms import RealmGuard
    from ..services.base import ServiceHandler

log = logging.getLogger("wsgate.listener")
# The browser client, served by every listener at a well-known path (docs/clients.md).
CLIENT_JS_PATH = "/.wsgate/client.js"
CLIENT_JS = Path(__file__).parent.parent / "resources" / "client" / "wsgate-client.js"
CLIENT_JS_HEADERS = {
    "Content-Type": "text/javascript; charset=utf-8",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "max-age=300",
}
# aiofastnet gives each TLS connection two static buffers, 262 KB each by default: 50,000 connections would
# reserve 26 GB and keep whatever traffic touched. Two TLS records each way keep full-size records in one
# syscall (bench/README.md has the measurement).
TLS_BIO_SIZE = 2 * (16 * 1024 + 64)
# Every response, aiohttp's own error pages included, names the product but no versions.
web_response.SERVER_SOFTWARE = "wsgate"  # type: ignore[attr-defined]


@dataclass
class Route:
    host: str
    path: str  # no trailing slash, "" for the root
    service: ServiceHandler | RealmGuard
    prefix: bool  # directory services also serve everything below their path
    verify_client: str = "none"
    control: bool = False  # a protected service also answers <path>/.wsgate/… (sessions, refresh)


@dataclass
class Listener:
    host: str | None
    port: int
    ssl_context: ssl.SSLContext | None = None
    routes: list[Route] = field(default_factory=list)
    keepalive_timeout: float = 75.0
    reuse_port: bool = False  # ``wsgate run --workers N``: N processes share the port, the kernel spreads accepts
    metrics: Metrics | None = None
    tls_source: object = None  # what ssl_context was built from (Gateway.reload compares it)
    _server: asyncio.Server | None = None
    _web: web.Server | None = None

    @property
    def secure(self) -> bool:
        return self.ssl_context is not None

    def add(self, route: Route) -> None:
        self.routes.append(route)
        self.routes.sort(key=lambda r: len(r.path), reverse=True)

    def find(self, host: str, path: str) -> Route | None:
        """Exact path first, then the longest prefix route; the Host header must match."""
        path = path.rstrip("/")
        for route in self.routes:
            if route.host != host:
                continue
            if path == route.path or route.prefix and path.startswith(route.path + "/"):
                return route
            if route.control and path.startswith(route.path + "/.wsgate/"):
                return route
        return None

    async def start(self) -> None:
        self._web = web.Server(self.handle, keepalive_timeout=self.keepalive_timeout, access_log=None)
        self._server = await self._bind(self.port)
        ports = {sock.getsockname()[1] for sock in self._server.sockets}
        if len(ports) > 1:  # port 0 on a name with several addresses: make them share the first port
            first = self._server.sockets[0].getsockname()[1]
            self._server.close()
            self._server = await self._bind(first)
        self.port = self._server.sockets[0].getsockname()[1]
        scheme = "tls" if self.secure else "tcp"
        log.info("listening on %s://%s:%d (%d route(s))", scheme, self.host or "*", self.port, len(self.routes))

    async def _bind(self, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        assert self._web is not None
        extra: dict[str, Any] = {}
        if self.ssl_context is not None and _is_aiofastnet(loop.create_server):
            extra = {"ssl_incoming_bio_size": TLS_BIO_SIZE, "ssl_outgoing_bio_size": TLS_BIO_SIZE}
        server: asyncio.Server = await loop.create_server(
            self._web,
            self.host,
            port,
            ssl=self.ssl_context,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=1024,
            **extra,
        )
        return server

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def shutdown(self, timeout: float) -> None:
        if self._web is not None:
            await self._web.shutdown(timeout)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout)
            except TimeoutError:
                log.warning("listener %s:%d: connections still open after shutdown", self.host or "*", self.port)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == CLIENT_JS_PATH and request.method in ("GET", "HEAD"):
            return web.FileResponse(CLIENT_JS, headers=CLIENT_JS_HEADERS)
        route = self.find((request.url.host or "").lower().rstrip("."), request.path)
        if route is None:
            return web.Response(status=404, text="Not Found\n")
        peer = None
        if self.secure:
            peer = PeerIdentity.from_ssl_object(
                request.transport.get_extra_info("ssl_object") if request.transport else None
            )
            if route.verify_client == "required" and peer is None:
                if self.metrics is not None and _is_upgrade(request):
                    self.metrics.handshakes.labels(route.service.name, "403").inc()
                return web.Response(status=403, text="A client certificate is required.\n")
        response = await route.service.handle(request, peer)
        if self.metrics is not None and response.status != 101 and _is_upgrade(request):
            self.metrics.handshakes.labels(route.service.name, handshake_outcome(response.status)).inc()
        return response


def _is_aiofastnet(method: object) -> bool:
    """aiofastnet.patch_loop installs its methods as ``functools.partial``s of its own functions."""
    return str(getattr(getattr(method, "func", None), "__module__", "")).startswith("aiofastnet")


def _is_upgrade(request: web.BaseRequest) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"
