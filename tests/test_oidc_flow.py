"""OpenID Connect sign-in at the gateway with a real provider over HTTPS (tests/oidc_provider.py), HTTP-level.

aiohttp's client plays the browser (a cookie jar, no redirects followed), so each step and each attack on
the callback can be driven directly: tampered state, replayed code, wrong nonce, wrong aud, foreign issuer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time

import aiohttp
import pytest

from tests.oidc_provider import OidcProvider

from .conftest import client_ssl
from .oidc_gateway import Site, authorize, begin, callback, query, session, sign_in, start_site

pytestmark = pytest.mark.usefixtures("pem_stores")


@pytest.fixture
async def site(start_gateway, tmp_path, oidc_provider: OidcProvider, ca, request) -> Site:
    oidc_provider.access_token_ttl = oidc_provider.id_token_ttl = 300
    client = "gw-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[-40:]
    return await start_site(start_gateway, tmp_path, oidc_provider, client_ssl(ca), client, secret="s3cret-" + client)


def user(provider: OidcProvider, name: str, groups: tuple[str, ...] = ("staff",)) -> str:
    provider.add_user(name, "pw-" + name, groups=groups, preferred_username=name)
    return name


async def echo(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(url, origin=url.replace("wss://", "https://").rsplit("/", 1)[0])
    await ws.send_str("hello")
    message = await asyncio.wait_for(ws.receive(), 5)
    assert message.data == "hello"
    return ws


async def closed(ws: aiohttp.ClientWebSocketResponse, within: float) -> tuple[int | None, float]:
    started = time.monotonic()
    while True:
        message = await asyncio.wait_for(ws.receive(), within)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ws.close_code, time.monotonic() - started


async def test_sign_in_opens_every_service_of_the_realm_and_keeps_tokens_server_side(
    site: Site,
    oidc_provider: OidcProvider,
    caplog,
) -> None:
    caplog.set_level(logging.INFO)
    name = user(oidc_provider, "ann")
    async with session(site) as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as no_session:
            await http.ws_connect(site.ws("one"))
        assert no_session.value.status == 401
        location = await begin(http, site, return_to="/index.html?x=1")
        params = query(location)
        assert params["code_challenge_method"] == "S256" and params["nonce"] and params["state"]
        assert params["redirect_uri"] == f"{site.base}/one/.wsgate/oidc/callback"
        back = await authorize(http, location, name, "pw-" + name)
        status, page, headers = await callback(http, back)
        assert status == 200, page
        assert "url=/index.html?x=1" in page
        assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"
        cookies = {c.key: c for c in http.cookie_jar}
        session_cookie = cookies["wsgate_sso"]
        assert session_cookie["httponly"] and session_cookie["secure"] and session_cookie["samesite"] == "Strict"
        one = await echo(http, site.ws("one"))
        two = await echo(http, site.ws("two"))  # single sign-on: no second prompt
        async with http.get(f"{site.base}/two/.wsgate/session") as who:
            assert (await who.json())["user"] == name
        await one.close()
        await two.close()
        held = next(iter(site.gateway.realms["sso"].oidc.held.values()))
        secrets_ = [held.tokens.id_token, held.tokens.access_token, held.tokens.refresh_token]
    assert all(secrets_)
    every_cookie = " ".join(c.value for c in http.cookie_jar)
    logged = caplog.text
    for secret in secrets_:
        assert secret not in page and secret not in every_cookie and secret not in logged and secret not in back
    assert "oidc signed in" in logged


async def test_callback_attacks_are_refused_alike(site: Site, oidc_provider: OidcProvider, caplog) -> None:
    caplog.set_level(logging.INFO, "wsgate.audit")
    name = user(oidc_provider, "bob")
    answers = {}
    async with session(site) as http:
        # tampered state
        back = await authorize(http, await begin(http, site), name, "pw-" + name)
        answers["tampered state"] = await callback(http, back.replace("state=", "state=x"))
        # the real one still works once; the same code (and state) again is refused: replay
        answers["first use"] = await callback(http, back)
        answers["replayed"] = await callback(http, back)
        # the same code with a fresh state of this browser: the provider refuses a code used before
        fresh = query(await begin(http, site))["state"]
        answers["replayed code"] = await callback(http, back.replace(query(back)["state"], fresh))
        # another browser's callback: the binding cookie does not match
        back = await authorize(http, await begin(http, site), name, "pw-" + name)
    async with session(site) as other:
        answers["other browser"] = await callback(other, back)
    async with session(site) as http:
        for case, tamper in (
            ("wrong nonce", {"nonce": "x"}),
            ("wrong aud", {"aud": "someone-else"}),
            ("foreign issuer", {"iss": "https://evil.test"}),
            ("foreign key", {"key": "foreign"}),
            ("expired", {"exp": int(time.time()) - 600}),
        ):
            location = await begin(http, site)
            oidc_provider.tamper = dict(tamper)
            answers[case] = await callback(http, await authorize(http, location, name, "pw-" + name))
        # RFC 9207 mix-up: an authorization response that says it comes from another issuer
        back = await authorize(http, await begin(http, site), name, "pw-" + name)
        answers["mix-up iss"] = await callback(http, back + "&iss=https%3A%2F%2Fevil.test")
        # a provider that promises the iss parameter (RFC 9207) must send it
        module = site.gateway.realms["sso"].oidc.module
        real = module.provider
        module.provider = dataclasses.replace(real, iss_parameter=True)
        try:
            back = await authorize(http, await begin(http, site), name, "pw-" + name)
            answers["promised iss missing"] = await callback(http, back)
        finally:
            module.provider = real
        answers["provider error"] = await callback(
            http,
            f"{site.base}/one/.wsgate/oidc/callback?error=access_denied&state={query(await begin(http, site))['state']}",
        )
    assert answers.pop("first use")[0] == 200
    pages = {case: (status, page) for case, (status, page, _) in answers.items()}
    assert {status for status, _ in pages.values()} == {403}, pages
    assert len({page for _, page in pages.values()}) == 1  # one page whatever the reason
    for reason in (
        "state unknown",
        "nonce does not match",
        "InvalidAudienceError",
        "InvalidIssuerError",
        "InvalidSignatureError",
        "ExpiredSignatureError",
        "another issuer",
        "without the iss",
        "error 'access_denied'",
        "grant refused (400, 'invalid_grant')",
    ):
        assert reason in caplog.text, reason


OPEN_REDIRECTS = [
    "//evil.test/",
    "/\\evil.test",
    "https://evil.test/",
    "/ok\r\nSet-Cookie: x=1",
    "javascript:alert(1)",
    "evil",
]


async def test_open_redirects_are_impossible(site: Site) -> None:
    async with session(site) as http:
        for target in OPEN_REDIRECTS:
            async with http.get(
                f"{site.base}/one/.wsgate/oidc/login", params={"return": target}, allow_redirects=False
            ) as response:
                assert response.status == 400, target
                assert "Location" not in response.headers


async def test_bearer_tokens_from_the_provider_still_work(site: Site, oidc_provider: OidcProvider) -> None:
    name = user(oidc_provider, "cli")
    async with session(site) as http:
        await sign_in(http, site, name, "pw-" + name)
        held = next(iter(site.gateway.realms["sso"].oidc.held.values()))
        token = held.tokens.id_token
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=site.ssl)) as plain:
        ws = await plain.ws_connect(site.ws("one"), headers={"Authorization": f"Bearer {token}"})
        await ws.send_str("hello")
        assert (await ws.receive()).data == "hello"
        await ws.close()
        forged = oidc_provider.logout_token(name, "another-client")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await plain.ws_connect(site.ws("one"), headers={"Authorization": f"Bearer {forged}"})
        assert refused.value.status == 403


async def test_back_channel_logout_closes_live_sockets_within_a_second(
    site: Site,
    oidc_provider: OidcProvider,
) -> None:
    name = user(oidc_provider, "carl")
    async with session(site) as http:
        status, _, _ = await sign_in(http, site, name, "pw-" + name)
        assert status == 200
        one, two = await echo(http, site.ws("one")), await echo(http, site.ws("two"))
        watching = [asyncio.ensure_future(closed(ws, 3)) for ws in (one, two)]
        started = time.monotonic()
        statuses = await asyncio.to_thread(oidc_provider.backchannel_logout, name, site.client)
        assert statuses == [200]
        for watch in watching:
            code, _ = await watch
            assert code == 1008
        assert time.monotonic() - started < 1.0
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(site.ws("one"))
        assert refused.value.status in (401, 403)
        assert not site.gateway.realms["sso"].oidc.held


FORGED = [
    {"key": "foreign"},
    {"aud": "another-client"},
    {"iss": "https://evil.test"},
    {"events": None},
    {"nonce": "n"},
    {"sid": None, "sub": None},
    {"jti": None},
    {"iat": 1000},
    {"alg": "none"},
]


async def test_forged_logout_tokens_are_refused(site: Site, oidc_provider: OidcProvider) -> None:
    name = user(oidc_provider, "dana")
    async with session(site) as http:
        await sign_in(http, site, name, "pw-" + name)
        ws = await echo(http, site.ws("one"))
        for overrides in FORGED:
            token = oidc_provider.logout_token(name, site.client, **overrides)
            async with http.post(
                f"{site.base}/one/.wsgate/oidc/backchannel-logout", data={"logout_token": token}
            ) as response:
                assert response.status == 400, overrides
        await ws.send_str("still here")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "still here"
        await ws.close()


async def test_a_replayed_logout_token_is_refused(site: Site, oidc_provider: OidcProvider) -> None:
    name = user(oidc_provider, "eve")
    async with session(site) as http:
        await sign_in(http, site, name, "pw-" + name)
        token = oidc_provider.logout_token(name, site.client)
        url = f"{site.base}/one/.wsgate/oidc/backchannel-logout"
        async with http.post(url, data={"logout_token": token}) as first:
            assert first.status == 200
        async with http.post(url, data={"logout_token": token}) as again:
            assert again.status == 400


async def test_rp_initiated_logout_closes_sockets_and_goes_to_the_provider(
    site: Site,
    oidc_provider: OidcProvider,
) -> None:
    name = user(oidc_provider, "finn")
    async with session(site) as http:
        await sign_in(http, site, name, "pw-" + name)
        ws = await echo(http, site.ws("two"))
        async with http.post(f"{site.base}/two/.wsgate/oidc/logout", allow_redirects=False) as no_origin:
            assert no_origin.status == 403  # a browser's POST carries an Origin: this is not one
        async with http.post(
            f"{site.base}/two/.wsgate/oidc/logout", headers={"Origin": "https://evil.test"}, allow_redirects=False
        ) as cross_site:
            assert cross_site.status == 403
        async with http.post(
            f"{site.base}/two/.wsgate/oidc/logout", headers={"Origin": site.base}, allow_redirects=False
        ) as response:
            assert response.status == 303
            location = response.headers["Location"]
        assert location.startswith(oidc_provider.issuer + "/logout?")
        params = query(location)
        assert params["post_logout_redirect_uri"] == f"{site.base}/" and params["client_id"] == site.client
        code, _ = await closed(ws, 2)
        assert code == 1008
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(site.ws("one"))
        # the hint went through a URL: it is no bearer token here any more
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=site.ssl)) as plain:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await plain.ws_connect(site.ws("one"), headers={"Authorization": f"Bearer {params['id_token_hint']}"})
            assert refused.value.status == 403


async def test_refresh_extends_live_sockets_and_a_refused_refresh_closes_them(
    site: Site,
    oidc_provider: OidcProvider,
) -> None:
    name = user(oidc_provider, "gus")
    oidc_provider.access_token_ttl = oidc_provider.id_token_ttl = 4
    async with session(site) as http:
        await sign_in(http, site, name, "pw-" + name)
        ws = await echo(http, site.ws("one"))
        live = next(iter(site.gateway.runtime.connections))
        first = live.deadline
        await asyncio.sleep(5)  # past the first tokens' lifetime: refreshed in place
        assert live.deadline > first
        await ws.send_str("still open")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "still open"
        oidc_provider.revoke_refresh_tokens(name)
        code, _ = await closed(ws, 6)
        assert code == 1008
        assert ws.close_code == 1008
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(site.ws("one"))


async def test_two_nodes_follow_one_provider_session_and_no_token_reaches_redis(
    start_gateway, tmp_path, ca, oidc_provider: OidcProvider, redis_server
) -> None:
    """Two nodes share sessions and revocations through Redis: a refresh on node A extends node B's sockets of the
    session, the provider's logout told to A closes B's sockets, and no token reaches Redis."""
    from redis import asyncio as aioredis

    state = f"state:\n  type: redis\n  url: {redis_server.url}\n"
    ssl_context = client_ssl(ca)
    a = await start_site(
        start_gateway, tmp_path, oidc_provider, ssl_context, "gw-two-nodes", "s-2", state + "  node: a\n"
    )
    b = await start_site(
        start_gateway,
        tmp_path,
        oidc_provider,
        ssl_context,
        "gw-two-nodes",
        "s-2",
        state + "  node: b\n",
        register=False,
    )
    name = user(oidc_provider, "nodes")
    oidc_provider.access_token_ttl = oidc_provider.id_token_ttl = 5
    async with session(a) as http:
        status, _, _ = await sign_in(http, a, name, "pw-" + name)
        assert status == 200
        on_a, on_b = await echo(http, a.ws("one")), await echo(http, b.ws("two"))  # the cookie opens both nodes
        on_b_live = next(iter(b.gateway.runtime.connections))
        first = on_b_live.deadline
        await asyncio.sleep(5.5)  # past the first tokens' end: A refreshed, B's connection was extended too
        assert on_b_live.deadline > first
        await on_b.send_str("still here")
        assert (await asyncio.wait_for(on_b.receive(), 5)).data == "still here"
        tokens = next(iter(a.gateway.realms["sso"].oidc.held.values())).tokens
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            stored = b" ".join([(await client.dump(key)) or b"" for key in await client.keys("*")])
        finally:
            await client.aclose()
        assert stored  # the session is there
        for token in (tokens.id_token, tokens.access_token, tokens.refresh_token):
            assert token and token.encode() not in stored
        assert b"eyJ" not in stored  # no JWT at all
        watching = [asyncio.ensure_future(closed(ws, 3)) for ws in (on_a, on_b)]
        started = time.monotonic()
        assert await asyncio.to_thread(oidc_provider.backchannel_logout, name, a.client) == [200]
        assert [(await watch)[0] for watch in watching] == [1008, 1008]
        assert time.monotonic() - started < 1.0
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(b.ws("one"), origin=b.base)  # the session is refused on B too


async def test_a_protected_page_sends_a_browser_to_the_provider_and_back(
    site: Site, oidc_provider: OidcProvider
) -> None:
    name = user(oidc_provider, "page")
    page = f"{site.base}/docs/index.html"
    async with session(site) as http:
        async with http.get(page, headers={"Accept": "application/json"}, allow_redirects=False) as program:
            assert program.status == 401  # not a browser: the realm's challenge, as before
        async with http.get(
            page, params={"tab": "2"}, headers={"Accept": "text/html"}, allow_redirects=False
        ) as response:
            assert response.status == 302
            login = response.headers["Location"]
        assert login == "/docs/.wsgate/oidc/login?return=%2Fdocs%2Findex.html%3Ftab%3D2"
        async with http.get(site.base + login, allow_redirects=False) as started:
            location = started.headers["Location"]
        status, body, _ = await callback(http, await authorize(http, location, name, "pw-" + name))
        assert status == 200 and "url=/docs/index.html?tab=2" in body
        async with http.get(page, headers={"Accept": "text/html"}, allow_redirects=False) as signed_in:
            assert signed_in.status == 200


async def test_a_provider_outage_during_refresh_is_retried_and_a_rotated_key_is_fetched(
    site: Site, oidc_provider: OidcProvider
) -> None:
    name = user(oidc_provider, "hal")
    oidc_provider.access_token_ttl = oidc_provider.id_token_ttl = 6
    async with session(site) as http:
        await sign_in(http, site, name, "pw-" + name)
        ws = await echo(http, site.ws("one"))
        live = next(iter(site.gateway.runtime.connections))
        first = live.deadline
        oidc_provider.rotate_key()  # the refreshed ID token comes with a kid the gateway has not fetched yet
        seen = len(oidc_provider.requests)
        oidc_provider.unavailable = True  # and the provider is down when the refresh is due
        try:
            for _ in range(100):  # until the refresh was tried and answered 503
                if ("POST", "/token") in oidc_provider.requests[seen:]:
                    break
                await asyncio.sleep(0.05)
        finally:
            oidc_provider.unavailable = False
        assert live.deadline == first  # not refreshed yet, still open
        for _ in range(60):  # retried within a second or two, before the first tokens' end
            if live.deadline > first:
                break
            await asyncio.sleep(0.05)
        assert live.deadline > first
        await ws.send_str("after the outage")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "after the outage"
        await ws.close()
