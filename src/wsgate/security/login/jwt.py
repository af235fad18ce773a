"""``jwt`` login module (beyond Kaazing): signed JWTs verified against a JWKS or a public key.

Keys come from ``jwks-url`` (cached for ``jwks-cache``; an unknown ``kid`` triggers
at most one refetch per ``jwks-refetch-interval``), ``jwks-file`` or ``key-file``.
``iss``, ``aud`` and ``exp`` are required; ``nbf`` is honoured; only asymmetric
algorithms are accepted (never ``none``, never HS*: no algorithm confusion).
The token's ``exp`` bounds the connection's life. Whatever the client sends is at worst a
refused token (``Failed``): only an unreachable JWKS is ``Unavailable``.

A bearer token that passed is remembered (``token-cache`` entries, LRU) by the SHA-256 of the whole token,
so a client that reconnects with the same token skips the signature check (``TokenCache``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ...config.values import parse_csv, parse_duration
from ...core.fetch import FetchError, FetchJson
from ...errors import ConfigError
from .base import Failed, LoginAttempt, LoginModuleType, Outcome, Succeeded, Unavailable, option, resolve

ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
TIME_CLAIMS = ("exp", "nbf", "iat")
JWKS_TIMEOUT = 5.0  # seconds for one JWKS fetch, connect to body
DEFAULT_TOKEN_CACHE = "10000"  # verified bearer tokens remembered per module (about 1.3 KiB each)
BEARER_CLAIMS = ("exp", "iss", "aud")  # what every bearer token must carry


@dataclass(frozen=True, slots=True)
class Verified:
    """A bearer token that passed: its claims, and what a later hit must find unchanged to reuse them."""

    claims: dict[str, Any]  # shared by every hit: read, never changed
    exp: int  # as PyJWT compares it (int of the claim)
    kid: str | None
    key: Any  # the very key object that verified the signature


class TokenCache:
    """Verified bearer tokens by the SHA-256 of the whole token (signature included), least recently used
    dropped first. Only successes are kept: a refused token is verified again every time, so a forger learns
    nothing from timing that he would not from the answer. The token itself is never kept."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[bytes, Verified] = OrderedDict()

    @staticmethod
    def digest(token: str) -> bytes:
        """Of the whole token: a JWT re-spelled with another signature is another entry, verified on its own."""
        return hashlib.sha256(token.encode()).digest()

    def get(self, digest: bytes) -> Verified | None:
        found = self.entries.get(digest)
        if found is not None:
            self.entries.move_to_end(digest)
        return found

    def put(self, digest: bytes, verified: Verified) -> None:
        if self.size <= 0:
            return
        self.entries[digest] = verified
        self.entries.move_to_end(digest)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def drop(self, digest: bytes) -> None:
        self.entries.pop(digest, None)

    def __len__(self) -> int:
        return len(self.entries)


class JwtLoginModule:
    TYPE = LoginModuleType(
        name="jwt",
        options=(
            "issuer",
            "audience",
            "algorithms",
            "roles-claim",
            "user-claim",
            "leeway",
            "jwks-cache",
            "jwks-refetch-interval",
            "jwks-url",
            "jwks-file",
            "key-file",
            "token-cache",
        ),
        fetches=True,
    )

    def __init__(
        self, options: Mapping[str, str], path: str, base_dir: Path, fetch_json: FetchJson | None = None
    ) -> None:
        """``fetch_json`` gets a ``jwks-url`` (the gateway passes ``transport.http_client.fetch_json``)."""
        self.path = path
        self.fetch_json = fetch_json
        self.issuer = _required(options, "issuer", path)
        self.audience = _required(options, "audience", path)
        self.algorithms = self._algorithms(options.get("algorithms"))
        self.roles_claim = options.get("roles-claim", "roles")
        self.user_claim = options.get("user-claim", "sub")
        self.leeway = option(options, "leeway", "30s", path, parse_duration)
        self.cache_ttl = option(options, "jwks-cache", "5 minutes", path, parse_duration)
        self.refetch_interval = option(options, "jwks-refetch-interval", "10s", path, parse_duration)
        self.token_cache = TokenCache(option(options, "token-cache", DEFAULT_TOKEN_CACHE, path, parse_cache_size))
        self.jwks_url = options.get("jwks-url")
        self.keys: dict[str | None, tuple[Any, str | None]] = {}
        self.fetched_at = self.last_fetch_try = float("-inf")
        self.failure: Unavailable | None = None  # the last fetch's, until one succeeds
        self._lock = asyncio.Lock()
        sources = [k for k in ("jwks-url", "jwks-file", "key-file") if k in options]
        if len(sources) != 1:
            raise ConfigError(f"{path}/options", "needs exactly one of jwks-url, jwks-file, key-file")
        if self.jwks_url is not None and fetch_json is None:
            raise TypeError("a jwt login module with a jwks-url needs fetch_json to fetch it")
        if "jwks-file" in options:
            self.keys = self._read_jwks(json.loads(_read(base_dir, options["jwks-file"], f"{path}/options/jwks-file")))
        elif "key-file" in options:
            pem = _read(base_dir, options["key-file"], f"{path}/options/key-file")
            self.keys = {None: (_pem_key(pem, f"{path}/options/key-file"), None)}

    def _algorithms(self, text: str | None) -> tuple[str, ...]:
        algorithms = parse_csv(text) if text else DEFAULT_ALGORITHMS
        bad = [a for a in algorithms if a not in ASYMMETRIC]
        if bad or not algorithms:
            raise ConfigError(
                f"{self.path}/options/algorithms",
                f"{', '.join(bad) or '(empty)'} not allowed; use asymmetric algorithms: {', '.join(ASYMMETRIC)}",
            )
        return algorithms

    def _read_jwks(self, document: Any) -> dict[str | None, tuple[Any, str | None]]:
        """kid → (key, the algorithm the JWK binds it to, if it names one)."""
        keys: dict[str | None, tuple[Any, str | None]] = {}
        listed = document.get("keys", []) if isinstance(document, dict) else []
        for item in listed if isinstance(listed, list) else []:
            if not isinstance(item, dict) or item.get("use", "sig") != "sig":
                continue
            kid, alg = item.get("kid"), item.get("alg")
            if not (kid is None or isinstance(kid, str)) or not (alg is None or isinstance(alg, str)):
                continue  # a kid or alg that is not a string matches no token (and a list is no dict key)
            try:
                key = jwt.PyJWK(item)
            except (jwt.PyJWKError, jwt.InvalidKeyError, TypeError, ValueError):
                continue  # keys of other types, or malformed, are skipped, as JWKS consumers must
            keys[kid] = (key.key, alg)
        return keys

    async def login(self, attempt: LoginAttempt) -> Outcome:
        token = attempt.credentials.bearer()
        if not token:
            return Failed("no token presented")
        claims = await self.bearer_claims(token)
        if not isinstance(claims, dict):
            return claims
        return self.outcome(claims, attempt)

    async def bearer_claims(self, token: str) -> dict[str, Any] | Failed | Unavailable:
        """``verified_claims(token)``, from the cache when this very token passed before and would pass again:
        its ``exp`` still within the leeway (compared as PyJWT does) and its ``kid`` still naming the key object
        that verified it (looked up as on a miss, so a stale JWKS is refetched and a rotated-out key refuses).
        Revocation is not the module's: the realm checks it after every login, cached or not."""
        if not token.isascii():  # never a JWT, and surrogates from undecodable bytes have no digest: refused below
            return await self.verified_claims(token)
        cache = self.token_cache
        digest = cache.digest(token)
        hit = cache.get(digest)
        if hit is not None:
            if hit.exp > time.time() - self.leeway:
                found = await self._key(hit.kid)
                if isinstance(found, Unavailable | Failed):
                    cache.drop(digest)
                    return found
                if found[0] is hit.key:
                    return hit.claims
            cache.drop(digest)  # expired, or its key rotated: verified afresh below, and refused if it must be
        verified = await self._verify(token, BEARER_CLAIMS)
        if not isinstance(verified, Verified):
            return verified
        cache.put(digest, verified)
        return verified.claims

    async def verified_claims(
        self, token: str, require: tuple[str, ...] = BEARER_CLAIMS
    ) -> dict[str, Any] | Failed | Unavailable:
        """The claims of ``token`` once its signature (a JWKS key, an allowed algorithm), ``iss``, ``aud``, and
        ``exp``/``nbf``/``iat`` within the leeway are checked; else why not. The ``oidc`` module checks ID and
        logout tokens with it (``require``: the claims that must be there)."""
        verified = await self._verify(token, require)
        return verified.claims if isinstance(verified, Verified) else verified

    async def _verify(self, token: str, require: tuple[str, ...]) -> Verified | Failed | Unavailable:
        if not token.isascii():  # a JWT is base64url and dots; anything else (e.g. undecodable header bytes) is not
            return Failed("token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Failed("token is not a JWT")
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self.algorithms:
            return Failed(f"token algorithm {algorithm!r} is not allowed")
        if kid is not None and not isinstance(kid, str):
            return Failed("token key id is not a string")
        found = await self._key(kid)
        if isinstance(found, Unavailable | Failed):
            return found
        key, bound_algorithm = found
        if bound_algorithm is not None and bound_algorithm != algorithm:
            return Failed(f"key {kid!r} is bound to {bound_algorithm}, token says {algorithm}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(require)},
            )
        # TypeError: a key of another family than alg; ArithmeticError: PyJWT's int() of an exp of Infinity
        except (jwt.PyJWTError, TypeError, ValueError, ArithmeticError) as exc:
            return Failed(f"token rejected: {type(exc).__name__}")
        bad = [name for name in TIME_CLAIMS if name in claims and not numeric_date(claims[name])]
        if bad:
            return Failed(f"token claim {bad[0]} is not a JSON number")
        return Verified(claims, int(claims["exp"]) if "exp" in claims else 0, kid, key)

    def outcome(self, claims: dict[str, Any], attempt: LoginAttempt) -> Outcome:
        """A verified token's user, roles, expiry and jti."""
        user = claims.get(self.user_claim)
        if not isinstance(user, str) or not user:
            return Failed(f"token has no {self.user_claim!r} claim")
        jti = claims.get("jti")
        if jti is not None and (not isinstance(jti, str) or not jti):
            return Failed("token claim jti is not a string")
        attempt.shared.setdefault("name", user)
        return Succeeded(user, claim_roles(claims, self.roles_claim), float(claims["exp"]), jti)

    async def _key(self, kid: str | None) -> tuple[Any, str | None] | Failed | Unavailable:
        if self.jwks_url is not None and (kid not in self.keys or self._stale()):
            failure = await self._refresh(kid)
            if failure is not None and not self.keys:
                return failure
        found = self.keys.get(kid)
        if found is None and self.jwks_url is None and len(self.keys) == 1:
            found = next(iter(self.keys.values()))  # a single configured key serves tokens without kid
        return found or Failed(f"no key {kid!r}")

    def _stale(self) -> bool:
        return time.monotonic() - self.fetched_at > self.cache_ttl

    async def _refresh(self, kid: str | None) -> Unavailable | None:
        """Refetch when stale; an unknown ``kid`` refetches at most once per refetch interval, and so does a stale
        cache whose host failed (its keys serve meanwhile): an outage is one try per interval, not one per token."""
        async with self._lock:
            if kid in self.keys and not self._stale():
                return None  # another request fetched meanwhile
            if time.monotonic() - self.last_fetch_try < self.refetch_interval:
                return None if self.keys else self.failure
            return await self._fetch()

    async def _fetch(self) -> Unavailable | None:
        assert self.jwks_url is not None and self.fetch_json is not None
        self.last_fetch_try = time.monotonic()
        try:
            document = await self.fetch_json(self.jwks_url, JWKS_TIMEOUT)
        except FetchError as exc:
            self.failure = Unavailable(f"JWKS {self.jwks_url} unreachable: {exc}")
            return self.failure
        self.keys = self._read_jwks(document)
        self.fetched_at = time.monotonic()
        self.failure = None
        return None


def unverified_claims(token: str) -> tuple[str | None, float | None]:
    """``(jti, exp)`` of a token the administrator revokes, if it is a JWT, only to key and time the
    revocation. Unverified is enough: a token whose claims were altered fails its signature anyway."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, RecursionError):
        return None, None
    jti, exp = claims.get("jti"), claims.get("exp")
    until = float(exp) if exp is not None and numeric_date(exp) else None
    return (jti if isinstance(jti, str) and jti else None), until


def numeric_date(value: Any) -> bool:
    """RFC 7519 NumericDate: a finite JSON number. PyJWT coerces "1700000000" and true with int()."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer no float can hold (10**400): no date, and no 503 either
        return False


def parse_cache_size(text: str) -> int:
    """``token-cache``: entries kept, ``0`` for none."""
    value = text.strip().replace("_", "")
    if not value.isdigit():
        raise ValueError(f"{text!r} is not a whole number of entries (0 turns the cache off)")
    return int(value)


def claim_roles(claims: Mapping[str, Any], path: str) -> frozenset[str]:
    """Roles from a claim: a list, or a space-separated string (OAuth ``scope``); dots walk objects."""
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _required(options: Mapping[str, str], name: str, path: str) -> str:
    if not options.get(name):
        raise ConfigError(f"{path}/options/{name}", "is required: tokens for another issuer or audience must not pass")
    return options[name]


def _read(base_dir: Path, name: str, element: str) -> str:
    path = resolve(base_dir, name)
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(element, f"cannot read {str(path)!r}: {exc.strerror}") from None


def _pem_key(pem: str, element: str) -> Any:
    try:
        return load_pem_public_key(pem.encode())
    except ValueError:
        raise ConfigError(element, "is not a PEM public key") from None
