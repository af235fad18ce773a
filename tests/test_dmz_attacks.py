"""Attack review of the layered DMZ (docs/dmz.md): regression tests for what the review found.

Sans-I/O first (the assertion's exact encoding and claim types, the replay cache's boundary), then two real
gateways on loopback (tests/dmz_fixtures.py): who may carry tunnels, the internal end's message policy.
"""
# ruff: noqa: F811  (dmz_pair is a fixture imported from tests/dmz_fixtures.py)

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from typing import Any

import aiohttp
import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wsgate.core.identity import Identity
from wsgate.security.assertion import AssertionRefused, AssertionVerifier, sign

from .dmz_fixtures import JOE as JOE_LOGIN
from .dmz_fixtures import SERVICE_URI, Pair, dmz_pair  # noqa: F401

NOW = 1_800_000_000.0
JOE = Identity(realm="demo", user="joe", roles=frozenset({"AUTHORIZED"}), expires_at=None)
HEADER = {"alg": "EdDSA", "typ": "wsgate-dmz+jwt"}


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def check(key: Ed25519PrivateKey) -> AssertionVerifier:
    return AssertionVerifier(key.public_key(), audience="wsgate-internal", issuer="wsgate-dmz")


def good_claims() -> dict[str, object]:
    return {
        "iss": "wsgate-dmz",
        "aud": "wsgate-internal",
        "sub": "joe",
        "roles": ["AUTHORIZED"],
        "realm": "demo",
        "svc": SERVICE_URI,
        "remote": "192.0.2.7",
        "iat": int(NOW),
        "exp": int(NOW + 10),
        "jti": "id-1",
    }


def signed_raw(key: Ed25519PrivateKey, header: bytes, claims: bytes) -> str:
    """A token over exactly these header and claims bytes, correctly signed by ``key``."""
    head, body = b64(header), b64(claims)
    return f"{head}.{body}.{b64(key.sign(f'{head}.{body}'.encode()))}"


def signed(key: Ed25519PrivateKey, claims: dict[str, object]) -> str:
    return signed_raw(key, json.dumps(HEADER).encode(), json.dumps(claims).encode())


# -- the assertion: only what the DMZ signs, exactly as it signs it ----------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("exp", float("nan")),  # NaN compares false with everything: it never expired, never "too long"
        ("iat", float("nan")),
        ("exp", "1800000010"),  # a string is not a NumericDate
        ("exp", True),  # nor a boolean (float(True) == 1.0)
        ("exp", 10**400),  # too big for a float: refused, not an OverflowError
        ("cexp", float("nan")),
        ("cexp", "soon"),
        ("roles", ["AUTHORIZED", 7]),  # a role is a string, never str(7)
        ("roles", ["AUTHORIZED", None]),
        ("roles", "AUTHORIZED"),
        ("sub", ["joe"]),  # would become the user "['joe']"
        ("sub", None),
        ("svc", 1),
        ("jti", 12345),
        ("jti", ""),
        ("realm", {"a": 1}),
        ("remote", None),
        ("iss", ["wsgate-dmz"]),
    ],
)
def test_claims_of_the_wrong_type_are_refused(key: Ed25519PrivateKey, name: str, value: object) -> None:
    claims = {**good_claims(), name: value}
    with pytest.raises(AssertionRefused):
        check(key).verify(signed(key, claims), SERVICE_URI, now=NOW + 1)


def test_a_nan_expiry_cannot_be_replayed(key: Ed25519PrivateKey) -> None:
    """The replay cache forgot a NaN deadline at once: the same assertion verified again and again."""
    verifier = check(key)
    text = signed(key, {**good_claims(), "exp": float("nan")})
    accepted = 0
    for at in (NOW + 1, NOW + 2, NOW + 3600):
        try:
            verifier.verify(text, SERVICE_URI, now=at)
            accepted += 1
        except AssertionRefused:
            pass
    assert accepted == 0


def test_a_float_numeric_date_is_still_accepted(key: Ed25519PrivateKey) -> None:
    """JWT NumericDates may carry fractions: strict types must not refuse them."""
    claims = {**good_claims(), "iat": NOW + 0.25, "exp": NOW + 9.5, "cexp": NOW + 60.5}
    verified = check(key).verify(signed(key, claims), SERVICE_URI, now=NOW + 1)
    assert (verified.expires_at, verified.credential_expiry) == (NOW + 9.5, NOW + 60.5)


def test_a_repeated_json_key_is_refused(key: Ed25519PrivateKey) -> None:
    body = json.dumps(good_claims())[:-1] + ', "sub": "admin"}'
    with pytest.raises(AssertionRefused):
        check(key).verify(signed_raw(key, json.dumps(HEADER).encode(), body.encode()), SERVICE_URI, now=NOW + 1)
    header = b'{"alg": "none", "alg": "EdDSA", "typ": "wsgate-dmz+jwt"}'
    with pytest.raises(AssertionRefused):
        check(key).verify(signed_raw(key, header, json.dumps(good_claims()).encode()), SERVICE_URI, now=NOW + 1)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t + "=",  # padding
        lambda t: t + "==",
        lambda t: t + "!",  # not base64url at all
        lambda t: t[:-1] + "+",  # the other alphabet
        lambda t: t + " ",
        lambda t: t + "\n",
        lambda t: t + ".",  # a fourth part
        lambda t: t[:10] + "\u00e9" + t[10:],  # non-ASCII in the header
    ],
)
def test_only_canonical_base64url_is_read(key: Ed25519PrivateKey, mangle) -> None:  # type: ignore[no-untyped-def]
    """The signature's part decoded leniently: the same assertion had many spellings (junk was discarded)."""
    text = signed(key, good_claims())
    with pytest.raises(AssertionRefused):
        check(key).verify(mangle(text), SERVICE_URI, now=NOW + 1)
    assert check(key).verify(text, SERVICE_URI, now=NOW + 1).subject == "joe"  # unmangled: fine


def test_a_signature_with_non_canonical_trailing_bits_is_refused(key: Ed25519PrivateKey) -> None:
    text = signed(key, good_claims())
    head, body, signature = text.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 64 bytes → 86 characters: the last one carries 4 unused bits; a lenient decoder ignores them
    twin = f"{head}.{body}.{signature[:-1]}{alphabet[alphabet.index(signature[-1]) ^ 0b01]}"
    with pytest.raises(AssertionRefused):
        check(key).verify(twin, SERVICE_URI, now=NOW + 1)


def test_a_header_nested_too_deep_is_refused_not_raised(key: Ed25519PrivateKey) -> None:
    """The header is read before the signature is checked: whatever it holds must end as a refusal."""
    deep = b64(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(AssertionRefused):
        check(key).verify(f"{deep}.{b64(b'{}')}.{b64(bytes(64))}", SERVICE_URI, now=NOW + 1)


def test_a_token_is_refused_at_the_instant_its_replay_entry_is_forgotten(key: Ed25519PrivateKey) -> None:
    """exp + leeway was both 'not yet expired' and 'forget the jti now': a replay passed at that instant."""
    verifier = check(key)
    text = signed(key, good_claims())
    verifier.verify(text, SERVICE_URI, now=NOW + 1)
    boundary = NOW + 10 + verifier.leeway
    with pytest.raises(AssertionRefused):
        verifier.verify(text, SERVICE_URI, now=boundary)


def test_the_dmz_signs_what_the_strict_verifier_accepts(key: Ed25519PrivateKey) -> None:
    identity = Identity(realm="demo", user="joe", roles=frozenset({"A", "B"}), expires_at=NOW + 300.7)
    text = sign(
        key,
        issuer="wsgate-dmz",
        audience="wsgate-internal",
        identity=identity,
        service=SERVICE_URI,
        remote="192.0.2.7",
        now=NOW,
    )
    claims = check(key).verify(text, SERVICE_URI, now=NOW + 1)
    assert (claims.subject, claims.roles, claims.credential_expiry) == ("joe", frozenset({"A", "B"}), NOW + 300)
    anonymous = sign(
        key,
        issuer="wsgate-dmz",
        audience="wsgate-internal",
        identity=None,
        service=SERVICE_URI,
        remote="192.0.2.7",
        now=NOW,
    )
    assert check(key).verify(anonymous, SERVICE_URI, now=NOW + 1).identity().user is None


# -- two gateways on loopback ------------------------------------------------------------------------------


async def talk(url: str, headers: dict[str, str], text: str = "hello") -> tuple[int, Any]:
    """Connect, send ``text``, read one answer: (101 or the HTTP status, the answer)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
                await ws.send_str(text)
                msg = await asyncio.wait_for(ws.receive(), 5.0)
                return 101, msg.data
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, None


def intruder_context(ca: trustme.CA, common_name: str) -> ssl.SSLContext:
    """A client certificate the DMZ's truststore verifies (same CA), for someone other than the internal gateway."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    ca.issue_cert(f"{common_name}.test", common_name=common_name).configure_cert(context)
    return context


async def offer_tunnel(pair: Pair, context: ssl.SSLContext) -> int:
    """Dial the DMZ's tunnel listener as an internal gateway would: 101, or the HTTP status it answered."""
    headers = {"Wsgate-Tunnel": SERVICE_URI, "Wsgate-Tunnel-Id": "intruder"}
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(pair.tunnel_url(), ssl=context, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


async def test_a_pool_without_tunnel_peer_takes_no_tunnel(dmz_pair, ca) -> None:  # type: ignore[no-untyped-def]
    """Deny by default: a pool naming no peer refused nobody, so any certificate the truststore verifies (a
    client's, issued by the same CA) could offer tunnels and read the clients' assertions and traffic."""
    pair: Pair = await dmz_pair(prepared=1)
    pair.pool().peers = ()
    assert await offer_tunnel(pair, intruder_context(ca, "alice")) == 403
    assert [t.id for t in pair.pool().idle] != ["intruder"]


def test_the_dmz_end_requires_tunnel_peer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from wsgate.catalog import load_config
    from wsgate.errors import ConfigErrors

    for name in ("keystore.pem", "truststore.pem", "private.pem"):
        (tmp_path / name).write_text("")
    (tmp_path / "gateway.yaml").write_text(
        """
service:
  - name: app
    accept: ws://127.0.0.1:0/app
    connect: wss://app.internal.test/app
    type: proxy
    connect-options:
      http.transport: socks://dmz:1080
      socks.mode: reverse
      tunnel.assertion.key: private.pem
security:
  keystore: {type: PEM, file: keystore.pem}
  truststore: {type: PEM, file: truststore.pem}
"""
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config(tmp_path / "gateway.yaml")
    assert "service[app]/connect-options/tunnel.peer: required" in str(caught.value)


INTERNAL_RULES = """\
    authorization-rule:
      - allow: send
        json.kind: quote
      - allow: receive"""


async def test_the_internal_ends_message_rules_apply_to_tunnelled_clients(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    """The internal end relayed the tunnel's raw channel: its authorization-rule (and message.policy) never ran."""
    pair: Pair = await dmz_pair(prepared=1, internal_extra=INTERNAL_RULES)
    quote, order, again = '{"kind": "quote"}', '{"kind": "order"}', '{"kind": "quote", "n": 2}'
    async with aiohttp.ClientSession() as http, http.ws_connect(pair.url(), headers=JOE_LOGIN) as ws:
        await ws.send_str(quote)
        assert (await asyncio.wait_for(ws.receive(), 5.0)).data == quote.encode()
        await ws.send_str(order)  # refused inside: dropped before the back end
        await ws.send_str(again)
        assert (await asyncio.wait_for(ws.receive(), 5.0)).data == again.encode()
    metrics = pair.internal.runtime.metrics.exposition().decode()  # type: ignore[union-attr]
    assert 'wsgate_operations_denied_total{operation="send",service="internal-app"} 1.0' in metrics


async def reload_dmz(pair: Pair, old: str = "", new: str = "") -> None:
    """Rewrite the DMZ gateway's config (``old`` → ``new``, or as it is) and reload it."""
    assert pair.dmz is not None
    path = pair.folder / "dmz.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new) if old else text)
    ok, message = await pair.dmz.reload()
    assert ok, message


async def test_tunnels_keep_arriving_after_a_reload(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    """A reload built a new Runtime without the pools: the tunnel listener then answered every new tunnel 404,
    so once the ready ones were used the DMZ answered 503 for good (and /api/tunnels showed nothing)."""
    pair: Pair = await dmz_pair(prepared=1)
    await reload_dmz(pair)  # nothing changed
    assert pair.internal is not None
    ok, message = await pair.internal.reload()
    assert ok, message
    for _ in range(3):  # each client spends a tunnel: the internal gateway must be able to dial the next ones
        await pair.ready(1)
        assert await talk(pair.url(), JOE_LOGIN) == (101, b"hello")
    async with aiohttp.ClientSession() as http:
        for gateway in (pair.dmz, pair.internal):
            async with http.get(pair.admin(gateway) + "/api/tunnels") as response:
                assert [view["uri"] for view in await response.json()] == [SERVICE_URI]


async def test_a_reload_that_changes_the_dmz_service_keeps_its_ready_tunnels(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    """The retired handler's stop closed the idle tunnels of the pool its successor had adopted."""
    pair: Pair = await dmz_pair(prepared=2)
    before = sorted(t.id for t in pair.pool().idle)
    await reload_dmz(pair, "socks.timeout: 2 seconds", "socks.timeout: 3 seconds")
    await asyncio.sleep(0.5)  # the old handler is retired once its (no) connections are gone
    assert sorted(t.id for t in pair.pool().idle) == before
    assert pair.internal_handler().redials == 0
    assert await talk(pair.url(), JOE_LOGIN) == (101, b"hello")


async def test_a_reload_that_drops_a_tunnel_peer_drops_its_ready_tunnels(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    """Narrowing tunnel.peer (a compromised internal certificate) applied to new tunnels only: the ready
    ones that certificate had dialled still carried the next clients."""
    pair: Pair = await dmz_pair(prepared=1)
    await reload_dmz(pair, "tunnel.peer: internal-gateway", "tunnel.peer: another-gateway")
    assert (await talk(pair.url(), JOE_LOGIN))[0] == 503
    assert pair.backend.connections == 0


@pytest.mark.parametrize("impostor", ["another CA", "another name"])
async def test_the_internal_gateway_dials_only_the_real_dmz(dmz_pair, ca, other_ca, impostor: str) -> None:  # type: ignore[no-untyped-def]
    """Its tunnels carry clients with their identities inward: a server at the DMZ's address without the DMZ's
    certificate (another CA, or the same CA for another name) never gets one (nor sees the internal gateway's
    request)."""
    from aiohttp import web

    pair: Pair = await dmz_pair(prepared=1)
    await asyncio.wait_for(pair.dmz.stop(grace=1.0), 10.0)  # type: ignore[union-attr]
    pair.dmz = None
    handler = pair.internal_handler()
    failures = handler.dial_failures
    seen: list[str] = []

    async def tunnel(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/shield", tunnel)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issuer, name = (other_ca, "127.0.0.1") if impostor == "another CA" else (ca, "impostor.test")
    issuer.issue_cert(name).configure_cert(context)
    site = web.TCPSite(runner, "127.0.0.1", pair.values["tunnel_port"], ssl_context=context)
    await site.start()
    try:
        await asyncio.sleep(1.5)  # several re-dials (socks.retry.maximum.interval 500ms)
        assert seen == []
        assert handler.dial_failures > failures and not handler.idle
    finally:
        await asyncio.wait_for(runner.cleanup(), 5.0)


def test_the_identity_line_is_one_line_whatever_the_names_hold() -> None:
    """A user name (a JWT's sub, say) with CR/LF, U+2028 or quotes cannot add a line or a field for the back end."""
    from wsgate.services.dmz import identity_line

    hostile = 'joe"\r\nWSGATE-IDENTITY {"sub":"admin","roles":["ADMIN"]}\u2028\u0085\x00'
    line = identity_line({"sub": hostile, "roles": ["A\nB"], "realm": "r\r", "remote": "x", "iss": "i", "jti": "j"})
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1 and b"\r" not in line[:-2]
    assert line.isascii()
    assert json.loads(line[len("WSGATE-IDENTITY ") :])["sub"] == hostile


async def test_a_reload_of_the_internal_end_applies_to_the_next_client_at_once(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    """The replaced handler's ready tunnels stayed in the DMZ's pool until it was retired, and carried the next
    clients under the old config: a tightened authorization-constraint let them in."""
    pair: Pair = await dmz_pair(prepared=2)
    assert pair.internal is not None and pair.dmz is not None
    # a client of the old config that never answers its 1012: the old handler is retired only after it
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.dmz.port_of("dmz-app"))
    writer.write(
        b"GET /app HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: " + JOE_LOGIN["Authorization"].encode() + b"\r\n\r\n"
    )
    assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    await pair.ready(2)
    connections = pair.backend.connections
    path = pair.folder / "internal.yaml"
    path.write_text(path.read_text().replace('require-role: "AUTHORIZED"', 'require-role: "NOBODY"'))
    try:
        ok, message = await pair.internal.reload()
        assert ok, message
        statuses = [(await talk(pair.url(), JOE_LOGIN))[0] for _ in range(3)]
        assert 101 not in statuses, statuses
        assert pair.backend.connections == connections
    finally:
        writer.transport.abort()


BUSY_SERVICE = """
  - name: busy
    accept: ws://127.0.0.1:{port}/busy
    type: echo
"""


@pytest.mark.parametrize("side", ["dmz", "internal"])
async def test_a_reload_that_fails_leaves_the_tunnels_as_they_were(dmz_pair, side: str) -> None:  # type: ignore[no-untyped-def]
    """The changed service's new handler is started, then a port cannot be bound and everything is undone: the
    undone handler's stop must not take the running one's pool (DMZ) or management entry (internal) with it."""
    import socket

    pair: Pair = await dmz_pair(prepared=1)
    gateway = pair.dmz if side == "dmz" else pair.internal
    assert gateway is not None
    path = pair.folder / f"{side}.yaml"
    original = path.read_text()
    change = ("socks.timeout: 2 seconds", "socks.timeout: 3 seconds") if side == "dmz" else ("500ms", "400ms")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        changed = original.replace(*change).replace(
            "security:", BUSY_SERVICE.format(port=busy.getsockname()[1]) + "security:", 1
        )
        path.write_text(changed)
        ok, _ = await gateway.reload()
    assert not ok
    path.write_text(original)
    async with aiohttp.ClientSession() as http, http.get(pair.admin(gateway) + "/api/tunnels") as response:
        assert [view["uri"] for view in await response.json()] == [SERVICE_URI]
    for _ in range(2):
        await pair.ready(1)
        assert await talk(pair.url(), JOE_LOGIN) == (101, b"hello")


async def test_a_reload_of_the_internal_end_keeps_its_replay_cache(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    """The test plays the DMZ: an assertion the internal gateway accepted before a reload is a replay after it
    (the new handler started with an empty cache: any assertion seen in the last 32 s verified once more)."""
    import time

    from cryptography.hazmat.primitives import serialization

    pair: Pair = await dmz_pair(prepared=1)
    real_key = serialization.load_pem_private_key((pair.folder / "dmz-private.pem").read_bytes(), None)
    assert isinstance(real_key, Ed25519PrivateKey) and pair.internal is not None
    assertion = sign(
        real_key,
        issuer="wsgate-dmz",
        audience="wsgate-internal",
        identity=JOE,
        service=SERVICE_URI,
        remote="192.0.2.7",
        now=time.time(),
    )

    async def ask() -> str:
        tunnel = await pair.pool().take()
        assert tunnel is not None
        try:
            await tunnel.channel.send(json.dumps({"type": "open", "assertion": assertion, "protocols": []}))
            return str(json.loads(await asyncio.wait_for(tunnel.channel.receive(), 5.0))["type"])  # type: ignore[arg-type]
        finally:
            await tunnel.channel.close()
            pair.pool().release(tunnel)

    assert await ask() == "ready"
    await pair.ready(1)
    old = {t.id for t in pair.pool().idle}
    path = pair.folder / "internal.yaml"
    path.write_text(path.read_text().replace("500ms", "400ms"))
    ok, message = await pair.internal.reload()
    assert ok, message
    for _ in range(250):  # the new handler's tunnel, not one the old handler dialled
        if pair.pool().idle and not {t.id for t in pair.pool().idle} & old:
            break
        await asyncio.sleep(0.02)
    assert await ask() == "refused"


async def test_frames_sent_behind_the_upgrade_reach_the_back_end_after_the_identity_line(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    """A client that pipelines a frame behind its upgrade request (before the 101, before the internal gateway's
    ready) cannot get bytes to the back end ahead of the line that says who it is."""
    import os

    pair: Pair = await dmz_pair(prepared=1)
    assert pair.dmz is not None
    payload = b"WSGATE-IDENTITY {}\r\n"
    mask = os.urandom(4)
    frame = bytes([0x82, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.dmz.port_of("dmz-app"))
    try:
        writer.write(
            b"GET /app HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Authorization: " + JOE_LOGIN["Authorization"].encode() + b"\r\n\r\n" + frame
        )
        assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        echo = await asyncio.wait_for(reader.readexactly(2 + len(payload)), 5.0)
        assert echo[2:] == payload  # relayed, after
        (line,) = pair.backend.identities
        assert json.loads(line.removeprefix("WSGATE-IDENTITY "))["sub"] == "joe"
    finally:
        writer.transport.abort()


async def test_clients_racing_for_the_last_tunnel_leave_the_counts_right(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    pair: Pair = await dmz_pair(prepared=1)
    results = await asyncio.gather(*(talk(pair.url(), JOE_LOGIN) for _ in range(4)))
    statuses = [status for status, _ in results]
    assert set(statuses) <= {101, 503} and 101 in statuses  # a 503 or a tunnel of its own, never a shared one
    assert all(answer == b"hello" for status, answer in results if status == 101)
    await pair.ready(1)
    await asyncio.sleep(0.2)
    assert (pair.pool().in_use, pair.internal_handler().in_use) == (0, 0)


async def test_a_certificate_no_pool_names_learns_nothing_of_the_services(dmz_pair, ca) -> None:  # type: ignore[no-untyped-def]
    """A client certificate from the shared CA got 403 for a tunnelled service's URI and 404 for any other: it
    could enumerate the internal services' URIs. It gets 403 whatever it names; the internal gateway's own
    certificate still learns of a typo (404)."""
    pair: Pair = await dmz_pair(prepared=1)
    intruder = intruder_context(ca, "mallory")

    async def status(context: ssl.SSLContext, service: str) -> int:
        headers = {"Wsgate-Tunnel": service, "Wsgate-Tunnel-Id": "probe"}
        async with aiohttp.ClientSession() as http:
            try:
                ws = await http.ws_connect(pair.tunnel_url(), ssl=context, headers=headers)
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
            await ws.close()
            return 101

    assert await status(intruder, SERVICE_URI) == 403
    assert await status(intruder, "wss://app.internal.test:443/other") == 403
    assert await status(intruder_context(ca, "internal-gateway"), "wss://app.internal.test:443/other") == 404


@pytest.mark.parametrize(
    ("side", "option"), [("accept-options", "socks.retry.maximum.interval"), ("connect-options", "socks.timeout")]
)
def test_a_zero_tunnel_interval_is_a_located_error(tmp_path, side: str, option: str) -> None:  # type: ignore[no-untyped-def]
    """0 loaded: the internal gateway then re-dialled a DMZ that was down in a busy loop (sleep(0) between
    failures), or the DMZ answered every client 503 without waiting for the internal gateway's answer."""
    from wsgate.catalog import load_config
    from wsgate.errors import ConfigErrors

    for name in ("keystore.pem", "truststore.pem", "key.pem"):
        (tmp_path / name).write_text("")
    key = "tunnel.assertion.public-key" if side == "accept-options" else "tunnel.assertion.key"
    extra = "      tunnel.peer: internal-gateway\n" if side == "connect-options" else ""
    (tmp_path / "gateway.yaml").write_text(
        f"""
service:
  - name: app
    accept: {"wss://app.internal.test/app" if side == "accept-options" else "ws://127.0.0.1:0/app"}
    connect: {"tcp://127.0.0.1:9" if side == "accept-options" else "wss://app.internal.test/app"}
    type: proxy
    {side}:
      http.transport: socks://dmz:1080
      socks.mode: reverse
      {key}: key.pem
      {option}: 0
{extra}security:
  keystore: {{type: PEM, file: keystore.pem}}
  truststore: {{type: PEM, file: truststore.pem}}
"""
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config(tmp_path / "gateway.yaml")
    assert f"service[app]/{side}/{option}: " in str(caught.value), str(caught.value)
