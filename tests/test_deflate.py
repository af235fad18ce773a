"""permessage-deflate (RFC 7692), negotiable per service and off by default: the accept-options in YAML and
Kaazing XML, the negotiation without I/O, and on the wire (RSV1 frames on real loopback sockets, a
decompression bomb refused with 1009 within ``ws.maximum.message.size``).
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import aiohttp
import pytest

from wsgate.catalog import load_config
from wsgate.config.model import Deflate
from wsgate.core.deflate import negotiate, offers
from wsgate.errors import ConfigErrors

from .test_websocket_protocol import BINARY, CLOSE, TEXT, Wire, request_bytes

DOCS = Path(__file__).resolve().parent.parent / "docs"
TRAILER = b"\x00\x00\xff\xff"


def service(options: str = "", name: str = "echo") -> str:
    """An echo service accepting on port 0 with ``options`` (YAML lines) as its accept-options."""
    lines = textwrap.indent(textwrap.dedent(options).strip(), " " * 6) if options.strip() else ""
    block = f"    accept-options:\n{lines}\n" if lines else ""
    return f"  - name: {name}\n    accept: ws://127.0.0.1:0/{name}\n    type: echo\n{block}"


def gateway(*services: str) -> str:
    return "service:\n" + "".join(services)


# -- configuration ------------------------------------------------------------------------------------


def load(tmp_path: Path, text: str, name: str = "gateway.yaml"):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text(text)
    return load_config(path)


def test_compression_is_off_by_default(tmp_path: Path) -> None:
    options = load(tmp_path, gateway(service())).service("echo").accept_options
    assert options.deflate is None and not options.compression_enabled


def test_yaml_options_build_the_deflate_settings(tmp_path: Path) -> None:
    text = gateway(
        service("ws.compression: permessage-deflate", "plain"),
        service(
            """
            ws.compression: permessage-deflate
            ws.compression.window.bits: 10
            ws.compression.context.takeover: enabled
            """,
            "tuned",
        ),
    )
    config = load(tmp_path, text)
    assert config.service("plain").accept_options.deflate == Deflate(window_bits=15, context_takeover=False)
    tuned = config.service("tuned").accept_options
    assert tuned.compression_enabled and tuned.deflate == Deflate(window_bits=10, context_takeover=True)


XML = """<?xml version="1.0" encoding="UTF-8" ?>
<gateway-config xmlns="http://xmlns.kaazing.org/2016/06/gateway">
  <service>
    <name>echo</name>
    <accept>ws://localhost:8000/echo</accept>
    <type>echo</type>
    <accept-options>
      {options}
    </accept-options>
  </service>
</gateway-config>
"""


def test_kaazing_xml_takes_the_same_options(tmp_path: Path) -> None:
    options = (
        "<ws.compression>permessage-deflate</ws.compression><ws.compression.window.bits>12</ws.compression.window.bits>"
    )
    config = load(tmp_path, XML.format(options=options), "gateway-config.xml")
    assert config.service("echo").accept_options.deflate == Deflate(window_bits=12)


BAD = [
    ("ws.compression: gzip", "ws.compression: 'gzip' is not one of permessage-deflate, disabled"),
    (
        "ws.compression: permessage-deflate\nws.compression.window.bits: 8",
        "ws.compression.window.bits: '8': write a whole number from 9",
    ),
    (
        "ws.compression: permessage-deflate\nws.compression.window.bits: 16",
        "ws.compression.window.bits: '16': write a whole number from 9",
    ),
    (
        "ws.compression: permessage-deflate\nws.compression.context.takeover: maybe",
        "ws.compression.context.takeover: 'maybe' is not one of enabled, disabled",
    ),
    ("ws.compression.window.bits: 12", "ws.compression.window.bits: has no effect without ws.compression"),
    (
        "ws.compression: disabled\nws.compression.context.takeover: enabled",
        "ws.compression.context.takeover: has no effect without ws.compression permessage-deflate",
    ),
    ("ws.compresion: permessage-deflate", "ws.compresion: unknown element; did you mean 'ws.compression'?"),
]


@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_yaml_values_are_located_errors(tmp_path: Path, options: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as error:
        load(tmp_path, gateway(service(options)))
    assert f"service[echo]/accept-options/{message}" in str(error.value)


@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_xml_values_are_located_errors(tmp_path: Path, options: str, message: str) -> None:
    elements = "".join(
        f"<{name}>{value.strip()}</{name}>" for name, _, value in (line.partition(":") for line in options.splitlines())
    )
    with pytest.raises(ConfigErrors) as error:
        load(tmp_path, XML.format(options=elements), "gateway-config.xml")
    assert f"service[echo]/accept-options/{message}" in str(error.value)


def test_the_documented_example_loads() -> None:
    config = load_config(DOCS / "examples" / "compression.yaml")
    deflating = [s.name for s in config.services if s.accept_options.compression_enabled]
    assert deflating == ["feed"]
    assert config.service("feed").accept_options.deflate == Deflate(window_bits=12, context_takeover=False)
    assert not config.service("commands").accept_options.compression_enabled


# -- negotiation, sans I/O ----------------------------------------------------------------------------

SAFE = Deflate()  # no context takeover, 15 bits
TAKEOVER = Deflate(context_takeover=True)


@pytest.mark.parametrize(
    ("header", "deflate", "answer"),
    [
        ("permessage-deflate", SAFE, "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        ("permessage-deflate", TAKEOVER, "permessage-deflate"),
        ("permessage-deflate; client_max_window_bits", TAKEOVER, "permessage-deflate"),
        ("permessage-deflate; server_no_context_takeover", TAKEOVER, "permessage-deflate; server_no_context_takeover"),
        (
            "permessage-deflate",
            Deflate(window_bits=11, context_takeover=True),
            "permessage-deflate; server_max_window_bits=11",
        ),
        ("permessage-deflate; server_max_window_bits=10", TAKEOVER, "permessage-deflate; server_max_window_bits=10"),
        (
            'permessage-deflate; server_max_window_bits="13"',
            Deflate(12, True),
            "permessage-deflate; server_max_window_bits=12",
        ),
        # declined offers are skipped, the next one is taken (RFC 7692 §5.1)
        ("permessage-deflate; server_max_window_bits=8, permessage-deflate", TAKEOVER, "permessage-deflate"),
        ("permessage-deflate; mystery, permessage-deflate; client_max_window_bits=9", TAKEOVER, "permessage-deflate"),
        ("x-webkit-deflate-frame, Permessage-Deflate", TAKEOVER, "permessage-deflate"),
    ],
)
def test_the_first_acceptable_offer_is_answered(header: str, deflate: Deflate, answer: str) -> None:
    agreement = negotiate([header], deflate)
    assert agreement is not None and agreement.header == answer


@pytest.mark.parametrize(
    "header",
    [
        "x-webkit-deflate-frame",
        "permessage-deflate; server_max_window_bits=8",  # zlib cannot deflate raw with a 256-byte window
        "permessage-deflate; server_max_window_bits",  # needs a value
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; level=9",
        'permessage-deflate; client_max_window_bits="10',
        "permessage-deflate; client_max_window_bits=a b",
    ],
)
def test_invalid_or_unhonourable_offers_are_declined(header: str) -> None:
    assert negotiate([header], SAFE) is None


def test_agreement_says_how_the_gateway_compresses() -> None:
    agreement = negotiate(["foo; a=1", "permessage-deflate; server_max_window_bits=11"], SAFE)
    assert agreement is not None
    assert (agreement.window_bits, agreement.no_context_takeover) == (11, True)
    taken_over = negotiate(["permessage-deflate"], TAKEOVER)
    assert taken_over is not None and not taken_over.no_context_takeover


def test_offers_split_lines_elements_and_quoted_strings() -> None:
    lines = ['a; x="1,2", b; z="12"', "C;y"]  # a quoted value must be a token once unquoted (RFC 6455 §9.1)
    assert offers(lines) == [("a", [("", None)]), ("b", [("z", "12")]), ("c", [("y", None)])]


# -- on the wire --------------------------------------------------------------------------------------

PAIR = gateway(
    service("ws.compression: permessage-deflate\nws.maximum.message.size: 64k", "deflate"),
    service("ws.maximum.message.size: 64k", "plain"),
    service(
        "ws.compression: permessage-deflate\nws.compression.window.bits: 10\nws.compression.context.takeover: enabled",
        "small",
    ),
)


def deflated(payload: bytes, bits: int = 15) -> bytes:
    """One message as a permessage-deflate sender writes it (the sync flush's trailer removed)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    body = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert body.endswith(TRAILER)
    return body[:-4]


def inflated(body: bytes, bits: int = 15) -> bytes:
    return zlib.decompressobj(-bits).decompress(body + TRAILER)


def masked(opcode: int, payload: bytes, rsv1: bool = True) -> bytes:
    """A client frame (FIN, masked), RSV1 set for a compressed message."""
    head = bytes([0x80 | (0x40 if rsv1 else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    key = os.urandom(4)
    whole = (key * (size // 4 + 1))[:size]
    return head + key + (int.from_bytes(payload, "big") ^ int.from_bytes(whole, "big")).to_bytes(size, "big")


async def raw_frame(wire: Wire) -> tuple[int, bool, bytes]:
    """The gateway's next frame: opcode, RSV1, payload."""
    first, second = await asyncio.wait_for(wire.reader.readexactly(2), 5)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await wire.reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await wire.reader.readexactly(8), "big")
    return first & 0x0F, bool(first & 0x40), await wire.reader.readexactly(length)


async def opened(port: int, path: str, offer: str | None = "permessage-deflate") -> tuple[Wire, str | None]:
    wire = await Wire.open(port)
    extra = (("Sec-WebSocket-Extensions", offer),) if offer else ()
    status, headers, _ = await wire.response(request_bytes(path, extra=extra))
    assert status == 101
    return wire, headers.get("Sec-WebSocket-Extensions")


async def close_code(wire: Wire) -> int:
    while True:
        opcode, _, payload = await raw_frame(wire)
        if opcode == CLOSE:
            return int.from_bytes(payload[:2], "big")


async def test_a_service_with_compression_answers_the_offer_and_echoes_compressed(start_gateway) -> None:
    gw = await start_gateway(PAIR)
    wire, answer = await opened(gw.port_of("deflate"), "/deflate")
    assert answer == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    text = '{"price": 101.5, "symbol": "WSG"} ' * 20
    wire.send(masked(TEXT, deflated(text.encode())))
    opcode, rsv1, body = await raw_frame(wire)
    assert (opcode, rsv1) == (TEXT, True) and len(body) < len(text) // 4
    assert inflated(body).decode() == text
    blob = bytes(range(256)) * 40
    wire.send(masked(BINARY, deflated(blob)))
    opcode, rsv1, body = await raw_frame(wire)
    assert (opcode, rsv1, inflated(body)) == (BINARY, True, blob)
    wire.send(masked(BINARY, b"not compressed", rsv1=False))  # RFC 7692 §6: a message may be sent uncompressed
    opcode, rsv1, body = await raw_frame(wire)
    assert opcode == BINARY and inflated(body) == b"not compressed"
    await wire.finish()


async def test_a_service_without_the_option_ignores_the_offer(start_gateway) -> None:
    gw = await start_gateway(PAIR)
    wire, answer = await opened(gw.port_of("plain"), "/plain")
    assert answer is None
    wire.send(masked(TEXT, b"hi", rsv1=False))
    assert await raw_frame(wire) == (TEXT, False, b"hi")
    wire.send(masked(TEXT, deflated(b"hello")))  # RSV1 without the extension: a protocol error
    assert await close_code(wire) == 1002
    await wire.finish()


async def test_a_client_that_offers_nothing_gets_plain_frames(start_gateway) -> None:
    gw = await start_gateway(PAIR)
    wire, answer = await opened(gw.port_of("deflate"), "/deflate", offer=None)
    assert answer is None
    wire.send(masked(TEXT, b"x" * 500, rsv1=False))
    assert await raw_frame(wire) == (TEXT, False, b"x" * 500)
    await wire.finish()


async def test_window_bits_and_context_takeover_as_configured(start_gateway) -> None:
    gw = await start_gateway(PAIR)
    wire, answer = await opened(gw.port_of("small"), "/small", "permessage-deflate; client_max_window_bits")
    assert answer == "permessage-deflate; server_max_window_bits=10"
    block = os.urandom(1500)  # repeats 1500 bytes back: only a window above 10 bits (1 KiB) could refer to them
    wire.send(masked(BINARY, deflated(block * 4)))
    _, rsv1, body = await raw_frame(wire)
    assert rsv1 and inflated(body, bits=10) == block * 4  # a 1 KiB window inflates it: the gateway kept to 10
    # context takeover: the same message again refers back into the first one and compresses to almost nothing
    wire.send(masked(BINARY, deflated(b"quote " * 50)))
    wire.send(masked(BINARY, deflated(b"quote " * 50)))
    _, _, first = await raw_frame(wire)
    _, _, second = await raw_frame(wire)
    assert len(second) < len(first)
    await wire.finish()


async def test_no_context_takeover_compresses_each_message_alone(start_gateway) -> None:
    gw = await start_gateway(PAIR)
    wire, _ = await opened(gw.port_of("deflate"), "/deflate")
    message = os.urandom(600)
    for _ in range(2):
        wire.send(masked(BINARY, deflated(message)))
    _, _, first = await raw_frame(wire)
    _, _, second = await raw_frame(wire)
    assert inflated(first) == inflated(second) == message  # each inflates alone: no reference to the one before
    await wire.finish()


async def test_an_aiohttp_client_negotiates_and_round_trips(start_gateway) -> None:
    gw = await start_gateway(PAIR)
    async with aiohttp.ClientSession() as session:
        url = f"ws://127.0.0.1:{gw.port_of('deflate')}/deflate"
        async with session.ws_connect(url, compress=15) as ws:
            assert ws.compress == 15 and ws.client_notakeover
            await ws.send_str("héllo " * 100)
            assert await asyncio.wait_for(ws.receive_str(), 5) == "héllo " * 100
            await ws.send_bytes(b"\x00\x01" * 1000)
            assert await asyncio.wait_for(ws.receive_bytes(), 5) == b"\x00\x01" * 1000


@pytest.mark.parametrize(("size", "code"), [(64 * 1024, None), (64 * 1024 + 1, 1009)])
async def test_the_limit_applies_to_the_inflated_size_exactly(start_gateway, size: int, code: int | None) -> None:
    gw = await start_gateway(PAIR)
    wire, _ = await opened(gw.port_of("deflate"), "/deflate")
    wire.send(masked(BINARY, deflated(b"a" * size)))
    if code is None:
        _, _, body = await raw_frame(wire)
        assert len(inflated(body)) == size
    else:
        assert await close_code(wire) == code
    await wire.finish()


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
async def test_a_decompression_bomb_is_refused_with_1009_within_the_limit(start_gateway, opcode: int) -> None:
    gw = await start_gateway(PAIR)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = b"0" * (1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(64)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 64 * 1024  # 64 MiB inflated from one frame the message-size limit lets through
    wire, _ = await opened(gw.port_of("deflate"), "/deflate")
    frame_bytes = masked(opcode, bomb[:-4])
    tracemalloc.start()
    try:
        wire.send(frame_bytes)
        assert await close_code(wire) == 1009
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"{peak} bytes at the peak while refusing a 64 MiB bomb"
    await wire.finish()
