"""The jwt module fetches its JWKS through an injected ``fetch_json`` (``core.fetch``): security imports
no HTTP client, and the fetch can be exercised without sockets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from wsgate.core.fetch import FetchError
from wsgate.security.challenges import Credentials
from wsgate.security.login import LOGIN_MODULES, LoginAttempt, Succeeded, Unavailable
from wsgate.security.login.jwt import JWKS_TIMEOUT, JwtLoginModule
from wsgate.transport.http_client import fetch_json

KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = {"keys": [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key())), "kid": "k1", "use": "sig"}]}
OPTIONS = {"jwks-url": "https://idp.test/jwks.json", "issuer": "https://idp.test", "audience": "wsgate"}


def token() -> str:
    claims = {"sub": "ann", "iss": "https://idp.test", "aud": "wsgate", "exp": int(time.time()) + 60}
    return jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": "k1"})


def attempt() -> LoginAttempt:
    return LoginAttempt(Credentials(scheme="bearer", parameter=token()), "127.0.0.1")


async def test_the_jwks_comes_from_the_injected_fetch():
    asked: list[tuple[str, float]] = []

    async def fetch(url: str, timeout: float) -> object:
        asked.append((url, timeout))
        return JWKS

    module = LOGIN_MODULES["jwt"].create(OPTIONS, "m", Path(), fetch)
    assert isinstance(module, JwtLoginModule)
    outcome = await module.login(attempt())
    assert isinstance(outcome, Succeeded) and outcome.user == "ann"
    assert asked == [("https://idp.test/jwks.json", JWKS_TIMEOUT)]


async def test_a_failed_fetch_is_unavailable_naming_the_cause():
    async def fetch(url: str, timeout: float) -> object:
        raise FetchError("ClientConnectorError")

    outcome = await JwtLoginModule(OPTIONS, "m", Path(), fetch_json=fetch).login(attempt())
    assert outcome == Unavailable("JWKS https://idp.test/jwks.json unreachable: ClientConnectorError")


def test_a_jwks_url_without_a_fetch_is_a_wiring_error():
    with pytest.raises(TypeError, match="needs fetch_json"):
        JwtLoginModule(OPTIONS, "m", Path())


async def test_the_aiohttp_fetch_reports_an_unreachable_url_as_a_fetch_error(unused_tcp_port):
    with pytest.raises(FetchError, match="ClientConnectorError"):
        await fetch_json(f"http://127.0.0.1:{unused_tcp_port}/jwks.json", 2.0)
