"""The life of one admitted connection in one place: who, since when, until when, and how it ends.

A ``LiveSession`` is created by the service runner once the 101 is sent and lives until the
channel closes. Deadline, refresh (new credentials without disconnecting), expiry and revocation
all act on it with one vocabulary: ``expire_at`` (re)arms the deadline, ``refresh`` swaps the
identity, ``end`` closes the channel from outside the service's loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from .channel import Channel
from .close import CloseCode
from .identity import Identity
from .peer import PeerIdentity

SLOW_DROP_GRACE = 2.0  # a slow consumer closed with 1008 is aborted if it has not taken the close by then


@dataclass(frozen=True, slots=True)
class Timeouts:
    """A realm's limits on a connection's life (``session-timeout``, ``authorization-timeout``; 0 or None: none)."""

    session: float | None = None
    authorization: float | None = None


def connection_deadline(identity: Identity, opened_at: float, timeouts: Timeouts) -> tuple[float | None, str]:
    """When a connection must close, and why: credential expiry or ``session-timeout`` since it
    opened ("session expired"), ``authorization-timeout`` since the credentials were last
    presented ("authorization expired"); the earliest wins."""
    limits: list[tuple[float, str]] = []
    if identity.expires_at is not None:
        limits.append((identity.expires_at, "session expired"))
    if timeouts.session:
        limits.append((opened_at + timeouts.session, "session expired"))
    if timeouts.authorization:
        limits.append((identity.authenticated_at + timeouts.authorization, "authorization expired"))
    if not limits:
        return None, ""
    deadline, reason = min(limits)
    return deadline, reason


class LiveSession:
    """One open connection: its identity and deadline, its channel, and the service that serves it."""

    __slots__ = (
        "id",
        "service",
        "remote",
        "peer",
        "identity",
        "channel",
        "started",
        "opened",
        "deadline",
        "context",
        "slow",
        "on_slow",
        "tls",
        "transport",
        "tunnel",
        "_expiry",
        "__weakref__",
    )

    def __init__(
        self,
        session_id: str,
        service: str,
        channel: Channel,
        remote: str,
        peer: PeerIdentity | None = None,
        identity: Identity | None = None,
        started: float | None = None,
    ) -> None:
        self.id = session_id
        self.service = service
        self.channel = channel
        self.remote = remote
        self.peer = peer
        self.identity = identity
        self.started = time.time() if started is None else started  # wall clock, for session-timeout
        self.opened = time.monotonic()
        self.deadline: float | None = None  # wall clock: when the credentials or session run out
        self.context: object = None  # what the service prepared before the upgrade (a dialled back end)
        self.slow = False  # dropped as a slow consumer
        self.on_slow: Callable[[LiveSession, str], None] | None = None  # the service counts and logs the drop
        self.tls: tuple[str | None, str | None] | None = None  # (protocol version, cipher) if over TLS
        # What carries it: "websocket" (native), or an adapter's name ("wse" emulation, "x-kaazing-handshake",
        # a DMZ tunnel): shown by the management API and metrics; services never branch on it.
        self.transport = "websocket"
        self.tunnel: str | None = None  # the id of the DMZ tunnel that carries it (both gateways show the same)
        self._expiry: asyncio.TimerHandle | None = None

    def expire_at(self, deadline: float | None, reason: str = "session expired") -> None:
        """Close with 1008 ``reason`` at wall-clock ``deadline`` (None: never); replaces an earlier deadline."""
        self.cancel_expiry()
        self.deadline = deadline
        if deadline is not None:
            delay = max(0.0, deadline - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self.expire, reason)

    def refresh(self, identity: Identity, timeouts: Timeouts) -> float | None:
        """Fresh credentials without disconnecting: the new identity and the deadline it allows."""
        self.identity = identity
        deadline, reason = connection_deadline(identity, self.started, timeouts)
        self.expire_at(deadline, reason)
        return deadline

    def expire(self, reason: str, grace: float = 2.0) -> None:
        """Close with 1008 ``reason`` now; a peer that does not answer within ``grace`` is aborted."""
        self.end(CloseCode.POLICY_VIOLATION, reason, grace)

    def end(self, code: int, reason: str, grace: float = 2.0) -> None:
        """Close with ``code`` now, from outside the service's loop; abort after ``grace``."""
        self.channel.close_soon(code, reason, grace)

    def drop_slow(self, why: str) -> None:
        """Close a peer that does not take what is sent: 1008 "too slow" now, aborted 2 s later."""
        if self.slow or self.channel.closed:
            return
        self.slow = True
        if self.on_slow is not None:
            self.on_slow(self, why)
        self.end(CloseCode.POLICY_VIOLATION, "too slow", SLOW_DROP_GRACE)

    def cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
