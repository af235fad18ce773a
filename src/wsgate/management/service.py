"""``management`` and ``metrics`` services: the operator's REST API, web console and Prometheus endpoint.

The management service is an HTTP(S) service like ``directory``, protected by a realm
with ``require-role ADMINISTRATOR`` unless the config says otherwise (the config
builder refuses a management service without a realm unless it is bound to loopback
and marked ``insecure``). Under its accept path:

    GET    /                      the web console (one static page, vanilla JS)
    GET    /api/info              gateway, process and config summary (no secrets)
    GET    /api/services          services with live counts
    GET    /api/sessions          live connections: principal, service, remote, TLS, traffic, expiry
    DELETE /api/sessions/<id>     close one connection (1008 "closed by administrator")
    DELETE /api/principals/<user> revoke a user: close their connections, end their realm sessions, and
                                  refuse them for security/revocation-timeout
    GET    /api/revocations       revocations in force: [{"key": "user:joe" | "jti:…" | "token:<sha256>", "until"}]
    POST   /api/revocations       {"user": …} or {"token": …}: revoke (a token until its exp)
    DELETE /api/revocations/<key> lift a revocation early
    POST   /api/reload            re-read the config; answers 422 with the located error if it is refused,
                                  500 if it failed otherwise (the running configuration stays either way)
    GET    /live                  WebSocket: the services and sessions every second, for the console
    GET    /metrics               Prometheus exposition

State-changing requests from a browser must be same-origin (or listed in a
cross-site-constraint): a page on another site cannot use the admin's credentials.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import WSMsgType, web

from ..config.model import AuthorizationConstraint, GatewayConfig, Service
from ..config.schema import Fail, Property
from ..core.close import CloseCode
from ..errors import ReloadFailed
from ..observe.metrics import CONTENT_TYPE
from ..security.admission import offloaded_tls, own_origin
from ..security.origin import origin_allowed
from ..services.base import Runtime, ServiceHandler, ServiceType
from ..state.connections import Selector
from ..transport.http import ACCEPT_KEY
from ..transport.websocket import GuardedResponse, answer_close, is_upgrade
from .summary import gateway_summary, service_summaries

if TYPE_CHECKING:
    from ..core.peer import PeerIdentity
    from ..core.session import LiveSession

log = logging.getLogger("wsgate.management")
CONSOLE = Path(__file__).parent.parent / "resources" / "management" / "console.html"


def _console_headers() -> dict[str, str]:
    """Only the console's own inline script may run (by hash), it may talk only to its own origin,
    and no other site may frame it (clickjacking on the Close buttons)."""
    page = CONSOLE.read_text()
    script = page.split('<script type="module">', 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


CONSOLE_HEADERS = _console_headers()
LIVE_INTERVAL = 1.0
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
        "remote": session.remote,
        "opened": session.started,
        "age": round(now - session.started, 1),
        "expires": session.deadline,
        "tls": tls,
        "messages_in": channel.messages_in,
        "messages_out": channel.messages_out,
        "bytes_in": channel.bytes_in,
        "bytes_out": channel.bytes_out,
    }


class OperatorService(ServiceHandler):
    """Plain HTTP resources for operators; the realm in front of it has already authorized the request."""

    def relative(self, request: web.BaseRequest) -> str:
        for uri in self.config.accepts:
            base = uri.path.rstrip("/")
            if request.path == base or request.path.startswith(base + "/"):
                return request.path[len(base) :] or "/"
        return "/"

    async def handle(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        raise NotImplementedError

    def metrics_response(self) -> web.Response:
        body = self.runtime.metrics.exposition() if self.runtime.metrics else b""
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


class MetricsService(OperatorService):
    TYPE = ServiceType(name="metrics", accept=("http", "https"), plain_http=True)

    async def handle(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        return self.metrics_response()


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
        self.live: set[web.WebSocketResponse] = set()

    @property
    def control(self) -> GatewayControl:
        control = self.runtime.control
        assert control is not None, "the gateway registers itself before listening"
        return control  # type: ignore[no-any-return]

    async def stop(self) -> None:
        for ws in list(self.live):
            await ws.close(code=CloseCode.GOING_AWAY, message=b"gateway shutting down")

    def origin_allowed(self, request: web.BaseRequest) -> bool:
        """Same-origin, listed or no ``Origin`` (not a browser): see security.origin."""
        own = own_origin(request.secure or offloaded_tls(self.config), request.host)
        return origin_allowed(request.headers.get("Origin"), own, self.config.cross_site_constraints)

    async def handle(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        # CORS preflights and CORS headers: the admission's (security/admission.py).
        if request.method not in _SAFE and not self.origin_allowed(request):
            if self.origin_lines.allow():
                log.info("service[%s]: refused cross-origin %s from %s", self.name, request.method, request.remote)
            return web.Response(status=403, text="Forbidden\n")
        path = self.relative(request)
        try:
            response = await self.route(request, path)
        except ReloadFailed as exc:  # logged with its traceback by the gateway
            response = web.json_response({"reloaded": False, "message": str(exc)}, status=500)
        except ValueError:  # the request's body or path (an internal error is a 500, logged by aiohttp)
            response = web.json_response({"error": "bad request"}, status=400)
        except ConnectionResetError:  # the client left (or was dropped) before its body was complete
            return web.Response(status=400)  # nobody to read it: aiohttp drops it, no error to log
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def route(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        method = request.method
        if path == "/live":
            return await self.live_updates(request)
        if method == "GET" and path == "/":
            return web.FileResponse(CONSOLE, headers=CONSOLE_HEADERS)
        if method == "GET" and path == "/metrics":
            return self.metrics_response()
        if method == "GET" and path == "/api/info":
            control = self.control
            return web.json_response(gateway_summary(control.config, control.started, len(self.runtime.connections)))
        if method == "GET" and path == "/api/services":
            return web.json_response(self.services())
        if method == "GET" and path == "/api/sessions":
            return web.json_response(self.sessions())
        if method == "DELETE" and path.startswith("/api/sessions/"):
            return await self.close_session(path.removeprefix("/api/sessions/"), request)
        if method == "DELETE" and path.startswith("/api/principals/"):
            return await self.close_principal(path.removeprefix("/api/principals/"), request)
        if path == "/api/revocations" and method in ("GET", "POST"):
            return await (self.revocations() if method == "GET" else self.revoke(request))
        if method == "DELETE" and path.startswith("/api/revocations/"):
            return await self.lift(path.removeprefix("/api/revocations/"), request)
        if method == "POST" and path == "/api/reload":
            ok, message = await self.control.reload()
            return web.json_response({"reloaded": ok, "message": message}, status=200 if ok else 422)
        known = path in (
            "/",
            "/api/info",
            "/api/services",
            "/api/sessions",
            "/api/reload",
            "/api/revocations",
            "/metrics",
        )
        return web.Response(status=405 if known else 404, text="Method Not Allowed\n" if known else "Not Found\n")

    def services(self) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        for connection in list(self.runtime.connections):
            counts[connection.service] = counts.get(connection.service, 0) + 1
        return [{**entry, "open": counts.get(entry["name"], 0)} for entry in service_summaries(self.control.config)]

    def sessions(self) -> list[dict[str, Any]]:
        now = time.time()
        return [session_view(c, now) for c in list(self.runtime.connections)]

    async def close_session(self, connection_id: str, request: web.BaseRequest) -> web.Response:
        if not self.runtime.connections.select(Selector(id=connection_id)):
            return web.json_response({"closed": 0}, status=404)
        await self.runtime.expire(Selector(id=connection_id), "closed by administrator")
        log.warning("service[%s]: %s closed connection %s", self.name, self.admin(request), connection_id)
        return web.json_response({"closed": 1})

    async def close_principal(self, user: str, request: web.BaseRequest) -> web.Response:
        if not user:
            raise ValueError("no user")
        closed = await self.control.revoke(user=user, reason="closed by administrator")
        log.warning(
            "service[%s]: %s revoked %r, closing %d connection(s)", self.name, self.admin(request), user, closed
        )
        return web.json_response({"closed": closed})

    async def revocations(self) -> web.Response:
        entries = await self.control.revocations_in_force()
        return web.json_response([{"key": key, "until": until} for key, until in sorted(entries.items())])

    async def revoke(self, request: web.BaseRequest) -> web.Response:
        """``{"user": …}`` or ``{"token": …}``; the token is hashed, never logged nor kept."""
        body = await request.json()
        if not isinstance(body, dict) or len(body) != 1:
            raise ValueError("one of user, token")
        user, token = body.get("user"), body.get("token")
        if not (isinstance(user, str) and user or isinstance(token, str) and token):
            raise ValueError("one of user, token")
        closed = await self.control.revoke(user=user, token=token, reason="closed by administrator")
        what = f"user {user!r}" if user else "a token"
        log.warning(
            "service[%s]: %s revoked %s, closing %d connection(s)", self.name, self.admin(request), what, closed
        )
        return web.json_response({"closed": closed})

    async def lift(self, key: str, request: web.BaseRequest) -> web.Response:
        lifted = await self.control.lift_revocation(key)
        if lifted:
            log.warning("service[%s]: %s lifted the revocation of %s", self.name, self.admin(request), key)
        return web.json_response({"lifted": lifted}, status=200 if lifted else 404)

    @staticmethod
    def admin(request: web.BaseRequest) -> str:
        accept = request.get(ACCEPT_KEY)
        identity = accept.identity if accept is not None else None
        return f"administrator {identity.user!r}" if identity else f"unauthenticated client {request.remote}"

    async def send_live(self, request: web.BaseRequest, ws: web.WebSocketResponse, text: str) -> bool:
        """One snapshot (once a second, so a timed send costs nothing); False once the client is gone.

        A client that reset is its own loss; one that has not read for ``ws.write.timeout`` is dropped
        as a slow consumer (aborted: it would not read a close frame either).
        """
        try:
            await asyncio.wait_for(ws.send_str(text), self.config.accept_options.write_timeout)
        except TimeoutError:
            self.dropped_slow(request.remote, "the live feed was not read")
            if request.transport is not None:
                request.transport.abort()
            return False
        except OSError:
            return False
        return True

    async def live_updates(self, request: web.BaseRequest) -> web.StreamResponse:
        """The console's feed: a snapshot now and every second; the client only listens."""
        if not is_upgrade(request):
            return web.Response(status=426, headers={"Upgrade": "websocket"})
        if not self.origin_allowed(request):
            return web.Response(status=403, text="Forbidden\n")
        ws = GuardedResponse(heartbeat=30, compress=False, max_msg_size=4096, autoclose=False)
        await ws.prepare(request)
        self.live.add(ws)
        reader = asyncio.ensure_future(ws.receive())
        try:
            while not ws.closed:
                snapshot = {"time": time.time(), "services": self.services(), "sessions": self.sessions()}
                if not await self.send_live(request, ws, json.dumps(snapshot)):
                    break
                done, _ = await asyncio.wait({reader}, timeout=LIVE_INTERVAL)
                if done:
                    kind = reader.result().type
                    if kind is WSMsgType.CLOSE:
                        await answer_close(ws)
                    if kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                        break
                    reader = asyncio.ensure_future(ws.receive())
        finally:
            reader.cancel()
            self.live.discard(ws)
            await ws.close()
        return ws
