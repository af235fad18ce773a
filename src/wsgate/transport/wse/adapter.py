"""WebSocket emulation (WSE, k3po ``specification/wse/SPEC.md``) for a WebSocket service, over aiohttp.

Every WebSocket service (unless ``ws.emulation disabled``) also answers ``<path>/;e/…`` on its accept
ports, as plain HTTP:

- **create** ``POST`` (or ``GET``) ``<path>/;e/cb`` (``cbm``, ``ct``, ``ctm``, ``cte``, ``ctem``): checked
  as the spec requires (400), then the **same** ``Admission.admit`` as a native upgrade (limits, realm,
  Origin: 401/403/429/503 happen here), the service's ``prepare`` and a revocation check, then
  ``201`` with two URLs ``<path>/;e/u…/<id>`` and ``<path>/;e/d…/<id>``; the session is opened and served
  by ``transport.session_runner`` exactly as a native one (``LiveSession.transport == "wse"``);
- **downstream** ``GET`` (or ``POST``) ``<path>/;e/d…/<id>``: streaming (``Connection: close``, frames
  as they come, a no-op every ``.kkt`` seconds, ``RECONNECT`` after ``.kb`` KiB or when a newer
  downstream arrives, ``.kp`` padding first) or long-polling (``.ki=p``: one response with
  ``Content-Length`` as soon as there is something to send, ending with ``RECONNECT``);
- **upstream** ``POST <path>/;e/u…/<id>``: the frames of the body (at most ``ws.maximum.message.size``
  per message, 413 over it), delivered in order; ``200`` once the service has room for them.

Every request after create carries the next sequence number of its direction (``X-Sequence-No`` or
``.ksn``): a missing, invalid, ambiguous (two that differ) or out-of-order one is ``400`` and fails the
session, as an overlapping upstream request does. A session id is 128 random bits (two: one per
direction), served only to the client address that created it (and, if the create had an ``Origin``, to
requests with that Origin or none); an id from anyone else is ``404``, as an unknown one. A session with
neither a downstream attached nor an upstream request for ``ws.inactivity.timeout`` (60 s if unset) ends
(1006), as does one whose client leaves while an upstream request waits for the service to take its
messages.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ...core.close import CloseCode
from ...core.handshake import BAD_REQUEST, EMULATED, Accept, Handshake, Reject, Reply
from ...core.http import check_request
from ...core.peer import PeerIdentity
from ...core.session import LiveSession
from ...core.wse_frames import (
    NOP,
    RECONNECT,
    Command,
    Decoder,
    Encoding,
    WseError,
    decode_upstream_text,
    padding,
    parse_create_suffix,
    parse_sequence,
    unescape,
)
from ...observe.logs import LogLimiter, get_logger
from ...observe.metrics import handshake_outcome
from ...security.origin import origin_allowed, preflight
from ..http import handshake_from, response_for
from ..listener import HttpConnection
from ..session_runner import WebSocketEndpoint, open_session, serve_session, tls_of
from .channel import EmulatedChannel

if TYPE_CHECKING:
    from ...observe.metrics import Metrics
    from ...security.admission import Admission

__all__ = ["EMULATION_MARK", "WseAdapter", "emulation_path", "sessions"]

log = logging.getLogger("wsgate.service")
audit = get_logger("wsgate.audit")
_bad_lines = LogLimiter("bad emulated request")

EMULATION_MARK = "/;e/"
VERSION = "wseb-1.0"
DEFAULT_IDLE = 60.0  # a session without downstream or upstream this long ends (``ws.inactivity.timeout``)
DEFAULT_HEARTBEAT = 20.0  # a no-op on an idle downstream this often (``.kkt`` asks for another interval)
MAX_SESSIONS = 200_000  # emulated sessions of the whole process, on top of the gateway's connection limits
FRAMING = 1024  # an upstream body may hold this much framing on top of its messages
# Headers of the WSE protocol itself: a cross-origin client may send them once its Origin is allowed.
WSE_HEADERS = frozenset(
    {"content-type", "x-websocket-version", "x-websocket-protocol", "x-websocket-extensions", "x-accept-commands"}
    | {"x-sequence-no", "authorization"}
)
_DOWNSTREAM_CONTENT_TYPES = {  # what ``.kc`` may ask for; anything else keeps the encoding's own
    "text/plain;charset=windows-1252",
    "text/plain;charset=utf-8",
    "application/octet-stream",
}
# Emulated sessions of this process by id (upstream and downstream ids both): they outlive a reload.
_SESSIONS: dict[str, WseSession] = {}


def sessions() -> int:
    """Emulated sessions open in this process (each is registered under two ids)."""
    return len(_SESSIONS) // 2


def emulation_path(route_path: str, path: str) -> bool:
    """Is ``path`` one of the emulated resources of a service at ``route_path``?"""
    return path.startswith(route_path + EMULATION_MARK)


class CloseDelimited(web.StreamResponse):
    """A streaming response whose body ends when the connection closes (``Connection: close``, no chunking),
    as the spec's downstream and Kaazing's clients expect."""

    _length_check = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.force_close()


class WseSession:
    """The adapter's state of one emulated session: ids, sequence numbers, its downstream, its timers."""

    __slots__ = (
        "service",
        "channel",
        "live",
        "encoding",
        "ip",
        "origin",
        "cors",
        "up_id",
        "down_id",
        "up_seq",
        "down_seq",
        "upstream_busy",
        "downstream",
        "idle",
        "timer",
        "decoder",
        "hold",
        "task",
        "envelope",
    )

    def __init__(
        self,
        service: WebSocketEndpoint,
        channel: EmulatedChannel,
        encoding: Encoding,
        ip: str,
        origin: str | None,
        cors: tuple[tuple[str, str], ...],
        sequence: int,
        idle: float,
        decoder: Decoder,
    ) -> None:
        self.service = service
        self.channel = channel
        self.live: LiveSession | None = None
        self.encoding = encoding
        self.ip = ip
        self.origin = origin
        self.cors = cors
        self.up_id = secrets.token_urlsafe(16)
        self.down_id = secrets.token_urlsafe(16)
        self.up_seq = self.down_seq = sequence
        self.upstream_busy = False
        self.downstream: asyncio.Event | None = None  # set to ask the attached downstream to hand over
        self.idle = idle
        self.timer: asyncio.TimerHandle | None = None
        self.decoder = decoder
        self.hold: Any = None
        self.task: asyncio.Task[None] | None = None
        self.envelope: str | None = None  # httpxe: the outer content type of enveloped answers (Kaazing's bridge)

    def arm(self) -> None:
        """No downstream attached: the session ends unless one (or an upstream request) comes in time."""
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(self.idle, self.expired)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expired(self) -> None:
        self.timer = None
        if self.downstream is None and not self.upstream_busy:
            self.channel.abort()

    def fail(self, why: str) -> None:
        """A protocol error: the session ends (``CLOSE`` then ``RECONNECT`` on the downstream, if one listens)."""
        log.debug("wse session %s: %s", self.live.id if self.live else "?", why)
        if not self.channel.closed:
            self.channel.close_soon(CloseCode.PROTOCOL_ERROR, "", 1.0)

    def ended(self) -> None:
        """The channel was dropped: nothing is served under these ids any more."""
        self.disarm()
        _SESSIONS.pop(self.up_id, None)
        _SESSIONS.pop(self.down_id, None)


class WseAdapter:
    """The emulated resources of one WebSocket service (see the module docstring)."""

    def __init__(self, service: WebSocketEndpoint, metrics: Metrics | None = None) -> None:
        self.service = service
        self.metrics = metrics  # refused creates count as refused handshakes (accepted ones: at ``register``)
        self.tasks: set[asyncio.Task[None]] = set()

    async def __call__(
        self, request: web.BaseRequest, peer: PeerIdentity | None, host: str, base: str, admission: Admission
    ) -> web.StreamResponse:
        rest = request.path[len(base) + len(EMULATION_MARK) :]
        handshake = replace(handshake_from(request, peer, host), transport=EMULATED)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return self.preflight(handshake, admission)
        kind, _, session_id = rest.partition("/")
        try:
            if not session_id:
                encoding = parse_create_suffix(kind)
                if encoding is None:
                    return _plain(404, "Not Found\n")
                return await self.create(request, handshake, encoding, admission)
            bad = check_request(request.headers)  # as admission would: no ambiguous Origin, Host or credentials
            if bad is not None:
                self.bad_request(handshake.remote, bad.status, bad.text.strip())
                return _plain(bad.status, bad.text)
            session = _SESSIONS.get(session_id)
            if session is None or not self.owns(session, handshake):
                return _plain(404, "Not Found\n")
            if session_id == session.up_id and kind == session.encoding.upstream:
                return await self.upstream(request, session)
            if session_id == session.down_id and kind == session.encoding.downstream:
                return await self.downstream(request, session)
            return _plain(404, "Not Found\n")
        except WseError as exc:
            return _plain(exc.status, f"{exc}\n")

    def owns(self, session: WseSession, handshake: Handshake) -> bool:
        """The session's ids are served to the client that created it only (as far as HTTP lets us tell)."""
        if session.service is not self.service and session.service.name != self.service.name:
            return False
        if handshake.remote != session.ip:
            return False
        origin = handshake.headers.get("Origin")
        return origin is None or session.origin is None or origin == session.origin

    # -- create -----------------------------------------------------------------------------

    async def create(
        self, request: web.BaseRequest, handshake: Handshake, encoding: Encoding, admission: Admission
    ) -> web.StreamResponse:
        """A create, answered (in an httpxe envelope if the client wants one); every refusal of it counts as the
        listener counts a refused upgrade, whatever refused it (201s count when the session registers)."""
        wrap = enveloped(request)
        response = await self._create(request, handshake, encoding, admission, wrap)
        if response.status != 201 and self.metrics is not None:
            self.metrics.handshakes.labels(self.service.name, handshake_outcome(response.status)).inc()
        return _answer(response, wrap)

    async def _create(
        self,
        request: web.BaseRequest,
        handshake: Handshake,
        encoding: Encoding,
        admission: Admission,
        wrap: str | None,
    ) -> web.StreamResponse:
        try:
            sequence = _create_checks(request)
        except WseError as exc:
            self.bad_request(handshake.remote, exc.status, str(exc))
            return _plain(exc.status, f"{exc}\n")
        if len(_SESSIONS) // 2 >= MAX_SESSIONS:
            return _plain(503, "Service Unavailable\n", {"Retry-After": "5"})
        x_origin = request.headers.get("X-Origin")
        if x_origin is not None and not origin_allowed(x_origin, admission.own_origin(handshake), admission.cross_site):
            return _plain(403, "Forbidden\n")  # the page a Kaazing bridge speaks for: same rules
        handshake = _with_subprotocols(handshake)
        decision = await admission.admit(handshake)
        if isinstance(decision, (Reject, Reply)):
            if isinstance(decision, Reject) and decision.event == BAD_REQUEST:
                self.bad_request(handshake.remote, decision.status, decision.reason)
            return response_for(decision)
        try:
            return await self.open(request, handshake, decision, encoding, sequence, admission, wrap)
        except BaseException:
            decision.hold.release()
            raise

    def bad_request(self, remote: str, status: int, reason: str) -> None:
        """A malformed emulated request: counted always, audited within the rate limit, as the listener does
        for a malformed upgrade (``reason`` is ours, never the client's bytes)."""
        if self.metrics is not None:
            self.metrics.bad_requests.labels(self.service.name).inc()
        if _bad_lines.allow():
            audit.info("bad request", service=self.service.name, remote=remote, status=status, reason=reason)

    async def open(
        self,
        request: web.BaseRequest,
        handshake: Handshake,
        accept: Accept,
        encoding: Encoding,
        sequence: int,
        admission: Admission,
        wrap: str | None = None,
    ) -> web.StreamResponse:
        service = self.service
        identity = accept.identity
        protocols, context = await service.prepare(handshake, accept)
        if isinstance(context, Reply):  # refused before the session opens (a DMZ gateway without a tunnel: 503)
            accept.hold.release()
            return response_for(context)
        try:
            if identity is not None and await service.revoked(identity):
                await service.abandon(context)
                accept.hold.release()
                return response_for(service.deny(identity, handshake.remote, "revoked before the upgrade"))
        except BaseException:
            await service.abandon(context)
            raise
        options = service.config.accept_options
        limit = options.max_message_size
        inbox = max(limit, service.writer_limit)  # unread upstream messages before an upstream response waits
        channel = EmulatedChannel(encoding, service.writer_limit, inbox, options.write_timeout)
        pings = request.headers.get("X-Accept-Commands", "").strip().lower() == "ping"
        cors = tuple(admission.cors_headers(handshake).items())
        session = WseSession(
            service,
            channel,
            encoding,
            handshake.remote,
            handshake.headers.get("Origin"),
            cors,
            sequence,
            options.inactivity_timeout or DEFAULT_IDLE,
            Decoder(limit, pings),
        )
        connection_id = secrets.token_urlsafe(16)
        live = open_session(
            service, channel, handshake, accept, connection_id, context, tls_of(request.transport), EMULATED
        )
        session.live = live
        session.hold = accept.hold
        session.envelope = wrap
        channel.owner = weakref.ref(live)
        channel.on_end = session.ended
        _SESSIONS[session.up_id] = session
        _SESSIONS[session.down_id] = session
        session.arm()
        accept.hold.handshake_done()
        task = asyncio.get_running_loop().create_task(self.run(session, live, channel))
        session.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        headers: CIMultiDict[str] = CIMultiDict(cors)
        headers["Content-Type"] = "text/plain;charset=utf-8"
        headers["Cache-Control"] = "no-cache"
        chosen = accept.subprotocol or _choose(", ".join(request.headers.getall("X-WebSocket-Protocol", [])), protocols)
        if chosen is not None:
            headers["X-WebSocket-Protocol"] = chosen
        if identity is not None:
            headers.update(service.identity_headers(connection_id, accept.deadline))
        headers.update(accept.headers)
        base = _base_url(request, handshake)
        query = _echo_query(request)
        body = (
            f"{base}/;e/{encoding.upstream}/{session.up_id}{query}\n"
            f"{base}/;e/{encoding.downstream}/{session.down_id}{query}\n"
        )
        return web.Response(status=201, body=body.encode(), headers=headers)

    async def run(self, session: WseSession, live: LiveSession, channel: EmulatedChannel) -> None:
        """The service's side of the session, as for a native connection; then its ids and counts go."""
        try:
            await serve_session(self.service, live, channel)
        finally:
            # The client gets a moment to take CLOSE + RECONNECT (or to send its own CLOSE) before the ids go.
            if not channel.aborted and session.downstream is None and channel.pending:
                await _linger(channel, min(session.idle, 2.0))
            channel.abort()
            session.ended()
            session.hold.release()

    # -- upstream ---------------------------------------------------------------------------

    async def upstream(self, request: web.BaseRequest, session: WseSession) -> web.StreamResponse:
        if request.method != "POST":
            session.fail("upstream request is not a POST")
            raise WseError("an upstream request must be a POST")
        if session.upstream_busy:
            session.fail("overlapping upstream request")
            raise WseError("an upstream request is already in progress")
        self.sequence(request, session, upstream=True)
        session.upstream_busy = True
        channel = session.channel
        encoding = session.encoding
        protocol = request.protocol
        if isinstance(protocol, HttpConnection):  # a client that leaves while its messages wait: the session is lost
            protocol.on_lost = channel.abort
        try:
            limit = session.decoder.max_message * (2 if encoding.text else 1) * (2 if encoding.escaped else 1)
            body = await _read(request, limit + FRAMING)
            if body is None:
                channel.closed_with = channel.closed_with or CloseCode.MESSAGE_TOO_BIG
                session.fail("upstream body over the limit")
                raise WseError("Request Entity Too Large", 413)
            if not body:
                session.fail("empty upstream request")
                raise WseError("an upstream request needs a body")
            if encoding.text:
                body = decode_upstream_text(body)
            if encoding.escaped:
                body = unescape(body)
            try:
                frames = session.decoder.frames(body)
            except WseError as exc:
                if channel.closed_with is None:
                    channel.closed_with = exc.close_code
                session.fail(str(exc))
                raise
            for frame in frames:
                if type(frame) is Command:
                    if frame is Command.CLOSE:
                        channel.peer_closed()
                    elif frame is Command.PING:
                        try:
                            await channel.pong()
                        except ConnectionResetError:  # dropped as a slow consumer while the PONG waited
                            break
                    elif frame is Command.RECONNECT:
                        break
                else:
                    await channel.deliver(frame)  # type: ignore[arg-type]
        finally:
            if isinstance(protocol, HttpConnection):
                protocol.on_lost = None
            session.upstream_busy = False
            if session.downstream is None and not channel.closed:
                session.arm()
        return _answer(web.Response(status=200, headers=CIMultiDict(session.cors)), session.envelope)

    def sequence(self, request: web.BaseRequest, session: WseSession, upstream: bool) -> None:
        """The next sequence number of this direction, or 400 and the session fails."""
        try:
            number = parse_sequence(_sequence_text(request))
        except WseError:
            session.fail("missing or invalid sequence number")
            raise
        expected = (session.up_seq if upstream else session.down_seq) + 1
        if number != expected:
            session.fail("out-of-order request")
            raise WseError("out-of-order request")
        if upstream:
            session.up_seq = number
        else:
            session.down_seq = number

    # -- downstream -------------------------------------------------------------------------

    async def downstream(self, request: web.BaseRequest, session: WseSession) -> web.StreamResponse:
        if request.method not in ("GET", "POST"):
            session.fail("downstream request is neither GET nor POST")
            raise WseError("a downstream request must be a GET")
        self.sequence(request, session, upstream=False)
        query = request.query
        longpoll = query.get(".ki") == "p"
        heartbeat = _seconds(query.get(".kkt"), DEFAULT_HEARTBEAT)
        previous = session.downstream
        handover = asyncio.Event()
        session.downstream = handover
        session.disarm()
        if previous is not None:
            previous.set()  # the attached downstream ends with RECONNECT; this one takes over
            session.channel.wake.set()
            await asyncio.sleep(0)
        headers: CIMultiDict[str] = CIMultiDict(session.cors)
        content_type = query.get(".kc", "").replace(" ", "").lower()
        if content_type not in _DOWNSTREAM_CONTENT_TYPES:
            content_type = session.encoding.content_type
        headers["Content-Type"] = content_type
        headers["Cache-Control"] = "no-cache"
        headers["X-Content-Type-Options"] = "nosniff"
        protocol = request.protocol
        if isinstance(protocol, HttpConnection):  # a client that leaves wakes the downstream (it then ends)
            protocol.on_lost = session.channel.wake.set
        try:
            if longpoll:
                return await self.poll(request, session, handover, headers, heartbeat)
            return await self.stream(request, session, handover, headers, heartbeat)
        finally:
            if isinstance(protocol, HttpConnection):
                protocol.on_lost = None
            if session.downstream is handover:
                session.downstream = None
                if not session.channel.closed:
                    session.arm()

    async def poll(
        self,
        request: web.BaseRequest,
        session: WseSession,
        handover: asyncio.Event,
        headers: CIMultiDict[str],
        heartbeat: float,
    ) -> web.StreamResponse:
        """Long-polling: one response with ``Content-Length`` once there is something to send (or a no-op)."""
        channel = session.channel
        transport = request.transport
        data = channel.take()
        while not data and not channel.finishing and not handover.is_set():
            if not await _wait(channel.wake, heartbeat) or transport is None or transport.is_closing():
                break  # (a client that left: what is pending stays for its next request)
            data = channel.take()
        if not data:
            data = NOP
        if not channel.finishing or not data.endswith(RECONNECT):
            data += RECONNECT
        return _answer(web.Response(status=200, body=data, headers=headers), session.envelope)

    async def stream(
        self,
        request: web.BaseRequest,
        session: WseSession,
        handover: asyncio.Event,
        headers: CIMultiDict[str],
        heartbeat: float,
    ) -> web.StreamResponse:
        """Streaming: frames as they come until a RECONNECT ends this response (``.kb``, a newer downstream, close)."""
        channel = session.channel
        inner = b""
        if session.envelope is not None:  # httpxe: the real head first in the body, the outer one plain text
            inner = f"HTTP/1.1 200 OK\r\nContent-Type: {headers['Content-Type']}\r\n\r\n".encode()
            headers["Content-Type"] = session.envelope
        response = CloseDelimited(status=200, headers=headers)
        await response.prepare(request)
        if inner:
            await response.write(inner)
        query = request.query
        pad = _int(query.get(".kp"), 0, 4096)
        if pad:
            await response.write(padding(pad))
        budget = _int(query.get(".kb"), 0, 1 << 20) * 1024 or None
        sent = 0
        transport = request.transport
        while True:
            data = channel.take()
            if data:
                await response.write(data)
                sent += len(data)
            if channel.finishing:
                if channel.lost or not data and not channel.pending:
                    break  # dropped (no CLOSE), or CLOSE + RECONNECT written
                continue
            if handover.is_set() or budget is not None and sent >= budget:
                await response.write(RECONNECT)
                break
            if transport is None or transport.is_closing():
                break
            if not await _wait(channel.wake, heartbeat):
                await response.write(NOP)
        await response.write_eof()
        return response

    # -- CORS -------------------------------------------------------------------------------

    def preflight(self, handshake: Handshake, admission: Admission) -> web.StreamResponse:
        """A cross-origin client's preflight: the service's cross-site constraints decide, and the WSE protocol's
        own headers need not be listed in them (Kaazing allowed them implicitly)."""
        constraints = tuple(
            replace(c, allow_headers=tuple(c.allow_headers) + tuple(WSE_HEADERS)) for c in admission.cross_site
        )
        headers = handshake.headers
        status, granted = preflight(
            headers.get("Origin"),
            headers.get("Access-Control-Request-Method"),
            headers.get("Access-Control-Request-Headers"),
            admission.own_origin(handshake),
            constraints,
        )
        return web.Response(status=status, headers=granted)

    async def shutdown(self, timeout: float) -> None:
        """Wait (bounded) for the sessions' tasks; the gateway has already closed their connections."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)


def _create_checks(request: web.BaseRequest) -> int:
    """SPEC "Server Handshake Requirements": 400 unless they hold; the create's sequence number."""
    if request.method not in ("POST", "GET"):
        raise WseError("a create request must be a POST")
    if request.headers.get("X-WebSocket-Version", "").strip() != VERSION:
        raise WseError("X-WebSocket-Version must be wseb-1.0")
    commands = request.headers.get("X-Accept-Commands")
    if commands is not None and commands.strip().lower() != "ping":
        raise WseError("X-Accept-Commands must be ping")
    return parse_sequence(_sequence_text(request))


def _sequence_text(request: web.BaseRequest) -> str | None:
    """The request's sequence number as sent: ``X-Sequence-No`` or ``.ksn``, once. Two that differ (header
    lines, query parameters, or one of each) are refused, not chosen from: one reader of the request must
    not see another number than the next (a proxy or a log)."""
    sent = (*request.headers.getall("X-Sequence-No", ()), *request.query.getall(".ksn", ()))
    given = {value.strip() for value in sent if value.strip()}
    if len(given) > 1:
        raise WseError("ambiguous sequence number")
    return next(iter(given), None)


def _with_subprotocols(handshake: Handshake) -> Handshake:
    """The create as admission and the service see it: ``X-WebSocket-Protocol`` is the offer of subprotocols
    (where a realm may also find a token offer, as in ``Sec-WebSocket-Protocol``).

    Every line of both headers makes up the one offer: a token in a second line, or in the other header, must
    reach the realm (which refuses two token offers as ambiguous), never be dropped unseen."""
    offered = handshake.headers.getall("X-WebSocket-Protocol", [])
    if not offered:
        return handshake
    headers = CIMultiDict(handshake.headers)
    lines = [*headers.popall("Sec-WebSocket-Protocol", []), *offered]
    headers["Sec-WebSocket-Protocol"] = ", ".join(line.strip() for line in lines if line.strip())
    return replace(handshake, headers=CIMultiDictProxy(headers))


def _choose(offered: str | None, protocols: tuple[str, ...]) -> str | None:
    """The first subprotocol the client offered that the service speaks (client preference, as natively)."""
    if not offered:
        return None
    for name in (p.strip() for p in offered.split(",")):
        if name and name in protocols:
            return name
    return None


def _base_url(request: web.BaseRequest, handshake: Handshake) -> str:
    """The create URL up to (not including) ``/;e/``: the spec wants the same host and a path under it."""
    scheme = "https" if request.secure else "http"
    path = request.path.split(EMULATION_MARK, 1)[0]
    return f"{scheme}://{request.host}{path}"


def _echo_query(request: web.BaseRequest) -> str:
    """Nothing of the create's query is echoed (it may carry credentials)."""
    return ""


async def _read(request: web.BaseRequest, limit: int) -> bytes | None:
    """The upstream body, or None if it is over ``limit`` (refused before reading if declared so)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return None
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _wait(wake: asyncio.Event, timeout: float) -> bool:
    """Until there is something to send, the end, or a newer downstream (all set ``wake``); False after ``timeout``."""
    if not wake.is_set():
        try:
            async with asyncio.timeout(timeout):
                await wake.wait()
        except TimeoutError:
            return False
    wake.clear()
    return True


async def _linger(channel: EmulatedChannel, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while channel.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def _seconds(text: str | None, default: float) -> float:
    """``.kkt``: a heartbeat interval the client asks for, 1 s to the default."""
    value = _int(text, 0, 3600)
    return float(min(value, default)) if value else default


def _int(text: str | None, low: int, high: int) -> int:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 9:
        return low
    return max(low, min(int(text), high))


# httpxe (k3po ``specification/httpxe/SPEC.md``, "Response Headers"): these stay on the outer response.
_OUTER_HEADERS = frozenset(
    {"cache-control", "connection", "content-encoding", "date", "etag", "last-modified", "pragma", "server"}
    | {"set-cookie", "transfer-encoding", "x-content-type-options", "content-length", "vary"}
)
ENVELOPE_TYPE = "application/x-message-http"


def enveloped(request: web.BaseRequest) -> str | None:
    """The outer content type if the client wants answers in an httpxe envelope, else None.

    Kaazing's JavaScript client asks for it explicitly (``.kac=ex``, ``.kct=application/x-message-http``) or
    shows it cannot read statuses other than 200 by speaking through its bridge (``X-Origin``); it then reads
    the real status (a 401 and its challenge, the 201) from the body."""
    if request.query.get(".kct") == ENVELOPE_TYPE or request.headers.get("Content-Type") == ENVELOPE_TYPE:
        return ENVELOPE_TYPE
    if request.query.get(".kac") == "ex" or "X-Origin" in request.headers:
        return "text/plain;charset=UTF-8"
    return None


def _answer(response: web.StreamResponse, wrap: str | None) -> web.StreamResponse:
    """``response`` as it is, or in an httpxe envelope: 200 outside, the real status, headers and body inside.
    404 and server errors are never enveloped (httpxe "Response Status Codes")."""
    status = response.status
    if wrap is None or status == 404 or status >= 500 or not isinstance(response, web.Response):
        return response
    outer: CIMultiDict[str] = CIMultiDict()
    lines = [f"HTTP/1.1 {status} {response.reason}"]
    for name, value in response.headers.items():
        if name.lower() in _OUTER_HEADERS or name.lower().startswith("access-control-"):
            if name.lower() != "content-length":
                outer.add(name, value)
        else:
            lines.append(f"{name}: {value}")
    body = response.body if isinstance(response.body, bytes) else b""
    outer["Content-Type"] = wrap
    outer.setdefault("Cache-Control", "no-cache")
    return web.Response(status=200, body=("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, headers=outer)


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, headers=headers)
