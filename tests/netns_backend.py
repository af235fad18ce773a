"""The back end of the layered-DMZ tests (started by tests/netns.py in the backend namespace).

``python netns_backend.py KIND HOST PORT RECORD FLOOD PEM``: KIND "tcp" echoes bytes, "ws" is an HTTP server whose
WebSocket upgrade echoes messages (plain requests get their own headers back as JSON). Every connection appends
JSON events to RECORD (id, peer, first bytes or the upgrade's path and headers, received/sent counts while they
change, closed), which the test reads to see what reached the back end — an identity the gateway propagated
included. FLOOD > 0: also push that many bytes to each connection as fast as it takes them. PEM (key and chain)
or "-": TLS on the port, or not.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import sys
from typing import Any

import aiohttp
from aiohttp import web

FIRST_MAX = 4096
CHUNK = 65536


class Record:
    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
        self.ids = itertools.count(1)

    def write(self, **event: Any) -> None:
        self.file.write(json.dumps(event) + "\n")


class Counts:
    """Byte counts of one connection, recorded every 0.1 s while they change."""

    def __init__(self, record: Record, ident: int) -> None:
        self.record, self.id = record, ident
        self.received = self.sent = 0
        self._task = asyncio.get_running_loop().create_task(self._report())

    async def _report(self) -> None:
        last = (-1, -1)
        while True:
            await asyncio.sleep(0.1)
            if (self.received, self.sent) != last:
                last = (self.received, self.sent)
                self.record.write(id=self.id, received=self.received, sent=self.sent)

    def close(self) -> None:
        self._task.cancel()
        self.record.write(id=self.id, received=self.received, sent=self.sent, closed=True)


async def tcp(host: str, port: int, record: Record, flood: int, tls: ssl.SSLContext | None) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ident = next(record.ids)
        peer = writer.get_extra_info("peername")
        record.write(id=ident, peer=f"{peer[0]}:{peer[1]}")
        counts = Counts(record, ident)
        first = b""

        async def push() -> None:
            block = b"x" * CHUNK
            while counts.sent < flood:
                piece = block[: flood - counts.sent]
                writer.write(piece)
                await writer.drain()
                counts.sent += len(piece)

        pusher = asyncio.create_task(push()) if flood else None
        try:
            while data := await reader.read(CHUNK):
                counts.received += len(data)
                if len(first) < FIRST_MAX:
                    first += data[: FIRST_MAX - len(first)]
                    record.write(id=ident, first=first.decode("latin-1"))
                writer.write(data)
                await writer.drain()
                counts.sent += len(data)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            if pusher:
                pusher.cancel()
            counts.close()
            writer.close()

    server = await asyncio.start_server(handle, host, port, ssl=tls)
    print(f"backend ready tcp {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


async def ws(host: str, port: int, record: Record, flood: int, tls: ssl.SSLContext | None) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        ident = next(record.ids)
        record.write(id=ident, peer=str(request.remote), path=request.path_qs, headers=dict(request.headers))
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.json_response({"path": request.path_qs, "headers": dict(request.headers)})
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        counts = Counts(record, ident)
        messages: list[str] = []

        async def push() -> None:
            block = "x" * CHUNK
            while counts.sent < flood:
                piece = block[: flood - counts.sent]
                await socket.send_str(piece)
                counts.sent += len(piece)

        pusher = asyncio.create_task(push()) if flood else None
        try:
            async for message in socket:
                if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                data = message.data
                counts.received += len(data)
                if len(messages) < 100:
                    messages.append(data if isinstance(data, str) else data.decode("latin-1"))
                    record.write(id=ident, messages=messages)
                await (socket.send_str(data) if isinstance(data, str) else socket.send_bytes(data))
                counts.sent += len(data)
        finally:
            if pusher:
                pusher.cancel()
            counts.close()
        return socket

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=tls).start()
    print(f"backend ready ws {host}:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    kind, host, port, path, flood, pem = sys.argv[1:7]
    tls = None
    if pem != "-":
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(pem)
    serve = {"tcp": tcp, "ws": ws}[kind]
    asyncio.run(serve(host, int(port), Record(path), int(flood), tls))


if __name__ == "__main__":
    main()
