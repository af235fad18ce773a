"""Listeners: one socket per bind address, many services routed by host + path.

The listener is the only place that accepts sockets. It decides nothing about
services: it finds the route, asks the route's ``Admission`` (security/admission.py)
about the request head, writes a refusal or hands the request on with its ``Accept``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from aiohttp import StreamReader, web, web_response
from aiohttp.http_exceptions import HttpProcessingError

from ..config.model import DEFAULT_KEEPALIVE_TIMEOUT
from ..core.handshake import BAD_REQUEST, NO_CERTIFICATE, Reject, Reply
from ..core.peer import PeerIdentity
from ..observe.logs import LogLimiter, get_logger
from ..observe.metrics import handshake_outcome
from .accept import guard
from .endpoint import Endpoint
from .extended_handshake import EXTENDED_KEY, ExtendedHandshake, offers_extended
from .http import ACCEPT_KEY, handshake_from, response_for
from .liveness import ResetWatch
from .resource import RequestBody
from .sni import Select, sni_handoff
from .tls_audit import TlsAudit, install_exception_handler
from .websocket import HANDSHAKE_DONE, is_upgrade, request_host

EMULATION_MARK = "/;e/"  # what a WebSocket service's emulated resources start with (transport/wse)

if TYPE_CHECKING:
    from ..observe.metrics import Metrics
    from ..security.admission import Admission

log = logging.getLogger("wsgate.listener")
audit = get_logger("wsgate.audit")
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
# Connections the kernel completes and holds for each listening socket until they are accepted
# (capped by net.core.somaxconn); they wait there while the process is out of descriptors.
BACKLOG = 1024
# The names of this machine's loopback interface, which people type interchangeably: a request for one of them that
# no route names exactly goes to a route for another. Nothing opens up: whoever reaches the port can send any Host.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# What a listener for ``localhost`` binds (RFC 6761: localhost is the loopback interface, both families, as
# browsers resolve it), those the host has: a host without IPv6 (or without ::1 on lo) keeps 127.0.0.1.
LOOPBACK_ADDRESSES: tuple[tuple[socket.AddressFamily, str], ...] = (
    (socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET6, "::1"),
)
# Every response, aiohttp's own error pages included, names the product but no versions.
web_response.SERVER_SOFTWARE = "wsgate"  # type: ignore[attr-defined]


class Named(Protocol):
    @property
    def name(self) -> str: ...


class Emulation(Protocol):
    """WebSocket emulation of a route's service (``transport.wse.WseAdapter``): it runs the admission itself
    for the requests that open a session, and serves the session's later requests."""

    async def __call__(
        self, request: web.BaseRequest, peer: PeerIdentity | None, host: str, base: str, admission: Admission
    ) -> web.StreamResponse: ...


@dataclass
class Route:
    host: str
    path: str  # no trailing slash, "" for the root
    service: Named  # the service's name, for metrics and audit lines
    endpoint: Endpoint  # where an admitted request goes (see transport/endpoint.py)
    admission: Admission  # everything decided before the service runs (limits, verify-client, realm, Origin)
    prefix: bool  # directory services also serve everything below their path
    control: bool = False  # a protected service also answers <path>/.wsgate/… (sessions, refresh)
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT  # idle time allowed after a response of this service
    emulation: Emulation | None = None  # a WebSocket service's emulated resources <path>/;e/… (transport/wse)


@dataclass
class Listener:
    host: str | None
    port: int
    ssl_context: ssl.SSLContext | None = None
    # Several certificates: the context for a ClientHello's server name, chosen before aiofastnet's TLS engine
    # starts (transport/sni.py); ``ssl_context`` then switches in an SNI callback, for the other loops.
    ssl_select: Select | None = None
    routes: list[Route] = field(default_factory=list)
    reuse_port: bool = False  # ``wsgate run --workers N``: N processes share the port, the kernel spreads accepts
    metrics: Metrics | None = None
    handshake_timeout: float = 10.0
    header_size: int = 8190
    tls_audit: TlsAudit | None = None  # failed TLS handshakes: audit lines and a metric
    liveness: ResetWatch | None = None  # closes connections whose peer reset them, where the loop does not
    bad_request_lines: LogLimiter = field(default_factory=lambda: LogLimiter("bad request"), compare=False, repr=False)
    # The tasks serving connections handed to picows (transport/upgrade.py): shutdown waits for them as aiohttp's
    # waits for its handlers, so a service's own cleanup (closing its back end) ends before the loop does.
    serving: set[asyncio.Task[None]] = field(default_factory=set, compare=False, repr=False)
    _server: asyncio.Server | None = None
    _web: web.Server | None = None

    @property
    def secure(self) -> bool:
        return self.ssl_context is not None

    def add(self, route: Route) -> None:
        self.routes.append(route)
        self.routes.sort(key=lambda r: len(r.path), reverse=True)

    def find(self, host: str, path: str) -> Route | None:
        """Exact path first, then the longest prefix route; the Host header must match (or, for a loopback
        name no route names, another loopback name: ``LOOPBACK_NAMES``)."""
        path = path.rstrip("/")
        found = next((r for r in self.routes if r.host == host and _serves(r, path)), None)
        if found is None and host in LOOPBACK_NAMES and host not in self.hosts:
            found = next((r for r in self.routes if r.host in LOOPBACK_NAMES and _serves(r, path)), None)
        return found

    @property
    def hosts(self) -> list[str]:
        """The host names this port's routes name."""
        return list(dict.fromkeys(route.host for route in self.routes))

    def serves_host(self, host: str) -> bool:
        hosts = self.hosts
        return host in hosts or host in LOOPBACK_NAMES and any(h in LOOPBACK_NAMES for h in hosts)

    def no_such_host(self, host: str, request: web.BaseRequest) -> web.Response:
        """404 for a Host no service on this port answers. It names the port's host names only to a client on
        this machine (the operator trying the gateway): anyone else learns nothing of the other virtual hosts
        here, although a TLS port's certificates may list them anyway. The log has them at DEBUG."""
        hosts = self.hosts
        if any(h in LOOPBACK_NAMES for h in hosts):
            hosts += sorted(LOOPBACK_NAMES.difference(hosts), key=("localhost", "127.0.0.1", "::1").index)
        names = ", ".join(f"[{h}]" if ":" in h else h for h in hosts)
        log.debug(
            "no service for host %r on %s:%d (path %s, client %s); this port serves %s",
            host,
            self.host or "*",
            self.port,
            request.path,
            request.remote,
            names,
        )
        text = f"No service for host '{host}' on this port"
        if _is_loopback(request.remote):
            text += f"; it serves: {names}"
        return web.Response(status=404, text=text + "\n", headers={"X-Content-Type-Options": "nosniff"})

    async def start(self) -> None:
        self._web = web.Server(self.handle, access_log=None)
        self.liveness = self.liveness or ResetWatch(asyncio.get_running_loop())
        if self.secure:
            install_exception_handler(asyncio.get_running_loop())
            self.tls_audit = self.tls_audit or TlsAudit(self)
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
            self._bind_hosts(),
            port,
            ssl=self.ssl_context,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=BACKLOG,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl_context is not None else None,
            **extra,
        )
        bound = server.sockets[0].getsockname()[1] if server.sockets else port
        handoff = None
        if self.ssl_select is not None and _is_aiofastnet(loop.create_server):
            handoff = sni_handoff(server, self.ssl_select, self.handshake_timeout, self.tls_audit)
        guard(server, f"{'tls' if self.secure else 'tcp'}://{self.host or '*'}:{bound}", BACKLOG, self.metrics, handoff)
        if self.tls_audit is not None:
            self.tls_audit.watch(server)
        return server

    def _bind_hosts(self) -> str | list[str] | None:
        """What to bind: the host as configured, except ``localhost``: the loopback addresses this host has."""
        if self.host != "localhost":
            return self.host
        usable = []
        for family, address in LOOPBACK_ADDRESSES:
            try:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.bind((address, 0))
            except OSError as exc:
                log.info("localhost: %s cannot be bound on this host (%s); not listening there", address, exc.strerror)
                continue
            usable.append(address)
        return usable or self.host  # none at all: the bind fails as it would, and says why

    async def resume(self) -> None:
        """Accept again on the same port after ``stop_accepting`` (a reload that failed gives it back)."""
        self._server = await self._bind(self.port)

    async def abandon(self) -> None:
        """Close a listener that a failed reload had bound, before it served anything of note."""
        self.stop_accepting()
        await self.shutdown(0.5)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def shutdown(self, timeout: float) -> None:
        if self._web is not None:
            await self._web.shutdown(timeout)
        if self.serving:
            _, late = await asyncio.wait(list(self.serving), timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout)
            except TimeoutError:
                log.warning("listener %s:%d: connections still open after shutdown", self.host or "*", self.port)
        if self.liveness is not None:
            self.liveness.close()
            self.liveness = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if isinstance(request.protocol, HttpConnection):
            request.protocol.head_complete(request)
        if request.path == CLIENT_JS_PATH and request.method in ("GET", "HEAD"):
            return web.FileResponse(CLIENT_JS, headers=CLIENT_JS_HEADERS)
        host = request_host(request)
        if host is None:
            self.audit_bad_request("", request.remote, 400, "The Host header is not a valid host.")
            return web.Response(status=400, text="The Host header is not a valid host.\n")
        route = self.find(host, request.path)
        if route is None:
            if not self.serves_host(host):
                return self.no_such_host(host, request)
            return web.Response(status=404, text="Not Found\n")
        peer = None
        if self.secure:
            peer = PeerIdentity.from_ssl_object(
                request.transport.get_extra_info("ssl_object") if request.transport else None
            )
        if route.emulation is not None and request.path.startswith(route.path + EMULATION_MARK):
            return await route.emulation(request, peer, host, route.path, route.admission)
        handshake = handshake_from(request, peer, host)
        if route.control and request.path.startswith(
            route.path + CONTROL_PREFIX
        ):  # a control resource may read the body (a logout token)
            handshake = replace(handshake, body=RequestBody(request))
        # Kaazing's extended handshake: the realm's check moves into the WebSocket (extended_handshake.py).
        extended = route.admission.websocket and handshake.upgrade and offers_extended(handshake.headers)
        decision = await route.admission.admit(handshake, credentials=not extended)
        if isinstance(decision, Reject):
            if decision.event == BAD_REQUEST:
                self.audit_bad_request(route.service.name, request.remote, decision.status, decision.reason)
            elif decision.event == NO_CERTIFICATE and self.tls_audit is not None:
                self.tls_audit.report(NO_CERTIFICATE, remote=request.remote)
            response = response_for(decision)
        elif isinstance(decision, Reply):
            response = response_for(decision)
        else:
            request[ACCEPT_KEY] = decision
            hold = decision.hold
            if handshake.upgrade:
                request[HANDSHAKE_DONE] = hold.handshake_done  # the 101 is sent: no longer in progress
            if extended:
                request[EXTENDED_KEY] = ExtendedHandshake(route.admission, self.handshake_timeout, self.header_size)
            try:
                response = await route.endpoint(request, peer, handshake, decision)
            finally:
                hold.release()
            if decision.headers and not route.admission.websocket:  # CORS on a plain HTTP answer
                response.headers.update(decision.headers)
        if handshake.upgrade and self.metrics is not None and response.status != 101:  # 101s: counted at accept
            self.metrics.handshakes.labels(route.service.name, handshake_outcome(response.status)).inc()
        return response

    def audit_bad_request(self, service: str, remote: str | None, status: int, reason: str, **fields: Any) -> None:
        """A request refused as malformed: counted always, audited at INFO within the rate limit."""
        if self.metrics is not None:
            self.metrics.bad_requests.labels(service).inc()
        if self.bad_request_lines.allow():
            audit.info("bad request", service=service, remote=remote, status=status, reason=reason, **fields)

    def _protocol(self) -> web.RequestHandler:
        """aiohttp's per-connection protocol, with a deadline on every request head (see ``HttpConnection``)."""
        assert self._web is not None
        backstop = max([self.handshake_timeout, *(r.keepalive_timeout for r in self.routes)])
        return HttpConnection(
            self,
            self._web,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=backstop,  # aiohttp's own idle timer: ours (per service) fire first
            access_log=None,
            max_line_size=self.header_size,
            max_field_size=self.header_size,
        )

    def idle_timeout(self, request: web.BaseRequest) -> float:
        """How long a connection may wait for its next request after answering ``request``.

        The service that answered decides; a request no service answered (404, the client
        script) gets the shortest timeout of the port's services.
        """
        host = request_host(request)
        route = self.find(host, request.path) if host is not None else None
        if route is not None:
            return route.keepalive_timeout
        return min((r.keepalive_timeout for r in self.routes), default=DEFAULT_KEEPALIVE_TIMEOUT)

    def too_slow(self, connection: web.RequestHandler) -> None:
        """A request head that did not arrive within the handshake timeout: drop the socket, no answer."""
        if connection.transport is not None:
            connection.transport.abort()
        if self.metrics is not None:
            self.metrics.limited.labels("", "handshake-timeout").inc()


def _nothing() -> None:
    """What a detached connection calls once closed when no liveness watch was kept."""


class HttpConnection(web.RequestHandler):
    """aiohttp's protocol with a deadline on every request head, not only the first (slowloris).

    One timer per connection, in one of two roles:

    - *head deadline* (``limits/handshake-timeout``): armed at accept, and again at the first byte
      of each later request; cancelled when the complete head reaches ``Listener.handle``, unless
      a body is still arriving: the body must then be complete by the same deadline (a body
      trickled forever would hold a handler and a socket). A late head or body aborts the socket.
    - *keep-alive idle* (accept-option ``http.keepalive.timeout`` of the service that answered):
      armed when a response is finished and the connection stays open; the next request's first
      byte replaces it with a head deadline. An idle connection is closed.

    And a second one, the *write stall*: while a response cannot be written because the client
    reads nothing (the transport paused writing), for at most that service's keep-alive timeout;
    then the socket is aborted (a slow-read client must not hold a connection as long as it likes).

    A WebSocket (after 101) has none of them: bytes then belong to the WebSocket reader and writer.
    """

    __slots__ = (
        "listener",
        "timer",
        "awaiting_head",
        "accepted",
        "body",
        "stall",
        "stall_timeout",
        "watched",
        "on_lost",
        "detached",
    )

    def __init__(self, listener: Listener, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.listener = listener
        self.awaiting_head = True
        loop = kwargs["loop"]
        self.accepted: float = loop.time()
        self.body: StreamReader | None = None  # a request body still arriving under the head deadline
        self.stall: asyncio.TimerHandle | None = None  # the write stall: armed while writing is paused
        self.stall_timeout = DEFAULT_KEEPALIVE_TIMEOUT  # that of the service answering the request
        self.timer: asyncio.TimerHandle | None = loop.call_later(listener.handshake_timeout, self._head_late)
        self.watched = -1  # the fd ``listener.liveness`` watches for a reset
        self.on_lost: Callable[[], None] | None = None  # a long response that waits for data (a WSE downstream)
        self.detached = False  # the socket was handed to another protocol (transport.picows_channel)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.listener.tls_audit is not None:  # the TLS handshake completed: nothing to audit
            self.listener.tls_audit.pending.pop(transport, None)
        if self.listener.liveness is not None:
            self.watched = self.listener.liveness.watch(cast(asyncio.Transport, transport))
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.awaiting_head and data and self._between_requests():
            self._arm(self.listener.handshake_timeout, self._head_late)
            self.awaiting_head, self.body = True, None
        super().data_received(data)

    def accepted_at(self, when: float) -> None:
        """Accepted at ``when``, before this protocol existed (transport/sni.py peeked at the ClientHello
        first): the deadline for the TLS handshake and the request head still counts from the accept."""
        self.accepted = when
        remaining = when + self.listener.handshake_timeout - asyncio.get_running_loop().time()
        self._arm(max(0.0, remaining), self._head_late)

    def handshake_failed(self) -> None:
        """Its TLS handshake failed (audited by ``TlsAudit``): nothing left to time."""
        self.awaiting_head = False
        self._disarm()

    def head_complete(self, request: web.BaseRequest) -> None:
        """The request head reached the handler in time; a body still arriving keeps the deadline.

        Only a GET with ``Upgrade`` may become a WebSocket (whose bytes are then no body); an ``Upgrade``
        header on any other request (a WSE upstream POST reads its body itself) keeps the deadline too."""
        self.awaiting_head = False
        self.stall_timeout = self.listener.idle_timeout(request)
        upgrade = request.method == "GET" and is_upgrade(request)
        if request.body_exists and not request.content.is_eof() and not upgrade:
            self.body = request.content
        else:
            self._disarm()

    def detach(self) -> tuple[asyncio.Transport, bytes, Callable[[], None]]:
        """Let go of the socket of an admitted upgrade: its new protocol reads the bytes from now on.

        aiohttp forgets the connection (its server's list, its timers, its transport), so the handler's
        task ends when the upgrade returns and frees the request, the parser and this object. Returns the
        transport, the bytes that came after the request head and what to call once the socket is closed.
        """
        transport = self.transport
        assert transport is not None, "detach an open connection"
        tail, self._message_tail = self._message_tail, b""
        self._disarm()
        self._unstall()
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        if self._manager is not None:
            self._manager.connection_lost(self, None)
        self.detached = True
        self._force_close = True  # aiohttp's loop ends without closing the socket (it no longer has it)
        self.transport = None
        liveness = self.listener.liveness
        # A partial, not a closure: it lives as long as the connection (about 200 B less per idle connection).
        forget = partial(liveness.forget, self.watched, transport) if liveness is not None else _nothing
        return transport, tail, forget

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if self.detached:  # the WebSocket runs on another protocol: nothing is left to write here
            return resp, True
        result = await super().finish_response(request, resp, start_time)
        if self.body is not None and not self.body.is_eof():
            return result  # the body's deadline still runs (aiohttp reads the rest before the next request)
        self.body = None
        if not self.awaiting_head and not self._upgraded and self._payload_parser is None and resp.keep_alive:
            self._arm(self.listener.idle_timeout(request), self._idle)
        return result

    def pause_writing(self) -> None:
        super().pause_writing()
        if not self._upgraded and self.stall is None:
            self.stall = asyncio.get_running_loop().call_later(self.stall_timeout, self._stalled)

    def resume_writing(self) -> None:
        self._unstall()
        super().resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.detached:
            return
        self._disarm()
        self._unstall()
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None
        if self.listener.liveness is not None and self.transport is not None:
            self.listener.liveness.forget(self.watched, self.transport)
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A request aiohttp could not parse is the client's fault: one audit line, no traceback.

        The exception's text quotes the client's bytes (tokens in a request line or header), so
        only its type is kept; the client gets aiohttp's 400 as before. Anything else is ours and
        keeps its traceback.
        """
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            remote = self.transport.get_extra_info("peername") if self.transport is not None else None
            self.listener.audit_bad_request(
                "",
                remote[0] if isinstance(remote, tuple) else None,
                exc.code,
                type(exc).__name__,
                listener=f"{self.listener.host or '*'}:{self.listener.port}",
            )
            return
        super().log_exception(*args, **kw)

    def _unstall(self) -> None:
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def _stalled(self) -> None:
        """The client read nothing of its response for the keep-alive timeout: drop it."""
        self.stall = None
        if self.transport is not None and not self._upgraded:
            self.transport.abort()

    def _between_requests(self) -> bool:
        return not self._request_in_progress and not self._upgraded and self._payload_parser is None

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(delay, callback)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _head_late(self) -> None:
        self.timer = None
        body, self.body = self.body, None
        if self.awaiting_head or body is not None and not body.is_eof():
            self.listener.too_slow(self)

    def _idle(self) -> None:
        self.timer = None
        if self._between_requests():
            self.force_close()


CONTROL_PREFIX = "/.wsgate/"


def _serves(route: Route, path: str) -> bool:
    """``route`` answers ``path`` (no trailing slash): exactly, below a prefix route, or its control resources."""
    if path == route.path or route.prefix and path.startswith(route.path + "/"):
        return True
    if route.emulation is not None and path.startswith(route.path + EMULATION_MARK):
        return True
    return route.control and path.startswith(route.path + "/.wsgate/")


def _is_loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def _is_aiofastnet(method: object) -> bool:
    """aiofastnet.patch_loop installs its methods as ``functools.partial``s of its own functions."""
    return str(getattr(getattr(method, "func", None), "__module__", "")).startswith("aiofastnet")
