"""What a route hands an admitted request to: the service's side, in aiohttp's terms.

The gateway picks one per service (``transport.upgrade.websocket_endpoint`` for WebSocket
services, ``transport.http.reply_endpoint`` for services that answer ``Reply`` values,
``transport.resource.resource_endpoint`` for services that also read bodies or run a WebSocket
of their own: the management API), so the listener never needs to know service types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

from aiohttp import web

from ..core.handshake import Accept, Handshake
from ..core.peer import PeerIdentity

Endpoint: TypeAlias = Callable[[web.BaseRequest, PeerIdentity | None, Handshake, Accept], Awaitable[web.StreamResponse]]
