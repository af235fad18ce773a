"""Realm sessions (``authorization-mode recycle``): single sign-on by an opaque cookie.

The cookie value is 256 random bits; the store keeps only its SHA-256, so a
memory dump or a log line never yields a usable session. ``SessionStore`` is async so
that a store shared by several gateway processes (Redis, the scale-out issue) fits behind
it; ``MemorySessions`` keeps them in this process.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import Protocol

from ..core.identity import Identity

DEFAULT_SESSION_TTL = 3600.0


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def cookie_name(realm: str) -> str:
    return "wsgate_" + re.sub(r"[^A-Za-z0-9_-]", "_", realm)


@dataclass
class Session:
    identity: Identity
    expires_at: float  # wall clock


class SessionStore(Protocol):
    """Where a realm's sessions live, keyed by the digest of their cookie."""

    async def issue(self, identity: Identity, expires_at: float) -> tuple[str, Session]:
        """A new session: the cookie value (returned once, never stored) and the session."""
        ...

    async def lookup(self, token: str) -> Session | None: ...

    async def find(self, key: str) -> Session | None:
        """The session by its key (the cookie's digest), unexpired, else None (another node's refresh, told by key)."""
        ...

    async def renew(self, key: str, identity: Identity, expires_at: float) -> Session: ...

    async def extend(self, key: str, identity: Identity, expires_at: float) -> Session | None:
        """``renew`` only if the session still exists (None if it was dropped or expired meanwhile): a renewal
        decided before an await must not bring back a session that a logout ended during it."""
        ...

    async def drop(self, key: str) -> Session | None: ...

    async def drop_user(self, user: str) -> int: ...

    def __len__(self) -> int: ...


class MemorySessions:
    """This process's sessions (``SessionStore``)."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    async def issue(self, identity: Identity, expires_at: float) -> tuple[str, Session]:
        if len(self._sessions) % 1024 == 1023:  # expired sessions nobody presents again must not pile up
            self.prune()
        token = secrets.token_urlsafe(32)
        key = digest(token)
        session = Session(replace(identity, session=key, expires_at=expires_at), expires_at)
        self._sessions[key] = session
        return token, session

    async def lookup(self, token: str) -> Session | None:
        key = digest(token)
        session = self._sessions.get(key)
        if session is not None and session.expires_at <= time.time():
            del self._sessions[key]
            return None
        return session

    async def renew(self, key: str, identity: Identity, expires_at: float) -> Session:
        session = Session(replace(identity, session=key, expires_at=expires_at), expires_at)
        self._sessions[key] = session
        return session

    async def find(self, key: str) -> Session | None:
        session = self._sessions.get(key)
        return session if session is not None and session.expires_at > time.time() else None

    async def extend(self, key: str, identity: Identity, expires_at: float) -> Session | None:
        current = self._sessions.get(key)
        if current is None or current.expires_at <= time.time():
            return None
        return await self.renew(key, identity, expires_at)

    def prune(self) -> int:
        now = time.time()
        expired = [k for k, s in self._sessions.items() if s.expires_at <= now]
        for key in expired:
            del self._sessions[key]
        return len(expired)

    def __len__(self) -> int:
        return len(self._sessions)

    async def drop(self, key: str) -> Session | None:
        return self._sessions.pop(key, None)

    async def drop_user(self, user: str) -> int:
        keys = [k for k, s in self._sessions.items() if s.identity.user == user]
        for key in keys:
            del self._sessions[key]
        return len(keys)
