"""A request as the admission decision sees it, and the two answers it can give.

``Handshake`` is built by a transport adapter (aiohttp today; emulation, the DMZ tunnel, picows
later) from whatever it parsed; ``security.admission.Admission.admit`` turns it into an ``Accept``
or a ``Reject`` without any I/O of its own, and the adapter writes the answer. So the whole
401/403/429/503 matrix can be tested in memory (tests/test_admission.py), h11-style.

A plain HTTP service answers a ``Reply``; one that needs the request's ``Body`` (the management API)
reads it when it decides to, and one may answer an ``Upgrade`` to run a WebSocket of its own on a
``Channel`` (the management console's feed).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from .channel import Channel
from .http import wants_upgrade
from .identity import Identity
from .peer import PeerIdentity

# ``Handshake.transport`` of a WebSocket emulation (WSE) create request.
EMULATED = "wse"


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
    secure: bool = False  # arrived over TLS here (TLS offloaded in front: ``Admission.offloaded_tls``)
    version: tuple[int, int] = (1, 1)
    transport: str = "websocket"  # which adapter it came on: "websocket", ``EMULATED`` ("wse"), later "tunnel"
    client: str = ""  # the client's transport connection ("ip:port"): multi-round schemes keep state under it
    authority: str = ""  # the Host header as sent (with its port): what an Origin is compared with; "": ``host``
    body: Body = field(default_factory=lambda: NoBody(), compare=False, repr=False)  # read only if a resource asks

    @property
    def emulated(self) -> bool:
        """A WebSocket emulation create request (``POST <path>/;e/cb``): admitted as an upgrade would be."""
        return self.transport == EMULATED

    @property
    def upgrade(self) -> bool:
        """Does it ask for a WebSocket (any ``Upgrade`` line naming it)? ``check_handshake`` checks the rest."""
        return wants_upgrade(self.headers)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def handshake_headers(pairs: list[tuple[str, str]] | CIMultiDict[str]) -> CIMultiDictProxy[str]:
    """Headers for a ``Handshake`` from ``(name, value)`` pairs (tests, and adapters without a multidict)."""
    return CIMultiDictProxy(pairs if isinstance(pairs, CIMultiDict) else CIMultiDict(pairs))


class Hold:
    """What an admitted request holds until the adapter lets go of it.

    A handshake-in-progress slot (``limits/handshakes``), released by ``handshake_done`` once the
    101 is sent, and the connection counts (per service, per client IP), released by ``release``
    when the upgrade handler returns (which also gives back a slot still held). Each runs once.
    """

    __slots__ = ("_handshake", "_connection")

    def __init__(self, handshake: Callable[[], None] | None = None, connection: Callable[[], None] | None = None):
        self._handshake = handshake
        self._connection = connection

    def handshake_done(self) -> None:
        done, self._handshake = self._handshake, None
        if done is not None:
            done()

    def release(self) -> None:
        leave, self._connection = self._connection, None
        try:
            if leave is not None:
                leave()
        finally:
            self.handshake_done()

    def transfer(self) -> Hold:
        """What this holds, moved to a new ``Hold`` for a connection that outlives its request (the picows
        data path): releasing this one is then a no-op."""
        moved = Hold(self._handshake, self._connection)
        self._handshake = self._connection = None
        return moved

    @property
    def held(self) -> bool:
        return self._handshake is not None or self._connection is not None


@dataclass(frozen=True, slots=True)
class Accept:
    """Admitted: who (``None`` for a service without a realm), until when, and what to add to the answer.

    ``headers`` go on the 101 (e.g. a login module's mutual-authentication token) or, for a plain
    HTTP service, on its response (CORS). ``hold`` must be released by the adapter (see ``Hold``).
    """

    identity: Identity | None = None
    deadline: float | None = None  # wall clock: when the connection must close (credentials, timeouts)
    deadline_reason: str = ""  # "session expired" or "authorization expired"
    headers: dict[str, str] = field(default_factory=dict)
    subprotocol: str | None = None  # None: the service chooses (or none is echoed)
    opened_at: float | None = None  # wall clock the deadline counts ``session-timeout`` from (None: now)
    hold: Hold = field(default_factory=Hold)


@dataclass(frozen=True, slots=True)
class Reject:
    """Refused: what the client sees (status, headers, a short text) and, apart, why (audit only)."""

    status: int
    text: str
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # for wsgate.audit; never sent to the client
    limit: str | None = None  # a refusal by a limit: the wsgate_limited label
    event: str | None = None  # left to the adapter's own accounting: ``BAD_REQUEST``, ``NO_CERTIFICATE``


# ``Reject.event``: a malformed request (the adapter counts it and audits it within its rate limit, as it does
# for requests its parser refuses), and a missing client certificate (the adapter's TLS audit).
BAD_REQUEST = "bad request"
NO_CERTIFICATE = "no client certificate"


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

    @classmethod
    def json(cls, data: object, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return cls(status, json.dumps(data).encode(), headers, "application/json")

    @classmethod
    def refusal(cls, reject: Reject) -> Reply:
        """A ``Reject`` answered as a plain HTTP response (control resources)."""
        return cls.text(reject.status, reject.text, tuple(reject.headers.items()))


class BodyTooLarge(Exception):
    """A request body over the adapter's size limit; the adapter answers 413 (not a service's error)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over {limit} bytes")
        self.limit = limit


class Body(Protocol):
    """A request's body, read from the client only when a service asks for it (the adapter's size limit).

    Both raise ``BodyTooLarge`` over the limit and ``ConnectionResetError`` if the client left before
    the body was complete; ``text`` raises ``ValueError`` for an unknown charset or bytes it cannot decode.
    """

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (``b""`` for none); ``limit``: a service's own, lower limit (``BodyTooLarge`` over it,
        before a declared ``Content-Length`` over it is read at all)."""
        ...

    async def text(self) -> str:
        """The body decoded with the charset of its ``Content-Type`` (UTF-8 if it names none)."""
        ...


class NoBody:
    """The ``Body`` of a request without one (in-memory tests; adapters whose requests carry none)."""

    async def read(self, limit: int | None = None) -> bytes:
        return b""

    async def text(self) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A plain HTTP service's answer: accept the request as a WebSocket and run ``serve`` on its ``Channel``.

    Not a registered connection (no session, access line or connection metrics): the management
    console's feed. The adapter sends the 101 without compression, answers the client's close frame
    through the channel, and closes the channel (1000) if ``serve`` returns without doing so.
    """

    serve: Callable[[Channel], Awaitable[None]]
    max_message_size: int = 4095  # the largest message the client may send (a larger one fails with 1009)
    heartbeat: float | None = 30.0  # ping this often (seconds); no pong within half of it closes the connection
