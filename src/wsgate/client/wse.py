"""An emulated WebSocket (WSE, k3po ``specification/wse``) over aiohttp's HTTP client.

For networks where no WebSocket gets through (a proxy strips ``Upgrade``): the create ``POST
<path>/;e/cbm`` is answered like an upgrade (401 challenges, 403, and on success ``201`` with an upstream
and a downstream URL and the same ``Wsgate-*`` headers as a 101), messages go up as POSTs of frames (one
request at a time; what is sent meanwhile goes in the next), and come down a streaming GET that the
gateway ends with ``RECONNECT`` when the next one should take over. Each request carries the next
sequence number of its direction. No request follows a redirect (a WebSocket handshake follows none): a
3xx would take the credentials, the messages or the downstream off the gateway, past the check of the
201's URLs; it is an answer like any other (the create refused, the session lost). ``WseSocket`` offers
what ``Connection`` uses of aiohttp's ``ClientWebSocketResponse``, so a ``Connection`` works the same over
either. WSE's ``CLOSE`` carries no code: a close by the gateway reads as 1005 (no status).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl as ssl_module
from collections.abc import AsyncIterator, Mapping

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ..core.wse_frames import CLOSE, PONG, RECONNECT, Command, StreamDecoder, WseError, binary_frame, text_frame

__all__ = ["WseSocket", "create_url", "emulation_urls"]

VERSION = "wseb-1.0"
CLOSE_TIMEOUT = 5.0  # seconds to wait for the gateway's CLOSE after ours
SILENCE = 60.0  # seconds without a byte downstream (the gateway sends a no-op every 20 s): the session is lost
NO_STATUS, ABNORMAL, TOO_BIG = 1005, 1006, 1009


def create_url(url: URL) -> URL:
    """``ws[s]://host/path?q`` → ``http[s]://host/path/;e/cbm?q`` (mixed text and binary frames)."""
    scheme = "https" if url.scheme == "wss" else "http"
    return url.with_scheme(scheme).with_path(url.path.rstrip("/") + "/;e/cbm", encoded=False).with_query(url.query)


def emulation_urls(create: URL, body: str) -> tuple[URL, URL]:
    """The 201's upstream and downstream URLs: on the gateway's host and port, under the service's path, and
    https if the create was (SPEC "Client Handshake Requirements"); anything else fails the connection.

    The port counts as the browser client's check counts it (``URL.host``): another port of the same host is
    another origin, perhaps another party's server, and must not get the session's messages or cookies."""
    lines = [line for line in body.split("\n") if line]
    base = create.path.split("/;e/", 1)[0] + "/"
    urls = tuple(URL(line) for line in lines[:2])
    for url in urls:
        if (
            url.scheme not in ("http", "https")
            or (create.scheme == "https" and url.scheme != "https")
            or url.host != create.host
            or _explicit_port(url) != _explicit_port(create)
            or url.user is not None
            or not url.path.startswith(base)
        ):
            raise WseError(f"the gateway's emulation URL {url} is not under {create.with_query(None)}")
    if len(urls) != 2:
        raise WseError("the create response does not hold two URLs")
    return urls[0], urls[1]


def _explicit_port(url: URL) -> int | None:
    """The port as a browser's ``URL.host`` shows it: None for the scheme's default (http 80, https 443)."""
    return None if url.port == {"http": 80, "https": 443}.get(url.scheme) else url.port


class WseSocket:
    """One emulated WebSocket (see the module docstring); ``Connection`` wraps it like aiohttp's."""

    transport = "wse"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: URL,
        downstream: URL,
        sequence: int,
        headers: CIMultiDictProxy[str],
        protocol: str | None,
        ssl: ssl_module.SSLContext | bool,
        max_message_size: int,
    ) -> None:
        self.headers = headers  # of the create's 201: Wsgate-Connection-Id, -Expires, -Refresh
        self.protocol = protocol
        self._session = session
        self._up, self._down = upstream, downstream
        self._up_seq = self._down_seq = sequence
        self._ssl = ssl
        self._max = max_message_size
        self._inbox: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self._outbox: list[bytes] = []
        self._sending = asyncio.Lock()
        self._closing = False  # our CLOSE is queued or sent
        self._closed = asyncio.Event()  # the close handshake completed, or the session was lost
        self.close_code: int | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read_downstream())

    @classmethod
    async def create(
        cls,
        session: aiohttp.ClientSession,
        url: URL,
        *,
        headers: Mapping[str, str],
        protocols: tuple[str, ...],
        ssl: ssl_module.SSLContext | bool,
        max_message_size: int,
    ) -> WseSocket | aiohttp.ClientResponse:
        """POST the create: a ``WseSocket`` on 201, else the (read) response, for the caller to judge."""
        target = create_url(url)
        sequence = random.randrange(0, 2**31)
        send = {"X-WebSocket-Version": VERSION, "X-Sequence-No": str(sequence), "X-Accept-Commands": "ping"}
        if protocols:
            send["X-WebSocket-Protocol"] = ",".join(protocols)
        async with session.post(target, headers={**headers, **send}, ssl=ssl, allow_redirects=False) as response:
            body = await response.text()
            if response.status != 201:
                return response
            if response.headers.get("Content-Type", "").replace(" ", "").lower() != "text/plain;charset=utf-8":
                raise WseError("the create response is not text/plain;charset=utf-8")
            upstream, downstream = emulation_urls(target, body)
            protocol = response.headers.get("X-WebSocket-Protocol")
            if protocol is not None and protocol not in protocols:
                raise WseError(f"the gateway chose subprotocol {protocol!r}, which was not offered")
            return cls(session, upstream, downstream, sequence, response.headers, protocol, ssl, max_message_size)

    # -- what Connection uses ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closing or self._closed.is_set()

    async def send_str(self, data: str) -> None:
        await self._send(text_frame(data.encode()))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(binary_frame(data))

    async def receive(self) -> aiohttp.WSMessage:
        if self._closed.is_set() and self._inbox.empty():
            return aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None)
        return await self._inbox.get()

    def __aiter__(self) -> AsyncIterator[aiohttp.WSMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[aiohttp.WSMessage]:
        while True:
            msg = await self.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return
            yield msg

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Send ``CLOSE`` and wait (bounded) for the gateway's; the downstream then ends."""
        if self._closing or self._closed.is_set():
            await self._stop_reader()
            return False
        self._closing = True
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
            await self._post(CLOSE)
            await asyncio.wait_for(self._closed.wait(), CLOSE_TIMEOUT)
        self._finish(code)
        await self._stop_reader()
        return True

    async def abort(self) -> None:
        """Drop the session without a close handshake (the gateway ends it when its downstream is gone)."""
        self._closing = True
        self._lost(ABNORMAL)
        await self._stop_reader()

    # -- upstream ------------------------------------------------------------------------------

    async def _send(self, frame: bytes) -> None:
        if self.closed:
            raise aiohttp.ClientConnectionResetError("the emulated WebSocket is closed")
        await self._post(frame)

    async def _post(self, frame: bytes) -> None:
        """Queue ``frame`` and send the queue, one upstream request at a time (later frames ride along)."""
        self._outbox.append(frame)
        async with self._sending:
            if not self._outbox:
                return  # a request while we waited took it
            self._outbox.append(RECONNECT)
            body = b"".join(self._outbox)
            self._outbox.clear()
            self._up_seq += 1
            headers = {"Content-Type": "application/octet-stream", "X-Sequence-No": str(self._up_seq)}
            async with self._session.post(
                self._up, data=body, headers=headers, ssl=self._ssl, allow_redirects=False
            ) as response:
                await response.read()
                if response.status != 200:
                    self._lost(TOO_BIG if response.status == 413 else ABNORMAL)
                    raise aiohttp.ClientConnectionResetError(f"upstream request refused: {response.status}")

    # -- downstream ----------------------------------------------------------------------------

    async def _read_downstream(self) -> None:
        decoder = StreamDecoder(self._max)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=SILENCE)
        try:
            while not self._closed.is_set():
                self._down_seq += 1
                headers = {"X-Sequence-No": str(self._down_seq)}
                async with self._session.get(
                    self._down, headers=headers, ssl=self._ssl, timeout=timeout, allow_redirects=False
                ) as response:
                    if response.status != 200:
                        break
                    if not await self._frames(response, decoder):
                        break
        except (aiohttp.ClientError, ConnectionError, TimeoutError, WseError):
            pass
        self._lost(ABNORMAL)

    async def _frames(self, response: aiohttp.ClientResponse, decoder: StreamDecoder) -> bool:
        """Deliver one response's frames; True when it ended with RECONNECT (the next one takes over)."""
        async for chunk in response.content.iter_any():
            for frame in decoder.feed(chunk):
                if type(frame) is not Command:
                    kind = aiohttp.WSMsgType.TEXT if type(frame) is str else aiohttp.WSMsgType.BINARY
                    self._inbox.put_nowait(aiohttp.WSMessage(kind, frame, None))
                elif frame is Command.RECONNECT:
                    return not self._closed.is_set()
                elif frame is Command.CLOSE:
                    await self._gateway_closed()
                    return False
                elif frame is Command.PING:
                    asyncio.get_running_loop().create_task(self._pong())
        return False  # ended without RECONNECT: lost

    async def _gateway_closed(self) -> None:
        """The gateway's CLOSE: the answer to ours, or its own close, which we answer."""
        if self._closing:
            self._closed.set()
            return
        self._closing = True
        self._inbox.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSE, NO_STATUS, ""))
        self._finish(NO_STATUS)  # closed, whatever becomes of the answer (the gateway may have let go already)
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
            await self._post(CLOSE)

    async def _pong(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
            await self._post(PONG)

    def _finish(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        self._closed.set()

    def _lost(self, code: int) -> None:
        """The session ended without a close handshake."""
        if not self._closed.is_set():
            self._inbox.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None))
            self._finish(code)

    async def _stop_reader(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._reader, 2)

    def __repr__(self) -> str:
        return f"<WseSocket {self._up.with_path('/').with_query(None)} closed={self.closed}>"
