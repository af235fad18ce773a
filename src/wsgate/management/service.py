"""``management`` and ``metrics`` services: the operator's REST API, web console and Prometheus endpoint.

The management service is an HTTP(S) service like ``directory``, protected by a realm
with ``require-role ADMINISTRATOR`` unless the config says otherwise (the config
builder refuses a management service without a realm unless it is bound to loopback
and marked ``insecure``). Under its accept path:

    GET    /                      the web console (one static page, vanilla JS)
    GET    /api/info              gateway, process and config summary (no secrets)
    GET    /api/services          services with live counts
    GET    /api/sessions          live connections: principal, service, remote, TLS, traffic, expiry; with
                                  state: redis, every live node's (with ``node``; traffic only for this node's)
    DELETE /api/sessions/<id>     close one connection (1008 "closed by administrator"), on whatever node holds it
    DELETE /api/principals/<user> revoke a user: close their connections, end their realm sessions, and
                                  refuse them for security/revocation-timeout
    GET    /api/revocations       revocations in force: [{"key": "user:joe" | "jti:…" | "token:<sha256>", "until"}]
    POST   /api/revocations       {"user": …} or {"token": …}: revoke (a token until its exp)
    DELETE /api/revocations/<key> lift a revocation early
    POST   /api/reload            re-read the config; answers 422 with the located error if it is refused,
                                  500 if it failed otherwise (the running configuration stays either way)
    GET    /api/stats             the totals the console charts: traffic per service, handshakes by
                                  outcome, the login-time histogram (read from the metrics, nothing new
                                  counted); the console polls it and keeps 15 minutes of samples itself
    GET    /vendor/<file>         the console's charting library (uPlot, resources/management/vendor)
    GET    /live                  WebSocket: the services and sessions every second, for the console
    GET    /metrics               Prometheus exposition

State-changing requests from a browser must be same-origin (or listed in a
cross-site-constraint): a page on another site cannot use the admin's credentials.

No aiohttp here: a request comes as a ``core.handshake.Handshake`` with the admission's ``Accept``
and a ``Body`` read only where one is expected; the answers are ``Reply`` values, and the live feed
an ``Upgrade`` whose ``Channel`` the transport provides (``transport.resource``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..config.model import AuthorizationConstraint, GatewayConfig, Service
from ..config.schema import Fail, Property
from ..core.channel import Channel
from ..core.close import CloseCode
from ..core.handshake import Accept, Body, Handshake, Reply, Upgrade
from ..errors import ReloadFailed
from ..observe.metrics import CONTENT_TYPE
from ..security.admission import offloaded_tls, own_origin
from ..security.origin import origin_allowed
from ..services.base import ResourceService, Runtime, ServiceType
from ..state.connections import Selector
from ..state.redis import StateUnavailable
from .summary import gateway_summary, service_summaries

if TYPE_CHECKING:
    from ..core.session import LiveSession

log = logging.getLogger("wsgate.management")
CONSOLE = Path(__file__).parent.parent / "resources" / "management" / "console.html"
VENDOR = CONSOLE.parent / "vendor"
# What GET <path>/vendor/<name> serves: these files only, whatever else the folder holds.
VENDOR_TYPES = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
# Behind the realm like the console: browsers keep them for an hour (only for this user: private), then
# revalidate (aiohttp's FileResponse answers If-None-Match / If-Modified-Since with 304).
VENDOR_CACHE = "private, max-age=3600"


def _console_headers() -> dict[str, str]:
    """Only the console's own inline script may run (by hash), and what it loads itself (uPlot from
    ``vendor/``: ``'strict-dynamic'``; ``'self'`` for browsers before CSP 3); it may talk only to its own
    origin, and no other site may frame it (clickjacking on the Close buttons)."""
    page = CONSOLE.read_text()
    script = page.split('<script type="module">', 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": f"default-src 'none'; script-src 'sha256-{digest}' 'strict-dynamic' 'self'; "
        "style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


CONSOLE_HEADERS = _console_headers()
LIVE_INTERVAL = 1.0
LIVE_MESSAGE_SIZE = 4095  # the console only listens: anything longer from it fails the feed with 1009
LIVE_HEARTBEAT = 30.0
PARTIAL = '199 wsgate "shared state unavailable: only this node\'s sessions are listed"'  # GET /api/sessions
_SAFE = ("GET", "HEAD", "OPTIONS")
MANAGEMENT_ROLE = "ADMINISTRATOR"
LOOPBACK_HOSTS = ("localhost", "::1", "[::1]")


def management_rules(service: Service, index: str, fail: Fail) -> Service | None:
    """Admin access by default; no realm only on loopback and only when said out loud."""
    if service.realm_name:
        if service.authorization_constraints:
            return service
        return replace(service, authorization_constraints=(AuthorizationConstraint((MANAGEMENT_ROLE,)),))
    insecure = service.prop("insecure", "false")
    hosts = [u.host for u in service.accepts] + [b.host or "*" for b in service.accept_options.binds.values()]
    exposed = [h for h in hosts if not (h in LOOPBACK_HOSTS or h.startswith("127."))]
    if insecure != "true" or exposed:
        why = f"it listens on {exposed[0]}, not only loopback" if exposed else "it has no realm-name"
        fail(
            f"{index}/realm-name",
            f"a management service needs a realm (it defaults to require-role {MANAGEMENT_ROLE}); {why}. "
            "Without a realm it may only listen on 127.0.0.1 with the property insecure: true",
        )
        return None
    return service


class GatewayControl(Protocol):
    """What the management service may ask of the gateway (``summary.py`` describes it from these)."""

    @property
    def config(self) -> GatewayConfig:
        """The running configuration."""
        ...

    @property
    def started(self) -> float:
        """When the gateway started (``time.time()``)."""
        ...

    async def revoke(self, user: str | None = None, token: str | None = None, reason: str = "revoked") -> int: ...

    async def revocations_in_force(self) -> dict[str, float]: ...

    async def lift_revocation(self, key: str) -> bool: ...

    async def reload(self) -> tuple[bool, str]:
        """``(applied, message)``; raises ``ReloadFailed`` for a failure other than a refused config."""
        ...

    @property
    def node(self) -> str | None:
        """This node's name in the connection registry; None without shared state (``state: memory``)."""
        ...

    async def remote_sessions(self) -> list[dict[str, Any]]:
        """The other live nodes' connections (``registry_entry`` values with ``id`` and ``node``); empty without
        shared state. Raises ``StateUnavailable`` when the registry cannot be read."""
        ...

    async def session_node(self, connection_id: str) -> str | None:
        """The live node whose registry has ``connection_id`` (None: no node has it, or no shared state).
        Raises ``StateUnavailable``."""
        ...


def session_view(session: LiveSession, now: float) -> dict[str, Any]:
    identity = session.identity
    tls: dict[str, Any] | None = None
    if session.tls is not None:
        version, cipher = session.tls
        tls = {"version": version, "cipher": cipher}
        if session.peer is not None:
            tls["client"] = session.peer.subject
    channel = session.channel
    return {
        "id": session.id,
        "service": session.service,
        "principal": identity.user if identity else None,
        "roles": sorted(identity.roles) if identity else [],
        "realm": identity.realm if identity else None,
        "remote": session.remote,
        "transport": session.transport,  # "websocket" (native) or "wse" (emulation)
        "opened": session.started,
        "age": round(now - session.started, 1),
        "expires": session.deadline,
        "tls": tls,
        "messages_in": channel.messages_in,
        "messages_out": channel.messages_out,
        "bytes_in": channel.bytes_in,
        "bytes_out": channel.bytes_out,
    }


# What another node cannot know of a connection: it changes with every message (counted locally only).
_LOCAL_ONLY = ("id", "age", "messages_in", "messages_out", "bytes_in", "bytes_out")


def registry_entry(session: LiveSession) -> dict[str, Any]:
    """What a node publishes of a connection in the cluster's registry (state: redis): the management view
    without its id (the hash field) and traffic; no cookie, token or digest, as in the API."""
    view = session_view(session, session.started)
    for name in _LOCAL_ONLY:
        del view[name]
    return view


def remote_view(entry: dict[str, Any], now: float) -> dict[str, Any]:
    """Another node's connection as the API lists it: its registry entry, its age, no traffic (null)."""
    opened = entry.get("opened")
    age = round(now - opened, 1) if isinstance(opened, int | float) else None
    traffic = dict.fromkeys(("messages_in", "messages_out", "bytes_in", "bytes_out"))
    return {"id": entry.get("id"), **entry, "age": age, **traffic}


class OperatorService(ResourceService):
    """Plain HTTP resources for operators; the realm in front of it has already authorized the request."""

    def metrics_reply(self) -> Reply:
        body = self.runtime.metrics.exposition() if self.runtime.metrics else b""
        return Reply(200, body, (("Content-Type", CONTENT_TYPE), ("Cache-Control", "no-store")))


class MetricsService(OperatorService):
    TYPE = ServiceType(name="metrics", accept=("http", "https"), plain_http=True)

    async def respond(self, handshake: Handshake, accept: Accept, body: Body) -> Reply | Upgrade:
        if handshake.method not in ("GET", "HEAD"):
            return Reply(405, headers=(("Allow", "GET, HEAD"),))
        return self.metrics_reply()


class ManagementService(OperatorService):
    TYPE = ServiceType(
        name="management",
        accept=("http", "https"),
        properties={"insecure": Property("?")},
        finish=management_rules,
        plain_http=True,
        cors=True,
        prefix=True,
    )

    def __init__(self, config: Service, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.live: set[Channel] = set()  # the console feeds open now

    @property
    def control(self) -> GatewayControl:
        control = self.runtime.control
        assert control is not None, "the gateway registers itself before listening"
        return control  # type: ignore[no-any-return]

    async def stop(self) -> None:
        for channel in list(self.live):
            await channel.close(CloseCode.GOING_AWAY, "gateway shutting down")

    def going_away(self, grace: float) -> None:
        for channel in list(self.live):
            channel.close_soon(CloseCode.GOING_AWAY, "gateway shutting down", grace)

    def origin_allowed(self, handshake: Handshake) -> bool:
        """Same-origin, listed or no ``Origin`` (not a browser): see security.origin."""
        own = own_origin(handshake.secure or offloaded_tls(self.config), handshake.authority or handshake.host)
        return origin_allowed(handshake.headers.get("Origin"), own, self.config.cross_site_constraints)

    async def respond(self, handshake: Handshake, accept: Accept, body: Body) -> Reply | Upgrade:
        # CORS preflights and CORS headers: the admission's (security/admission.py).
        if handshake.method not in _SAFE and not self.origin_allowed(handshake):
            if self.origin_lines.allow():
                log.info("service[%s]: refused cross-origin %s from %s", self.name, handshake.method, handshake.remote)
            return _text(403, "Forbidden\n")
        path = self.relative(handshake.path)
        try:
            answer = await self.route(handshake, accept, body, path)
        except ReloadFailed as exc:  # logged with its traceback by the gateway
            answer = _json({"reloaded": False, "message": str(exc)}, 500)
        except StateUnavailable as exc:  # Redis down: a revocation can be neither made nor listed now
            log.warning("service[%s]: %s %s not done: %s", self.name, handshake.method, path, exc)
            answer = replace(_json({"error": str(exc)}, 503), headers=(("Content-Type", _JSON), ("Retry-After", "5")))
        except ValueError:  # the request's body or path (an internal error is a 500, logged by aiohttp)
            answer = _json({"error": "bad request"}, 400)
        except ConnectionResetError:  # the client left (or was dropped) before its body was complete
            return Reply(400)  # nobody to read it: the transport drops it, no error to log
        return answer if isinstance(answer, Upgrade) else _no_store(answer)

    async def route(self, handshake: Handshake, accept: Accept, body: Body, path: str) -> Reply | Upgrade:
        method = handshake.method
        if path == "/live":
            return self.live_updates(handshake)
        if method == "GET" and path == "/":
            return Reply(200, headers=tuple(CONSOLE_HEADERS.items()), file=CONSOLE)
        if method == "GET" and path == "/metrics":
            return self.metrics_reply()
        if method == "GET" and path == "/api/stats":
            return _json(self.stats())
        if path.startswith("/vendor/") and path.removeprefix("/vendor/") in VENDOR_TYPES:
            if method not in ("GET", "HEAD"):
                return _text(405, "Method Not Allowed\n")
            return vendor_file(path.removeprefix("/vendor/"))
        if method == "GET" and path == "/api/info":
            control = self.control
            return _json(gateway_summary(control.config, control.started, len(self.runtime.connections)))
        if method == "GET" and path == "/api/services":
            return _json(self.services())
        if method == "GET" and path == "/api/sessions":
            sessions, complete = await self.sessions()
            reply = _json(sessions)
            return reply if complete else replace(reply, headers=(*reply.headers, ("Warning", PARTIAL)))
        if method == "DELETE" and path.startswith("/api/sessions/"):
            return await self.close_session(path.removeprefix("/api/sessions/"), handshake, accept)
        if method == "DELETE" and path.startswith("/api/principals/"):
            return await self.close_principal(path.removeprefix("/api/principals/"), handshake, accept)
        if path == "/api/revocations" and method in ("GET", "POST"):
            return await (self.revocations() if method == "GET" else self.revoke(handshake, accept, body))
        if method == "DELETE" and path.startswith("/api/revocations/"):
            return await self.lift(path.removeprefix("/api/revocations/"), handshake, accept)
        if method == "POST" and path == "/api/reload":
            ok, message = await self.control.reload()
            return _json({"reloaded": ok, "message": message}, 200 if ok else 422)
        known = path in (
            "/",
            "/api/info",
            "/api/services",
            "/api/sessions",
            "/api/reload",
            "/api/revocations",
            "/api/stats",
            "/metrics",
        )
        return _text(405, "Method Not Allowed\n") if known else _text(404, "Not Found\n")

    def services(self) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        for connection in list(self.runtime.connections):
            counts[connection.service] = counts.get(connection.service, 0) + 1
        return [{**entry, "open": counts.get(entry["name"], 0)} for entry in service_summaries(self.control.config)]

    async def sessions(self) -> tuple[list[dict[str, Any]], bool]:
        """This node's connections, then (state: redis) every other live node's, each with its ``node``;
        False with this node's only when the registry cannot be read (Redis unavailable)."""
        now = time.time()
        local = [session_view(c, now) for c in list(self.runtime.connections)]
        control = self.control
        node = control.node
        if node is None:
            return local, True
        for view in local:
            view["node"] = node
        try:
            remote = await control.remote_sessions()
        except StateUnavailable:
            return local, False
        return local + [remote_view(entry, now) for entry in remote], True

    def stats(self) -> dict[str, Any]:
        """``GET /api/stats``: the totals the console's charts turn into rates and quantiles.

        Read from the metrics the gateway keeps anyway (as a scrape reads them: one pass over the open
        connections), so nothing is counted per message for it. ``pid`` and ``started`` tell the console
        when the totals restarted (a restart, or another worker answering). Services: every configured
        one that accepts WebSockets or has had connections, in configuration order."""
        control = self.control
        metrics = self.runtime.metrics
        sample = metrics.chart_sample() if metrics is not None else {"services": {}, "handshakes": {}, "auth": None}
        traffic: dict[str, dict[str, int]] = sample["services"]
        zero = {"open": 0, "messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0}
        services = [
            {"name": service.name, **traffic.get(service.name, zero)}
            for service in control.config.services
            if service.name in traffic or any(uri.scheme in ("ws", "wss") for uri in service.accepts)
        ]
        return {
            "time": time.time(),
            "pid": os.getpid(),
            "started": control.started,
            "services": services,
            "handshakes": sample["handshakes"],
            "auth": sample["auth"],
        }

    async def close_session(self, connection_id: str, handshake: Handshake, accept: Accept) -> Reply:
        """Close one connection, on this node or (state: redis) on the node the registry says holds it."""
        node = self.control.node
        holder = node
        if not self.runtime.connections.select(Selector(id=connection_id)):
            if node is None:
                return _json({"closed": 0}, 404)
            try:
                holder = await self.control.session_node(connection_id)
            except StateUnavailable:
                return _json({"closed": 0, "error": "shared state unavailable"}, 503)
            if holder is None:
                return _json({"closed": 0}, 404)
        await self.runtime.expire(Selector(id=connection_id), "closed by administrator")
        where = "" if holder == node else f" on node {holder}"
        who = _operator(handshake, accept)
        log.warning("service[%s]: %s closed connection %s%s", self.name, who, connection_id, where)
        return _json({"closed": 1} if node is None else {"closed": 1, "node": holder})

    async def close_principal(self, user: str, handshake: Handshake, accept: Accept) -> Reply:
        if not user:
            raise ValueError("no user")
        closed = await self.control.revoke(user=user, reason="closed by administrator")
        who = _operator(handshake, accept)
        log.warning("service[%s]: %s revoked %r, closing %d connection(s)", self.name, who, user, closed)
        return _json({"closed": closed})

    async def revocations(self) -> Reply:
        entries = await self.control.revocations_in_force()
        return _json([{"key": key, "until": until} for key, until in sorted(entries.items())])

    async def revoke(self, handshake: Handshake, accept: Accept, body: Body) -> Reply:
        """``{"user": …}`` or ``{"token": …}``; the token is hashed, never logged nor kept."""
        request = json.loads(await body.text())
        if not isinstance(request, dict) or len(request) != 1:
            raise ValueError("one of user, token")
        user, token = request.get("user"), request.get("token")
        if not (isinstance(user, str) and user or isinstance(token, str) and token):
            raise ValueError("one of user, token")
        closed = await self.control.revoke(user=user, token=token, reason="closed by administrator")
        what = f"user {user!r}" if user else "a token"
        who = _operator(handshake, accept)
        log.warning("service[%s]: %s revoked %s, closing %d connection(s)", self.name, who, what, closed)
        return _json({"closed": closed})

    async def lift(self, key: str, handshake: Handshake, accept: Accept) -> Reply:
        lifted = await self.control.lift_revocation(key)
        if lifted:
            log.warning("service[%s]: %s lifted the revocation of %s", self.name, _operator(handshake, accept), key)
        return _json({"lifted": lifted}, 200 if lifted else 404)

    # -- the console's live feed --------------------------------------------------------------

    def live_updates(self, handshake: Handshake) -> Reply | Upgrade:
        """The console's feed: a WebSocket with a snapshot now and every second; the client only listens."""
        if not handshake.upgrade:
            return Reply(426, headers=(("Upgrade", "websocket"),))
        if not self.origin_allowed(handshake):
            return _text(403, "Forbidden\n")
        remote = handshake.remote

        async def serve(channel: Channel) -> None:
            await self.live_feed(channel, remote)

        return Upgrade(serve, max_message_size=LIVE_MESSAGE_SIZE, heartbeat=LIVE_HEARTBEAT)

    async def live_feed(self, channel: Channel, remote: str) -> None:
        """Snapshots until the client closes, leaves or stops reading; its messages are read and ignored."""
        self.live.add(channel)
        reader = asyncio.ensure_future(channel.receive())
        try:
            while not channel.closed:
                sessions, complete = await self.sessions()
                snapshot = {"time": time.time(), "services": self.services(), "sessions": sessions}
                if not complete:
                    snapshot["partial"] = True
                if not await self.send_live(channel, remote, json.dumps(snapshot)):
                    break
                done, _ = await asyncio.wait({reader}, timeout=LIVE_INTERVAL)
                if done:
                    if reader.result() is None:  # closed (the channel answered its close frame) or failed
                        break
                    reader = asyncio.ensure_future(channel.receive())
        finally:
            reader.cancel()
            self.live.discard(channel)
            await channel.close()

    async def send_live(self, channel: Channel, remote: str, text: str) -> bool:
        """One snapshot (once a second, so a timed send costs nothing); False once the client is gone.

        A client that reset is its own loss; one that has not read for ``ws.write.timeout`` is dropped
        as a slow consumer (aborted: it would not read a close frame either).
        """
        try:
            await asyncio.wait_for(channel.send(text), self.config.accept_options.write_timeout)
        except TimeoutError:
            self.dropped_slow(remote, "the live feed was not read")
            channel.abort()
            return False
        except OSError:
            return False
        return True


def vendor_file(name: str) -> Reply:
    """One of the console's vendored files (``name`` is a key of ``VENDOR_TYPES``), cacheable for an hour."""
    headers = (
        ("Content-Type", VENDOR_TYPES[name]),
        ("Cache-Control", VENDOR_CACHE),
        ("X-Content-Type-Options", "nosniff"),
    )
    return Reply(200, headers=headers, file=VENDOR / name)


def _operator(handshake: Handshake, accept: Accept) -> str:
    """Who did it, for the log line."""
    identity = accept.identity
    return f"administrator {identity.user!r}" if identity else f"unauthenticated client {handshake.remote}"


_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"


def _json(data: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(data).encode(), (("Content-Type", _JSON),))


def _text(status: int, text: str) -> Reply:
    return Reply(status, text.encode(), (("Content-Type", _TEXT),))


def _no_store(reply: Reply) -> Reply:
    """Operators' answers are never cached (unless one says how itself)."""
    if any(name.lower() == "cache-control" for name, _ in reply.headers):
        return reply
    return replace(reply, headers=(*reply.headers, ("Cache-Control", "no-store")))
