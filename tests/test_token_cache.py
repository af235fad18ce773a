"""The jwt module's cache of verified bearer tokens (issue 13, P4): a reconnect with the same token skips the
signature check, but never outlives the token's ``exp``, its key, or a revocation; the token itself is never kept."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wsgate.errors import ConfigError
from wsgate.security.challenges import Credentials
from wsgate.security.login import Failed, LoginAttempt, Succeeded
from wsgate.security.login import jwt as jwt_module
from wsgate.security.login.jwt import JwtLoginModule, TokenCache
from wsgate.security.login.oidc import OidcLoginModule

ISSUER, AUDIENCE = "https://idp.test", "wsgate"
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())


def token(sub: str = "ann", key: Any = KEY, kid: str | None = None, lifetime: float = 60, **claims: Any) -> str:
    body = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time() + lifetime), **claims}
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": kid} if kid else None)


def attempt(bearer: str) -> LoginAttempt:
    return LoginAttempt(Credentials(scheme="bearer", parameter=bearer), "127.0.0.1")


def jwk(key: Any, kid: str) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwt-public.pem"
    pem = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.write_bytes(pem)
    return path


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every signature check PyJWT does (the real ``jwt.decode``, counted; a revocation's unverified read is not)."""
    calls: list[str] = []
    real = jwt.decode

    def counted(token: str, *args: Any, **kwargs: Any) -> Any:
        if (kwargs.get("options") or {}).get("verify_signature", True):
            calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt_module.jwt, "decode", counted)
    yield calls


def module(key_file: Path, **options: str) -> JwtLoginModule:
    return JwtLoginModule(
        {"key-file": str(key_file), "issuer": ISSUER, "audience": AUDIENCE, **options}, "m", key_file.parent
    )


async def test_a_second_login_with_the_same_token_is_not_verified_again(key_file, decodes):
    m = module(key_file)
    bearer = token()
    first, second = await m.login(attempt(bearer)), await m.login(attempt(bearer))
    assert isinstance(first, Succeeded) and first == second and first.user == "ann"
    assert len(decodes) == 1
    other = token("bob")
    assert isinstance(await m.login(attempt(other)), Succeeded) and len(decodes) == 2  # another token: a miss


async def test_the_cache_keeps_the_digest_of_the_whole_token_never_the_token(key_file):
    m = module(key_file)
    bearer = token()
    await m.login(attempt(bearer))
    assert list(m.token_cache.entries) == [hashlib.sha256(bearer.encode()).digest()]
    assert bearer not in repr(m.token_cache.entries) and bearer.rsplit(".", 1)[1] not in repr(m.token_cache.entries)


async def test_a_token_with_another_signature_is_no_hit(key_file, decodes):
    """The revocation digest covers only the signed part; the cache's covers the signature too, or a forged
    signature on a cached token's header and payload would pass without any check."""
    m = module(key_file)
    bearer = token()
    assert isinstance(await m.login(attempt(bearer)), Succeeded)
    signed, signature = bearer.rsplit(".", 1)
    forged = f"{signed}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    outcome = await m.login(attempt(forged))
    assert isinstance(outcome, Failed) and "InvalidSignatureError" in outcome.reason
    assert len(decodes) == 2 and len(m.token_cache) == 1


async def test_refused_tokens_are_not_cached(key_file, decodes):
    m = module(key_file)
    stranger = token(key=OTHER)
    for _ in range(3):
        assert isinstance(await m.login(attempt(stranger)), Failed)
    assert len(decodes) == 3 and len(m.token_cache) == 0


async def test_a_cached_token_is_refused_once_expired_as_the_uncached_path_refuses_it(key_file, decodes):
    m = module(key_file, leeway="0s")
    deadline = int(time.time()) + 1
    bearer = token(lifetime=deadline - time.time())
    assert isinstance(await m.login(attempt(bearer)), Succeeded)
    assert isinstance(await m.login(attempt(bearer)), Succeeded) and len(decodes) == 1  # a hit
    await asyncio.sleep(max(0.0, deadline - time.time()) + 0.05)
    cached = await m.login(attempt(bearer))
    uncached = await module(key_file, leeway="0s", **{"token-cache": "0"}).login(attempt(bearer))
    assert isinstance(cached, Failed) and cached == uncached
    assert cached.reason == "token rejected: ExpiredSignatureError"
    assert len(m.token_cache) == 0


async def test_the_leeway_applies_to_hits_as_to_misses(key_file, decodes):
    m = module(key_file, leeway="1 minute")
    bearer = token(lifetime=-5)  # expired 5 s ago, inside the leeway
    assert isinstance(await m.login(attempt(bearer)), Succeeded)
    assert isinstance(await m.login(attempt(bearer)), Succeeded) and len(decodes) == 1
    strict = module(key_file, leeway="2s")
    assert isinstance(await strict.login(attempt(bearer)), Failed) and len(strict.token_cache) == 0


async def test_a_key_rotated_out_of_the_jwks_refuses_its_cached_tokens(decodes):
    document = {"keys": [jwk(KEY, "k1")]}
    fetches: list[str] = []

    async def fetch(url: str, timeout: float) -> object:
        fetches.append(url)
        return document

    options = {"jwks-url": "https://idp.test/jwks", "issuer": ISSUER, "audience": AUDIENCE}
    m = JwtLoginModule({**options, "jwks-cache": "0.2s", "jwks-refetch-interval": "0s"}, "m", Path(), fetch)
    bearer = token(kid="k1")
    assert isinstance(await m.login(attempt(bearer)), Succeeded)
    assert isinstance(await m.login(attempt(bearer)), Succeeded)
    assert len(decodes) == 1 and len(fetches) == 1  # a fresh JWKS: a hit neither refetches nor verifies
    document = {"keys": [jwk(OTHER, "k2")]}  # k1 retired by the issuer
    await asyncio.sleep(0.25)  # the JWKS is stale: the next login refetches it, hit or not
    outcome = await m.login(attempt(bearer))
    assert outcome == Failed("no key 'k1'") and len(fetches) == 2 and len(m.token_cache) == 0


async def test_a_kid_given_to_another_key_verifies_its_cached_tokens_again(decodes):
    document = {"keys": [jwk(KEY, "k1")]}

    async def fetch(url: str, timeout: float) -> object:
        return document

    options = {"jwks-url": "https://idp.test/jwks", "issuer": ISSUER, "audience": AUDIENCE, "jwks-cache": "0.1s"}
    m = JwtLoginModule({**options, "jwks-refetch-interval": "0s"}, "m", Path(), fetch)
    bearer = token(kid="k1")
    assert isinstance(await m.login(attempt(bearer)), Succeeded)
    document = {"keys": [jwk(OTHER, "k1")]}  # same kid, another key
    await asyncio.sleep(0.15)
    outcome = await m.login(attempt(bearer))
    assert isinstance(outcome, Failed) and "InvalidSignatureError" in outcome.reason and len(decodes) == 2


async def test_the_cache_is_bounded_and_drops_the_least_recently_used(key_file, decodes):
    m = module(key_file, **{"token-cache": "3"})
    tokens = [token(f"user{i}") for i in range(5)]
    for bearer in tokens[:3]:
        await m.login(attempt(bearer))
    await m.login(attempt(tokens[0]))  # used again: now the most recent
    for bearer in tokens[3:]:
        await m.login(attempt(bearer))
    assert len(m.token_cache) == 3
    assert set(m.token_cache.entries) == {TokenCache.digest(t) for t in (tokens[0], tokens[3], tokens[4])}
    before = len(decodes)
    await m.login(attempt(tokens[0]))
    await m.login(attempt(tokens[1]))
    assert len(decodes) == before + 1  # tokens[0] was a hit, tokens[1] had been dropped


async def test_a_cache_of_size_zero_verifies_every_time(key_file, decodes):
    m = module(key_file, **{"token-cache": "0"})
    bearer = token()
    for _ in range(3):
        assert isinstance(await m.login(attempt(bearer)), Succeeded)
    assert len(decodes) == 3 and len(m.token_cache) == 0


def test_a_bad_cache_size_names_the_option(key_file):
    with pytest.raises(ConfigError, match=r"m/options/token-cache.*whole number"):
        module(key_file, **{"token-cache": "lots"})


def test_the_oidc_module_passes_its_cache_size_to_its_jwt_verifier():
    class NoHttp:  # never called: construction only
        def fetcher(self, tls: object) -> object:
            return lambda url, timeout: None

    options = {"issuer": "https://idp.test", "client-id": AUDIENCE, "token-cache": "7"}
    oidc = OidcLoginModule(options, "m", Path(), http=NoHttp())  # type: ignore[arg-type]
    assert oidc.jwt.token_cache.size == 7


# -- on loopback: revocation is the realm's, and runs on a hit too --------------------------------------


GATEWAY = """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    realm-name: tokens
    authorization-constraint:
      require-role: "*"
security:
  realm:
    - name: tokens
      authentication:
        http-challenge-scheme: Application Token
        login-modules:
          login-module:
            type: jwt
            options:
              key-file: jwt-public.pem
              issuer: https://idp.test
              audience: wsgate
"""


@pytest.mark.parametrize("by", ["token", "jti", "user"])
async def test_a_revoked_token_is_refused_even_when_cached(start_gateway, key_file, http, decodes, by):
    gw = await start_gateway(GATEWAY)
    (entry,) = gw.realms["tokens"].chain
    cache = entry.module.token_cache
    bearer = token("ann", jti="t-1")
    url = f"ws://127.0.0.1:{gw.port_of('echo')}/echo"
    headers = {"Authorization": f"Bearer {bearer}"}
    for _ in range(2):
        ws = await http.ws_connect(url, headers=headers)
        await asyncio.wait_for(ws.close(), 5)
    assert len(decodes) == 1 and len(cache) == 1  # the second login was a hit
    if by == "user":
        await gw.revoke(user="ann")
    elif by == "jti":
        await gw.revoke(token=token("ann", jti="t-1", lifetime=120))  # another token with the same jti
    else:
        await gw.revoke(token=bearer)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers=headers)
    assert refused.value.status == 403
    assert len(cache) == 1 and len(decodes) == 1  # still cached, served from the cache, and refused all the same


async def test_a_token_no_digest_can_encode_is_refused_not_an_error(key_file):
    """Undecodable header bytes reach the module as surrogates: hashing them for the cache raised, and the chain
    turned the exception into a 503."""
    m = module(key_file)
    outcome = await m.login(attempt("\udcff\udcfe.e30.x"))
    assert outcome == Failed("token is not a JWT") and len(m.token_cache) == 0
