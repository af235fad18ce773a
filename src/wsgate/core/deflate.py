"""RFC 7692 permessage-deflate negotiation, without I/O: the client's offers → the gateway's answer.

aiohttp's own negotiation takes whatever the client asks and cannot impose the server's window or
``no_context_takeover``; this one applies the service's ``Deflate`` settings and the RFC's rules for
declining an offer (unknown, repeated or malformed parameters), so ``transport.websocket`` only has to
hand the agreed parameters to aiohttp's frame writer and reader.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..config.model import Deflate

__all__ = ["Agreement", "negotiate", "offers"]

EXTENSION = "permessage-deflate"
_PARAMETERS = frozenset(
    {"server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits", "client_max_window_bits"}
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BITS = re.compile(r"^(?:8|9|1[0-5])$")  # RFC 7692 §7.1.2: 1*DIGIT in 8..15, no leading zero


@dataclass(frozen=True)
class Agreement:
    """What the 101 answers (``header``) and how the gateway compresses what it sends."""

    header: str  # the Sec-WebSocket-Extensions value
    window_bits: int  # the gateway's compression window
    no_context_takeover: bool  # the gateway resets its compressor after every message


def offers(headers: Iterable[str]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every ``Sec-WebSocket-Extensions`` line, split into (extension, [(parameter, value or None)]).

    An element that does not parse (a bad token, an unterminated quoted string) becomes a parameter
    named ``""``, which no extension accepts: that offer is declined, the others still count.
    """
    found: list[tuple[str, list[tuple[str, str | None]]]] = []
    for line in headers:
        for element in _split(line, ","):
            name, *params = _split(element, ";")
            parsed: list[tuple[str, str | None]] = []
            for param in params:
                key, eq, value = param.partition("=")
                key, value = key.strip(), value.strip()
                if value.startswith('"'):
                    value = value[1:-1] if len(value) >= 2 and value.endswith('"') else "\0"
                ok = _TOKEN.match(key) and (not eq or _TOKEN.match(value))
                parsed.append((key, value if eq else None) if ok else ("", None))
            found.append((name.strip().lower(), parsed))
    return found


def negotiate(headers: Iterable[str], deflate: Deflate) -> Agreement | None:
    """The first permessage-deflate offer the service can accept, answered (RFC 7692 §5, §7.1), or None."""
    for name, params in offers(headers):
        if name == EXTENSION:
            agreement = _accept(params, deflate)
            if agreement is not None:
                return agreement
    return None


def _accept(params: list[tuple[str, str | None]], deflate: Deflate) -> Agreement | None:
    """One offer answered, or None when it must be declined (§7: unknown, repeated or invalid parameters;
    a configuration the gateway cannot honour)."""
    seen: dict[str, str | None] = {}
    for key, value in params:
        if key not in _PARAMETERS or key in seen:
            return None
        if key.endswith("no_context_takeover") and value is not None:
            return None
        if key == "server_max_window_bits" and (value is None or not _BITS.match(value)):
            return None
        if key == "client_max_window_bits" and value is not None and not _BITS.match(value):
            return None
        seen[key] = value
    bits = deflate.window_bits
    asked = seen.get("server_max_window_bits")
    if asked is not None:
        if int(asked) < 9:  # zlib deflates raw streams with windows of 9 to 15 bits only
            return None
        bits = min(bits, int(asked))
    fresh = not deflate.context_takeover or "server_no_context_takeover" in seen
    answer = [EXTENSION]
    if fresh:
        answer.append("server_no_context_takeover")
    if not deflate.context_takeover:
        answer.append("client_no_context_takeover")
    if asked is not None or bits < 15:
        answer.append(f"server_max_window_bits={bits}")
    return Agreement("; ".join(answer), bits, fresh)


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside quoted strings."""
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part for part in parts if part.strip()] if sep == "," else parts
