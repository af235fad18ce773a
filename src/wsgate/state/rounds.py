"""Per-client state of multi-round authentication schemes (SPNEGO/Negotiate), between two requests.

A login module that answers ``Challenged`` (another round) may keep what the next round needs
(a GSS context) under the client's key: ``Handshake.client``, the client's transport connection, as
browsers send every round of one Negotiate exchange on one connection. State is taken once
(``take``), expires after ``ttl`` seconds, and the store is bounded: a client that opens rounds it
never finishes cannot grow it past ``limit`` (the oldest entries go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

DEFAULT_TTL = 30.0  # seconds a client has to answer a challenge
DEFAULT_LIMIT = 10_000


class RoundStore(Protocol):
    """Where multi-round state waits for the client's next request."""

    async def put(self, key: str, state: object, ttl: float = DEFAULT_TTL) -> None: ...

    async def take(self, key: str) -> object | None:
        """The state kept under ``key`` (removed: a round is answered once), or None."""
        ...


class MemoryRounds:
    """This process's round state (``RoundStore``): bounded, expiring, taken once."""

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._entries: OrderedDict[str, tuple[float, object]] = OrderedDict()
        self.limit = limit

    async def put(self, key: str, state: object, ttl: float = DEFAULT_TTL) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (time.monotonic() + ttl, state)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    async def take(self, key: str) -> object | None:
        entry = self._entries.pop(key, None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)
