"""A small WSE client for the tests: create, upstream POSTs, a downstream read frame by frame.

It speaks the wire of k3po ``specification/wse`` as a Kaazing client would (aiohttp's HTTP client; raw
sockets where a test needs exact bytes) and checks what the spec asks of a client as it goes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from wsgate.core.wse_frames import RECONNECT, binary_frame, text_frame

__all__ = ["Downstream", "WseClient", "parse_frames", "upstream_frames"]


def upstream_frames(*messages: bytes | str, end: bytes = RECONNECT) -> bytes:
    """Messages as upstream frames, the body ending with RECONNECT as a client's does."""
    out = b"".join(text_frame(m.encode()) if isinstance(m, str) else binary_frame(m) for m in messages)
    return out + end


def parse_frames(buffer: bytearray) -> list[Any]:
    """Complete frames at the start of ``buffer`` (consumed): bytes, str, ("cmd", code) or "ping"/"pong"."""
    out: list[Any] = []
    while buffer:
        kind = buffer[0]
        if kind in (0x80, 0x81):
            length, pos = 0, 1
            while True:
                if pos >= len(buffer):
                    return out
                byte = buffer[pos]
                pos += 1
                length = (length << 7) | (byte & 0x7F)
                if not byte & 0x80:
                    break
            if pos + length > len(buffer):
                return out
            payload = bytes(buffer[pos : pos + length])
            out.append(payload if kind == 0x80 else payload.decode())
            del buffer[: pos + length]
        elif kind == 0x01:
            stop = buffer.find(b"\xff")
            if stop < 0:
                return out
            codes = bytes(buffer[1:stop])
            out.extend(("cmd", codes[i : i + 2].decode()) for i in range(0, len(codes), 2))
            del buffer[: stop + 1]
        elif kind in (0x89, 0x8A):
            if len(buffer) < 2:
                return out
            out.append("ping" if kind == 0x89 else "pong")
            del buffer[:2]
        else:
            raise AssertionError(f"unexpected frame type {kind:#x}")
    return out


class Downstream:
    """One downstream response, read frame by frame."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.buffer = bytearray()
        self.frames: list[Any] = []
        self.ended = False

    async def next(self, timeout: float = 5.0) -> Any:
        while not self.frames:
            if self.ended:
                raise EOFError("the downstream ended")
            chunk = await asyncio.wait_for(self.response.content.readany(), timeout)
            if not chunk:
                self.ended = True
                continue
            self.buffer += chunk
            self.frames.extend(parse_frames(self.buffer))
        return self.frames.pop(0)

    async def data(self, timeout: float = 5.0) -> Any:
        """The next message, skipping no-ops."""
        while True:
            frame = await self.next(timeout)
            if frame != ("cmd", "00"):
                return frame

    async def rest(self, timeout: float = 5.0) -> list[Any]:
        """Every frame until the response ends."""
        out = []
        while True:
            try:
                out.append(await self.next(timeout))
            except EOFError:
                return out

    def close(self) -> None:
        self.response.close()


class WseClient:
    """One emulated WebSocket from the client's side."""

    def __init__(self, http: aiohttp.ClientSession, url: str, create: str = "cbm", **headers: str) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self.kind = create
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}
        self.sequence = 0
        self.up_seq = self.down_seq = 0
        self.upstream = self.downstream = ""
        self.created: aiohttp.ClientResponse | None = None

    async def create(self, sequence: int = 5, query: str = "", **headers: str) -> aiohttp.ClientResponse:
        send = {"X-WebSocket-Version": "wseb-1.0", "X-Sequence-No": str(sequence), "X-Accept-Commands": "ping"}
        send.update(self.headers)
        send.update({k.replace("_", "-"): v for k, v in headers.items()})
        async with self.http.post(f"{self.url}/;e/{self.kind}{query}", headers=send) as response:
            await response.read()
            self.created = response
            if response.status == 201:
                assert response.headers["Content-Type"] == "text/plain;charset=utf-8"
                lines = (await response.text()).split("\n")
                assert lines[2:] == [""], lines
                self.upstream, self.downstream = lines[0], lines[1]
                self.up_seq = self.down_seq = sequence
        return response

    async def send(self, *messages: bytes | str, end: bytes = RECONNECT, raw: bytes | None = None) -> int:
        self.up_seq += 1
        body = raw if raw is not None else upstream_frames(*messages, end=end)
        content_type = "text/plain;charset=utf-8" if self.kind.startswith("ct") else "application/octet-stream"
        headers = {"X-Sequence-No": str(self.up_seq), "Content-Type": content_type, **self.headers}
        async with self.http.post(self.upstream, data=body, headers=headers) as response:
            await response.read()
            return response.status

    async def close(self) -> int:
        return await self.send(raw=b"\x01" + b"02" + b"\xff" + RECONNECT)

    async def open(self, query: str = "", **headers: str) -> Downstream:
        self.down_seq += 1
        send = {"X-Sequence-No": str(self.down_seq), **self.headers, **headers}
        response = await self.http.get(self.downstream + query, headers=send)
        return Downstream(response)
