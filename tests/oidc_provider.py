"""A real OpenID Connect provider on loopback for tests (authlib's server components in Flask, over HTTPS).

Authorization code flow with PKCE (S256), rotating refresh tokens, ID tokens signed RS256 with ``sid``,
a login form with a provider session cookie (single sign-on, ``prompt=login``/``none``, ``max_age``), userinfo,
RP-initiated logout (authlib's EndSessionEndpoint) and OpenID Connect Back-Channel Logout 1.0, which authlib
has no server side for, so this module builds and POSTs the logout tokens itself. Knobs let a test issue a
tampered ID token, a forged logout token, or revoke refresh tokens. State lives in memory, under one lock:
werkzeug serves each request in its own thread.

Use the session-scoped ``oidc_provider`` fixture (registered in tests/conftest.py,
then ``# noqa: F811`` where a function takes it) with per-test user names and client ids, or ``OidcProvider(folder)``
in a script; ``close()`` stops it. Behaviour a relying party's tests may rely on:

- The fixture's certificate comes from the tests' CA (conftest ``ca``): ``ca_pem`` is that CA, the provider trusts it
  for back-channel POSTs (``backchannel_ssl`` to change), and one NSS import (``chromium_home``) covers both sides.
- ``sub`` is the user name, ``aud`` the client id (a string), ``sid`` names the provider session; ID tokens carry
  ``auth_time``, ``nonce`` (code grant only), ``at_hash``, ``preferred_username``, ``name``, ``email``, ``groups``.
- Codes live 120 s and work once; a replayed code is refused (invalid_grant) and revokes what its first use issued.
- Refresh tokens rotate: each works once and the answer has a new one and a new ID token (same sub/sid/auth_time).
- ``backchannel_logout`` ends the user's provider sessions (the cookie stops signing in, refresh tokens stop).
  RP-initiated logout (``/logout``) ends the session too and, while ``notify_on_end_session``, POSTs logout tokens to
  the session's clients that have a back-channel URI; ``deliveries`` lists every POST as (uri, status).
- ``tamper`` and ``logout_token(**overrides)``: a value replaces a claim, None removes it; ``key="foreign"`` signs
  with an unpublished key under the published kid, ``alg="none"`` leaves the token unsigned, ``kid``/``typ`` set
  the header. ``rotate_key()`` starts signing with a new kid.
- The SSO cookie ``oidcp_session`` is set for host 127.0.0.1: a browser sends it to every port of that host.
- ``unavailable = True`` answers every request 503 (recorded in ``requests`` all the same) until set back.
- ``token_delay`` (seconds) holds every token endpoint answer back that long (recorded when it arrives): races.
- ``requests`` grows for the whole session: compare slices (``len`` before, then ``requests[n:]``).
"""

from __future__ import annotations

import base64
import html
import json
import secrets
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Error, TokenMixin
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750 import BearerTokenGenerator, BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin, OpenIDCode, OpenIDToken, UserInfo, UserInfoEndpoint
from authlib.oidc.core.util import create_half_hash
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from flask import Flask, Response, request
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
SESSION_COOKIE = "oidcp_session"  # the provider's single sign-on cookie (host-wide: cookies ignore ports)
CODE_TTL = 120
LOGOUT_TOKEN_TTL = 120
DELIVERY_TIMEOUT = 5.0
CONFIDENTIAL_METHODS = ("client_secret_basic", "client_secret_post")


@dataclass
class User:
    name: str
    password: str
    groups: list[str]
    claims: dict[str, Any]


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    """A registered relying party: public (no secret, PKCE required) or confidential."""

    client_id: str
    redirect_uris: list[str]
    secret: str | None = None
    backchannel_logout_uri: str | None = None
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    scopes: str = "openid profile email groups"

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": self.post_logout_redirect_uris}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = self.scopes.split()
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.secret is not None and secrets.compare_digest(self.secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.secret is None:
            return method == "none"
        return method in CONFIDENTIAL_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class ProviderSession:
    """One sign-in at the provider: the SSO cookie names it, ID tokens carry its ``sid``."""

    sid: str
    user: str
    auth_time: int
    cookie: str
    clients: set[str] = field(default_factory=set)
    ended: bool = False


@dataclass
class AuthCode(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str | None
    scope: str
    session: ProviderSession
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float
    used: bool = False
    tokens: list[Token] = field(default_factory=list)

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.session.auth_time


@dataclass
class Token(TokenMixin):  # type: ignore[misc]
    access_token: str
    refresh_token: str | None
    client: Client
    session: ProviderSession
    scope: str
    issued_at: float
    expires_in: int
    refresh_expires_at: float
    access_revoked: bool = False
    refresh_revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return self.client.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.access_revoked

    def get_user(self) -> ProviderSession:
        return self.session

    def get_client(self) -> Client:
        return self.client


class _Server(AuthorizationServer):  # type: ignore[misc]
    """authlib's Flask authorization server, bound to one provider's state."""

    def __init__(self, provider: OidcProvider, app: Flask) -> None:
        self.provider = provider
        super().__init__(app, query_client=provider._client, save_token=provider._save_token)

    def create_bearer_token_generator(self, config: Any) -> BearerTokenGenerator:
        return BearerTokenGenerator(
            lambda **_: secrets.token_urlsafe(32),
            lambda **_: secrets.token_urlsafe(32),
            lambda client, grant_type: self.provider.access_token_ttl,
        )


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code: str, req: Any) -> None:
        data = req.payload.data
        self.server.provider._save_code(
            AuthCode(
                code=code,
                client_id=req.client.client_id,
                redirect_uri=req.payload.redirect_uri,
                scope=req.scope,
                session=req.user,
                nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                expires_at=time.time() + CODE_TTL,
            )
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthCode | None:
        provider: OidcProvider = self.server.provider
        return provider._redeem_code(code, client.client_id)

    def delete_authorization_code(self, authorization_code: AuthCode) -> None:
        """Codes are kept, marked used, so a replay can be recognised and what it issued revoked."""

    def authenticate_user(self, authorization_code: AuthCode) -> ProviderSession | None:
        session = authorization_code.session
        return None if session.ended else session


class _RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: each refresh token is good for one refresh

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        provider: OidcProvider = self.server.provider
        return provider._refresh_token(refresh_token)

    def authenticate_user(self, refresh_token: Token) -> ProviderSession:
        return refresh_token.session

    def revoke_old_credential(self, refresh_token: Token) -> None:
        refresh_token.refresh_revoked = True


class _S256Only(CodeChallenge):  # type: ignore[misc]
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]


class _IdTokens:
    """Shared by the code and refresh grants' OpenID extensions: the provider signs, with any tamper applied."""

    provider: OidcProvider

    def encode_id_token(self, token: dict[str, Any], req: Any) -> str:
        code = req.authorization_code
        return self.provider._id_token(req.client, req.user, token, code.nonce if code else None)

    def generate_user_info(self, user: ProviderSession, scope: str) -> UserInfo:
        return self.provider._user_info(user, scope)


class _OpenIDCode(_IdTokens, OpenIDCode):  # type: ignore[misc]
    def __init__(self, provider: OidcProvider) -> None:
        super().__init__(require_nonce=False)
        self.provider = provider

    def exists_nonce(self, nonce: str, req: Any) -> bool:
        return self.provider._nonce_used(req.payload.client_id, nonce)


class _OpenIDRefresh(_IdTokens, OpenIDToken):  # type: ignore[misc]
    """A refresh returns a new ID token too (same sub, sid, auth_time; no nonce: OIDC Core 12.2)."""

    def __init__(self, provider: OidcProvider) -> None:
        self.provider = provider


class _EndSession(EndSessionEndpoint):  # type: ignore[misc]
    def get_server_jwks(self) -> KeySet:
        provider: OidcProvider = self.server.provider
        return provider._public_keys

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        self.server.provider._end_session_request(end_session_request)


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: a relying party that signs a user out can revoke its refresh token."""

    CLIENT_AUTH_METHODS = [*CONFIDENTIAL_METHODS, "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        provider: OidcProvider = self.server.provider
        with provider._lock:
            return provider._access_tokens.get(token_string) or provider._refresh_tokens.get(token_string)

    def revoke_token(self, token: Token, req: Any) -> None:
        token.access_revoked = token.refresh_revoked = True


class _UserInfo(UserInfoEndpoint):  # type: ignore[misc]
    def generate_user_info(self, user: ProviderSession, scope: str) -> UserInfo:
        return self.server.provider._user_info(user, scope)


class _AccessTokens(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, provider: OidcProvider) -> None:
        super().__init__()
        self.provider = provider

    def authenticate_token(self, token_string: str) -> Token | None:
        return self.provider._access_tokens.get(token_string)


class _QuietHandler(WSGIRequestHandler):
    """No access log: query strings carry codes and states."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OidcProvider:
    """An OpenID Connect provider on https://127.0.0.1:PORT, served from a background thread."""

    def reset(self) -> None:
        """The knobs back to their defaults: the session's provider is shared, so one test's lifetimes,
        tampering or outage must not reach the next (the ``oidc_provider`` fixture calls this after each test)."""
        self.access_token_ttl = 300
        self.id_token_ttl = 300
        self.refresh_token_ttl = 3600
        self.tamper: dict[str, Any] = {}
        self.unavailable = False  # while true every request gets 503: a provider outage
        self.token_delay = 0.0  # seconds the token endpoint waits before answering: a slow provider (races)
        self.notify_on_end_session = True  # RP-initiated logout sends back-channel logout to the session's clients
        self.backchannel_ssl = ssl.create_default_context(cafile=str(self.ca_pem))

    def __init__(self, folder: Path, ca: trustme.CA | None = None) -> None:
        self._lock = threading.RLock()
        self._ca = ca or trustme.CA(organization_name="wsgate test OIDC provider CA")
        self.ca_pem = folder / "oidc-provider-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_pem))
        self.requests: list[tuple[str, str]] = []
        self.deliveries: list[tuple[str, int]] = []  # (backchannel_logout_uri, status) of every logout token POSTed
        self.reset()
        self._users: dict[str, User] = {}
        self._clients: dict[str, Client] = {}
        self._sessions: dict[str, ProviderSession] = {}  # by cookie
        self._codes: dict[str, AuthCode] = {}
        self._access_tokens: dict[str, Token] = {}
        self._refresh_tokens: dict[str, Token] = {}
        self._keys = [self._new_key("oidcp-1")]  # the JWKS; the last one signs
        self._foreign_key = self._new_key("oidcp-1")  # never published: forged tokens, under the signing kid
        self._app = self._build_app()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._httpd: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._app, threaded=True, ssl_context=context, request_handler=_QuietHandler
        )
        self.issuer = f"https://127.0.0.1:{self._httpd.server_port}"
        self.discovery_url = self.issuer + "/.well-known/openid-configuration"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    # -- the interface tests use -----------------------------------------------------------------------------

    def add_user(self, name: str, password: str, groups: Iterable[str] = (), **claims: Any) -> None:
        """Add (or replace) a user; ``claims`` go into ID tokens and userinfo as given (email defaults)."""
        with self._lock:
            self._users[name] = User(name, password, list(groups), {"email": f"{name}@example.test", **claims})

    def register_client(
        self,
        client_id: str,
        redirect_uris: Sequence[str],
        *,
        secret: str | None = None,
        backchannel_logout_uri: str | None = None,
        post_logout_redirect_uris: Sequence[str] = (),
        scopes: str = "openid profile email groups",
    ) -> None:
        """Register (or replace) a client: confidential with a ``secret``, public (PKCE required) without."""
        client = Client(
            client_id, list(redirect_uris), secret, backchannel_logout_uri, list(post_logout_redirect_uris), scopes
        )
        with self._lock:
            self._clients[client_id] = client

    def logout_token(self, user: str, client_id: str, **overrides: Any) -> str:
        """A signed logout token (sub, and the sid of the user's newest live session, else newest ended one);
        ``overrides`` set claims (None removes one).

        ``key="foreign"`` signs with a key that is not in the JWKS (same kid); ``alg="none"`` leaves it unsigned;
        ``typ=...`` replaces the header's ``logout+jwt``.
        """
        with self._lock:
            sessions = [s for s in self._sessions.values() if s.user == user]
        sessions = [s for s in sessions if not s.ended] or sessions
        sid = sessions[-1].sid if sessions else None
        return self._logout_token(user, client_id, sid, overrides)

    def backchannel_logout(self, user: str, client_id: str | None = None) -> list[int]:
        """End the user's provider sessions and POST a logout token for each (sub + sid) to every registered
        back-channel URI (of ``client_id`` only, if given); a user without sessions gets one sub-only token.
        Their refresh tokens are revoked. Returns the HTTP statuses (0: no response)."""
        with self._lock:
            sessions = [s for s in self._sessions.values() if s.user == user and not s.ended]
            for session in sessions:
                self._end(session)
            clients = [
                c
                for c in self._clients.values()
                if c.backchannel_logout_uri and (client_id is None or c.client_id == client_id)
            ]
        sids: list[str | None] = [s.sid for s in sessions] or [None]
        return [self._deliver(c, self._logout_token(user, c.client_id, sid, {})) for sid in sids for c in clients]

    def revoke_refresh_tokens(self, user: str) -> None:
        """The user's refresh tokens stop working: the next refresh_token grant is refused with invalid_grant."""
        with self._lock:
            for token in self._refresh_tokens.values():
                if token.session.user == user:
                    token.refresh_revoked = True

    def rotate_key(self, keep_old: bool = True) -> str:
        """Sign with a new key (a new kid) from now on; the JWKS keeps the old ones unless ``keep_old`` is false.
        Returns the new kid."""
        with self._lock:
            key = self._new_key(f"oidcp-{len(self._keys) + 1}")
            self._keys = [*self._keys, key] if keep_old else [key]
            self._foreign_key = self._new_key(str(key.kid))
            return str(key.kid)

    def sessions(self, user: str) -> list[str]:
        """The sids of the user's live provider sessions."""
        with self._lock:
            return [s.sid for s in self._sessions.values() if s.user == user and not s.ended]

    def close(self) -> None:
        """Stop serving; bounded."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OidcProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state, for the grants and endpoints ----------------------------------------------------------------

    def _client(self, client_id: str) -> Client | None:
        with self._lock:
            return self._clients.get(client_id)

    def _save_code(self, code: AuthCode) -> None:
        with self._lock:
            self._codes[code.code] = code

    def _redeem_code(self, code: str, client_id: str) -> AuthCode | None:
        """The code once; a replay revokes what its first use issued (RFC 6749 4.1.2)."""
        with self._lock:
            record = self._codes.get(code)
            if record is None or record.client_id != client_id:
                return None
            if record.used:
                for token in record.tokens:
                    token.access_revoked = token.refresh_revoked = True
                return None
            record.used = True
            return record if time.time() < record.expires_at else None

    def _nonce_used(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            return any(c.client_id == client_id and c.nonce == nonce for c in self._codes.values())

    def _save_token(self, token: dict[str, Any], req: Any) -> None:
        now = time.time()
        record = Token(
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
            client=req.client,
            session=req.user,
            scope=token.get("scope", ""),
            issued_at=now,
            expires_in=int(token.get("expires_in", self.access_token_ttl)),
            refresh_expires_at=now + self.refresh_token_ttl,
        )
        with self._lock:
            self._access_tokens[record.access_token] = record
            if record.refresh_token:
                self._refresh_tokens[record.refresh_token] = record
            if req.authorization_code is not None:
                req.authorization_code.tokens.append(record)
            req.user.clients.add(req.client.client_id)

    def _refresh_token(self, refresh_token: str) -> Token | None:
        with self._lock:
            record = self._refresh_tokens.get(refresh_token)
        if record is None or record.refresh_revoked or time.time() >= record.refresh_expires_at:
            return None
        return record

    def _new_session(self, user: str) -> ProviderSession:
        session = ProviderSession(secrets.token_urlsafe(16), user, int(time.time()), secrets.token_urlsafe(32))
        with self._lock:
            self._sessions[session.cookie] = session
        return session

    def _session(self, cookie: str | None) -> ProviderSession | None:
        with self._lock:
            session = self._sessions.get(cookie or "")
        return session if session is not None and not session.ended else None

    def _end(self, session: ProviderSession) -> None:
        """End a provider session: its cookie stops signing in, its refresh tokens stop refreshing."""
        with self._lock:
            session.ended = True
            for token in self._refresh_tokens.values():
                if token.session is session:
                    token.refresh_revoked = True

    def _end_session_request(self, req: EndSessionRequest) -> None:
        """RP-initiated logout: the session named by the ID token hint's sid, else by the cookie."""
        claims = req.id_token_claims or {}
        with self._lock:
            by_sid = [s for s in self._sessions.values() if claims.get("sid") and s.sid == claims["sid"]]
        session = by_sid[0] if by_sid else self._session(request.cookies.get(SESSION_COOKIE))
        if session is None or session.ended:
            return
        self._end(session)
        if not self.notify_on_end_session:
            return
        with self._lock:
            clients = [self._clients[c] for c in session.clients if self._clients.get(c)]
        for client in clients:
            if client.backchannel_logout_uri:
                self._deliver(client, self._logout_token(session.user, client.client_id, session.sid, {}))

    # -- tokens -------------------------------------------------------------------------------------------------

    @staticmethod
    def _new_key(kid: str) -> RSAKey:
        return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)

    @property
    def _public_keys(self) -> KeySet:
        with self._lock:
            return KeySet([RSAKey.import_key(key.as_dict(private=False)) for key in self._keys])

    def _user_info(self, session: ProviderSession, scope: str) -> UserInfo:
        with self._lock:
            user = self._users.get(session.user)
        info = UserInfo(sub=session.user)
        if user is None:
            return info
        scopes = set(scope.split())
        if "profile" in scopes:
            info.update(preferred_username=user.name, name=user.claims.get("name", user.name))
        if "email" in scopes:
            info["email"] = user.claims.get("email")
        if "groups" in scopes:
            info["groups"] = list(user.groups)
        info.update({k: v for k, v in user.claims.items() if k not in ("email", "name")})
        return info

    def _id_token(self, client: Client, session: ProviderSession, token: dict[str, Any], nonce: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": session.user,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now,
            "exp": now + self.id_token_ttl,
            "auth_time": session.auth_time,
            "sid": session.sid,
        }
        if nonce:
            claims["nonce"] = nonce
        if at_hash := create_half_hash(token["access_token"], "RS256"):
            claims["at_hash"] = at_hash.decode()
        claims.update(self._user_info(session, token.get("scope", "")))
        with self._lock:
            tamper, self.tamper = self.tamper, {}
        return self._sign(claims, tamper, "JWT")

    def _logout_token(self, user: str, client_id: str, sid: str | None, overrides: dict[str, Any]) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user,
            "aud": client_id,
            "iat": now,
            "exp": now + LOGOUT_TOKEN_TTL,
            "jti": secrets.token_urlsafe(16),
            "events": {BACKCHANNEL_EVENT: {}},
        }
        if sid:
            claims["sid"] = sid
        return self._sign(claims, dict(overrides), "logout+jwt")

    def _sign(self, claims: dict[str, Any], changes: dict[str, Any], typ: str) -> str:
        """Sign with the provider's key; ``changes`` replace claims (None removes), or the key, alg or typ."""
        with self._lock:
            key = self._foreign_key if changes.pop("key", None) == "foreign" else self._keys[-1]
        alg = changes.pop("alg", "RS256")
        header = {"alg": alg, "kid": changes.pop("kid", key.kid), "typ": changes.pop("typ", typ)}
        for name, value in changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        if alg == "none":
            del header["kid"]
            return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."
        return jwt.encode(header, claims, key, algorithms=[alg])

    def _deliver(self, client: Client, logout_token: str) -> int:
        """POST one logout token to the client's back-channel URI; the status, or 0 without a response."""
        uri = client.backchannel_logout_uri or ""
        body = urllib.parse.urlencode({"logout_token": logout_token}).encode()
        post = urllib.request.Request(
            uri, data=body, method="POST", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        try:
            with urllib.request.urlopen(post, timeout=DELIVERY_TIMEOUT, context=self.backchannel_ssl) as response:
                status = int(response.status)
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError:
            status = 0
        with self._lock:
            self.deliveries.append((uri, status))
        return status

    # -- the web application ------------------------------------------------------------------------------

    def _discovery(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": base + "/authorize",
            "token_endpoint": base + "/token",
            "userinfo_endpoint": base + "/userinfo",
            "jwks_uri": base + "/jwks",
            "end_session_endpoint": base + "/logout",
            "revocation_endpoint": base + "/revoke",
            "revocation_endpoint_auth_methods_supported": [*CONFIDENTIAL_METHODS, "none"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "groups"],
            "token_endpoint_auth_methods_supported": [*CONFIDENTIAL_METHODS, "none"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "iss",
                "sub",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "sid",
                "at_hash",
                "preferred_username",
                "name",
                "email",
                "groups",
            ],  # fmt: skip
            "prompt_values_supported": ["none", "login"],
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            "frontchannel_logout_supported": False,
        }

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        server = _Server(self, app)
        server.register_grant(_CodeGrant, [_OpenIDCode(self), _S256Only(required=True)])
        server.register_grant(_RefreshGrant, [_OpenIDRefresh(self)])
        server.register_endpoint(_EndSession)
        server.register_endpoint(_Revocation)
        protector = ResourceProtector()
        protector.register_token_validator(_AccessTokens(self))
        server.register_endpoint(_UserInfo(resource_protector=protector))

        @app.before_request
        def record() -> Response | None:
            self.requests.append((request.method, request.path))
            if request.path == "/token" and self.token_delay:
                time.sleep(self.token_delay)
            return Response("provider unavailable", status=503) if self.unavailable else None

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Response:
            return Response(json.dumps(self._discovery()), content_type="application/json")

        @app.get("/jwks")
        def jwks() -> Response:
            return Response(json.dumps(self._public_keys.as_dict(private=False)), content_type="application/json")

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Response:
            return self._authorize(server)

        @app.post("/token")
        def token() -> Response:
            return server.create_token_response()  # type: ignore[no-any-return]

        @app.post("/revoke")
        def revoke() -> Response:
            return server.create_endpoint_response("revocation")  # type: ignore[no-any-return]

        @app.route("/userinfo", methods=["GET", "POST"])
        def userinfo() -> Response:
            return server.create_endpoint_response("userinfo")  # type: ignore[no-any-return]

        @app.route("/logout", methods=["GET", "POST"])
        def logout() -> Response:
            try:
                validated = server.validate_endpoint_request("end_session")
            except OAuth2Error as error:
                return server.handle_error_response(None, error)  # type: ignore[no-any-return]
            response = server.create_endpoint_response("end_session", validated)
            if response is None:
                response = Response("<!doctype html><title>Signed out</title><p id='signed-out'>Signed out</p>")
            response.delete_cookie(SESSION_COOKIE, secure=True, httponly=True, samesite="Lax")
            return response  # type: ignore[no-any-return]

        return app

    def _authorize(self, server: _Server) -> Response:
        """Validate the request, then sign in: the SSO session if there is one and may be used, else the form."""
        session, fresh, error = None, False, ""
        if request.method == "POST":
            with self._lock:
                user = self._users.get(request.form.get("username", ""))
            if user is not None and secrets.compare_digest(user.password, request.form.get("password", "")):
                session, fresh = self._new_session(user.name), True
            else:
                error = "Wrong user name or password."
        else:
            session = self._session(request.cookies.get(SESSION_COOKIE))
            prompts = request.args.get("prompt", "").split()
            max_age = request.args.get("max_age", "")
            too_old = max_age.isdigit() and session is not None and time.time() - session.auth_time > int(max_age)
            if "login" in prompts or too_old:
                session = None
        try:
            grant = server.get_consent_grant(end_user=session)
        except OAuth2Error as failure:
            return server.handle_error_response(None, failure)  # type: ignore[no-any-return]
        if session is None:
            return self._form(error)
        response: Response = server.create_authorization_response(grant=grant, grant_user=session)
        if fresh:
            response.set_cookie(SESSION_COOKIE, session.cookie, secure=True, httponly=True, samesite="Lax")
        return response

    def _form(self, error: str) -> Response:
        action = html.escape("/authorize?" + request.query_string.decode(), quote=True)
        alert = f'<p id="error" role="alert">{html.escape(error)}</p>' if error else ""
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in - test OpenID provider</title></head>
<body><h1>Sign in</h1>{alert}
<form method="post" action="{action}">
<label>User name <input id="username" name="username" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password"></label>
<button id="submit" type="submit">Sign in</button>
</form></body></html>"""
        return Response(page, status=401 if error else 200, content_type="text/html; charset=utf-8")


def chromium_home(ca_pem: Path, home: Path) -> Path:
    """A HOME for Chromium whose NSS database trusts ``ca_pem`` (needs certutil, from libnss3-tools), so the
    browser checks the provider's (and, with the tests' CA, the gateway's) certificate instead of ignoring errors."""
    certutil = shutil.which("certutil")
    if certutil is None:
        pytest.skip("certutil not installed (libnss3-tools)")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    subprocess.run([certutil, "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, timeout=30)
    trust = [certutil, "-d", f"sql:{nssdb}", "-A", "-n", "wsgate-test-ca", "-t", "C,,", "-i", str(ca_pem)]
    subprocess.run(trust, check=True, timeout=30)
    return home


@pytest.fixture(scope="session")
def oidc_provider_session(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[OidcProvider]:
    """One provider for the session, its certificate from the tests' CA (so it trusts the gateway's back-channel
    URI too); tests use their own user names and client ids."""
    provider = OidcProvider(tmp_path_factory.mktemp("oidc-provider"), ca)
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture
def oidc_provider(oidc_provider_session: OidcProvider) -> Iterator[OidcProvider]:
    """The session's provider, its knobs reset after each test."""
    yield oidc_provider_session
    oidc_provider_session.reset()
