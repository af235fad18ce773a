"""Fetching a JSON document over HTTP(S), as a port: the JWT module's JWKS needs one, the transport
adapter provides it (``transport.http_client.fetch_json``), so security imports no HTTP client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


class FetchError(Exception):
    """The document could not be had: unreachable, timed out, an HTTP error status, not JSON.

    ``str(error)`` names the cause in a word or two (e.g. ``ClientConnectorError``), never the URL.
    """


# (url, timeout in seconds) → the parsed JSON document; raises ``FetchError``.
FetchJson = Callable[[str, float], Awaitable[Any]]
