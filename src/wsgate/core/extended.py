"""Kaazing's extended handshake (``x-kaazing-handshake``), sans I/O: parse, merge, format.

The k3po httpx specification (``WebSocketProtocolx-kaazing-handshake.md``): a client offers the
``x-kaazing-handshake`` subprotocol, the server's 101 selects it, and the *extended* handshake then
runs inside WebSocket messages: the client sends an HTTP/1.1 request head as one message, the server
answers an HTTP/1.1 response as one binary message. 401 asks the client to send the request again
with credentials on the same WebSocket; 101 opens the connection for the application; anything else
ends it. This module parses the request, builds the ``Handshake`` admission decides on (the inner
request merged with the outer connection: ``merged_handshake``) and formats the answers;
``transport.extended_handshake`` does the I/O.

Kaazing's own clients mark themselves with ``.kl=Y`` in the query: the gateway then also sends a
balancer message (``\\uf0ffN``) after each 101 (the outer and the inner one) and an empty message
after each extended response (``Signals``); without them those clients never send their request or
never open.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, replace
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

from multidict import CIMultiDict, MultiDict, MultiDictProxy, MultiMapping

from .handshake import Handshake, handshake_headers

EXTENDED_PROTOCOL = "x-kaazing-handshake"
TRANSPORT = "x-kaazing-handshake"  # ``LiveSession.transport`` / ``Handshake.transport`` of such connections
MAX_REQUEST = 16 * 1024  # bytes of one extended request (a request head: no body)
MAX_HEADERS = 64
MAX_ATTEMPTS = 4  # extended requests per connection: a 401 to the last one ends the connection
# Kaazing's balancer message: "no balancer took part, go ahead" (UTF-8 of U+F0FF, then "N").
BALANCER_OPEN = "\uf0ffN".encode()
# Headers the inner request may set: the answer to the challenge and the negotiation. Everything else
# (Origin, Host, Cookie, Upgrade, Sec-WebSocket-Key, X-Forwarded-For, ...) is the outer request's: the
# browser set those, the page's script chose the inner message.
INNER_HEADERS = ("Authorization", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions")
# A body in the inner request: refused (a request head only).
BODY_HEADERS = ("Content-Length", "Transfer-Encoding")
NEGOTIATION = frozenset({"sec-websocket-protocol", "sec-websocket-extensions"})
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 §5.5: no CTL in a field value but HTAB
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ExtendedHandshakeError(ValueError):
    """An extended request refused before admission: 400 in-band; the text goes to the audit log only."""


@dataclass(frozen=True, slots=True)
class ExtendedRequest:
    """One extended handshake request as the client sent it."""

    method: str
    target: str  # as sent: path and query
    path: str  # percent-decoded, as ``Handshake.path`` is
    query: tuple[tuple[str, str], ...]
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Signals:
    """What Kaazing's own clients wait for besides the spec (``.kl=Y``, ``.kv=10.05`` in the query)."""

    balancer: bool = False  # ``\\uf0ffN`` after the outer 101 and after the inner 101
    terminator: bool = False  # an empty binary message after each extended response

    @classmethod
    def of(cls, query: MultiMapping[str]) -> Signals:
        kaazing = query.get(".kl") == "Y"
        return cls(balancer=kaazing, terminator=kaazing or query.get(".kv") == "10.05")


def offers_extended(headers: MultiMapping[str]) -> bool:
    """Does the opening handshake offer ``x-kaazing-handshake`` (alone or with application protocols)?

    Exactly so spelled: subprotocols are case-sensitive (RFC 6455 §4.1), the 101 can select only that
    spelling, and Kaazing's gateway compares it the same way."""
    return any(
        offer.strip() == EXTENDED_PROTOCOL
        for line in headers.getall("Sec-WebSocket-Protocol", ())
        for offer in line.split(",")
    )


def parse_request(data: bytes | str, line_limit: int = 8190) -> ExtendedRequest:
    """The request head in one WebSocket message (text or binary): ASCII, CRLF lines, an empty line at the end.

    Raises ``ExtendedHandshakeError`` for anything else: too large, not HTTP, a body, an obsolete line
    fold, a control character (but HTAB in a value), a line over ``line_limit``, more than ``MAX_HEADERS``
    headers.
    """
    if len(data) > MAX_REQUEST:
        raise ExtendedHandshakeError(f"extended request over {MAX_REQUEST} bytes")
    text = data if isinstance(data, str) else data.decode("latin-1")
    if not text.isascii():
        raise ExtendedHandshakeError("extended request is not ASCII")
    head, blank, rest = text.partition("\r\n\r\n")
    if not blank:
        raise ExtendedHandshakeError("extended request does not end with an empty line")
    if rest:
        raise ExtendedHandshakeError("extended request has a body")
    lines = head.split("\r\n")
    for line in lines:
        if _CONTROL.search(line):  # as the outer request's parser refuses them (400): CTLs but HTAB in values
            raise ExtendedHandshakeError("bare CR, LF, NUL or another control character in the extended request")
        if len(line) > line_limit:
            raise ExtendedHandshakeError(f"extended request line over {line_limit} bytes")
    method, target, version = _request_line(lines[0])
    if len(lines) - 1 > MAX_HEADERS:
        raise ExtendedHandshakeError(f"extended request has more than {MAX_HEADERS} headers")
    headers = tuple(_header(line) for line in lines[1:])
    for name in BODY_HEADERS:
        if any(n.lower() == name.lower() and (name != "Content-Length" or v != "0") for n, v in headers):
            raise ExtendedHandshakeError(f"extended request has {name}")
    raw_path, _, raw_query = target.partition("?")
    return ExtendedRequest(
        method=method,
        target=target,
        path=unquote(raw_path),
        query=tuple(parse_qsl(raw_query, keep_blank_values=True)),
        version=version,
        headers=headers,
    )


def _request_line(line: str) -> tuple[str, str, tuple[int, int]]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise ExtendedHandshakeError("extended request line is not 'METHOD target HTTP/x.y'")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN:
        raise ExtendedHandshakeError("extended request method is not a token")
    if not target.startswith("/") or "#" in target or "\t" in target:
        raise ExtendedHandshakeError("extended request target is not a path")
    if len(version) != 8 or not version.startswith("HTTP/") or version[6] != "." or not version[5::2].isdigit():
        raise ExtendedHandshakeError("extended request has no HTTP version")
    return method, target, (int(version[5]), int(version[7]))


def _header(line: str) -> tuple[str, str]:
    if line[:1] in (" ", "\t"):
        raise ExtendedHandshakeError("obsolete line folding in the extended request")
    name, colon, value = line.partition(":")
    if not colon or not name or not set(name) <= _TOKEN:
        raise ExtendedHandshakeError("malformed header in the extended request")
    return name, value.strip(" \t")


def merged_handshake(outer: Handshake, inner: ExtendedRequest, credential_headers: tuple[str, ...] = ()) -> Handshake:
    """The request admission decides on: the inner request line, its credentials and negotiation, and
    everything else from the outer request and connection (address, TLS, peer certificate, Origin, Host,
    cookies, the RFC 6455 headers).

    From the inner request: ``INNER_HEADERS`` and the realm's ``credential_headers`` (``http-header``),
    each replacing the outer's lines of that name (an outer credential the inner does not repeat
    stands, as Kaazing merges them); the subprotocol and extension offers are always the inner's,
    without ``x-kaazing-handshake``. Query parameters: the inner's, and the outer's for names the inner does not
    use (``.kl`` and the like, or a realm's ``http-query-parameter``). Other inner headers are ignored.
    The path must be the outer's (Kaazing answers 400 to another one).
    """
    if inner.path != outer.path:
        raise ExtendedHandshakeError("extended request path differs from the opening handshake's")
    taken = {name.lower() for name in (*INNER_HEADERS, *credential_headers)}
    given = {name.lower() for name, _ in inner.headers if name.lower() in taken}
    replaced = given | NEGOTIATION  # the offers are always the inner request's (the spec moves them there)
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in outer.headers.items() if name.lower() not in replaced
    )
    for name, value in inner.headers:
        low = name.lower()
        if low not in given:
            continue
        if low == "sec-websocket-protocol":
            value = ", ".join(p.strip() for p in value.split(",") if p.strip() and p.strip() != EXTENDED_PROTOCOL)
            if not value:
                continue
        headers.add(name, value)
    query: MultiDict[str] = MultiDict(inner.query)
    inner_params = {name for name, _ in inner.query}
    for name, value in outer.query.items():
        if name not in inner_params:
            query.add(name, value)
    return replace(
        outer,
        method=inner.method,
        path=inner.path,
        headers=handshake_headers(headers),
        query=MultiDictProxy(query),
        version=inner.version,
        transport=TRANSPORT,
    )


def accept_value(key: str) -> str:
    """``Sec-WebSocket-Accept`` for the opening handshake's key (RFC 6455 §4.2.2), repeated on the inner 101."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def format_response(status: int, headers: dict[str, str] | None = None, date: str | None = None) -> bytes:
    """An extended handshake response, laid out as Kaazing's are (the spec's scripts read them byte by byte).

    101: its headers sorted by name, with ``Date`` and ``Server`` (the product, no version). Anything
    else: ``Content-Type``, the given headers (``WWW-Authenticate``, ``Retry-After``), ``Content-Length``
    and Kaazing's small HTML body; a 400 also carries ``Date``.
    """
    phrase = "WebSocket Protocol Handshake" if status == 101 else _phrase(status)
    now = date or formatdate(usegmt=True)
    if status == 101:
        fields = {"Connection": "Upgrade", "Date": now, "Server": "wsgate", "Upgrade": "websocket", **(headers or {})}
        lines = [f"{name}: {fields[name]}" for name in sorted(fields, key=str.lower)]
        body = b""
    else:
        body = f"<html><head></head><body><h1>{status} {phrase}</h1></body></html>".encode()
        lines = ["Content-Type: text/html", *(f"{name}: {value}" for name, value in (headers or {}).items())]
        if status == 400:
            lines.append(f"Date: {now}")
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join([f"HTTP/1.1 {status} {phrase}", *lines])
    return (head + "\r\n\r\n").encode() + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


@dataclass(frozen=True, slots=True)
class ExtendedResponse:
    """An extended handshake response as a client reads it (tests, and clients written in Python)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes


def parse_response(data: bytes) -> ExtendedResponse:
    """The status, headers and body of an extended response (the client's side of ``format_response``)."""
    head, blank, body = data.partition(b"\r\n\r\n")
    if not blank:
        raise ExtendedHandshakeError("extended response does not end its head with an empty line")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] != "HTTP/1.1" or not parts[1].isdigit():
        raise ExtendedHandshakeError("extended response has no status line")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name, value.strip())
    return ExtendedResponse(int(parts[1]), headers, body)


def format_request(path: str, headers: dict[str, str] | None = None) -> bytes:
    """An extended handshake request as Kaazing's clients send it (tests, and clients written in Python)."""
    lines = [f"GET {path} HTTP/1.1", *(f"{name}: {value}" for name, value in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
