"""The layered DMZ: both ends of a tunnel, and the tunnel listener (docs/dmz.md).

* ``DmzProxy`` (a ``proxy`` whose connect-options name ``socks.mode reverse``): the DMZ gateway's
  public service. Admission (realm, Origin, limits) has already run, so a client that fails it never
  touches a tunnel. It takes a ready tunnel (none: 503 with Retry-After), sends a signed, single-use
  identity assertion inward, and answers 101 only once the internal gateway said ``ready``.
* ``TunnelEndpoint`` (``dmz.tunnel``, made by the config builder): where the internal gateway's
  tunnels arrive (mTLS, client certificate required); each waits in its service's ``DmzPool``.
* ``InternalProxy`` (a ``proxy`` whose accept-options name ``socks.mode reverse``): the internal
  gateway's service. Nothing listens: it keeps ``prepared.connection.count`` tunnels dialled out,
  verifies each assertion (pinned key, EdDSA only, audience, service, expiry, replay), applies its own
  ``authorization-constraint``, dials its back end and relays.

The tunnel protocol: the first message on a tunnel is the DMZ's JSON ``{"type": "open", "assertion",
"protocols"}``; the internal gateway answers ``{"type": "ready", "protocol"}``, ``{"type": "refused"}``
or ``{"type": "unavailable", "code"}``; after ``ready`` the tunnel carries the client's messages as they
are (text stays text, binary stays binary) and its close code is the client's. One tunnel per client
connection: a slow client stalls only its own tunnel.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from collections import deque

from cryptography.x509.oid import NameOID

from ..config.model import Service, TlsOptions, Tunnel
from ..config.values import Uri
from ..core.channel import Channel, Data
from ..core.close import CloseCode, server_may_send
from ..core.handshake import Accept, Handshake, Reply
from ..core.peer import PeerIdentity
from ..core.session import LiveSession
from ..errors import BackendError, ConfigError
from ..observe.logs import LogLimiter
from ..security.assertion import (
    AssertionRefused,
    AssertionVerifier,
    load_private_key,
    load_public_key,
    sign,
)
from ..security.challenges import offered_subprotocols, without_token_offers
from ..security.realms import authorized
from ..security.tls import client_context
from ..transport.backend import Backend, TcpBackend, WsBackend
from ..transport.tcp_leg import TcpLeg
from ..transport.tunnel import ClientChannel, TunnelDialer
from .base import Runtime, ServiceType, WebSocketService, audit
from .messages import MessageService
from .proxy import ProxyService

log = logging.getLogger("wsgate.dmz")

DEFAULT_PREPARED = 4  # tunnels an internal gateway keeps ready per service when prepared.connection.count is unset
TUNNEL_MESSAGE_SIZE = 16 * 1024 * 1024  # the tunnel carries what both ends already limited
RETRY_AFTER = "1"
FIRST_RETRY = 0.05


def service_key(uri: Uri) -> str:
    """What both gateways call a tunnelled service: the DMZ's connect URI = the internal gateway's accept URI."""
    return f"{uri.scheme}://{uri.host}:{uri.port}{uri.path.rstrip('/') or '/'}"


def next_backoff(previous: float, cap: float) -> float:
    """Re-dial delays: 50 ms, doubling, never above ``socks.retry.maximum.interval``."""
    return min(cap, FIRST_RETRY if previous <= 0 else previous * 2)


def identity_line(claims_json: dict[str, object]) -> bytes:
    """The first line a tcp back end of a tunnelled service reads with ``identity.injection line``."""
    return b"WSGATE-IDENTITY " + json.dumps(claims_json, separators=(",", ":"), sort_keys=True).encode() + b"\r\n"


def peer_allowed(peer: PeerIdentity, peers: tuple[str, ...]) -> bool:
    """Is the tunnel's client certificate one ``tunnel.peer`` names (common name, or ``sha256:`` fingerprint)?"""
    names = {attribute.value for attribute in peer.name.get_attributes_for_oid(NameOID.COMMON_NAME)}
    for wanted in peers:
        if wanted.lower().startswith("sha256:"):
            if hmac.compare_digest(wanted[7:].replace(":", "").lower(), peer.fingerprint_sha256):
                return True
        elif wanted in names:
            return True
    return False


# -- the DMZ gateway -------------------------------------------------------------------------------


class DmzTunnel:
    """One tunnel as the DMZ gateway holds it: idle in a pool, then carrying one client, then gone."""

    __slots__ = ("id", "channel", "peer", "watcher", "done")

    def __init__(self, tunnel_id: str, channel: Channel, peer: PeerIdentity) -> None:
        self.id = tunnel_id
        self.channel = channel
        self.peer = peer  # its certificate: checked again when tunnel.peer changes (a reload)
        self.watcher: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class DmzPool:
    """The ready tunnels of one tunnelled service at the DMZ gateway.

    An idle tunnel is read by a watcher: the internal gateway never speaks first, so anything it reads
    (its close, a lost connection, a stray message) ends the tunnel.
    """

    def __init__(self, name: str, runtime: Runtime, peers: tuple[str, ...] = ()) -> None:
        self.name = name
        self.runtime = runtime
        self.peers = peers  # tunnel.peer: who may carry these tunnels (empty: nobody)
        self.owner: object = None  # the DmzProxy serving this pool (a reload hands it on to its successor)
        self.idle: deque[DmzTunnel] = deque()
        self.in_use = 0
        self.exhausted = 0
        self.accepted = 0

    def add(self, tunnel: DmzTunnel) -> None:
        self.accepted += 1
        self.idle.append(tunnel)
        tunnel.watcher = asyncio.get_running_loop().create_task(self._watch(tunnel))
        self._gauges()

    async def _watch(self, tunnel: DmzTunnel) -> None:
        data = await tunnel.channel.receive()
        if data is not None:
            await tunnel.channel.close(CloseCode.PROTOCOL_ERROR, "tunnel spoke first")
        try:
            self.idle.remove(tunnel)
        except ValueError:
            pass
        tunnel.finish()
        self._gauges()

    def sweep(self) -> None:
        """Close the ready tunnels of certificates ``tunnel.peer`` no longer names (a reload narrowed it)."""
        for tunnel in list(self.idle):
            if not peer_allowed(tunnel.peer, self.peers):
                self.idle.remove(tunnel)
                tunnel.channel.close_soon(CloseCode.POLICY_VIOLATION, "not a tunnel.peer", 1.0)
        self._gauges()

    async def take(self) -> DmzTunnel | None:
        """A ready tunnel, its watcher stopped; None when there is none (the caller answers 503)."""
        while self.idle:
            tunnel = self.idle.popleft()
            watcher = tunnel.watcher
            if watcher is None or watcher.done() or tunnel.channel.closed:
                continue
            if not peer_allowed(tunnel.peer, self.peers):
                tunnel.channel.close_soon(CloseCode.POLICY_VIOLATION, "not a tunnel.peer", 1.0)
                continue
            watcher.cancel()
            try:
                await watcher
            except asyncio.CancelledError:
                pass
            if watcher.cancelled() and not tunnel.channel.closed:
                self.in_use += 1
                self._gauges()
                return tunnel
        self.exhausted += 1
        self._gauges()
        return None

    def release(self, tunnel: DmzTunnel) -> None:
        """A claimed tunnel is spent (once: a second release of the same tunnel changes nothing)."""
        if tunnel.done.done():
            return
        self.in_use -= 1
        tunnel.finish()
        self._gauges()

    def _gauges(self) -> None:
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.tunnel_ready.labels(self.name).set(len(self.idle))
            metrics.tunnel_in_use.labels(self.name).set(self.in_use)

    def view(self) -> dict[str, object]:
        """For the management API: pool size, in use, and the ids of the ready tunnels."""
        return {
            "service": self.name,
            "side": "dmz",
            "ready": len(self.idle),
            "in_use": self.in_use,
            "accepted": self.accepted,
            "exhausted": self.exhausted,
            "tunnels": [t.id for t in self.idle],
        }


class TunnelBackend:
    """A claimed tunnel as the DMZ's proxy relays it: a ``transport.backend.Backend`` over a ``Channel``."""

    def __init__(self, pool: DmzPool, tunnel: DmzTunnel, protocol: str | None) -> None:
        self.pool = pool
        self.tunnel = tunnel
        self.channel = tunnel.channel
        self.protocol = protocol
        self.receive = tunnel.channel.receive
        self.send = tunnel.channel.send
        self.transport = None
        self._released = False

    def finish(self) -> None:
        """WebSocket has no half-close: ``close`` ends the tunnel."""

    @property
    def close_code(self) -> int | None:
        return self.channel.peer_close[0]

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        try:
            if not self.channel.closed:
                await asyncio.wait_for(self.channel.close(code, reason), 5.0)
        except (OSError, TimeoutError):
            self.channel.abort()
        finally:
            if not self._released:
                self._released = True
                self.pool.release(self.tunnel)


class TunnelEndpoint(WebSocketService):
    """``dmz.tunnel``: the DMZ gateway's listener for the internal gateway's tunnels (never in a config file)."""

    TYPE = ServiceType(name="dmz.tunnel", accept=("wss",), descriptors_per_connection=1)
    writer_limit = 256 * 1024

    def __init__(self, config: Service, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.unknown_lines = LogLimiter("tunnel for an unknown service")

    async def prepare(self, handshake: Handshake, accept: Accept) -> tuple[tuple[str, ...], object]:
        name = handshake.header("Wsgate-Tunnel") or ""
        pool = self.runtime.tunnels.get(name)
        tunnel_id = handshake.header("Wsgate-Tunnel-Id") or secrets.token_urlsafe(9)
        peer = handshake.peer
        pools = [p for p in self.runtime.tunnels.values() if isinstance(p, DmzPool)]
        # A certificate no pool names is refused alike whatever service it names (no 404/403 oracle on the
        # internal services' URIs); no tunnel.peer names nobody (the config requires one).
        wanted = [pool] if isinstance(pool, DmzPool) else pools
        if peer is None or not any(peer_allowed(peer, p.peers) for p in wanted):
            audit.info(
                "tunnel refused",
                service=pool.name if isinstance(pool, DmzPool) else None,
                remote=handshake.remote,
                decision="denied",
                status=403,
                reason=f"certificate {peer.subject if peer else None} is not a tunnel.peer",
            )
            return (), Reply.text(403, "Forbidden\n")
        if not isinstance(pool, DmzPool):
            if self.unknown_lines.allow():
                log.warning(
                    "service[%s]: tunnel for unknown service %.200r from %s refused", self.name, name, handshake.remote
                )
            return (), Reply.text(404, "Not Found\n")
        return (), (pool, tunnel_id[:32], peer)

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        context = session.context
        assert isinstance(context, tuple)
        pool: DmzPool = context[0]
        tunnel_id: str = context[1]
        session.transport = "tunnel"
        session.tunnel = tunnel_id
        tunnel = DmzTunnel(tunnel_id, channel, context[2])
        pool.add(tunnel)
        await tunnel.done


class DmzProxy(ProxyService):
    """A proxy whose back end is "a tunnel from the internal gateway": the DMZ end."""

    def __init__(self, config: Service, runtime: Runtime) -> None:
        MessageService.__init__(self, config, runtime)  # not ProxyService: it dials no back end
        tunnel = config.connect_options.tunnel
        assert tunnel is not None
        self.tunnel: Tunnel = tunnel
        self.uri = config.connects[0]
        self.max_pending = config.setting("maximum.pending.bytes", 64 * 1024)
        self.writer_limit = self.max_pending
        self.deferred = False
        self.ssl = None
        self.dialer = None
        self.liveness = None
        self.key_name = service_key(self.uri)
        try:
            self.signing_key = load_private_key(tunnel.key_files[0])
        except (OSError, ValueError) as exc:
            raise ConfigError(f"service[{self.name}]/connect-options/tunnel.assertion.key", str(exc)) from None
        pool = runtime.tunnels.get(self.key_name)  # shared across reloads (the gateway carries runtime.tunnels)
        self.pool: DmzPool = pool if isinstance(pool, DmzPool) else DmzPool(self.name, runtime)
        self.previous: DmzProxy | None = None  # the handler this one took the pool from (a reload)
        self.stopped = False

    async def start(self) -> None:
        """Serve the pool: a reload keeps its ready tunnels and applies the new ``tunnel.peer`` to them too."""
        pool = self.pool
        owner = pool.owner
        self.previous = owner if isinstance(owner, DmzProxy) and owner is not self else None
        pool.owner, pool.name, pool.peers = self, self.name, self.tunnel.peers
        self.runtime.tunnels[self.key_name] = pool
        pool.sweep()

    async def stop(self) -> None:
        """The pool's ready tunnels close with the service, not when a successor took the pool over."""
        self.stopped = True
        pool = self.pool
        if pool.owner is not self:  # a reload changed the service: the new handler serves these tunnels
            return
        previous = self.previous
        if previous is not None and not previous.stopped:  # a reload that failed: the running handler's again
            pool.owner, pool.name, pool.peers = previous, previous.name, previous.tunnel.peers
            return
        if self.runtime.tunnels.get(self.key_name) is pool:
            del self.runtime.tunnels[self.key_name]
        for tunnel in list(pool.idle):
            tunnel.channel.close_soon(CloseCode.GOING_AWAY, "gateway stopping", 1.0)

    async def prepare(self, handshake: Handshake, accept: Accept) -> tuple[tuple[str, ...], object]:
        tunnel = await self.pool.take()
        if tunnel is None:
            if self.runtime.metrics is not None:
                self.runtime.metrics.tunnel_exhausted.labels(self.name).inc()
            log.warning("service[%s]: no ready tunnel for %s; 503", self.name, handshake.remote)
            return (), Reply.text(503, "Service Unavailable\n", (("Retry-After", RETRY_AFTER),))
        try:
            return await self.ask_inward(tunnel, handshake, accept)
        except BaseException:  # the client's task was cancelled mid-question: the tunnel is spent, not leaked
            tunnel.channel.close_soon(CloseCode.GOING_AWAY, "client gone", 1.0)
            self.pool.release(tunnel)
            raise

    async def ask_inward(
        self, tunnel: DmzTunnel, handshake: Handshake, accept: Accept
    ) -> tuple[tuple[str, ...], object]:
        """Send the assertion over ``tunnel`` and turn the internal gateway's answer into the upgrade's."""
        assertion = sign(
            self.signing_key,
            issuer=self.tunnel.issuer,
            audience=self.tunnel.audience,
            identity=accept.identity,
            service=self.key_name,
            remote=handshake.remote,
        )
        offered = without_token_offers(offered_subprotocols(handshake.header("Sec-WebSocket-Protocol")))
        request = {"type": "open", "assertion": assertion, "protocols": list(offered)}
        answer: dict[str, object] | None = None
        try:
            await tunnel.channel.send(json.dumps(request))
            data = await asyncio.wait_for(tunnel.channel.receive(), self.tunnel.timeout)
            parsed = json.loads(data) if isinstance(data, str) else None
            answer = parsed if isinstance(parsed, dict) else None
        except (OSError, TimeoutError, ValueError):
            answer = None
        kind = answer.get("type") if answer else None
        if answer is not None and kind == "ready":
            protocol = answer.get("protocol")
            chosen = protocol if isinstance(protocol, str) and protocol in offered else None
            return ((chosen,) if chosen else ()), TunnelBackend(self.pool, tunnel, chosen)
        # The tunnel is spent either way; its close runs on its own (an internal end that does not answer must
        # not delay the client's answer), aborted if the other end does not take it within a second.
        spent = CloseCode.NORMAL if kind in ("unavailable", "refused") else CloseCode.PROTOCOL_ERROR
        tunnel.channel.close_soon(spent, "", 1.0)
        self.pool.release(tunnel)
        if answer is not None and kind == "unavailable":
            code = answer.get("code")
            close_code = code if isinstance(code, int) and code in (1011, 1014) else CloseCode.INTERNAL_ERROR
            return (), BackendError("the internal gateway's back end is unavailable", close_code)
        if kind == "refused":
            audit.info(
                "authentication denied",
                service=self.name,
                realm=accept.identity.realm if accept.identity else None,
                remote=handshake.remote,
                decision="denied",
                status=403,
                reason="refused by the internal gateway",
            )
            return (), Reply.text(403, "Forbidden\n")
        log.warning("service[%s]: tunnel %s gave no answer; 503 for %s", self.name, tunnel.id, handshake.remote)
        return (), Reply.text(503, "Service Unavailable\n", (("Retry-After", RETRY_AFTER),))

    async def abandon(self, context: object) -> None:
        if isinstance(context, TunnelBackend):
            await context.close(CloseCode.GOING_AWAY, "client gone")

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        prepared = session.context
        if isinstance(prepared, BackendError):
            await self.refuse(session, channel, prepared)
            return
        assert isinstance(prepared, TunnelBackend)
        session.transport = "tunnel"
        session.tunnel = prepared.tunnel.id
        try:
            await self.relay(session, channel, prepared)  # type: ignore[arg-type]
        finally:
            await prepared.close(*self.client_close(channel))

    @staticmethod
    def backend_close(backend: Backend | TcpLeg) -> tuple[int, str]:
        """The internal gateway's close of the tunnel → the client's (1001 when it went away)."""
        code = backend.close_code
        if code is not None and server_may_send(code):
            return code, "going away" if code == CloseCode.GOING_AWAY else "back end closed"
        return (
            (CloseCode.NORMAL, "back end closed")
            if code == CloseCode.NO_STATUS
            else (CloseCode.INTERNAL_ERROR, "back end connection lost")
        )


# -- the internal gateway ----------------------------------------------------------------------------


class InternalProxy(ProxyService):
    """A proxy whose clients arrive through tunnels it dials out to a DMZ gateway: the internal end."""

    def __init__(self, config: Service, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        tunnel = config.accept_options.tunnel
        assert tunnel is not None
        self.tunnel: Tunnel = tunnel
        self.key_name = service_key(config.accepts[0])
        self.prepared: int = config.setting("prepared.connection.count", DEFAULT_PREPARED) or DEFAULT_PREPARED
        self.injection: str = config.setting("identity.injection", "none")
        path = f"service[{self.name}]/accept-options"
        try:
            keys = tuple(load_public_key(key_file) for key_file in tunnel.key_files)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}/tunnel.assertion.public-key", str(exc)) from None
        self.verifier = AssertionVerifier(keys, audience=tunnel.audience, issuer=tunnel.issuer)
        first = runtime.keys.keys[0].alias if runtime.keys and runtime.keys.keys else None
        alias = tunnel.client_certificate or first
        trusted = runtime.trust.trusted_pem if runtime.trust else None
        context = client_context(TlsOptions(client_certificate=alias), trusted, runtime.keys, path)
        heartbeat = (config.accept_options.inactivity_timeout or 30.0) / 2
        self.tunnels = TunnelDialer(tunnel.rendezvous, context, heartbeat, config.accept_options.max_message_size)
        self.slots: set[asyncio.Task[None]] = set()
        self.idle: dict[str, ClientChannel] = {}
        self.in_use = 0
        self.redials = 0
        self.dial_failures = 0
        self.stopping = False
        self.replaced: InternalProxy | None = None  # the handler whose /api/tunnels entry start() took over
        self.failure_lines = 0
        self.announced = False  # "tunnels ready" logged since the last loss

    async def start(self) -> None:
        await super().start()
        self.tunnels.start()
        self.stopping = False
        entry = f"internal {self.key_name}"
        replaced = self.runtime.tunnels.get(entry)
        self.replaced = replaced if isinstance(replaced, InternalProxy) and replaced is not self else None
        if self.replaced is not None:  # a reload: assertions the running handler accepted stay replays here
            self.verifier.replay = self.replaced.verifier.replay
        self.runtime.tunnels[entry] = self  # for the management API's /api/tunnels
        for _ in range(self.prepared):
            self.spawn_slot()

    def spawn_slot(self) -> None:
        if self.stopping:
            return
        task = asyncio.get_running_loop().create_task(self.slot())
        self.slots.add(task)
        task.add_done_callback(self.slots.discard)

    def going_away(self, grace: float) -> None:
        """Stop dialling; ready tunnels close with 1001 (the DMZ drops them from its pool)."""
        self.stopping = True
        for channel in list(self.idle.values()):
            channel.close_soon(CloseCode.GOING_AWAY, "gateway stopping", grace)

    def retiring(self) -> None:
        """A reload replaced this service: its ready tunnels must not carry a client under the old config (the
        new handler dialled its own before the switch)."""
        self.going_away(1.0)

    async def stop(self) -> None:
        self.going_away(1.0)
        slots = list(self.slots)
        for task in slots:
            task.cancel()
        if slots:
            await asyncio.wait(slots, timeout=5.0)
        await self.tunnels.close()
        entry = f"internal {self.key_name}"
        if self.runtime.tunnels.get(entry) is self:
            replaced = self.replaced
            if replaced is not None and not replaced.stopping:  # a reload that failed: the running handler again
                self.runtime.tunnels[entry] = replaced
            else:
                del self.runtime.tunnels[entry]
        await super().stop()

    def _gauges(self) -> None:
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.tunnel_ready.labels(self.name).set(len(self.idle))
            metrics.tunnel_in_use.labels(self.name).set(self.in_use)

    def view(self) -> dict[str, object]:
        return {
            "service": self.name,
            "side": "internal",
            "dmz": self.tunnel.rendezvous.raw,
            "prepared": self.prepared,
            "ready": len(self.idle),
            "in_use": self.in_use,
            "redials": self.redials,
            "dial_failures": self.dial_failures,
            "tunnels": list(self.idle),
        }

    async def slot(self) -> None:
        """One prepared connection: dial (backing off), wait to be claimed, then carry that one client."""
        delay = 0.0
        metrics = self.runtime.metrics
        while not self.stopping:
            tunnel_id = secrets.token_urlsafe(9)
            try:
                channel = await self.tunnels.dial(self.key_name, tunnel_id)
            except BackendError as exc:
                self.dial_failures += 1
                self.announced = False
                if metrics is not None:
                    metrics.tunnel_dials.labels(self.name, "failed").inc()
                delay = next_backoff(delay, self.tunnel.retry_max)
                if self.failure_lines < 3 or delay >= self.tunnel.retry_max and self.dial_failures % 100 == 0:
                    self.failure_lines += 1
                    log.warning("service[%s]: tunnel to %s: %s; retrying", self.name, self.tunnel.rendezvous, exc)
                await asyncio.sleep(delay)
                continue
            delay = 0.0
            self.failure_lines = 0
            if metrics is not None:
                metrics.tunnel_dials.labels(self.name, "ok").inc()
            self.idle[tunnel_id] = channel
            self._gauges()
            if len(self.idle) >= self.prepared and not self.announced:
                self.announced = True  # once per outage: the operator sees the pool is back
                log.info("service[%s]: %d tunnel(s) ready to %s", self.name, len(self.idle), self.tunnel.rendezvous)
            try:
                first = await channel.receive()
            except asyncio.CancelledError:
                await channel.close(CloseCode.GOING_AWAY, "gateway stopping")
                raise
            finally:
                self.idle.pop(tunnel_id, None)
                self._gauges()
            if first is None:  # the DMZ gateway closed it or went away: dial again
                self.announced = False
                if not self.stopping:
                    self.redials += 1
                    if metrics is not None:
                        metrics.tunnel_redials.labels(self.name).inc()
                continue
            self.spawn_slot()  # the pool grows back while this tunnel carries its client
            self.in_use += 1
            self._gauges()
            try:
                await self.carry(channel, tunnel_id, first)
            except Exception:
                log.exception("service[%s]: tunnel %s failed; closing it with 1011", self.name, tunnel_id)
                await channel.close(CloseCode.INTERNAL_ERROR, "internal error")
            finally:
                self.in_use -= 1
                self._gauges()
                if not channel.closed:
                    await channel.close(CloseCode.GOING_AWAY, "")
            return

    def count(self, outcome: str) -> None:
        if self.runtime.metrics is not None:
            self.runtime.metrics.tunnel_assertions.labels(self.name, outcome).inc()

    async def refuse_open(self, channel: ClientChannel, why: str, outcome: str, remote: str = "?") -> None:
        """Nothing of a bad assertion becomes a connection: audited, answered ``refused``, closed with 1008."""
        self.count(outcome)
        audit.info(
            "tunnel assertion refused",
            service=self.name,
            remote=remote,
            decision="denied",
            reason=why,
        )
        try:
            await channel.send(json.dumps({"type": "refused"}))
        except OSError:
            pass
        await channel.close(CloseCode.POLICY_VIOLATION, "refused")

    async def carry(self, channel: ClientChannel, tunnel_id: str, first: Data) -> None:
        """A claimed tunnel: verify, authorize, dial the back end, answer ``ready``, relay."""
        try:
            request = json.loads(first) if isinstance(first, str) else None
        except ValueError:
            request = None
        if not isinstance(request, dict) or request.get("type") != "open":
            await self.refuse_open(channel, "not an open request", "refused")
            return
        try:
            claims = self.verifier.verify(str(request.get("assertion", "")), self.key_name)
        except AssertionRefused as exc:
            await self.refuse_open(channel, str(exc), "refused")
            return
        identity = claims.identity()
        constraints = self.config.authorization_constraints
        if constraints and (not identity.user or not authorized(identity.roles, constraints)):
            await self.refuse_open(channel, "authorization-constraint not met", "forbidden", claims.remote)
            return
        if await self.revoked(identity):
            await self.refuse_open(channel, "revoked", "forbidden", claims.remote)
            return
        self.count("accepted")
        offered = request.get("protocols")
        protocols = tuple(p for p in offered if isinstance(p, str)) if isinstance(offered, list) else ()
        try:
            backend = await self.open_backend(protocols)
        except BackendError as exc:
            log.warning("service[%s]: back end %s; tunnel %s answered unavailable", self.name, exc, tunnel_id)
            if self.runtime.metrics is not None:
                self.runtime.metrics.backend_failures.labels(self.name).inc()
            await channel.send(json.dumps({"type": "unavailable", "code": exc.close_code}))
            await channel.close(CloseCode.NORMAL, "")
            return
        await self.serve_tunnel(channel, tunnel_id, claims.remote, identity, backend, claims)

    async def serve_tunnel(self, channel, tunnel_id, remote, identity, backend, claims) -> None:  # type: ignore[no-untyped-def]
        try:
            if self.injection == "line" and isinstance(backend, (TcpBackend, TcpLeg)):
                await backend.send(
                    identity_line(
                        {
                            "sub": claims.subject,
                            "roles": sorted(claims.roles),
                            "realm": claims.realm,
                            "remote": claims.remote,
                            "iss": claims.issuer,
                            "jti": claims.token_id,
                        }
                    )
                )
            chosen = backend.protocol if isinstance(backend, WsBackend) else None
            await channel.send(json.dumps({"type": "ready", "protocol": chosen}))
        except OSError:
            await backend.close(CloseCode.GOING_AWAY, "client gone")
            return
        session = LiveSession(secrets.token_urlsafe(16), self.name, channel, remote, None, identity)
        session.transport = "tunnel"
        session.tunnel = tunnel_id
        session.expire_at(identity.expires_at)
        self.register(session)
        guarded = self.channel_for(session, channel)  # this end's authorization-rule and message.policy
        try:
            await self.relay(session, guarded, backend)
        except OSError as exc:
            self.lost(session, exc)
        finally:
            await backend.close(*self.client_close(channel))
            session.cancel_expiry()
            self.deregister(session)
            if not channel.closed:
                await channel.close()
            self.closed(session)


ProxyService.ends.update(dmz=DmzProxy, internal=InternalProxy)


__all__ = [
    "DmzPool",
    "DmzProxy",
    "InternalProxy",
    "TunnelEndpoint",
    "next_backoff",
    "service_key",
]
