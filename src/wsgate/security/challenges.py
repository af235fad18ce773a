"""HTTP authentication on the wire, sans I/O (RFC 7235, RFC 7617, Kaazing's "Application" schemes).

A realm reads only what it is configured for: ``Authorization`` of its own scheme (Basic for a
Basic realm, Bearer/Token for a token realm, Negotiate for a Negotiate realm; anything else is
as if nothing was presented), its configured headers, query parameters and cookies, and (beyond
Kaazing, for browsers, token realms only) a ``Sec-WebSocket-Protocol`` offer ``wsgate.token.<token>``.
A credential given twice, or tokens that disagree, are ambiguous: the request is refused as a bad
request before any login module runs. Nothing here logs or keeps a secret longer than the request.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

SUBPROTOCOL_TOKEN_PREFIX = "wsgate.token."
_APPLICATION = "application "
TOKEN_SCHEMES = frozenset({"bearer", "token"})
_REALM_SCHEMES = {"basic": frozenset({"basic"}), "negotiate": frozenset({"negotiate"}), "token": TOKEN_SCHEMES}


class CredentialsError(ValueError):
    """The request carries garbled credentials (treated as a failed login)."""


class AmbiguousCredentials(ValueError):
    """A credential given twice, or tokens that disagree: 400, the gateway never guesses which one counts."""


@dataclass(frozen=True)
class Credentials:
    """What a request presents to one realm; ``tokens`` maps a source name to its value."""

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
        """A token: ``Authorization: Bearer|Token|Application Token x``, else the named token (all agree)."""
        if self.scheme in TOKEN_SCHEMES and self.parameter:
            return self.parameter
        return next(iter(self.tokens.values()), None)


def realm_schemes(challenge_scheme: str | None) -> frozenset[str]:
    """The ``Authorization`` schemes a realm reads: its own base scheme only (none without a challenge)."""
    base = (challenge_scheme or "").lower().removeprefix(_APPLICATION).strip()
    return _REALM_SCHEMES.get(base, frozenset())


def parse_authorization(value: str) -> tuple[str, str] | None:
    """``Basic abc`` / ``Application Basic abc`` → ``("basic", "abc")``; an empty value → None."""
    value = value.strip()
    if value.lower().startswith(_APPLICATION):
        value = value[len(_APPLICATION) :].lstrip()
    scheme, _, parameter = value.partition(" ")
    if not scheme:
        return None
    return scheme.lower(), parameter.strip()


def decode_basic(parameter: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(parameter, validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and a parameter with non-ASCII characters
        raise CredentialsError("Basic credentials are not base64 of UTF-8") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise CredentialsError("Basic credentials lack 'user:password'")
    return user, password


def gather_credentials(
    headers: Mapping[str, Sequence[str]],
    query: Mapping[str, Sequence[str]],
    schemes: frozenset[str],
    header_names: tuple[str, ...] = (),
    query_names: tuple[str, ...] = (),
    cookie_names: tuple[str, ...] = (),
    subprotocols: tuple[str, ...] | None = None,
) -> Credentials:
    """Collect one realm's credentials from a request; raise ``AmbiguousCredentials`` on any doubt.

    ``headers`` maps ``Authorization``, ``Cookie`` and each configured header to all its values,
    ``query`` each configured parameter to all its values; ``schemes`` is ``realm_schemes(...)``.
    ``subprotocols`` (the client's offers) is None for realms that do not read tokens there.
    """
    authorization = headers.get("Authorization", ())
    if len(authorization) > 1:
        raise AmbiguousCredentials("more than one Authorization header")
    parsed = parse_authorization(authorization[0]) if authorization else None
    scheme, parameter = parsed if parsed and parsed[0] in schemes else (None, None)
    tokens: dict[str, str] = {}

    def add(source: str, values: Sequence[str]) -> None:
        if len(values) > 1:
            raise AmbiguousCredentials(f"{source} given more than once")
        if values and values[0]:
            tokens[source] = values[0]

    for name in _unique(header_names):
        add(f"header:{name.lower()}", headers.get(name, ()))
    for name in dict.fromkeys(query_names):
        add(f"query:{name}", query.get(name, ()))
    if cookie_names:
        cookies = cookie_values(headers.get("Cookie", ()))
        for name in dict.fromkeys(cookie_names):
            add(f"cookie:{name}", cookies.get(name, []))
    if subprotocols is not None:
        offers = [o[len(SUBPROTOCOL_TOKEN_PREFIX) :] for o in subprotocols if is_token_offer(o)]
        add("subprotocol", offers)
    distinct = set(tokens.values()) | ({parameter} if scheme in TOKEN_SCHEMES and parameter else set())
    if len(distinct) > 1:
        raise AmbiguousCredentials(f"different tokens in {', '.join(sorted(tokens))}")
    return Credentials(scheme, parameter, tokens)


def _unique(names: Iterable[str]) -> list[str]:
    """Header names, each once (they are case-insensitive)."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.lower(), name)
    return list(seen.values())


def cookie_values(headers: Sequence[str]) -> dict[str, list[str]]:
    """Every value of every cookie in the ``Cookie`` header(s), so a duplicated name can be refused.

    (``http.cookies`` keeps the last of two same-named cookies silently.)
    """
    cookies: dict[str, list[str]] = {}
    for header in headers:
        for part in header.split(";"):
            name, sep, value = part.partition("=")
            if sep and name.strip():
                value = value.strip()
                if len(value) > 1 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                cookies.setdefault(name.strip(), []).append(value)
    return cookies


def offered_subprotocols(header: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (header or "").split(",") if p.strip())


def is_token_offer(offer: str) -> bool:
    """A credential offered as a subprotocol, however the client cased the prefix: whatever the
    realm reads as a token must also be what is kept from the back end and the logs."""
    return offer[: len(SUBPROTOCOL_TOKEN_PREFIX)].lower() == SUBPROTOCOL_TOKEN_PREFIX


def without_token_offers(offers: tuple[str, ...]) -> tuple[str, ...]:
    """The client's subprotocol offers minus credentials: never echoed back or sent to a back end."""
    return tuple(p for p in offers if not is_token_offer(p))


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


def set_cookie(name: str, value: str, **attributes: str | int | bool) -> str:
    """A ``Set-Cookie`` value, written as aiohttp's ``set_cookie`` writes it (``http.cookies``)."""
    jar: SimpleCookie = SimpleCookie()
    jar[name] = value
    morsel = jar[name]
    for key, attribute in attributes.items():
        morsel[key.replace("_", "-")] = attribute
    return morsel.output(header="")[1:]
