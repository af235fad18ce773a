"""Realm enforcement on a request head, before any 101, and the realm's control resources, without I/O.

``RealmGate`` is the realm's part of a protected service's admission (``realm-name`` plus
``authorization-constraint``, see ``security.admission``): it gathers credentials from the
``Handshake``, runs the realm's login chain (or accepts the realm's session cookie), checks
the roles and answers the ``Identity`` or a ``Reject``. Control resources answer ``Reply``s.

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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ..config.model import AuthorizationConstraint, Realm
from ..core.fetch import FetchJson, HttpPort
from ..core.handshake import Handshake, Reject, Reply
from ..core.identity import Identity
from ..core.session import Timeouts
from ..core.session import connection_deadline as session_deadline
from ..observe.logs import get_logger
from ..state.connections import Selector
from ..state.redis import StateUnavailable
from ..state.revocations import MemoryRevocations, RevocationList, identity_keys, token_digest
from ..state.rounds import MemoryRounds, RoundStore
from ..state.sessions import DEFAULT_SESSION_TTL, MemorySessions, Session, SessionStore, cookie_name
from .challenges import (
    AmbiguousCredentials,
    Credentials,
    challenge_header,
    cookie_values,
    gather_credentials,
    offered_subprotocols,
    realm_schemes,
    set_cookie,
)
from .login import (
    Busy,
    ChainEntry,
    Challenged,
    Failed,
    LoginAttempt,
    Succeeded,
    Unavailable,
    build_module,
    check_chain,
    run_chain,
)
from .login.base import Rounds, resolve
from .login.oidc import OidcLoginModule
from .login.verifier import Verifier
from .oidc import OidcFlow, safe_return

if TYPE_CHECKING:
    from ..observe.metrics import Metrics
    from ..state.connections import MemoryConnections

audit = get_logger("wsgate.audit")
CONTROL = "/.wsgate/"
# What the client sees of a refusal: the same whatever the reason (that goes to wsgate.audit).
BAD_REQUEST_TEXT = "Bad Request\n"
UNAUTHORIZED = "Unauthorized\n"
FORBIDDEN = "Forbidden\n"
UNAVAILABLE = "Service Unavailable\n"
Trail = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Proof:
    """Authenticated: who, and the login chain's last token for the client (Negotiate's mutual authentication)."""

    identity: Identity
    response: str | None = None


@dataclass(frozen=True)
class Refused:
    """Why and how a request is refused; ``reason`` goes to the audit log only."""

    status: int  # 400 (ambiguous credentials), 401 (challenge), 403, 503
    reason: str
    data: str | None = None  # a module's challenge data for the 401
    limit: str | None = None  # a 503 from a bound: the wsgate_limited label


class RealmRuntime:
    """A configured realm, ready to authenticate requests."""

    def __init__(
        self, realm: Realm, base_dir: Path, fetch_json: FetchJson | None = None, http: HttpPort | None = None
    ) -> None:
        """``fetch_json`` fetches documents for modules that need them (a jwt module's JWKS); ``http`` GETs and
        POSTs for those that also need that (an oidc module's provider)."""
        self.config = realm
        auth = realm.authentication
        path = f"security/realm[{realm.name}]/authentication/login-modules"
        check_chain(realm, path)
        self.chain = [
            ChainEntry(m.success, build_module(m, f"{path}/login-module[{i + 1}]", base_dir, fetch_json, http), m.type)
            for i, m in enumerate(auth.login_modules)
        ]
        self.scheme = auth.http_challenge_scheme
        self.schemes = realm_schemes(self.scheme)
        self.token_realm = self.scheme == "Application Token"
        self.recycle = auth.authorization_mode == "recycle"
        self.cookie = cookie_name(realm.name)
        self.sessions: SessionStore = MemorySessions()
        self.metrics: Metrics | None = None  # set by the gateway
        self.rounds: RoundStore = MemoryRounds()  # multi-round schemes' state between a client's requests
        self.verifier = Verifier(auth.login_concurrency, auth.login_queue, f"wsgate-verify-{realm.name}")
        self.revocations: RevocationList = MemoryRevocations()  # the gateway's, shared by every realm
        self.files = module_files(realm, base_dir)
        # Browser sign-in with an OpenID provider (security.oidc), if the chain has an oidc module.
        providers = [entry.module for entry in self.chain if isinstance(entry.module, OidcLoginModule)]
        self.oidc = OidcFlow(self, providers[0]) if providers else None

    async def authenticate(self, handshake: Handshake, allow_session: bool = True) -> Proof | Refused:
        """Session cookie or login chain, then expiry and revocation. Shared state (Redis) that does not
        answer is a 503: a session or a revocation that cannot be checked never lets anyone in."""
        try:
            return await self._authenticate(handshake, allow_session)
        except StateUnavailable as exc:
            return Refused(503, str(exc))

    async def _authenticate(self, handshake: Handshake, allow_session: bool) -> Proof | Refused:
        try:
            credentials, session_token = self.gather(handshake)
        except AmbiguousCredentials as exc:
            return Refused(400, str(exc))  # before any module runs: no guessing which credential counts
        if allow_session and session_token:
            identity = await self.session_identity(session_token)
            if identity is not None and not await self.revoked(identity):
                return Proof(identity)
        rounds = Rounds(self.rounds, handshake.client, handshake.remote) if handshake.client else None
        result = await run_chain(
            self.chain,
            LoginAttempt(credentials, handshake.remote, handshake.peer, verifier=self.verifier, rounds=rounds),
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
        return Proof(identity, outcome.response)

    async def revoked(self, identity: Identity) -> bool:
        """Revoked by user, by the token's jti or by its digest (sessions of revoked users are dropped)."""
        key = await self.revocations.revoked(identity_keys(identity.user, identity.token_id, identity.token_digest))
        if key is not None and identity.session:
            await self.sessions.drop(identity.session)
        return key is not None

    def gather(self, handshake: Handshake) -> tuple[Credentials, str | None]:
        """Only what this realm is configured to read (its scheme, its sources), and its session cookie."""
        auth = self.config.authentication
        request_headers, request_query = handshake.headers, handshake.query
        headers = {name: request_headers.getall(name, []) for name in ("Authorization", "Cookie", *auth.http_headers)}
        query = {name: request_query.getall(name, []) for name in auth.http_query_parameters}
        offers = None
        if self.token_realm:  # every Sec-WebSocket-Protocol header: a token in a second one is not overlooked
            offers = offered_subprotocols(", ".join(request_headers.getall("Sec-WebSocket-Protocol", [])))
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
        """Release what modules hold (LDAP connection pools) and the OIDC sessions' refresh timers."""
        if self.oidc is not None:
            await self.oidc.close()
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

    async def session_identity(self, token: str) -> Identity | None:
        """The session's identity, unless its credentials are older than ``authorization-timeout``."""
        session = await self.sessions.lookup(token)
        if session is None:
            return None
        if expired(session.identity, self.config):
            return None
        return session.identity


def module_files(realm: Realm, base_dir: Path) -> tuple[tuple[str, str | None], ...]:
    """The content (SHA-256) of every file the realm's login modules read (``file``, ``keyTab``, ``*-file``).

    A reload keeps a realm whose configuration is unchanged (its sessions, its pools), but only if these
    are unchanged too: a user removed from ``jaas-config.xml`` or a key removed from a ``key-file`` must
    not keep logging in because the config text that names the file stayed the same.
    """
    found = []
    for index, module in enumerate(realm.authentication.login_modules):
        for name, value in sorted(module.options.items()):
            if name in ("file", "keyTab") or name.endswith("-file"):
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
    """When a connection opened at ``opened_at`` must close under ``realm``, and why (``core.session``)."""
    return session_deadline(identity, opened_at, realm_timeouts(realm))


def realm_timeouts(realm: Realm) -> Timeouts:
    """A realm's limits on a connection's life, as ``LiveSession.refresh`` takes them."""
    auth = realm.authentication
    return Timeouts(auth.session_timeout, auth.authorization_timeout)


def expired(identity: Identity, realm: Realm) -> bool:
    """Would a connection opened now with ``identity`` already be due to close? Then it must not open."""
    now = time.time()
    deadline, _ = connection_deadline(identity, now, realm)
    return deadline is not None and deadline <= now


class RealmGate:
    """A protected service's realm: only authorized requests pass, with their identity.

    ``connections`` are the gateway's live connections (the control resources extend and close
    them by ``Selector``); ``expire`` closes the selected ones with 1008.
    """

    def __init__(
        self,
        realm: RealmRuntime,
        service: str,
        plain_http: bool,
        constraints: Sequence[AuthorizationConstraint],
        paths: Sequence[str],
        connections: MemoryConnections[Any],
        expire: Callable[[Selector, str], Awaitable[int]],
        offloaded_tls: bool = False,
    ) -> None:
        self.realm = realm
        self.name = service
        self.plain_http = plain_http  # browsers show their own login dialog (directory, management)
        self.constraints = tuple(constraints)
        self.paths = tuple(path.rstrip("/") for path in paths)
        self.connections = connections
        self.expire = expire
        self.offloaded_tls = offloaded_tls
        if realm.oidc is not None:
            realm.oidc.attach(connections.select, expire, realm_timeouts(realm.config))

    def control_path(self, path: str) -> str | None:
        for base in self.paths:
            if path.startswith(base + CONTROL):
                return path[len(base) + len(CONTROL) :]
        return None

    def sign_in_redirect(self, handshake: Handshake) -> Reply | None:
        """A browser's page request without a session, in a realm that signs in with an OpenID provider: a 302
        to the provider sign-in, which comes back to this page (plain HTTP services only; WebSockets get 401)."""
        if self.realm.oidc is None or handshake.method != "GET" or not self.paths:
            return None
        if "text/html" not in handshake.headers.get("Accept", ""):
            return None
        back = handshake.path + (f"?{urlencode(list(handshake.query.items()))}" if handshake.query else "")
        if safe_return(back) is None:
            return None
        base = next((p for p in self.paths if handshake.path == p or handshake.path.startswith(p + "/")), self.paths[0])
        location = f"{base}{CONTROL}oidc/login?{urlencode({'return': back})}"
        return Reply(302, headers=(("Location", location), ("Cache-Control", "no-store")))

    def control_base(self, path: str) -> str:
        """The service path a control resource request is under."""
        return next(base for base in self.paths if path.startswith(base + CONTROL))

    async def authorize(self, handshake: Handshake, allow_session: bool = True) -> Proof | Reject:
        """Authenticated and holding the roles: the identity and the chain's last token for the client."""
        proof = await self.realm.authenticate(handshake, allow_session)
        where = {"service": self.name, "realm": self.realm.config.name, "remote": handshake.remote}
        if isinstance(proof, Refused):
            return self.refuse(proof, where)
        outcome = proof.identity
        roles = sorted(outcome.roles)
        if not authorized(outcome.roles, self.constraints):
            audit.info("authorization denied", **where, decision="denied", status=403, user=outcome.user, roles=roles)
            return Reject(403, FORBIDDEN, reason="authorization denied")
        via = "session" if outcome.session and allow_session else "credentials"
        audit.info("authenticated", **where, decision="authenticated", user=outcome.user, via=via, roles=roles)
        return proof

    def proof_headers(self, proof: Proof) -> dict[str, str]:
        """What the answer carries for the client (``WWW-Authenticate: Negotiate <token>``: mutual authentication)."""
        return self.realm.challenge(self.plain_http, proof.response) if proof.response else {}

    def refuse(self, refused: Refused, where: dict[str, Any]) -> Reject:
        if refused.status == 503:
            audit.warning(
                "authentication unavailable", **where, decision="unavailable", status=503, reason=refused.reason
            )
            if refused.limit is not None and self.realm.metrics is not None:
                self.realm.metrics.limited.labels(self.name, refused.limit).inc()
            retry = "1" if refused.limit else "5"  # a busy verifier frees up in about a hash's time
            return Reject(503, UNAVAILABLE, {"Retry-After": retry}, refused.reason, refused.limit)
        audit.info("authentication denied", **where, decision="denied", status=refused.status, reason=refused.reason)
        if refused.status == 400:
            return Reject(400, BAD_REQUEST_TEXT, reason=refused.reason)
        if refused.status == 401:
            return Reject(401, UNAUTHORIZED, self.realm.challenge(self.plain_http, refused.data), refused.reason)
        return Reject(403, FORBIDDEN, reason=refused.reason)

    # -- control resources -------------------------------------------------------------------

    async def control(self, handshake: Handshake, what: str) -> Reply:
        """``<path>/.wsgate/<what>``; the caller has checked the Origin. Shared state down: 503."""
        try:
            return await self._control(handshake, what)
        except StateUnavailable as exc:
            audit.warning("session resource unavailable", service=self.name, reason=str(exc), status=503)
            return Reply.text(503, UNAVAILABLE, (("Retry-After", "5"),))

    async def _control(self, handshake: Handshake, what: str) -> Reply:
        if what == "session" and self.realm.recycle:
            if handshake.method == "POST":
                return await self.login(handshake)
            if handshake.method == "GET":
                return await self.whoami(handshake)
            if handshake.method == "DELETE":
                return await self.logout(handshake)
            return Reply(405, headers=(("Allow", "GET, POST, DELETE"),))
        if what.startswith("refresh/") and handshake.method == "POST":
            return await self.refresh(handshake, what[len("refresh/") :])
        oidc = self.realm.oidc
        if oidc is not None and (what == "oidc" or what.startswith("oidc/")):
            secure = handshake.secure or self.offloaded_tls
            origin = f"{'https' if secure else 'http'}://{handshake.authority or handshake.host}"
            return await oidc.control(handshake, what[len("oidc") :], self.control_base(handshake.path), origin)
        return Reply.text(404, "Not Found\n")

    async def login(self, handshake: Handshake) -> Reply:
        """Fresh credentials → a session cookie; an existing session of the same user is renewed."""
        proof = await self.authorize(handshake, allow_session=False)
        if isinstance(proof, Reject):
            return Reply.refusal(proof)
        admitted, proven = proof.identity, tuple(self.proof_headers(proof).items())
        expires_at = self.realm.session_expiry(admitted)
        current = await self.current_session(handshake)
        if current is not None and current.identity.user == admitted.user and current.identity.session:
            # extend, not renew: a logout between the lookup and here keeps that session ended (a new one is issued)
            renewed = await self.realm.sessions.extend(current.identity.session, admitted, expires_at)
            if renewed is not None:
                extended = self.extend(Selector(session=current.identity.session), renewed.identity)
                return self.describe(
                    renewed.identity, extended=extended, expires=self.realm.renew_by(renewed.identity), headers=proven
                )
        token, session = await self.realm.sessions.issue(admitted, expires_at)
        cookie = set_cookie(
            self.realm.cookie,
            token,
            max_age=str(max(1, int(expires_at - time.time()))),
            path="/",
            secure=handshake.secure or self.offloaded_tls,
            httponly=True,
            samesite="Strict",
        )
        return self.describe(
            session.identity, expires=self.realm.renew_by(session.identity), headers=(("Set-Cookie", cookie), *proven)
        )

    async def whoami(self, handshake: Handshake) -> Reply:
        session = await self.current_session(handshake)
        if session is None or await self.realm.revoked(session.identity):
            return Reply.text(401, UNAUTHORIZED, tuple(self.realm.challenge(self.plain_http).items()))
        return self.describe(session.identity)

    async def logout(self, handshake: Handshake) -> Reply:
        """Drop the session and close every connection it opened (logout reaches live sockets)."""
        session = await self.current_session(handshake)
        closed = 0
        if session is not None and session.identity.session:
            key = session.identity.session
            await self.realm.sessions.drop(key)
            if self.realm.oidc is not None:
                self.realm.oidc.forget(key)  # its refresh token too
            closed = await self.expire(Selector(session=key), "logged out")
            audit.info(
                "service[%s]: user %r logged out, %d connection(s) closed", self.name, session.identity.user, closed
            )
        cookie = set_cookie(self.realm.cookie, "", max_age="0", expires="Thu, 01 Jan 1970 00:00:00 GMT", path="/")
        return Reply.json({"closed": closed}, headers=(("Set-Cookie", cookie),))

    async def refresh(self, handshake: Handshake, connection_id: str) -> Reply:
        """Fresh credentials of the same user extend one live connection, which stays open."""
        connection = self.connections.get(connection_id)
        if connection is None or connection.identity is None or connection.service != self.name:
            return Reply.text(404, "Not Found\n")
        proof = await self.authorize(handshake, allow_session=False)
        if isinstance(proof, Reject):
            return Reply.refusal(proof)
        admitted = proof.identity
        if admitted.user != connection.identity.user:
            audit.warning(
                "service[%s]: refresh of %s by %r refused: it belongs to %r",
                self.name,
                connection_id,
                admitted.user,
                connection.identity.user,
            )
            return Reply.text(403, FORBIDDEN)
        self.extend(Selector(id=connection_id), replace(admitted, session=connection.identity.session))
        deadline, _ = connection_deadline(connection.identity, connection.started, self.realm.config)
        return self.describe(connection.identity, expires=deadline, headers=tuple(self.proof_headers(proof).items()))

    async def current_session(self, handshake: Handshake) -> Session | None:
        try:
            token = self.realm.session_cookie(handshake.headers.getall("Cookie", []))
        except AmbiguousCredentials:
            return None  # two session cookies: neither is trusted
        return await self.realm.sessions.lookup(token) if token else None

    def extend(self, selector: Selector, identity: Identity) -> int:
        """Give the selected live connections the fresh identity and their new deadline."""
        count = 0
        timeouts = realm_timeouts(self.realm.config)
        for session in self.connections.select(selector):
            session.refresh(identity, timeouts)
            count += 1
        if count:
            audit.info("service[%s]: user %r re-authenticated %d live connection(s)", self.name, identity.user, count)
        return count

    @staticmethod
    def describe(
        identity: Identity, extended: int = 0, expires: float | None = None, headers: tuple[tuple[str, str], ...] = ()
    ) -> Reply:
        """``expires``: when the connection (refresh) or session must be renewed, if ever."""
        body: dict[str, Any] = {
            "user": identity.user,
            "roles": sorted(identity.roles),
            "expires": expires or identity.expires_at,
        }
        if extended:
            body["extended"] = extended
        return Reply.json(body, headers=headers)
