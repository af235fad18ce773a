"""HTTP authentication on the wire, sans I/O (RFC 7235, RFC 7617, Kaazing's "Application" schemes).

Credentials are gathered from every place a realm allows: ``Authorization``,
configured headers, query parameters and cookies, and (beyond Kaazing, for
browsers) a ``Sec-WebSocket-Protocol`` offer ``wsgate.token.<token>``.
Nothing here logs or keeps a secret longer than the request.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

SUBPROTOCOL_TOKEN_PREFIX = "wsgate.token."
_APPLICATION = "application "


class CredentialsError(ValueError):
    """The request carries garbled or ambiguous credentials (treated as a failed login)."""


@dataclass(frozen=True)
class Credentials:
    """Everything a request presents; ``tokens`` maps a source name to its value."""

    scheme: str | None = None  # "basic", "bearer", "negotiate", "token" ... lower case, no "application "
    parameter: str | None = field(default=None, repr=False)
    tokens: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def empty(self) -> bool:
        return self.scheme is None and not self.tokens

    def basic(self) -> tuple[str, str] | None:
        """``(user, password)`` from Basic credentials, or None."""
        if self.scheme != "basic" or not self.parameter:
            return None
        return decode_basic(self.parameter)

    def bearer(self) -> str | None:
        """A token: ``Authorization: Bearer|Token|Application Token x``, else the first named token."""
        if self.scheme in ("bearer", "token") and self.parameter:
            return self.parameter
        return next(iter(self.tokens.values()), None)


def parse_authorization(value: str) -> tuple[str, str]:
    """``Basic abc`` / ``Application Basic abc`` → ``("basic", "abc")``."""
    value = value.strip()
    if value.lower().startswith(_APPLICATION):
        value = value[len(_APPLICATION) :].lstrip()
    scheme, _, parameter = value.partition(" ")
    if not scheme:
        raise CredentialsError("empty Authorization header")
    return scheme.lower(), parameter.strip()


def decode_basic(parameter: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(parameter, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise CredentialsError("Basic credentials are not base64 of UTF-8") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise CredentialsError("Basic credentials lack 'user:password'")
    return user, password


def gather_credentials(
    headers: Mapping[str, str],
    header_values: list[str],
    query: Mapping[str, list[str]],
    header_names: tuple[str, ...] = (),
    query_names: tuple[str, ...] = (),
    cookie_names: tuple[str, ...] = (),
    subprotocols: tuple[str, ...] = (),
) -> Credentials:
    """Collect credentials from one request; any duplicate is refused (no guessing which one counts).

    ``header_values`` are the raw ``Authorization`` values (to catch duplicates),
    ``query`` maps each query parameter to all its values.
    """
    scheme = parameter = None
    if len(header_values) > 1:
        raise CredentialsError("more than one Authorization header")
    if header_values:
        scheme, parameter = parse_authorization(header_values[0])
    tokens: dict[str, str] = {}

    def add(source: str, value: str) -> None:
        if source in tokens:
            raise CredentialsError(f"{source} given more than once")
        if value:
            tokens[source] = value

    for name in header_names:
        if name in headers:
            add(f"header:{name.lower()}", headers[name])
    for name in query_names:
        values = query.get(name, [])
        if len(values) > 1:
            raise CredentialsError(f"query parameter {name} given more than once")
        if values:
            add(f"query:{name}", values[0])
    if cookie_names and "Cookie" in headers:
        cookies = _cookies(headers["Cookie"])
        for name in cookie_names:
            if name in cookies:
                add(f"cookie:{name}", cookies[name])
    for offer in subprotocols:
        if offer.startswith(SUBPROTOCOL_TOKEN_PREFIX):
            add("subprotocol", offer[len(SUBPROTOCOL_TOKEN_PREFIX) :])
    return Credentials(scheme, parameter, tokens)


def _cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        raise CredentialsError("unparsable Cookie header") from None
    return {name: morsel.value for name, morsel in jar.items()}


def offered_subprotocols(header: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (header or "").split(",") if p.strip())


def without_token_offers(offers: tuple[str, ...]) -> tuple[str, ...]:
    """The client's subprotocol offers minus credentials: never echoed back or sent to a back end."""
    return tuple(p for p in offers if not p.startswith(SUBPROTOCOL_TOKEN_PREFIX))


def challenge_header(scheme: str, realm_description: str, plain_http: bool = False) -> str:
    """The ``WWW-Authenticate`` value Kaazing sends (reference §3.2).

    ``Application Token`` carries no realm; plain HTTP resources drop the ``Application``
    prefix of Basic/Negotiate so that browsers show their own login dialog.
    """
    if scheme == "Application Token":
        return scheme
    if plain_http and scheme.startswith("Application "):
        scheme = scheme[len("Application ") :]
    if scheme.endswith("Negotiate"):
        return scheme
    escaped = realm_description.replace("\\", "\\\\").replace('"', '\\"')
    return f'{scheme} realm="{escaped}"'
