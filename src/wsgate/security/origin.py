"""Cross-site (Origin) policy for WebSocket upgrades: deny cross-origin unless allowed.

Browsers always send ``Origin`` on a WebSocket upgrade, so checking it stops
cross-site WebSocket hijacking. Non-browser clients send none and pass; a realm
(issue "security realms") authenticates them.

Kaazing's native clients (its Java client's WebSocket and HTTP handlers, the Java bridge for code loaded
from a file or an application server) send ``Origin: privileged://<gateway host>:<port>`` instead of none, and
Kaazing's gateway lets any ``privileged`` origin through as same-origin (HttpOriginSecurityFilter). A browser
never sends it: the Origin it sends is the page's own (``http``/``https``, or ``null``), not one a page can
choose. So a ``privileged://`` Origin comes from code that could equally send no Origin at all, and wsgate
treats it exactly like none: the upgrade passes the Origin check (a realm still authenticates it), it gets no
CORS headers, and a preflight carrying it is refused as one without Origin is.
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


def privileged(origin: str) -> bool:
    """``privileged://host:port``: a Kaazing native client (see above), never a browser."""
    scheme, sep, _ = origin.strip().partition("://")
    return bool(sep) and scheme.lower() == "privileged"


def origin_allowed(origin: str | None, own_origin: str, constraints: tuple[CrossSiteConstraint, ...]) -> bool:
    """Same-origin and listed origins pass, and no Origin or a Kaazing client's ``privileged://`` one (not a
    browser); ``null``, malformed and other origins do not."""
    if origin is None or privileged(origin):
        return True
    normalized = normalize_origin(origin)
    if normalized is None:
        return any(c.allow_origin == "*" for c in constraints) and origin.strip() != "null"
    if normalized == normalize_origin(own_origin):
        return True
    return any(c.allow_origin in ("*", normalized) for c in constraints)


DEFAULT_METHODS = ("GET", "HEAD", "POST")


def _allowed_constraint(origin: str, constraints: tuple[CrossSiteConstraint, ...]) -> CrossSiteConstraint | None:
    normalized = normalize_origin(origin)
    for constraint in constraints:
        if constraint.allow_origin == "*" or normalized is not None and constraint.allow_origin == normalized:
            return constraint
    return None


def cors_headers(origin: str | None, own_origin: str, constraints: tuple[CrossSiteConstraint, ...]) -> dict[str, str]:
    """Headers that let a listed cross-origin page read a response (with its cookies); none otherwise."""
    if origin is None or privileged(origin) or normalize_origin(origin) == normalize_origin(own_origin):
        return {}
    if _allowed_constraint(origin, constraints) is None:
        return {}
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}


def preflight(
    origin: str | None,
    method: str | None,
    request_headers: str | None,
    own_origin: str,
    constraints: tuple[CrossSiteConstraint, ...],
) -> tuple[int, dict[str, str]]:
    """Answer a CORS preflight: 204 with the grant, or 403 when the origin, method or a header is not listed."""
    constraint = _allowed_constraint(origin, constraints) if origin and not privileged(origin) else None
    if origin is None or method is None or constraint is None:
        return 403, {}
    methods = tuple(m.upper() for m in constraint.allow_methods) or DEFAULT_METHODS
    allowed_headers = {h.lower() for h in constraint.allow_headers}
    asked = [h.strip().lower() for h in (request_headers or "").split(",") if h.strip()]
    if method.upper() not in methods or any(h not in allowed_headers for h in asked):
        return 403, {}
    headers = {
        **cors_headers(origin, own_origin, constraints),
        "Access-Control-Allow-Methods": ", ".join(methods),
    }
    if asked:
        headers["Access-Control-Allow-Headers"] = ", ".join(asked)
    if constraint.maximum_age is not None:
        headers["Access-Control-Max-Age"] = str(int(constraint.maximum_age))
    return 204, headers
