"""``proxy``: each accepted WebSocket gets its own back-end connection.

Full duplex with backpressure both ways: a side is read only while the other
side has fewer than ``maximum.pending.bytes`` queued. Client close half-closes a
TCP back end and is relayed to a ws back end (code and reason); back-end EOF
closes the client with 1000; back-end failures close the client with 1011 (back
end unavailable / lost) or 1014 (TLS or handshake refused).

Two ways to carry the bytes, with the same guarantees: the relay (two tasks over
``Channel`` and ``Backend``: any client adapter, any back end, message rules and
policy), and the splice (transport/splice.py: a picows client and a tcp/ssl back
end with nothing to decide per message, bytes handed over in the transports'
callbacks). A reload that adds rules hands a spliced connection to the relay.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from ..config.model import DEFAULT_MAX_PENDING_BYTES, Service
from ..config.schema import Property
from ..config.values import parse_choice, parse_count, parse_size
from ..core.channel import Channel
from ..core.close import CloseCode, client_may_send, server_may_send
from ..core.handshake import Handshake
from ..core.session import LiveSession
from ..errors import BackendError
from ..security.challenges import offered_subprotocols, without_token_offers
from ..security.tls import client_context
from ..transport.backend import Backend, TcpBackend, WsBackend, WsDialer, open_tcp
from ..transport.liveness import ResetWatch
from ..transport.tcp_leg import EOF, LOST, RULES, TcpLeg, open_leg

try:  # the splice needs the picows data path (the "fast" extra)
    from ..transport.splice import splice as splice_leg
except ImportError:  # pragma: no cover - picows not installed: the relay carries every connection
    splice_leg = None  # type: ignore[assignment]
from .base import Runtime, ServiceType
from .messages import MESSAGE_RULES, POLICY_PROPERTY, MessageService

log = logging.getLogger("wsgate.proxy")


def parse_connect_strategy(text: str) -> str:
    """``immediate`` (dial before the 101), ``deferred`` (after it), or ``prepared`` (a DMZ gateway's ready
    tunnels; the config builder refuses it elsewhere)."""
    return parse_choice(text, ("immediate", "deferred", "prepared"))


def parse_injection(text: str) -> str:
    """``identity.injection``: ``none`` or ``line`` (a tunnelled service's first line to a tcp back end)."""
    return parse_choice(text, ("none", "line"))


class ProxyService(MessageService):
    """Messages both ways pass the message policy (``MessageService``): ``send`` rules before the back end,
    ``receive`` rules before the client."""

    TYPE = ServiceType(
        name="proxy",
        accept=("ws", "wss"),
        connect=(1, 1),
        properties={
            "maximum.pending.bytes": Property("?", parse_size),
            "connect.strategy": Property("?", parse_connect_strategy),
            # DMZ tunnels (docs/dmz.md): the internal end's pool, and what its tcp back end learns of the client
            "prepared.connection.count": Property("?", parse_count),
            "identity.injection": Property("?", parse_injection),
            **POLICY_PROPERTY,
        },
        tunnels=True,
        rules=MESSAGE_RULES,
        descriptors_per_connection=2,  # the client's socket and the back end's
    )

    # The two ends of a DMZ tunnel, registered by services/dmz.py: "dmz" (connect-options name a tunnel) and
    # "internal" (accept-options do). A proxy configured as either is built as that class.
    ends: ClassVar[dict[str, type[ProxyService]]] = {}
    # tcp/ssl back ends as a ``TcpLeg`` (the splice's, and the relay's); a subclass reading the stream
    # itself (amqp.proxy) keeps the asyncio-streams ``TcpBackend``
    lean_backend: ClassVar[bool] = True

    def __new__(cls, config: Service, runtime: Runtime) -> ProxyService:  # noqa: ARG004 (as __init__)
        if cls is ProxyService:
            end = "dmz" if config.connect_options.tunnel else "internal" if config.accept_options.tunnel else None
            if end is not None:
                cls = ProxyService.ends[end]
        return super().__new__(cls)

    def __init__(self, config: Service, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.uri = config.connects[0]
        self.max_pending: int = config.setting("maximum.pending.bytes", DEFAULT_MAX_PENDING_BYTES)
        self.writer_limit = self.max_pending
        self.deferred = config.setting("connect.strategy") == "deferred"
        self.ssl = None
        if self.uri.secure:
            trusted = runtime.trust.trusted_pem if runtime.trust else None
            self.ssl = client_context(
                config.connect_options.tls, trusted, runtime.keys, f"service[{self.name}]/connect-options"
            )
        self.dialer = WsDialer() if self.uri.scheme in ("ws", "wss") else None
        self.liveness: ResetWatch | None = None  # closes back-end connections whose back end reset them

    async def start(self) -> None:
        if self.dialer is not None:
            self.dialer.start()
        self.liveness = ResetWatch(asyncio.get_running_loop())

    async def stop(self) -> None:
        if self.dialer is not None:
            await self.dialer.close()
        if self.liveness is not None:
            self.liveness.close()
            self.liveness = None

    async def open_backend(self, protocols: tuple[str, ...] = ()) -> Backend | TcpLeg:
        if self.dialer is not None:
            return await self.dialer.dial(
                self.uri,
                self.ssl,
                self.config.accept_options.max_message_size,
                self.config.connect_options.inactivity_timeout,
                protocols,
            )
        if self.lean_backend:
            return await open_leg(self.uri, self.ssl, self.max_pending)
        return await open_tcp(self.uri, self.ssl, self.max_pending)

    async def before_upgrade(self, handshake: Handshake) -> tuple[tuple[str, ...], object]:
        """``immediate``: connect before the 101, so a ws back end's subprotocol choice reaches the client.

        A failure is kept and reported after the upgrade as a close code (browsers cannot read
        an HTTP error on a WebSocket handshake).
        """
        if self.deferred:
            return (), None
        # Credentials offered as subprotocols are the gateway's business: never forwarded to the back end.
        offered = without_token_offers(offered_subprotocols(handshake.header("Sec-WebSocket-Protocol")))
        try:
            backend = await self.open_backend(offered)
        except BackendError as exc:
            return (), exc
        chosen = backend.protocol if isinstance(backend, WsBackend) else None
        return ((chosen,) if chosen else ()), backend

    async def abandon(self, context: object) -> None:
        if isinstance(context, (TcpBackend, TcpLeg, WsBackend)):
            await context.close()

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        first = None
        prepared = session.context
        if self.deferred:
            first = await channel.receive()  # the channel answers a close frame
            if first is None:
                return
            try:
                prepared = await self.open_backend()
            except BackendError as exc:
                prepared = exc
        if isinstance(prepared, BackendError):
            await self.refuse(session, channel, prepared)
            return
        assert isinstance(prepared, (TcpBackend, TcpLeg, WsBackend))
        backend = prepared
        transport, liveness = backend.transport, self.liveness
        watched = liveness.watch(transport) if liveness is not None and transport is not None else -1
        try:
            if first is not None:
                await backend.send(first)
            if not isinstance(backend, TcpLeg) or not await self.splice(session, channel, backend):
                await self.relay(session, channel, backend)
        finally:
            await backend.close(*self.client_close(channel))
            if self.liveness is not None and transport is not None:
                self.liveness.forget(watched, transport)

    async def refuse(self, session: LiveSession, channel: Channel, exc: BackendError) -> None:
        log.warning(
            "service[%s]: back end %s; closing client %s with %d", self.name, exc, session.remote, exc.close_code
        )
        if self.runtime.metrics is not None:
            self.runtime.metrics.backend_failures.labels(self.name).inc()
        reason = "back end unavailable" if exc.close_code == CloseCode.INTERNAL_ERROR else "bad gateway"
        await channel.close(exc.close_code, reason)

    async def splice(self, session: LiveSession, channel: Channel, leg: TcpLeg) -> bool:
        """Carry the connection on the splice if its client can be spliced (picows) and nothing decides on its
        messages; False: the relay carries it (from the start, or on from where rules appeared)."""
        raw = session.channel  # the adapter's channel; ``channel`` is it, or its GuardedChannel
        if (
            splice_leg is None
            or not self.unguarded()
            or (channel is not raw and getattr(channel, "inner", None) is not raw)
        ):
            return False
        outcome = await splice_leg(raw, leg, self.unguarded)
        if outcome is None or outcome == RULES:
            return False
        if outcome == EOF:
            await channel.close(*self.backend_close(leg))
        elif outcome == LOST:
            log.warning("service[%s]: back end %s lost: %s", self.name, self.uri, leg.error)
            await channel.close(CloseCode.INTERNAL_ERROR, "back end connection lost")
        else:  # the client's side ended: its close half-closes the back end, as the relay's
            leg.finish()
        return True

    async def relay(self, session: LiveSession, channel: Channel, backend: Backend | TcpLeg) -> None:
        up = asyncio.create_task(self.client_to_backend(channel, backend))
        down = asyncio.create_task(self.backend_to_client(backend, session, channel))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not down.done():  # the client left first: nothing more can reach it
                down.cancel()
            elif not up.done() and channel.gone:  # e.g. a slow consumer dropped while the back end,
                up.cancel()  # blocked on us, stopped reading what the client sent: nothing more to relay
            await asyncio.gather(up, down, return_exceptions=True)
        if up.done() and not up.cancelled() and up.exception():
            log.warning("service[%s]: back end %s write failed: %s", self.name, self.uri, up.exception())
            await channel.close(CloseCode.INTERNAL_ERROR, "back end connection lost")

    @staticmethod
    async def client_to_backend(channel: Channel, backend: Backend | TcpLeg) -> None:
        receive, send = channel.receive, backend.send  # bound once; the channel counts what it receives
        try:
            while (data := await receive()) is not None:
                await send(data)
        finally:
            backend.finish()

    async def backend_to_client(self, backend: Backend | TcpLeg, session: LiveSession, channel: Channel) -> None:
        """Each side's failure is blamed on that side: only a lost back end closes the client with 1011."""
        receive, send = backend.receive, channel.send  # the channel counts what it sends
        while True:
            try:
                data = await receive()
            except (OSError, asyncio.IncompleteReadError) as exc:
                log.warning("service[%s]: back end %s lost: %s", self.name, self.uri, exc)
                await channel.close(CloseCode.INTERNAL_ERROR, "back end connection lost")
                return
            if data is None:
                break
            try:
                await send(data)
            except OSError as exc:  # the client is closing or gone: nothing more can reach it
                self.lost(session, exc)
                return
        await channel.close(*self.backend_close(backend))

    @staticmethod
    def client_close(channel: Channel) -> tuple[int, str]:
        """The client's close → a ws back end's: its own code and reason if a client may send them
        (an empty close frame becomes 1000); 1001 if the client vanished or the gateway closed it."""
        code, reason = channel.peer_close
        if code == CloseCode.NO_STATUS:
            return CloseCode.NORMAL, ""
        if code is not None and client_may_send(code):
            return code, reason
        return CloseCode.GOING_AWAY, "client gone"

    @staticmethod
    def backend_close(backend: Backend | TcpLeg) -> tuple[int, str]:
        """Back-end EOF or close → the client's close code (abnormal closes map to 1011)."""
        if not isinstance(backend, WsBackend):
            return CloseCode.NORMAL, "back end closed"
        code = backend.close_code
        if code is not None and server_may_send(code):
            return code, "back end closed"
        return (
            (CloseCode.NORMAL, "back end closed")
            if code == CloseCode.NO_STATUS
            else (CloseCode.INTERNAL_ERROR, "back end connection lost")
        )
