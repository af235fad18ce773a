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
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web, web_response

from ..management.metrics import handshake_outcome
from ..security.limits import GatewayLimits, Refusal, ServiceLimits
from ..security.tls import PeerIdentity
from .websocket import HANDSHAKE_DONE, bad_request, is_upgrade

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
    limits: ServiceLimits | None = None


@dataclass
class Listener:
    host: str | None
    port: int
    ssl_context: ssl.SSLContext | None = None
    routes: list[Route] = field(default_factory=list)
    keepalive_timeout: float = 75.0
    reuse_port: bool = False  # ``wsgate run --workers N``: N processes share the port, the kernel spreads accepts
    metrics: Metrics | None = None
    gate: GatewayLimits | None = None
    open_connections: Collection[object] = ()  # every open WebSocket of the gateway, for gate's limit
    handshake_timeout: float = 10.0
    header_size: int = 8190
    tls_source: object = None  # what ssl_context was built from (Gateway.reload compares it)
    _server: asyncio.Server | None = None
    _web: web.Server | None = None
    _waiting: dict[int, asyncio.TimerHandle] = field(default_factory=dict)  # protocols without a request yet

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
        self._web = web.Server(
            self.handle,
            keepalive_timeout=self.keepalive_timeout,
            access_log=None,
            max_line_size=self.header_size,
            max_field_size=self.header_size,
        )
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
            self._protocol,
            self.host,
            port,
            ssl=self.ssl_context,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=1024,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl_context is not None else None,
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
        timer = self._waiting.pop(id(request.protocol), None)
        if timer is not None:  # the first request arrived in time
            timer.cancel()
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
        upgrade = is_upgrade(request)
        refused = bad_request(request, upgrade)  # before any login or service work
        if refused is not None:
            if not upgrade:
                return refused
            response: web.StreamResponse = refused
        elif self.secure and route.verify_client == "required" and peer is None:
            response = web.Response(status=403, text="A client certificate is required.\n")
        elif upgrade:
            response = await self.upgrade(route, request, peer)
        else:
            return await route.service.handle(request, peer)
        if upgrade and self.metrics is not None and response.status != 101:  # 101s are counted at accept
            self.metrics.handshakes.labels(route.service.name, handshake_outcome(response.status)).inc()
        return response

    async def upgrade(self, route: Route, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        """A WebSocket handshake, within the gateway's and the service's limits (checked before any login)."""
        refusal = self.gate.enter_handshake(len(self.open_connections)) if self.gate else None
        if refusal is not None:
            return self.refuse(route, refusal)
        pending = True

        def handshake_done() -> None:
            nonlocal pending
            if pending and self.gate is not None:
                pending = False
                self.gate.leave_handshake()

        request[HANDSHAKE_DONE] = handshake_done
        ip = request.remote or "?"
        limits = route.limits
        try:
            refusal = limits.enter(ip) if limits is not None else None
            if refusal is not None:
                return self.refuse(route, refusal)
            try:
                return await route.service.handle(request, peer)
            finally:
                if limits is not None:
                    limits.leave(ip)
        finally:
            handshake_done()

    def refuse(self, route: Route, refusal: Refusal) -> web.Response:
        if self.metrics is not None:
            self.metrics.limited.labels(route.service.name, refusal.limit).inc()
        text = "Too Many Requests\n" if refusal.status == 429 else "Service Unavailable\n"
        return web.Response(status=refusal.status, text=text, headers={"Retry-After": str(refusal.retry_after)})

    def _protocol(self) -> web.RequestHandler:
        """aiohttp's per-connection protocol, dropped if no request arrives within the handshake timeout."""
        assert self._web is not None
        protocol = self._web()
        loop = asyncio.get_running_loop()
        self._waiting[id(protocol)] = loop.call_later(self.handshake_timeout, self._too_slow, protocol)
        return protocol

    def _too_slow(self, protocol: web.RequestHandler) -> None:
        if self._waiting.pop(id(protocol), None) is None:
            return
        if protocol.transport is not None:
            protocol.transport.abort()
        if self.metrics is not None:
            self.metrics.limited.labels("", "handshake-timeout").inc()


def _is_aiofastnet(method: object) -> bool:
    """aiofastnet.patch_loop installs its methods as ``functools.partial``s of its own functions."""
    return str(getattr(getattr(method, "func", None), "__module__", "")).startswith("aiofastnet")
