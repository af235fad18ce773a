"""core/client_hello.py: the server name of real ClientHellos (made by this Python's OpenSSL), cut anywhere."""

from __future__ import annotations

import ssl

import pytest

from wsgate.core.client_hello import NEED_MORE, server_name


def client_hello(name: str | None, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> bytes:
    """What a client's first flight is, taken from a memory BIO."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = version
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def split_records(hello: bytes, at: int) -> bytes:
    """The same ClientHello in two handshake records, the first carrying ``at`` bytes of the message."""
    message = hello[5:]
    header = hello[:3]
    first, second = message[:at], message[at:]
    return header + len(first).to_bytes(2, "big") + first + header + len(second).to_bytes(2, "big") + second


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_name_a_client_asks_for(version):
    assert server_name(client_hello("b.example", version)) == "b.example"
    assert server_name(client_hello("Upper.Example.", version)) == "upper.example"


def test_no_name_without_sni():
    # Python sends no SNI for an IP address, nor without server_hostname
    assert server_name(client_hello("127.0.0.1")) is None
    assert server_name(client_hello(None)) is None


def test_every_prefix_asks_for_more_and_never_guesses():
    hello = client_hello("b.example")
    for cut in range(len(hello)):
        assert server_name(hello[:cut]) is NEED_MORE, cut
    assert server_name(hello + b"\x17\x03\x03") == "b.example"  # what follows is not read


def test_a_client_hello_spread_over_two_records():
    hello = client_hello("b.example")
    for at in (1, 3, 40, len(hello) - 5 - 1):
        both = split_records(hello, at)
        assert server_name(both) == "b.example"
        first_record = 5 + at
        assert server_name(both[: first_record + 2]) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: b.example\r\n\r\n",  # plain HTTP on a TLS port
        b"\x15\x03\x03\x00\x02\x02\x28",  # an alert record
        b"\x16\x03\x01\x00\x00",  # an empty handshake record
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # a ClientHello longer than we read
    ],
)
def test_not_a_client_hello_is_no_name(data):
    assert server_name(data) is None


def test_malformed_lengths_are_no_name_not_an_error():
    hello = bytearray(client_hello("b.example"))
    # the session id claims to run past the end of the message
    hello[5 + 4 + 2 + 32] = 0xFF
    assert server_name(bytes(hello)) is None
    truncated = bytearray(client_hello("b.example"))
    size = int.from_bytes(truncated[6:9], "big")
    cut = 60  # the message ends inside its cipher suites
    truncated[6:9] = cut.to_bytes(3, "big")
    truncated[3:5] = (cut + 4).to_bytes(2, "big")
    assert server_name(bytes(truncated[: 5 + 4 + cut])) is None
    assert size > cut
