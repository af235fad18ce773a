"""What the management API shows about a gateway and its services: no passwords, no option values."""

from __future__ import annotations

import os
import re
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..config.model import GatewayConfig, Service, Store

_USERINFO = re.compile(r"://[^/@]*@")
try:
    VERSION = version("wsgate")
except PackageNotFoundError:  # running from a source tree
    VERSION = "unknown"


def gateway_summary(config: GatewayConfig, started: float, connections: int) -> dict[str, Any]:
    """``GET /api/info``: the product, this process and a summary of the running ``config``."""
    security = config.security
    return {
        "product": "wsgate",
        "version": VERSION,
        "pid": os.getpid(),
        "started": started,
        "uptime": round(time.time() - started, 1),
        "connections": connections,
        "config": {
            "source": str(config.source) if config.source else None,
            "services": service_summaries(config),
            "realms": [
                {
                    "name": realm.name,
                    "challenge": realm.authentication.http_challenge_scheme,
                    "login-modules": [
                        {"type": m.type, "success": m.success} for m in realm.authentication.login_modules
                    ],
                }
                for realm in security.realms.values()
            ],
            "keystore": store_summary(security.keystore),
            "truststore": store_summary(security.truststore),
        },
    }


def service_summaries(config: GatewayConfig) -> list[dict[str, Any]]:
    return [service_summary(s) for s in config.services]


def service_summary(service: Service) -> dict[str, Any]:
    return {
        "name": service.name,
        "type": service.type,
        "accept": [str(u) for u in service.accepts],
        "connect": [_USERINFO.sub("://***@", str(u)) for u in service.connects],
        "realm": service.realm_name,
        "require-role": sorted({r for c in service.authorization_constraints for r in c.require_roles}),
    }


def store_summary(store: Store | None) -> dict[str, Any] | None:
    return None if store is None else {"type": store.type, "file": str(store.file)}
