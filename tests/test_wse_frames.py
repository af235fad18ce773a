"""WSE's wire format without I/O (``core.wse_frames``), rule by rule from the k3po specification.

Scripts are under ``specification/wse/src/main/scripts/org/kaazing/specification/wse/`` in k3po/k3po;
the prose rules are in ``specification/wse/SPEC.md``.
"""

from __future__ import annotations

import pytest

from wsgate.core.wse_frames import (
    CLOSE,
    NOP,
    PING,
    PONG,
    RECONNECT,
    Command,
    Decoder,
    StreamDecoder,
    WseError,
    binary_frame,
    decode_upstream_text,
    encode_length,
    escape_downstream,
    padding,
    parse_create_suffix,
    parse_sequence,
    text_frame,
    unescape,
)


def decode(body: bytes, limit: int = 1 << 20, pings: bool = True) -> list[object]:
    return Decoder(limit, pings).frames(body)


def test_lengths_are_seven_bits_a_byte_most_significant_first():
    """data/echo.binary.payload.length.127 (0x7F), .128 (0x81 0x00), .65535 (0x83 0xFF 0x7F), .65536 (0x84 0x80 0x00)."""
    assert encode_length(0) == b"\x00"
    assert encode_length(127) == b"\x7f"
    assert encode_length(128) == b"\x81\x00"
    assert encode_length(1024) == b"\x88\x00"  # browsers/client.send.kb.parameter.in.downstream.request
    assert encode_length(65535) == b"\x83\xff\x7f"
    assert encode_length(65536) == b"\x84\x80\x00"


def test_binary_and_text_frames():
    """data/echo.binary.payload.length.128: ``[0x80 0x81 0x00]`` + payload; data/echo.text.payload.length.127:
    ``[0x81 0x7F]`` + UTF-8."""
    assert binary_frame(b"x" * 128) == b"\x80\x81\x00" + b"x" * 128
    assert text_frame(b"y" * 127) == b"\x81\x7f" + b"y" * 127
    assert decode(binary_frame(b"x" * 128) + text_frame("é".encode()) + RECONNECT) == [
        b"x" * 128,
        "é",
        Command.RECONNECT,
    ]
    assert decode(b"\x80\x00" + RECONNECT) == [b"", Command.RECONNECT]  # data/echo.binary.payload.length.0


def test_delimited_text_frames_upstream():
    """data/echo.text.delimited.payload.length.20: ``[0x00] payload [0xFF]``; .length.0: ``[0x00 0xFF]``."""
    assert decode(b"\x00" + b"t" * 20 + b"\xff") == ["t" * 20]
    assert decode(b"\x00\xff") == [""]
    with pytest.raises(WseError):
        decode(b"\x00unterminated")


def test_text_that_is_not_utf8_is_a_400():
    """data/client.send.text.invalid.utf8 and client.send.text.delimited.invalid.utf8: 400, the session fails."""
    for body in (b"\x81\x02\xc3\x28", b"\x00\xc3\x28\xff"):
        with pytest.raises(WseError) as raised:
            decode(body)
        assert raised.value.status == 400 and raised.value.close_code == 1007


def test_commands():
    """command/server.send.nop ``[0x01 0x30 0x30 0xFF]``, command/server.send.reconnect ``"01"``,
    command/server.send.close ``"02"``; closing/client.send.close: CLOSE then RECONNECT."""
    assert NOP == b"\x01\x30\x30\xff" and RECONNECT == b"\x01\x30\x31\xff" and CLOSE == b"\x01\x30\x32\xff"
    assert decode(CLOSE + RECONNECT) == [Command.CLOSE, Command.RECONNECT]
    assert decode(b"\x01" + b"0000" + b"\xff") == [Command.NOP, Command.NOP]
    for bad in (b"\x01\xff", b"\x01" + b"0" + b"\xff", b"\x01" + b"03" + b"\xff", b"\x01" + b"00"):
        with pytest.raises(WseError):
            decode(bad)


def test_ping_and_pong_only_for_clients_that_accept_commands():
    """control/client.send.ping: ``[0x89 0x00]`` answered by ``[0x8A 0x00]``; control/client.send.unexpected.ping
    and .pong: 400 without ``X-Accept-Commands: ping``; control/client.send.invalid.ping ``[0x89 0x01]``: 400."""
    assert PING == b"\x89\x00" and PONG == b"\x8a\x00"
    assert decode(PING + PONG + RECONNECT) == [Command.PING, Command.PONG, Command.RECONNECT]
    for body in (PING, PONG):
        with pytest.raises(WseError):
            decode(body, pings=False)
    for body in (b"\x89\x01", b"\x8a\x01", b"\x89"):
        with pytest.raises(WseError):
            decode(body)


def test_message_size_limit_refuses_before_reading_the_payload():
    """A message over ``ws.maximum.message.size``: 413 (native WebSocket fails it with 1009)."""
    with pytest.raises(WseError) as raised:
        decode(b"\x80\x84\x80\x00", limit=65535)  # declares 65536 bytes, sends none
    assert raised.value.status == 413 and raised.value.close_code == 1009
    with pytest.raises(WseError):
        decode(b"\x00" + b"x" * 11 + b"\xff", limit=10)
    with pytest.raises(WseError):
        decode(b"\x80" + b"\xff" * 12)  # a length that never ends
    with pytest.raises(WseError):
        decode(b"\x80\x05abc")  # cut short


def test_unknown_frame_types_are_refused():
    with pytest.raises(WseError):
        decode(b"\x02\x00")


def test_text_encoding_upstream_is_one_byte_per_character():
    """text.encoding/echo.text.with.multibyte.utf8: upstream ``[0xC2 0x81 0x06 0x41 0x42 0x43 0xC3 0xA2 0xC2 0x82
    0xC2 0xAC]`` is the frame ``[0x81 0x06] "ABC€"`` (SPEC "Text Encoding" prints the length as 0x04: the script,
    and draft-76, count bytes); ``U+0100`` stands for NUL; text.encoding/echo.binary.payload.all.byte.values."""
    wire = bytes([0xC2, 0x81, 0x06, 0x41, 0x42, 0x43, 0xC3, 0xA2, 0xC2, 0x82, 0xC2, 0xAC])
    assert decode_upstream_text(wire) == b"\x81\x06ABC\xe2\x82\xac"
    assert decode(decode_upstream_text(wire)) == ["ABC€"]
    assert decode_upstream_text("\u0100a".encode()) == b"\x00a"
    all_bytes = bytes(range(256))
    assert decode_upstream_text(all_bytes.decode("latin-1").encode()) == all_bytes
    with pytest.raises(WseError):
        decode_upstream_text(b"\xff\xfe")


def test_escaped_text_encoding():
    """text.escaped.encoding/echo.escaped.characters: upstream ``[0xC2 0x80 0x04 0x7f 0x00 0x7f 0x72 0x7f 0x6e
    0x7f 0x7f]``; downstream ``[0x80 0x04 0x7f 0x30 0x7f 0x72 0x7f 0x6e 0x7f 0x7f]`` (lengths before escaping)."""
    upstream = bytes([0xC2, 0x80, 0x04, 0x7F, 0x00, 0x7F, 0x72, 0x7F, 0x6E, 0x7F, 0x7F])
    assert decode(unescape(decode_upstream_text(upstream))) == [b"\x00\r\n\x7f"]
    assert escape_downstream(binary_frame(b"\x00\r\n\x7f")) == bytes(
        [0x80, 0x04, 0x7F, 0x30, 0x7F, 0x72, 0x7F, 0x6E, 0x7F, 0x7F]
    )
    assert unescape(b"\x7f0") == b"\x00"
    assert escape_downstream(b"plain") == b"plain"
    for bad in (b"\x7f", b"\x7fx"):
        with pytest.raises(WseError):
            unescape(bad)


def test_padding_is_one_command_frame_of_noops():
    """browsers/client.request.padded.response: ``.kp=256`` → ``0x01``, 256 ``'0'``, ``0xFF`` (wse:padding)."""
    assert padding(256) == b"\x01" + b"0" * 256 + b"\xff"
    assert padding(3) == b"\x01" + b"0" * 4 + b"\xff"
    assert decode(padding(6)) == [Command.NOP] * 3


def test_create_suffixes():
    """SPEC "Client Handshake Requirements": ``cbm``/``ctm``/``ctem`` mixed, ``cb``/``ct``/``cte`` binary frames
    only; the up/down paths are Kaazing's (``ub``/``db``, ``utm``/``dtm`` …)."""
    cases = {
        "cb": ("ub", "db", False, False, False),
        "cbm": ("ubm", "dbm", False, False, True),
        "ct": ("ut", "dt", True, False, False),
        "ctm": ("utm", "dtm", True, False, True),
        "cte": ("ute", "dte", True, True, False),
        "ctem": ("utem", "dtem", True, True, True),
    }
    for suffix, (up, down, text, escaped, mixed) in cases.items():
        encoding = parse_create_suffix(suffix)
        assert encoding is not None
        assert (encoding.upstream, encoding.downstream, encoding.text, encoding.escaped, encoding.mixed) == (
            up,
            down,
            text,
            escaped,
            mixed,
        )
        expected = "text/plain;charset=windows-1252" if text else "application/octet-stream"
        assert encoding.content_type == expected  # SPEC "Text Encoding": the downstream's content type
    assert parse_create_suffix("cx") is None and parse_create_suffix("") is None


def test_sequence_numbers():
    """SPEC "Request Sequencing" and opening/request.header.x.sequence.number.{missing,negative,non.integer,
    out.of.range}: a non-negative integer up to 2^53 - 1, else 400."""
    assert parse_sequence("0") == 0
    assert parse_sequence(" 10 ") == 10
    assert parse_sequence(str(2**53 - 1)) == 2**53 - 1
    for bad in (None, "", "-1", "1.5", "abc", str(2**53), "١"):
        with pytest.raises(WseError):
            parse_sequence(bad)


# -- the client's side: a downstream as it arrives ---------------------------------------------


def test_a_downstream_decodes_across_any_chunk_boundary():
    stream = text_frame("é".encode() * 100) + NOP + binary_frame(bytes(300)) + PING + RECONNECT
    for size in (1, 2, 3, 7, 64, len(stream)):
        decoder = StreamDecoder(1024)
        frames = []
        for i in range(0, len(stream), size):
            frames += decoder.feed(stream[i : i + size])
        assert frames == ["é" * 100, Command.NOP, bytes(300), Command.PING, Command.RECONNECT], size


def test_a_downstream_frame_over_the_limit_fails_before_it_is_buffered():
    decoder = StreamDecoder(100)
    with pytest.raises(WseError) as refused:
        decoder.feed(b"\x80" + encode_length(101))  # its length alone says so
    assert refused.value.close_code == 1009
    with pytest.raises(WseError):
        StreamDecoder(100).feed(b"\x42")
