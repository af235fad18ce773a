"""State shared through Redis (``state: {type: redis}``): what several processes and nodes must agree on.

``RedisState`` owns the gateway's ``redis.asyncio`` clients (one for commands, answers decoded as text; one
for raw bytes, without retries) and one pub/sub listener that reconnects with backoff; the stores (sessions,
revocations, the connection registry, broadcast fan-out) are built on it. Messages are JSON (``subscribe``/``publish``),
or raw bytes (``subscribe_raw``/``publish_raw``: binary-safe, for payloads such as broadcast messages,
where base64 in JSON would cost a third more).
Every key starts with ``<key-prefix>:`` so that several gateways can share one Redis.
No secret is stored in a usable form: sessions by the SHA-256 of their cookie, tokens by digest.

Redis unavailable: a command that fails or takes longer than ``timeout`` raises ``StateUnavailable``;
callers decide, and they fail closed (a new login that needs a revocation check answers 503; a
connection already open keeps going). ``up`` says whether the last exchange worked, for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, replace
from typing import Any, Protocol, TypeVar

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from ..config.model import State
from ..core.identity import Identity
from ..errors import ConfigError, GatewayError
from .connections import L, Live, MemoryConnections, Selector
from .sessions import Session, digest

log = logging.getLogger("wsgate.state")
Handler = Callable[[dict[str, Any]], Awaitable[None] | None]
RawHandler = Callable[[bytes], None]  # a raw message's payload, from another process; must not block
ORIGIN_SIZE = 16  # a raw message starts with its publishing process's random id (``origin``)
L_contra = TypeVar("L_contra", bound=Live, contravariant=True)


# What ``wsgate_state_errors_total{operation}`` counts failures of: reads and writes of sessions and
# revocations, publishing to the other nodes, the pub/sub listener, the connection registry's writes.
OPERATIONS = ("read", "write", "publish", "listen", "registry")
READS = frozenset(("get", "mget", "smembers", "exists", "hgetall", "hexists", "scan", "ping"))


class StateUnavailable(GatewayError):
    """Redis did not answer in time, or refused: the caller fails closed."""


def node_name(config: State) -> str:
    """This node's name in the registry: configured, else host name and process id (unique per worker)."""
    return config.node or f"{socket.gethostname()}-{os.getpid()}"


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a Redis connection error (redis-py keeps it as the context), if there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class RedisState:
    """The gateway's Redis: a client for commands (answers as text), one that neither decodes nor retries (the
    pub/sub listener and ``publish_raw``), keys under ``key_prefix``."""

    def __init__(self, config: State) -> None:
        assert config.url is not None, "the config builder requires url for type redis"
        self.config = config
        self.prefix = config.key_prefix
        self.node = node_name(config)
        self.timeout = config.timeout
        kwargs: dict[str, Any] = {
            "socket_timeout": config.timeout,
            "socket_connect_timeout": config.timeout,
            "health_check_interval": 10,
            "decode_responses": True,
        }
        if config.password is not None:
            kwargs["password"] = config.password
        if config.url.startswith("rediss://"):
            kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            if config.ca_file is not None:
                kwargs["ssl_ca_certs"] = str(config.ca_file)
        # Commands: a pooled connection that Redis dropped (a restart) fails once, then the command is sent again
        # on a new one; without the retry, every idle connection left from before an outage failed a request after it.
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            config.url, retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError], **kwargs
        )
        # Pub/sub: no retry, so that the listener sees every lost connection (messages published meanwhile are
        # lost) and resynchronises; a transparent reconnect would skip that. Raw bytes (JSON is parsed from bytes),
        # so that raw messages are binary-safe; ``publish_raw`` uses it too (no retry: a batch is published at most
        # once, never twice after a connection lost half-way).
        self.subscriber: aioredis.Redis = aioredis.Redis.from_url(config.url, **{**kwargs, "decode_responses": False})
        # Which process published a message: ``node`` is shared by the workers of one node (``--workers`` with a
        # configured ``node``), so a process knows its own messages by this instead (raw messages start with it).
        self.origin = secrets.token_hex(ORIGIN_SIZE // 2)
        self.raw_origin = self.origin.encode()
        self.up = False
        self.handlers: dict[str, list[Handler]] = {}
        self.raw_handlers: dict[str, list[RawHandler]] = {}
        self._pubsub: Any = None  # the listener's, once it is subscribed to every channel with a handler
        self._confirmed: dict[str, asyncio.Event] = {}  # channels Redis confirmed subscribing the listener to
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self.on_error: Callable[[str], None] | None = None  # a failed exchange, by operation (the metrics)
        self.listener: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def call(self, command: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """One Redis command, bounded by ``timeout``; any failure is ``StateUnavailable``."""
        name = getattr(command, "__name__", "")
        operation = "publish" if name == "publish" else "read" if name in READS else "write"
        return await self.attempt(operation, command, *args, **kwargs)

    async def attempt(self, operation: str, command: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """``call`` with the ``operation`` a failure is counted under (one of ``OPERATIONS``)."""
        try:
            result = await asyncio.wait_for(command(*args, **kwargs), self.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(exc, operation)
            raise StateUnavailable(f"Redis {self.config.url} unavailable: {type(exc).__name__}") from None
        self._up()
        return result

    def _down(self, exc: BaseException, operation: str) -> None:
        """One WARNING when Redis goes away (not one per failed command)."""
        if self.up:
            log.warning("state: Redis %s unavailable: %s", self.config.url, type(exc).__name__)
        self.up = False
        if self.on_error is not None:
            self.on_error(operation if operation in OPERATIONS else "write")

    def _up(self) -> None:
        """One INFO when Redis answers again, whoever notices first: a command or the listener's reconnect."""
        if not self.up:
            log.info("state: Redis %s reachable again", self.config.url)
        self.up = True

    def mine(self, message: dict[str, Any]) -> bool:
        """Whether this process published ``message`` (its handlers have done the work already)."""
        return message.get("origin") == self.origin

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler(message)`` for every JSON message published on ``channel`` (this node's included)."""
        self.handlers.setdefault(self.key(channel), []).append(handler)

    async def publish(self, channel: str, message: dict[str, Any]) -> int:
        """Publish ``message`` to every node (at most once: durable facts go in keys as well)."""
        return int(
            await self.call(
                self.client.publish,
                self.key(channel),
                json.dumps({**message, "node": self.node, "origin": self.origin}),
            )
        )

    async def subscribe_raw(self, channel: str, handler: RawHandler) -> None:
        """Call ``handler(payload)`` for every payload that another process publishes on ``channel`` with
        ``publish_raw`` (this process's own are not handed back: it delivered them itself, in order).

        Returns once Redis confirmed the subscription (bounded by ``timeout``; if Redis is unavailable, the
        listener subscribes when it reconnects). Messages published meanwhile do not reach this process."""
        name = self.key(channel)
        handlers = self.raw_handlers.setdefault(name, [])
        handlers.append(handler)
        pubsub = self._pubsub
        if pubsub is None or len(handlers) > 1 or name in self.handlers:
            return  # the listener subscribes when it (re)connects, or is subscribed already
        confirmed = self._confirmed.setdefault(name, asyncio.Event())
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(pubsub.subscribe(name), self.timeout)
            await asyncio.wait_for(confirmed.wait(), self.timeout)

    def unsubscribe_raw(self, channel: str, handler: RawHandler) -> None:
        """Stop calling ``handler``; the channel stays subscribed (its messages ignored) until a reconnect."""
        name = self.key(channel)
        handlers = self.raw_handlers.get(name, [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            self.raw_handlers.pop(name, None)

    async def publish_raw(self, channel: str, payloads: Sequence[bytes]) -> None:
        """Publish ``payloads`` on ``channel``, in this order, in one round trip; ``StateUnavailable`` if
        Redis did not take them (then some may have been published). Callers that need their order kept
        publish from one task (commands issued concurrently go over different connections)."""
        name, origin = self.key(channel), self.raw_origin
        if len(payloads) == 1:
            await self.call(self.subscriber.publish, name, origin + payloads[0])
            return
        pipe = self.subscriber.pipeline(transaction=False)
        for payload in payloads:
            pipe.publish(name, origin + payload)
        await self.call(pipe.execute)

    async def start(self) -> None:
        """Check that Redis answers (else a ``ConfigError`` naming the element to fix) and start listening."""
        try:
            await asyncio.wait_for(self.client.ping(), self.timeout * 5)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._start_error(exc) from None
        self.up = True
        self.listener = asyncio.create_task(self._listen(), name="wsgate-state-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), self.timeout * 5)

    def _start_error(self, exc: BaseException) -> ConfigError:
        """Why Redis cannot be used at start-up, naming the element to fix (``wsgate run`` exits 2 with it)."""
        url = self.config.url
        if isinstance(exc, AuthenticationError):
            if self.config.password is None:
                return ConfigError("state/password-file", f"Redis {url} requires a password: name a file holding it")
            return ConfigError("state/password-file", f"Redis {url} refused the password ({exc})")
        tls = _ssl_error(exc)
        if tls is not None:
            trusted = f"the CA in {str(self.config.ca_file)!r}" if self.config.ca_file else "the system's CAs"
            return ConfigError(
                "state/ca-file",
                f"TLS with Redis {url} failed: {getattr(tls, 'reason', None) or tls} "
                f"(its certificate is checked against {trusted} and must name the URL's host)",
            )
        return ConfigError(
            "state/url",
            f"Redis {url} does not answer ({type(exc).__name__}); start it or fix state/url (rediss:// for a TLS port)",
        )

    async def close(self) -> None:
        """Stop listening and disconnect; bounded, so that a Redis in trouble never holds up a shutdown."""
        if self.listener is not None:
            self.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.listener), self.timeout)
        for client in (self.client, self.subscriber):
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(client.aclose(), self.timeout)

    def _channels(self) -> set[str]:
        return {*self.handlers, *self.raw_handlers}

    async def _listen(self) -> None:
        """Pub/sub with reconnects (backoff to 5 s); after a reconnect, ``on_reconnect`` callbacks resync (one that
        raises ``StateUnavailable`` counts as a failed reconnect: the listener reconnects and they resync again)."""
        delay = 0.1
        first = True
        while True:
            pubsub = self.subscriber.pubsub()
            try:
                names = self._channels()
                if names:
                    await pubsub.subscribe(*names)
                while missing := self._channels() - names:  # handlers added while it subscribed
                    await pubsub.subscribe(*missing)
                    names |= missing
                self._pubsub = pubsub  # from now on ``subscribe_raw`` subscribes it to new channels itself
                self.subscribed.set()
                if not first:
                    self._up()
                    log.debug("state: subscribed again to Redis %s; resynchronising", self.config.url)
                    for resync in self.on_reconnect:
                        await resync()
                first, delay = False, 0.1
                async for message in pubsub.listen():
                    await self._dispatch(message)
            except asyncio.CancelledError:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except (RedisError, OSError, StateUnavailable) as exc:  # a resync that failed: reconnect and try again
                self._down(exc, "listen")
            except Exception:  # a bug (in a resync): logged; the listener reconnects and resyncs, it never ends
                log.exception("state: the pub/sub listener failed; reconnecting")
            self._pubsub = None
            for confirmed in self._confirmed.values():
                confirmed.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        name = channel.decode(errors="replace") if isinstance(channel, bytes) else str(channel)
        if kind == "subscribe":
            self._confirmed.setdefault(name, asyncio.Event()).set()
            return
        if kind != "message":
            return
        data = message["data"]
        raw = self.raw_handlers.get(name)
        if raw:
            if data[:ORIGIN_SIZE] == self.raw_origin or len(data) < ORIGIN_SIZE:
                return  # this process's own: delivered locally when it was published
            payload = data[ORIGIN_SIZE:]
            for receive in raw:
                try:
                    receive(payload)
                except Exception:  # one handler's bug must not stop the listener
                    log.exception("state: handler for %s failed", name)
            return
        try:
            body = json.loads(data)
        except (ValueError, TypeError):
            log.warning("state: a message on %s that is not JSON was ignored", name)
            return
        for handler in self.handlers.get(name, ()):
            try:
                result = handler(body)
                if result is not None:
                    await result
            except Exception:  # one handler's bug must not stop the listener
                log.exception("state: handler for %s failed", name)


# -- revocations -------------------------------------------------------------------------------------------

REVOKED = "revoked"  # channel: {"keys": {key: until}} — every node closes what matches, at once


class RedisRevocations:
    """``RevocationList`` in Redis: a key per revocation that expires with it (durable: a node that missed
    the message, or starts later, still refuses), plus a message so every node closes live connections now.

    ``revoked`` raises ``StateUnavailable`` when Redis does not answer: a login that cannot be checked is
    refused with 503, never let in.
    """

    def __init__(self, state: RedisState) -> None:
        self.state = state
        # Every revocation in force, scored by its end: what a resync reads (never a SCAN of the keyspace,
        # whose size sessions and rate keys decide).
        self.index = state.key("revocations")

    def _key(self, key: str) -> str:
        return self.state.key("revocation", key)

    async def revoke(self, key: str, until: float) -> None:
        name = self._key(key)
        client = self.state.client
        current = await self.state.call(client.get, name)
        until = max(until, _until(current, key)) if current is not None else until
        if until == float("inf"):
            until = time.time() + 10 * 365 * 86400.0  # an unreadable value revoked for ever: keep it so, readable
        pipe = client.pipeline(transaction=True)
        pipe.set(name, repr(until), pxat=max(1, int(until * 1000)))
        pipe.zadd(self.index, {key: until}, gt=True)
        pipe.zremrangebyscore(self.index, "-inf", time.time())
        await self.state.call(pipe.execute)
        await self.state.publish(REVOKED, {"keys": {key: until}})

    async def revoked(self, keys: Iterable[str], now: float | None = None) -> str | None:
        keys = list(keys)
        if not keys:
            return None
        now = time.time() if now is None else now
        values = await self.state.call(self.state.client.mget, [self._key(k) for k in keys])
        for key, value in zip(keys, values, strict=True):
            if value is not None and _until(value, key) > now:
                return key
        return None

    async def lift(self, key: str) -> bool:
        pipe = self.state.client.pipeline(transaction=True)
        pipe.delete(self._key(key))
        pipe.zrem(self.index, key)
        deleted, _ = await self.state.call(pipe.execute)
        return bool(deleted)

    async def entries(self, now: float | None = None) -> dict[str, float]:
        """Every revocation in force, from the index (bounded by the number of revocations, not of keys)."""
        now = time.time() if now is None else now
        scored = await self.state.call(self.state.client.zrangebyscore, self.index, now, "+inf", withscores=True)
        return {str(key): float(until) for key, until in scored if until > now}


def _until(value: str, key: str) -> float:
    """A revocation's end; a value that is not a number (another version's, damaged) revokes for ever."""
    try:
        return float(value)
    except ValueError:
        log.warning("state: revocation %s has an unreadable value; it refuses until lifted", key)
        return float("inf")


# -- realm sessions ----------------------------------------------------------------------------------------


class RedisSessions:
    """A realm's ``SessionStore`` in Redis: one key per session, named by the SHA-256 of its cookie (the cookie
    itself is never stored), expiring with the session; a set per user for logout and revocation."""

    def __init__(self, state: RedisState, realm: str) -> None:
        self.state = state
        self.realm = realm
        self.count = 0  # sessions issued by this node (``len``: what this process knows without asking Redis)

    def _key(self, digest_: str) -> str:
        return self.state.key("session", self.realm, digest_)

    def _user_key(self, user: str) -> str:
        return self.state.key("user-sessions", self.realm, user)

    async def issue(self, identity: Identity, expires_at: float) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        key = digest(token)
        session = await self.renew(key, identity, expires_at)
        self.count += 1
        return token, session

    async def lookup(self, token: str) -> Session | None:
        value = await self.state.call(self.state.client.get, self._key(digest(token)))
        session = _session_from_json(value) if value is not None else None
        return session if session is not None and session.expires_at > time.time() else None

    async def find(self, key: str) -> Session | None:
        value = await self.state.call(self.state.client.get, self._key(key))
        session = _session_from_json(value) if value is not None else None
        return session if session is not None and session.expires_at > time.time() else None

    async def renew(self, key: str, identity: Identity, expires_at: float) -> Session:
        session = Session(replace(identity, session=key, expires_at=expires_at), expires_at)
        at = max(1, int(expires_at * 1000))
        pipe = self.state.client.pipeline(transaction=True)
        pipe.set(self._key(key), _session_to_json(session), pxat=at)
        if identity.user is not None:
            # The user's set lives as long as their last session: NX gives a new set its expiry (GT alone
            # never does, a key without one counting as never expiring), GT extends it for a later session.
            user_key = self._user_key(identity.user)
            pipe.sadd(user_key, key)
            pipe.pexpireat(user_key, at, nx=True)
            pipe.pexpireat(user_key, at, gt=True)
        await self.state.call(pipe.execute)
        return session

    async def extend(self, key: str, identity: Identity, expires_at: float) -> Session | None:
        """One ``SET … XX``: a session dropped (logout) or expired meanwhile stays gone."""
        session = Session(replace(identity, session=key, expires_at=expires_at), expires_at)
        at = max(1, int(expires_at * 1000))
        value = _session_to_json(session)
        if not await self.state.call(self.state.client.set, self._key(key), value, pxat=at, xx=True):
            return None
        if identity.user is not None:
            await self.state.call(self.state.client.pexpireat, self._user_key(identity.user), at, gt=True)
        return session

    async def drop(self, key: str) -> Session | None:
        value = await self.state.call(self.state.client.getdel, self._key(key))
        session = _session_from_json(value) if value is not None else None
        if session is None:
            return None
        if session.identity.user is not None:
            await self.state.call(self.state.client.srem, self._user_key(session.identity.user), key)
        return session

    async def drop_user(self, user: str) -> int:
        keys = await self.state.call(self.state.client.smembers, self._user_key(user))
        dropped = 0
        for key in keys:
            dropped += int(await self.state.call(self.state.client.delete, self._key(key)))
        await self.state.call(self.state.client.delete, self._user_key(user))
        return dropped

    def __len__(self) -> int:
        return self.count


def _session_to_json(session: Session) -> str:
    identity = session.identity
    return json.dumps(
        {
            "realm": identity.realm,
            "user": identity.user,
            "roles": sorted(identity.roles),
            "expires_at": identity.expires_at,
            "token_digest": identity.token_digest,
            "authenticated_at": identity.authenticated_at,
            "session": identity.session,
            "token_id": identity.token_id,
            "session_expires_at": session.expires_at,
        }
    )


def _session_from_json(text: str) -> Session | None:
    """The session, or None (logged) for a value this version cannot read (another version's, damaged):
    no session, as for an unknown cookie, rather than an error."""
    try:
        data = json.loads(text)
        identity = Identity(
            data["realm"],
            data["user"],
            frozenset(data["roles"]),
            data["expires_at"],
            data["token_digest"],
            data["authenticated_at"],
            data["session"],
            data["token_id"],
        )
        return Session(identity, float(data["session_expires_at"]))
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("state: a session value that cannot be read was ignored (%s)", type(exc).__name__)
        return None


# -- connections on every node -----------------------------------------------------------------------------


class Published(Protocol[L_contra]):
    """Told of registrations as they happen; must not block (no I/O in the caller's path)."""

    def added(self, live: L_contra) -> None: ...

    def removed(self, connection_id: str) -> None: ...


END = "end"  # channel: {"selector": {...}, "code": int, "reason": str, "grace": float}


class ClusterConnections(MemoryConnections[L]):
    """This node's live connections, with ``end`` reaching every node's: a logout, a management close or a
    revocation by selector closes the matching connections wherever they are. Registration stays local
    (``add``/``select`` are this node's); ``end`` returns how many this node closed. ``published``, once
    set, hears of every registration, without waiting (``state.registry.NodeRegistry`` publishes them)."""

    __slots__ = ("published", "state")

    def __init__(self, state: RedisState) -> None:
        super().__init__()
        self.state = state
        self.published: Published[L] | None = None
        state.subscribe(END, self._ended_elsewhere)

    def add(self, live: L) -> None:
        super().add(live)
        if self.published is not None:
            self.published.added(live)

    def discard(self, live: L) -> None:
        if self.get(live.id) is live:
            super().discard(live)
            if self.published is not None:
                self.published.removed(live.id)

    async def end(self, selector: Selector, code: int, reason: str, grace: float = 1.0) -> int:
        closed = await super().end(selector, code, reason, grace)
        message = {"selector": asdict(selector), "code": code, "reason": reason, "grace": grace}
        try:
            await self.state.publish(END, message)
        except StateUnavailable:
            log.warning("state: could not ask the other nodes to close %s (Redis unavailable)", selector)
        return closed

    async def _ended_elsewhere(self, message: dict[str, Any]) -> None:
        if self.state.mine(message):
            return  # this process's own request: already done
        fields = message.get("selector")
        if not isinstance(fields, dict) or not all(isinstance(v, str | None) for v in fields.values()):
            return  # a field left out would widen the selector: the request is ignored whole
        try:
            selector = Selector(**fields)
        except TypeError:
            return
        await MemoryConnections.end(
            self,
            selector,
            int(message.get("code", 1008)),
            str(message.get("reason", "")),
            float(message.get("grace", 1.0)),
        )


# -- limits shared by every node ---------------------------------------------------------------------------

# A token bucket per key, in Redis' own clock (nodes' clocks may differ): ARGV rate/s, burst; returns the
# seconds to wait ("0" when a token was taken). The key expires once the bucket would be full again.
_BUCKET = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(saved[1]) or burst
local stamp = tonumber(saved[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - stamp) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(t))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRates:
    """``security.limits.SharedRate`` in Redis: a handshake-rate bucket per service and client address that
    every node takes from. Redis unavailable: each node's own bucket still applies (the limit degrades to
    per node, logged), rather than refusing every client or letting a flood through unlimited."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self.script = state.client.register_script(_BUCKET)

    async def take(self, key: str, rate: float, burst: float) -> float:
        try:
            wait = await self.state.call(self.script, keys=[self.state.key("rate", key)], args=[rate, burst])
        except StateUnavailable:
            return 0.0
        return float(wait)
