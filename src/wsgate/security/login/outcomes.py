"""What a login module may answer (see ``base.py`` for the interface and ``chain.py`` for how
answers combine). Apart from ``base`` so that the verifier, which answers ``Busy``, needs nothing else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Succeeded:
    """Principals whose names are roles (Kaazing semantics); ``user`` names the subject."""

    user: str | None
    principals: frozenset[str] = frozenset()
    expires_at: float | None = None  # wall-clock seconds, e.g. a JWT's exp
    token_id: str | None = None  # a JWT's jti: revocation targets it
    response: str | None = None  # a last token for the client (Negotiate mutual authentication), sent on the 101


@dataclass(frozen=True)
class Failed:
    reason: str  # audit log only, never sent to the client


@dataclass(frozen=True)
class Unavailable:
    reason: str


@dataclass(frozen=True)
class Busy(Unavailable):
    """Too many logins in progress in this realm: 503 with Retry-After, counted as a limit."""


@dataclass(frozen=True)
class Challenged:
    """Not yet: the client must answer ``data`` (e.g. a Negotiate continuation token), sent in the 401."""

    reason: str
    data: str


Outcome = Succeeded | Failed | Unavailable | Challenged  # Busy is an Unavailable
