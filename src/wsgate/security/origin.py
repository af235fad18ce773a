"""Cross-site (Origin) policy for WebSocket upgrades: deny cross-origin unless allowed.

Browsers always send ``Origin`` on a WebSocket upgrade, so checking it stops
cross-site WebSocket hijacking. Non-browser clients send none and pass; a realm
(issue "security realms") authenticates them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..config.model import CrossSiteConstraint
from ..config.values import DEFAULT_PORTS


def normalize_origin(origin: str) -> str | None:
    """``https://Host`` → ``https://host:443``; None for anything that is not an http(s) origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return None
    return f"{parts.scheme}://{parts.hostname.lower()}:{port or DEFAULT_PORTS[parts.scheme]}"


def origin_allowed(origin: str | None, own_origin: str, constraints: tuple[CrossSiteConstraint, ...]) -> bool:
    """Same-origin and listed origins pass; ``null``, malformed and other origins do not."""
    if origin is None:
        return True
    normalized = normalize_origin(origin)
    if normalized is None:
        return any(c.allow_origin == "*" for c in constraints) and origin.strip() != "null"
    if normalized == normalize_origin(own_origin):
        return True
    return any(c.allow_origin in ("*", normalized) for c in constraints)
