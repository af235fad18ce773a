"""One accepted WebSocket, whichever transport carries it: what services read, write and close.

A message is its payload: ``bytes`` for a binary message, ``str`` for a text one (as in
python-websockets), so no per-message wrapper is allocated. ``receive`` returns ``None`` once the
peer closed (its close frame is answered by the adapter) or the connection failed. The adapter counts
messages and bytes as they pass; the metrics read those counters when scraped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, Self, TypeAlias

from .close import CloseCode

Data: TypeAlias = bytes | str


class Messages:
    """``async for data in channel``: the messages until ``receive`` returns ``None``, for any adapter that
    has ``receive`` (a base class, so the four channels do not each spell it out)."""

    __slots__ = ()

    async def receive(self) -> Data | None:
        raise NotImplementedError

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Data:
        data = await self.receive()
        if data is None:
            raise StopAsyncIteration
        return data


class Counters(Protocol):
    """Traffic of one connection as the metrics read it (payload sizes; text counted in characters)."""

    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int


class Channel(Counters, Protocol):
    """The adapter's side of one WebSocket: aiohttp today, emulation and picows later."""

    async def receive(self) -> Data | None:
        """The next message; ``None`` when the peer closed or the connection failed."""
        ...

    async def send(self, data: Data) -> None:
        """Send one message (binary for ``bytes``, text for ``str``); waits while the peer's buffer is full.

        Raises ``OSError`` (``ConnectionResetError``) when the peer is gone.
        """
        ...

    def __aiter__(self) -> AsyncIterator[Data]:
        """``async for data in channel``: the messages until ``receive`` would return ``None``."""
        ...

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with ``code`` (answer the peer's close frame instead if it came first)."""
        ...

    def close_soon(self, code: int, reason: str, grace: float) -> None:
        """Close from outside the service's loop; a peer that does not answer within ``grace`` s is aborted."""
        ...

    def abort(self) -> None:
        """Drop the connection without a close handshake."""
        ...

    @property
    def closed(self) -> bool: ...

    @property
    def gone(self) -> bool:
        """Is the peer's connection closed or closing (so a failed send is the peer's loss, not a fault)?"""
        ...

    @property
    def close_code(self) -> int | None:
        """The code that ended the connection: the gateway's if it closed first, else the peer's."""
        ...

    @property
    def peer_close(self) -> tuple[int | None, str]:
        """The peer's close frame (code, reason) if it closed first: ``(None, "")`` otherwise.

        A close frame without a code is ``CloseCode.NO_STATUS``; a connection lost without a close
        frame is ``CloseCode.ABNORMAL``."""
        ...
