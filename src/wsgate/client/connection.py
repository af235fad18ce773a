"""The Python asyncio client: connect with challenge handlers, refresh before expiry, reconnect.

Built on aiohttp's WebSocket client (no framing of our own). After the 101, the
gateway's ``Wsgate-Expires`` and ``Wsgate-Refresh`` headers tell the client when
its credentials run out and where to present fresh ones; the client does so
``refresh_margin`` seconds early (at most a third of the lifetime, with jitter),
asking its challenge handler again, and the connection stays open (see
docs/security.md). Each deadline is renewed at most once: a renewal that does not
move it (a token that cannot be refreshed) is not repeated, and failed attempts
back off exponentially, so a short lifetime never turns into a request storm.

A scheme of several rounds (Negotiate) hands the next 401 of the same handshake to the
``next_handler`` its last answer named, and that handler may check the server's proof on the 101
(``ServerVerifier.verify``): if the server does not prove itself, the TCP connection is dropped
before a byte of WebSocket traffic and ``MutualAuthenticationError`` is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ..core.wse_frames import WseError
from ..errors import GatewayError
from .challenges import ChallengeHandler, ChallengeRequest, ServerVerifier
from .wse import WseSocket

log = logging.getLogger("wsgate.client")
MAX_CHALLENGES = 3
TRANSPORTS = ("websocket", "wse", "auto")
# What the gateway itself decides on an upgrade; any other answer (a proxy's, or a plain GET's: the Upgrade was
# stripped on the way) makes transport="auto" try emulation.
DECISIONS = frozenset({401, 403, 429, 503})
LIFETIME_SHARE = 1 / 3  # the margin never exceeds this share of the credentials' lifetime
JITTER = 0.2  # renew up to 20 % of the margin earlier, so clients of one deadline spread out
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # backoff after a failed renewal (seconds), doubling
_RANDOM = random.Random()


def renewal_delay(until_deadline: float, lifetime: float, margin: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before renewing: ``margin`` early, but never more than a third of ``lifetime``
    (a 20 s authorization-timeout with a 30 s margin would otherwise be due at once, forever)."""
    effective = min(margin, max(lifetime, 0.0) * LIFETIME_SHARE)
    jitter = 1 + (rng or _RANDOM).uniform(0, JITTER)
    return max(0.0, until_deadline - effective * jitter)


def retry_delay(failures: int, rng: random.Random | None = None) -> float:
    """Exponential backoff, jittered over its upper half: 1, 2, 4 … 30 s after consecutive failures."""
    ceiling = min(RETRY_FIRST * 2.0 ** max(failures - 1, 0), RETRY_MAX)
    return ceiling * (rng or _RANDOM).uniform(0.5, 1.0)


class RefusedError(GatewayError):
    """The gateway answered with an HTTP status instead of the 101 (or the refresh's 200): ``.status``.

    404 (no such service or connection), 429 and 503 (busy, full, or a login module could not decide:
    worth retrying later) are not authentication failures; ``AuthenticationError`` is the 401/403 kind.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth retrying later: the gateway was busy, full or could not decide."""
        return self.status == 429 or self.status >= 500


class AuthenticationError(RefusedError):
    """The gateway refused the credentials (403), or nothing could answer its challenge (401)."""


class MutualAuthenticationError(AuthenticationError):
    """The gateway accepted the credentials (101) but did not prove its own identity (Kerberos mutual
    authentication): no token, or a token the client's security context rejects. The connection was
    dropped before any message; ``.status`` is the 101 it answered."""


def _refused(status: int, message: str) -> RefusedError:
    return AuthenticationError(status, message) if status in (401, 403) else RefusedError(status, message)


async def _answer(
    handler: ChallengeHandler | None, location: str, challenge: str | None, pending: ChallengeHandler | None = None
) -> tuple[str, ChallengeHandler | None]:
    """An ``Authorization`` value for ``challenge`` and the handler for the next round (``pending``: the
    one the previous answer named, asked first), or ``AuthenticationError`` if none can be had."""
    request = ChallengeRequest(location, challenge or "")
    if pending is not None and challenge and pending.can_handle(request):
        handler = pending
    if handler is None or not challenge or not handler.can_handle(request):
        raise AuthenticationError(401, f"{location}: authentication required ({challenge or 'no challenge'})")
    response = await handler.handle(request)
    authorization = response.authorization if response else None
    following = response.next_handler if response else None
    if response is not None:
        response.clear()
    if not authorization:
        raise AuthenticationError(401, f"{location}: no credentials for challenge {challenge!r}")
    return authorization, following


async def _verify_server(pending: ChallengeHandler | None, url: str, ws: Socket) -> None:
    """Let the last round's handler check the server's proof on the 101 (or 201); drop the connection if it fails."""
    if not isinstance(pending, ServerVerifier):
        return
    challenges: Sequence[str] = _handshake_headers(ws).getall("WWW-Authenticate", [])
    try:
        await pending.verify(url, challenges)
    except BaseException:
        if isinstance(ws, WseSocket):
            await ws.abort()  # no request more to an unproven server
        else:
            ws._response.close()  # the TCP connection goes at once: no close handshake with an unproven server
            await ws.close()  # now only marks it closed (and stops a heartbeat timer)
        raise


Socket = aiohttp.ClientWebSocketResponse | WseSocket


def _handshake_headers(ws: Socket) -> CIMultiDictProxy[str]:
    """The headers of the 101 (the create's 201 for an emulated connection)."""
    return ws.headers if isinstance(ws, WseSocket) else ws._response.headers


class Connection:
    """An open WebSocket through the gateway. Iterate for messages (``str`` or ``bytes``)."""

    def __init__(
        self,
        ws: Socket,
        session: aiohttp.ClientSession,
        owns_session: bool,
        url: URL,
        handler: ChallengeHandler | None,
        authorization: str | None,
        ssl: ssl_module.SSLContext | bool | None,
        refresh_margin: float,
    ) -> None:
        self.ws = ws
        self._session = session
        self._owns_session = owns_session
        self._handler = handler
        self._authorization = authorization
        self._ssl = ssl
        self.refresh_margin = refresh_margin
        headers = _handshake_headers(ws)
        self.id: str | None = headers.get("Wsgate-Connection-Id")
        self.expires: float | None = float(headers["Wsgate-Expires"]) if "Wsgate-Expires" in headers else None
        self._lifetime = self.expires - time.time() if self.expires is not None else 0.0
        self._moved = asyncio.Event()  # set when a refresh moves the deadline later
        refresh = headers.get("Wsgate-Refresh")
        http_scheme = "https" if url.scheme == "wss" else "http"
        self.refresh_url = str(url.with_scheme(http_scheme).with_path(refresh).with_query(None)) if refresh else None
        self._refresher: asyncio.Task[None] | None = None
        if self.refresh_url and self.expires is not None and handler is not None:
            self._refresher = asyncio.create_task(self._refresh_before_expiry())

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    @property
    def protocol(self) -> str | None:
        return self.ws.protocol

    @property
    def transport(self) -> str:
        """``"websocket"``, or ``"wse"`` for a connection emulated over HTTP."""
        return "wse" if isinstance(self.ws, WseSocket) else "websocket"

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    async def receive(self) -> aiohttp.WSMessage:
        return await self.ws.receive()

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        async for msg in self.ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                yield msg.data

    async def close(self, code: int = 1000, message: str = "") -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.ws.close(code=code, message=message.encode())
        if self._owns_session:
            await self._session.close()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def refresh(self) -> float | None:
        """Present fresh credentials now; returns the new expiry. Raises ``AuthenticationError`` if the
        credentials are refused, ``RefusedError`` for other answers (404: the connection is gone; 503, 429:
        the gateway could not decide, worth retrying later)."""
        assert self.refresh_url is not None
        authorization = self._authorization
        pending: ChallengeHandler | None = None
        for _ in range(MAX_CHALLENGES + 1):
            headers = {"Authorization": authorization} if authorization else {}
            ssl = self._ssl if self._ssl is not None else True
            async with self._session.post(self.refresh_url, headers=headers, ssl=ssl) as response:
                if response.status == 200:
                    self._learn((await response.json()).get("expires"))
                    return self.expires
                if response.status != 401:
                    raise _refused(response.status, f"refresh refused: HTTP {response.status}")
                challenge = response.headers.get("WWW-Authenticate")
                authorization, pending = await _answer(self._handler, self.refresh_url, challenge, pending)
        raise AuthenticationError(401, "refresh: too many challenges")

    def _learn(self, expires: float | None) -> None:
        """Record a deadline from the gateway; a later one wakes the renewal schedule."""
        previous = self.expires
        self.expires = expires
        if expires is not None:
            self._lifetime = expires - time.time()
            if previous is None or expires > previous:
                self._moved.set()

    async def _until_moved(self, deadline: float) -> None:
        """Wait for a later deadline (a manual ``refresh()``); look again after the deadline, when the
        gateway has closed the connection and the schedule can end."""
        self._moved.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), max(1.0, deadline - time.time() + 1.0))

    async def _refresh_before_expiry(self) -> None:
        """Renew each deadline once, before it; retry failures with backoff until the deadline passes.

        A renewal that leaves the deadline where it was (a token provider with nothing fresher)
        is not repeated: the schedule waits until something moves the deadline or the
        connection closes.
        """
        failures = 0
        renewed: float | None = None  # the deadline a renewal already ran for
        while not self.ws.closed and self.expires is not None:
            deadline = self.expires
            if renewed is not None and deadline <= renewed:
                await self._until_moved(deadline)
                continue
            if failures:
                await asyncio.sleep(retry_delay(failures))
            else:
                await asyncio.sleep(renewal_delay(deadline - time.time(), self._lifetime, self.refresh_margin))
            try:
                self._authorization = None  # ask the handler again: a token provider returns a fresh token
                await self.refresh()
            except RefusedError as exc:
                if not exc.transient:
                    log.warning("credential refresh refused (%s); the gateway will close at expiry", exc)
                    return
                failures += 1
                log.warning("credential refresh failed (%s); retrying with backoff", exc)
            except (TimeoutError, aiohttp.ClientError) as exc:
                failures += 1
                log.warning("credential refresh failed (%s); retrying with backoff", exc)
            except Exception as exc:  # the challenge handler's own failure (a token file being rotated)
                failures += 1
                log.warning("challenge handler failed during refresh (%r); retrying with backoff", exc)
            else:
                failures = 0
                renewed = deadline
                if self.expires is not None and self.expires <= deadline:
                    log.warning("credential refresh did not extend the deadline; the gateway will close at expiry")


async def connect(
    url: str,
    *,
    challenge_handler: ChallengeHandler | None = None,
    ssl: ssl_module.SSLContext | bool | None = None,
    protocols: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
    refresh_margin: float = 30.0,
    heartbeat: float | None = None,
    max_message_size: int = 4 * 1024 * 1024,
    transport: str = "websocket",
) -> Connection:
    """Open a WebSocket through the gateway, answering 401 challenges with ``challenge_handler``.

    ``transport``: ``"websocket"``; ``"wse"``, WebSocket emulation over plain HTTP requests (for networks
    whose proxies let no WebSocket through; ``heartbeat`` does not apply, the gateway sends its own);
    ``"auto"``, a WebSocket, or emulation if the upgrade gets an answer the gateway would not give
    (``DECISIONS``). Raises ``AuthenticationError`` on 403 or when no handler can answer, ``RefusedError``
    for other HTTP answers (404, 503 …), ``aiohttp.ClientError`` for network and TLS failures.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    owns = session is None
    session = session or aiohttp.ClientSession()
    authorization: str | None = None
    pending: ChallengeHandler | None = None  # the handler of the exchange's next round, if it has more
    emulate = transport == "wse"
    try:
        for _ in range(MAX_CHALLENGES + 2):
            request_headers = dict(headers or {})
            if authorization:
                request_headers["Authorization"] = authorization
            ws: Socket
            if emulate:
                created = await _create(session, url, request_headers, protocols, ssl, max_message_size)
                if isinstance(created, tuple):
                    status, challenge = created
                    if status != 401:
                        raise _refused(status, f"{url}: emulation refused with HTTP {status}")
                    authorization, pending = await _answer(challenge_handler, url, challenge, pending)
                    continue
                ws = created
            else:
                try:
                    ws = await session.ws_connect(
                        url,
                        ssl=ssl if ssl is not None else True,
                        protocols=protocols,
                        headers=request_headers,
                        heartbeat=heartbeat,
                        max_msg_size=max_message_size,
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    if transport == "auto" and exc.status not in DECISIONS:
                        log.info("%s: the upgrade was answered %s; trying WebSocket emulation", url, exc.status)
                        emulate = True
                        continue
                    if exc.status != 401:
                        raise _refused(exc.status, f"{url}: refused with HTTP {exc.status}") from None
                    challenge = exc.headers.get("WWW-Authenticate") if exc.headers else None
                    authorization, pending = await _answer(challenge_handler, url, challenge, pending)
                    continue
            await _verify_server(pending, url, ws)
            # a round of a multi-round exchange is good once (a Kerberos authenticator would be a replay):
            # refresh() then starts a new exchange instead of presenting it again
            reusable = authorization if pending is None else None
            return Connection(ws, session, owns, URL(url), challenge_handler, reusable, ssl, refresh_margin)
        raise AuthenticationError(401, f"{url}: too many challenges")
    except BaseException:
        if owns:
            await session.close()
        raise


async def _create(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    protocols: tuple[str, ...],
    ssl: ssl_module.SSLContext | bool | None,
    max_message_size: int,
) -> WseSocket | tuple[int, str | None]:
    """An emulated connection, or the create's HTTP status and challenge."""
    try:
        created = await WseSocket.create(
            session,
            URL(url),
            headers=headers,
            protocols=protocols,
            ssl=ssl if ssl is not None else True,
            max_message_size=max_message_size,
        )
    except WseError as exc:  # a 201 that breaks the protocol (URLs off the gateway, a subprotocol not offered)
        raise RefusedError(201, f"{url}: {exc}") from None
    if isinstance(created, WseSocket):
        return created
    return created.status, created.headers.get("WWW-Authenticate")


class ReconnectingConnection:
    """Keeps a connection up: reconnects with exponential backoff after a drop or a transient refusal
    (429, 503), never after an ``AuthenticationError``, another refusal (404) or ``close()``.
    ``on_connect`` runs after each (re)connect."""

    def __init__(
        self,
        url: str,
        *,
        backoff: tuple[float, float] = (0.5, 30.0),
        on_connect: Callable[[Connection], Awaitable[Any]] | None = None,
        **options: Any,
    ) -> None:
        self.url = url
        self.options = options
        self.backoff = backoff
        self.on_connect = on_connect
        self.connection: Connection | None = None
        self.connects = 0
        self._closed = False

    async def _connect(self) -> Connection:
        if self.connection is not None:  # release the dropped one (its session, its refresher)
            await self.connection.close()
            self.connection = None
        delay = self.backoff[0]
        while True:
            try:
                self.connection = await connect(self.url, **self.options)
                self.connects += 1
                if self.on_connect is not None:
                    await self.on_connect(self.connection)
                return self.connection
            except RefusedError as exc:
                if not exc.transient:
                    raise
                log.warning("connect to %s refused (%s); retrying in %.1f s", self.url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("connect to %s failed (%s); retrying in %.1f s", self.url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])

    async def send(self, data: str | bytes) -> None:
        """Send on the current connection; if it has dropped, reconnect first (once per call)."""
        connection = self.connection if self.connection and not self.connection.closed else await self._connect()
        try:
            await connection.send(data)
        except (aiohttp.ClientConnectionResetError, ConnectionError):
            await (await self._connect()).send(data)

    async def messages(self) -> AsyncIterator[str | bytes]:
        while not self._closed:
            connection = self.connection if self.connection and not self.connection.closed else await self._connect()
            async for data in connection:
                yield data
            if not self._closed:
                log.warning("connection to %s dropped (close code %s); reconnecting", self.url, connection.close_code)

    async def close(self) -> None:
        self._closed = True
        if self.connection is not None:
            await self.connection.close()
