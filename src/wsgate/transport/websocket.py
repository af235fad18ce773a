"""aiohttp's WebSocket handshake: RFC 6455 checks, the masked-frame guard and the 101.

Services never see this module: ``transport.channel.AiohttpChannel`` wraps the accepted
WebSocket as a ``core.channel.Channel``, and ``transport.upgrade`` runs the upgrade.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import WSMessage, WSMsgType, hdrs, web
from aiohttp.http_websocket import WebSocketError
from multidict import CIMultiDict

from ..config.model import AcceptOptions
from ..core.close import CloseCode, client_may_send
from ..core.deflate import Agreement, negotiate
from ..core.http import wants_upgrade
from ..security.challenges import SUBPROTOCOL_TOKEN_PREFIX, offered_subprotocols, without_token_offers

__all__ = [
    "accept_websocket",
    "send_101",
    "is_upgrade",
    "HANDSHAKE_DONE",
]
# The listener puts a callable here; called once the 101 is sent, the handshake no longer counts as in progress.
HANDSHAKE_DONE: web.RequestKey[Callable[[], None]] = web.RequestKey("wsgate.handshake-done")


def is_upgrade(request: web.BaseRequest) -> bool:
    """Does the request ask for a WebSocket (any ``Upgrade`` line naming it)? ``check_handshake`` checks the rest."""
    return wants_upgrade(request.headers)


def request_host(request: web.BaseRequest) -> str | None:
    """The host a request is routed by, lowercased; None for a ``Host`` that is not ASCII or no URL can carry."""
    if not request.host.isascii():
        return None
    try:
        host = request.url.host
    except ValueError:  # UnicodeError from IDNA: non-ASCII, surrogate-escaped or control bytes
        return None
    return (host or "").lower().rstrip(".")


async def answer_close(ws: web.WebSocketResponse) -> int | None:
    """Answer a client's close frame (aiohttp's autoclose answers everything with 1000).

    Returns 1002 if the client used a code no endpoint may send (1005, 1006, 5000, ...) and the
    connection was failed, else None.
    """
    if ws.closed:
        return None
    if client_may_send(ws.close_code or 0):
        await ws.close(drain=False)
        return None
    await ws.close(code=CloseCode.PROTOCOL_ERROR, message=b"invalid close code", drain=False)
    return CloseCode.PROTOCOL_ERROR


class MaskedFrames:
    """Stands in front of aiohttp's frame reader: every client frame must be masked (RFC 6455 §5.1).

    Both aiohttp readers (``reader_c``, which production uses, and ``reader_py``) unmask a frame when
    its mask bit is set and take it as it is otherwise; neither has a per-frame hook. So this walks the
    frame headers of the byte stream: a subtraction per chunk inside a payload, a few integer
    operations per frame, no allocation unless a header is split between reads. The first unmasked
    frame and everything after it never reach the reader; the connection fails with 1002.
    """

    __slots__ = ("reader", "queue", "skip", "head", "failed")

    def __init__(self, reader: Any, queue: Any) -> None:
        self.reader = reader
        self.queue = queue
        self.skip = 0  # bytes before the next frame header
        self.head = b""  # the start of a frame header cut by the end of the last read
        self.failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.failed:
            return True, b""
        skip = self.skip
        if skip >= len(data) and not self.head:
            self.skip = skip - len(data)
            return self.reader.feed_data(data)  # type: ignore[no-any-return]
        bad = self._walk(data)
        if bad is None:
            return self.reader.feed_data(data)  # type: ignore[no-any-return]
        self.failed = True
        if bad > 0:
            self.reader.feed_data(data[:bad])
        self.queue.set_exception(WebSocketError(CloseCode.PROTOCOL_ERROR, "unmasked client frame"))
        return True, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()

    def _walk(self, data: bytes) -> int | None:
        """Where in ``data`` the first unmasked frame starts (None: all masked); keeps the position of the next."""
        cut = len(self.head)
        buffer = self.head + data if cut else data
        end = len(buffer)
        pos = self.skip
        while pos < end:
            if end - pos < 2:
                break
            second = buffer[pos + 1]
            if not second & 0x80:
                return max(pos - cut, 0)
            length = second & 0x7F
            if length < 126:
                pos += 6 + length
            elif length == 126:
                if end - pos < 4:
                    break
                pos += 8 + (buffer[pos + 2] << 8 | buffer[pos + 3])
            else:
                if end - pos < 10:
                    break
                pos += 14 + int.from_bytes(buffer[pos + 2 : pos + 10], "big")
        if pos >= end:
            self.skip, self.head = pos - end, b""
        else:
            self.skip, self.head = 0, buffer[pos:]
        return None


class GuardedResponse(web.WebSocketResponse):
    """aiohttp's server WebSocket with ``MaskedFrames`` in front of its frame reader."""

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        handler: Any = request.protocol
        early, handler._message_tail = handler._message_tail, b""  # frames sent with the request: checked too
        super()._post_start(request, protocol, writer)
        guard = MaskedFrames(self._parser, self._reader)
        handler._payload_parser = guard
        if early:
            guard.feed_data(early)


class DeflateResponse(GuardedResponse):
    """A ``GuardedResponse`` whose 101 answers the permessage-deflate ``Agreement`` (``core.deflate``).

    aiohttp's frame writer and reader do the compression; this only replaces aiohttp's negotiation (which
    cannot impose the server's window or ``no_context_takeover``) and makes ``max_msg_size`` exact for
    decompressed messages: aiohttp refuses an inflated message only above its limit, one byte later than a
    plain one, and it is given ``limit + 1``. Inflating stops at that bound, so a small compressed message
    that would expand to gigabytes (a decompression bomb) costs at most ``limit`` + 2 bytes before the 1009.
    """

    def __init__(self, agreement: Agreement, limit: int, **kwargs: Any) -> None:
        super().__init__(compress=False, **kwargs)  # aiohttp's own negotiation stays out of the way
        self.agreement = agreement
        self.limit = limit

    def _handshake(self, request: web.BaseRequest) -> tuple[CIMultiDict[str], str | None, int, bool]:
        headers, protocol, _, _ = super()._handshake(request)
        headers[hdrs.SEC_WEBSOCKET_EXTENSIONS] = self.agreement.header
        return headers, protocol, self.agreement.window_bits, self.agreement.no_context_takeover

    async def receive(self, timeout: float | None = None) -> Any:
        msg = await super().receive(timeout)
        data = msg.data
        if msg.type is WSMsgType.TEXT:
            over = len(data) > self.limit or (4 * len(data) > self.limit and len(data.encode()) > self.limit)
        elif msg.type is WSMsgType.BINARY:
            over = len(data) > self.limit
        else:
            return msg
        if not over:
            return msg
        error = WebSocketError(CloseCode.MESSAGE_TOO_BIG, f"Decompressed message exceeds size limit {self.limit}")
        self._exception = error  # what AiohttpChannel.close_code reports, as for aiohttp's own 1009
        await self.close(code=CloseCode.MESSAGE_TOO_BIG)
        return WSMessage(WSMsgType.ERROR, error, None)


async def accept_websocket(
    request: web.BaseRequest,
    options: AcceptOptions,
    writer_limit: int = 64 * 1024,
    protocols: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> web.WebSocketResponse:
    """Complete the upgrade with the service's limits applied.

    ``ws.inactivity.timeout`` T: ping after T/2 of silence, close if no pong within
    another T/2 (Kaazing semantics). Compression is off unless the service has
    ``ws.compression permessage-deflate`` and the client offers it: it costs CPU and
    memory per connection and mixes secrets with attacker-chosen data (CRIME-style leaks).
    """
    timeout = options.inactivity_timeout
    settings: dict[str, Any] = {
        "heartbeat": timeout / 2 if timeout else None,
        "autoclose": False,  # AiohttpChannel answers the client's close frame (answer_close)
        "max_msg_size": options.max_message_size + 1,  # aiohttp refuses sizes >= its limit; ours allows ==
        "writer_limit": writer_limit,
        "protocols": protocols,
    }
    agreement = None
    if options.deflate is not None:
        agreement = negotiate(request.headers.getall(hdrs.SEC_WEBSOCKET_EXTENSIONS, ()), options.deflate)
    ws: GuardedResponse
    if agreement is None:
        ws = GuardedResponse(compress=False, **settings)
    else:
        ws = DeflateResponse(agreement, options.max_message_size, **settings)
    if headers:
        ws.headers.update(headers)
    if timeout:
        ws._pong_heartbeat = timeout / 2  # aiohttp waits heartbeat/2 for the pong; Kaazing waits T/2
    await send_101(ws, request)
    return ws


async def send_101(ws: web.WebSocketResponse, request: web.BaseRequest) -> None:
    """Send ``ws``'s 101 (token offers hidden from aiohttp); from then on the handshake is no longer in progress."""
    await ws.prepare(_without_token_offers(request))
    done = request.get(HANDSHAKE_DONE)
    if done is not None:
        done()


def chosen_subprotocol(header: str | None, protocols: tuple[str, ...]) -> str | None:
    """The subprotocol the 101 names: the client's first offer the service speaks (as aiohttp chooses);
    credentials offered as subprotocols are never chosen."""
    for offer in without_token_offers(offered_subprotocols(header)):
        if offer in protocols:
            return offer
    return None


def _without_token_offers(request: web.BaseRequest) -> web.BaseRequest:
    """The request as aiohttp's handshake should see it: no ``wsgate.token.`` subprotocol offers.

    aiohttp logs the client's offers when none is accepted; credentials must not be among them
    (and are never selected, so the 101 is the same).
    """
    header = request.headers.get("Sec-WebSocket-Protocol")
    if header is None or SUBPROTOCOL_TOKEN_PREFIX not in header.lower():
        return request
    offers = without_token_offers(offered_subprotocols(header))
    headers = CIMultiDict(request.headers)
    del headers["Sec-WebSocket-Protocol"]
    if offers:
        headers["Sec-WebSocket-Protocol"] = ", ".join(offers)
    return request.clone(headers=headers)
