"""Revoked principals and tokens: refused until a wall-clock time, then forgotten.

Keys are plain strings chosen by the caller (the gateway uses ``user:<name>``, ``jti:<jti>`` and
``token:<sha256 hex>``); no key ever holds a secret. The interface is async so that a shared store
(Redis, a later issue) fits behind it unchanged.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Protocol

PRUNE_EVERY = 1024  # revocations between two sweeps of expired entries


def user_key(user: str) -> str:
    return f"user:{user}"


def token_digest(token: str) -> str:
    """What a token is known by without a ``jti``: the SHA-256 of a JWT's signed part (``header.payload``),
    else of the whole token.

    A JWT's signature can be spelled again without the key (base64 padding that PyJWT accepts, the
    other ECDSA signature ``(r, n - s)``), its signed part cannot: every valid spelling of a revoked
    JWT has the same digest.
    """
    signed, dot, _ = token.rpartition(".")
    return hashlib.sha256((signed if dot and signed.count(".") == 1 else token).encode()).hexdigest()


def token_key(token_id: str | None, digest: str) -> str:
    """A token is known by its JWT ``jti`` when it has one (any re-encoding is caught), else its SHA-256."""
    return f"jti:{token_id}" if token_id else f"token:{digest}"


def identity_keys(user: str | None, token_id: str | None, digest: str | None) -> list[str]:
    """Every key that, revoked, must refuse this identity."""
    keys = [user_key(user)] if user else []
    if token_id:
        keys.append(f"jti:{token_id}")
    if digest:
        keys.append(f"token:{digest}")
    return keys


class RevocationList(Protocol):
    async def revoke(self, key: str, until: float) -> None:
        """Refuse ``key`` until ``until`` (a later revocation of the same key never shortens it)."""
        ...

    async def revoked(self, keys: Iterable[str], now: float | None = None) -> str | None:
        """The first of ``keys`` that is revoked at ``now``, else None."""
        ...

    async def lift(self, key: str) -> bool:
        """Forget a revocation early; False if ``key`` was not revoked."""
        ...

    async def entries(self, now: float | None = None) -> dict[str, float]:
        """Every revocation still in force, key → until."""
        ...


class MemoryRevocations:
    """This process's revocations (``--workers N``: each worker has its own)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._writes = 0

    async def revoke(self, key: str, until: float) -> None:
        self._until[key] = max(until, self._until.get(key, until))
        self._writes += 1
        if self._writes % PRUNE_EVERY == 0:  # revocations nobody presents again must not pile up
            self.prune(time.time())

    async def revoked(self, keys: Iterable[str], now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        for key in keys:
            until = self._until.get(key)
            if until is not None and until > now:
                return key
        return None

    async def lift(self, key: str) -> bool:
        return self._until.pop(key, None) is not None

    async def entries(self, now: float | None = None) -> dict[str, float]:
        self.prune(time.time() if now is None else now)
        return dict(self._until)

    def prune(self, now: float) -> int:
        expired = [key for key, until in self._until.items() if until <= now]
        for key in expired:
            del self._until[key]
        return len(expired)
