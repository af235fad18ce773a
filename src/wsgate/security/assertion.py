"""Identity assertions: what the DMZ gateway vouches for, signed, and what the internal gateway accepts of it.

The DMZ gateway authenticates a client (its realm, its limits) and then sends, over a tunnel the
internal gateway dialled, a compact JWS signed with Ed25519: header ``{"alg": "EdDSA", "typ":
"wsgate-dmz+jwt"}``, claims ``iss aud sub roles svc remote iat exp jti``. The internal gateway trusts
nothing but one pinned public key and one algorithm: a token with any other ``alg`` (``none``,
``HS256`` keyed with the public key, ...) is refused before its signature is even looked at, and a
valid one is accepted once (``jti`` replay cache kept at least as long as any token can live).

Sans-I/O: ``sign`` and ``AssertionVerifier.verify`` take the time as an argument, so the whole
matrix (forged, expired, replayed, wrong audience...) is tested in memory.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..core.identity import Identity

ALG = "EdDSA"
TYP = "wsgate-dmz+jwt"
MAX_LIFETIME = 30.0  # seconds: no assertion may live longer (exp - iat), whatever the DMZ asks for
DEFAULT_LIFETIME = 10.0
LEEWAY = 2.0  # clock difference tolerated between the two gateways
REQUIRED = ("iss", "aud", "sub", "roles", "svc", "remote", "iat", "exp", "jti")
_HEADER = base64.urlsafe_b64encode(json.dumps({"alg": ALG, "typ": TYP}, separators=(",", ":")).encode()).rstrip(b"=")


class AssertionRefused(Exception):
    """An assertion that must not become a connection; the message is for the audit log only."""


@dataclass(frozen=True, slots=True)
class Claims:
    """A verified assertion: who the DMZ admitted, for which service, from where."""

    issuer: str
    subject: str
    roles: frozenset[str]
    service: str
    remote: str
    issued_at: float
    expires_at: float
    token_id: str
    realm: str = ""
    credential_expiry: float | None = None  # when the client's own credentials run out (the DMZ's deadline)

    def identity(self) -> Identity:
        """The identity the internal gateway's connection carries (realm ``dmz:<realm>``: it came through the DMZ)."""
        return Identity(
            realm=f"dmz:{self.realm}" if self.realm else "dmz",
            user=self.subject or None,
            roles=self.roles,
            expires_at=self.credential_expiry,
            authenticated_at=self.issued_at,
            token_id=self.token_id,
        )


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(part: str) -> bytes:
    """Base64url without padding (RFC 7515), one spelling per value: ``ValueError`` for anything else (padding,
    the other alphabet, junk a lenient decoder would skip, unused trailing bits set)."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if _b64(data) != part.encode():
        raise ValueError("not canonical base64url")
    return data


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a repeated key")  # parsers disagree on which one counts
    return obj


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_no_constant)


def _json_object(part: str) -> dict[str, object] | None:
    """The JSON object a part encodes: strict UTF-8 JSON, no repeated key, no NaN/Infinity; None otherwise."""
    try:
        value = _DECODER.decode(_unb64(part).decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; nesting too deep to parse
        return None
    return value if type(value) is dict else None


def _text(value: object) -> str:
    if type(value) is not str:
        raise ValueError("not a string")
    return value


def _numeric_date(value: object) -> float:
    """A JWT NumericDate: a finite JSON number (seconds, fractions allowed); never a string or a boolean."""
    if type(value) is int or type(value) is float:
        try:
            at = float(value)
        except OverflowError:
            raise ValueError("out of range") from None
        if math.isfinite(at):
            return at
    raise ValueError("not a NumericDate")


def generate_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as PEM: (private PKCS#8, public SubjectPublicKeyInfo)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The DMZ's signing key (PEM, unencrypted PKCS#8); anything but Ed25519 is refused."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key (generate one with 'wsgate dmz-keys')")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The internal gateway's pinned key (PEM SubjectPublicKeyInfo); anything but Ed25519 is refused."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key (generate one with 'wsgate dmz-keys')")
    return key


def sign(
    key: Ed25519PrivateKey,
    *,
    issuer: str,
    audience: str,
    identity: Identity | None,
    service: str,
    remote: str,
    now: float | None = None,
    lifetime: float = DEFAULT_LIFETIME,
) -> str:
    """A fresh single-use assertion for one admitted client (``identity`` None: a service without a realm)."""
    issued = time.time() if now is None else now
    claims: dict[str, object] = {
        "iss": issuer,
        "aud": audience,
        "sub": (identity.user or "") if identity else "",
        "roles": sorted(identity.roles) if identity else [],
        "realm": identity.realm if identity else "",
        "svc": service,
        "remote": remote,
        "iat": int(issued),
        "exp": int(issued + min(lifetime, MAX_LIFETIME)),
        "jti": secrets.token_urlsafe(18),
    }
    if identity is not None and identity.expires_at is not None:
        claims["cexp"] = int(identity.expires_at)
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = _HEADER + b"." + payload
    return (signing_input + b"." + _b64(key.sign(signing_input))).decode()


class ReplayCache:
    """``jti`` values seen, each kept until its assertion could no longer verify; bounded in size.

    Full of live entries, it refuses new assertions rather than forget one that might be replayed.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()  # jti → forget after (insertion order ≈ expiry order)

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, jti: str, forget_after: float, now: float) -> bool:
        """Record ``jti``; False if it was seen (a replay), the cache is full of live entries, or ``forget_after``
        is not after ``now`` (an entry that would be forgotten at once could not stop a replay)."""
        if not forget_after > now:
            return False
        seen = self._seen
        while seen:
            oldest, until = next(iter(seen.items()))
            if until > now:
                break
            del seen[oldest]
        if jti in seen:
            return False
        if len(seen) >= self.capacity:
            return False
        seen[jti] = forget_after
        return True


class AssertionVerifier:
    """The internal gateway's check: pinned key, EdDSA only, its own audience and service, fresh, once."""

    def __init__(
        self,
        keys: Ed25519PublicKey | tuple[Ed25519PublicKey, ...],
        audience: str,
        issuer: str | None = None,
        replay: ReplayCache | None = None,
        leeway: float = LEEWAY,
    ) -> None:
        self.keys = keys if isinstance(keys, tuple) else (keys,)  # two while the DMZ's key is rotated
        self.audience = audience
        self.issuer = issuer
        self.replay = replay if replay is not None else ReplayCache()
        self.leeway = leeway

    def verify(self, token: str, service: str, now: float | None = None) -> Claims:  # noqa: C901
        """The claims of a valid assertion for ``service``; ``AssertionRefused`` (reason) otherwise."""
        at = time.time() if now is None else now
        claims = self._signed_claims(token)
        missing = [name for name in REQUIRED if name not in claims]
        if missing:
            raise AssertionRefused(f"missing claims: {', '.join(missing)}")
        try:
            iat, exp = _numeric_date(claims["iat"]), _numeric_date(claims["exp"])
            roles_claim = claims["roles"]
            if type(roles_claim) is not list:
                raise ValueError("roles")
            roles = frozenset(_text(r) for r in roles_claim)
            issuer, audience = _text(claims["iss"]), _text(claims["aud"])
            subject, svc, jti, remote = (_text(claims[n]) for n in ("sub", "svc", "jti", "remote"))
            realm = _text(claims.get("realm", ""))
            cexp = _numeric_date(claims["cexp"]) if claims.get("cexp") is not None else None
        except ValueError:
            raise AssertionRefused("malformed claims") from None
        if audience != self.audience:
            raise AssertionRefused(f"audience {audience!r} is not {self.audience!r}")
        if self.issuer is not None and issuer != self.issuer:
            raise AssertionRefused(f"issuer {issuer!r} is not {self.issuer!r}")
        if svc != service:
            raise AssertionRefused(f"service {svc!r} is not {service!r}")
        if exp - iat > MAX_LIFETIME or exp <= iat:
            raise AssertionRefused(f"lifetime {exp - iat:g}s outside (0, {MAX_LIFETIME:g}]")
        if iat > at + self.leeway:
            raise AssertionRefused("issued in the future")
        if exp + self.leeway <= at:  # the instant the replay cache forgets its jti, it is expired too
            raise AssertionRefused("expired")
        if not jti or not self.replay.admit(jti, exp + self.leeway, at):
            raise AssertionRefused("replayed (jti seen before)")
        return Claims(
            issuer=issuer,
            subject=subject,
            roles=roles,
            service=svc,
            remote=remote,
            issued_at=iat,
            expires_at=exp,
            token_id=jti,
            realm=realm,
            credential_expiry=cexp,
        )

    def _signed_claims(self, token: str) -> dict[str, object]:
        parts = token.split(".")
        if len(parts) != 3:
            raise AssertionRefused("not a compact JWS")
        header = _json_object(parts[0])
        if header is None:
            raise AssertionRefused("unreadable header")
        if header.get("alg") != ALG or header.get("typ") != TYP:
            alg = str(header.get("alg"))[:40]  # unsigned: what the audit line quotes of it stays short
            raise AssertionRefused(f"algorithm {alg!r} refused: only {ALG} with typ {TYP}")
        if set(header) - {"alg", "typ"}:
            raise AssertionRefused("unexpected header parameters")
        try:
            signature = _unb64(parts[2])
            _unb64(parts[1])  # the signed bytes are the parts as sent: each must be the one spelling of its bytes
        except ValueError:
            raise AssertionRefused("bad signature") from None
        signed = f"{parts[0]}.{parts[1]}".encode()
        for key in self.keys:
            try:
                key.verify(signature, signed)
                break
            except InvalidSignature:
                continue
        else:
            raise AssertionRefused("bad signature")
        claims = _json_object(parts[1])
        if claims is None:
            raise AssertionRefused("unreadable claims (a JSON object, UTF-8, no repeated key)")
        return claims
