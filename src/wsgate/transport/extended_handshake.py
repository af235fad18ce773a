"""Kaazing's extended handshake on an aiohttp WebSocket: the I/O around ``core.extended``.

A client that offers ``x-kaazing-handshake`` is admitted by the listener without credentials
(``Admission.admit(..., credentials=False)``: Origin, limits, handshake validity, everything but the
realm's check), and its endpoint comes here instead of ``upgrade``:

1. the outer 101 selects ``x-kaazing-handshake`` (service limits applied, as for any WebSocket; the
   handshake counts as in progress for ``limits/handshakes`` until the inner 101);
2. each extended request (one message, within ``limits/handshake-timeout``) is merged with the outer
   request (``core.extended.merged_handshake``) and admitted by the *same* ``Admission`` with the
   opening's ``Hold`` (limits counted once);
3. a 401 goes back in-band with the realm's challenge and the client may try again on the same
   WebSocket (``MAX_ATTEMPTS`` requests in all); any other refusal goes back in-band and the
   connection closes; an ``Accept`` runs ``upgrade`` with an in-band 101 as its opener: the
   service's ``before_upgrade``, the revocation checks, ``LiveSession`` (``transport``
   "x-kaazing-handshake"), deadline, refresh and ``serve`` are exactly those of a native connection.

Close codes (the spec names none but 1000 after a redirect): a malformed or oversized request 1002 /
1009 after an in-band 400; refused credentials, too many attempts, no request in time 1008; a
refusal by a limit or an unavailable login 1013. Reasons go to the audit log, never to the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..core.close import CloseCode
from ..core.extended import (
    BALANCER_OPEN,
    EXTENDED_PROTOCOL,
    MAX_ATTEMPTS,
    MAX_REQUEST,
    ExtendedHandshakeError,
    Signals,
    accept_value,
    format_response,
    merged_handshake,
    offers_extended,
    parse_request,
)
from ..core.handshake import Accept, Handshake, Reject, Reply
from ..observe.logs import LogLimiter, get_logger
from ..observe.metrics import handshake_outcome
from ..security.challenges import offered_subprotocols, without_token_offers
from .channel import AiohttpChannel
from .websocket import HANDSHAKE_DONE, accept_websocket

if TYPE_CHECKING:
    from ..security.admission import Admission

__all__ = ["EXTENDED_KEY", "ExtendedHandshake", "extended_upgrade", "offers_extended"]

audit = get_logger("wsgate.audit")
log = logging.getLogger("wsgate.service")
CLOSE_GRACE = 2.0  # a client that does not answer our close frame within this is dropped
_bad_lines = LogLimiter("bad extended handshake")


@dataclass(frozen=True, slots=True)
class ExtendedHandshake:
    """What the listener hands on for an extended handshake: the route's admission and the port's limits."""

    admission: Admission
    timeout: float  # limits/handshake-timeout: the wait for each extended request
    line_limit: int  # limits/header-size: the longest line of an extended request


# The listener puts this on a request that offered x-kaazing-handshake to a WebSocket service.
EXTENDED_KEY: web.RequestKey[ExtendedHandshake] = web.RequestKey("wsgate.extended-handshake")
Upgrade = Callable[..., Awaitable[web.StreamResponse]]  # ``transport.upgrade.upgrade`` (passed in: no cycle)


class _Failed(Exception):
    """The extended handshake ended: ``status`` in-band (None: nothing to answer), then close with ``code``."""

    def __init__(
        self, status: int | None, code: int, reason: str, headers: dict[str, str] | None = None, audit: bool = True
    ) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.headers = status, code, reason, headers or {}
        self.audit = audit  # False: the admission audited it already (realm, Origin, limits)


async def extended_upgrade(
    service: Any, request: web.BaseRequest, outer: Handshake, opening: Accept, upgrade: Upgrade
) -> web.StreamResponse:
    """Run the extended handshake on an admitted opening handshake, then the service as ``upgrade`` would."""
    extended = request[EXTENDED_KEY]
    options = service.config.accept_options
    # The handshake stays in progress (limits/handshakes) until the inner 101: the login happens inside.
    request.pop(HANDSHAKE_DONE, None)
    ws = await accept_websocket(request, options, service.writer_limit, (EXTENDED_PROTOCOL,))
    channel = AiohttpChannel(ws, request.transport)  # for the handshake's messages; ``upgrade`` makes its own
    signals = Signals.of(outer.query)
    try:
        if signals.balancer:
            await ws.send_bytes(BALANCER_OPEN)
        inner, accept = await _negotiate(service.name, channel, outer, opening, extended, signals)
    except _Failed as refused:
        await _fail(service.name, channel, outer, extended, signals, refused)
        return ws
    except OSError:  # the client left while we answered
        return ws
    if inner is None:  # the client closed (its close frame answered)
        return ws
    opener = _InBand(ws, outer, inner, signals, opening.hold.handshake_done)
    response = await upgrade(service, request, inner, accept, opener)
    if response is not ws:  # refused after the admission (revoked while the back end was dialled): in-band
        late = _Failed(response.status, CloseCode.POLICY_VIOLATION, "refused before the upgrade", audit=False)
        await _fail(service.name, channel, outer, extended, signals, late)
    return ws


async def _negotiate(
    name: str,
    channel: AiohttpChannel,
    outer: Handshake,
    opening: Accept,
    extended: ExtendedHandshake,
    signals: Signals,
) -> tuple[Handshake | None, Accept]:
    """Extended requests until one is admitted (the merged request and its ``Accept``) or the client closes."""
    admission = extended.admission
    realm = admission.realm
    credential_headers = realm.realm.config.authentication.http_headers if realm is not None else ()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        data = await _next_request(channel, extended.timeout)
        if data is None:
            return None, opening
        try:
            inner = merged_handshake(outer, parse_request(data, extended.line_limit), credential_headers)
        except ExtendedHandshakeError as exc:
            code = CloseCode.MESSAGE_TOO_BIG if len(data) > MAX_REQUEST else CloseCode.PROTOCOL_ERROR
            raise _Failed(400, code, str(exc)) from None
        decision = await admission.admit(inner, held=opening.hold)
        if isinstance(decision, Accept):
            return inner, decision
        if isinstance(decision, Reply):  # a preflight or control resource: not a WebSocket request
            raise _Failed(400, CloseCode.PROTOCOL_ERROR, "extended request is not a WebSocket handshake")
        if decision.status != 401:
            audit_it = decision.event is not None  # a malformed merged request: the listener would audit it
            raise _Failed(decision.status, _close_code(decision), decision.reason, decision.headers, audit_it)
        if attempt == MAX_ATTEMPTS:
            raise _Failed(401, CloseCode.POLICY_VIOLATION, "too many extended handshake attempts", decision.headers)
        _count(admission, name, 401)
        await _answer(channel, 401, decision.headers, signals)
    raise AssertionError("unreachable")  # pragma: no cover


async def _next_request(channel: AiohttpChannel, timeout: float) -> bytes | str | None:
    """The next message, within ``timeout``; None if the client closed (answered by the channel)."""
    try:
        async with asyncio.timeout(timeout):
            return await channel.receive()
    except TimeoutError:
        raise _Failed(None, CloseCode.POLICY_VIOLATION, "no extended handshake request in time") from None


def _close_code(reject: Reject) -> int:
    if reject.status in (429, 503):
        return CloseCode.TRY_AGAIN_LATER
    if reject.status == 400 or reject.status == 426:
        return CloseCode.PROTOCOL_ERROR
    return CloseCode.POLICY_VIOLATION


async def _answer(channel: AiohttpChannel, status: int, headers: dict[str, str], signals: Signals) -> None:
    """One extended response (one binary message), and Kaazing's empty message after it if the client wants it."""
    ws = channel.ws
    await ws.send_bytes(format_response(status, headers))
    if signals.terminator:
        await ws.send_bytes(b"")


async def _fail(
    name: str,
    channel: AiohttpChannel,
    outer: Handshake,
    extended: ExtendedHandshake,
    signals: Signals,
    failed: _Failed,
) -> None:
    """Answer in-band (the same for every reason), audit why, close with the failure's code (bounded)."""
    admission = extended.admission
    if failed.audit:  # a client chooses how often: counted always, audited within the rate limit
        if admission.metrics is not None and failed.status == 400:
            admission.metrics.bad_requests.labels(name).inc()
        if _bad_lines.allow():
            audit.info(
                "extended handshake failed",
                service=name,
                remote=outer.remote,
                status=failed.status,
                reason=failed.reason,
            )
    if failed.status is not None:
        _count(admission, name, failed.status)
    timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, channel.abort)
    try:
        if failed.status is not None and not channel.closed:
            await _answer(channel, failed.status, failed.headers, signals)
        await channel.close(failed.code, "extended handshake failed")
    except OSError:
        channel.abort()
    finally:
        timer.cancel()


def _count(admission: Admission, name: str, status: int) -> None:
    """In-band refusals count as the listener counts refused handshakes (101s are counted at register)."""
    if admission.metrics is not None:
        admission.metrics.handshakes.labels(name, handshake_outcome(status)).inc()


class _InBand:
    """``upgrade``'s opener: the 101 as an extended response, on the WebSocket the outer 101 opened."""

    __slots__ = ("ws", "key", "offers", "signals", "done")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        outer: Handshake,
        inner: Handshake,
        signals: Signals,
        done: Callable[[], None],
    ) -> None:
        self.ws = ws
        self.done = done  # the handshake is no longer in progress once the inner 101 is sent
        self.key = outer.headers.get("Sec-WebSocket-Key", "")
        self.offers = without_token_offers(offered_subprotocols(inner.headers.get("Sec-WebSocket-Protocol")))
        self.signals = signals

    async def __call__(self, protocols: tuple[str, ...], headers: dict[str, str]) -> web.WebSocketResponse:
        """The first of the client's offers the service accepts, as aiohttp chooses for a native 101."""
        fields = {**headers, "Sec-WebSocket-Accept": accept_value(self.key)}
        chosen = next((offer for offer in self.offers if offer in protocols), None)
        if chosen is not None:
            fields["Sec-WebSocket-Protocol"] = chosen
        await self.ws.send_bytes(format_response(101, fields))
        self.done()
        if self.signals.terminator:
            await self.ws.send_bytes(b"")
        if self.signals.balancer:
            await self.ws.send_bytes(BALANCER_OPEN)
        return self.ws
