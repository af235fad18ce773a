"""The login-module interface: what a module gets and what it may answer.

A module is a small object with ``async login(attempt) -> Outcome``. It never
raises for a bad password: it answers ``Failed``. ``Unavailable`` means it could
not decide (LDAP down, JWKS unreachable): the realm then answers 503, never access.
``Challenged`` asks the client for another round (data for the 401's challenge).
``Busy`` is an ``Unavailable`` that says why: the realm's verifier is at its bound.
Blocking work (hashes, network) goes through ``attempt.verifier`` (see ``verifier.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..challenges import Credentials, CredentialsError

if TYPE_CHECKING:
    from ..tls import PeerIdentity
    from .verifier import Verifier


def _shared_verifier() -> Verifier:
    from .verifier import shared_verifier

    return shared_verifier()


@dataclass
class LoginAttempt:
    """One authentication attempt as modules see it.

    ``shared`` is JAAS shared state: a module may leave the user name there for
    later modules (e.g. a role module after a token module).
    """

    credentials: Credentials
    remote: str
    peer: PeerIdentity | None = None
    shared: dict[str, str] = field(default_factory=dict)
    verifier: Verifier = field(default_factory=_shared_verifier)  # the realm's; runs blocking work off the loop


@dataclass(frozen=True)
class Succeeded:
    """Principals whose names are roles (Kaazing semantics); ``user`` names the subject."""

    user: str | None
    principals: frozenset[str] = frozenset()
    expires_at: float | None = None  # wall-clock seconds, e.g. a JWT's exp
    token_id: str | None = None  # a JWT's jti: revocation targets it


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


@runtime_checkable
class LoginModule(Protocol):
    async def login(self, attempt: LoginAttempt) -> Outcome: ...


class LoginModuleFactory(Protocol):
    def __call__(self, options: Mapping[str, str], path: str) -> LoginModule: ...


def user_and_password(attempt: LoginAttempt) -> tuple[str, str] | Failed:
    """Basic credentials, else a name and password an earlier module left in shared state (JAAS)."""
    try:
        basic = attempt.credentials.basic()
    except CredentialsError as exc:
        return Failed(str(exc))
    if basic is not None:
        return basic
    name, password = attempt.shared.get("name"), attempt.shared.get("password")
    if name is None or password is None:
        return Failed("no user name and password presented")
    return name, password


def resolve(base_dir: Path, name: str) -> Path:
    """A file option: absolute, or relative to the gateway config's folder."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else base_dir / path
