"""MQTT 3.1.1 and 5 control packets, sans-I/O: only what ``mqtt.proxy`` must read or rewrite.

No sans-I/O codec for both versions could be used (``mqttproto`` has no distribution in the package index
this project installs from; ``mqtt-codec`` is 3.1.1 only and unmaintained since 2019; the rest are clients or
brokers with their own I/O), so this one is small and strict: every
packet the gateway forwards is decoded in full except PUBLISH payloads, and anything the MQTT
specifications call malformed raises ``MqttError`` with the MQTT 5 reason code a DISCONNECT would
carry. Strict on purpose: the gateway decides on the topic it decoded, so it must never read a packet
the broker would read differently (a parser differential is an authorization bypass).

``packet_at`` finds packet boundaries in a byte stream without copying; ``decode`` and ``encode`` turn
one packet's body into values and back (``decode(encode(p)) == p``; ``encode(decode(b)) == b`` for the
canonical encodings ``encode`` writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

MQTT311, MQTT5 = 4, 5

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15
ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP)

# MQTT 5 reason codes the gateway reads or sends (3.1.1 has only CONNACK return codes and SUBACK 0x80).
SUCCESS = 0x00
UNSPECIFIED = 0x80
MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
UNSUPPORTED_VERSION = 0x84
CLIENT_ID_INVALID = 0x85
BAD_CREDENTIALS = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
BAD_AUTH_METHOD = 0x8C
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
PACKET_ID_NOT_FOUND = 0x92
QUOTA_EXCEEDED = 0x97

# 3.1.1 CONNACK return codes and the SUBACK failure code.
V3_UNACCEPTABLE_VERSION, V3_ID_REJECTED, V3_SERVER_UNAVAILABLE, V3_NOT_AUTHORIZED = 1, 2, 3, 5
V3_SUBACK_FAILURE = 0x80

# MQTT 5 properties the gateway reads.
SESSION_EXPIRY = 0x11
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
SUBSCRIPTION_ID = 0x0B

_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)
PROPERTY_TYPES = {
    0x01: _BYTE,  # payload format indicator
    0x02: _U32,  # message expiry interval
    0x03: _STRING,  # content type
    0x08: _STRING,  # response topic
    0x09: _BINARY,  # correlation data
    SUBSCRIPTION_ID: _VARINT,
    SESSION_EXPIRY: _U32,
    0x12: _STRING,  # assigned client identifier
    0x13: _U16,  # server keep alive
    AUTH_METHOD: _STRING,
    AUTH_DATA: _BINARY,
    0x17: _BYTE,  # request problem information
    0x18: _U32,  # will delay interval
    0x19: _BYTE,  # request response information
    0x1A: _STRING,  # response information
    0x1C: _STRING,  # server reference
    0x1F: _STRING,  # reason string
    0x21: _U16,  # receive maximum
    TOPIC_ALIAS_MAXIMUM: _U16,
    TOPIC_ALIAS: _U16,
    0x24: _BYTE,  # maximum QoS
    0x25: _BYTE,  # retain available
    USER_PROPERTY: _PAIR,
    MAXIMUM_PACKET_SIZE: _U32,
    0x28: _BYTE,  # wildcard subscription available
    0x29: _BYTE,  # subscription identifiers available
    0x2A: _BYTE,  # shared subscription available
}
_REPEATABLE = frozenset({USER_PROPERTY, SUBSCRIPTION_ID})

PropertyValue: TypeAlias = int | str | bytes | tuple[str, str]
Properties: TypeAlias = tuple[tuple[int, PropertyValue], ...]

MAX_VARINT = 268_435_455
SHARE_PREFIX = "$share/"


class MqttError(ValueError):
    """Not a valid packet; ``reason`` is the MQTT 5 reason code a DISCONNECT for it carries."""

    def __init__(self, message: str, reason: int = MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason


# -- packets --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = ()


@dataclass(frozen=True, slots=True)
class Connect:
    version: int
    client_id: str
    clean: bool = True
    keep_alive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = ()


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    code: int
    properties: Properties = ()


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0  # 0: none (QoS 0)
    properties: Properties = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""

    kind: int
    packet_id: int
    reason: int = SUCCESS
    properties: Properties = ()


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    filters: tuple[tuple[str, int], ...]  # (filter, options byte)
    properties: Properties = ()


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    codes: tuple[int, ...]
    properties: Properties = ()


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]
    properties: Properties = ()


@dataclass(frozen=True, slots=True)
class Unsuback:
    packet_id: int
    codes: tuple[int, ...] = ()  # MQTT 5 only
    properties: Properties = ()


@dataclass(frozen=True, slots=True)
class Ping:
    kind: int  # PINGREQ or PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: int = SUCCESS
    properties: Properties = ()


@dataclass(frozen=True, slots=True)
class Auth:
    reason: int = SUCCESS
    properties: Properties = ()


PublishHead: TypeAlias = tuple[str, int, Properties, int]  # topic, packet id, properties, payload offset
Packet: TypeAlias = (
    Connect | Connack | Publish | Ack | Subscribe | Suback | Unsubscribe | Unsuback | Ping | Disconnect | Auth
)


def prop(properties: Properties, ident: int) -> PropertyValue | None:
    """The first value of property ``ident``, if present."""
    for key, value in properties:
        if key == ident:
            return value
    return None


def without(properties: Properties, *idents: int) -> Properties:
    return tuple(p for p in properties if p[0] not in idents)


# -- stream ---------------------------------------------------------------------------------------------


def packet_at(buffer: bytes | bytearray, start: int, limit: int) -> tuple[int, int] | None:
    """The packet starting at ``start``: (where its body starts, where it ends), or None until all of
    it is in ``buffer``. A packet longer than ``limit`` bytes is refused as soon as its length is read."""
    size = len(buffer)
    pos = start + 1
    value = shift = 0
    for count in range(4):
        if pos >= size:
            return None
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and count:
                raise MqttError("remaining length not in its shortest form")
            break
        shift += 7
    else:
        raise MqttError("remaining length longer than 4 bytes")
    end = pos + value
    if end - start > limit:
        raise MqttError(f"packet of {end - start} bytes over the limit of {limit}", PACKET_TOO_LARGE)
    return (pos, end) if end <= size else None


# -- reading --------------------------------------------------------------------------------------------


class _Reader:
    """A cursor over one packet's body; every read checks the bounds."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    @property
    def left(self) -> int:
        return self.end - self.pos

    def take(self, count: int) -> bytes:
        pos = self.pos
        if count > self.end - pos:
            raise MqttError("packet ends inside a field")
        self.pos = pos + count
        return self.data[pos : pos + count]

    def byte(self) -> int:
        if self.pos >= self.end:
            raise MqttError("packet ends inside a field")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        value = shift = 0
        for count in range(4):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0 and count:
                    raise MqttError("variable byte integer not in its shortest form")
                return value
            shift += 7
        raise MqttError("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.take(self.u16())
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MqttError("string is not well-formed UTF-8") from None
        if "\x00" in text:
            raise MqttError("string holds U+0000")
        return text

    def properties(self, version: int) -> Properties:
        if version != MQTT5:
            return ()
        if self.pos < self.end and not self.data[self.pos]:  # none: the common case, on the per-message path
            self.pos += 1
            return ()
        length = self.varint()
        if length > self.left:
            raise MqttError("properties run past the packet")
        stop = self.pos + length
        seen: set[int] = set()
        out: list[tuple[int, PropertyValue]] = []
        inner = _Reader(self.data, self.pos, stop)
        while inner.pos < stop:
            ident = inner.varint()
            kind = PROPERTY_TYPES.get(ident)
            if kind is None:
                raise MqttError(f"unknown property 0x{ident:02x}")
            if ident in seen and ident not in _REPEATABLE:
                raise MqttError(f"property 0x{ident:02x} given twice", PROTOCOL_ERROR)
            seen.add(ident)
            out.append((ident, inner.value(kind)))
        self.pos = stop
        return tuple(out)

    def value(self, kind: int) -> PropertyValue:
        if kind == _BYTE:
            return self.byte()
        if kind == _U16:
            return self.u16()
        if kind == _U32:
            return self.u32()
        if kind == _VARINT:
            return self.varint()
        if kind == _STRING:
            return self.string()
        if kind == _BINARY:
            return self.binary()
        return (self.string(), self.string())

    def done(self) -> None:
        if self.pos != self.end:
            raise MqttError("bytes left over at the end of the packet")


_FLAGS = {PUBREL: 2, SUBSCRIBE: 2, UNSUBSCRIBE: 2}  # the fixed-header flags a type must carry (PUBLISH: its own)


def decode(first: int, body: bytes, version: int) -> Packet:
    """One packet: ``first`` is its fixed header's first byte, ``body`` what follows the remaining length.

    ``version`` is the connection's (MQTT311 or MQTT5); a CONNECT says its own."""
    kind, flags = first >> 4, first & 0x0F
    if kind != PUBLISH and flags != _FLAGS.get(kind, 0):
        raise MqttError(f"packet type {kind} with reserved flags 0x{flags:x}")
    reader = _Reader(body)
    packet: Packet
    if kind == PUBLISH:
        packet = _publish(flags, reader, version)
    elif kind in ACKS:
        packet = _ack(kind, reader, version)
    elif kind == SUBSCRIBE:
        packet = _subscribe(reader, version)
    elif kind == SUBACK:
        packet = _suback(reader, version)
    elif kind == UNSUBSCRIBE:
        packet = _unsubscribe(reader, version)
    elif kind == UNSUBACK:
        packet = _unsuback(reader, version)
    elif kind in (PINGREQ, PINGRESP):
        packet = Ping(kind)
    elif kind == CONNECT:
        packet = _connect(reader)
    elif kind == CONNACK:
        session_present = reader.byte()
        if session_present > 1:
            raise MqttError("CONNACK with reserved flags")
        packet = Connack(bool(session_present), reader.byte(), reader.properties(version))
    elif kind == DISCONNECT or (kind == AUTH and version == MQTT5):
        reason = reader.byte() if version == MQTT5 and reader.left else SUCCESS
        properties = reader.properties(version) if reader.left else ()
        packet = Disconnect(reason, properties) if kind == DISCONNECT else Auth(reason, properties)
    else:
        raise MqttError(f"packet type {kind} does not exist in MQTT {'5' if version == MQTT5 else '3.1.1'}")
    reader.done()
    return packet


def _connect(reader: _Reader) -> Connect:
    name = reader.string()
    level = reader.byte()
    if name != "MQTT" or level not in (MQTT311, MQTT5):
        raise MqttError(f"protocol {name!r} level {level} is not MQTT 3.1.1 or 5", UNSUPPORTED_VERSION)
    flags = reader.byte()
    if flags & 0x01:
        raise MqttError("CONNECT with the reserved flag set")
    will_flag, will_qos, will_retain = flags & 0x04, (flags >> 3) & 0x03, bool(flags & 0x20)
    if will_qos == 3 or (not will_flag and (will_qos or will_retain)):
        raise MqttError("CONNECT with a bad will QoS or will flags without a will")
    if level == MQTT311 and flags & 0x40 and not flags & 0x80:
        raise MqttError("CONNECT with a password but no user name")
    keep_alive = reader.u16()
    properties = reader.properties(level)
    client_id = reader.string()
    will = None
    if will_flag:
        will_properties = reader.properties(level)
        topic = reader.string()
        check_topic(topic)
        will = Will(topic, reader.binary(), will_qos, will_retain, will_properties)
    username = reader.string() if flags & 0x80 else None
    password = reader.binary() if flags & 0x40 else None
    return Connect(level, client_id, bool(flags & 0x02), keep_alive, username, password, will, properties)


def _publish(flags: int, reader: _Reader, version: int) -> Publish:
    topic, packet_id, properties, payload_at = _publish_head(flags, reader, version)
    qos, retain, dup = (flags >> 1) & 0x03, bool(flags & 0x01), bool(flags & 0x08)
    return Publish(topic, reader.take(reader.left), qos, retain, dup, packet_id, properties)


def publish_head(first: int, data: bytes | bytearray, start: int, end: int, version: int) -> PublishHead:
    """A PUBLISH's topic, packet id, properties and where its payload starts, without copying the payload:
    the proxy's per-message path (``data[start:end]`` is the body)."""
    reader = _Reader(data, start, end)  # type: ignore[arg-type]
    return _publish_head(first & 0x0F, reader, version)


def _publish_head(flags: int, reader: _Reader, version: int) -> PublishHead:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MqttError("PUBLISH with QoS 3")
    if flags & 0x08 and not qos:
        raise MqttError("PUBLISH at QoS 0 with DUP set")
    topic = reader.string()
    if topic or version != MQTT5:  # MQTT 5: empty when a topic alias stands for it (the proxy checks)
        check_topic(topic)
    packet_id = _packet_id(reader) if qos else 0
    properties = reader.properties(version)
    return topic, packet_id, properties, reader.pos


def _packet_id(reader: _Reader) -> int:
    packet_id = reader.u16()
    if not packet_id:
        raise MqttError("packet identifier 0")
    return packet_id


def _ack(kind: int, reader: _Reader, version: int) -> Ack:
    packet_id = _packet_id(reader)
    if version != MQTT5 or not reader.left:
        return Ack(kind, packet_id)
    reason = reader.byte()
    return Ack(kind, packet_id, reason, reader.properties(version) if reader.left else ())


def _subscribe(reader: _Reader, version: int) -> Subscribe:
    packet_id = _packet_id(reader)
    properties = reader.properties(version)
    filters = []
    while reader.left:
        topic = reader.string()
        check_filter(topic)
        options = reader.byte()
        if options & (0xC0 if version == MQTT5 else 0xFC) or options & 0x03 == 3 or (options >> 4) & 0x03 == 3:
            raise MqttError("subscription options with reserved bits or QoS 3")
        filters.append((topic, options))
    if not filters:
        raise MqttError("SUBSCRIBE without a topic filter", PROTOCOL_ERROR)
    return Subscribe(packet_id, tuple(filters), properties)


def _suback(reader: _Reader, version: int) -> Suback:
    packet_id = _packet_id(reader)
    properties = reader.properties(version)
    return Suback(packet_id, tuple(reader.take(reader.left)), properties)


def _unsubscribe(reader: _Reader, version: int) -> Unsubscribe:
    packet_id = _packet_id(reader)
    properties = reader.properties(version)
    filters = []
    while reader.left:
        topic = reader.string()
        check_filter(topic)
        filters.append(topic)
    if not filters:
        raise MqttError("UNSUBSCRIBE without a topic filter", PROTOCOL_ERROR)
    return Unsubscribe(packet_id, tuple(filters), properties)


def _unsuback(reader: _Reader, version: int) -> Unsuback:
    packet_id = _packet_id(reader)
    if version != MQTT5:
        return Unsuback(packet_id)
    properties = reader.properties(version)
    return Unsuback(packet_id, tuple(reader.take(reader.left)), properties)


# -- topics ---------------------------------------------------------------------------------------------


def check_topic(topic: str) -> None:
    """A topic name to publish to: at least one character, no wildcard."""
    if not topic:
        raise MqttError("empty topic name", TOPIC_NAME_INVALID)
    if "+" in topic or "#" in topic:
        raise MqttError("wildcard in a topic name", TOPIC_NAME_INVALID)


def check_filter(topic: str) -> None:
    """A topic filter: ``+`` and ``#`` only as whole levels, ``#`` last; a shared one names a group."""
    group, rest = split_shared(topic)
    if not rest:
        raise MqttError("empty topic filter", TOPIC_FILTER_INVALID)
    levels = rest.split("/")
    for index, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and (level != "#" or index != len(levels) - 1)):
            raise MqttError(f"wildcard not a whole level in {topic!r}", TOPIC_FILTER_INVALID)


def split_shared(topic: str) -> tuple[str | None, str]:
    """``$share/group/filter`` → (group, filter); any other filter → (None, filter)."""
    if not topic.startswith(SHARE_PREFIX):
        return None, topic
    group, slash, rest = topic[len(SHARE_PREFIX) :].partition("/")
    if not group or not slash or "+" in group or "#" in group:
        raise MqttError(f"shared subscription {topic!r} without a valid group and filter", TOPIC_FILTER_INVALID)
    return group, rest


# -- writing --------------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    if not 0 <= value <= MAX_VARINT:
        raise MqttError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise MqttError("string or binary field over 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _string(text: str) -> bytes:
    if "\x00" in text:
        raise MqttError("string holds U+0000")
    return _binary(text.encode("utf-8"))


_WIDTHS = {_BYTE: 1, _U16: 2, _U32: 4}


def _properties(properties: Properties, version: int) -> bytes:
    if version != MQTT5:
        return b""
    out = bytearray()
    for ident, value in properties:
        kind = PROPERTY_TYPES[ident]
        out += varint(ident)
        if isinstance(value, int):
            width = _WIDTHS.get(kind)
            out += value.to_bytes(width, "big") if width else varint(value)
        elif isinstance(value, str):
            out += _string(value)
        elif isinstance(value, bytes):
            out += _binary(value)
        else:
            out += _string(value[0]) + _string(value[1])
    return varint(len(out)) + bytes(out)


def frame(first: int, body: bytes) -> bytes:
    """A whole packet: fixed header (first byte, remaining length) and body."""
    return bytes((first,)) + varint(len(body)) + body


def encode(packet: Packet, version: int) -> bytes:
    """The packet's bytes on the wire (a CONNECT is written in its own version)."""
    if isinstance(packet, Publish):
        flags = (packet.dup << 3) | (packet.qos << 1) | packet.retain
        body = _string(packet.topic) + (packet.packet_id.to_bytes(2, "big") if packet.qos else b"")
        return frame((PUBLISH << 4) | flags, body + _properties(packet.properties, version) + packet.payload)
    if isinstance(packet, Ack):
        body = packet.packet_id.to_bytes(2, "big")
        if version == MQTT5 and (packet.reason or packet.properties):
            body += bytes((packet.reason,)) + (_properties(packet.properties, version) if packet.properties else b"")
        return frame((packet.kind << 4) | _FLAGS.get(packet.kind, 0), body)
    if isinstance(packet, Subscribe):
        body = packet.packet_id.to_bytes(2, "big") + _properties(packet.properties, version)
        body += b"".join(_string(topic) + bytes((options,)) for topic, options in packet.filters)
        return frame((SUBSCRIBE << 4) | 2, body)
    if isinstance(packet, Suback):
        body = packet.packet_id.to_bytes(2, "big") + _properties(packet.properties, version) + bytes(packet.codes)
        return frame(SUBACK << 4, body)
    if isinstance(packet, Unsubscribe):
        body = packet.packet_id.to_bytes(2, "big") + _properties(packet.properties, version)
        return frame((UNSUBSCRIBE << 4) | 2, body + b"".join(_string(topic) for topic in packet.filters))
    if isinstance(packet, Unsuback):
        body = packet.packet_id.to_bytes(2, "big")
        if version == MQTT5:
            body += _properties(packet.properties, version) + bytes(packet.codes)
        return frame(UNSUBACK << 4, body)
    if isinstance(packet, Ping):
        return frame(packet.kind << 4, b"")
    if isinstance(packet, Connect):
        return frame(CONNECT << 4, _connect_body(packet))
    if isinstance(packet, Connack):
        body = bytes((int(packet.session_present), packet.code)) + _properties(packet.properties, version)
        return frame(CONNACK << 4, body)
    kind = DISCONNECT if isinstance(packet, Disconnect) else AUTH
    body = b""
    if version == MQTT5 and (packet.reason or packet.properties):
        body = bytes((packet.reason,)) + (_properties(packet.properties, version) if packet.properties else b"")
    return frame(kind << 4, body)


def _connect_body(packet: Connect) -> bytes:
    version, will = packet.version, packet.will
    flags = (packet.username is not None) << 7 | (packet.password is not None) << 6 | packet.clean << 1
    if will is not None:
        flags |= will.retain << 5 | will.qos << 3 | 0x04
    body = bytearray(_string("MQTT") + bytes((version, flags)) + packet.keep_alive.to_bytes(2, "big"))
    body += _properties(packet.properties, version) + _string(packet.client_id)
    if will is not None:
        body += _properties(will.properties, version) + _string(will.topic) + _binary(will.payload)
    if packet.username is not None:
        body += _string(packet.username)
    if packet.password is not None:
        body += _binary(packet.password)
    return bytes(body)
