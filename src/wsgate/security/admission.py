"""Admission: the whole decision before a 101, as one pure step ``admit(handshake) -> Accept | Reject``.

A transport adapter builds a ``Handshake`` (core/handshake.py) from whatever it parsed and asks the
route's ``Admission``; it writes what comes back and does nothing else of its own. In order:

1. the request head itself (``core.http``: RFC 6455 in full for an upgrade, unambiguous security
   headers for plain HTTP) → 400 / 426, before anything else runs;
2. the route's ``ssl.verify-client required`` on a port that only asks for certificates → 403;
3. for an upgrade, the gateway's and the service's limits (``security.limits``) → 429 / 503 with
   ``Retry-After``; what they count is held by the ``Accept``'s ``Hold`` until the adapter lets go;
4. a CORS preflight (services with a realm, directory and management) → its ``Reply``;
5. the realm (``security.realms.RealmGate``): its control resources (``Reply``s), credentials,
   login chain, roles, revocation → 400 / 401 / 403 / 503;
6. a WebSocket service: a request that is not an upgrade (nor a WSE create, ``Handshake.emulated``) → 426,
   the gateway closing → 503, Origin → 403, credentials due to expire before the connection could
   open → 403; else the ``Accept`` with the identity and the connection's deadline.

No I/O except the login modules' own (on the realm's ``Verifier``); audit lines and metrics are
the same as the listener, the realm guard and the service runner wrote before (tests check them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..config.model import CrossSiteConstraint, Service
from ..core.handshake import BAD_REQUEST, NO_CERTIFICATE, Accept, Handshake, Hold, Reject, Reply
from ..core.http import check_handshake, check_request
from ..observe.logs import LogLimiter, get_logger
from .limits import Refusal
from .origin import cors_headers, origin_allowed, preflight
from .realms import FORBIDDEN, RealmGate, connection_deadline

if TYPE_CHECKING:
    from ..observe.metrics import Metrics
    from .limits import GatewayLimits, ServiceLimits, SharedRate

log = logging.getLogger("wsgate.service")
audit = get_logger("wsgate.audit")
NOT_WEBSOCKET = "This is a WebSocket endpoint: connect with a WebSocket client.\n"


def offloaded_tls(service: Service) -> bool:
    """wss/https accepts with ``ssl.encryption disabled``: browsers still see an https origin."""
    return not service.accept_options.tls.encryption and any(u.secure for u in service.accepts)


def own_origin(secure: bool, authority: str) -> str:
    """The origin a page served by this request's host would have (what a same-origin ``Origin`` says)."""
    return f"{'https' if secure else 'http'}://{authority}"


def _never() -> bool:
    return False


@dataclass
class Admission:
    """One route's admission: everything decided before a 101 (or before a plain HTTP service runs)."""

    service: str
    cors: bool  # a plain HTTP service that answers CORS preflights and adds CORS headers even without a realm
    websocket: bool = True  # a WebSocket service (426 for anything else); False: plain HTTP
    cross_site: tuple[CrossSiteConstraint, ...] = ()
    offloaded_tls: bool = False
    verify_client: str = "none"  # of this route (its accept URI), for ports shared with optional services
    realm: RealmGate | None = None
    limits: ServiceLimits | None = None
    gate: GatewayLimits | None = None
    open_connections: Sized = ()  # every open WebSocket of the gateway, for the gate's limit
    metrics: Metrics | None = None
    closing: Callable[[], bool] = _never  # the gateway is shutting down
    shared_rate: SharedRate | None = None  # the handshake rate counted by every node (state/shared-limits)
    origin_lines: LogLimiter = field(default_factory=lambda: LogLimiter("cross-origin refusal"), repr=False)

    async def admit(self, handshake: Handshake) -> Accept | Reject | Reply:
        """``Accept``: hand the request on (and release its ``hold``); ``Reject``: refuse it; ``Reply``:
        the admission answered it itself (a CORS preflight, a realm control resource)."""
        emulated = handshake.emulated  # a WSE create: plain HTTP on the wire, a new connection all the same
        upgrade = handshake.upgrade and not emulated
        bad = (
            check_handshake(handshake.method, handshake.version, handshake.headers)
            if upgrade
            else check_request(handshake.headers)
        )
        if bad is not None:  # before any login or service work
            return Reject(bad.status, bad.text, dict(bad.headers), bad.text.strip(), event=BAD_REQUEST)
        if handshake.secure and self.verify_client == "required" and handshake.peer is None:
            return Reject(403, "A client certificate is required.\n", reason=NO_CERTIFICATE, event=NO_CERTIFICATE)
        if not upgrade and not emulated:
            return await self.decide(handshake, Hold())
        hold = self.enter(handshake.remote)  # the limits before any login
        if isinstance(hold, Reject):
            return hold
        refused = await self.shared_rate_refusal(handshake.remote)
        if refused is not None:
            hold.release()
            return refused
        try:
            decision = await self.decide(handshake, hold)
        except BaseException:
            hold.release()
            raise
        if not isinstance(decision, Accept):
            hold.release()
        return decision

    def enter(self, ip: str) -> Hold | Reject:
        """A handshake slot of the gateway and a connection of the service for ``ip``, or the refusal."""
        gate = self.gate
        refusal = gate.enter_handshake(len(self.open_connections)) if gate is not None else None
        if refusal is not None:
            return self.refuse(refusal)
        done = gate.leave_handshake if gate is not None else None
        limits = self.limits
        if limits is None:
            return Hold(done)
        refusal = limits.enter(ip)
        if refusal is not None:
            if done is not None:
                done()
            return self.refuse(refusal)
        return Hold(done, lambda: limits.leave(ip))

    async def shared_rate_refusal(self, ip: str) -> Reject | None:
        """The service's handshake rate per client address, counted by every node (when shared)."""
        limits = self.limits
        if self.shared_rate is None or limits is None or limits.rate is None:
            return None
        wait = await self.shared_rate.take(f"{self.service}:{ip}", limits.rate, limits.burst)
        if not wait:
            return None
        return self.refuse(Refusal(429, "handshake-rate", max(1, round(wait + 0.5))))

    def refuse(self, refusal: Refusal) -> Reject:
        if self.metrics is not None:
            self.metrics.limited.labels(self.service, refusal.limit).inc()
        text = "Too Many Requests\n" if refusal.status == 429 else "Service Unavailable\n"
        headers = {"Retry-After": str(refusal.retry_after)}
        return Reject(refusal.status, text, headers, f"limit {refusal.limit}", refusal.limit)

    async def decide(self, handshake: Handshake, hold: Hold) -> Accept | Reject | Reply:
        gate = self.realm
        if (gate is not None or self.cors) and is_preflight(handshake):
            return self.preflight(handshake)  # preflights carry no credentials: answered before the realm
        identity = None
        proven: dict[str, str] = {}  # a login module's last token for the client (mutual authentication)
        if gate is not None:
            what = gate.control_path(handshake.path)
            if what is not None:
                reply = await gate.control(handshake, what) if self.origin_allowed(handshake) else _forbidden()
                return replace(reply, headers=reply.headers + tuple(self.cors_headers(handshake).items()))
            proof = await gate.authorize(handshake)
            if isinstance(proof, Reject):
                return proof
            identity, proven = proof.identity, gate.proof_headers(proof)
        if not self.websocket:
            headers = self.cors_headers(handshake) if self.cors else {}
            return Accept(identity, headers={**headers, **proven}, hold=hold)
        if not handshake.emulated and (handshake.method != "GET" or not handshake.upgrade):
            return Reject(426, NOT_WEBSOCKET, {"Upgrade": "websocket"}, "not a WebSocket handshake")
        if self.closing():
            return Reject(503, "Gateway is shutting down.\n", reason="gateway shutting down")
        if not self.origin_allowed(handshake):
            if self.origin_lines.allow():  # a page on another site chooses how often: INFO, rate-limited
                log.info(
                    "service[%s]: refused cross-origin upgrade from %s (Origin %.100r)",
                    self.service,
                    handshake.remote,
                    handshake.headers.get("Origin"),
                )
            return Reject(403, FORBIDDEN, reason="cross-origin")
        started = time.time()
        deadline, why = (None, "")
        if identity is not None and gate is not None:
            deadline, why = connection_deadline(identity, started, gate.realm.config)
            if deadline is not None and deadline <= started:
                # Already due to close (e.g. a JWT inside its leeway but past exp): never open it, never dial.
                reason = f"{why} before the upgrade"
                audit.info(
                    "authentication denied",
                    service=self.service,
                    realm=identity.realm,
                    remote=handshake.remote,
                    decision="denied",
                    status=403,
                    reason=reason,
                )
                return Reject(403, FORBIDDEN, reason=reason)
        return Accept(identity, deadline, why, headers=proven, opened_at=started, hold=hold)

    # -- Origin and CORS ---------------------------------------------------------------------

    def own_origin(self, handshake: Handshake) -> str:
        return own_origin(handshake.secure or self.offloaded_tls, handshake.authority or handshake.host)

    def origin_allowed(self, handshake: Handshake) -> bool:
        """Same-origin, listed or no ``Origin`` (not a browser): see security.origin."""
        return origin_allowed(handshake.headers.get("Origin"), self.own_origin(handshake), self.cross_site)

    def preflight(self, handshake: Handshake) -> Reply:
        """A CORS preflight answered by the cross-site constraints: 204 with the grant, or 403."""
        headers = handshake.headers
        status, granted = preflight(
            headers.get("Origin"),
            headers.get("Access-Control-Request-Method"),
            headers.get("Access-Control-Request-Headers"),
            self.own_origin(handshake),
            self.cross_site,
        )
        return Reply(status, headers=tuple(granted.items()))

    def cors_headers(self, handshake: Handshake) -> dict[str, str]:
        return cors_headers(handshake.headers.get("Origin"), self.own_origin(handshake), self.cross_site)


def is_preflight(handshake: Handshake) -> bool:
    """A CORS preflight: OPTIONS with Access-Control-Request-Method."""
    return handshake.method == "OPTIONS" and "Access-Control-Request-Method" in handshake.headers


def _forbidden() -> Reply:
    return Reply.text(403, FORBIDDEN)
