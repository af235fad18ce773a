"""Kaazing's extended handshake (x-kaazing-handshake), sans I/O: parsing, merging and formatting.

Each spec test cites its k3po script (``specification/httpx/src/main/scripts/org/kaazing/specification/
httpx/...``): the bytes the script writes are parsed here, the bytes it reads are compared with what
``format_response`` produces. Limits and malformed requests follow; the same cases on a socket are in
tests/test_extended_loopback.py.
"""

from __future__ import annotations

import pytest
from multidict import MultiDict, MultiDictProxy

from wsgate.core.extended import (
    BALANCER_OPEN,
    MAX_HEADERS,
    MAX_REQUEST,
    ExtendedHandshakeError,
    Signals,
    accept_value,
    format_request,
    format_response,
    merged_handshake,
    offers_extended,
    parse_request,
    parse_response,
)
from wsgate.core.handshake import Handshake, handshake_headers
from wsgate.core.http import check_handshake
from wsgate.core.peer import PeerIdentity

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
DATE = "Tue, 01 Dec 2026 19:00:00 GMT"
AUTH = "Basic am9lOndlbGNvbWU="  # joe:welcome, as in the scripts
KAAZING_CHALLENGE = 'Application Basic realm="Kaazing WebSocket Gateway Demo"'


def outer(path: str = "/path", protocols: str = "x-kaazing-handshake", **extra: str) -> Handshake:
    """The opening handshake the scripts write (``Host: localhost:8080``)."""
    headers = [
        ("Host", "localhost:8080"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", protocols),
        *((name.replace("_", "-"), value) for name, value in extra.items()),
    ]
    return Handshake(
        "GET",
        "localhost",
        path,
        handshake_headers(headers),
        MultiDictProxy(MultiDict([(".kl", "Y")])),
        remote="192.0.2.7",
        peer=PeerIdentity("CN=client", "CN=ca", (), (), "ab", b""),
        secure=True,
        client="192.0.2.7:50000",
        authority="localhost:8080",
    )


# -- opening handshake -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "offered"),
    [
        ("x-kaazing-handshake", True),
        ("x-kaazing-handshake, amqp", True),
        ("amqp,x-kaazing-handshake", True),
        ("X-Kaazing-Handshake", False),  # subprotocols are case-sensitive: the 101 could not select it
        ("amqp", False),
        ("x-kaazing-handshake-not", False),
        (None, False),
    ],
)
def test_opening_protocol_negotiated(header, offered):
    """opening/extended.handshake.protocol.negotiated: the client offers x-kaazing-handshake (alone or with
    application protocols, spec: "Sec-WebSocket-Protocol: x-kaazing-handshake, amqp, ..."); any other
    offer is a native client (opening/fails.to.upgrade.without.handshake.protocol is the loopback test)."""
    headers = handshake_headers([("Sec-WebSocket-Protocol", header)] if header else [])
    assert offers_extended(headers) is offered


def test_sec_websocket_accept_of_the_scripts_key():
    """Every script: the inner 101 repeats the opening's Sec-WebSocket-Accept (s3pPLMBiTxaQ9kYGzzhZRbK+xOo=)."""
    assert accept_value(KEY) == ACCEPT


# -- extended requests -----------------------------------------------------------------------


def test_connection_established_request():
    """extended/connection.established: ``write [0x82 0x96]`` "GET /path HTTP/1.1\\r\\n" "\\r\\n" (22 bytes, binary)."""
    data = b"GET /path HTTP/1.1\r\n\r\n"
    assert len(data) == 0x96 & 0x7F
    request = parse_request(data)
    assert (request.method, request.path, request.version, request.headers) == ("GET", "/path", (1, 1), ())
    assert format_request("/path") == data


def test_request_as_a_text_message():
    """Kaazing's JavaScript client sends the request as text (``processTextMessage``); either frame type is read."""
    request = parse_request("GET /echo?.kl=Y HTTP/1.1\r\nWebSocket-Protocol: \r\nSec-WebSocket-Protocol: \r\n\r\n")
    assert request.path == "/echo" and request.query == ((".kl", "Y"),)
    assert request.headers == (("WebSocket-Protocol", ""), ("Sec-WebSocket-Protocol", ""))


def test_connection_established_with_authorization_request():
    """extended/connection.established.with.authorization: the replayed request carries
    ``Authorization: Basic am9lOndlbGNvbWU=`` (0xbd: 61 bytes)."""
    data = f"GET /auth HTTP/1.1\r\nAuthorization: {AUTH}\r\n\r\n".encode()
    assert len(data) == 0xBD & 0x7F
    assert parse_request(data).headers == (("Authorization", AUTH),)
    assert format_request("/auth", {"Authorization": AUTH}) == data


def test_extension_in_extended_handshake_request():
    """extended/extension.in.extended.handshake: ``Sec-WebSocket-Extensions: x-kaazing-idle-timeout`` (0xc8: 72
    bytes), then replayed with Authorization (0xEF: 111 bytes); the merged request offers the inner's."""
    first = b"GET /auth HTTP/1.1\r\nSec-WebSocket-Extensions: x-kaazing-idle-timeout\r\n\r\n"
    second = (
        f"GET /auth HTTP/1.1\r\nAuthorization: {AUTH}\r\nSec-WebSocket-Extensions: x-kaazing-idle-timeout\r\n\r\n"
    ).encode()
    assert (len(first), len(second)) == (0xC8 & 0x7F, 0xEF & 0x7F)
    merged = merged_handshake(outer("/auth"), parse_request(second))
    assert merged.headers.getall("Sec-WebSocket-Extensions") == ["x-kaazing-idle-timeout"]
    assert merged.headers["Authorization"] == AUTH


def test_extension_in_opening_and_extended_handshake():
    """extended/extension.in.opening.handshake and extension.in.opening.and.extended.handshake: wsgate never
    negotiates an extension in the opening (compression is off), so the extensions the extended request
    offers are the only ones; those the opening offered do not carry over."""
    opening = outer("/auth", Sec_WebSocket_Extensions="x-kaazing-idle-timeout")
    merged = merged_handshake(opening, parse_request(b"GET /auth HTTP/1.1\r\n\r\n"))
    assert "Sec-WebSocket-Extensions" not in merged.headers
    merged = merged_handshake(
        opening, parse_request(b"GET /auth HTTP/1.1\r\nSec-WebSocket-Extensions: x-kaazing-idle-timeout\r\n\r\n")
    )
    assert merged.headers.getall("Sec-WebSocket-Extensions") == ["x-kaazing-idle-timeout"]


def test_client_sends_message_between_opening_and_extended_handshake():
    """extended/client.sends.message.between.opening.and.extended.handshake: "Hello" is no request → 400."""
    with pytest.raises(ExtendedHandshakeError):
        parse_request(b"Hello")


# -- extended responses ----------------------------------------------------------------------


def test_connection_established_response():
    """extended/connection.established (and extended.handshake.response.code.101): the script reads
    /HTTP\\/1.1 101.+/, Connection, /Date:.+/, Sec-WebSocket-Accept, /Server:.+/, Upgrade, in that order."""
    data = format_response(101, {"Sec-WebSocket-Accept": ACCEPT}, date=DATE)
    assert data == (
        b"HTTP/1.1 101 WebSocket Protocol Handshake\r\n"
        b"Connection: Upgrade\r\n"
        b"Date: " + DATE.encode() + b"\r\n"
        b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n"
        b"Server: wsgate\r\n"
        b"Upgrade: websocket\r\n"
        b"\r\n"
    )
    response = parse_response(data)
    assert response.status == 101 and response.headers["Sec-WebSocket-Accept"] == ACCEPT


def test_101_with_subprotocol_and_identity_headers_sorted():
    """The negotiated application subprotocol and wsgate's identity headers go on the inner 101, sorted
    as Kaazing sorts (extension.in.extended.handshake reads Sec-WebSocket-Extensions before Server)."""
    data = format_response(
        101,
        {"Wsgate-Connection-Id": "abc", "Sec-WebSocket-Accept": ACCEPT, "Sec-WebSocket-Protocol": "amqp"},
        date=DATE,
    )
    names = [line.split(b":")[0] for line in data.split(b"\r\n")[1:-2]]
    assert names == [
        b"Connection",
        b"Date",
        b"Sec-WebSocket-Accept",
        b"Sec-WebSocket-Protocol",
        b"Server",
        b"Upgrade",
        b"Wsgate-Connection-Id",
    ]


def test_401_response_is_the_scripts_bytes():
    """extended/extended.handshake.response.code.401: ``read [0x82 0x7e 0x00 0xd6]`` then exactly these 214 bytes."""
    data = format_response(401, {"WWW-Authenticate": KAAZING_CHALLENGE})
    assert len(data) == 0xD6
    assert data == (
        b"HTTP/1.1 401 Unauthorized\r\n"
        b"Content-Type: text/html\r\n"
        b'WWW-Authenticate: Application Basic realm="Kaazing WebSocket Gateway Demo"\r\n'
        b"Content-Length: 64\r\n"
        b"\r\n"
        b"<html><head></head><body><h1>401 Unauthorized</h1></body></html>"
    )


def test_400_response_is_the_scripts_layout():
    """client.sends.message.between.opening.and.extended.handshake: 400 with Content-Type, /Date:.+/,
    ``Content-Length: 63`` and the HTML body."""
    data = format_response(400, date=DATE)
    assert data == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nDate: " + DATE.encode() + b"\r\n"
        b"Content-Length: 63\r\n\r\n<html><head></head><body><h1>400 Bad Request</h1></body></html>"
    )


def test_403_response_as_kaazing_sends_it():
    """Kaazing's gateway (transport/wsn auth scripts): 403 Forbidden, Content-Type, Content-Length, HTML."""
    response = parse_response(format_response(403))
    assert response.status == 403 and "WWW-Authenticate" not in response.headers
    assert response.body == b"<html><head></head><body><h1>403 Forbidden</h1></body></html>"


def test_non_ascii_realm_description_is_utf8():
    data = format_response(401, {"WWW-Authenticate": 'Basic realm="Réalm"'})
    assert 'realm="Réalm"'.encode() in data


@pytest.mark.parametrize(
    ("query", "signals"),
    [
        ({}, Signals(False, False)),
        ({".kl": "Y"}, Signals(True, True)),
        ({".kv": "10.05"}, Signals(False, True)),
        ({".kl": "N"}, Signals(False, False)),
    ],
)
def test_kaazing_client_signals(query, signals):
    """missing.terminal.frame.in.extended.handshake.response (an earlier revision of the spec): Kaazing's
    clients wait for an empty message after each extended response, and (``.kl=Y``) for the balancer
    message ``\\uf0ffN`` after each 101; plain spec clients (no query) get neither."""
    assert Signals.of(MultiDict(query)) == signals
    assert BALANCER_OPEN == b"\xef\x83\xbfN"


# -- merging the inner request with the outer one ---------------------------------------------


def test_merged_request_keeps_the_outer_connection_and_browser_headers():
    """Origin, Host, Cookie and the RFC 6455 headers are the outer request's (the browser set them);
    the inner may only answer the challenge and negotiate."""
    opening = outer(Origin="https://app.example", Cookie="a=1", Authorization="Basic b3V0ZXI6eA==")
    inner = parse_request(
        b"GET /path?x=1 HTTP/1.1\r\n"
        b"Origin: https://evil.example\r\nHost: evil.example\r\nCookie: a=2\r\nX-Forwarded-For: 10.0.0.1\r\n"
        b"Upgrade: h2c\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
        b"Authorization: " + AUTH.encode() + b"\r\n"
        b"Sec-WebSocket-Protocol: x-kaazing-handshake, amqp, mqtt\r\n\r\n"
    )
    merged = merged_handshake(opening, inner)
    headers = merged.headers
    assert headers["Origin"] == "https://app.example" and headers["Host"] == "localhost:8080"
    assert headers.getall("Cookie") == ["a=1"] and "X-Forwarded-For" not in headers
    assert headers["Upgrade"] == "websocket" and headers["Sec-WebSocket-Key"] == KEY
    assert headers.getall("Authorization") == [AUTH]  # the inner answer replaces the outer's
    assert headers.getall("Sec-WebSocket-Protocol") == ["amqp, mqtt"]
    assert (merged.remote, merged.peer, merged.secure, merged.client) == (
        opening.remote,
        opening.peer,
        True,
        opening.client,
    )
    assert merged.transport == "x-kaazing-handshake" and merged.authority == "localhost:8080"
    assert list(merged.query.items()) == [("x", "1"), (".kl", "Y")]
    assert check_handshake(merged.method, merged.version, merged.headers) is None


def test_outer_credentials_stand_unless_the_inner_repeats_them():
    """As Kaazing merges: an Authorization (or realm header) on the opening counts if the inner has none."""
    opening = outer(Authorization=AUTH, X_Token="outer")
    merged = merged_handshake(opening, parse_request(b"GET /path HTTP/1.1\r\n\r\n"), ("X-Token",))
    assert merged.headers["Authorization"] == AUTH and merged.headers["X-Token"] == "outer"
    merged = merged_handshake(opening, parse_request(b"GET /path HTTP/1.1\r\nX-Token: inner\r\n\r\n"), ("X-Token",))
    assert merged.headers.getall("X-Token") == ["inner"]


def test_only_the_realms_own_headers_come_from_the_inner_request():
    inner = parse_request(b"GET /path HTTP/1.1\r\nX-Token: t\r\n\r\n")
    assert "X-Token" not in merged_handshake(outer(), inner).headers
    assert merged_handshake(outer(), inner, ("x-token",)).headers["X-Token"] == "t"


def test_inner_query_wins_for_its_names():
    inner = parse_request(b"GET /path?.kl=N&access_token=abc HTTP/1.1\r\n\r\n")
    assert list(merged_handshake(outer(), inner).query.items()) == [(".kl", "N"), ("access_token", "abc")]


def test_duplicate_inner_authorization_is_refused_by_admission_checks():
    """Two Authorization lines in the inner request stay two: ``check_handshake`` refuses them (400)."""
    inner = parse_request(f"GET /path HTTP/1.1\r\nAuthorization: {AUTH}\r\nAuthorization: {AUTH}\r\n\r\n".encode())
    merged = merged_handshake(outer(), inner)
    refused = check_handshake(merged.method, merged.version, merged.headers)
    assert refused is not None and refused.status == 400


def test_inner_path_must_be_the_outer_path():
    """Kaazing's HttpMergeRequestFilter answers 400 to an extended request for another path."""
    with pytest.raises(ExtendedHandshakeError, match="path"):
        merged_handshake(outer("/echo"), parse_request(b"GET /other HTTP/1.1\r\n\r\n"))
    decoded = merged_handshake(outer("/a b"), parse_request(b"GET /a%20b HTTP/1.1\r\n\r\n"))
    assert decoded.path == "/a b"


# -- limits and malformed requests -----------------------------------------------------------

MALFORMED = {
    "not-http": b"Hello",
    "no-terminator": b"GET /path HTTP/1.1\r\n",
    "missing-terminal-line": b"GET /path HTTP/1.1\r\nAuthorization: x\r\n",
    "bare-lf": b"GET /path HTTP/1.1\nHost: x\n\n",
    "bare-lf-in-header": b"GET /path HTTP/1.1\r\nA: b\nC: d\r\n\r\n",
    "nul": b"GET /path HTTP/1.1\r\nA: b\x00\r\n\r\n",
    "body": b"GET /path HTTP/1.1\r\n\r\nbody",
    "content-length": b"GET /path HTTP/1.1\r\nContent-Length: 4\r\n\r\n",
    "transfer-encoding": b"GET /path HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    "folding": b"GET /path HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
    "no-colon": b"GET /path HTTP/1.1\r\nAuthorization\r\n\r\n",
    "space-in-name": b"GET /path HTTP/1.1\r\nAuth orization: x\r\n\r\n",
    "absolute-target": b"GET http://evil/path HTTP/1.1\r\n\r\n",
    "fragment": b"GET /path#x HTTP/1.1\r\n\r\n",
    "no-version": b"GET /path\r\n\r\n",
    "bad-version": b"GET /path HTTP/one\r\n\r\n",
    "extra-space": b"GET  /path HTTP/1.1\r\n\r\n",
    "bad-method": b"G(T /path HTTP/1.1\r\n\r\n",
    "non-ascii": "GET /path HTTP/1.1\r\nAuthorization: Basic é\r\n\r\n".encode(),
    "empty": b"",
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_requests_are_refused(case):
    with pytest.raises(ExtendedHandshakeError):
        parse_request(MALFORMED[case])


def test_content_length_zero_is_no_body():
    assert parse_request(b"GET /path HTTP/1.1\r\nContent-Length: 0\r\n\r\n").headers == (("Content-Length", "0"),)


def test_oversized_request():
    padding = "A" * (MAX_REQUEST - 100)
    small = f"GET /path HTTP/1.1\r\nX-Pad: {padding}\r\n\r\n"
    assert len(small) <= MAX_REQUEST and parse_request(small, line_limit=MAX_REQUEST)
    with pytest.raises(ExtendedHandshakeError, match="over"):
        parse_request(small + "B" * 200, line_limit=MAX_REQUEST)
    with pytest.raises(ExtendedHandshakeError, match="line over"):
        parse_request(small, line_limit=8190)


def test_too_many_headers():
    lines = "".join(f"X-{i}: v\r\n" for i in range(MAX_HEADERS))
    assert len(parse_request(f"GET /path HTTP/1.1\r\n{lines}\r\n").headers) == MAX_HEADERS
    with pytest.raises(ExtendedHandshakeError, match="headers"):
        parse_request(f"GET /path HTTP/1.1\r\n{lines}X-last: v\r\n\r\n")


def test_http_1_0_parses_and_admission_refuses_it():
    merged = merged_handshake(outer(), parse_request(b"GET /path HTTP/1.0\r\n\r\n"))
    refused = check_handshake(merged.method, merged.version, merged.headers)
    assert refused is not None and refused.status == 400
    merged = merged_handshake(outer(), parse_request(b"POST /path HTTP/1.1\r\n\r\n"))
    assert check_handshake(merged.method, merged.version, merged.headers) is not None
