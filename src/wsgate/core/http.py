"""RFC 6455 §4.2.1 and the headers security decisions read, checked on a request head, without I/O.

``security.admission`` runs these first on every routed request, so nothing (login, back-end dial)
runs for a handshake aiohttp would refuse or for headers a proxy in front might read differently.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field

from multidict import MultiMapping

# Headers a request may carry once: routing, the origin check, credentials and aiohttp's handshake each read
# the first line, while a proxy in front may have judged the last one.
SINGLE_HEADERS = ("Host", "Origin", "Authorization", "Cookie")
SINGLE_UPGRADE_HEADERS = (
    *SINGLE_HEADERS,
    "Upgrade",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
)
WEBSOCKET_VERSION = "13"
# Headers routing and the handshake interpret: visible ASCII only (RFC 9110 obs-text is refused here, so no
# decoding of a client's bytes, IDNA included, can fail later on).
ASCII_HEADERS = (
    "Host",
    "Origin",
    "Connection",
    "Upgrade",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
)


@dataclass(frozen=True)
class BadRequest:
    """A request refused before any login or service work."""

    status: int  # 400, or 426 for a WebSocket version other than 13
    text: str
    headers: dict[str, str] = field(default_factory=dict)


def has_token(value: str, token: str) -> bool:
    """Does a comma-separated header value name ``token`` (lower case), whatever its case and spacing?"""
    return any(part.strip().lower() == token for part in value.split(","))


def wants_upgrade(headers: MultiMapping[str]) -> bool:
    """Does the request ask for a WebSocket (any ``Upgrade`` line naming it)? ``check_handshake`` checks the rest."""
    return any(has_token(line, "websocket") for line in headers.getall("Upgrade", ()))


def duplicated(headers: MultiMapping[str], names: Iterable[str]) -> str | None:
    """The first of ``names`` that appears on more than one line."""
    for name in names:
        if len(headers.getall(name, ())) > 1:
            return name
    return None


def not_ascii(headers: MultiMapping[str]) -> str | None:
    """The first of ``ASCII_HEADERS`` with a character outside visible ASCII (space and tab allowed)."""
    for name in ASCII_HEADERS:
        for value in headers.getall(name, ()):
            if not value.isascii() or not all(c == "\t" or " " <= c <= "~" for c in value):
                return name
    return None


def check_request(headers: MultiMapping[str]) -> BadRequest | None:
    """A plain HTTP request: the headers security decisions read must not be ambiguous."""
    name = duplicated(headers, SINGLE_HEADERS)
    if name:
        return BadRequest(400, f"Duplicate {name} header.\n")
    name = not_ascii(headers)
    return BadRequest(400, f"The {name} header must be ASCII.\n") if name else None


def check_handshake(method: str, version: tuple[int, int], headers: MultiMapping[str]) -> BadRequest | None:
    """RFC 6455 §4.2.1 in full, so nothing (login, back-end dial) runs for a handshake aiohttp would refuse."""
    name = duplicated(headers, SINGLE_UPGRADE_HEADERS)
    if name:
        return BadRequest(400, f"Duplicate {name} header.\n")
    name = not_ascii(headers)
    if name:
        return BadRequest(400, f"The {name} header must be ASCII.\n")
    if method != "GET":
        return BadRequest(400, "A WebSocket handshake must be a GET request.\n")
    if version < (1, 1):
        return BadRequest(400, "A WebSocket handshake needs HTTP/1.1.\n")
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        return BadRequest(400, "The Upgrade header must be 'websocket'.\n")
    if not any(has_token(line, "upgrade") for line in headers.getall("Connection", ())):
        return BadRequest(400, "A WebSocket handshake needs 'Connection: Upgrade'.\n")
    offered = headers.get("Sec-WebSocket-Version")
    if offered is None:
        return BadRequest(400, "Missing Sec-WebSocket-Version header.\n")
    if offered.strip() != WEBSOCKET_VERSION:
        return BadRequest(426, "Unsupported WebSocket version: use 13.\n", {"Sec-WebSocket-Version": WEBSOCKET_VERSION})
    if not valid_key(headers.get("Sec-WebSocket-Key")):
        return BadRequest(400, "Sec-WebSocket-Key must be 16 bytes in base64.\n")
    return None


def valid_key(key: str | None) -> bool:
    """RFC 6455 §4.1: the base64 encoding of exactly 16 bytes (24 characters)."""
    if key is None or len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # binascii.Error, or non-ASCII text
        return False
