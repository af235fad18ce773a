"""``mqtt.proxy``: MQTT 3.1.1 and 5 over WebSocket to a broker, with the gateway's identity and topic rules.

Each client gets its own broker connection, dialled once its CONNECT has been read and admitted
(``relay.admit``): the broker sees the principal as user name and a client id bound to it, never the
client's claims. After the CONNACK every PUBLISH and SUBSCRIBE is decided by the service's
``authorization-rule`` list (``relay.Relay``), read at each packet so a reload or a re-authentication
applies to the next one. The WebSocket must negotiate the subprotocol ``mqtt`` (MQTT 5 §6, 3.1.1 §6):
a client that does not offer it gets its 101 without a subprotocol and is closed with 1002, before any
broker connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from ...config.model import DEFAULT_MAX_PENDING_BYTES, Rule, Service
from ...config.schema import Property, RuleSchema
from ...config.values import parse_size
from ...core.channel import Channel
from ...core.close import CloseCode
from ...core.handshake import Handshake
from ...core.identity import Identity
from ...core.session import LiveSession
from ...errors import BackendError
from ...security.challenges import offered_subprotocols
from ...security.rules import Decision, RuleSet
from ...security.tls import client_context
from ...transport.backend import TcpBackend, open_tcp
from ...transport.liveness import ResetWatch
from ..base import Runtime, ServiceType, WebSocketService
from . import codec
from .codec import CONNACK, CONNECT, MQTT5, Connack, Connect, MqttError
from .relay import (
    Authorize,
    Ending,
    Receivable,
    Receiving,
    Refusal,
    Relay,
    accepted,
    admit,
    connack_refusal,
    disconnect,
)

log = logging.getLogger("wsgate.mqtt")

SUBPROTOCOL = "mqtt"
CONNECT_WAIT = 10.0  # how long a client may take to send its CONNECT, and the broker its CONNACK
ENDED = (OSError, asyncio.IncompleteReadError)
WILL_WAIT = 1.0  # how long the DISCONNECT that discards a refused will may take to go out


@dataclass(frozen=True)
class BrokerPassword:
    """The password the gateway presents to the broker with each principal: kept out of reprs and logs."""

    value: bytes = field(repr=False)


def read_password(path: str) -> BrokerPassword:
    """``mqtt.password-file``: the file's content, trailing newline dropped."""
    try:
        with open(path, "rb") as handle:
            return BrokerPassword(handle.read().rstrip(b"\r\n"))
    except OSError as exc:
        raise ValueError(
            f"cannot read {path!r}: {exc.strerror}; give a readable file holding the broker password"
        ) from None


RULES = RuleSchema(
    operations={"publish": ("topic", "retain"), "subscribe": ("topic", "share-group")},
    separators={"topic": "/"},
    outcomes=("refuse", "close"),
)


def covers_dollar(rule: Rule) -> bool:
    """May ``rule`` decide a topic starting with ``$`` (``$SYS/…``)? As in MQTT, where ``#`` and ``+`` never
    match a first level starting with ``$``: only a rule whose topic starts with a literal ``$`` level, or
    one that names no topic."""
    topic = rule.fields.get("topic")
    return topic is None or topic.startswith("$")


class MqttProxyService(WebSocketService):
    TYPE = ServiceType(
        name="mqtt.proxy",
        accept=("ws", "wss"),
        connect=(1, 1),
        connect_schemes=("tcp", "ssl"),
        properties={
            "maximum.pending.bytes": Property("?", parse_size),
            "mqtt.maximum.packet.size": Property("?", parse_size),
            "mqtt.password-file": Property("?", read_password, file=True),
        },
        rules=RULES,
        descriptors_per_connection=2,  # the client's socket and the broker's
    )

    def __init__(self, config: Service, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.uri = config.connects[0]
        self.max_pending: int = config.setting("maximum.pending.bytes", DEFAULT_MAX_PENDING_BYTES)
        self.writer_limit = self.max_pending
        self.limit: int = config.setting("mqtt.maximum.packet.size", config.accept_options.max_message_size)
        secret: BrokerPassword | None = config.setting("mqtt.password-file")
        self.password = secret.value if secret is not None else None
        self.ssl = None
        if self.uri.secure:
            trusted = runtime.trust.trusted_pem if runtime.trust else None
            self.ssl = client_context(
                config.connect_options.tls, trusted, runtime.keys, f"service[{self.name}]/connect-options"
            )
        self.dollar_rules = self.dollar(config)
        self.liveness: ResetWatch | None = None  # closes broker connections the broker reset

    def update_rules(self, config: Service) -> None:
        super().update_rules(config)
        self.dollar_rules = self.dollar(config)

    @staticmethod
    def dollar(config: Service) -> RuleSet | None:
        """The rules that may decide ``$`` topics (``covers_dollar``); None: none may."""
        rules = tuple(rule for rule in config.rules if covers_dollar(rule))
        return RuleSet(rules, RULES) if rules else None

    def decide(
        self, identity: Identity | None, operation: str, fields: dict[str, str], rules: RuleSet | None = None
    ) -> Decision:
        rules = self.rules if rules is None else rules
        if not rules.open and fields["topic"].startswith("$"):
            dollar = self.dollar_rules
            if dollar is None:
                return Decision(False, None, rules.default_then)
            rules = dollar
        return rules.decide(identity, operation, fields)

    def receiving(self, session: LiveSession) -> Receiving:
        """The check ``Relay`` puts each delivery to: may the client receive a message on this topic under the
        subscribe rules and identity in force now (as a subscription to the topic itself, or within one of the
        share groups it subscribed with)? A new check whenever the rules or the identity change."""
        made: list[object] = [None, None, None]  # the rules and identity the last check was made for, and it

        def current() -> Receivable:
            rules, identity = self.rules, session.identity
            if rules.open:
                return None
            if made[0] is not rules or made[1] is not identity:
                made[:] = [rules, identity, self.receivable(rules, identity)]
            return made[2]  # type: ignore[return-value]

        return current

    def receivable(self, rules: RuleSet, identity: Identity | None) -> Receivable:
        def receivable(topic: str, groups: frozenset[str]) -> bool:
            return self.decide(identity, "subscribe", {"topic": topic}, rules).allowed or any(
                self.decide(identity, "subscribe", {"topic": topic, "share-group": group}, rules).allowed
                for group in groups
            )

        return receivable

    def identity_headers(self, connection_id: str, deadline: float | None) -> dict[str, str]:
        """Without ``Wsgate-Connection-Id`` (the id is the last segment of ``Wsgate-Refresh``): paho-mqtt's
        WebSocket handshake refuses every response header line holding "connection" but not "upgrade"."""
        headers = super().identity_headers(connection_id, deadline)
        headers.pop("Wsgate-Connection-Id", None)
        return headers

    async def before_upgrade(self, handshake: Handshake) -> tuple[tuple[str, ...], object]:
        """Choose ``mqtt``; the broker is dialled only for an admitted CONNECT."""
        offered = SUBPROTOCOL in offered_subprotocols(handshake.header("Sec-WebSocket-Protocol"))
        return ((SUBPROTOCOL,) if offered else ()), offered

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        if session.context is not True:
            await channel.close(CloseCode.PROTOCOL_ERROR, "subprotocol mqtt required")
            return

        def authorize(operation: str, fields: dict[str, str]) -> Decision:
            decision = self.decide(session.identity, operation, fields)  # the identity now: roles may change
            if not decision.allowed:
                self.refused(session, operation, decision, **fields)
            return decision

        try:
            opened = await self.open(session, channel, authorize, self.receiving(session))
        except Ending as ending:
            await channel.close(ending.code, ending.why)
            return
        if opened is None:
            return
        backend, relay, client_rest, broker_rest = opened
        transport = backend.transport
        watched = self.liveness.watch(transport) if self.liveness is not None and transport is not None else -1
        try:
            await self.run(session, channel, backend, relay, client_rest, broker_rest)
        finally:
            try:
                await self.drop_will(backend, relay)
            finally:
                await backend.close()
            if self.liveness is not None and transport is not None:
                self.liveness.forget(watched, transport)

    @staticmethod
    async def drop_will(backend: TcpBackend, relay: Relay) -> None:
        """The connection ends without the client's DISCONNECT: the broker would publish the will, admitted at
        CONNECT. If the rules or roles in force now refuse it, an ordinary DISCONNECT tells the broker to
        discard it."""
        if not relay.will_refused():
            return
        try:
            await asyncio.wait_for(backend.send(codec.encode(codec.Disconnect(), relay.version)), WILL_WAIT)
        except (OSError, TimeoutError):
            pass  # the broker connection is gone: nothing to publish the will from either

    async def start(self) -> None:
        self.liveness = ResetWatch(asyncio.get_running_loop())

    async def stop(self) -> None:
        if self.liveness is not None:
            self.liveness.close()
            self.liveness = None

    # -- CONNECT ----------------------------------------------------------------------------------

    async def open(
        self, session: LiveSession, channel: Channel, authorize: Authorize, receiving: Receiving | None = None
    ) -> tuple[TcpBackend, Relay, bytes, bytes] | None:
        """Read and admit the client's CONNECT, dial the broker, relay its CONNACK: the broker connection,
        the relay and what each side already sent past those packets. None: the connection is over."""
        buffer = bytearray()
        found = await self.whole_packet(channel, buffer)
        if found is None:
            return None
        start, end = found
        try:
            connect = codec.decode(buffer[0], bytes(buffer[start:end]), codec.MQTT311)
        except MqttError as exc:
            if exc.reason == codec.UNSUPPORTED_VERSION:
                await channel.send(connack_refusal(codec.MQTT311, exc.reason))
            raise Ending(
                CloseCode.PROTOCOL_ERROR,
                "unsupported protocol version" if exc.reason == codec.UNSUPPORTED_VERSION else "malformed packet",
            ) from None
        assert isinstance(connect, Connect)
        version = connect.version
        identity = session.identity
        user = identity.user if identity is not None and identity.user else None
        try:
            upstream = admit(connect, user, self.password, self.limit, authorize)
        except Refusal as refusal:
            await channel.send(connack_refusal(version, refusal.reason))
            raise Ending(CloseCode.POLICY_VIOLATION, "not authorized") from None
        try:
            backend = await open_tcp(self.uri, self.ssl, self.max_pending)
        except BackendError as exc:
            log.warning("service[%s]: broker %s; refusing client %s", self.name, exc, session.remote)
            if self.runtime.metrics is not None:
                self.runtime.metrics.backend_failures.labels(self.name).inc()
            await channel.send(connack_refusal(version, codec.SERVER_UNAVAILABLE))
            raise Ending(exc.close_code, "back end unavailable") from None
        try:  # from here every way out but success closes the broker connection
            await backend.send(codec.encode(upstream, version))
            connack, broker_rest = await self.broker_connack(backend, version)
            aliases = 0
            if version == MQTT5:
                connack, aliases = accepted(connack, self.limit)
            await channel.send(codec.encode(connack, version))
            if connack.code:  # the broker refused (its CONNACK tells the client why)
                raise Ending(CloseCode.NORMAL, "refused by the broker")
        except BaseException:
            await backend.close()
            raise
        relay = Relay(version, self.limit, authorize, aliases, receiving)
        relay.will = connect.will
        return backend, relay, bytes(buffer[end:]), broker_rest

    async def whole_packet(self, channel: Channel, buffer: bytearray) -> tuple[int, int] | None:
        """Receive until ``buffer`` holds the client's first packet (within ``CONNECT_WAIT``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_WAIT
        while True:
            if buffer and buffer[0] >> 4 != CONNECT:  # known from the first byte: nothing more is read
                raise Ending(CloseCode.PROTOCOL_ERROR, "CONNECT expected")
            try:
                found = codec.packet_at(buffer, 0, self.limit) if buffer else None
            except MqttError as exc:
                raise Ending.of(exc) from None
            if found is not None:
                return found
            try:
                data = await asyncio.wait_for(channel.receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise Ending(CloseCode.PROTOCOL_ERROR, "no CONNECT") from None
            if data is None:
                return None
            if isinstance(data, str):
                raise Ending(CloseCode.UNSUPPORTED_DATA, "binary messages only")
            buffer += data

    async def broker_connack(self, backend: TcpBackend, version: int) -> tuple[Connack, bytes]:
        """The broker's answer to the CONNECT, and any bytes it sent after it."""
        buffer = bytearray()
        try:
            async with asyncio.timeout(CONNECT_WAIT):
                while (found := codec.packet_at(buffer, 0, self.limit) if buffer else None) is None:
                    data = await backend.receive()
                    if data is None:
                        raise Ending(CloseCode.INTERNAL_ERROR, "back end closed")
                    buffer += data
            start, end = found
            if buffer[0] >> 4 != CONNACK:
                raise MqttError("the broker's first packet is not a CONNACK")
            packet = codec.decode(buffer[0], bytes(buffer[start:end]), version)
        except (MqttError, TimeoutError, *ENDED) as exc:
            log.warning(
                "service[%s]: broker %s did not answer the CONNECT: %s", self.name, self.uri, exc or "timed out"
            )
            raise Ending(CloseCode.INTERNAL_ERROR, "back end unavailable") from None
        assert isinstance(packet, Connack)
        return packet, bytes(buffer[end:])

    # -- after the CONNACK ------------------------------------------------------------------------

    async def run(
        self,
        session: LiveSession,
        channel: Channel,
        backend: TcpBackend,
        relay: Relay,
        client_rest: bytes,
        broker_rest: bytes,
    ) -> None:
        up = asyncio.create_task(self.upstream(channel, backend, relay, client_rest))
        down = asyncio.create_task(self.downstream(session, channel, backend, relay, broker_rest))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not down.done():  # the client left or must go: nothing more reaches it from the broker
                down.cancel()
            elif not up.done() and channel.gone:
                up.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        if up.cancelled():
            return
        failure = up.exception()
        if isinstance(failure, Ending):
            await self.end(channel, relay.version, failure)
        elif failure is not None:
            log.warning("service[%s]: broker %s write failed: %s", self.name, self.uri, failure)
            await channel.close(CloseCode.INTERNAL_ERROR, "back end connection lost")

    @staticmethod
    async def upstream(channel: Channel, backend: TcpBackend, relay: Relay, rest: bytes) -> None:
        """Client → broker until the client closes; raises ``Ending`` when the client must go, ``OSError`` when
        the broker connection fails."""
        receive, send, reply, step_of = channel.receive, backend.send, channel.send, relay.from_client
        data: bytes | str | None = rest
        while data is not None:
            if isinstance(data, str):
                raise Ending(CloseCode.UNSUPPORTED_DATA, "binary messages only")
            if data:
                step = step_of(data)
                if step.to_broker:
                    await send(step.to_broker)
                if step.to_client:
                    try:
                        await reply(step.to_client)
                    except OSError:  # the client is closing or gone: its loss, not the broker's
                        return
                if step.end is not None:
                    raise step.end
            data = await receive()

    async def downstream(
        self, session: LiveSession, channel: Channel, backend: TcpBackend, relay: Relay, rest: bytes
    ) -> None:
        """Broker → client until the broker closes (1000) or is lost (1011)."""
        receive, send, step_of = backend.receive, channel.send, relay.from_broker
        data: bytes | None = rest
        while data is not None:
            if data:
                out, ending = step_of(data)
                if relay.answers:  # acknowledgements of deliveries the rules no longer allow
                    await backend.send(relay.take_answers())
                try:
                    if out:
                        await send(out)
                except OSError as exc:  # the client is closing or gone
                    self.lost(session, exc)
                    return
                if ending is not None:
                    log.warning("service[%s]: broker %s: %s", self.name, self.uri, ending)
                    await self.end(channel, relay.version, ending)
                    return
            try:
                data = await receive()
            except ENDED as exc:
                log.warning("service[%s]: broker %s lost: %s", self.name, self.uri, exc)
                await channel.close(CloseCode.INTERNAL_ERROR, "back end connection lost")
                return
        await channel.close(CloseCode.NORMAL, "back end closed")

    @staticmethod
    async def end(channel: Channel, version: int, ending: Ending) -> None:
        """MQTT 5 clients read a DISCONNECT with the reason first; then the WebSocket closes."""
        last = disconnect(version, ending.reason)
        if last:
            try:
                await channel.send(last)
            except OSError:
                pass
        await channel.close(ending.code, ending.why)
