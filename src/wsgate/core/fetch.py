"""Fetching a JSON document over HTTP(S), as a port: the JWT module's JWKS needs one, the transport
adapter provides it (``transport.http_client.fetch_json``), so security imports no HTTP client.

``HttpPort`` is the same port for a module that also POSTs (the ``oidc`` module's token endpoint) and
talks to a server under its own CA: a GET of JSON and a POST of a form, each with an optional TLS context.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any


class FetchError(Exception):
    """The document could not be had: unreachable, timed out, an HTTP error status, not JSON.

    ``str(error)`` names the cause in a word or two (e.g. ``ClientConnectorError``), never the URL.
    """


# (url, timeout in seconds) → the parsed JSON document; raises ``FetchError``.
FetchJson = Callable[[str, float], Awaitable[Any]]
# (url, timeout, TLS context or None for the system's trust) → the parsed JSON document; raises ``FetchError``.
GetJson = Callable[[str, float, "ssl.SSLContext | None"], Awaitable[Any]]
# (url, form fields, extra headers, timeout, TLS context) → (status, the JSON body or None); raises ``FetchError``
# only when no answer came (an error status is an answer: the token endpoint's 400 says invalid_grant).
PostForm = Callable[
    [str, Mapping[str, str], Mapping[str, str], float, "ssl.SSLContext | None"], Awaitable[tuple[int, Any]]
]


@dataclass(frozen=True)
class HttpPort:
    """What a module that talks to an HTTP server gets from the transport (``transport.http_client.HTTP``)."""

    get_json: GetJson
    post_form: PostForm

    def fetcher(self, tls: ssl.SSLContext | None) -> FetchJson:
        """A ``FetchJson`` bound to ``tls`` (for the jwt machinery's JWKS fetching)."""

        async def fetch(url: str, timeout: float) -> Any:
            return await self.get_json(url, timeout, tls)

        return fetch
