"""The aiohttp side of admission: a request head as a ``Handshake``, and a ``Reject`` or ``Reply`` as a response.

``security.admission`` decides without aiohttp; this is all the adapter needs to ask it and to
write what it answered. An admitted request travels on with its ``Accept`` under ``ACCEPT_KEY``.
"""

from __future__ import annotations

from typing import Protocol, cast

from aiohttp import web
from multidict import CIMultiDict, MultiDictProxy

from ..core.handshake import Accept, Handshake, Reject, Reply
from ..core.peer import PeerIdentity
from .endpoint import Endpoint
from .websocket import request_host

__all__ = ["ACCEPT_KEY", "handshake_from", "response_for", "reply_endpoint"]

# The listener puts the admission's ``Accept`` here before it hands a request to the service.
ACCEPT_KEY: web.RequestKey[Accept] = web.RequestKey("wsgate.accept", Accept)
# aiohttp's ``text=`` adds the charset; answers built from a ``Reply`` keep the same Content-Type.
_CHARSET = "; charset=utf-8"


def handshake_from(request: web.BaseRequest, peer: PeerIdentity | None, host: str | None = None) -> Handshake:
    """The request head as admission sees it (``host``: the routing host, if the caller has it already)."""
    if host is None:
        host = request_host(request) or ""
    version = request.version
    return Handshake(
        method=request.method,
        host=host,
        path=request.path,
        headers=request.headers,
        query=cast("MultiDictProxy[str]", request.query),  # typed as a MultiMapping, is a proxy
        remote=request.remote or "?",
        peer=peer,
        secure=request.secure,
        version=(version.major, version.minor),
        authority=request.host,
        client=_client(request),
    )


def _client(request: web.BaseRequest) -> str:
    """The client's connection as ``ip:port`` (unique among this listener's open connections)."""
    peername = request.transport.get_extra_info("peername") if request.transport is not None else None
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return ""


def response_for(answer: Reject | Reply) -> web.StreamResponse:
    """What the client gets for a refusal or for an answer the admission gave itself."""
    if isinstance(answer, Reject):
        return web.Response(status=answer.status, text=answer.text, headers=answer.headers)
    headers: CIMultiDict[str] = CIMultiDict(answer.headers)
    content_type = answer.content_type
    if content_type is not None and "Content-Type" not in headers:
        if ";" not in content_type and (content_type.startswith("text/") or content_type == "application/json"):
            content_type += _CHARSET
        headers["Content-Type"] = content_type
    if answer.file is not None:  # FileResponse answers HEAD, Range and conditional requests itself (sendfile)
        return web.FileResponse(answer.file, status=answer.status, headers=headers)
    return web.Response(status=answer.status, body=answer.body or None, headers=headers)


class Replying(Protocol):
    """A service that answers ``Reply`` values (``services.base.HttpService``)."""

    async def reply(self, handshake: Handshake) -> Reply: ...


def reply_endpoint(service: Replying) -> Endpoint:
    """The listener's endpoint for a service that answers ``Reply`` values."""

    async def endpoint(
        request: web.BaseRequest, peer: PeerIdentity | None, handshake: Handshake, accept: Accept
    ) -> web.StreamResponse:
        return response_for(await service.reply(handshake))

    return endpoint
