"""WSE wire format without I/O: frames, commands, the text encodings and sequence numbers.

The k3po specification (``specification/wse/SPEC.md``) extends draft-76 framing:

- binary ``0x80 <length> bytes``, text ``0x81 <length> utf-8`` (or, upstream only, the delimited
  ``0x00 utf-8 0xFF``); a length is 7 bits a byte, most significant first, the high bit set on every
  byte but the last (128 is ``0x81 0x00``);
- commands ``0x01 <hex digits> 0xFF``: ``"00"`` no-op (padding, heartbeat), ``"01"`` reconnect (ends a
  downstream response or an upstream body), ``"02"`` close; one command frame may carry several codes;
- ``PING`` ``0x89 0x00`` and ``PONG`` ``0x8A 0x00`` (zero-length only), for clients that sent
  ``X-Accept-Commands: ping``.

The text encodings carry those bytes through browsers that only had strings: upstream each byte is one
character of UTF-8 text (code point ``mod 256``, so ``U+0100`` stands for NUL); downstream the bytes go as
they are under ``charset=windows-1252``. The escaped variant also escapes NUL, CR, LF and DEL with DEL.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "BINARY_ENCODING",
    "CLOSE",
    "Command",
    "Encoding",
    "Decoder",
    "NOP",
    "PING",
    "PONG",
    "RECONNECT",
    "StreamDecoder",
    "WseError",
    "binary_frame",
    "decode_upstream_text",
    "encode_length",
    "escape_downstream",
    "padding",
    "parse_create_suffix",
    "parse_sequence",
    "text_frame",
    "unescape",
]

MAX_SEQUENCE = 2**53 - 1

NOP = b"\x01" + b"00" + b"\xff"
RECONNECT = b"\x01" + b"01" + b"\xff"
CLOSE = b"\x01" + b"02" + b"\xff"
PING = b"\x89\x00"
PONG = b"\x8a\x00"


class WseError(Exception):
    """A request that breaks the protocol: the adapter answers ``status`` and fails the emulated connection."""

    def __init__(self, text: str, status: int = 400, close_code: int = 1002) -> None:
        super().__init__(text)
        self.status = status
        self.close_code = close_code


class Command(Enum):
    NOP = 0
    RECONNECT = 1
    CLOSE = 2
    PING = 0x89
    PONG = 0x8A


@dataclass(frozen=True, slots=True)
class Encoding:
    """What a create suffix (``;e/cb`` …) chose: the up/down path parts and how bytes travel."""

    create: str  # "cb", "cbm", "ct", "ctm", "cte", "ctem"
    text: bool  # upstream is UTF-8 text, downstream windows-1252
    escaped: bool  # and NUL, CR, LF, DEL are escaped with DEL
    mixed: bool  # text and binary frames (else every message travels as a binary frame)

    @property
    def upstream(self) -> str:
        return "u" + self.create[1:]

    @property
    def downstream(self) -> str:
        return "d" + self.create[1:]

    @property
    def content_type(self) -> str:
        return "text/plain;charset=windows-1252" if self.text else "application/octet-stream"


BINARY_ENCODING = Encoding("cb", False, False, False)
_CREATES = {
    "cb": BINARY_ENCODING,
    "cbm": Encoding("cbm", False, False, True),
    "ct": Encoding("ct", True, False, False),
    "ctm": Encoding("ctm", True, False, True),
    "cte": Encoding("cte", True, True, False),
    "ctem": Encoding("ctem", True, True, True),
}


def parse_create_suffix(suffix: str) -> Encoding | None:
    """``cb``, ``cbm``, ``ct``, ``ctm``, ``cte``, ``ctem`` (SPEC "Client Handshake Requirements"); else None."""
    return _CREATES.get(suffix)


def parse_sequence(text: str | None) -> int:
    """A valid ``X-Sequence-No`` / ``.ksn``: a non-negative integer up to 2^53 - 1 (SPEC "Request Sequencing")."""
    if text is None:
        raise WseError("missing sequence number")
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 16:
        raise WseError("invalid sequence number")
    value = int(text)
    if value > MAX_SEQUENCE:
        raise WseError("invalid sequence number")
    return value


# -- encoding (downstream) ---------------------------------------------------------------------


def encode_length(length: int) -> bytes:
    """7 bits a byte, most significant group first, continuation bit on all but the last."""
    if length < 0x80:
        return bytes((length,))
    groups = []
    while True:
        groups.append(length & 0x7F)
        length >>= 7
        if not length:
            break
    groups.reverse()
    return bytes(g | 0x80 for g in groups[:-1]) + bytes((groups[-1],))


def binary_frame(payload: bytes) -> bytes:
    return b"\x80" + encode_length(len(payload)) + payload


def text_frame(payload: bytes) -> bytes:
    """A specified-length text frame (downstream text frames MUST use it); ``payload`` is UTF-8."""
    return b"\x81" + encode_length(len(payload)) + payload


def padding(size: int) -> bytes:
    """``.kp`` padding: one command frame of ``size`` (rounded up to even) hex digits of no-ops."""
    size += size & 1
    return b"\x01" + b"0" * size + b"\xff"


_ESCAPES = {0x00: b"\x7f0", 0x0D: b"\x7fr", 0x0A: b"\x7fn", 0x7F: b"\x7f\x7f"}


def escape_downstream(data: bytes) -> bytes:
    """Text-escaped downstream: NUL, CR, LF, DEL as ``DEL 0``, ``DEL r``, ``DEL n``, ``DEL DEL``."""
    if not any(b in data for b in (b"\x00", b"\r", b"\n", b"\x7f")):
        return data
    out = bytearray()
    for byte in data:
        escaped = _ESCAPES.get(byte)
        if escaped is None:
            out.append(byte)
        else:
            out += escaped
    return bytes(out)


# -- decoding (upstream) -----------------------------------------------------------------------


def decode_upstream_text(body: bytes) -> bytes:
    """The bytes a text-encoded upstream body carries: each UTF-8 character is one byte (code point mod 256)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WseError("the upstream body is not UTF-8") from None
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return bytes(ord(c) & 0xFF for c in text)


_UNESCAPES = {0x30: 0x00, 0x00: 0x00, 0x72: 0x0D, 0x6E: 0x0A, 0x7F: 0x7F}


def unescape(data: bytes) -> bytes:
    """Undo ``escape`` (``DEL 0`` or ``DEL NUL`` → NUL, ``DEL r``, ``DEL n``, ``DEL DEL``), before framing."""
    if b"\x7f" not in data:
        return data
    out = bytearray()
    i, end = 0, len(data)
    while i < end:
        byte = data[i]
        if byte != 0x7F:
            out.append(byte)
            i += 1
            continue
        if i + 1 >= end:
            raise WseError("a DEL escape at the end of the body")
        plain = _UNESCAPES.get(data[i + 1])
        if plain is None:
            raise WseError("an unknown DEL escape")
        out.append(plain)
        i += 2
    return bytes(out)


class Decoder:
    """Frames of one complete upstream body, in order: ``(bytes|str)`` messages and ``Command``s.

    ``max_message`` bounds each message (a larger one: 413, as native WebSocket fails with 1009);
    ``pings`` says whether the client announced ``X-Accept-Commands: ping`` (if not, a ping or pong
    is a protocol error, SPEC "Control Frames"). Text must be valid UTF-8 (else 400).
    """

    __slots__ = ("max_message", "pings")

    def __init__(self, max_message: int, pings: bool) -> None:
        self.max_message = max_message
        self.pings = pings

    def frames(self, body: bytes) -> list[bytes | str | Command]:
        out: list[bytes | str | Command] = []
        pos, end = 0, len(body)
        while pos < end:
            kind = body[pos]
            pos += 1
            if kind == 0x80 or kind == 0x81:
                length, pos = self._length(body, pos)
                if pos + length > end:
                    raise WseError("a frame is cut short")
                payload = body[pos : pos + length]
                pos += length
                out.append(payload if kind == 0x80 else self._text(payload))
            elif kind == 0x00:
                stop = body.find(b"\xff", pos)
                if stop < 0:
                    raise WseError("a delimited text frame without its 0xFF")
                if stop - pos > self.max_message:
                    raise WseError("message too big", 413, 1009)
                out.append(self._text(body[pos:stop]))
                pos = stop + 1
            elif kind == 0x01:
                stop = body.find(b"\xff", pos)
                if stop < 0 or stop == pos or (stop - pos) & 1:
                    raise WseError("a malformed command frame")
                for i in range(pos, stop, 2):
                    out.append(self._command(body[i : i + 2]))
                pos = stop + 1
            elif kind == 0x89 or kind == 0x8A:
                if not self.pings:
                    raise WseError("ping or pong from a client that did not accept commands")
                if pos >= end or body[pos] != 0:
                    raise WseError("a ping or pong with a payload")
                pos += 1
                out.append(Command.PING if kind == 0x89 else Command.PONG)
            else:
                raise WseError("an unknown frame type")
        return out

    def _length(self, body: bytes, pos: int) -> tuple[int, int]:
        length = 0
        end = len(body)
        for _ in range(10):
            if pos >= end:
                raise WseError("a frame length is cut short")
            byte = body[pos]
            pos += 1
            length = (length << 7) | (byte & 0x7F)
            if not byte & 0x80:
                if length > self.max_message:
                    raise WseError("message too big", 413, 1009)
                return length, pos
        raise WseError("a frame length is too long")

    @staticmethod
    def _text(payload: bytes) -> str:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise WseError("a text frame that is not UTF-8", 400, 1007) from None

    @staticmethod
    def _command(code: bytes) -> Command:
        if code == b"00":
            return Command.NOP
        if code == b"01":
            return Command.RECONNECT
        if code == b"02":
            return Command.CLOSE
        raise WseError("an unknown command")


def _frame_end(data: bytearray, pos: int, max_message: int) -> int:
    """Where the frame starting at ``pos`` ends, or -1 while ``data`` holds only part of it."""
    kind = data[pos]
    end = len(data)
    if kind == 0x80 or kind == 0x81:
        length = 0
        for i in range(pos + 1, min(pos + 11, end)):
            byte = data[i]
            length = (length << 7) | (byte & 0x7F)
            if not byte & 0x80:
                if length > max_message:
                    raise WseError("message too big", 413, 1009)
                return i + 1 + length if i + 1 + length <= end else -1
        if end - pos > 10:
            raise WseError("a frame length is too long")
        return -1
    if kind == 0x00 or kind == 0x01:
        stop = data.find(b"\xff", pos + 1)
        if stop < 0 and end - pos > max_message + 1:
            raise WseError("message too big", 413, 1009)
        return stop + 1 if stop >= 0 else -1
    if kind == 0x89 or kind == 0x8A:
        return pos + 2 if pos + 2 <= end else -1
    raise WseError("an unknown frame type")


class StreamDecoder:
    """The client's side: frames of a downstream response as its chunks arrive (a frame split across chunks
    waits for the rest), decoded by ``Decoder``. Pings and pongs are allowed: the client announces them."""

    __slots__ = ("_buffer", "_decoder")

    def __init__(self, max_message: int) -> None:
        self._buffer = bytearray()
        self._decoder = Decoder(max_message, pings=True)

    def feed(self, chunk: bytes) -> list[bytes | str | Command]:
        buffer = self._buffer
        buffer += chunk
        complete = pos = 0
        while pos < len(buffer):
            pos = _frame_end(buffer, pos, self._decoder.max_message)
            if pos < 0:
                break
            complete = pos
        if not complete:
            return []
        frames = self._decoder.frames(bytes(buffer[:complete]))
        del buffer[:complete]
        return frames
