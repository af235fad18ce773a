"""AMQP 0-9-1 between a WebSocket client and a broker, without I/O: what ``amqp.proxy`` forwards, rewrites and refuses.

The client's binary messages are one byte stream: a frame may span messages and a message may hold several
frames. ``FrameSplitter`` reassembles it within a bound (the frame size negotiated, ``frame-min-size`` before
that), so a peer cannot make the gateway buffer more than one frame. ``AmqpGuard`` then reads each frame with
pamqp and decides:

* the connection handshake is the gateway's: the client's ``Start-Ok`` (mechanism and response) and the virtual
  host of its ``Open`` never reach the broker; the gateway logs in with its own broker credentials and opens the
  configured virtual host (a client asking for another one is closed with 530 NOT_ALLOWED);
* ``Tune`` is capped (``channel-max``, ``frame-max``) and the client is held to what it answered;
* every governed method (``exchange.declare``, ``queue.bind``, ``basic.publish``, ...) is put to ``authorize``;
  a refusal never reaches the broker: the client gets ``Channel.Close`` 403 with the method's class and method
  ids, the gateway closes the broker's side of that channel and swallows its ``Close-Ok`` (and whatever the
  broker still sends on the old channel), so the client may open the channel number again;
* the content header of every ``basic.publish`` gets ``user-id`` from ``user_id`` (the principal), replacing
  what the client set; a body is held to the size its header declared.

Frames that pass unchanged are forwarded as the bytes they came in (runs of them in one piece); only method and
content-header frames are parsed. Broker frames are scanned, and parsed only for the few methods the gateway
tracks. A protocol violation raises ``AmqpClose`` (the reply code and text for ``Connection.Close``); a broker
that misbehaves raises ``BrokerFailure``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from pamqp import commands, constants, decode, exceptions, frame, header

Authorize = Callable[[str, dict[str, str | None]], bool]  # (operation, fields; None: unknown) → allowed?

PROTOCOL_HEADER = header.ProtocolHeader().marshal()  # b"AMQP\x00\x00\x09\x01"
HEADER_SIZE = constants.FRAME_HEADER_SIZE  # type, channel, size
OVERHEAD = HEADER_SIZE + 1  # the header and the frame-end octet
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = (
    constants.FRAME_METHOD,
    constants.FRAME_HEADER,
    constants.FRAME_BODY,
    constants.FRAME_HEARTBEAT,
)
FRAME_TYPES = frozenset((FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT))
CHANNEL_MAX = 2047  # RabbitMQ's default: the most channels the gateway lets one client open
FRAME_MAX = constants.FRAME_MAX_SIZE  # 128 KiB: the largest frame the gateway buffers once tuned
HANDSHAKE_FRAME_MAX = constants.FRAME_MIN_SIZE  # before Tune, frames are at most frame-min-size (4096)
BROKER_HANDSHAKE_FRAME_MAX = FRAME_MAX  # the broker's Start may be larger than the client may send
MECHANISMS = "PLAIN AMQPLAIN"  # offered to the client; whatever it answers is replaced by the gateway's login
KEEP = "\0keep"  # user_id's answer for "leave the client's user-id as it is"

# Reply codes (AMQP 0-9-1 constants).
ACCESS_REFUSED = 403
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
NOT_ALLOWED = 530


class AmqpClose(Exception):
    """The client broke the protocol or asked for what the gateway does not allow: close the connection with
    ``Connection.Close(code, text, class_id, method_id)``."""

    def __init__(self, code: int, text: str, index: int = 0) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text
        self.index = index  # the method at fault: class id << 16 | method id

    def frame(self) -> bytes:
        name = _REPLY_NAMES.get(self.code, "ERROR")
        return marshal(commands.Connection.Close(self.code, f"{name} - {self.text}"[:255], *_ids(self.index)), 0)


class BadProtocolHeader(Exception):
    """The client did not open with AMQP 0-9-1's protocol header: the spec answers with the header it speaks."""


class BrokerFailure(Exception):
    """The broker sent what the gateway cannot relay (malformed frames, a SASL challenge)."""


class ClientDone(Exception):
    """The client closed the connection before it was open: answered with ``Close-Ok``, nothing to relay."""


_REPLY_NAMES = {
    ACCESS_REFUSED: "ACCESS_REFUSED",
    FRAME_ERROR: "FRAME_ERROR",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    COMMAND_INVALID: "COMMAND_INVALID",
    CHANNEL_ERROR: "CHANNEL_ERROR",
    UNEXPECTED_FRAME: "UNEXPECTED_FRAME",
    NOT_ALLOWED: "NOT_ALLOWED",
}


def _ids(index: int) -> tuple[int, int]:
    return index >> 16, index & 0xFFFF


def marshal(value: frame.FrameTypes, channel: int) -> bytes:
    return frame.marshal(value, channel)


class FrameSplitter:
    """Complete frames out of a byte stream, at most ``limit`` bytes each (header and end octet included).

    ``feed`` returns the bytes the frames are in and ``(type, channel, start, end)`` for each complete frame;
    the incomplete tail is kept for the next call. An oversized or malformed frame raises ``error`` as soon as
    its header shows it, so the buffer never holds more than one frame.
    """

    __slots__ = ("tail", "limit", "error")

    def __init__(self, limit: int, error: Callable[[int, str], Exception]) -> None:
        self.tail = b""
        self.limit = limit
        self.error = error

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int, int]]]:
        chunk = self.tail + data if self.tail else data
        frames = []
        offset, size = 0, len(chunk)
        limit = self.limit
        while size - offset >= HEADER_SIZE:
            kind, channel, length = frame.frame_parts(chunk[offset : offset + HEADER_SIZE])
            if kind not in FRAME_TYPES:
                raise self.error(FRAME_ERROR, f"unknown frame type {kind}")
            if length is None or length + OVERHEAD > limit:
                raise self.error(FRAME_ERROR, f"frame of {length} bytes exceeds frame-max {limit}")
            if kind == FRAME_HEARTBEAT and (length or channel):
                raise self.error(FRAME_ERROR, "a heartbeat must be empty and on channel 0")
            end = offset + length + OVERHEAD
            if end > size:
                break
            if chunk[end - 1] != constants.FRAME_END:
                raise self.error(FRAME_ERROR, "frame-end octet missing")
            frames.append((kind, channel, offset, end))
            offset = end
        self.tail = chunk[offset:] if offset < size else b""
        return chunk, frames

    @property
    def pending(self) -> int:
        return len(self.tail)


# Channel states.
OPEN, CLOSING, BROKER_CLOSING, REFUSED = range(4)
NO_CONTENT, HEADER_NEXT = 0, -1  # ChannelState.content: nothing expected, a content header, else body bytes left


class ChannelState:
    __slots__ = (
        "state",
        "content",
        "last_queue",
        "declares",
        "declared",
        "publish",
        "exchange",
        "consumers",
        "consuming",
    )

    def __init__(self) -> None:
        self.state = OPEN
        self.content = NO_CONTENT
        # The queue last declared here, as the broker will know it when it reads the next method: the name the
        # client gave, or the broker's (Declare-Ok) for a server-named one; None while that is unknown.
        self.last_queue: str | None = None
        self.declares: list[int] = []  # sequence numbers of the declares still waiting for their Declare-Ok
        self.declared = 0  # the sequence number of the last declare passed to the broker
        self.publish = b""  # a basic.publish frame held until its content header is decided (CC/BCC)
        self.exchange = ""  # that publish's exchange
        self.consumers: dict[str, str] = {}  # consumer tag → its queue, decided again when rules or roles change
        # Each consume waiting for its Consume-Ok, in order: the queue when the broker makes the tag, else None.
        self.consuming: list[str | None] = []


@dataclass(frozen=True)
class Login:
    """The gateway's login to the broker: never the client's."""

    username: str
    password: str = ""
    virtual_host: str = "/"
    mechanism: str = "PLAIN"

    def response(self) -> str:
        if self.mechanism == "EXTERNAL":
            return ""
        return f"\0{self.username}\0{self.password}"

    def __repr__(self) -> str:  # the password never reaches a log line or traceback
        return f"Login(username={self.username!r}, virtual_host={self.virtual_host!r}, mechanism={self.mechanism!r})"


def _fields(method: object, *names: str) -> dict[str, str | None]:
    return {name: getattr(method, name.replace("-", "_")) for name in names}


# The methods rules govern: pamqp class → (operation, fields it is decided on).
GOVERNED: dict[type, tuple[str, tuple[str, ...]]] = {
    commands.Exchange.Declare: ("exchange.declare", ("exchange",)),
    commands.Exchange.Delete: ("exchange.delete", ("exchange",)),
    commands.Exchange.Bind: ("exchange.bind", ()),  # not governable: refused whenever the service has rules
    commands.Exchange.Unbind: ("exchange.unbind", ()),
    commands.Queue.Declare: ("queue.declare", ("queue",)),
    commands.Queue.Bind: ("queue.bind", ("queue", "exchange", "routing-key")),
    commands.Queue.Unbind: ("queue.unbind", ("queue", "exchange", "routing-key")),
    commands.Queue.Delete: ("queue.delete", ("queue",)),
    commands.Queue.Purge: ("queue.purge", ("queue",)),
    commands.Basic.Publish: ("basic.publish", ("exchange", "routing-key")),
    commands.Basic.Consume: ("basic.consume", ("queue",)),
    commands.Basic.Get: ("basic.get", ("queue",)),
}
# Methods whose empty queue name means "the queue last declared on this channel" (AMQP's shortcut).
LAST_QUEUE_SHORTCUT = frozenset(
    (
        commands.Queue.Bind,
        commands.Queue.Unbind,
        commands.Queue.Delete,
        commands.Queue.Purge,
        commands.Basic.Consume,
        commands.Basic.Get,
    )
)
# Where a message may go besides the exchange and routing key it is published with: RabbitMQ routes a
# message again with each CC and BCC header entry (sender-selected distribution), sends what an exchange
# cannot route to its alternate exchange, and what a queue dead-letters to its dead-letter exchange (with
# its dead-letter routing key, else the message's own keys). Each is decided as a basic.publish.
ROUTING_HEADERS = (b"CC", b"BCC")
ANY_KEY = "#"  # a routing key the gateway cannot know in advance: only a rule with routing-key # covers it
_KEY_SHORTCUT = frozenset((commands.Queue.Bind, commands.Queue.Unbind))  # empty queue and key: the key is its name
_FORWARDING: dict[type, tuple[str, str | None]] = {  # declare → (argument naming an exchange, its routing key)
    commands.Exchange.Declare: ("alternate-exchange", None),
    commands.Queue.Declare: ("x-dead-letter-exchange", "x-dead-letter-routing-key"),
}
_CHANNEL_CLOSE = commands.Channel.Close.index
_CHANNEL_CLOSE_OK = commands.Channel.CloseOk.index
_QUEUE_DECLARE_OK = commands.Queue.DeclareOk.index
_CONSUME_OK = commands.Basic.ConsumeOk.index
_CONNECTION_CLOSE = commands.Connection.Close.index
_CONNECTION_CLOSE_OK = commands.Connection.CloseOk.index
_CONNECTION_CLASS = commands.Connection.frame_id

# Client and broker handshake states.
C_HEADER, C_START_OK, C_TUNE_OK, C_OPEN, C_RUNNING, C_CLOSING = range(6)
B_START, B_TUNE, B_RUNNING = range(3)


def _method(chunk: bytes, start: int, end: int, error: Callable[[int, str], Exception]) -> object:
    try:
        return frame.unmarshal(chunk[start:end])[2]
    except (exceptions.UnmarshalingException, ValueError, UnicodeDecodeError) as exc:
        raise error(SYNTAX_ERROR, f"malformed method frame: {exc}") from None


def _index(chunk: bytes, start: int) -> int:
    return int.from_bytes(chunk[start + HEADER_SIZE : start + HEADER_SIZE + 4], "big")


# Basic's content properties in wire order (AMQP 0-9-1 §4.2.6): the property flag bit and how each is encoded.
_SHORTSTR, _OCTET, _TABLE, _LONGLONG = range(4)
_BASIC_PROPERTIES = (
    (15, _SHORTSTR),  # content-type
    (14, _SHORTSTR),  # content-encoding
    (13, _TABLE),  # headers
    (12, _OCTET),  # delivery-mode
    (11, _OCTET),  # priority
    (10, _SHORTSTR),  # correlation-id
    (9, _SHORTSTR),  # reply-to
    (8, _SHORTSTR),  # expiration
    (7, _SHORTSTR),  # message-id
    (6, _LONGLONG),  # timestamp
    (5, _SHORTSTR),  # type
    (4, _SHORTSTR),  # user-id
    (3, _SHORTSTR),  # app-id
    (2, _SHORTSTR),  # cluster-id
)
_SIZES = {_OCTET: 1, _LONGLONG: 8}
HEADERS_BIT, USER_ID_BIT = 13, 4
PROPERTIES_AT = 12  # class id, weight, body size: then the property flags
_BASIC_CLASS = commands.Basic.frame_id.to_bytes(2, "big")


def _property_spans(payload: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    """A basic content header's property flags and where each property present lies in ``payload``, read by
    the lengths alone (nothing decoded, so nothing re-encoded differently)."""
    flags = int.from_bytes(payload[PROPERTIES_AT : PROPERTIES_AT + 2], "big")
    if flags & 0x03:
        raise AmqpClose(SYNTAX_ERROR, "content header with reserved property flags set")
    spans: dict[int, tuple[int, int]] = {}
    pos, size = PROPERTIES_AT + 2, len(payload)
    for bit, kind in _BASIC_PROPERTIES:
        if not flags >> bit & 1:
            continue
        start = pos
        if kind == _SHORTSTR:
            pos += 1 + (payload[pos] if pos < size else size)
        elif kind == _TABLE:
            pos += 4 + (int.from_bytes(payload[pos : pos + 4], "big") if pos + 4 <= size else size)
        else:
            pos += _SIZES[kind]
        if pos > size:
            raise AmqpClose(SYNTAX_ERROR, "content header property runs past the frame")
        spans[bit] = (start, pos)
    if pos != size:
        raise AmqpClose(SYNTAX_ERROR, "content header with bytes after its properties")
    return flags, spans


def _routing_keys(table: bytes) -> tuple[str | None, ...]:
    """The routing keys the CC and BCC entries of a headers table add, from every entry of those names (a
    duplicated key: RabbitMQ reads the first, pamqp the last); None for an entry that is not text."""
    keys: list[str | None] = []
    pos, size = 0, len(table)
    try:
        while pos < size:
            length = table[pos]
            name = table[pos + 1 : pos + 1 + length]
            pos += 1 + length
            if pos >= size:
                raise ValueError("a key without a value")
            used, value = decode.embedded_value(table[pos:])
            pos += used
            if name in ROUTING_HEADERS:
                items = value if isinstance(value, list) else [value]
                keys.extend(item if isinstance(item, str) else None for item in items)
    except (ValueError, TypeError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise AmqpClose(SYNTAX_ERROR, f"malformed headers table: {exc}") from None
    if pos != size:
        raise AmqpClose(SYNTAX_ERROR, "malformed headers table: an entry runs past it")
    return tuple(keys)


class AmqpGuard:
    """One proxied AMQP connection's protocol state; ``from_client``/``from_broker`` fill ``to_broker`` and
    ``to_client`` (lists of bytes to send, in order)."""

    def __init__(
        self,
        login: Login,
        authorize: Authorize,
        user_id: Callable[[], str | None],
        basis: Callable[[], tuple[object, object]] = lambda: (None, None),
    ) -> None:
        self.login = login
        self.authorize = authorize
        self.user_id = user_id
        # What decisions rest on (the rules, the identity): when either changes, consumers are decided again.
        self.basis = basis
        self.decided_on: tuple[object, object] = basis()
        self.recheck = False  # a consumer's channel was mid-publish at the last change: decide again later
        self.to_broker: list[bytes] = []
        self.to_client: list[bytes] = []
        self.client_state = C_HEADER
        self.broker_state = B_START
        self.header = b""
        self.client = FrameSplitter(HANDSHAKE_FRAME_MAX, AmqpClose)
        self.broker = FrameSplitter(BROKER_HANDSHAKE_FRAME_MAX, _broker_error)
        self.channels: dict[int, ChannelState] = {}
        self.swallow: set[int] = set()  # channels the gateway closed on the broker: drop until its Close-Ok
        self.held: dict[int, list[bytes]] = {}  # frames of a channel reopened before that Close-Ok
        self.refused_held: set[int] = set()  # held channels refused again: swallowed again once released
        self.offered: tuple[int, int] | None = None  # (channel-max, frame-max) the client was offered
        self.channel_max = CHANNEL_MAX
        self.login_refused: str | None = None  # the broker closed the connection during the handshake
        self.finished = False  # Connection.Close-Ok has passed: the connection is over
        self.closing_client = False  # the service closes the client from the broker's side (its I/O state)
        # Hot-path memory: the last basic.publish parsed and the last content header rewritten, by their bytes.
        self.last_method: tuple[bytes, object] = (b"", None)
        self.last_header: tuple[tuple[int, bytes, str | None], tuple[int, bytes | None, tuple[str | None, ...]]] = (
            (0, b"", None),
            (0, None, ()),
        )

    @property
    def running(self) -> bool:
        return self.client_state >= C_RUNNING

    @property
    def logging_in(self) -> bool:
        """The gateway's Start-Ok went out and the broker has not tuned yet: a hang-up now refuses its login."""
        return self.client_state >= C_TUNE_OK and self.broker_state != B_RUNNING

    # -- client → broker -----------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if self.client_state == C_HEADER:
            data = self._protocol_header(data)
            if not data:
                return
        chunk, frames = self.client.feed(data)
        out = self.to_broker
        run_start = run_end = -1
        try:
            for kind, channel, start, end in frames:
                replacement = self._client_frame(kind, channel, chunk, start, end)
                if replacement is None:
                    if run_start < 0:
                        run_start = start
                    run_end = end
                    continue
                if run_start >= 0:
                    out.append(chunk[run_start:run_end])
                    run_start = -1
                if replacement:
                    out.append(replacement)
        finally:  # frames accepted before a violation are still forwarded
            if run_start >= 0:
                out.append(chunk[run_start:run_end])

    def _protocol_header(self, data: bytes) -> bytes:
        header_bytes = self.header + data
        if len(header_bytes) < len(PROTOCOL_HEADER):
            if not PROTOCOL_HEADER.startswith(header_bytes):
                raise BadProtocolHeader()
            self.header = header_bytes
            return b""
        if header_bytes[: len(PROTOCOL_HEADER)] != PROTOCOL_HEADER:
            raise BadProtocolHeader()
        self.header = b""
        self.client_state = C_START_OK
        self.to_broker.append(PROTOCOL_HEADER)
        return header_bytes[len(PROTOCOL_HEADER) :]

    def _client_frame(self, kind: int, channel: int, chunk: bytes, start: int, end: int) -> bytes | None:
        """None: forward as is; bytes: send these instead (b"": drop)."""
        if kind == FRAME_HEARTBEAT:
            return None
        state = self.client_state
        if channel == 0:
            if kind != FRAME_METHOD:
                raise AmqpClose(UNEXPECTED_FRAME, "content frames on channel 0")
            method = _method(chunk, start, end, AmqpClose)
            if state == C_RUNNING:
                return self._connection_method(method)
            return self._handshake(method)
        if state == C_CLOSING:
            return b""  # after Connection.Close only Close-Ok counts (on channel 0)
        if state != C_RUNNING:
            raise AmqpClose(CHANNEL_ERROR, f"frame on channel {channel} before the connection is open")
        if channel > self.channel_max:
            raise AmqpClose(CHANNEL_ERROR, f"channel {channel} is above channel-max {self.channel_max}")
        current = self.channels.get(channel)
        if current is None:
            result = self._unopened(kind, channel, chunk, start, end)
        else:
            result = self._channel_frame(current, kind, channel, chunk, start, end)
        if channel in self.held:
            return self._hold(channel, chunk[start:end] if result is None else result)
        return result

    def _hold(self, channel: int, data: bytes) -> bytes:
        """A channel reopened before the broker confirmed the gateway's close: the broker would refuse the second
        Open, so its frames wait for that Close-Ok (at most one frame-max of them)."""
        held = self.held[channel]
        held.append(data)
        if sum(map(len, held)) > self.client.limit:
            raise AmqpClose(UNEXPECTED_FRAME, f"too much on channel {channel} before its Open-Ok")
        return b""

    def _release(self, channel: int) -> None:
        held = self.held.pop(channel, None)
        if held:
            self.to_broker.extend(held)
        if channel in self.refused_held:  # the held frames end with the gateway's Close: its answers are ours
            self.refused_held.discard(channel)
            self.swallow.add(channel)

    def _channel_frame(
        self, current: ChannelState, kind: int, channel: int, chunk: bytes, start: int, end: int
    ) -> bytes | None:
        if current.state != OPEN:
            return self._closing(current, kind, channel, chunk, start, end)
        if current.content != NO_CONTENT:
            return self._content(current, kind, channel, chunk, start, end)
        if kind != FRAME_METHOD:
            raise AmqpClose(UNEXPECTED_FRAME, f"content frame on channel {channel} without a basic.publish")
        payload = chunk[start + HEADER_SIZE : end - 1]
        if payload == self.last_method[0]:  # a client publishing again to the same place: parsed once
            method = self.last_method[1]
        else:
            method = _method(chunk, start, end, AmqpClose)
            if type(method) is commands.Basic.Publish:
                self.last_method = (payload, method)
        result = self._channel_method(current, channel, method)
        if current.content == HEADER_NEXT:  # an allowed publish waits for its header: CC/BCC may refuse it yet
            current.publish = chunk[start:end]
            return b""
        return result

    def _handshake(self, method: object) -> bytes | None:
        state = self.client_state
        if isinstance(method, commands.Connection.Close):
            raise ClientDone()
        if state == C_START_OK and isinstance(method, commands.Connection.StartOk):
            self.client_state = C_TUNE_OK
            ok = commands.Connection.StartOk(
                client_properties=method.client_properties or {},
                mechanism=self.login.mechanism,
                response=self.login.response(),
                locale=method.locale or "en_US",
            )
            return marshal(ok, 0)
        if state == C_TUNE_OK and isinstance(method, commands.Connection.TuneOk):
            return self._tune_ok(method)
        if state == C_OPEN and isinstance(method, commands.Connection.Open):
            wanted = method.virtual_host
            if wanted not in ("", self.login.virtual_host):
                raise AmqpClose(NOT_ALLOWED, f"access to vhost '{wanted}' refused", method.index)
            self.client_state = C_RUNNING
            return marshal(commands.Connection.Open(virtual_host=self.login.virtual_host), 0)
        raise AmqpClose(COMMAND_INVALID, f"unexpected {method.name} during the handshake", method.index)  # type: ignore[attr-defined]

    def _tune_ok(self, method: commands.Connection.TuneOk) -> bytes:
        if self.offered is None:
            raise AmqpClose(COMMAND_INVALID, "Tune-Ok before Tune", method.index)
        channel_max, frame_max = self.offered
        wanted_channels = method.channel_max or channel_max
        wanted_frame = method.frame_max or frame_max
        if wanted_channels > channel_max:
            raise AmqpClose(NOT_ALLOWED, f"channel-max {wanted_channels} above the {channel_max} offered", method.index)
        if not constants.FRAME_MIN_SIZE <= wanted_frame <= frame_max:
            raise AmqpClose(NOT_ALLOWED, f"frame-max {wanted_frame} outside 4096..{frame_max}", method.index)
        self.channel_max = wanted_channels
        self.client.limit = wanted_frame
        self.broker.limit = wanted_frame
        self.client_state = C_OPEN
        return marshal(commands.Connection.TuneOk(wanted_channels, wanted_frame, method.heartbeat), 0)

    def _connection_method(self, method: object) -> bytes | None:
        if isinstance(method, commands.Connection.Close):
            self.client_state = C_CLOSING
            return None
        if isinstance(method, commands.Connection.CloseOk):  # it answered the broker's Close: done
            self.client_state = C_CLOSING
            self.finished = True
            return None
        # Start-Ok, Tune-Ok, Open again, Update-Secret (a new broker credential): the login is the gateway's.
        raise AmqpClose(COMMAND_INVALID, f"{method.name} is not allowed once open", method.index)  # type: ignore[attr-defined]

    def _unopened(self, kind: int, channel: int, chunk: bytes, start: int, end: int) -> bytes | None:
        if kind == FRAME_METHOD:
            method = _method(chunk, start, end, AmqpClose)
            if isinstance(method, commands.Channel.Open):
                self.channels[channel] = ChannelState()
                if channel in self.swallow:
                    self.held.setdefault(channel, [])  # (after a refusal while held: kept, in order)
                return None
            raise AmqpClose(CHANNEL_ERROR, f"channel {channel} is not open", method.index)  # type: ignore[attr-defined]
        raise AmqpClose(CHANNEL_ERROR, f"channel {channel} is not open")

    def _closing(
        self, current: ChannelState, kind: int, channel: int, chunk: bytes, start: int, end: int
    ) -> bytes | None:
        """A channel being closed: only its Close-Ok (or Close, both sides closing) counts; the rest is dropped,
        as the spec has the receiver of a Close do."""
        if kind != FRAME_METHOD:
            return b""
        index = _index(chunk, start)
        if current.state == REFUSED:  # the gateway's Close: the client's answer is the gateway's business
            if index == _CHANNEL_CLOSE_OK:
                del self.channels[channel]
            elif index == _CHANNEL_CLOSE:  # it closed too, crossing the gateway's Close: answered, as the spec says
                self.to_client.append(marshal(commands.Channel.CloseOk(), channel))
            elif index == commands.Channel.Open.index:  # it took its own Close-Ok as the end: a new channel
                del self.channels[channel]
                return self._unopened(FRAME_METHOD, channel, chunk, start, end)
            return b""
        if index == _CHANNEL_CLOSE_OK:
            if current.state == BROKER_CLOSING:
                del self.channels[channel]
            return chunk[start:end]
        if index == _CHANNEL_CLOSE and current.state == BROKER_CLOSING:
            return chunk[start:end]
        return b""

    def _content(
        self, current: ChannelState, kind: int, channel: int, chunk: bytes, start: int, end: int
    ) -> bytes | None:
        if current.content == HEADER_NEXT:
            if kind != FRAME_HEADER:
                raise AmqpClose(UNEXPECTED_FRAME, f"expected a content header on channel {channel}")
            return self._content_header(current, channel, chunk, start, end)
        if kind != FRAME_BODY:
            raise AmqpClose(UNEXPECTED_FRAME, f"expected a content body on channel {channel}")
        size = end - start - OVERHEAD
        if size > current.content:
            raise AmqpClose(FRAME_ERROR, f"content body on channel {channel} is larger than its header declared")
        current.content -= size
        return None

    def _content_header(self, current: ChannelState, channel: int, chunk: bytes, start: int, end: int) -> bytes:
        """The header of a publish: its body size kept, ``user-id`` set, its CC/BCC routing keys decided with the
        publish's exchange; then the held publish and the header go on together. The same header again (same
        channel, same user-id wanted) reuses the last reading."""
        payload = chunk[start + HEADER_SIZE : end - 1]
        wanted = self.user_id()
        key = (channel, payload, wanted)
        if key == self.last_header[0]:
            current.content, replacement, routes = self.last_header[1]
        else:
            replacement, routes = self._read_header(current, channel, payload, wanted)
            self.last_header = (key, (current.content, replacement, routes))
        publish, current.publish = current.publish, b""
        authorize, exchange = self.authorize, current.exchange
        for route in routes:
            if not authorize("basic.publish", {"exchange": exchange, "routing-key": route}):
                return self._refuse(current, channel, "basic.publish", commands.Basic.Publish.index)
        return publish + (chunk[start:end] if replacement is None else replacement)

    def _read_header(
        self, current: ChannelState, channel: int, payload: bytes, wanted: str | None
    ) -> tuple[bytes | None, tuple[str | None, ...]]:
        """The header frame to send instead (None: as it came) and the CC/BCC routing keys it adds (None: one
        that is not text). Only ``user-id`` changes; every other property goes on byte for byte."""
        if len(payload) < PROPERTIES_AT + 2 or payload[:2] != _BASIC_CLASS:
            raise AmqpClose(FRAME_ERROR, "content header of a class other than basic, or too short")
        current.content = int.from_bytes(payload[4:PROPERTIES_AT], "big") or NO_CONTENT
        flags, spans = _property_spans(payload)
        routes: tuple[str | None, ...] = ()
        table = spans.get(HEADERS_BIT)
        if table is not None and b"CC" in payload[table[0] : table[1]]:  # BCC holds CC too
            routes = _routing_keys(payload[table[0] + 4 : table[1]])
        if wanted == KEEP:
            return None, routes
        span = spans.get(USER_ID_BIT)
        new = wanted.encode() if wanted is not None else None
        if (payload[span[0] + 1 : span[1]] if span is not None else None) == new:
            return None, routes
        if span is None:  # inserted where it belongs: before the first property that follows it
            later = [edges[0] for bit, edges in spans.items() if bit < USER_ID_BIT]
            span = (min(later),) * 2 if later else (len(payload),) * 2
        value = b"" if new is None else bytes((len(new),)) + new
        flags = flags | 1 << USER_ID_BIT if new is not None else flags & ~(1 << USER_ID_BIT)
        body = payload[:PROPERTIES_AT] + flags.to_bytes(2, "big") + payload[PROPERTIES_AT + 2 : span[0]]
        body += value + payload[span[1] :]
        if len(body) + OVERHEAD > self.client.limit:
            raise AmqpClose(FRAME_ERROR, f"content header with user-id {wanted!r} exceeds frame-max")
        out = bytes((FRAME_HEADER,)) + channel.to_bytes(2, "big") + len(body).to_bytes(4, "big") + body
        return out + bytes((constants.FRAME_END,)), routes

    def _channel_method(self, current: ChannelState, channel: int, method: object) -> bytes | None:
        kind = type(method)
        governed = GOVERNED.get(kind)
        if governed is not None:
            operation, names = governed
            fields = _fields(method, *names)
            if kind in LAST_QUEUE_SHORTCUT and not fields.get("queue"):
                fields["queue"] = current.last_queue  # None while unknown: refused if the service has rules
                if kind in _KEY_SHORTCUT and not fields["routing-key"]:  # RabbitMQ binds with the queue's name
                    fields["routing-key"] = current.last_queue
            if (
                not self.authorize(operation, fields)
                or (kind in _FORWARDING and not self._forwarding_allowed(kind, method))
                or (kind is commands.Basic.Publish and not self._user_id_fits())
            ):
                return self._refuse(current, channel, operation, method.index)  # type: ignore[attr-defined]
            if kind is commands.Basic.Publish:
                current.content = HEADER_NEXT
                current.exchange = method.exchange  # type: ignore[attr-defined]
            elif kind is commands.Queue.Declare:
                _declaring(current, method)  # type: ignore[arg-type]
            elif kind is commands.Basic.Consume:
                _consuming(current, method, fields["queue"] or "")  # type: ignore[arg-type]
            return None
        if kind is commands.Basic.Cancel:
            current.consumers.pop(method.consumer_tag, None)  # type: ignore[attr-defined]
            return None
        if kind is commands.Channel.Close:
            current.state = CLOSING
            return None
        if kind is commands.Channel.CloseOk:
            raise AmqpClose(CHANNEL_ERROR, f"Close-Ok on channel {channel}, which nobody is closing", method.index)  # type: ignore[attr-defined]
        if kind is commands.Channel.Open:
            raise AmqpClose(CHANNEL_ERROR, f"channel {channel} is already open", method.index)  # type: ignore[attr-defined]
        if method.index >> 16 == _CONNECTION_CLASS:  # type: ignore[attr-defined]
            raise AmqpClose(COMMAND_INVALID, f"{method.name} on channel {channel}", method.index)  # type: ignore[attr-defined]
        return None

    def _forwarding_allowed(self, kind: type, method: object) -> bool:
        """A declared alternate exchange, or dead-letter exchange, is where messages will be published: decided as
        a basic.publish to it, with the dead-letter routing key if one is set, else any key (#)."""
        exchange_name, key_name = _FORWARDING[kind]
        arguments = getattr(method, "arguments", None) or {}
        if exchange_name not in arguments:
            return True
        exchange, key = arguments[exchange_name], arguments.get(key_name, ANY_KEY) if key_name else ANY_KEY
        return self.authorize(
            "basic.publish",
            {
                "exchange": exchange if isinstance(exchange, str) else None,  # None: refused once there are rules
                "routing-key": key if isinstance(key, str) else None,
            },
        )

    def _user_id_fits(self) -> bool:
        wanted = self.user_id()
        return wanted is None or wanted == KEEP or len(wanted.encode()) <= 255

    def _refuse(self, current: ChannelState, channel: int, operation: str, index: int) -> bytes:
        """Refused the AMQP way: ``Channel.Close`` 403 to the client, the broker's side of the channel closed."""
        current.state = REFUSED
        current.content = NO_CONTENT
        text = f"ACCESS_REFUSED - {operation} refused by the gateway"
        self.to_client.append(marshal(commands.Channel.Close(ACCESS_REFUSED, text, *_ids(index)), channel))
        if channel in self.held:  # still waiting for the broker's Close-Ok of the channel's previous refusal
            self.refused_held.add(channel)
        self.swallow.add(channel)
        return marshal(commands.Channel.Close(constants.REPLY_SUCCESS, "closed by the gateway", 0, 0), channel)

    # -- broker → client -----------------------------------------------------------------------

    def from_broker(self, data: bytes) -> None:
        basis = self.basis()
        if self.recheck or basis[0] is not self.decided_on[0] or basis[1] is not self.decided_on[1]:
            self.decided_on = basis
            self._decide_consumers()
        chunk, frames = self.broker.feed(data)
        out = self.to_client
        run_start = run_end = -1
        for kind, channel, start, end in frames:
            replacement = self._broker_frame(kind, channel, chunk, start, end)
            if replacement is None:
                if run_start < 0:
                    run_start = start
                run_end = end
                continue
            if run_start >= 0:
                out.append(chunk[run_start:run_end])
                run_start = -1
            if replacement:
                out.append(replacement)
        if run_start >= 0:
            out.append(chunk[run_start:run_end])

    def _broker_frame(self, kind: int, channel: int, chunk: bytes, start: int, end: int) -> bytes | None:
        if self.broker_state != B_RUNNING:
            return self._broker_handshake(kind, channel, chunk, start, end)
        if channel in self.swallow:  # the old incarnation of a channel the gateway closed
            if kind == FRAME_METHOD:
                index = _index(chunk, start)
                if index == _CHANNEL_CLOSE_OK:
                    self.swallow.discard(channel)
                    self._release(channel)
                elif index == _CHANNEL_CLOSE:  # both sides closing: answer it, as the client cannot
                    self.swallow.discard(channel)
                    self.to_broker.append(marshal(commands.Channel.CloseOk(), channel))
                    self._release(channel)
            return b""
        if kind != FRAME_METHOD:
            return None
        index = _index(chunk, start)
        if channel == 0:
            if index == _CONNECTION_CLOSE_OK:  # the client's Connection.Close answered: nothing more to relay
                self.finished = True
            return None
        if index == _CHANNEL_CLOSE:
            current = self.channels.get(channel)
            if current is not None and current.state == OPEN:
                current.state = BROKER_CLOSING
                current.content = NO_CONTENT
        elif index == _CHANNEL_CLOSE_OK:
            current = self.channels.get(channel)
            if current is not None and current.state == CLOSING:
                del self.channels[channel]
        elif index == _CONSUME_OK:
            current = self.channels.get(channel)
            if current is not None and current.consuming and (queue := current.consuming.pop(0)) is not None:
                ok = _method(chunk, start, end, _broker_error)
                current.consumers[ok.consumer_tag] = queue  # type: ignore[attr-defined]
        elif index == _QUEUE_DECLARE_OK:
            current = self.channels.get(channel)
            if current is not None and current.declares and current.declares.pop(0) == current.declared:
                ok = _method(chunk, start, end, _broker_error)  # the answer to the last declare: its name
                current.last_queue = ok.queue  # type: ignore[attr-defined]
        return None

    def _decide_consumers(self) -> None:
        """The rules or the identity changed: a consumer whose queue they no longer allow has its channel closed
        with 403, as if its basic.consume were refused now, before the broker delivers anything more on it (a
        channel in the middle of a publish the client sends is decided once that publish is complete)."""
        self.recheck = False
        for channel, current in list(self.channels.items()):
            if current.state != OPEN or not current.consumers:
                continue
            if current.content > 0:
                self.recheck = True
                continue
            for queue in current.consumers.values():
                if not self.authorize("basic.consume", {"queue": queue}):
                    self.to_broker.append(self._refuse(current, channel, "basic.consume", commands.Basic.Consume.index))
                    break

    def _broker_handshake(self, kind: int, channel: int, chunk: bytes, start: int, end: int) -> bytes | None:
        if kind == FRAME_HEARTBEAT:
            return None
        if kind != FRAME_METHOD or channel != 0:
            raise BrokerFailure("content or channel frame during the handshake")
        method = _method(chunk, start, end, _broker_error)
        if isinstance(method, commands.Connection.Close):
            self.login_refused = f"{method.reply_code} {method.reply_text}"
            return None
        if self.broker_state == B_START and isinstance(method, commands.Connection.Start):
            self.broker_state = B_TUNE
            start_frame = commands.Connection.Start(
                version_major=method.version_major,
                version_minor=method.version_minor,
                server_properties=method.server_properties,
                mechanisms=MECHANISMS,
                locales=method.locales,
            )
            return marshal(start_frame, 0)
        if self.broker_state == B_TUNE and isinstance(method, commands.Connection.Tune):
            self.broker_state = B_RUNNING
            channel_max = min(method.channel_max or CHANNEL_MAX, CHANNEL_MAX)
            frame_max = min(method.frame_max or FRAME_MAX, FRAME_MAX)
            self.offered = (channel_max, frame_max)
            return marshal(commands.Connection.Tune(channel_max, frame_max, method.heartbeat), 0)
        if isinstance(method, commands.Connection.Secure):
            raise BrokerFailure(
                f"the broker asks a SASL challenge for {self.login.mechanism}; the gateway answers none"
            )
        raise BrokerFailure(f"unexpected {method.name} from the broker during the handshake")  # type: ignore[attr-defined]

    def take_to_broker(self) -> bytes:
        return _take(self.to_broker)

    def take_to_client(self) -> bytes:
        return _take(self.to_client)


def _declaring(current: ChannelState, method: commands.Queue.Declare) -> None:
    """A queue.declare on its way to the broker: from now on the broker's "last declared queue" is this one
    (the name given; a server-named one is unknown until its Declare-Ok)."""
    current.declared += 1
    current.last_queue = method.queue or None
    if not method.nowait:
        current.declares.append(current.declared)


def _consuming(current: ChannelState, method: commands.Basic.Consume, queue: str) -> None:
    """A basic.consume on its way to the broker: its queue, by its tag (the broker's, from Consume-Ok, when the
    client leaves it empty; one nobody will learn, for an empty tag with no-wait, is kept for the channel's life)."""
    if method.consumer_tag:
        current.consumers[method.consumer_tag] = queue
        if not method.nowait:
            current.consuming.append(None)  # its Consume-Ok names a tag already known
    elif method.nowait:
        tag = f"\0{len(current.consumers)}"
        while tag in current.consumers:
            tag += "+"
        current.consumers[tag] = queue
    else:
        current.consuming.append(queue)


def _take(parts: list[bytes]) -> bytes:
    if not parts:
        return b""
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    parts.clear()
    return data


def _broker_error(code: int, text: str) -> Exception:
    return BrokerFailure(f"{code} {text}")
