"""An HTTP reverse proxy on loopback that lets no WebSocket through, for the WSE client tests.

It forwards every request to the gateway but strips ``Upgrade`` (and the hop-by-hop headers), as some
corporate proxies do: a browser's WebSocket handshake reaches the gateway as a plain GET and fails, while
ordinary HTTP (the emulation) passes. With ``buffer=True`` it also holds each response until it is
complete, as a buffering proxy does, so a streaming downstream never arrives and the client must long-poll.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

__all__ = ["BlockingProxy"]

HOP_BY_HOP = frozenset(
    {"connection", "upgrade", "keep-alive", "transfer-encoding", "te", "trailer", "proxy-connection", "content-length"}
)


class BlockingProxy:
    """``await BlockingProxy(target).start()``; ``.port``; ``.upgrades``: handshakes it refused to pass on."""

    def __init__(self, target: str, *, buffer: bool = False) -> None:
        self.target = target.rstrip("/")
        self.buffer = buffer
        self.upgrades = 0
        self.paths: list[str] = []  # every request's path and query, in order
        self.port = 0
        self._runner: web.ServerRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> BlockingProxy:
        self._http = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        self._runner = web.ServerRunner(web.Server(self.forward), handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._http is not None:  # first: responses still streaming (a downstream) end with it
            await self._http.close()
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), 5)

    async def forward(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._http is not None
        self.paths.append(request.path_qs)
        if "upgrade" in request.headers.get("Connection", "").lower() or "Upgrade" in request.headers:
            self.upgrades += 1
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        body = await request.read()
        async with self._http.request(
            request.method,
            self.target + request.path_qs,
            headers=CIMultiDict(headers),
            data=body or None,
            allow_redirects=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        ) as upstream:
            answer: CIMultiDict[str] = CIMultiDict(
                (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
            )
            if self.buffer:
                return web.Response(status=upstream.status, body=await upstream.read(), headers=answer)
            response = web.StreamResponse(status=upstream.status, headers=answer)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, aiohttp.ClientError):
                pass  # the browser left (it cancels a downstream after RECONNECT)
            return response
