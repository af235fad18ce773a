"""The aiohttp side of ``core.fetch``: one GET of a JSON document (a JWKS), with a total timeout."""

from __future__ import annotations

from typing import Any

import aiohttp

from ..core.fetch import FetchError


async def fetch_json(url: str, timeout: float) -> Any:
    """GET ``url`` and parse its body as JSON whatever its content type; any failure is a ``FetchError``."""
    try:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(timeout=client_timeout) as session, session.get(url) as response:
            response.raise_for_status()
            return await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise FetchError(type(exc).__name__) from exc
