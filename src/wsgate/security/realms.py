"""Realm enforcement on the HTTP request, before any 101.

``RealmGuard`` stands in front of a protected service (``realm-name`` plus
``authorization-constraint``): it gathers credentials, runs the realm's login
chain, checks the roles and only then hands the request on with its ``Identity``.

On the wire (Kaazing reference §3.2): no or bad credentials → 401 with the realm's
challenge (every failure looks the same); authenticated without the roles → 403;
a module that could not decide (LDAP down) → 503. Reasons go to the audit log.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ..config.model import AuthorizationConstraint, Realm
from .challenges import CredentialsError, challenge_header, gather_credentials, offered_subprotocols
from .login import ChainEntry, Failed, LoginAttempt, Succeeded, Unavailable, build_module, run_chain

if TYPE_CHECKING:
    from ..services.base import ServiceHandler
    from .tls import PeerIdentity

audit = logging.getLogger("wsgate.audit")


@dataclass(frozen=True)
class Identity:
    """Who a connection belongs to, as the realm established it."""

    realm: str
    user: str | None
    roles: frozenset[str]
    expires_at: float | None  # wall-clock seconds; the connection must not outlive it
    token_digest: str | None = None  # SHA-256 of the bearer token, so revocation can target it


IDENTITY_KEY = web.RequestKey("wsgate.identity", Identity)


class RealmRuntime:
    """A configured realm, ready to authenticate requests."""

    def __init__(self, realm: Realm, base_dir: Path) -> None:
        self.config = realm
        auth = realm.authentication
        path = f"security/realm[{realm.name}]/authentication/login-modules"
        self.chain = [
            ChainEntry(m.success, build_module(m, f"{path}/login-module[{i + 1}]", base_dir), m.type)
            for i, m in enumerate(auth.login_modules)
        ]
        self.scheme = auth.http_challenge_scheme

    async def authenticate(
        self, request: web.BaseRequest, peer: PeerIdentity | None
    ) -> Identity | Failed | Unavailable:
        auth = self.config.authentication
        try:
            credentials = gather_credentials(
                request.headers,
                request.headers.getall("Authorization", []),
                {name: request.query.getall(name) for name in auth.http_query_parameters if name in request.query},
                auth.http_headers,
                auth.http_query_parameters,
                auth.http_cookies,
                offered_subprotocols(request.headers.get("Sec-WebSocket-Protocol")),
            )
        except CredentialsError as exc:
            return Failed(str(exc))
        attempt = LoginAttempt(credentials, request.remote or "?", peer)
        result = await run_chain(self.chain, attempt)
        trail = ", ".join(f"{name}: {what}" for name, what in result.trail)
        outcome = result.outcome
        if not isinstance(outcome, Succeeded):
            return type(outcome)(f"{outcome.reason} ({trail})")
        token = credentials.bearer()
        digest = hashlib.sha256(token.encode()).hexdigest() if token else None
        return Identity(self.config.name, outcome.user, outcome.principals, outcome.expires_at, digest)

    def challenge(self, plain_http: bool) -> dict[str, str]:
        if self.scheme is None:
            return {}
        return {
            "WWW-Authenticate": challenge_header(self.scheme, self.config.description or self.config.name, plain_http)
        }


def authorized(roles: frozenset[str], constraints: Sequence[AuthorizationConstraint]) -> bool:
    """Every listed role is needed; ``*`` and ``require-valid-user`` need only an authenticated user."""
    needed = {role for c in constraints for role in c.require_roles if role != "*"}
    return needed <= roles


class RealmGuard:
    """Stands in front of a protected service; only authorized requests pass, with their identity."""

    def __init__(self, service: ServiceHandler, realm: RealmRuntime) -> None:
        self.service = service
        self.realm = realm
        self.name = service.name
        self.plain_http = service.config.type == "directory"

    async def handle(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        outcome = await self.realm.authenticate(request, peer)
        where = f"service[{self.name}] realm[{self.realm.config.name}] from {request.remote}"
        if isinstance(outcome, Unavailable):
            audit.warning("%s: unavailable: %s", where, outcome.reason)
            return web.Response(status=503, text="Service Unavailable\n", headers={"Retry-After": "5"})
        if isinstance(outcome, Failed):
            audit.info("%s: denied: %s", where, outcome.reason)
            challenge = self.realm.challenge(self.plain_http)
            if not challenge:
                return web.Response(status=403, text="Forbidden\n")
            return web.Response(status=401, text="Unauthorized\n", headers=challenge)
        if not authorized(outcome.roles, self.service.config.authorization_constraints):
            audit.info(
                "%s: user %r lacks roles (has %s)", where, outcome.user, ", ".join(sorted(outcome.roles)) or "none"
            )
            return web.Response(status=403, text="Forbidden\n")
        audit.info(
            "%s: user %r authenticated, roles %s", where, outcome.user, ", ".join(sorted(outcome.roles)) or "none"
        )
        request[IDENTITY_KEY] = outcome
        return await self.service.handle(request, peer)
