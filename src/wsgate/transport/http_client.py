"""The aiohttp side of ``core.fetch``: one GET of a JSON document (a JWKS), one POST of a form (a token
endpoint), each with a total timeout and an optional TLS context (a provider under a private CA)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp

from ..core.fetch import FetchError, HttpPort


async def fetch_json(url: str, timeout: float, tls: ssl.SSLContext | None = None) -> Any:
    """GET ``url`` and parse its body as JSON whatever its content type; any failure is a ``FetchError``."""
    try:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.get(url, ssl=tls if tls is not None else True) as response,
        ):
            response.raise_for_status()
            return await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise FetchError(type(exc).__name__) from exc


async def post_form(
    url: str, form: Mapping[str, str], headers: Mapping[str, str], timeout: float, tls: ssl.SSLContext | None = None
) -> tuple[int, Any]:
    """POST ``form`` urlencoded; the status and the JSON body (None if it is not JSON). No answer: ``FetchError``."""
    try:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.post(
                url,
                data=dict(form),
                headers={"Accept": "application/json", **headers},
                ssl=tls if tls is not None else True,
                allow_redirects=False,
            ) as response,
        ):
            try:
                document = await response.json(content_type=None)
            except ValueError:
                document = None
            return response.status, document
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise FetchError(type(exc).__name__) from exc


HTTP = HttpPort(fetch_json, post_form)
