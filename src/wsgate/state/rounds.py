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
DEFAULT_PER_OWNER = 16  # rounds one client address may have waiting: one address cannot push out the others'


class RoundStore(Protocol):
    """Where multi-round state waits for the client's next request."""

    async def put(self, key: str, state: object, ttl: float = DEFAULT_TTL, owner: str = "") -> None:
        """Keep ``state`` under ``key``; ``owner`` (the client's address) bounds what one client may keep."""
        ...

    async def take(self, key: str) -> object | None:
        """The state kept under ``key`` (removed: a round is answered once), or None."""
        ...


class MemoryRounds:
    """This process's round state (``RoundStore``): bounded in all and per owner, expiring, taken once.

    Without the per-owner bound, one address opening first rounds from many source ports would push
    every other client's waiting round out of the store (the oldest go first at the bound).
    """

    __slots__ = ("_entries", "_owners", "limit", "per_owner")

    def __init__(self, limit: int = DEFAULT_LIMIT, per_owner: int = DEFAULT_PER_OWNER) -> None:
        self._entries: OrderedDict[str, tuple[float, object, str]] = OrderedDict()
        self._owners: dict[str, OrderedDict[str, None]] = {}
        self.limit = limit
        self.per_owner = per_owner

    async def put(self, key: str, state: object, ttl: float = DEFAULT_TTL, owner: str = "") -> None:
        self._drop(key)
        keys = self._owners.setdefault(owner, OrderedDict())
        while len(keys) >= self.per_owner:
            self._drop(next(iter(keys)))
            keys = self._owners.setdefault(owner, OrderedDict())
        self._entries[key] = (time.monotonic() + ttl, state, owner)
        keys[key] = None
        while len(self._entries) > self.limit:
            self._drop(next(iter(self._entries)))

    async def take(self, key: str) -> object | None:
        entry = self._drop(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def _drop(self, key: str) -> tuple[float, object, str] | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._owners.get(entry[2])
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del self._owners[entry[2]]
        return entry

    def __len__(self) -> int:
        return len(self._entries)
