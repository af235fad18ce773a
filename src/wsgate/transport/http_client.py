"""The aiohttp side of ``core.fetch``: one GET of a JSON document (a JWKS), one POST of a form (a token
endpoint), each with a total timeout and an optional TLS context (a provider under a private CA).

Neither follows a redirect (an https document redirected to http, or elsewhere, is not the configured
one) and neither reads more than ``MAX_DOCUMENT`` bytes of an answer: a provider or a JWKS host, hostile
or broken, costs the gateway bounded memory and time."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp

from ..core.fetch import FetchError, HttpPort

MAX_DOCUMENT = 1024 * 1024  # bytes of a JWKS, a discovery document or a token answer (real ones: a few KiB)


async def _body(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, refused (``FetchError``) past ``MAX_DOCUMENT`` before more of it is read."""
    declared = response.content_length
    if declared is not None and declared > MAX_DOCUMENT:
        raise FetchError("answer too large")
    body = bytearray()
    while chunk := await response.content.readany():
        body += chunk
        if len(body) > MAX_DOCUMENT:
            raise FetchError("answer too large")
    return bytes(body)


async def fetch_json(url: str, timeout: float, tls: ssl.SSLContext | None = None) -> Any:
    """GET ``url`` and parse its body as JSON whatever its content type; any failure is a ``FetchError``."""
    try:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.get(url, ssl=tls if tls is not None else True, allow_redirects=False) as response,
        ):
            response.raise_for_status()
            if response.status != 200:  # a redirect (not followed) or a body-less success: not the document
                raise FetchError(f"HTTP {response.status}")
            return json.loads(await _body(response))
    except (TimeoutError, aiohttp.ClientError, ValueError, RecursionError) as exc:  # RecursionError: [[[[…
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
                document = json.loads(await _body(response))
            except (ValueError, RecursionError):
                document = None
            return response.status, document
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise FetchError(type(exc).__name__) from exc


HTTP = HttpPort(fetch_json, post_form)
