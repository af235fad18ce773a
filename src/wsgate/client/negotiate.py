"""``NegotiateChallengeHandler``: Kerberos through SPNEGO (``Authorization: Negotiate``), with python-gssapi.

The client's own ticket cache supplies the credentials (the default one, ``KRB5CCNAME``, or the one
named by ``ccache``), as ``kinit`` left them: no password passes through the client. The target is
``HTTP@<host of the URL>`` unless ``service_principal`` names another. Each handshake gets its own
GSS security context: the first answer starts it, a 401 carrying a server token continues it (the
``next_handler`` of the answer), and the 101's ``WWW-Authenticate: Negotiate <token>`` must complete
it. That last step is mutual authentication: the server proves it holds the service key. By default
a 101 without that proof, or with a token the context rejects, drops the connection and raises
``MutualAuthenticationError``; ``mutual_authentication=False`` turns the check off (for a gateway
that sends no token on the 101).

python-gssapi is optional (``pip install 'wsgate[kerberos]'``) and imported when a handler is built.
GSS calls read the ticket cache and may ask the KDC for a service ticket: they run in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from collections.abc import Sequence
from typing import Any

from yarl import URL

from .challenges import ChallengeRequest, ChallengeResponse
from .connection import AuthenticationError, MutualAuthenticationError

SPNEGO_OID = "1.3.6.1.5.5.2"
INSTALL_HINT = "pip install 'wsgate[kerberos]'"


def _gssapi() -> Any:
    """python-gssapi, or an ``ImportError`` that says how to install it."""
    try:
        import gssapi
    except ImportError as exc:
        raise ImportError(f"Negotiate (Kerberos) needs python-gssapi: {INSTALL_HINT}") from exc
    return gssapi


def _words(exc: Exception) -> str:
    """A GSS error as one line: the minor status says what Kerberos found, unless it says nothing."""
    text = " ".join(str(exc).split())
    major, _, minor = text.partition(", Minor")
    minor = minor.strip(" ():0123456789")
    if minor and minor not in ("Success", "Unknown error"):
        return minor
    return major.partition(":")[2].strip() or text


def _parse(challenge: str) -> tuple[str, str | None]:
    """``("Negotiate" or "Application Negotiate", token or None)`` of a ``WWW-Authenticate`` value."""
    words = challenge.split()
    if len(words) >= 2 and words[0].lower() == "application":
        scheme, rest = " ".join(words[:2]), words[2:]
    else:
        scheme, rest = " ".join(words[:1]), words[1:]
    return scheme, (rest[0] if rest else None)


def _is_negotiate(scheme: str) -> bool:
    return scheme.split()[-1].lower() == "negotiate" if scheme else False


class NegotiateChallengeHandler:
    """Answers ``Negotiate`` and ``Application Negotiate`` with a SPNEGO token from the ticket cache.

    ``ccache``: a credential cache name (``"FILE:/tmp/krb5cc_app"``); default: the default cache.
    ``service_principal``: the gateway's principal, ``HTTP@gw.example.com`` (host-based service) or
    ``HTTP/gw.example.com@EXAMPLE.COM`` (a Kerberos principal name); default ``HTTP@<host of the URL>``.
    ``mutual_authentication``: require the server's proof on the 101 (default, and recommended).
    ``flags``: extra ``gssapi.RequirementFlag`` values for the context (delegation, for instance).
    """

    def __init__(
        self,
        *,
        ccache: str | None = None,
        service_principal: str | None = None,
        mutual_authentication: bool = True,
        flags: int = 0,
    ) -> None:
        self.gssapi = _gssapi()
        self.ccache = ccache
        self.service_principal = service_principal
        self.mutual_authentication = mutual_authentication
        self.flags = flags

    def can_handle(self, request: ChallengeRequest) -> bool:
        return request.scheme.lower() == "negotiate"

    async def handle(self, request: ChallengeRequest) -> ChallengeResponse | None:
        """A new exchange: its first token. A 401 that already carries a token (a round of an exchange
        this handshake did not start) is answered with a new exchange too; the server decides."""
        scheme, _ = _parse(request.challenge)
        exchange = _Exchange(self, request.location, scheme)
        return await exchange.start()

    def credentials(self) -> Any:
        """The initiator credentials of the ticket cache (blocking); ``AuthenticationError`` if there are none."""
        gssapi = self.gssapi
        try:
            if self.ccache is not None:
                creds = gssapi.Credentials(usage="initiate", store={"ccache": self.ccache})
            else:
                creds = gssapi.Credentials(usage="initiate")
            lifetime = creds.lifetime
        except gssapi.exceptions.ExpiredCredentialsError:
            raise AuthenticationError(401, f"the Kerberos ticket in {self._cache()} has expired; run kinit") from None
        except gssapi.exceptions.GSSError as exc:
            raise AuthenticationError(401, f"no Kerberos ticket ({self._cache()}): {_words(exc)}; run kinit") from None
        if lifetime is not None and lifetime <= 0:
            raise AuthenticationError(401, f"the Kerberos ticket in {self._cache()} has expired; run kinit")
        return creds

    def principal(self) -> str:
        """Who the ticket cache speaks for (``alice@EXAMPLE.COM``), blocking; ``AuthenticationError`` if no one."""
        return str(self.credentials().name)

    def target(self, location: str) -> Any:
        """The GSS name of the server: ``service_principal``, or ``HTTP@<host of location>``."""
        gssapi = self.gssapi
        if self.service_principal and "/" in self.service_principal:
            return gssapi.Name(self.service_principal, gssapi.NameType.kerberos_principal)
        return gssapi.Name(self.service_principal or f"HTTP@{URL(location).host}", gssapi.NameType.hostbased_service)

    def _cache(self) -> str:
        if self.ccache is not None:
            return self.ccache
        named = os.environ.get("KRB5CCNAME")
        return f"KRB5CCNAME={named}" if named else "the default credential cache"


class _Exchange:
    """One handshake's SPNEGO context: answers the server's continuation tokens and checks its last one."""

    def __init__(self, handler: NegotiateChallengeHandler, location: str, scheme: str) -> None:
        self.handler = handler
        self.location = location
        self.scheme = scheme or "Negotiate"
        self.context: Any = None

    async def start(self) -> ChallengeResponse:
        token = await asyncio.to_thread(self._first)
        return self._response(token)

    def _first(self) -> bytes:
        handler, gssapi = self.handler, self.handler.gssapi
        creds = handler.credentials()
        flags = handler.flags | (gssapi.RequirementFlag.mutual_authentication if handler.mutual_authentication else 0)
        target = handler.target(self.location)
        try:
            self.context = gssapi.SecurityContext(
                name=target,
                mech=gssapi.OID.from_int_seq(SPNEGO_OID),
                usage="initiate",
                creds=creds,
                flags=flags,
            )
            token = self.context.step()
        except gssapi.exceptions.GSSError as exc:
            raise AuthenticationError(
                401, f"{self.location}: no Kerberos service ticket for {target}: {_words(exc)}"
            ) from None
        if not token:
            raise AuthenticationError(401, f"{self.location}: the Kerberos context produced no token")
        return bytes(token)

    def _response(self, token: bytes) -> ChallengeResponse:
        value = bytearray(f"{self.scheme} ".encode()) + base64.b64encode(token)
        return ChallengeResponse(value, next_handler=self)

    def _decode(self, token: str) -> bytes:
        try:
            return base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            raise AuthenticationError(401, f"{self.location}: the server's Negotiate token is not base64") from None

    # -- the next round: a 401 with the server's token ----------------------------------------------------

    def can_handle(self, request: ChallengeRequest) -> bool:
        scheme, token = _parse(request.challenge)
        return _is_negotiate(scheme) and token is not None and self.context is not None and not self.context.complete

    async def handle(self, request: ChallengeRequest) -> ChallengeResponse | None:
        _, token = _parse(request.challenge)
        assert token is not None
        answer = await asyncio.to_thread(self._step, self._decode(token))
        if not answer:  # our side is done, yet the server asks again: nothing more to say
            raise AuthenticationError(401, f"{self.location}: the server asked for another Negotiate round")
        return self._response(answer)

    def _step(self, token: bytes) -> bytes | None:
        gssapi = self.handler.gssapi
        try:
            answer = self.context.step(token)
        except gssapi.exceptions.GSSError as exc:
            raise AuthenticationError(401, f"{self.location}: the server's Negotiate token: {_words(exc)}") from None
        return bytes(answer) if answer else None

    # -- the 101: mutual authentication -------------------------------------------------------------------

    async def verify(self, location: str, challenges: Sequence[str]) -> None:
        """Complete the context with the 101's token; ``MutualAuthenticationError`` unless the server proved itself."""
        if not self.handler.mutual_authentication:
            return
        if self.context.complete:  # the server's proof came with an earlier round
            self._check_mutual(location)
            return
        tokens = [token for scheme, token in map(_parse, challenges) if _is_negotiate(scheme) and token]
        if not tokens:
            raise MutualAuthenticationError(
                101, f"{location}: the server did not prove its identity (no Negotiate token on the 101)"
            )
        if len(tokens) > 1:
            raise MutualAuthenticationError(
                101, f"{location}: the server did not prove its identity ({len(tokens)} Negotiate tokens on the 101)"
            )
        try:
            token = self._decode(tokens[0])
        except AuthenticationError as exc:
            raise MutualAuthenticationError(101, str(exc)) from None
        await asyncio.to_thread(self._finish, location, token)

    def _finish(self, location: str, token: bytes) -> None:
        gssapi = self.handler.gssapi
        context = self.context
        try:
            answer = context.step(token)
        except gssapi.exceptions.GSSError as exc:
            raise MutualAuthenticationError(
                101, f"{location}: the server did not prove its identity: {_words(exc)}"
            ) from None
        if answer or not context.complete:
            raise MutualAuthenticationError(
                101, f"{location}: the server did not prove its identity (its token did not complete the exchange)"
            )
        self._check_mutual(location)

    def _check_mutual(self, location: str) -> None:
        if self.handler.gssapi.RequirementFlag.mutual_authentication not in self.context.actual_flags:
            raise MutualAuthenticationError(
                101, f"{location}: the server did not prove its identity (no mutual authentication)"
            )
