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
from .outcomes import Busy, Challenged, Failed, Outcome, Succeeded, Unavailable
from .verifier import Verifier, shared_verifier

if TYPE_CHECKING:
    from ...core.peer import PeerIdentity

__all__ = ["Busy", "Challenged", "Failed", "LoginAttempt", "LoginModule", "Outcome", "Succeeded", "Unavailable"]


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
    verifier: Verifier = field(default_factory=shared_verifier)  # the realm's; runs blocking work off the loop


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
