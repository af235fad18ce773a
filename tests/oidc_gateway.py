"""A gateway in front of the test OpenID provider (tests/oidc_provider.py): config, sign-in helpers.

Every service listens on one port at ``https://localhost:PORT`` (the provider is at 127.0.0.1, so their
cookies stay apart); the realm ``sso`` signs browsers in with the provider; services ``one`` and ``two``
are echoes behind it (role ``staff``), ``demo`` serves the demo page.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from .oidc_provider import OidcProvider
from .processes import free_port

WEB = Path(__file__).parent.parent / "src" / "wsgate" / "resources" / "web"

CONFIG = """
service:
  - name: demo
    accept: https://localhost:{port}/
    type: directory
    properties:
      directory: web
      welcome-file: index.html
    accept-options:
      ssl.bind: 127.0.0.1:{port}
  - name: docs
    accept: https://localhost:{port}/docs
    type: directory
    realm-name: sso
    authorization-constraint:
      require-role: staff
    properties:
      directory: web
      welcome-file: index.html
    accept-options:
      ssl.bind: 127.0.0.1:{port}
  - name: one
    accept: wss://localhost:{port}/one
    type: echo
    realm-name: sso
    authorization-constraint:
      require-role: staff
    accept-options:
      ssl.bind: 127.0.0.1:{port}
  - name: two
    accept: wss://localhost:{port}/two
    type: echo
    realm-name: sso
    authorization-constraint:
      require-role: staff
    accept-options:
      ssl.bind: 127.0.0.1:{port}
  - name: secure-echo
    accept: wss://localhost:{port}/secure-echo
    type: echo
    realm-name: sso
    authorization-constraint:
      require-role: staff
    accept-options:
      ssl.bind: 127.0.0.1:{port}
security:
  keystore:
    type: PEM
    file: keystore.pem
  truststore:
    type: PEM
    file: truststore.pem
  realm:
    name: sso
    authentication:
      http-challenge-scheme: Application Token
      authorization-mode: recycle
      login-modules:
        login-module:
          type: oidc
          success: required
          options:
            issuer: {issuer}
            client-id: {client}
            ca-file: {ca}
            scope: openid profile email groups
            roles-claim: groups
            refresh-margin: 2s
            jwks-refetch-interval: 1s
            post-logout-redirect-uri: https://localhost:{port}/
{secret}"""


@dataclass
class Site:
    """A started gateway and what tests need to reach it."""

    gateway: Any
    port: int
    client: str
    ssl: ssl.SSLContext

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    def ws(self, service: str) -> str:
        return f"wss://localhost:{self.port}/{service}"


async def start_site(
    start_gateway: Any,
    tmp_path: Path,
    provider: OidcProvider,
    client_ssl: ssl.SSLContext,
    client: str,
    secret: str | None = None,
    extra: str = "",
    register: bool = True,
) -> Site:
    """A gateway whose realm signs in with ``provider`` as ``client`` (registered here, with its callbacks, unless
    ``register`` is false: another node of the same gateway); ``extra`` is appended to the config (``state``)."""
    import shutil

    if not (tmp_path / "web").exists():
        shutil.copytree(WEB, tmp_path / "web")
    port = free_port()
    base = f"https://localhost:{port}"
    secret_option = ""
    if secret is not None:
        (tmp_path / "client-secret").write_text(secret + "\n")
        secret_option = "            client-secret-file: client-secret\n"
    if register:
        provider.register_client(
            client,
            [f"{base}/{name}/.wsgate/oidc/callback" for name in ("one", "two", "secure-echo", "docs")],
            secret=secret,
            backchannel_logout_uri=f"{base}/one/.wsgate/oidc/backchannel-logout",
            post_logout_redirect_uris=[f"{base}/"],
        )
    text = CONFIG.format(port=port, issuer=provider.issuer, client=client, ca=provider.ca_pem, secret=secret_option)
    gateway = await start_gateway(text + extra, name=f"gateway-{port}.yaml")
    return Site(gateway, port, client, client_ssl)


def session(site: Site) -> aiohttp.ClientSession:
    """A browser-like client: a cookie jar, the test CA trusted (gateway and provider share it)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=site.ssl), cookie_jar=aiohttp.CookieJar(unsafe=True)
    )


async def begin(http: aiohttp.ClientSession, site: Site, service: str = "one", return_to: str = "/") -> str:
    """The login resource's redirect to the provider."""
    async with http.get(
        f"{site.base}/{service}/.wsgate/oidc/login", params={"return": return_to}, allow_redirects=False
    ) as response:
        assert response.status == 302, await response.text()
        return response.headers["Location"]


async def authorize(http: aiohttp.ClientSession, url: str, user: str, password: str) -> str:
    """The provider's form, filled in: the redirect back to the gateway's callback."""
    async with http.post(url, data={"username": user, "password": password}, allow_redirects=False) as response:
        assert response.status == 302, await response.text()
        return response.headers["Location"]


async def callback(http: aiohttp.ClientSession, url: str) -> tuple[int, str, dict[str, str]]:
    async with http.get(url, allow_redirects=False) as response:
        return response.status, await response.text(), dict(response.headers)


async def sign_in(
    http: aiohttp.ClientSession, site: Site, user: str, password: str, return_to: str = "/"
) -> tuple[int, str, dict[str, str]]:
    return await callback(http, await authorize(http, await begin(http, site, return_to=return_to), user, password))


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
