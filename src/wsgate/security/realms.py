"""Realm enforcement on the HTTP request, before any 101, and the realm's control resources.

``RealmGuard`` stands in front of a protected service (``realm-name`` plus
``authorization-constraint``): it gathers credentials, runs the realm's login
chain (or accepts the realm's session cookie), checks the roles and only then
hands the request on with its ``Identity``.

On the wire (Kaazing reference §3.2): no or bad credentials → 401 with the realm's
challenge (every failure looks the same); authenticated without the roles → 403;
a module that could not decide (LDAP down) → 503. Reasons go to the audit log.

Control resources under each protected service path (client-initiated, plain HTTP;
see docs/security.md, "Re-authentication without disconnecting"):

- ``POST <path>/.wsgate/session``: fresh credentials → the realm session cookie (and
  every live connection of that session is extended); ``GET`` tells who and until
  when; ``DELETE`` logs out and closes the session's connections.
- ``POST <path>/.wsgate/refresh/<connection-id>``: fresh credentials for the same
  user extend one live connection without disconnecting it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..config.model import AuthorizationConstraint, Realm
from ..core.fetch import FetchJson
from ..core.identity import Identity
from ..core.session import Timeouts
from ..observe.logs import get_logger
from ..state.connections import Selector
from ..state.revocations import MemoryRevocations, RevocationStore, identity_keys, token_digest
from .challenges import (
    AmbiguousCredentials,
    Credentials,
    challenge_header,
    cookie_values,
    gather_credentials,
    offered_subprotocols,
    realm_schemes,
)
from .login import Busy, ChainEntry, Challenged, Failed, LoginAttempt, Succeeded, Unavailable, build_module, run_chain
from .login.base import resolve
from .login.verifier import Verifier
from .sessions import DEFAULT_SESSION_TTL, SessionStore, cookie_name

if TYPE_CHECKING:
    from ..core.peer import PeerIdentity
    from ..observe.metrics import Metrics
    from ..services.base import Runtime, ServiceHandler

audit = get_logger("wsgate.audit")
CONTROL = "/.wsgate/"


IDENTITY_KEY = web.RequestKey("wsgate.identity", Identity)
Trail = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Refused:
    """Why and how a request is refused; ``reason`` goes to the audit log only."""

    status: int  # 400 (ambiguous credentials), 401 (challenge), 403, 503
    reason: str
    data: str | None = None  # a module's challenge data for the 401
    limit: str | None = None  # a 503 from a bound: the wsgate_limited label


class RealmRuntime:
    """A configured realm, ready to authenticate requests."""

    def __init__(self, realm: Realm, base_dir: Path, fetch_json: FetchJson | None = None) -> None:
        """``fetch_json`` fetches documents for modules that need them (a jwt module's JWKS)."""
        self.config = realm
        auth = realm.authentication
        path = f"security/realm[{realm.name}]/authentication/login-modules"
        self.chain = [
            ChainEntry(m.success, build_module(m, f"{path}/login-module[{i + 1}]", base_dir, fetch_json), m.type)
            for i, m in enumerate(auth.login_modules)
        ]
        self.scheme = auth.http_challenge_scheme
        self.schemes = realm_schemes(self.scheme)
        self.token_realm = self.scheme == "Application Token"
        self.recycle = auth.authorization_mode == "recycle"
        self.cookie = cookie_name(realm.name)
        self.sessions = SessionStore()
        self.metrics: Metrics | None = None  # set by the gateway
        self.verifier = Verifier(auth.login_concurrency, auth.login_queue, f"wsgate-verify-{realm.name}")
        self.revocations: RevocationStore = MemoryRevocations()  # the gateway's, shared by every realm
        self.files = module_files(realm, base_dir)

    async def authenticate(
        self, request: web.BaseRequest, peer: PeerIdentity | None, allow_session: bool = True
    ) -> Identity | Refused:
        try:
            credentials, session_token = self.gather(request)
        except AmbiguousCredentials as exc:
            return Refused(400, str(exc))  # before any module runs: no guessing which credential counts
        if allow_session and session_token:
            identity = self.session_identity(session_token)
            if identity is not None and not await self.revoked(identity):
                return identity
        result = await run_chain(
            self.chain, LoginAttempt(credentials, request.remote or "?", peer, verifier=self.verifier)
        )
        if self.metrics is not None:
            for module, seconds in result.timings:
                self.metrics.auth_seconds.labels(self.config.name, module).observe(seconds)
        outcome = result.outcome
        if not isinstance(outcome, Succeeded):
            return self.refusal(outcome, self.presented(credentials), result.trail)
        token = credentials.bearer()
        digest = token_digest(token) if token else None
        identity = Identity(
            self.config.name,
            outcome.user,
            outcome.principals,
            outcome.expires_at,
            digest,
            time.time(),
            token_id=outcome.token_id,
        )
        if expired(identity, self.config):
            return Refused(403, "credentials already expired (inside the module's leeway)")
        if await self.revoked(identity):
            return Refused(403, "revoked")  # as any refused credential: no hint to the client
        return identity

    async def revoked(self, identity: Identity) -> bool:
        """Revoked by user, by the token's jti or by its digest (sessions of revoked users are dropped)."""
        key = await self.revocations.revoked(identity_keys(identity.user, identity.token_id, identity.token_digest))
        if key is not None and identity.session:
            self.sessions.drop(identity.session)
        return key is not None

    def gather(self, request: web.BaseRequest) -> tuple[Credentials, str | None]:
        """Only what this realm is configured to read (its scheme, its sources), and its session cookie."""
        auth = self.config.authentication
        headers = {name: request.headers.getall(name, []) for name in ("Authorization", "Cookie", *auth.http_headers)}
        query = {name: request.query.getall(name, []) for name in auth.http_query_parameters}
        offers = None
        if self.token_realm:  # every Sec-WebSocket-Protocol header: a token in a second one is not overlooked
            offers = offered_subprotocols(", ".join(request.headers.getall("Sec-WebSocket-Protocol", [])))
        credentials = gather_credentials(
            headers,
            query,
            self.schemes,
            auth.http_headers,
            auth.http_query_parameters,
            auth.http_cookies,
            offers,
        )
        return credentials, self.session_cookie(headers["Cookie"]) if self.recycle else None

    def session_cookie(self, cookie_headers: list[str]) -> str | None:
        sessions = cookie_values(cookie_headers).get(self.cookie, [])
        if len(sessions) > 1:
            raise AmbiguousCredentials(f"cookie:{self.cookie} given more than once")
        return sessions[0] if sessions else None

    def presented(self, credentials: Credentials) -> bool:
        """Did the client answer the challenge (Kaazing §3.2)? Credentials of another scheme were never
        gathered, and a bare ``Authorization: Basic`` is no answer: both are challenged again."""
        return bool(credentials.tokens) or bool(credentials.scheme and credentials.parameter)

    def refusal(self, outcome: Failed | Unavailable | Challenged, presented: bool, trail: Trail) -> Refused:
        """Kaazing's rules: nothing presented → 401 challenge; presented but refused → 403; a module
        asking for another round → 401 with its data; a module that could not decide → 503."""
        reason = f"{outcome.reason} ({', '.join(f'{name}: {what}' for name, what in trail)})"
        if isinstance(outcome, Busy):
            return Refused(503, reason, limit="auth-concurrency")
        if isinstance(outcome, Unavailable):
            return Refused(503, reason)
        if self.scheme is None:
            return Refused(403, reason)
        if isinstance(outcome, Challenged):
            return Refused(401, reason, outcome.data)
        return Refused(403 if presented else 401, reason)

    async def close(self) -> None:
        """Release what modules hold (LDAP connection pools)."""
        for entry in self.chain:
            close = getattr(entry.module, "close", None)
            if close is not None:
                await close()
        self.verifier.close()

    def challenge(self, plain_http: bool, data: str | None = None) -> dict[str, str]:
        if self.scheme is None:
            return {}
        value = challenge_header(self.scheme, self.config.description or self.config.name, plain_http)
        return {"WWW-Authenticate": f"{value} {data}" if data else value}

    def session_expiry(self, identity: Identity) -> float:
        """A session lasts ``session-timeout`` (1 hour if unset), never past the credentials' own expiry.

        ``authorization-timeout`` does not shorten it: it decides whether the session may still
        open connections (see ``authenticate``) and when those connections close.
        """
        limits = [time.time() + (self.config.authentication.session_timeout or DEFAULT_SESSION_TTL)]
        if identity.expires_at is not None:
            limits.append(identity.expires_at)
        return min(limits)

    def renew_by(self, identity: Identity) -> float | None:
        """When a session's connections need fresh credentials: ``authorization-timeout`` or its end."""
        timeout = self.config.authentication.authorization_timeout
        limits = [
            limit for limit in (identity.expires_at, identity.authenticated_at + timeout if timeout else None) if limit
        ]
        return min(limits) if limits else None

    def session_identity(self, token: str) -> Identity | None:
        """The session's identity, unless its credentials are older than ``authorization-timeout``."""
        session = self.sessions.lookup(token)
        if session is None:
            return None
        if expired(session.identity, self.config):
            return None
        return session.identity


def module_files(realm: Realm, base_dir: Path) -> tuple[tuple[str, str | None], ...]:
    """The content (SHA-256) of every file the realm's login modules read (``file`` and ``*-file`` options).

    A reload keeps a realm whose configuration is unchanged (its sessions, its pools), but only if these
    are unchanged too: a user removed from ``jaas-config.xml`` or a key removed from a ``key-file`` must
    not keep logging in because the config text that names the file stayed the same.
    """
    found = []
    for index, module in enumerate(realm.authentication.login_modules):
        for name, value in sorted(module.options.items()):
            if name == "file" or name.endswith("-file"):
                try:
                    content: str | None = hashlib.sha256(resolve(base_dir, value).read_bytes()).hexdigest()
                except OSError:
                    content = None
                found.append((f"login-module[{index + 1}]/{name}", content))
    return tuple(found)


def authorized(roles: frozenset[str], constraints: Sequence[AuthorizationConstraint]) -> bool:
    """Every listed role is needed; ``*`` and ``require-valid-user`` need only an authenticated user."""
    needed = {role for c in constraints for role in c.require_roles if role != "*"}
    return needed <= roles


def connection_deadline(identity: Identity, opened_at: float, realm: Realm) -> tuple[float | None, str]:
    """When a connection must close, and why: credential expiry or ``session-timeout`` since it
    opened ("session expired"), ``authorization-timeout`` since the credentials were last
    presented ("authorization expired"); the earliest wins."""
    auth = realm.authentication
    limits: list[tuple[float, str]] = []
    if identity.expires_at is not None:
        limits.append((identity.expires_at, "session expired"))
    if auth.session_timeout:
        limits.append((opened_at + auth.session_timeout, "session expired"))
    if auth.authorization_timeout:
        limits.append((identity.authenticated_at + auth.authorization_timeout, "authorization expired"))
    if not limits:
        return None, ""
    deadline, reason = min(limits)
    return deadline, reason


def realm_timeouts(realm: Realm) -> Timeouts:
    """A realm's limits on a connection's life, as ``LiveSession.refresh`` takes them."""
    auth = realm.authentication
    return Timeouts(auth.session_timeout, auth.authorization_timeout)


def expired(identity: Identity, realm: Realm) -> bool:
    """Would a connection opened now with ``identity`` already be due to close? Then it must not open."""
    now = time.time()
    deadline, _ = connection_deadline(identity, now, realm)
    return deadline is not None and deadline <= now


class RealmGuard:
    """Stands in front of a protected service; only authorized requests pass, with their identity."""

    def __init__(self, service: ServiceHandler, realm: RealmRuntime, runtime: Runtime) -> None:
        self.service = service
        self.realm = realm
        self.runtime = runtime
        self.name = service.name
        self.plain_http = service.TYPE.plain_http  # browsers show their own login dialog
        self.paths = tuple(u.path.rstrip("/") for u in service.config.accepts)

    async def handle(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        answer = self.service.preflight(request)  # preflights carry no credentials: answer before the realm
        if answer is not None:
            return answer
        control = self.control_path(request.path)
        if control is not None:
            response = await self.control(request, peer, control)
            response.headers.update(self.service.cors(request))
            return response
        admitted = await self.admit(request, peer)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        request[IDENTITY_KEY] = admitted
        return await self.service.handle(request, peer)

    def control_path(self, path: str) -> str | None:
        for base in self.paths:
            if path.startswith(base + CONTROL):
                return path[len(base) + len(CONTROL) :]
        return None

    async def admit(
        self, request: web.BaseRequest, peer: PeerIdentity | None, allow_session: bool = True
    ) -> Identity | web.Response:
        outcome = await self.realm.authenticate(request, peer, allow_session)
        where = {"service": self.name, "realm": self.realm.config.name, "remote": request.remote}
        if isinstance(outcome, Refused):
            return self.refuse(outcome, where)
        roles = sorted(outcome.roles)
        if not authorized(outcome.roles, self.service.config.authorization_constraints):
            audit.info("authorization denied", **where, decision="denied", status=403, user=outcome.user, roles=roles)
            return web.Response(status=403, text="Forbidden\n")
        via = "session" if outcome.session and allow_session else "credentials"
        audit.info("authenticated", **where, decision="authenticated", user=outcome.user, via=via, roles=roles)
        return outcome

    def refuse(self, refused: Refused, where: dict[str, Any]) -> web.Response:
        if refused.status == 503:
            audit.warning(
                "authentication unavailable", **where, decision="unavailable", status=503, reason=refused.reason
            )
            if refused.limit is not None and self.realm.metrics is not None:
                self.realm.metrics.limited.labels(self.name, refused.limit).inc()
            retry = "1" if refused.limit else "5"  # a busy verifier frees up in about a hash's time
            return web.Response(status=503, text="Service Unavailable\n", headers={"Retry-After": retry})
        audit.info("authentication denied", **where, decision="denied", status=refused.status, reason=refused.reason)
        if refused.status == 400:
            return web.Response(status=400, text="Bad Request\n")
        if refused.status == 401:
            return web.Response(
                status=401, text="Unauthorized\n", headers=self.realm.challenge(self.plain_http, refused.data)
            )
        return web.Response(status=403, text="Forbidden\n")

    # -- control resources -------------------------------------------------------------------

    async def control(self, request: web.BaseRequest, peer: PeerIdentity | None, what: str) -> web.StreamResponse:
        if not self.service.origin_allowed(request):
            return web.Response(status=403, text="Forbidden\n")
        if what == "session" and self.realm.recycle:
            handlers = {"POST": self.login, "GET": self.whoami, "DELETE": self.logout}
            if request.method not in handlers:
                return web.Response(status=405, headers={"Allow": "GET, POST, DELETE"})
            return await handlers[request.method](request, peer)
        if what.startswith("refresh/") and request.method == "POST":
            return await self.refresh(request, peer, what[len("refresh/") :])
        return web.Response(status=404, text="Not Found\n")

    async def login(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        """Fresh credentials → a session cookie; an existing session of the same user is renewed."""
        admitted = await self.admit(request, peer, allow_session=False)
        if isinstance(admitted, web.Response):
            return admitted
        expires_at = self.realm.session_expiry(admitted)
        current = self.current_session(request)
        if current is not None and current.identity.user == admitted.user and current.identity.session:
            session = self.realm.sessions.renew(current.identity.session, admitted, expires_at)
            extended = self.extend(Selector(session=current.identity.session), session.identity)
            response = self.describe(session.identity, extended=extended, expires=self.realm.renew_by(session.identity))
        else:
            token, session = self.realm.sessions.issue(admitted, expires_at)
            response = self.describe(session.identity, expires=self.realm.renew_by(session.identity))
            response.set_cookie(
                self.realm.cookie,
                token,
                max_age=max(1, int(expires_at - time.time())),
                path="/",
                secure=request.secure or self.service.offloaded_tls,
                httponly=True,
                samesite="Strict",
            )
        return response

    async def whoami(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        session = self.current_session(request)
        if session is None or await self.realm.revoked(session.identity):
            return web.Response(status=401, text="Unauthorized\n", headers=self.realm.challenge(self.plain_http))
        return self.describe(session.identity)

    async def logout(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        """Drop the session and close every connection it opened (logout reaches live sockets)."""
        session = self.current_session(request)
        closed = 0
        if session is not None and session.identity.session:
            key = session.identity.session
            self.realm.sessions.drop(key)
            closed = await self.runtime.expire(Selector(session=key), "logged out")
            audit.info(
                "service[%s]: user %r logged out, %d connection(s) closed", self.name, session.identity.user, closed
            )
        response = web.json_response({"closed": closed})
        response.del_cookie(self.realm.cookie, path="/")
        return response

    async def refresh(
        self, request: web.BaseRequest, peer: PeerIdentity | None, connection_id: str
    ) -> web.StreamResponse:
        """Fresh credentials of the same user extend one live connection, which stays open."""
        connection = self.runtime.connections.get(connection_id)
        if connection is None or connection.identity is None or connection.service != self.name:
            return web.Response(status=404, text="Not Found\n")
        admitted = await self.admit(request, peer, allow_session=False)
        if isinstance(admitted, web.Response):
            return admitted
        if admitted.user != connection.identity.user:
            audit.warning(
                "service[%s]: refresh of %s by %r refused: it belongs to %r",
                self.name,
                connection_id,
                admitted.user,
                connection.identity.user,
            )
            return web.Response(status=403, text="Forbidden\n")
        self.extend(Selector(id=connection_id), replace(admitted, session=connection.identity.session))
        deadline, _ = connection_deadline(connection.identity, connection.started, self.realm.config)
        return self.describe(connection.identity, expires=deadline)

    def current_session(self, request: web.BaseRequest):  # type: ignore[no-untyped-def]
        try:
            token = self.realm.session_cookie(request.headers.getall("Cookie", []))
        except AmbiguousCredentials:
            return None  # two session cookies: neither is trusted
        return self.realm.sessions.lookup(token) if token else None

    def extend(self, selector: Selector, identity: Identity) -> int:
        """Give the selected live connections the fresh identity and their new deadline."""
        count = 0
        timeouts = realm_timeouts(self.realm.config)
        for session in self.runtime.connections.select(selector):
            session.refresh(identity, timeouts)
            count += 1
        if count:
            audit.info("service[%s]: user %r re-authenticated %d live connection(s)", self.name, identity.user, count)
        return count

    @staticmethod
    def describe(identity: Identity, extended: int = 0, expires: float | None = None) -> web.Response:
        """``expires``: when the connection (refresh) or session must be renewed, if ever."""
        body = {"user": identity.user, "roles": sorted(identity.roles), "expires": expires or identity.expires_at}
        if extended:
            body["extended"] = extended
        return web.json_response(body, dumps=json.dumps)
