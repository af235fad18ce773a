"""The aiohttp side of a service that answers in its own terms (``management``, ``metrics``, ``kdc.proxy``).

Such a service (``Resource``) gets the admitted request head, the admission's ``Accept`` and the
request's ``Body``, which is read from the client only if the service asks for it (so a request it
refuses first, a cross-origin POST say, never waits for its body). It answers a ``Reply``, written
by ``response_for``, or an ``Upgrade``: the 101 through ``GuardedResponse`` (the masked-frame guard)
and the service's own ``serve`` on an ``AiohttpChannel``, as the console's live feed needs. The
service never sees aiohttp.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from ..core.handshake import Accept, Body, BodyTooLarge, Handshake, Reply, Upgrade
from ..core.peer import PeerIdentity
from .channel import AiohttpChannel
from .endpoint import Endpoint
from .http import response_for
from .websocket import GuardedResponse, send_101

__all__ = ["RequestBody", "Resource", "resource_endpoint", "websocket_for"]


class Resource(Protocol):
    """A service that answers ``Reply`` or ``Upgrade`` values and may read the body (``management``)."""

    async def respond(self, handshake: Handshake, accept: Accept, body: Body) -> Reply | Upgrade: ...


class RequestBody:
    """aiohttp's request body as a ``core.handshake.Body``: aiohttp's ``client_max_size`` (1 MiB) is the limit,
    unless the service asks for a lower one."""

    __slots__ = ("request",)

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request

    async def read(self, limit: int | None = None) -> bytes:
        request = self.request
        if limit is None or limit >= request.client_max_size:
            try:
                return await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise BodyTooLarge(request.client_max_size) from None
        declared = request.content_length
        if declared is not None and declared > limit:
            raise BodyTooLarge(limit)  # refused before a byte of it is read
        body = bytearray()
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(limit)
        return bytes(body)

    async def text(self) -> str:
        """As aiohttp's ``request.text()``: the ``Content-Type``'s charset, else UTF-8.

        A charset Python does not know is the client's error (``ValueError``, a 400), not a server error.
        """
        body = await self.read()
        try:
            return body.decode(self.request.charset or "utf-8")
        except LookupError:
            raise ValueError("the request names an unknown charset") from None


def resource_endpoint(service: Resource) -> Endpoint:
    """The listener's endpoint for a ``Resource``."""

    async def endpoint(
        request: web.BaseRequest, peer: PeerIdentity | None, handshake: Handshake, accept: Accept
    ) -> web.StreamResponse:
        try:
            answer = await service.respond(handshake, accept, RequestBody(request))
        except BodyTooLarge as exc:  # answered by aiohttp, as it answers any body over its limit
            raise web.HTTPRequestEntityTooLarge(exc.limit, 0) from None
        if isinstance(answer, Upgrade):
            return await websocket_for(request, answer)
        return response_for(answer)

    return endpoint


async def websocket_for(request: web.BaseRequest, upgrade: Upgrade) -> web.WebSocketResponse:
    """Answer ``request`` with a 101 and run ``upgrade.serve`` on the WebSocket until it returns."""
    ws = GuardedResponse(
        heartbeat=upgrade.heartbeat,
        compress=False,
        max_msg_size=upgrade.max_message_size + 1,  # aiohttp refuses sizes >= its limit; ours allows ==
        autoclose=False,  # AiohttpChannel answers the client's close frame
    )
    await send_101(ws, request)  # as every 101: the handshake slot is free from here
    channel = AiohttpChannel(ws, request.transport)
    try:
        await upgrade.serve(channel)
    finally:
        if not channel.closed:
            await channel.close()
    return ws
