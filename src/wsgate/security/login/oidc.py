"""``oidc`` login module (beyond Kaazing): the gateway as an OpenID Connect relying party.

The module knows the provider and the client: discovery from ``issuer`` (``/.well-known/openid-configuration``,
its ``issuer`` must be the configured one), the provider's JWKS through the ``jwt`` machinery (one JWKS
client, the same caching and refetch rules), the authorization URL (code flow, PKCE S256, state, nonce),
the token endpoint (authorization code and refresh token grants, ``client_secret_basic`` for a confidential
client, ``client_id`` in the form for a public one), and the checks on ID tokens (signature, ``iss``,
``aud``, ``azp``, ``exp``/``iat`` within the leeway, ``nonce``, ``at_hash``) and logout tokens (OIDC
Back-Channel Logout 1.0 §2.6). The protocol pieces are authlib's (grant URI, token request, PKCE challenge,
ID-token claim rules); signatures are PyJWT's through ``JwtLoginModule``.

As a login module in the chain it accepts a bearer JWT from the same issuer for this client (``aud`` =
``client-id``): non-browser clients keep using tokens. Browsers sign in through the realm's control
resources (``security.oidc``), which use this module. Whatever a client sends is at worst ``Failed``;
only a provider that does not answer is ``Unavailable`` (503).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jwt
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc.errors import JoseError

from ...config.values import parse_duration
from ...core.fetch import FetchError, HttpPort
from ...errors import ConfigError
from .base import Failed, LoginAttempt, LoginModuleType, Outcome, Unavailable, option, resolve
from .jwt import JwtLoginModule, claim_roles, numeric_date

PROVIDER_TIMEOUT = 5.0  # seconds for one request to the provider, connect to body
DISCOVERY_RETRY = 10.0  # a failed discovery is tried again at most this often
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
JWT_OPTIONS = ("leeway", "algorithms", "jwks-cache", "jwks-refetch-interval", "token-cache")  # passed to its jwt
DISCOVERED = "(discovered)"  # the jwt module's jwks-url until discovery names it


class OidcError(Exception):
    """A sign-in step refused: the reason goes to the audit log, the browser sees one 403."""


class ProviderUnavailable(OidcError):
    """The provider did not answer (or not usably): a 503, never access."""


@dataclass(frozen=True)
class Provider:
    """What discovery says about the provider, as far as the gateway uses it."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None = None
    backchannel_logout: bool = False
    iss_parameter: bool = False  # RFC 9207: every authorization response names its issuer


@dataclass(frozen=True)
class Tokens:
    """A token endpoint's answer, checked. Kept server-side only (``security.oidc``)."""

    id_token: str | None
    access_token: str | None
    refresh_token: str | None
    expires_at: float  # wall clock: the earliest of the ID token's exp and the access token's expires_in
    claims: Mapping[str, Any]  # the ID token's (verified), or the previous ones on a refresh without ID token


class OidcLoginModule:
    TYPE = LoginModuleType(
        name="oidc",
        options=(
            "issuer",
            "client-id",
            "client-secret-file",
            "scope",
            "user-claim",
            "roles-claim",
            "ca-file",
            "redirect-uri",
            "post-logout-redirect-uri",
            "leeway",
            "algorithms",
            "jwks-cache",
            "jwks-refetch-interval",
            "token-cache",
            "refresh-margin",
            "logout-token-max-age",
        ),
        strict=True,
        http=True,
        sessions=True,
    )

    def __init__(self, options: Mapping[str, str], path: str, base_dir: Path, http: HttpPort | None = None) -> None:
        """``http`` reaches the provider (the gateway passes ``transport.http_client.HTTP``)."""
        self.TYPE.check_options(options, path)
        self.path = path
        self.issuer = _https(options, "issuer", path)
        self.client_id = _required(options, "client-id", path)
        self.secret = _secret(base_dir, options.get("client-secret-file"), f"{path}/options/client-secret-file")
        self.scope = options.get("scope", "openid profile email")
        if "openid" not in self.scope.split():
            raise ConfigError(f"{path}/options/scope", "must include openid (it asks for an ID token)")
        self.user_claim = options.get("user-claim", "preferred_username")
        self.roles_claim = options.get("roles-claim", "groups")
        self.redirect_uri = _optional_url(options, "redirect-uri", path)
        self.post_logout_redirect_uri = _optional_url(options, "post-logout-redirect-uri", path)
        self.refresh_margin = option(options, "refresh-margin", "30s", path, parse_duration)
        self.logout_max_age = option(options, "logout-token-max-age", "2 minutes", path, parse_duration)
        self.tls = _tls(base_dir, options.get("ca-file"), f"{path}/options/ca-file")
        if http is None:
            raise TypeError("an oidc login module needs the http port to reach its provider")
        self.http = http
        jwt_options = {
            "issuer": self.issuer,
            "audience": self.client_id,
            "jwks-url": DISCOVERED,
            "user-claim": self.user_claim,
            "roles-claim": self.roles_claim,
            **{k: options[k] for k in JWT_OPTIONS if k in options},
        }
        self.jwt = JwtLoginModule(jwt_options, path, base_dir, fetch_json=http.fetcher(self.tls))
        self.leeway = self.jwt.leeway
        self.provider: Provider | None = None
        self._discovered_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def confidential(self) -> bool:
        return self.secret is not None

    # -- discovery ---------------------------------------------------------------------------

    async def discover(self) -> Provider:
        """The provider's metadata, fetched once (a failure is retried at most every ``DISCOVERY_RETRY`` s)."""
        if self.provider is not None:
            return self.provider
        async with self._lock:
            if self.provider is not None:
                return self.provider
            if time.monotonic() - self._discovered_at < DISCOVERY_RETRY:
                raise ProviderUnavailable("discovery failed recently; not retried yet")
            self._discovered_at = time.monotonic()
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                document = await self.http.get_json(url, PROVIDER_TIMEOUT, self.tls)
            except FetchError as exc:
                raise ProviderUnavailable(f"discovery at {url} failed: {exc}") from None
            self.provider = self.read_discovery(document)
            self.jwt.jwks_url = self.provider.jwks_uri
            return self.provider

    def read_discovery(self, document: Any) -> Provider:
        """OpenID Connect Discovery 1.0 §4.3: the document's ``issuer`` is exactly the configured one, and
        every endpoint the gateway uses is https (a document that says otherwise is a provider we do not use)."""
        if not isinstance(document, dict):
            raise ProviderUnavailable("discovery document is not a JSON object")
        if document.get("issuer") != self.issuer:
            raise ProviderUnavailable(f"discovery names issuer {document.get('issuer')!r}, not {self.issuer!r}")
        endpoints: dict[str, str | None] = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint"):
            value = document.get(name)
            if value is None and name == "end_session_endpoint":
                endpoints[name] = None
                continue
            if not isinstance(value, str) or urlsplit(value).scheme != "https":
                raise ProviderUnavailable(f"discovery: {name} is missing or not https")
            endpoints[name] = value
        return Provider(
            self.issuer,
            str(endpoints["authorization_endpoint"]),
            str(endpoints["token_endpoint"]),
            str(endpoints["jwks_uri"]),
            endpoints["end_session_endpoint"],
            document.get("backchannel_logout_supported") is True,
            document.get("authorization_response_iss_parameter_supported") is True,
        )

    # -- bearer tokens (non-browser clients) ---------------------------------------------------

    async def login(self, attempt: LoginAttempt) -> Outcome:
        """A bearer JWT from this provider for this client: checked as the ``jwt`` module checks tokens, except
        that a logout token (back-channel ``events``, or typed ``logout+jwt``) is never a credential."""
        token = attempt.credentials.bearer()
        if not token:
            return Failed("no token presented")
        try:
            await self.discover()
        except ProviderUnavailable as exc:
            return Unavailable(str(exc))
        claims = await self.jwt.bearer_claims(token)  # cached by the token's digest, as for the jwt module
        if not isinstance(claims, dict):
            return claims
        if "events" in claims or str(jwt.get_unverified_header(token).get("typ", "")).lower() == "logout+jwt":
            return Failed("a logout token is no bearer credential")
        return self.jwt.outcome(claims, attempt)

    # -- the code flow ---------------------------------------------------------------------------

    def authorization_url(self, provider: Provider, redirect_uri: str, state: str, nonce: str, verifier: str) -> str:
        """Where the browser signs in: code flow with PKCE S256, state and nonce (authlib builds the URI)."""
        url: str = prepare_grant_uri(
            provider.authorization_endpoint,
            self.client_id,
            "code",
            redirect_uri,
            self.scope,
            state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        return url

    async def exchange(self, code: str, redirect_uri: str, verifier: str, nonce: str) -> Tokens:
        """The authorization code grant; the ID token checked against ``nonce``."""
        provider = await self.discover()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        form["code_verifier"] = verifier
        answer = await self._token_request(provider, form)
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("grant answered no id_token")
        access_token = _optional_str(answer, "access_token")
        claims = await self.verify_id_token(id_token, nonce, access_token)
        return self._tokens(answer, id_token, access_token, claims)

    async def refresh(self, refresh_token: str, previous: Mapping[str, Any]) -> Tokens:
        """The refresh token grant. A refusal (``invalid_grant``) is ``OidcError``; no answer is
        ``ProviderUnavailable``. A new ID token must be the same user's (OIDC Core §12.2)."""
        provider = await self.discover()
        answer = await self._token_request(provider, {"grant_type": "refresh_token", "refresh_token": refresh_token})
        access_token = _optional_str(answer, "access_token")
        id_token = answer.get("id_token")
        claims = previous
        if isinstance(id_token, str):
            claims = await self.verify_id_token(id_token, None, access_token)
            if claims.get("sub") != previous.get("sub"):
                raise OidcError("refreshed ID token names another subject")
        else:
            id_token = None
        tokens = self._tokens(answer, id_token, access_token, claims)
        if tokens.refresh_token is None:  # the provider did not rotate it: keep the one we have
            tokens = Tokens(tokens.id_token, tokens.access_token, refresh_token, tokens.expires_at, tokens.claims)
        return tokens

    def _tokens(
        self, answer: Mapping[str, Any], id_token: str | None, access_token: str | None, claims: Mapping[str, Any]
    ) -> Tokens:
        now = time.time()
        limits = []
        if id_token is not None and isinstance(claims.get("exp"), int | float):
            limits.append(float(claims["exp"]))
        expires_in: Any = answer.get("expires_in")
        if numeric_date(expires_in) and expires_in > 0:  # finite: Infinity and 1e400 are no lifetime
            limits.append(now + float(expires_in))
        if not limits:
            raise OidcError("grant answered no lifetime (expires_in) and no new ID token")
        return Tokens(id_token, access_token, _optional_str(answer, "refresh_token"), min(limits), dict(claims))

    async def _token_request(self, provider: Provider, form: dict[str, str]) -> Mapping[str, Any]:
        headers: dict[str, str] = {}
        if self.secret is not None:  # client_secret_basic (RFC 6749 §2.3.1: each part form-urlencoded)
            pair = f"{quote(self.client_id, safe='')}:{quote(self.secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.client_id  # a public client names itself; PKCE binds the code to it
        try:
            status, answer = await self.http.post_form(
                provider.token_endpoint, form, headers, PROVIDER_TIMEOUT, self.tls
            )
        except FetchError as exc:
            raise ProviderUnavailable(f"grant request unreachable: {exc}") from None
        if status >= 500:
            raise ProviderUnavailable(f"grant answered {status}")
        if status != 200 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise OidcError(f"grant refused ({status}, {str(error)[:40]!r})")
        if str(answer.get("token_type", "")).lower() != "bearer":
            raise OidcError("grant answered a type other than Bearer")
        return answer

    async def verify_id_token(self, token: str, nonce: str | None, access_token: str | None) -> dict[str, Any]:
        """Signature (the provider's JWKS), ``iss``, ``aud``, ``exp`` by PyJWT; ``iat``, ``azp``, ``nonce``,
        ``at_hash`` and the essential claims by authlib's ``CodeIDToken`` rules."""
        claims = await self.jwt.verified_claims(token, ("exp", "iat", "iss", "aud", "sub"))
        if isinstance(claims, Unavailable):
            raise ProviderUnavailable(claims.reason)
        if isinstance(claims, Failed) and claims.reason.startswith("no key"):
            # a key rotated in since the last JWKS fetch, refetched at most every jwks-refetch-interval: a refresh
            # tries again (the provider just signed it), a sign-in is refused as any other (the user tries again)
            raise ProviderUnavailable(f"ID token: {_why(claims.reason)} (yet)")
        if isinstance(claims, Failed):
            raise OidcError(f"ID token: {_why(claims.reason)}")
        header = jwt.get_unverified_header(token)  # at_hash's algorithm: the signature was verified above
        params: dict[str, Any] = {"client_id": self.client_id, "access_token": access_token}
        if nonce is not None:  # None on a refresh: a refreshed ID token may carry the original nonce (OIDC Core §12.2)
            params["nonce"] = nonce
            if claims.get("nonce") != nonce:  # authlib skips an absent expected nonce; we sent one, it must be back
                raise OidcError("ID token nonce does not match")
        options: dict[str, Any] = {"iss": {"essential": True, "value": self.issuer}}
        try:
            CodeIDToken(claims, header, options, params).validate(time.time(), int(self.leeway))
        except (JoseError, ValueError, TypeError) as exc:
            raise OidcError(f"ID token rejected: {type(exc).__name__} {getattr(exc, 'claim', '')}".strip()) from None
        if float(claims["iat"]) > time.time() + self.leeway:
            raise OidcError("ID token issued in the future")
        return claims

    def identity_of(self, claims: Mapping[str, Any]) -> tuple[str, frozenset[str]]:
        """The user (``user-claim``, else ``sub``) and roles (``roles-claim``, a dotted path) of verified claims."""
        user = claims.get(self.user_claim)
        if not isinstance(user, str) or not user:
            user = claims.get("sub")
        if not isinstance(user, str) or not user:
            raise OidcError(f"ID token has no {self.user_claim!r} and no sub")
        return user, claim_roles(claims, self.roles_claim)

    async def verify_logout_token(self, token: str) -> tuple[str | None, str | None, str, float]:
        """A back-channel logout token (OIDC Back-Channel Logout 1.0 §2.6): ``(sid, sub, jti, iat)``."""
        claims = await self.jwt.verified_claims(token, ("iat", "iss", "aud", "jti"))
        if isinstance(claims, Unavailable):
            raise ProviderUnavailable(claims.reason)
        if isinstance(claims, Failed):
            raise OidcError(f"logout token: {_why(claims.reason)}")
        return logout_claims(claims, time.time(), self.logout_max_age, self.leeway)

    def end_session_url(self, provider: Provider, id_token: str | None, state: str) -> str | None:
        """RP-initiated logout: where the browser goes to end the provider's session too (None: nowhere)."""
        if provider.end_session_endpoint is None:
            return None
        params = [("client_id", self.client_id), ("state", state)]
        if id_token is not None:
            params.append(("id_token_hint", id_token))
        if self.post_logout_redirect_uri is not None:
            params.append(("post_logout_redirect_uri", self.post_logout_redirect_uri))
        url: str = add_params_to_uri(provider.end_session_endpoint, params)
        return url


def logout_claims(
    claims: Mapping[str, Any], now: float, max_age: float, leeway: float
) -> tuple[str | None, str | None, str, float]:
    """The checks a logout token needs beyond signature, ``iss`` and ``aud``, sans I/O: the back-channel
    ``events`` member, no ``nonce`` (an ID token is not a logout token), ``sid`` or ``sub``, a ``jti`` (replays
    are refused by it) and an ``iat`` within ``max_age`` of now."""
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
        raise OidcError("logout token has no back-channel logout event")
    if "nonce" in claims:
        raise OidcError("logout token carries a nonce")
    sid, sub, jti, iat = claims.get("sid"), claims.get("sub"), claims.get("jti"), claims.get("iat")
    sid = sid if isinstance(sid, str) and sid else None
    sub = sub if isinstance(sub, str) and sub else None
    if sid is None and sub is None:
        raise OidcError("logout token names neither sid nor sub")
    if not isinstance(jti, str) or not jti:
        raise OidcError("logout token has no jti")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or not now - max_age <= iat <= now + leeway:
        raise OidcError("logout token iat is outside the accepted window")
    return sid, sub, jti, float(iat)


def _why(reason: str) -> str:
    """The jwt module's reason without its leading "token " (the log redactor reads "token <word>" as a credential)."""
    return reason.removeprefix("token ")


def _optional_str(answer: Mapping[str, Any], name: str) -> str | None:
    value = answer.get(name)
    return value if isinstance(value, str) and value else None


def _required(options: Mapping[str, str], name: str, path: str) -> str:
    if not options.get(name):
        raise ConfigError(f"{path}/options/{name}", "is required")
    return options[name]


def _https(options: Mapping[str, str], name: str, path: str) -> str:
    value = _required(options, name, path)
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{path}/options/{name}", f"{value!r} must be an https URL without query or fragment")
    return value


def _optional_url(options: Mapping[str, str], name: str, path: str) -> str | None:
    value = options.get(name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
        raise ConfigError(f"{path}/options/{name}", f"{value!r} must be an absolute http(s) URL without fragment")
    return value


def _secret(base_dir: Path, name: str | None, element: str) -> str | None:
    """A confidential client's secret, from a file (never in the config text, so never in its diffs or logs)."""
    if name is None:
        return None
    path = resolve(base_dir, name)
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(element, f"cannot read {str(path)!r}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(element, f"{str(path)!r} is empty")
    return secret


def _tls(base_dir: Path, name: str | None, element: str) -> ssl.SSLContext | None:
    """The provider's CA (None: the system's trust). Hostname checking stays on."""
    if name is None:
        return None
    path = resolve(base_dir, name)
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(element, f"cannot load CA certificates from {str(path)!r}: {exc}") from None
