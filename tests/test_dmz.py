"""The layered DMZ (docs/dmz.md): assertions in memory, the config mapping, and two real gateways on loopback."""
# ruff: noqa: F811  (dmz_pair is a fixture imported from tests/dmz_fixtures.py)

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wsgate.catalog import load_config
from wsgate.core.identity import Identity
from wsgate.errors import ConfigErrors
from wsgate.security.assertion import (
    MAX_LIFETIME,
    AssertionRefused,
    AssertionVerifier,
    ReplayCache,
    sign,
)
from wsgate.services.dmz import next_backoff

from .dmz_fixtures import ANN, JOE, SERVICE_URI, WRONG, Pair, dmz_pair  # noqa: F401

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"
JOE_ID = Identity(realm="demo", user="joe", roles=frozenset({"AUTHORIZED"}), expires_at=None)
NOW = 1_800_000_000.0


# -- assertions, in memory ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def verifier(key: Ed25519PrivateKey) -> AssertionVerifier:
    return AssertionVerifier(key.public_key(), audience="wsgate-internal", issuer="wsgate-dmz")


def token(key: Ed25519PrivateKey, now: float = NOW, **overrides: object) -> str:
    fields: dict[str, object] = {
        "issuer": "wsgate-dmz",
        "audience": "wsgate-internal",
        "identity": JOE_ID,
        "service": SERVICE_URI,
        "remote": "192.0.2.7",
        "now": now,
    }
    fields.update(overrides)
    return sign(key, **fields)  # type: ignore[arg-type]


def resigned(key: Ed25519PrivateKey, header: dict[str, object], claims: dict[str, object]) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(key.sign(f'{head}.{body}'.encode()))}"


def claims_of(text: str) -> dict[str, object]:
    part = text.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


def test_a_valid_assertion_verifies_once(key: Ed25519PrivateKey) -> None:
    check = verifier(key)
    text = token(key)
    claims = check.verify(text, SERVICE_URI, now=NOW + 1)
    assert (claims.subject, claims.roles, claims.remote) == ("joe", frozenset({"AUTHORIZED"}), "192.0.2.7")
    assert claims.identity().realm == "dmz:demo"
    with pytest.raises(AssertionRefused, match="replayed"):
        check.verify(text, SERVICE_URI, now=NOW + 2)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("other key", "bad signature"),
        ("tampered", "bad signature"),
        ("alg none", "algorithm"),
        ("alg HS256", "algorithm"),
        ("expired", "expired"),
        ("not yet valid", "future"),
        ("wrong aud", "audience"),
        ("wrong iss", "issuer"),
        ("wrong svc", "service"),
        ("too long", "lifetime"),
        ("missing claims", "missing claims"),
        ("garbage", "compact JWS"),
    ],
)
def test_bad_assertions_are_refused(key: Ed25519PrivateKey, case: str, reason: str) -> None:
    check = verifier(key)
    header = {"alg": "EdDSA", "typ": "wsgate-dmz+jwt"}
    good = claims_of(token(key))
    text = {
        "other key": lambda: token(Ed25519PrivateKey.generate()),
        "tampered": lambda: (
            token(key).split(".")[0]
            + "."
            + _b64(json.dumps({**good, "roles": ["ADMIN"]}).encode())
            + "."
            + token(key).split(".")[2]
        ),
        "alg none": lambda: _b64(b'{"alg":"none"}') + "." + _b64(json.dumps(good).encode()) + ".",
        "alg HS256": lambda: resigned(key, {"alg": "HS256", "typ": "wsgate-dmz+jwt"}, good),
        "expired": lambda: token(key, now=NOW - 60),
        "not yet valid": lambda: token(key, now=NOW + 60),
        "wrong aud": lambda: token(key, audience="someone-else"),
        "wrong iss": lambda: token(key, issuer="mallory"),
        "wrong svc": lambda: token(key, service="wss://app.internal.test:443/admin"),
        "too long": lambda: resigned(key, header, {**good, "exp": int(NOW + MAX_LIFETIME + 60)}),
        "missing claims": lambda: resigned(key, header, {k: v for k, v in good.items() if k != "jti"}),
        "garbage": lambda: "not-a-token",
    }[case]()
    with pytest.raises(AssertionRefused, match=reason):
        check.verify(text, SERVICE_URI, now=NOW + 1)


def test_during_a_rotation_both_pinned_keys_verify(key: Ed25519PrivateKey) -> None:
    new = Ed25519PrivateKey.generate()
    check = AssertionVerifier((key.public_key(), new.public_key()), audience="wsgate-internal")
    assert check.verify(token(key), SERVICE_URI, now=NOW).subject == "joe"
    assert check.verify(token(new), SERVICE_URI, now=NOW).subject == "joe"
    with pytest.raises(AssertionRefused, match="bad signature"):
        check.verify(token(Ed25519PrivateKey.generate()), SERVICE_URI, now=NOW)


def test_replay_cache_forgets_only_what_can_no_longer_verify() -> None:
    cache = ReplayCache(capacity=2)
    assert cache.admit("a", 10.0, now=0.0) and cache.admit("b", 20.0, now=0.0)
    assert not cache.admit("c", 30.0, now=5.0)  # full of live entries: refused, nothing forgotten
    assert not cache.admit("a", 10.0, now=5.0)
    assert cache.admit("c", 30.0, now=11.0)  # "a" expired and was dropped
    assert len(cache) == 2


def test_backoff_doubles_up_to_the_maximum_interval() -> None:
    delays, delay = [], 0.0
    for _ in range(7):
        delay = next_backoff(delay, 1.0)
        delays.append(delay)
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


# -- configuration -----------------------------------------------------------------------------------


def test_the_documented_configs_load(tmp_path: Path) -> None:
    dmz = load_config(EXAMPLES / "dmz" / "dmz-gateway.yaml")
    tunnel = dmz.service("app1").connect_options.tunnel
    assert tunnel is not None and tunnel.rendezvous.raw == "wss://dmz.example.net:1080/shield"
    assert tunnel.timeout == 2.0
    endpoint = next(s for s in dmz.services if s.type == "dmz.tunnel")
    assert endpoint.accept_options.tls.verify_client == "required"
    internal = load_config(EXAMPLES / "dmz" / "internal-gateway.yaml")
    inner = internal.service("app1")
    assert inner.accept_options.tunnel is not None and inner.accept_options.tunnel.retry_max == 1.0
    assert inner.setting("prepared.connection.count") == 8
    kaazing = load_config(EXAMPLES / "dmz" / "internal-gateway-config.xml")
    assert kaazing.service("Internal App1").accept_options.tunnel is not None
    kaazing_dmz = load_config(EXAMPLES / "dmz" / "dmz-gateway-config.xml")
    assert kaazing_dmz.service("DMZ App1").connect_options.tunnel is not None
    assert any("prepared.connection.count" in w for w in kaazing_dmz.warnings)
    assert any("ws.inactivity.timeout: no effect on the DMZ end" in w for w in kaazing_dmz.warnings)


BASE = """
service:
  - name: app
    accept: {accept}
    connect: {connect}
    type: proxy
    {side}:
{options}
    properties:
{properties}
security:
  keystore: {{type: PEM, file: keystore.pem}}
  truststore: {{type: PEM, file: truststore.pem}}
"""


@pytest.mark.parametrize(
    ("side", "options", "properties", "message"),
    [
        ("accept-options", {"socks.mode": "forward"}, {}, "socks.mode: wsgate's tunnels are reverse only"),
        ("accept-options", {"socks.transport": "wsn://dmz:1080/shield"}, {}, "always TLS with client certificates"),
        ("accept-options", {"http.transport": "tcp://dmz:1080"}, {}, "only socks://"),
        ("accept-options", {"tunnel.assertion.public-key": None}, {}, "tunnel.assertion.public-key: required"),
        ("accept-options", {"tunnel.assertion.key": "public.pem"}, {}, "belongs in connect-options"),
        ("accept-options", {"socks.ssl.verify-client": "required"}, {}, "not supported in wsgate's tunnels"),
        ("connect-options", {"ssl.verify-client": "optional"}, {}, "always requires the internal gateway's"),
        ("accept-options", {}, {"connect.strategy": "prepared"}, "'prepared' is the DMZ end's strategy"),
        (None, {}, {"prepared.connection.count": "2"}, "prepared connections are the tunnels"),
        (None, {"socks.mode": "reverse"}, {}, "needs http.transport socks://"),
        (None, {}, {"identity.injection": "line"}, "identity.injection: injects the identity"),
        ("accept-options", {"tunnel.peer": "dmz"}, {}, "tunnel.peer: belongs in the DMZ end's"),
    ],
)
def test_tunnel_config_errors_are_located(
    tmp_path: Path, side: str | None, options: dict[str, str | None], properties: dict[str, str], message: str
) -> None:
    for name in ("keystore.pem", "truststore.pem", "public.pem", "private.pem"):
        (tmp_path / name).write_text("")
    base: dict[str, str] = {"http.transport": "socks://dmz:1080", "socks.mode": "reverse"}
    if side == "accept-options":
        base["tunnel.assertion.public-key"] = "public.pem"
    elif side == "connect-options":
        base["tunnel.assertion.key"] = "private.pem"
    else:
        base = {}
        side = "accept-options"
    merged = {k: v for k, v in {**base, **options}.items() if v is not None}
    text = BASE.format(
        accept="wss://app.example.com/app",
        connect="tcp://127.0.0.1:9" if side == "accept-options" else "wss://app.example.com/app",
        side=side,
        options="\n".join(f"      {k}: {v}" for k, v in merged.items()) or "      {}",
        properties="\n".join(f"      {k}: {v}" for k, v in properties.items()) or "      {}",
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    assert message in str(caught.value), str(caught.value)


# -- two gateways on loopback ------------------------------------------------------------------------


async def _talk(url: str, headers: dict[str, str], text: str = "hello") -> tuple[int, str | None]:
    """Connect, send ``text``, read the echo: (HTTP status or 101, the echo)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
                await ws.send_str(text)
                msg = await asyncio.wait_for(ws.receive(), 5.0)
                data = msg.data if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY) else None
                return 101, data.decode() if isinstance(data, bytes) else data  # a tcp back end answers binary
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, exc.headers.get("Retry-After") if exc.headers else None


async def test_a_valid_user_reaches_the_back_end_with_its_identity(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    pair: Pair = await dmz_pair(prepared=2)
    async with aiohttp.ClientSession() as http, http.ws_connect(pair.url(), headers=JOE) as ws:
        await ws.send_str("hello")
        assert (await asyncio.wait_for(ws.receive(), 5.0)).data == b"hello"
        await ws.send_bytes(b"\x00\x01")
        assert (await asyncio.wait_for(ws.receive(), 5.0)).data == b"\x00\x01"
        line = pair.backend.identities[-1]
        assert line.startswith("WSGATE-IDENTITY ")
        identity = json.loads(line.split(" ", 1)[1])
        assert identity["sub"] == "joe" and identity["roles"] == ["AUTHORIZED"]
        assert identity["remote"].startswith("127.0.0.1")
        # both gateways show the session on the same tunnel
        (outer,) = [s for s in pair.dmz.runtime.connections if s.service == "dmz-app"]  # type: ignore[union-attr]
        (inner,) = list(pair.internal.runtime.connections)  # type: ignore[union-attr]
        assert outer.tunnel == inner.tunnel and outer.transport == inner.transport == "tunnel"
        assert inner.identity.user == "joe"
        await pair.ready(2)  # the pool grew back while this tunnel carries the client
        assert pair.pool().in_use == 1
        metrics = pair.dmz.runtime.metrics.exposition().decode()  # type: ignore[union-attr]
        assert 'wsgate_tunnel_in_use{service="dmz-app"} 1.0' in metrics
        # the management API of both: pools, and which tunnel carries which session
        async with http.get(pair.admin(pair.dmz) + "/api/tunnels") as response:
            (dmz_view,) = await response.json()
        assert (dmz_view["side"], dmz_view["ready"], dmz_view["in_use"]) == ("dmz", 2, 1)
        async with http.get(pair.admin(pair.internal) + "/api/tunnels") as response:
            (internal_view,) = await response.json()
        assert (internal_view["side"], internal_view["in_use"], internal_view["uri"]) == ("internal", 1, SERVICE_URI)
        for gateway, service in ((pair.dmz, "dmz-app"), (pair.internal, "internal-app")):
            async with http.get(pair.admin(gateway) + "/api/sessions") as response:
                (session,) = [s for s in await response.json() if s["service"] == service]
            assert (session["transport"], session["tunnel"]) == ("tunnel", inner.tunnel)


async def test_wrong_password_is_refused_at_the_edge_without_a_tunnel(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    pair: Pair = await dmz_pair(prepared=2)
    before = (pair.pool().accepted, len(pair.pool().idle))
    status, _ = await _talk(pair.url(), WRONG)
    assert status in (401, 403)
    status, _ = await _talk(pair.url(), {})
    assert status == 401
    assert (pair.pool().accepted, len(pair.pool().idle), pair.pool().in_use) == (*before, 0)
    assert pair.backend.connections == 0


async def test_only_the_named_internal_gateway_may_carry_tunnels(dmz_pair, ca) -> None:  # type: ignore[no-untyped-def]
    """A certificate the DMZ's truststore accepts but tunnel.peer does not name cannot offer tunnels."""
    pair: Pair = await dmz_pair(prepared=1)
    intruder = ca.issue_cert("intruder.test", common_name="intruder")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    intruder.configure_cert(context)
    headers = {"Wsgate-Tunnel": SERVICE_URI, "Wsgate-Tunnel-Id": "intruder"}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(pair.tunnel_url(), ssl=context, headers=headers)
        assert refused.value.status == 403
        no_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(no_cert)
        with pytest.raises((aiohttp.ClientError, OSError)):  # no certificate: the TLS handshake fails
            await http.ws_connect(pair.tunnel_url(), ssl=no_cert, headers=headers)
    assert pair.pool().accepted == 1 and [t.id for t in pair.pool().idle] != ["intruder"]


async def test_the_internal_constraint_refuses_a_role_the_dmz_accepted(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    pair: Pair = await dmz_pair(prepared=1, internal_role="AUTHORIZED")
    status, _ = await _talk(pair.url(), ANN)  # ann passes the DMZ's "*" but lacks AUTHORIZED inside
    assert status == 403
    assert pair.backend.connections == 0
    await pair.ready(1)
    status, echo = await _talk(pair.url(), JOE)
    assert (status, echo) == (101, "hello")


async def test_forged_expired_replayed_assertions_never_become_connections(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    """The test plays the DMZ: it takes the internal gateway's tunnels and sends bad assertions."""
    pair: Pair = await dmz_pair(prepared=4)
    real_key = serialization.load_pem_private_key((pair.folder / "dmz-private.pem").read_bytes(), None)
    assert isinstance(real_key, Ed25519PrivateKey)
    good = token(real_key, now=time.time())
    cases = [
        token(Ed25519PrivateKey.generate(), now=time.time()),  # forged: another key
        token(real_key, now=time.time() - 120),  # expired
        token(real_key, now=time.time(), audience="other-gateway"),  # wrong audience
        good,
        good,  # replayed
    ]
    answers = []
    for text in cases:
        await pair.ready(1)
        tunnel = await pair.pool().take()
        assert tunnel is not None
        await tunnel.channel.send(json.dumps({"type": "open", "assertion": text, "protocols": []}))
        answers.append(json.loads(await asyncio.wait_for(tunnel.channel.receive(), 5.0))["type"])
        await tunnel.channel.close()
        pair.pool().release(tunnel)
    assert answers == ["refused", "refused", "refused", "ready", "refused"]
    await asyncio.sleep(0.1)
    assert pair.backend.connections == 1  # only the good one
    refused = pair.internal.runtime.metrics.exposition().decode()  # type: ignore[union-attr]
    assert 'wsgate_tunnel_assertions_total{outcome="refused",service="internal-app"} 4.0' in refused


async def test_an_exhausted_pool_answers_503_and_grows_back(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    pair: Pair = await dmz_pair(prepared=1)
    held = await pair.pool().take()  # the only ready tunnel
    assert held is not None
    status, retry_after = await _talk(pair.url(), JOE)
    assert (status, retry_after) == (503, "1")
    assert pair.pool().exhausted == 1
    await held.channel.close()
    pair.pool().release(held)
    await pair.ready(1)
    assert await _talk(pair.url(), JOE) == (101, "hello")


async def test_an_internal_gateway_that_does_not_answer_costs_one_tunnel_and_a_503(dmz_pair, ca) -> None:  # type: ignore[no-untyped-def]
    """The test plays the internal gateway: its tunnel takes the open request and never answers."""
    pair: Pair = await dmz_pair(prepared=1)
    await asyncio.wait_for(pair.internal.stop(grace=1.0), 10.0)  # type: ignore[union-attr]
    pair.internal = None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    ca.issue_cert("mute.test", common_name="internal-gateway").configure_cert(context)
    headers = {"Wsgate-Tunnel": SERVICE_URI, "Wsgate-Tunnel-Id": "mute"}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(pair.tunnel_url(), ssl=context, headers=headers) as mute,
    ):
        await pair.ready(1)
        started = time.monotonic()
        status, retry_after = await _talk(pair.url(), JOE)
        assert (status, retry_after) == (503, "1")
        assert 1.5 < time.monotonic() - started < 4.0  # socks.timeout: 2 seconds
        assert json.loads((await mute.receive()).data)["type"] == "open"  # it was asked
        assert (await asyncio.wait_for(mute.receive(), 5.0)).type is aiohttp.WSMsgType.CLOSE  # and then dropped
    assert (pair.pool().in_use, len(pair.pool().idle)) == (0, 0)


async def test_a_restarted_dmz_gets_its_tunnels_back_within_seconds(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    pair: Pair = await dmz_pair(prepared=3)
    await asyncio.wait_for(pair.dmz.stop(grace=1.0), 10.0)  # type: ignore[union-attr]
    await asyncio.sleep(0.3)  # the internal gateway keeps dialling a closed port
    await pair.start_dmz()
    took = await pair.ready(3, timeout=3.0)
    assert took < 2.0
    assert pair.internal_handler().redials >= 1
    assert await _talk(pair.url(), JOE) == (101, "hello")


async def test_a_restarted_internal_gateway_closes_clients_cleanly(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    pair: Pair = await dmz_pair(prepared=2)
    async with aiohttp.ClientSession() as http, http.ws_connect(pair.url(), headers=JOE) as ws:
        await ws.send_str("one")
        assert (await asyncio.wait_for(ws.receive(), 5.0)).data == b"one"
        await asyncio.wait_for(pair.internal.stop(grace=1.0), 10.0)  # type: ignore[union-attr]
        msg = await asyncio.wait_for(ws.receive(), 5.0)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    await asyncio.sleep(0.2)
    assert len(pair.pool().idle) == 0  # the DMZ dropped the dead tunnels
    status, _ = await _talk(pair.url(), JOE)
    assert status == 503
    await pair.start_internal()
    await pair.ready(2)
    assert await _talk(pair.url(), JOE) == (101, "hello")


async def test_a_slow_client_stalls_only_its_own_tunnel(dmz_pair) -> None:  # type: ignore[no-untyped-def]
    pair: Pair = await dmz_pair(prepared=3)
    chunk = b"x" * 65536
    async with aiohttp.ClientSession() as http, http.ws_connect(pair.url(), headers=JOE) as slow:
        # the slow client sends and never reads: the echoes pile up until every hop's buffers are full
        sent = 0
        for _ in range(3000):
            try:
                await asyncio.wait_for(slow.send_bytes(chunk), 0.5)
            except TimeoutError:
                break
            sent += 1
        assert sent < 3000, "backpressure never reached the slow client's sends"
        for _ in range(3):  # meanwhile others get through promptly
            started = time.monotonic()
            assert await _talk(pair.url(), JOE, "quick") == (101, "quick")
            assert time.monotonic() - started < 2.0
            await pair.ready(1)


def test_dmz_keys_writes_a_pair_that_signs_and_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsgate.cli import main
    from wsgate.security.assertion import load_private_key, load_public_key

    assert main(["dmz-keys", str(tmp_path)]) == 0
    private, public = tmp_path / "dmz-assertion.key", tmp_path / "dmz-assertion.pub"
    assert private.stat().st_mode & 0o077 == 0  # the private key is the owner's only
    check = AssertionVerifier(load_public_key(public), audience="wsgate-internal")
    assert check.verify(token(load_private_key(private)), SERVICE_URI, now=NOW).subject == "joe"
    assert main(["dmz-keys", str(tmp_path)]) == 2  # never overwrites
    assert "not overwritten" in capsys.readouterr().err


def test_check_config_explains_both_ends(capsys: pytest.CaptureFixture[str]) -> None:
    from wsgate.cli import main

    assert main(["check-config", str(EXAMPLES / "dmz" / "dmz-gateway.yaml"), "--no-resolve"]) == 0
    out = capsys.readouterr().out
    assert "back end: tunnels from the internal gateway at wss://dmz.example.net:1080/shield" in out
    assert "(dmz.tunnel): wss://dmz.example.net:1080/shield" in out
    assert "WARNING" not in out  # the tunnel listener is not "reachable without authentication": certificates
    assert main(["check-config", str(EXAMPLES / "dmz" / "internal-gateway-config.xml"), "--no-resolve"]) == 0
    out = capsys.readouterr().out
    assert "accepts: no listener; tunnels dialled out to wss://dmz.example.net:1080/shield" in out
    assert "required roles: none" in out  # this Kaazing service has no constraint: any signed assertion
