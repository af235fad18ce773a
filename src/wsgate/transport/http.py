"""Plain HTTP answers (``core.handshake.Reply``) written as aiohttp responses, and requests read as ``Handshake``s.

A ``Reply`` with a ``file`` becomes aiohttp's ``FileResponse``, which streams it with sendfile and
answers ``HEAD``, ``Range``, ``If-Modified-Since``/``If-None-Match`` (ETag, Last-Modified) itself;
any other becomes a ``Response``. A body's text content type without a charset is sent as UTF-8
(as aiohttp's ``text=`` does).
"""

from __future__ import annotations

from typing import cast

from aiohttp import web
from multidict import CIMultiDict, MultiDictProxy

from ..core.handshake import Handshake, Reply
from ..core.peer import PeerIdentity
from .websocket import request_host


def response_of(reply: Reply) -> web.StreamResponse:
    """The aiohttp response that sends ``reply`` as it is."""
    headers: CIMultiDict[str] = CIMultiDict(reply.headers)
    content_type = reply.content_type
    if content_type is not None and "Content-Type" not in headers:
        if content_type.startswith("text/") and "charset" not in content_type:
            content_type += "; charset=utf-8"
        headers["Content-Type"] = content_type
    if reply.file is not None:
        return web.FileResponse(reply.file, status=reply.status, headers=headers)
    return web.Response(status=reply.status, body=reply.body or None, headers=headers)


def request_handshake(request: web.BaseRequest, peer: PeerIdentity | None, secure: bool | None = None) -> Handshake:
    """``request``'s head as a ``Handshake`` (nothing is copied: aiohttp's headers are already a proxy)."""
    return Handshake(
        method=request.method,
        host=request_host(request) or "",
        path=request.path,
        headers=request.headers,
        query=cast(MultiDictProxy[str], request.query),  # aiohttp's is one, typed as a MultiMapping
        remote=request.remote or "?",
        peer=peer,
        secure=request.secure if secure is None else secure,
        version=(request.version.major, request.version.minor),
    )
