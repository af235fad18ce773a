"""What ``mqtt.proxy`` does to each packet, sans-I/O: identity injection at CONNECT, topic rules after it.

``admit`` turns the client's CONNECT into the one the broker gets (the principal as user name, the
client id bound to the principal, the client's password never); ``Relay`` then takes the bytes each
side sends and says what goes on to the other side, what the gateway answers itself and when the
connection ends. The service (``proxy.py``) only moves bytes and supplies ``authorize``, which reads
the rules and the identity at every call (a reload or a re-authentication applies to the next packet).

Both directions are cut into whole packets before anything is sent on, so a packet the gateway answers
itself (a refused PUBLISH's PUBACK) never lands inside one the broker is sending.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...core.close import CloseCode
from ...security.rules import Decision
from . import codec
from .codec import (
    MQTT5,
    NOT_AUTHORIZED,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    TOPIC_ALIAS,
    Ack,
    Connack,
    Connect,
    MqttError,
    Publish,
    Suback,
    Subscribe,
)

# (operation, fields) → the rules' decision; a refusal is audited by whoever answers.
Authorize = Callable[[str, dict[str, str]], Decision]
# (topic, the share groups the client subscribed with) → may the broker deliver a message on topic to the client
# under the rules and identity it was made for? None: the service has no rules (nothing is read on the way
# down). Never audited: it is per message. ``Receiving`` gives the one for now: a new one when the rules or the
# identity changed (the relay forgets its decisions then).
Receivable = Callable[[str, frozenset[str]], bool] | None
Receiving = Callable[[], Receivable]

ALIAS_CAP = 64  # topic aliases one client may hold through the gateway (each remembers a topic) ...
ALIAS_BYTES = 64 * 1024  # ... in at most this many bytes of topic names in all (beyond: quota exceeded)
BROKERS = 0xFF  # in a cut-down SUBSCRIBE's SUBACK plan: the broker's code goes here (no SUBACK code is 0xFF)
WITH_WILL = 0x04  # MQTT 5 DISCONNECT reason: disconnect with will message
SEEN_TOPICS = 4096  # delivery decisions one connection remembers (then it starts again)
CLIENT_ID_SEPARATOR = ":"
CLOSE = "close"

_V3_CONNACK = {
    codec.UNSUPPORTED_VERSION: codec.V3_UNACCEPTABLE_VERSION,
    codec.CLIENT_ID_INVALID: codec.V3_ID_REJECTED,
    codec.SERVER_UNAVAILABLE: codec.V3_SERVER_UNAVAILABLE,
    codec.NOT_AUTHORIZED: codec.V3_NOT_AUTHORIZED,
    codec.BAD_AUTH_METHOD: codec.V3_NOT_AUTHORIZED,
}


class Ending(Exception):
    """The connection ends: the WebSocket close code and reason, and the MQTT 5 DISCONNECT reason (if any)."""

    def __init__(self, code: int, why: str, reason: int | None = None) -> None:
        super().__init__(why)
        self.code, self.why, self.reason = code, why, reason

    @classmethod
    def of(cls, error: MqttError) -> Ending:
        """A malformed packet or a protocol error: 1009 for one too large, else 1002."""
        if error.reason == codec.PACKET_TOO_LARGE:
            return cls(CloseCode.MESSAGE_TOO_BIG, "packet too large", error.reason)
        return cls(
            CloseCode.PROTOCOL_ERROR,
            "malformed packet" if error.reason == codec.MALFORMED else "protocol error",
            error.reason,
        )


def not_authorized() -> Ending:
    return Ending(CloseCode.POLICY_VIOLATION, "not authorized", NOT_AUTHORIZED)


def connack_refusal(version: int, reason: int) -> bytes:
    """A CONNACK refusing the connection, in the client's version (3.1.1 has its own return codes)."""
    if version == MQTT5:
        return codec.encode(Connack(False, reason), MQTT5)
    return codec.encode(Connack(False, _V3_CONNACK.get(reason, codec.V3_SERVER_UNAVAILABLE)), codec.MQTT311)


def disconnect(version: int, reason: int | None) -> bytes:
    """What the client reads before the close: a DISCONNECT in MQTT 5, nothing in 3.1.1 (it has none)."""
    if version != MQTT5 or reason is None:
        return b""
    return codec.encode(codec.Disconnect(reason), MQTT5)


def broker_client_id(user: str | None, client_id: str) -> str:
    """The client id the broker sees: bound to the principal, so no user can reach another's session.

    ``{user}:{id}`` with ``%`` and ``:`` in the user name escaped, so the mapping is one-to-one: user
    ``a`` with id ``b:c`` and user ``a:b`` with id ``c`` get ``a:b:c`` and ``a%3Ab:c``. Anonymous
    clients get ``:{id}``, which no named user can produce. An empty id stays empty: the broker
    assigns a fresh one (a session nobody can name again)."""
    if not client_id:
        return ""
    escaped = (user or "").replace("%", "%25").replace(CLIENT_ID_SEPARATOR, "%3A")
    return f"{escaped}{CLIENT_ID_SEPARATOR}{client_id}"


def admit(connect: Connect, user: str | None, password: bytes | None, limit: int, authorize: Authorize) -> Connect:
    """The CONNECT the broker gets, or ``Refusal`` with the CONNACK reason for the client.

    The user name is the principal (``None`` for an anonymous connection), whatever the client claimed;
    the password is the gateway's own for the broker (``mqtt.password-file``), never the client's. The
    will is a publish: its topic must pass the publish rules now."""
    if codec.prop(connect.properties, codec.AUTH_METHOD) is not None:
        raise Refusal(codec.BAD_AUTH_METHOD, "enhanced authentication: the gateway authenticates clients")
    will = connect.will
    if will is not None:
        decision = authorize("publish", {"topic": will.topic, "retain": _flag(will.retain)})
        if not decision.allowed:
            raise Refusal(NOT_AUTHORIZED, "will topic not allowed")
    client_id = broker_client_id(user, connect.client_id)
    if len(client_id.encode()) > 0xFFFF:
        raise Refusal(codec.CLIENT_ID_INVALID, "client id too long")
    properties = connect.properties
    if connect.version == MQTT5:  # the broker must send nothing larger than the gateway takes
        wanted = codec.prop(properties, codec.MAXIMUM_PACKET_SIZE)
        size = min(limit, wanted if isinstance(wanted, int) and wanted else limit)
        # and no topic aliases: the gateway reads the topic of every message it delivers (Relay._downstream)
        without = codec.without(properties, codec.MAXIMUM_PACKET_SIZE, codec.TOPIC_ALIAS_MAXIMUM)
        properties = (*without, (codec.MAXIMUM_PACKET_SIZE, size))
    return Connect(
        connect.version,
        client_id,
        connect.clean,
        connect.keep_alive,
        user,
        password if user is not None else None,  # 3.1.1: no password without a user name
        will,
        properties,
    )


class Refusal(Exception):
    """A CONNECT the gateway refuses: the MQTT 5 reason code its CONNACK carries."""

    def __init__(self, reason: int, why: str) -> None:
        super().__init__(why)
        self.reason = reason


def accepted(connack: Connack, limit: int) -> tuple[Connack, int]:
    """The broker's CONNACK as the MQTT 5 client gets it, and how many topic aliases the client may use:
    at most ``ALIAS_CAP`` (the gateway resolves them itself), packets no larger than ``limit``."""
    offered = codec.prop(connack.properties, codec.TOPIC_ALIAS_MAXIMUM)
    aliases = min(offered if isinstance(offered, int) else 0, ALIAS_CAP)
    size = codec.prop(connack.properties, codec.MAXIMUM_PACKET_SIZE)
    size = min(size if isinstance(size, int) and size else limit, limit)
    properties = codec.without(connack.properties, codec.TOPIC_ALIAS_MAXIMUM, codec.MAXIMUM_PACKET_SIZE)
    properties += ((codec.MAXIMUM_PACKET_SIZE, size),)
    if aliases:
        properties += ((codec.TOPIC_ALIAS_MAXIMUM, aliases),)
    return Connack(connack.session_present, connack.code, properties), aliases


@dataclass(slots=True)
class Step:
    """What one batch of bytes from the client produced: bytes for the broker, bytes the gateway answers,
    and the end of the connection if a packet called for it (what came before it still goes on)."""

    to_broker: bytes = b""
    to_client: bytes = b""
    end: Ending | None = None


def packet_id_in(data: bytes | bytearray, start: int, end: int, ids: set[int]) -> bool:
    """Does the packet whose body is ``data[start:end]`` start with one of ``ids`` (acknowledgements do)?"""
    return bool(ids) and end - start >= 2 and int.from_bytes(data[start : start + 2], "big") in ids


def _flag(value: bool) -> str:
    return "true" if value else "false"


class Relay:
    """One connected client's packets after a successful CONNACK (see the module docstring)."""

    __slots__ = (
        "version",
        "limit",
        "authorize",
        "up",
        "down",
        "aliases",
        "alias_bytes",
        "alias_max",
        "subscribes",
        "owned",
        "receiving",
        "groups",
        "answers",
        "delivered_owned",
        "receivable",
        "seen",
        "will",
    )

    def __init__(
        self, version: int, limit: int, authorize: Authorize, alias_max: int = 0, receiving: Receiving | None = None
    ) -> None:
        self.version = version
        self.limit = limit
        self.authorize = authorize
        self.up = bytearray()  # an incomplete packet from the client
        self.down = bytearray()  # an incomplete packet from the broker
        self.aliases: dict[int, str] = {}  # MQTT 5 topic aliases the client set, resolved here
        self.alias_bytes = 0  # the length of the topics they stand for
        self.alias_max = alias_max
        # SUBSCRIBE packet ids on their way to the broker → the client's SUBACK codes with BROKERS where the
        # broker's go (a SUBSCRIBE the gateway cut down; a byte per filter: less than the filter took on the
        # wire), or b"" (forwarded as it was)
        self.subscribes: dict[int, bytes] = {}
        self.owned: set[int] = set()  # QoS 2 ids the gateway answered itself (refused): their PUBREL stays here
        # Deliveries are held to the subscribe rules in force now, not those of when the subscription was made
        # (a reload, a re-authentication, a session the broker kept): ``receiving`` gives the check.
        self.receiving = receiving
        self.groups: frozenset[str] = frozenset()  # the share groups of the shared subscriptions passed
        self.answers: list[bytes] = []  # what the gateway answers the broker for deliveries it dropped
        self.delivered_owned: set[int] = set()  # QoS 2 deliveries it dropped: their PUBREL is answered here
        self.receivable: Receivable = None  # the check for the batch from the broker being read
        self.seen: dict[bytes, bool] = {}  # its decisions by topic (as bytes)
        self.will: codec.Will | None = None  # the will the broker holds: a publish decided again when it would go

    # -- client → broker --------------------------------------------------------------------------

    def from_client(self, data: bytes) -> Step:
        replies: list[bytes] = []
        to_broker, end = self._cut(self.up, data, self._upstream, replies)
        return Step(to_broker, b"".join(replies), end)

    def _upstream(
        self, first: int, data: bytes | bytearray, start: int, end: int, replies: list[bytes]
    ) -> bytes | None:
        kind = first >> 4
        if kind == PUBLISH:
            return self._publish(first, data, start, end, replies)
        packet = codec.decode(first, bytes(data[start:end]), self.version)
        if isinstance(packet, Subscribe):
            return self._subscribe(packet, replies)
        if isinstance(packet, Ack):
            if kind == PUBREL and packet.packet_id in self.owned:  # the PUBREC was the gateway's
                self.owned.discard(packet.packet_id)
                # 3.1.1: the flow goes on as if delivered; MQTT 5: the PUBREC 0x87 had ended it (the client
                # should not have sent this PUBREL; paho does), so the id is not found
                reason = codec.PACKET_ID_NOT_FOUND if self.version == MQTT5 else codec.SUCCESS
                replies.append(codec.encode(Ack(PUBCOMP, packet.packet_id, reason), self.version))
                return b""
            return None
        if isinstance(packet, codec.Disconnect):
            refused = packet.reason == WITH_WILL and self.will_refused()
            self.will = None  # published now (0x04) or discarded by the broker (any other reason)
            if refused:  # "with will message", but the rules refuse it now: an ordinary DISCONNECT instead
                return codec.encode(codec.Disconnect(codec.SUCCESS, packet.properties), self.version)
            return None
        if isinstance(packet, codec.Unsubscribe) or kind == codec.PINGREQ:
            return None
        if kind == codec.CONNECT:
            raise MqttError("a second CONNECT", codec.PROTOCOL_ERROR)
        if kind == codec.AUTH:
            raise MqttError("AUTH: the gateway authenticated this connection", codec.PROTOCOL_ERROR)
        raise MqttError(f"packet type {kind} is the server's to send", codec.PROTOCOL_ERROR)

    def _publish(self, first: int, data: bytes | bytearray, start: int, end: int, replies: list[bytes]) -> bytes | None:
        topic, packet_id, properties, payload_at = codec.publish_head(first, data, start, end, self.version)
        replace = False
        if properties:
            alias = codec.prop(properties, TOPIC_ALIAS)
            if isinstance(alias, int):
                topic = self._resolve(alias, topic)
                replace = True  # the broker gets the topic itself, never the alias
        if not topic:
            raise MqttError("PUBLISH without topic name or topic alias", codec.PROTOCOL_ERROR)
        retain = first & 0x01
        decision = self.authorize("publish", {"topic": topic, "retain": _flag(bool(retain))})
        qos = (first >> 1) & 0x03
        if not decision.allowed:
            if decision.then == CLOSE:
                raise not_authorized()
            if qos == 1:
                replies.append(codec.encode(Ack(PUBACK, packet_id, NOT_AUTHORIZED), self.version))
            elif qos == 2:
                replies.append(codec.encode(Ack(PUBREC, packet_id, NOT_AUTHORIZED), self.version))
                self.owned.add(packet_id)  # a PUBREL for it is the gateway's to answer (at most 65535 ids)
            return b""
        if qos == 2 and self.owned:
            self.owned.discard(packet_id)  # an id reused: this flow is the broker's
        if not replace:
            return None
        payload = bytes(data[payload_at:end])
        rewritten = Publish(
            topic, payload, qos, bool(retain), bool(first & 0x08), packet_id, codec.without(properties, TOPIC_ALIAS)
        )
        return codec.encode(rewritten, self.version)

    def _resolve(self, alias: int, topic: str) -> str:
        """An MQTT 5 topic alias: set (with a topic) or used (empty topic), per connection."""
        if not 1 <= alias <= self.alias_max:
            raise MqttError(f"topic alias {alias} outside 1..{self.alias_max}", codec.TOPIC_ALIAS_INVALID)
        if topic:
            old = self.aliases.get(alias)
            self.alias_bytes += len(topic) - (len(old) if old is not None else 0)
            if self.alias_bytes > ALIAS_BYTES:
                raise MqttError(f"topic aliases over {ALIAS_BYTES} bytes of topic names", codec.QUOTA_EXCEEDED)
            self.aliases[alias] = topic
            return topic
        known = self.aliases.get(alias)
        if known is None:
            raise MqttError(f"topic alias {alias} used before it was set", codec.PROTOCOL_ERROR)
        return known

    def _subscribe(self, packet: Subscribe, replies: list[bytes]) -> bytes | None:
        if packet.packet_id in self.subscribes:
            raise MqttError(f"SUBSCRIBE packet id {packet.packet_id} still in use", codec.PROTOCOL_ERROR)
        refused = codec.NOT_AUTHORIZED if self.version == MQTT5 else codec.V3_SUBACK_FAILURE
        codes = bytearray()
        allowed: list[tuple[str, int]] = []
        for topic, options in packet.filters:
            group, topic_filter = codec.split_shared(topic)
            fields = {"topic": topic_filter} if group is None else {"topic": topic_filter, "share-group": group}
            decision = self.authorize("subscribe", fields)
            if decision.allowed:
                codes.append(BROKERS)
                allowed.append((topic, options))
                if group is not None and group not in self.groups:
                    self.groups = self.groups | {group}
                    self.seen.clear()
            elif decision.then == CLOSE:
                raise not_authorized()
            else:
                codes.append(refused)
        if len(allowed) == len(codes):
            self.subscribes[packet.packet_id] = b""
            return None
        if not allowed:  # nothing for the broker: the gateway answers
            replies.append(codec.encode(Suback(packet.packet_id, tuple(refused for _ in codes)), self.version))
            return b""
        self.subscribes[packet.packet_id] = bytes(codes)
        return codec.encode(Subscribe(packet.packet_id, tuple(allowed), packet.properties), self.version)

    # -- broker → client --------------------------------------------------------------------------

    def from_broker(self, data: bytes) -> tuple[bytes, Ending | None]:
        """What the client gets of ``data``, and the end of the connection for a packet it could not take."""
        receivable = self.receiving() if self.receiving is not None else None
        if receivable is not self.receivable:  # the rules or the identity changed: decide every topic again
            self.seen.clear()
            self.receivable = receivable
        read = self.subscribes or receivable is not None or self.delivered_owned
        each = self._downstream if read else None  # None: only whole packets, none read
        out, end = self._cut(self.down, data, each, self.answers)
        if end is not None:
            too_big = end.reason == codec.PACKET_TOO_LARGE
            end = Ending(CloseCode.MESSAGE_TOO_BIG if too_big else CloseCode.INTERNAL_ERROR, "back end protocol error")
        return out, end

    def _downstream(
        self, first: int, data: bytes | bytearray, start: int, end: int, replies: list[bytes]
    ) -> bytes | None:
        kind = first >> 4
        if kind == PUBLISH:
            return self._delivery(first, data, start, end, replies)
        if kind == PUBREL and packet_id_in(data, start, end, self.delivered_owned):
            packet = codec.decode(first, bytes(data[start:end]), self.version)
            assert isinstance(packet, Ack)
            self.delivered_owned.discard(packet.packet_id)
            replies.append(codec.encode(Ack(PUBCOMP, packet.packet_id), self.version))
            return b""
        if kind != SUBACK or not self.subscribes:
            return None
        packet = codec.decode(first, bytes(data[start:end]), self.version)
        assert isinstance(packet, Suback)
        if packet.packet_id not in self.subscribes:
            return None
        codes = self.subscribes.pop(packet.packet_id)
        if not codes:
            return None
        theirs = iter(packet.codes)
        merged = tuple(next(theirs, codec.UNSPECIFIED) if code == BROKERS else code for code in codes)
        return codec.encode(Suback(packet.packet_id, merged, packet.properties), self.version)

    def _delivery(
        self, first: int, data: bytes | bytearray, start: int, end: int, replies: list[bytes]
    ) -> bytes | None:
        """A message for the client: passed when the subscribe rules allow its topic now; else dropped, and
        acknowledged to the broker as the client would (PUBACK; PUBREC, then PUBCOMP for its PUBREL)."""
        receivable = self.receivable
        if receivable is None:
            return None
        raw = bytes(data[start + 2 : start + 2 + int.from_bytes(data[start : start + 2], "big")])
        allowed = self.seen.get(raw)  # the topic's bytes → the decision, while the check and groups stay
        if allowed is None:
            topic = codec.publish_head(first, data, start, end, self.version)[0]
            if not topic:
                raise MqttError("the broker used a topic alias the gateway never offered", codec.PROTOCOL_ERROR)
            allowed = receivable(topic, self.groups)
            if len(self.seen) >= SEEN_TOPICS:
                self.seen.clear()
            self.seen[raw] = allowed
        if allowed:
            return None
        packet_id = codec.publish_head(first, data, start, end, self.version)[1]
        qos = (first >> 1) & 0x03
        if qos == 1:
            replies.append(codec.encode(Ack(PUBACK, packet_id), self.version))
        elif qos == 2:
            replies.append(codec.encode(Ack(PUBREC, packet_id), self.version))
            self.delivered_owned.add(packet_id)
        return b""

    def will_refused(self) -> bool:
        """Would the rules refuse the will now (the roles or rules may have changed since the CONNECT)?"""
        will = self.will
        if will is None:
            return False
        return not self.authorize("publish", {"topic": will.topic, "retain": _flag(will.retain)}).allowed

    def take_answers(self) -> bytes:
        """What the gateway answers the broker itself (for deliveries it dropped), to send before anything else."""
        answers = b"".join(self.answers)
        self.answers.clear()
        return answers

    # -- both -------------------------------------------------------------------------------------

    def _cut(
        self,
        pending: bytearray,
        data: bytes,
        each: Callable[[int, bytes | bytearray, int, int, list[bytes]], bytes | None] | None,
        replies: list[bytes],
    ) -> tuple[bytes, Ending | None]:
        """The whole packets of ``pending + data``, each passed as it was (``each`` → None) or replaced, and
        the end of the connection if one of them called for it; an incomplete packet stays in ``pending``.
        ``data`` itself when it is whole packets, all passed as they were."""
        if pending:
            pending += data
            source: bytes | bytearray = pending
        else:
            source = data
        size, limit, packet_at = len(source), self.limit, codec.packet_at
        pos = kept = 0  # kept: where the run of packets passed as they were starts
        out: list[bytes] = []
        end: Ending | None = None
        try:
            while pos < size:
                found = packet_at(source, pos, limit)
                if found is None:
                    break
                start, stop = found
                if each is not None and (result := each(source[pos], source, start, stop, replies)) is not None:
                    out.append(bytes(source[kept:pos]))
                    out.append(result)
                    kept = stop
                pos = stop
        except MqttError as exc:
            end = Ending.of(exc)
        except Ending as exc:
            end = exc
        if source is data and not out:
            result = data if pos == len(data) else data[:pos]
        else:
            out.append(bytes(source[kept:pos]))
            result = b"".join(out)
        if end is not None:
            pending.clear()  # nothing after the packet that ended the connection
        elif source is pending:
            del pending[:pos]
        elif pos < len(data):
            pending += data[pos:]
        return result, end
