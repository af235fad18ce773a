"""``broadcast``: a back-end byte feed fanned out to every client as binary messages.

The feed is either dialled (``connect tcp://``, redialled with backoff) or
accepted (``properties/accept tcp://``). Each read chunk becomes one message.
Fan-out never waits: each client has a bounded queue, and a client whose queue
passes ``maximum.pending.bytes`` is closed with 1008 "too slow" instead of
making the gateway buffer without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ..config.model import Service
from ..config.schema import Property
from ..config.values import Uri, parse_choice, parse_size, parse_uri
from ..core.channel import Channel, Data
from ..core.session import LiveSession
from ..errors import BackendError
from ..transport.backend import READ_CHUNK, open_tcp
from .base import Runtime, ServiceType, WebSocketService

log = logging.getLogger("wsgate.broadcast")
DEFAULT_CLIENT_PENDING = 1024 * 1024
MAX_REDIAL_INTERVAL = 30.0


class Subscriber:
    """A client's bounded outbound queue; ``offer`` never blocks the feed."""

    __slots__ = ("session", "channel", "queue", "pending", "limit", "ready", "too_slow", "sender")

    def __init__(self, session: LiveSession, channel: Channel, limit: int) -> None:
        self.session = session
        self.channel = channel
        self.queue: deque[Data] = deque()
        self.pending = 0
        self.limit = limit
        self.ready = asyncio.Event()
        self.too_slow = False
        self.sender: asyncio.Task[None] | None = None

    def offer(self, data: Data) -> bool:
        """Queue ``data``; False once the client is too slow (it is then being dropped)."""
        if self.too_slow:
            return False
        self.pending += len(data)
        if self.pending > self.limit:
            self.drop()
            return False
        self.queue.append(data)
        self.ready.set()
        return True

    def drop(self) -> None:
        """More than ``limit`` bytes pending: stop queueing, close 1008 "too slow", abort 2 s later."""
        self.too_slow = True
        self.queue.clear()  # the sender is left waiting: cancelling it would cancel the close's drain too
        self.session.drop_slow(f"more than {self.limit} bytes pending")

    async def run(self) -> None:
        send, queue, ready = self.channel.send, self.queue, self.ready  # the channel counts what is sent
        while True:
            await ready.wait()
            ready.clear()
            while queue:
                data = queue.popleft()
                self.pending -= len(data)
                await send(data)


class BroadcastService(WebSocketService):
    TYPE = ServiceType(
        name="broadcast",
        accept=("ws", "wss"),
        connect=(0, 1),
        properties={
            "accept": Property("?", lambda text: parse_uri(text, ("tcp",))),
            "on.client.message": Property("?", lambda text: parse_choice(text, ("noop", "broadcast"))),
            "maximum.pending.bytes": Property("?", parse_size),
        },
    )

    def __init__(self, config: Service, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.limit: int = config.setting("maximum.pending.bytes", DEFAULT_CLIENT_PENDING)
        self.rebroadcast = config.setting("on.client.message") == "broadcast"
        self.feed_accept: Uri | None = config.setting("accept")
        self.feed_connect = config.connects[0] if config.connects else None
        self.subscribers: set[Subscriber] = set()
        self._feed_task: asyncio.Task[None] | None = None
        self._feed_server: asyncio.AbstractServer | None = None
        self._feed_writers: set[asyncio.StreamWriter] = set()
        self.feed_port: int | None = None

    def publish(self, data: Data) -> None:
        dropped = None
        for subscriber in self.subscribers:
            if not subscriber.offer(data):
                dropped = dropped or []
                dropped.append(subscriber)
        if dropped:
            self.subscribers.difference_update(dropped)

    async def start(self) -> None:
        if self.feed_accept is not None:
            self._feed_server = await asyncio.start_server(self.read_feed, self.feed_accept.host, self.feed_accept.port)
            self.feed_port = self._feed_server.sockets[0].getsockname()[1]
        elif self.feed_connect is not None:
            self._feed_task = asyncio.create_task(self.dial_feed())

    async def stop(self) -> None:
        if self._feed_task is not None:
            self._feed_task.cancel()
            await asyncio.gather(self._feed_task, return_exceptions=True)
        if self._feed_server is not None:
            self._feed_server.close()
            for writer in list(self._feed_writers):
                writer.transport.abort()
            await self._feed_server.wait_closed()

    async def dial_feed(self) -> None:
        assert self.feed_connect is not None
        delay = 0.5
        while True:
            try:
                backend = await open_tcp(self.feed_connect, None, READ_CHUNK)
            except BackendError as exc:
                log.warning("service[%s]: feed %s; retrying in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_REDIAL_INTERVAL)
                continue
            delay = 0.5
            await self.read_feed(backend.reader, backend.writer)
            log.warning("service[%s]: feed %s closed; redialling", self.name, self.feed_connect)

    async def read_feed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._feed_writers.add(writer)
        try:
            while data := await reader.read(READ_CHUNK):
                self.publish(data)
        except OSError as exc:
            log.warning("service[%s]: feed read failed: %s", self.name, exc)
        finally:
            self._feed_writers.discard(writer)
            writer.close()

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        subscriber = Subscriber(session, channel, self.limit)
        self.subscribers.add(subscriber)
        sender = subscriber.sender = asyncio.create_task(subscriber.run())
        receive = channel.receive  # the channel counts what it receives
        try:
            while (data := await receive()) is not None:
                if self.rebroadcast:
                    self.publish(data)
        finally:
            self.subscribers.discard(subscriber)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
