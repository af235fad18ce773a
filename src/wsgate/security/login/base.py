"""The login-module interface: what a module gets and what it may answer.

A module is a small object with ``async login(attempt) -> Outcome``. It never
raises for a bad password: it answers ``Failed``. ``Unavailable`` means it could
not decide (LDAP down, JWKS unreachable): the realm then answers 503, never access.
``Challenged`` asks the client for another round (data for the 401's challenge).
``Busy`` is an ``Unavailable`` that says why: the realm's verifier is at its bound.
Blocking work (hashes, network) goes through ``attempt.verifier`` (see ``verifier.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from ...config.schema import LoginModuleSchema
from ...core.fetch import FetchJson, HttpPort
from ...errors import ConfigError
from ...state.rounds import DEFAULT_TTL, RoundStore
from ..challenges import Credentials, CredentialsError
from .outcomes import Busy, Challenged, Failed, Outcome, Succeeded, Unavailable
from .verifier import Verifier, shared_verifier

if TYPE_CHECKING:
    from ...core.peer import PeerIdentity

T = TypeVar("T")

__all__ = [
    "Busy",
    "Challenged",
    "Failed",
    "LoginAttempt",
    "LoginModule",
    "LoginModuleType",
    "Outcome",
    "Succeeded",
    "Unavailable",
]


@dataclass(frozen=True)
class Rounds:
    """One client's multi-round state in its realm (a Negotiate exchange): what the next round needs."""

    store: RoundStore
    key: str  # the client connection (each realm has its own store)
    owner: str = ""  # the client's address: the store bounds what one address may keep waiting

    async def load(self) -> object | None:
        """What the previous round kept for this client (taken: keep it again to carry it further)."""
        return await self.store.take(self.key)

    async def keep(self, state: object, ttl: float = DEFAULT_TTL) -> None:
        await self.store.put(self.key, state, ttl, self.owner)

    def of(self, module: str) -> Rounds:
        """This client's rounds with one module: every module of the chain runs on every round, and one must
        not take (and spoil) the state another kept, e.g. two ``kerberos5`` modules for two host names."""
        return Rounds(self.store, f"{self.key} {module}", self.owner)


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
    rounds: Rounds | None = None  # multi-round state of this client (None: the transport cannot tell clients apart)


@runtime_checkable
class LoginModule(Protocol):
    async def login(self, attempt: LoginAttempt) -> Outcome: ...


@dataclass(frozen=True, kw_only=True)
class LoginModuleType(LoginModuleSchema):
    """A login module type: its config schema and how to build it.

    Declared as the ``TYPE`` class attribute of the module class, which then is its ``factory``
    (called as ``Class(options, element_path, config_folder)``). A type wsgate does not implement
    yet has no class: it is declared with ``unsupported`` (see ``unsupported.py``).
    """

    factory: Callable[..., LoginModule] | None = field(default=None, compare=False, repr=False)
    ambient: str | None = None  # credentials a browser presents by itself to a realm with this module
    fetches: bool = False  # fetches documents over HTTP: the factory takes ``fetch_json`` (``core.fetch``)
    scheme: str | None = None  # the only ``Authorization`` scheme it reads: the realm must challenge with it
    after: str | None = None  # a module type that must come before it in the chain (Kaazing's gss after kerberos5)
    http: bool = False  # GETs and POSTs over HTTP: the factory takes ``http`` (``core.fetch.HttpPort``)
    sessions: bool = False  # signs browsers in with the realm session cookie: needs ``authorization-mode recycle``

    def __set_name__(self, owner: Callable[..., LoginModule], name: str) -> None:
        if self.factory is None:  # the class it is declared on is the module
            object.__setattr__(self, "factory", owner)

    def create(
        self,
        options: Mapping[str, str],
        path: str,
        base_dir: Path,
        fetch_json: FetchJson | None = None,
        http: HttpPort | None = None,
    ) -> LoginModule:
        """The module for one ``login-module`` element (``path``); errors name the element."""
        if self.unsupported is not None or self.factory is None:
            raise ConfigError(f"{path}/type", self.unsupported or f"the {self.name} login module has no factory")
        if self.http:
            return self.factory(options, path, base_dir, http=http)
        if self.fetches:
            return self.factory(options, path, base_dir, fetch_json=fetch_json)
        return self.factory(options, path, base_dir)

    def check_options(self, options: Mapping[str, str], path: str) -> None:
        """A strict module refuses the first option it does not take, naming what it does take."""
        for name in self.unknown_options(options):
            raise ConfigError(f"{path}/options/{name}", f"unknown option; valid: {self.valid_options}")


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


def option(options: Mapping[str, str], name: str, default: str, path: str, parse: Callable[[str], T]) -> T:
    """``options[name]`` (else ``default``) parsed by ``parse`` (a ``config.values`` parser); what it refuses
    is a ``ConfigError`` naming ``<path>/options/<name>``, not a traceback."""
    try:
        return parse(options.get(name, default))
    except ValueError as exc:
        raise ConfigError(f"{path}/options/{name}", str(exc)) from None


def resolve(base_dir: Path, name: str) -> Path:
    """A file option: absolute, or relative to the gateway config's folder."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else base_dir / path
