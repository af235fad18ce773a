"""Realm enforcement hook.

Realms are parsed and validated fully, but the login-module chain lands with the
"security realms" issue. Until then a protected service (``realm-name`` plus an
``authorization-constraint``) refuses every request with 403: deny by default,
never serve a protected service unprotected.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ..services.base import ServiceHandler
    from .tls import PeerIdentity

audit = logging.getLogger("wsgate.audit")


class UnenforcedRealmGuard:
    """Stands in front of a protected service and denies everyone, with an audit line."""

    def __init__(self, service: ServiceHandler) -> None:
        self.service = service
        self.name = service.name

    async def handle(self, request: web.BaseRequest, peer: PeerIdentity | None) -> web.StreamResponse:
        audit.warning(
            "service[%s]: denied %s: realm '%s' is not enforced by this version",
            self.name,
            request.remote,
            self.service.config.realm_name,
        )
        return web.Response(status=403, text="Forbidden\n")
