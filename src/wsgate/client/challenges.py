"""Client-side challenge handlers, after Kaazing's framework (reference §5).

A handler answers a ``WWW-Authenticate`` challenge with an ``Authorization``
value. ``BasicChallengeHandler`` asks a login callback for user and password
(per realm if you like), ``TokenChallengeHandler`` asks a callback for a fresh
token, ``DispatchChallengeHandler`` picks a handler by URL pattern; ``NegotiateChallengeHandler``
(in ``negotiate``) answers Kerberos with the caller's ticket cache.
Credentials are held in a ``bytearray`` and zeroed once the header is built.

A scheme of several rounds (SPNEGO) answers with a ``ChallengeResponse`` that names its
``next_handler``, as Kaazing's does: the next 401 of the same handshake goes to it first. If that handler
also has ``verify`` (``ServerVerifier``), the client gives it the 101's ``WWW-Authenticate`` values
so that it can check the server's proof (Kerberos mutual authentication) before any message is sent.
"""

from __future__ import annotations

import base64
import fnmatch
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

_REALM = re.compile(r'realm="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class ChallengeRequest:
    """A 401's challenge: ``location`` is the URL that answered, ``challenge`` the WWW-Authenticate value."""

    location: str
    challenge: str

    @property
    def scheme(self) -> str:
        """``Basic``, ``Negotiate`` or ``Token`` (the ``Application`` prefix removed)."""
        words = self.challenge.split()
        if words and words[0].lower() == "application" and len(words) > 1:
            return words[1]
        return words[0] if words else ""

    @property
    def realm(self) -> str | None:
        match = _REALM.search(self.challenge)
        return match.group(1).replace('\\"', '"').replace("\\\\", "\\") if match else None


class ChallengeResponse:
    """An ``Authorization`` value; ``clear()`` wipes the secret bytes it was built from.

    ``next_handler``: who answers the next challenge of this handshake (another round of the same
    exchange); ``None`` for one-round schemes.
    """

    def __init__(self, credentials: bytearray | None, next_handler: ChallengeHandler | None = None) -> None:
        self._credentials = credentials
        self.next_handler = next_handler

    @property
    def authorization(self) -> str | None:
        return self._credentials.decode() if self._credentials is not None else None

    def clear(self) -> None:
        if self._credentials is not None:
            self._credentials[:] = bytes(len(self._credentials))
            self._credentials = None


@runtime_checkable
class ChallengeHandler(Protocol):
    def can_handle(self, request: ChallengeRequest) -> bool: ...

    async def handle(self, request: ChallengeRequest) -> ChallengeResponse | None: ...


@runtime_checkable
class ServerVerifier(Protocol):
    """A ``next_handler`` that checks the server's proof on the 101 (raises ``AuthenticationError`` if it fails)."""

    async def verify(self, location: str, challenges: Sequence[str]) -> None: ...


Credentials = tuple[str, str]
LoginHandler = Callable[[ChallengeRequest], Credentials | None | Awaitable[Credentials | None]]
TokenProvider = Callable[[ChallengeRequest], str | None | Awaitable[str | None]]


async def _call(callback: Callable[[ChallengeRequest], object], request: ChallengeRequest) -> object:
    result = callback(request)
    return await result if inspect.isawaitable(result) else result


class BasicChallengeHandler:
    """Answers ``Basic`` and ``Application Basic`` with credentials from a login handler."""

    def __init__(self, login_handler: LoginHandler | None = None) -> None:
        self.login_handler = login_handler
        self.realm_handlers: dict[str, LoginHandler] = {}

    def set_realm_login_handler(self, realm: str, handler: LoginHandler) -> None:
        self.realm_handlers[realm] = handler

    def can_handle(self, request: ChallengeRequest) -> bool:
        return request.scheme.lower() == "basic"

    async def handle(self, request: ChallengeRequest) -> ChallengeResponse | None:
        handler = self.realm_handlers.get(request.realm or "", self.login_handler)
        if handler is None:
            return None
        credentials = await _call(handler, request)
        if credentials is None:
            return None
        user, password = cast(Credentials, credentials)
        secret = bytearray(f"{user}:{password}".encode())
        value = bytearray(b"Basic ") + base64.b64encode(secret)
        secret[:] = bytes(len(secret))
        return ChallengeResponse(value)


class TokenChallengeHandler:
    """Answers ``Application Token`` (and ``Bearer``) with a token from a callback: refreshes get a fresh one."""

    def __init__(self, token_provider: TokenProvider) -> None:
        self.token_provider = token_provider

    def can_handle(self, request: ChallengeRequest) -> bool:
        return request.scheme.lower() in ("token", "bearer")

    async def handle(self, request: ChallengeRequest) -> ChallengeResponse | None:
        token = await _call(self.token_provider, request)
        if not token:
            return None
        return ChallengeResponse(bytearray(b"Bearer " + str(token).encode()))


class DispatchChallengeHandler:
    """Chooses a handler by the URL that challenged: ``register("wss://gw.example.com/*", handler)``.

    A multi-round handler (``NegotiateChallengeHandler``) keeps its rounds: its answer names the
    ``next_handler``, which the client asks directly for the rest of that handshake.
    """

    def __init__(self) -> None:
        self.routes: list[tuple[str, ChallengeHandler]] = []

    def register(self, location_pattern: str, handler: ChallengeHandler) -> DispatchChallengeHandler:
        self.routes.append((location_pattern, handler))
        return self

    def _handler(self, request: ChallengeRequest) -> ChallengeHandler | None:
        for pattern, handler in self.routes:
            if fnmatch.fnmatchcase(request.location, pattern) and handler.can_handle(request):
                return handler
        return None

    def can_handle(self, request: ChallengeRequest) -> bool:
        return self._handler(request) is not None

    async def handle(self, request: ChallengeRequest) -> ChallengeResponse | None:
        handler = self._handler(request)
        return await handler.handle(request) if handler else None
