"""Who a connection or a request belongs to, as a realm established it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection belongs to, as the realm established it (slotted: every live connection holds one)."""

    realm: str
    user: str | None
    roles: frozenset[str]
    expires_at: float | None  # wall-clock seconds; the connection must not outlive it
    token_digest: str | None = None  # the bearer token's ``token_digest``, so revocation can target it
    authenticated_at: float = 0.0  # when the login chain last accepted fresh credentials
    session: str | None = None  # the realm session (cookie digest) this identity came from
    token_id: str | None = None  # the JWT's jti, so revocation can target the token however it is encoded
