"""Attack review of OpenID Connect sign-in: each test here failed before the fix it guards (see git log).

Real provider (tests/oidc_provider.py) and gateway over HTTPS on loopback, as in tests/test_oidc_flow.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import pytest

from tests.oidc_provider import OidcProvider
from wsgate.config.model import State
from wsgate.core.identity import Identity
from wsgate.state.redis import RedisSessions, RedisState
from wsgate.state.revocations import token_key
from wsgate.state.sessions import MemorySessions

from .conftest import client_ssl
from .oidc_gateway import Site, authorize, begin, callback, session, sign_in, start_site

pytestmark = pytest.mark.usefixtures("pem_stores")


@pytest.fixture
async def site(start_gateway, tmp_path, oidc_provider: OidcProvider, ca, request) -> Site:
    oidc_provider.access_token_ttl = oidc_provider.id_token_ttl = 300
    client = "gw-r-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[-40:]
    return await start_site(start_gateway, tmp_path, oidc_provider, client_ssl(ca), client, secret="s3cret-" + client)


def user(provider: OidcProvider, name: str) -> str:
    provider.add_user(name, "pw-" + name, groups=("staff",), preferred_username=name)
    return name


async def until_token_request(provider: OidcProvider, seen: int) -> None:
    for _ in range(200):
        if ("POST", "/token") in provider.requests[seen:]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the refresh never reached the token endpoint")


@pytest.mark.parametrize("logout", ["oidc", "session", "elsewhere"])
async def test_a_logout_during_a_refresh_is_not_undone_by_it(
    site: Site, oidc_provider: OidcProvider, logout: str
) -> None:
    """The refresh awaits the provider; a logout meanwhile ends the session. The refresh's answer must not
    bring the session back (before the fix, ``renew`` re-created it: the logged-out cookie worked again)."""
    name = user(oidc_provider, "rita-" + logout)
    flow = site.gateway.realms["sso"].oidc
    async with session(site) as http:
        status, page, _ = await sign_in(http, site, name, "pw-" + name)
        assert status == 200, page
        cookie = next(c.value for c in http.cookie_jar if c.key == "wsgate_sso")
        (key,) = flow.held
        seen = len(oidc_provider.requests)
        oidc_provider.token_delay = 1.0
        try:
            refresh = asyncio.create_task(flow.refresh(key))
            await until_token_request(oidc_provider, seen)
            if logout == "elsewhere":  # another node's back-channel logout: its revocation, in the shared list
                digest = flow.held[key].identity.token_digest
                await flow.realm.revocations.revoke(token_key(None, digest), time.time() + 60)
            else:
                if logout == "oidc":
                    url, method = f"{site.base}/one/.wsgate/oidc/logout", "POST"
                else:
                    url, method = f"{site.base}/one/.wsgate/session", "DELETE"
                headers = {"Origin": site.base}
                async with http.request(method, url, headers=headers, allow_redirects=False) as answer:
                    assert answer.status in (200, 303)
            await asyncio.wait_for(refresh, 10)
        finally:
            oidc_provider.token_delay = 0.0
    assert key not in flow.held
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=site.ssl)) as thief:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await thief.ws_connect(site.ws("one"), headers={"Cookie": f"wsgate_sso={cookie}", "Origin": site.base})
        assert refused.value.status == 401


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemorySessions()
        return
    redis_server = request.getfixturevalue("redis_server")
    shared = RedisState(State(type="redis", url=redis_server.url, node="review"))
    await shared.start()
    try:
        yield RedisSessions(shared, "sso")
    finally:
        await asyncio.wait_for(shared.close(), 5)


async def test_extending_a_dropped_session_does_not_bring_it_back(store) -> None:
    identity = Identity("sso", "joe", frozenset(), None, None, time.time())
    token, session = await store.issue(identity, time.time() + 60)
    key = session.identity.session
    extended = await store.extend(key, identity, time.time() + 120)
    assert extended is not None and extended.expires_at > session.expires_at
    assert (await store.lookup(token)).expires_at == extended.expires_at
    await store.drop(key)
    assert await store.extend(key, identity, time.time() + 120) is None
    assert await store.lookup(token) is None


async def test_a_sign_in_flood_from_one_address_does_not_evict_other_browsers_sign_ins(
    site: Site, oidc_provider: OidcProvider
) -> None:
    """Before the fix the store dropped the oldest transaction of anyone: one client calling ``/login`` as fast
    as it could pushed out every sign-in in progress (the store is made small here to keep the flood short)."""
    name = user(oidc_provider, "una")
    site.gateway.realms["sso"].oidc.transactions.limit = 50
    async with session(site) as http:
        back = await authorize(http, await begin(http, site), name, "pw-" + name)  # from 127.0.0.1
        flooder = aiohttp.TCPConnector(ssl=site.ssl, local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=flooder) as attacker:
            for _ in range(60):
                async with attacker.get(f"{site.base}/one/.wsgate/oidc/login", allow_redirects=False) as answer:
                    assert answer.status == 302
        status, page, _ = await callback(http, back)
        assert status == 200, page


def test_transactions_are_bounded_per_client_address_under_pressure() -> None:
    from wsgate.security.oidc import Transactions, client_key

    store = Transactions(limit=20, per_client=3)
    proxy = [store.begin("p" * 43, "/", "https://gw/cb", client_key("192.0.2.1"))[0] for _ in range(9)]
    assert len(store) == 9  # under ordinary load, many browsers behind one address are not limited
    victim, _ = store.begin("v" * 43, "/", "https://gw/cb", client_key("192.0.2.7"))
    for _ in range(50):  # an IPv6 host flooding from its /64
        store.begin("b" * 43, "/", "https://gw/cb", client_key(f"2001:db8::{_ + 1:x}"))
    assert store.take(victim, "v" * 43) is not None and store.take(proxy[-1], "p" * 43) is not None
    assert len(store) <= 20
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"


@pytest.fixture
async def hostile_provider(unused_tcp_port):
    """A real HTTP server on loopback answering what a hostile or broken provider might."""
    from aiohttp import web

    huge = b'{"keys": [], "pad": "' + b"x" * (16 * 1024 * 1024) + b'"}'

    async def streamed(request: web.Request) -> web.StreamResponse:  # no Content-Length: chunked
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        for at in range(0, len(huge), 1 << 16):
            await response.write(huge[at : at + (1 << 16)])
        await response.write_eof()
        return response

    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=huge, content_type="application/json")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/small")

    async def small(request: web.Request) -> web.Response:
        return web.json_response({"keys": [], "token_type": "Bearer"})

    async def nested(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 200_000, content_type="application/json")

    app = web.Application()
    for path, handler in (
        ("/streamed", streamed),
        ("/declared", declared),
        ("/redirect", redirect),
        ("/small", small),
        ("/nested", nested),
    ):
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        yield f"http://127.0.0.1:{unused_tcp_port}"
    finally:
        await asyncio.wait_for(runner.cleanup(), 5)


@pytest.mark.parametrize("path", ["/streamed", "/declared", "/redirect", "/nested"])
async def test_provider_answers_are_bounded_and_never_redirected(hostile_provider: str, path: str) -> None:
    """Before the fix a 16 MiB discovery/JWKS/token answer was read and parsed whole (memory), a GET followed
    redirects (an https endpoint sent to http or another host), and a deeply nested body raised RecursionError."""
    from wsgate.core.fetch import FetchError
    from wsgate.transport.http_client import fetch_json, post_form

    assert await fetch_json(hostile_provider + "/small", 5) == {"keys": [], "token_type": "Bearer"}
    with pytest.raises(FetchError):
        await fetch_json(hostile_provider + path, 5)
    try:
        status, document = await post_form(hostile_provider + path, {"grant_type": "x"}, {}, 5)
    except FetchError:
        return
    assert document is None  # not the document: a refused grant, never a parsed 16 MiB answer


async def test_a_refresh_message_from_the_shared_channel_cannot_change_a_connections_identity(
    site: Site, oidc_provider: OidcProvider
) -> None:
    """Before the fix a message on the refresh channel was taken at its word: any deadline, roles and provider
    session digest (a connection given another digest was missed by that session's back-channel logout).
    Now the message names a session; what connections get is that session as the store holds it."""
    name = user(oidc_provider, "vic")
    flow = site.gateway.realms["sso"].oidc
    async with session(site) as http:
        await sign_in(http, site, name, "pw-" + name)
        ws = await http.ws_connect(site.ws("one"), origin=site.base)
        live = next(iter(site.gateway.runtime.connections))
        before, deadline = live.identity, live.deadline
        forged = {
            "realm": "sso",
            "session": before.session,
            "user": name,
            "roles": ["staff", "admin"],
            "expires_at": time.time() + 10**6,
            "authenticated_at": time.time(),
            "token_digest": "0" * 64,
        }
        result = flow.extended_elsewhere(forged)
        if asyncio.iscoroutine(result):
            await result
        assert live.identity.token_digest == before.token_digest
        assert live.identity.roles == before.roles and live.deadline == deadline
        await ws.close()


async def test_a_stale_jwks_whose_host_is_down_is_refetched_once_per_interval_not_per_token() -> None:
    """Before the fix, once the JWKS cache was stale every token verified tried the JWKS host again (each try
    up to 5 s, one at a time under the lock): a provider outage became a fetch storm and a login queue."""
    import json

    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from wsgate.core.fetch import FetchError
    from wsgate.security.login.base import Unavailable
    from wsgate.security.login.jwt import JwtLoginModule

    key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": [{**json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": "k1"}]}
    fetches: list[float] = []

    async def fetch(url: str, timeout: float) -> object:
        fetches.append(time.monotonic())
        if len(fetches) > 1:
            raise FetchError("ClientConnectorError")
        return jwks

    options = {"jwks-url": "https://idp.test/jwks", "issuer": "https://idp.test", "audience": "gw"}
    module = JwtLoginModule({**options, "jwks-cache": "0.05s", "jwks-refetch-interval": "0.3s"}, "m", Path(), fetch)
    claims = {"sub": "ann", "iss": "https://idp.test", "aud": "gw", "exp": int(time.time()) + 60}
    token = pyjwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})
    assert isinstance(await module.verified_claims(token), dict)
    await asyncio.sleep(0.35)  # stale now, and the host is down
    for _ in range(20):
        assert isinstance(await module.verified_claims(token), dict)  # the keys it has still serve
    assert len(fetches) == 2  # one try, then none until the interval has passed
    down = JwtLoginModule({**options, "jwks-refetch-interval": "10s"}, "m", Path(), fetch)  # down from the start
    outcomes = [await down.verified_claims(token) for _ in range(5)]
    assert all(isinstance(o, Unavailable) for o in outcomes) and len(fetches) == 3  # a 503 each, one try


async def test_a_logout_token_is_no_bearer_credential(site: Site, oidc_provider: OidcProvider) -> None:
    """Before the fix the bearer path took any JWT of the provider for this client with a user claim, a logout
    token included (signed, right iss and aud, an exp): whoever saw one on its way could open connections."""
    name = user(oidc_provider, "xena")
    token = oidc_provider.logout_token(name, site.client, preferred_username=name, groups=["staff"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=site.ssl)) as plain:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await plain.ws_connect(site.ws("one"), headers={"Authorization": f"Bearer {token}"})
        assert refused.value.status == 403


@pytest.mark.parametrize(
    "expires_in",
    [float("inf"), 10**400, float("nan"), True, -5, "300"],
    ids=["inf", "1e400", "nan", "true", "-5", "str"],
)
def test_a_token_answers_lifetime_must_be_a_finite_positive_number(tmp_path: Path, expires_in: object) -> None:
    """Before the fix ``expires_in: 1e400`` (an int Python cannot make a float) raised OverflowError out of the
    callback (a 500, not the one 403 page) and ``Infinity`` gave a session whose refresh failed on round(inf)."""
    from wsgate.core.fetch import HttpPort
    from wsgate.security.login.oidc import OidcError, OidcLoginModule

    async def never(*args: object) -> object:
        raise AssertionError("no HTTP here")

    module = OidcLoginModule(
        {"issuer": "https://idp.test", "client-id": "gw"}, "m", tmp_path, http=HttpPort(never, never)
    )
    with pytest.raises(OidcError):
        module._tokens({"expires_in": expires_in, "token_type": "Bearer"}, None, "at", {})
    tokens = module._tokens({"expires_in": expires_in}, "id", "at", {"exp": time.time() + 60})
    assert tokens.expires_at <= time.time() + 60  # the ID token's exp still bounds it


async def test_a_malformed_key_in_the_jwks_is_skipped_not_raised() -> None:
    """Before the fix a JWKS entry whose kid or alg was a list raised TypeError out of the JWKS read: a 500 at
    the OIDC callback (not the one 403 page) and no key at all, the good ones included."""
    import json

    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from wsgate.security.login.jwt import JwtLoginModule

    key = ec.generate_private_key(ec.SECP256R1())
    good = {**json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": "k1"}
    bad = [{**good, "kid": ["k1"]}, {**good, "kid": {"a": 1}}, {**good, "kid": "k2", "alg": ["ES256"]}, "x", None]

    async def fetch(url: str, timeout: float) -> object:
        return {"keys": [*bad, good]}

    options = {"jwks-url": "https://idp.test/jwks", "issuer": "https://idp.test", "audience": "gw"}
    module = JwtLoginModule(options, "m", Path(), fetch)
    claims = {"sub": "ann", "iss": "https://idp.test", "aud": "gw", "exp": int(time.time()) + 60}
    assert isinstance(await module.verified_claims(pyjwt.encode(claims, key, "ES256", {"kid": "k1"})), dict)
    assert module._read_jwks({"keys": {"k1": good}}) == {}  # keys that are no list: none
