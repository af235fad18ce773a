"""A request as the admission decision sees it, and the two answers it can give.

``Handshake`` is built by a transport adapter (aiohttp today; emulation, the DMZ tunnel, picows
later) from whatever it parsed; ``security.admission.Admission.admit`` turns it into an ``Accept``
or a ``Reject`` without any I/O of its own, and the adapter writes the answer. So the whole
401/403/429/503 matrix can be tested in memory (tests/test_admission.py), h11-style.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from .identity import Identity
from .peer import PeerIdentity


@dataclass(frozen=True, slots=True)
class Handshake:
    """One request head: a WebSocket upgrade, or a plain HTTP request to a service's control resources."""

    method: str
    host: str  # lowercased, no trailing dot; what routing used
    path: str
    headers: CIMultiDictProxy[str]
    query: MultiDictProxy[str] = field(default_factory=lambda: MultiDictProxy(MultiDict()))
    remote: str = "?"
    peer: PeerIdentity | None = None  # a client certificate OpenSSL verified
    secure: bool = False  # arrived over TLS (or TLS offloaded in front: see ``Route.offloaded_tls``)
    version: tuple[int, int] = (1, 1)
    transport: str = "websocket"  # which adapter it came on: "websocket", later "emulation", "tunnel"

    @property
    def upgrade(self) -> bool:
        """Does it ask for a WebSocket (any ``Upgrade`` line naming it)? ``check_handshake`` checks the rest."""
        return any(
            part.strip().lower() == "websocket"
            for line in self.headers.getall("Upgrade", ())
            for part in line.split(",")
        )

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def handshake_headers(pairs: list[tuple[str, str]] | CIMultiDict[str]) -> CIMultiDictProxy[str]:
    """Headers for a ``Handshake`` from ``(name, value)`` pairs (tests, and adapters without a multidict)."""
    return CIMultiDictProxy(pairs if isinstance(pairs, CIMultiDict) else CIMultiDict(pairs))


@dataclass(frozen=True, slots=True)
class Accept:
    """Admitted: who (``None`` for a service without a realm), until when, and what to add to the 101."""

    identity: Identity | None = None
    deadline: float | None = None  # wall clock: when the connection must close (credentials, timeouts)
    deadline_reason: str = ""  # "session expired" or "authorization expired"
    headers: dict[str, str] = field(default_factory=dict)  # e.g. a login module's mutual-authentication token
    subprotocol: str | None = None  # None: the service chooses (or none is echoed)
    opened_at: float | None = None  # wall clock the deadline counts ``session-timeout`` from (None: now)


@dataclass(frozen=True, slots=True)
class Reject:
    """Refused: what the client sees (status, headers, a short text) and, apart, why (audit only)."""

    status: int
    text: str
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # for wsgate.audit; never sent to the client
    limit: str | None = None  # a refusal by a limit: the wsgate_limited label


@dataclass(frozen=True, slots=True)
class Reply:
    """A plain HTTP answer (control resources, static files), written by the adapter as it is.

    ``headers`` is a sequence of pairs so a name may repeat (``Set-Cookie``); ``file`` is streamed by
    the adapter (sendfile, ranges, conditional requests) instead of ``body``.
    """

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None
    file: Path | None = None

    @classmethod
    def text(cls, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return cls(status, text.encode(), headers, "text/plain")
