"""The server name a TLS ClientHello asks for, read from its first bytes without I/O.

A listener with several certificates must pick one per connection. OpenSSL's SNI callback would do, but
aiofastnet 1.2's direct TLS engine crashes on any context that has one (bench/upstream/aiofastnet-1.py),
so the listener peeks at the ClientHello and starts the TLS engine with the right context instead
(transport/sni.py). Only the ``server_name`` extension (RFC 6066 §3) is read; everything else is
OpenSSL's to judge, so anything that is not a well-formed ClientHello is simply "no name" here and
fails (or succeeds) in the handshake as it would have.
"""

from __future__ import annotations

from typing import Final

HANDSHAKE: Final = 22  # TLS record content type
CLIENT_HELLO: Final = 1  # handshake message type
SERVER_NAME: Final = 0  # extension type
HOST_NAME: Final = 0  # ServerName.name_type
RECORD_HEADER: Final = 5
# A ClientHello longer than this (many PSK identities, a huge padding extension) is served as if it named no
# host; real ones are well under 2 KiB, post-quantum key shares included.
MAX_HELLO: Final = 16 * 1024


class NeedMore:
    """The bytes so far end before the ClientHello does: peek again when more have arrived."""

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = NeedMore()


def server_name(data: bytes) -> str | None | NeedMore:
    """The host name the ClientHello at the start of ``data`` asks for (lower case, no trailing dot);
    ``None`` for no name or not a ClientHello at all; ``NEED_MORE`` when ``data`` ends too early."""
    hello = _handshake_message(data)
    if hello is None or isinstance(hello, NeedMore):
        return hello
    try:
        return _name_in(hello)
    except IndexError:  # a length that runs past the message: malformed
        return None


def _handshake_message(data: bytes) -> bytes | None | NeedMore:
    """The first handshake message's body, reassembled from as many records as it spans."""
    payload = bytearray()
    offset = 0
    while True:
        if len(data) < offset + RECORD_HEADER:
            return NEED_MORE
        if data[offset] != HANDSHAKE:
            return None
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if length == 0:
            return None
        fragment = data[offset + RECORD_HEADER : offset + RECORD_HEADER + length]
        payload += fragment
        if len(payload) >= 4:
            if payload[0] != CLIENT_HELLO:
                return None
            size = int.from_bytes(payload[1:4], "big")
            if size > MAX_HELLO:
                return None
            if len(payload) >= 4 + size:
                return bytes(payload[4 : 4 + size])
        if len(fragment) < length:
            return NEED_MORE
        offset += RECORD_HEADER + length


def _name_in(hello: bytes) -> str | None:
    at = 2 + 32  # legacy_version, random
    at += 1 + hello[at]  # legacy_session_id
    at += 2 + int.from_bytes(hello[at : at + 2], "big")  # cipher_suites
    at += 1 + hello[at]  # legacy_compression_methods
    if at == len(hello):
        return None  # no extensions at all
    end = at + 2 + int.from_bytes(hello[at : at + 2], "big")
    at += 2
    while at + 4 <= end:
        kind = int.from_bytes(hello[at : at + 2], "big")
        size = int.from_bytes(hello[at + 2 : at + 4], "big")
        at += 4
        if kind == SERVER_NAME:
            return _host_name(hello[at : at + size])
        at += size
    return None


def _host_name(extension: bytes) -> str | None:
    """The first ``host_name`` of a ServerNameList; ``None`` if it is not plain ASCII (RFC 6066: A-labels)."""
    at, end = 2, 2 + int.from_bytes(extension[0:2], "big")
    while at + 3 <= end:
        kind, size = extension[at], int.from_bytes(extension[at + 1 : at + 3], "big")
        name = extension[at + 3 : at + 3 + size]
        if kind == HOST_NAME:
            if len(name) != size or not name.isascii():
                return None
            return name.decode("ascii").rstrip(".").lower() or None
        at += 3 + size
    return None
