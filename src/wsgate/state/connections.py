"""The live connections of this gateway, found by selectors that are data, not lambdas.

A ``Selector`` names what to match (a connection id, a user, a realm session, a token digest, a
service); every field given must match. Being plain data, a selector can be logged, sent to another
process or published on Redis (the scale-out issue), which a closure over live objects cannot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ..core.identity import Identity


class Live(Protocol):
    """What the registry needs of a live connection (``core.session.LiveSession`` has it)."""

    @property
    def id(self) -> str: ...

    @property
    def service(self) -> str: ...

    @property
    def identity(self) -> Identity | None: ...

    def end(self, code: int, reason: str, grace: float = 2.0) -> None: ...


@dataclass(frozen=True, slots=True)
class Selector:
    """Which connections: every field that is set must match (an empty selector matches none)."""

    id: str | None = None
    user: str | None = None
    session: str | None = None  # a realm session (its cookie digest)
    token: str | None = None  # a bearer token's digest (``state.revocations.token_digest``)
    service: str | None = None

    @property
    def empty(self) -> bool:
        return (
            self.id is None
            and self.user is None
            and self.session is None
            and self.token is None
            and (self.service is None)
        )

    @classmethod
    def every(cls) -> Selector:
        """Every connection (an empty selector matches none, so that a missing field never selects all)."""
        return cls(service="*")

    def matches(self, live: Live) -> bool:
        if self.empty:
            return False
        if self.id is not None and live.id != self.id:
            return False
        if self.service is not None and self.service != "*" and live.service != self.service:
            return False
        identity = live.identity
        if self.user is not None or self.session is not None or self.token is not None:
            if identity is None:
                return False
            if self.user is not None and identity.user != self.user:
                return False
            if self.session is not None and identity.session != self.session:
                return False
            if self.token is not None and identity.token_digest != self.token:
                return False
        return True


L = TypeVar("L", bound=Live)


class ConnectionRegistry(Protocol[L]):
    """Where live connections are registered and found; ``end`` may reach other processes."""

    def add(self, live: L) -> None: ...

    def discard(self, live: L) -> None: ...

    def get(self, connection_id: str) -> L | None: ...

    def select(self, selector: Selector) -> list[L]: ...

    async def end(self, selector: Selector, code: int, reason: str, grace: float = 1.0) -> int: ...

    def __iter__(self) -> Iterator[L]: ...

    def __len__(self) -> int: ...


class MemoryConnections(Generic[L]):
    """This process's live connections, by id (the registry a shared one will mirror)."""

    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[str, L] = {}

    def add(self, live: L) -> None:
        self._by_id[live.id] = live

    def discard(self, live: L) -> None:
        if self._by_id.get(live.id) is live:
            del self._by_id[live.id]

    def get(self, connection_id: str) -> L | None:
        return self._by_id.get(connection_id)

    def select(self, selector: Selector) -> list[L]:
        if selector.id is not None:
            live = self._by_id.get(selector.id)
            return [live] if live is not None and selector.matches(live) else []
        return [live for live in self._by_id.values() if selector.matches(live)]

    async def end(self, selector: Selector, code: int, reason: str, grace: float = 1.0) -> int:
        """Close every connection ``selector`` matches with ``code`` now (aborted after ``grace``).

        Async as a shared registry's is (it reaches the other processes' connections too)."""
        matches = self.select(selector)
        for live in matches:
            live.end(code, reason, grace)
        return len(matches)

    def __iter__(self) -> Iterator[L]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
