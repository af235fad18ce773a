"""OpenID Connect sign-in for browsers: the realm's ``<path>/.wsgate/oidc/…`` control resources, without aiohttp.

A realm whose chain has an ``oidc`` login module (``login.oidc``) gets an ``OidcFlow``; every protected
service of the realm answers, under each of its paths:

- ``GET  …/.wsgate/oidc``: what the demo page needs to offer "Sign in with the provider" (no token, ever);
- ``GET  …/.wsgate/oidc/login?return=/path``: a 302 to the provider (code flow, PKCE S256, state, nonce). The
  transaction stays here, bound to the browser by a short-lived cookie (HttpOnly, SameSite=Lax: the callback
  is a cross-site navigation), single use, bounded in number and time;
- ``GET  …/.wsgate/oidc/callback``: state (constant-time, single use, this browser's), the RFC 9207 ``iss``
  parameter (mix-up), the code exchanged with the PKCE verifier, the ID token checked (signature, iss, aud,
  azp, exp/iat, nonce); then the realm session cookie and a same-site hop to the checked ``return`` path.
  Every failure is the same 403 page; the reason is in the audit log only;
- ``POST …/.wsgate/oidc/logout``: RP-initiated logout (the session cookie is SameSite=Strict and the request
  must carry an allowed ``Origin``): the session ends, its sockets close, 303 to the provider's
  ``end_session_endpoint``;
- ``POST …/.wsgate/oidc/backchannel-logout``: the provider's signed logout token (no cookie, no Origin):
  the sessions it names end and their sockets close (1008) on every node, through the revocation list.

The provider rules the session: the session's and its connections' deadline is the tokens' lifetime; before
it, the refresh token gets new ones and every live connection of the session is extended in place; a refresh
the provider refuses ends the session and closes its connections (1008). Tokens stay on the node that signed
the browser in (memory only): never in a cookie, a page, a URL the gateway writes (but ``id_token_hint``, see
docs/security.md), a log line or Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from ..core.handshake import Handshake, Reply
from ..core.identity import Identity
from ..observe.logs import get_logger
from ..state.connections import Selector
from ..state.revocations import token_digest, token_key
from .challenges import AmbiguousCredentials, cookie_values, set_cookie
from .login.oidc import OidcError, OidcLoginModule, ProviderUnavailable, Tokens

if TYPE_CHECKING:
    from ..config.model import Realm
    from ..core.session import Timeouts
    from ..state.revocations import RevocationList
    from ..state.sessions import SessionStore


class RealmRuntime(Protocol):
    """What the sign-in flow uses of its realm (``security.realms.RealmRuntime``, which owns the flow: a
    protocol here keeps the import pointing one way)."""

    config: Realm
    cookie: str
    sessions: SessionStore
    revocations: RevocationList

    async def revoked(self, identity: Identity) -> bool: ...

    def session_cookie(self, cookie_headers: list[str]) -> str | None: ...

    def session_expiry(self, identity: Identity) -> float: ...


audit = get_logger("wsgate.audit")
TRANSACTION_TTL = 600.0  # a sign-in at the provider must come back within 10 minutes
MAX_TRANSACTIONS = 10_000  # sign-ins in progress (oldest dropped first): a flood of /login costs bounded memory
PER_CLIENT = 32  # per client address once the store is half full (its oldest dropped first): a flood evicts its own
MAX_REPLAYS = 10_000  # logout-token jtis remembered
RETURN_MAX = 2048
BODY_LIMIT = 16 * 1024  # a logout token form
RETRY = 5.0  # a refresh the provider did not answer is tried again this often, until the session's end
FAILED_PAGE = (
    "<!doctype html><meta charset=utf-8><title>Sign-in failed</title>"
    "<p>Sign-in failed. <a href='/'>Start again</a>.</p>\n"
)
NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))
PAGE_HEADERS = (
    *NO_STORE,
    ("Referrer-Policy", "no-referrer"),  # the callback URL carries the code: never in a Referer
    ("Content-Security-Policy", "default-src 'none'"),
    ("X-Content-Type-Options", "nosniff"),
)


def safe_return(value: str | None) -> str | None:
    """A ``return`` path we may redirect to after sign-in: a path on this site, nothing else.

    ``None`` for anything that is not: absolute or scheme-relative URLs (``https://evil``, ``//evil``),
    backslashes (``/\\evil``, which browsers read as ``//evil``), control characters, non-ASCII, too long."""
    if value is None or value == "":
        return "/"
    if len(value) > RETURN_MAX or not value.isascii() or not value.startswith("/"):
        return None
    if any(c < " " or c == "\x7f" or c == "\\" for c in value) or value.startswith("//"):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return None
    return value


def binding_digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def client_key(remote: str) -> str:
    """Who a sign-in in progress is counted against: the client's address (an IPv6 client's /64, which one
    host commonly holds whole)."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(frozen=True)
class Transaction:
    """One sign-in in progress, kept here: what the callback must find and prove."""

    binding: str  # SHA-256 of the browser's binding cookie
    nonce: str
    verifier: str  # the PKCE code verifier
    return_to: str
    redirect_uri: str
    expires_at: float  # monotonic
    client: str = ""  # ``client_key`` of the address that began it


class Transactions:
    """Sign-ins in progress by ``state``: single use, expiring, bounded (the oldest goes first).

    Bounded per client as well once the store is half full (``per_client``, the client's own oldest goes first):
    one address flooding ``/login`` recycles its own slots and never pushes out the sign-ins other browsers have
    in progress, while many browsers behind one address (a proxy, a NAT) are not limited under ordinary load."""

    def __init__(
        self, limit: int = MAX_TRANSACTIONS, ttl: float = TRANSACTION_TTL, per_client: int = PER_CLIENT
    ) -> None:
        self.limit, self.ttl, self.per_client = limit, ttl, per_client
        self._by_state: OrderedDict[str, Transaction] = OrderedDict()
        self._by_client: dict[str, dict[str, None]] = {}  # client → its states, oldest first

    def begin(self, binding: str, return_to: str, redirect_uri: str, client: str = "") -> tuple[str, Transaction]:
        """A new transaction: its ``state`` and what it keeps (nonce and PKCE verifier: 256 random bits each)."""
        now = time.monotonic()
        while self._by_state and (
            len(self._by_state) >= self.limit or next(iter(self._by_state.values())).expires_at <= now
        ):
            self._drop(next(iter(self._by_state)))
        mine = self._by_client.get(client)
        while mine and len(mine) >= self.per_client and 2 * len(self._by_state) >= self.limit:
            self._drop(next(iter(mine)))
        state = secrets.token_urlsafe(32)
        transaction = Transaction(
            binding_digest(binding),
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(48),  # 64 characters: RFC 7636 wants 43 to 128
            return_to,
            redirect_uri,
            now + self.ttl,
            client,
        )
        self._by_state[state] = transaction
        self._by_client.setdefault(client, {})[state] = None
        return state, transaction

    def take(self, state: str, binding: str | None) -> Transaction | None:
        """The transaction ``state`` names, once, unexpired, if ``binding`` is that of the browser that began it."""
        transaction = self._drop(state)
        if transaction is None or transaction.expires_at <= time.monotonic() or binding is None:
            return None
        if not hmac.compare_digest(transaction.binding, binding_digest(binding)):
            return None
        return transaction

    def _drop(self, state: str) -> Transaction | None:
        transaction = self._by_state.pop(state, None)
        if transaction is not None:
            mine = self._by_client.get(transaction.client)
            if mine is not None:
                mine.pop(state, None)
                if not mine:
                    del self._by_client[transaction.client]
        return transaction

    def __len__(self) -> int:
        return len(self._by_state)


class Replays:
    """Logout-token ``jti``s seen (until their window ends), bounded: a replayed logout token is refused."""

    def __init__(self, limit: int = MAX_REPLAYS) -> None:
        self.limit = limit
        self._until: OrderedDict[str, float] = OrderedDict()

    def first(self, jti: str, until: float) -> bool:
        """Is this the first time ``jti`` is seen? Remembers it until ``until`` (wall clock)."""
        now = time.time()
        while self._until and (len(self._until) >= self.limit or next(iter(self._until.values())) <= now):
            self._until.popitem(last=False)
        if jti in self._until:
            return False
        self._until[jti] = until
        return True


def provider_session_digest(issuer: str, sid: str | None, sub: str | None) -> str:
    """What an OIDC identity carries as its ``token_digest``: the provider session (``sid``, else ``sub``), so a
    back-channel logout revokes it (``token:<digest>``) and every node closes its connections."""
    return hashlib.sha256(f"oidc {issuer} {'sid' if sid else 'sub'} {sid or sub}".encode()).hexdigest()


@dataclass
class Held:
    """A signed-in session's tokens, on the node that signed it in (memory only)."""

    cookie: str  # the session cookie value, to see whether the session still exists before a refresh
    tokens: Tokens
    identity: Identity
    sid: str | None
    sub: str | None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class OidcFlow:
    """One realm's browser sign-in with its ``oidc`` module; ``attach`` gives it the live connections."""

    def __init__(self, realm: RealmRuntime, module: OidcLoginModule) -> None:
        self.realm = realm
        self.module = module
        self.transactions = Transactions()
        self.replays = Replays()
        self.held: dict[str, Held] = {}  # by session key (the cookie's digest)
        self.binding_cookie = realm.cookie + "_oidc"
        self.select: Callable[[Selector], list[Any]] | None = None
        self.expire: Callable[[Selector, str], Awaitable[int]] | None = None
        self.timeouts: Timeouts | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # With shared state, the gateway publishes refreshed sessions here (``EXTENDED``) so that every node extends
        # its connections of the session; ``extended_elsewhere`` is the receiving side.
        self.publish: Callable[[dict[str, Any]], Awaitable[int]] | None = None

    def attach(
        self,
        select: Callable[[Selector], list[Any]],
        expire: Callable[[Selector, str], Awaitable[int]],
        timeouts: Timeouts,
    ) -> None:
        """The gateway's live connections (every gate of the realm passes the same ones)."""
        self.select, self.expire, self.timeouts = select, expire, timeouts

    # -- dispatch ------------------------------------------------------------------------------

    async def control(self, handshake: Handshake, what: str, base: str, origin: str) -> Reply:
        """``what`` under ``<base>/.wsgate/oidc``; ``origin``: this site's (what a redirect URI is derived from)."""
        if what == "" and handshake.method == "GET":
            return Reply.json(
                {
                    "issuer": self.module.issuer,
                    "login": f"{base}/.wsgate/oidc/login",
                    "logout": f"{base}/.wsgate/oidc/logout",
                },
                headers=NO_STORE,
            )
        if what == "/login" and handshake.method == "GET":
            return await self.login(handshake, base, origin)
        if what == "/callback" and handshake.method == "GET":
            return await self.callback(handshake, origin.startswith("https:"))
        if what == "/logout" and handshake.method == "POST":
            return await self.logout(handshake)
        if what == "/backchannel-logout" and handshake.method == "POST":
            return await self.backchannel(handshake)
        return Reply.text(404, "Not Found\n")

    # -- sign-in -------------------------------------------------------------------------------

    async def login(self, handshake: Handshake, base: str, origin: str) -> Reply:
        returns = handshake.query.getall("return", [])
        return_to = safe_return(returns[0] if len(returns) == 1 else None if returns else "")
        if return_to is None:
            audit.info(
                "oidc sign-in refused",
                realm=self.realm.config.name,
                remote=handshake.remote,
                reason="return is not a path on this site",
            )
            return Reply.text(400, "Bad Request: return must be a path on this site\n")
        try:
            provider = await self.module.discover()
        except ProviderUnavailable as exc:
            audit.warning("oidc provider unavailable", realm=self.realm.config.name, reason=str(exc), status=503)
            return Reply.text(503, "Service Unavailable\n", (("Retry-After", "5"),))
        binding = self._binding(handshake) or secrets.token_urlsafe(32)
        redirect_uri = self.module.redirect_uri or f"{origin}{base}/.wsgate/oidc/callback"
        state, transaction = self.transactions.begin(binding, return_to, redirect_uri, client_key(handshake.remote))
        url = self.module.authorization_url(provider, redirect_uri, state, transaction.nonce, transaction.verifier)
        cookie = set_cookie(
            self.binding_cookie,
            binding,
            max_age=str(int(TRANSACTION_TTL)),
            path=urlsplit(redirect_uri).path.rpartition("/")[0] + "/",  # sent to the callback only
            secure=origin.startswith("https:"),
            httponly=True,
            samesite="Lax",
        )
        return Reply(302, headers=(("Location", url), ("Set-Cookie", cookie), *NO_STORE))

    def _binding(self, handshake: Handshake) -> str | None:
        values = cookie_values(handshake.headers.getall("Cookie", [])).get(self.binding_cookie, [])
        value = values[0] if len(values) == 1 else None
        return value if value is not None and 40 <= len(value) <= 64 and value.isascii() else None

    async def callback(self, handshake: Handshake, secure: bool) -> Reply:
        """Whatever fails, the browser sees the same 403 page; the audit log says why."""
        try:
            return await self._callback(handshake, secure)
        except (OidcError, AmbiguousCredentials) as exc:  # ProviderUnavailable included: no hint either way
            audit.info(
                "oidc sign-in refused",
                realm=self.realm.config.name,
                remote=handshake.remote,
                decision="denied",
                status=403,
                reason=str(exc),
            )
            return Reply(403, FAILED_PAGE.encode(), PAGE_HEADERS, "text/html")

    async def _callback(self, handshake: Handshake, secure: bool) -> Reply:
        query = handshake.query
        for name in ("state", "code", "iss", "error"):
            if len(query.getall(name, [])) > 1:
                raise OidcError(f"{name} given more than once")
        state = query.get("state")
        if not state:
            raise OidcError("no state")
        transaction = self.transactions.take(state, self._binding(handshake))
        if transaction is None:
            raise OidcError("state unknown, used, expired or begun by another browser")
        if "error" in query:
            raise OidcError(f"provider answered error {query['error'][:40]!r}")
        provider = await self.module.discover()
        issuer = query.get("iss")
        if issuer is not None and issuer != provider.issuer:  # RFC 9207: the answer is from another provider (mix-up)
            raise OidcError("authorization response iss is another issuer")
        if issuer is None and provider.iss_parameter:
            raise OidcError("authorization response without the iss its provider promises (RFC 9207)")
        code = query.get("code")
        if not code:
            raise OidcError("no code")
        tokens = await self.module.exchange(code, transaction.redirect_uri, transaction.verifier, transaction.nonce)
        user, roles = self.module.identity_of(tokens.claims)
        sid, sub = _str(tokens.claims.get("sid")), _str(tokens.claims.get("sub"))
        now = time.time()
        identity = Identity(
            self.realm.config.name,
            user,
            roles,
            tokens.expires_at,
            provider_session_digest(self.module.issuer, sid, sub),
            now,
        )
        if await self.realm.revoked(identity):
            raise OidcError("revoked")
        await self._drop_current(handshake)
        cookie_value, session = await self.realm.sessions.issue(identity, self.realm.session_expiry(identity))
        key = session.identity.session
        assert key is not None
        self.held[key] = Held(cookie_value, tokens, session.identity, sid, sub)
        self._schedule(key)
        audit.info(
            "oidc signed in",
            realm=self.realm.config.name,
            remote=handshake.remote,
            decision="authenticated",
            user=user,
            roles=sorted(roles),
            expires=round(tokens.expires_at - now),
        )
        cookie = set_cookie(
            self.realm.cookie,
            cookie_value,
            max_age=str(max(1, int(session.expires_at - now))),
            path="/",
            secure=secure,
            httponly=True,
            samesite="Strict",
        )
        clear = set_cookie(
            self.binding_cookie,
            "",
            max_age="0",
            path=handshake.path.rpartition("/")[0] + "/",
            secure=secure,
            httponly=True,
            samesite="Lax",
        )
        # A page, not a 302: the hop to the return path is then a same-site navigation, which carries the
        # SameSite=Strict session cookie (a redirect at the end of a cross-site chain would not).
        target = html.escape(transaction.return_to, quote=True)
        page = (
            f"<!doctype html><meta charset=utf-8><meta http-equiv=refresh content='0;url={target}'>"
            f"<title>Signed in</title><a href='{target}'>Continue</a>\n"
        )
        return Reply(200, page.encode(), (*PAGE_HEADERS, ("Set-Cookie", cookie), ("Set-Cookie", clear)), "text/html")

    async def _drop_current(self, handshake: Handshake) -> None:
        """A new sign-in replaces the browser's session, if it had one."""
        try:
            token = self.realm.session_cookie(handshake.headers.getall("Cookie", []))
        except AmbiguousCredentials:
            return
        if token:
            session = await self.realm.sessions.lookup(token)
            if session is not None and session.identity.session:
                await self.realm.sessions.drop(session.identity.session)
                self.forget(session.identity.session)

    # -- the provider rules the session ----------------------------------------------------------

    def _schedule(self, key: str, delay: float | None = None) -> None:
        """The next refresh of a session's tokens; without a refresh token, forgetting them once they expire."""
        held = self.held.get(key)
        if held is None:
            return
        if held.timer is not None:
            held.timer.cancel()
        loop = asyncio.get_running_loop()
        left = held.tokens.expires_at - time.time()
        if held.tokens.refresh_token is None:
            held.timer = loop.call_later(max(0.0, left) + 1.0, self.forget, key)
            return
        if delay is None:
            delay = max(0.0, left - min(self.module.refresh_margin, left / 3))
        held.timer = loop.call_later(delay, self._start_refresh, key)

    def _start_refresh(self, key: str) -> None:
        task = asyncio.get_running_loop().create_task(self.refresh(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def refresh(self, key: str) -> None:
        """New tokens before the old ones run out; the session and its live connections follow them."""
        held = self.held.get(key)
        if held is None or held.tokens.refresh_token is None:
            return
        held.timer = None
        try:
            session = await self.realm.sessions.lookup(held.cookie)
            if session is None or await self.realm.revoked(held.identity):
                self.forget(key)  # logged out or revoked meanwhile
                return
            tokens = await self.module.refresh(held.tokens.refresh_token, held.tokens.claims)
            user, roles = self.module.identity_of(tokens.claims)
            if user != held.identity.user:
                raise OidcError("refreshed tokens name another user")
        except ProviderUnavailable as exc:
            left = held.tokens.expires_at - time.time()
            audit.warning(
                "oidc refresh failed, retrying", realm=self.realm.config.name, user=held.identity.user, reason=str(exc)
            )
            if left > 1:
                self._schedule(key, min(RETRY, left / 2))
            else:  # the connections close at the deadline; the tokens are of no use after it
                held.timer = asyncio.get_running_loop().call_later(max(0.0, left) + 1.0, self.forget, key)
            return
        except OidcError as exc:
            audit.info(
                "oidc refresh refused: session ended",
                realm=self.realm.config.name,
                user=held.identity.user,
                reason=str(exc),
            )
            await self.end(key, "session ended by the provider")
            return
        except Exception:  # shared state down (StateUnavailable) or a bug: the deadline still closes the connections
            audit.exception("oidc refresh failed", realm=self.realm.config.name, user=held.identity.user)
            return
        # Logged out while the provider answered (here: its tokens are forgotten; on another node or by the provider:
        # revoked): it stays so.
        if self.held.get(key) is not held or await self.realm.revoked(held.identity):
            self.forget(key)
            return
        identity = replace(held.identity, roles=roles, expires_at=tokens.expires_at, authenticated_at=time.time())
        renewed = await self.realm.sessions.extend(key, identity, self.realm.session_expiry(identity))
        if renewed is None:  # dropped meanwhile (a logout, on any node): never re-created by a refresh
            self.forget(key)
            return
        held.tokens, held.identity = tokens, renewed.identity
        extended = 0
        if self.select is not None and self.timeouts is not None:
            for live in self.select(Selector(session=key)):
                live.refresh(renewed.identity, self.timeouts)
                extended += 1
        if self.publish is not None:
            try:
                await self.publish(_extension(renewed.identity))
            except Exception as exc:  # StateUnavailable: the other nodes' connections close at the old deadline
                audit.warning(
                    "oidc refresh not shared with the other nodes", realm=self.realm.config.name, reason=str(exc)
                )
        audit.info(
            "oidc session refreshed",
            realm=self.realm.config.name,
            user=identity.user,
            extended=extended,
            expires=round(tokens.expires_at - time.time()),
        )
        self._schedule(key)

    async def extended_elsewhere(self, message: dict[str, Any]) -> int:
        """Another node refreshed a session: this node's connections of it get the new identity and deadline.

        The message only names the session: what the connections get is the session as the shared store holds
        it (which the refreshing node wrote), and only if it still exists, is not revoked, and is the same user
        and provider session as each connection's. A message alone (a forged or stale one on the channel) can
        neither revive a session ended meanwhile nor give a connection another identity, roles or deadline."""
        key = message.get("session")
        if not isinstance(key, str) or self.select is None or self.timeouts is None:
            return 0
        session = await self.realm.sessions.find(key)
        if session is None or await self.realm.revoked(session.identity):
            return 0
        identity = session.identity
        extended = 0
        for live in self.select(Selector(session=key)):
            current = live.identity
            if current is not None and (current.user, current.token_digest) == (identity.user, identity.token_digest):
                live.refresh(identity, self.timeouts)
                extended += 1
        return extended

    async def end(self, key: str, reason: str) -> int:
        """End a session here: drop it, forget its tokens, close its connections (1008) on every node."""
        self.forget(key)
        await self.realm.sessions.drop(key)
        return await self.expire(Selector(session=key), reason) if self.expire is not None else 0

    def forget(self, key: str) -> Held | None:
        held = self.held.pop(key, None)
        if held is not None and held.timer is not None:
            held.timer.cancel()
        return held

    # -- logout ----------------------------------------------------------------------------------

    async def logout(self, handshake: Handshake) -> Reply:
        """RP-initiated logout: a browser's POST (it must carry an Origin, which the gate found allowed)."""
        if handshake.headers.get("Origin") is None:
            return Reply.text(403, "Forbidden\n")
        try:
            token = self.realm.session_cookie(handshake.headers.getall("Cookie", []))
        except AmbiguousCredentials:
            token = None
        session = await self.realm.sessions.lookup(token) if token else None
        id_token = None
        closed = 0
        if session is not None and session.identity.session:
            key = session.identity.session
            held = self.held.get(key)
            if held is not None and held.tokens.id_token is not None:
                id_token = held.tokens.id_token
                # the hint travels in a URL: this gateway refuses it as a bearer token from now on
                until = float(held.tokens.claims.get("exp", time.time() + 3600))
                await self.realm.revocations.revoke(token_key(None, token_digest(id_token)), until)
            closed = await self.end(key, "logged out")
            audit.info("oidc logged out", realm=self.realm.config.name, user=session.identity.user, closed=closed)
        clear = set_cookie(self.realm.cookie, "", max_age="0", expires="Thu, 01 Jan 1970 00:00:00 GMT", path="/")
        target: str | None = None
        try:
            provider = await self.module.discover()
            target = self.module.end_session_url(provider, id_token, secrets.token_urlsafe(16))
        except ProviderUnavailable:
            target = None
        target = target or self.module.post_logout_redirect_uri or "/"
        return Reply(303, headers=(("Location", target), ("Set-Cookie", clear), *PAGE_HEADERS))

    async def backchannel(self, handshake: Handshake) -> Reply:
        """OIDC Back-Channel Logout 1.0: 200 when done, 400 for a token refused (the reason: audit only)."""
        where = {"realm": self.realm.config.name, "remote": handshake.remote}
        try:
            form = dict(parse_qsl((await handshake.body.read(BODY_LIMIT)).decode("ascii"), strict_parsing=True))
            token = form.get("logout_token")
            if not token:
                raise OidcError("no logout_token")
            sid, sub, jti, iat = await self.module.verify_logout_token(token)
        except ProviderUnavailable as exc:
            audit.warning("oidc back-channel logout unavailable", **where, reason=str(exc), status=503)
            return Reply.json({"error": "temporarily_unavailable"}, 503, NO_STORE)
        except (OidcError, ValueError, UnicodeDecodeError) as exc:
            audit.info("oidc back-channel logout refused", **where, status=400, reason=str(exc) or type(exc).__name__)
            return Reply.json({"error": "invalid_request"}, 400, NO_STORE)
        except Exception as exc:  # BodyTooLarge, a client gone: no logout, and say so
            audit.info("oidc back-channel logout refused", **where, status=400, reason=type(exc).__name__)
            return Reply.json({"error": "invalid_request"}, 400, NO_STORE)
        if not self.replays.first(jti, iat + self.module.logout_max_age + self.module.leeway):
            audit.info("oidc back-channel logout refused", **where, status=400, reason="replayed jti")
            return Reply.json({"error": "invalid_request"}, 400, NO_STORE)
        closed = await self.provider_logout(sid, sub)
        audit.info("oidc back-channel logout", **where, sid=bool(sid), closed=closed)
        return Reply(200, headers=NO_STORE)

    async def provider_logout(self, sid: str | None, sub: str | None) -> int:
        """The provider ended ``sid`` (else every session of ``sub``): revoke it for every node, close its sockets."""
        digests = {provider_session_digest(self.module.issuer, sid, None if sid else sub)}
        if sid is None and sub is not None:
            digests |= {h.identity.token_digest or "" for h in self.held.values() if h.sub == sub} - {""}
        until = time.time() + (self.realm.config.authentication.session_timeout or 3600.0)
        closed = 0
        for digest in digests:
            await self.realm.revocations.revoke(token_key(None, digest), until)  # sessions elsewhere: refused there
            if self.expire is not None:
                closed += await self.expire(Selector(token=digest), "logged out by the provider")
        for key, held in list(self.held.items()):
            if (sid is not None and held.sid == sid) or (sid is None and held.sub == sub):
                self.forget(key)
                await self.realm.sessions.drop(key)
        return closed

    async def close(self) -> None:
        for key in list(self.held):
            self.forget(key)
        for task in list(self._tasks):
            task.cancel()


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


EXTENDED = "oidc-extended"  # the shared-state channel of refreshed sessions


def _extension(identity: Identity) -> dict[str, Any]:
    """What the other nodes need to extend their connections of a refreshed session (no token, no cookie)."""
    return {
        "realm": identity.realm,
        "session": identity.session,
        "user": identity.user,
        "roles": sorted(identity.roles),
        "expires_at": identity.expires_at,
        "authenticated_at": identity.authenticated_at,
        "token_digest": identity.token_digest,
    }
