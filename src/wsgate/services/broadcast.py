"""``broadcast``: a back-end byte feed fanned out to every client as binary messages.

The feed is either dialled (``connect tcp://``, redialled with backoff) or
accepted (``properties/accept tcp://``). Each read chunk becomes one message.
Fan-out never waits: each client has a bounded queue, and a client whose queue
passes ``maximum.pending.bytes`` is closed with 1008 "too slow" instead of
making the gateway buffer without bound.

Several nodes (``state: {type: redis}``), per source of messages:

- a dialled feed (``connect``): every node dials the back end itself and fans out its own copy, so it
  already reaches every node's clients once; it is never relayed (that would deliver it twice);
- an accepted feed (``properties/accept``: a publisher connects to one node) and client messages
  (``on.client.message: broadcast``) reach that node's clients at once, and go to the other nodes through
  the Redis channel ``<key-prefix>:broadcast:<service>`` as raw bytes (``Relay``). Each node fans out what
  the channel brings from the others and skips its own (it delivered them already), so every client gets
  every message once. Order per publisher is kept: its messages are fanned out locally in arrival order,
  published by one task per service in that order, and Redis delivers one connection's messages in order.
  Across nodes delivery is at most once: what is published while a node's subscription is down (Redis
  restarting, or Redis dropping a subscriber past ``client-output-buffer-limit pubsub``) is not replayed.
- Message policy (``authorization-rule``, ``message.policy``): a client's messages pass ``send`` rules before
  they are broadcast; ``receive`` is decided at fan-out for each subscriber with its own identity (the
  message's fields read once for all), so each sees only what its roles allow. A refused message is never
  queued; a subscriber refused with ``then: close`` is closed with 1008 and gets nothing more. The callable
  runs inside the fan-out: it must be quick, and what it raises refuses that subscriber's copy only.
- Redis unavailable: the node's own clients still get everything (degraded to one node, logged as a
  WARNING every 10 s at most with the count of messages the other nodes missed); cross-node delivery
  resumes by itself once Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping

from ..config.model import Service
from ..config.schema import Property
from ..config.values import Uri, parse_choice, parse_size, parse_uri
from ..core.channel import Channel, Data
from ..core.session import LiveSession
from ..errors import BackendError
from ..state.redis import RedisState, StateUnavailable
from ..transport.backend import READ_CHUNK, open_tcp
from .base import Runtime, ServiceType
from .messages import MESSAGE_RULES, POLICY_PROPERTY, RECEIVE, GuardedChannel, MessageService

log = logging.getLogger("wsgate.broadcast")
DEFAULT_CLIENT_PENDING = 1024 * 1024
MAX_REDIAL_INTERVAL = 30.0
RELAY_PENDING = 8 * 1024 * 1024  # bytes waiting for Redis at most (at least the clients' limit)
RELAY_BATCH = 512  # messages published in one round trip at most
RELAY_BATCH_BYTES = 1024 * 1024
RELAY_RETRY = 1.0  # seconds of local-only delivery after Redis failed, before trying it again
RELAY_WARN_EVERY = 10.0
BINARY, TEXT = b"b", b"t"  # a relayed message's first byte: its WebSocket type


class Subscriber:
    """A client's bounded outbound queue; ``offer`` never blocks the feed."""

    __slots__ = ("session", "channel", "guard", "queue", "pending", "limit", "ready", "too_slow", "sender")

    def __init__(self, session: LiveSession, channel: Channel, limit: int, guard: GuardedChannel | None = None) -> None:
        self.session = session
        self.channel = channel  # sends what the fan-out already decided
        self.guard = guard  # decides ``receive`` for this subscriber at fan-out
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


class Relay:
    """This node's messages for the other nodes' clients: one bounded outbox, published in order by one task.

    ``offer`` never waits. Past ``limit`` bytes waiting (Redis slower than the feed) new messages are not
    relayed; after a failure (``StateUnavailable``) the outbox is dropped and nothing is relayed for
    ``RELAY_RETRY`` s: in both cases the other nodes miss them, this node's clients have them."""

    __slots__ = ("state", "channel", "service", "limit", "outbox", "pending", "ready", "retry_at", "missed", "warned")

    def __init__(self, state: RedisState, channel: str, service: str, limit: int) -> None:
        self.state = state
        self.channel = channel
        self.service = service
        self.limit = limit
        self.outbox: deque[bytes] = deque()
        self.pending = 0
        self.ready = asyncio.Event()
        self.retry_at = 0.0  # monotonic time until which Redis is not tried again
        self.missed = 0  # messages the other nodes did not get, since the last warning
        self.warned = 0.0

    def offer(self, data: Data) -> None:
        if self.retry_at and time.monotonic() < self.retry_at:
            self.missed += 1
            return
        payload = TEXT + data.encode() if isinstance(data, str) else BINARY + data
        if self.pending + len(payload) > self.limit:
            self.missed += 1
            self.warn(f"more than {self.limit} bytes waiting for Redis")
            return
        self.pending += len(payload)
        self.outbox.append(payload)
        self.ready.set()

    async def run(self) -> None:
        outbox, ready = self.outbox, self.ready
        while True:
            await ready.wait()
            ready.clear()
            while outbox:
                batch: list[bytes] = []
                size = 0
                while outbox and len(batch) < RELAY_BATCH and size < RELAY_BATCH_BYTES:
                    payload = outbox.popleft()
                    size += len(payload)
                    batch.append(payload)
                self.pending -= size  # ``pending`` counts what waits in the outbox
                try:
                    await self.state.publish_raw(self.channel, batch)
                except Exception as exc:  # Redis unavailable; or a bug, which must not end relaying for good
                    if not isinstance(exc, StateUnavailable):
                        log.exception("service[%s]: publishing to Redis failed", self.service)
                    self.missed += len(batch) + len(outbox)
                    outbox.clear()
                    self.pending = 0
                    self.retry_at = time.monotonic() + RELAY_RETRY
                    self.warn(str(exc))
                    break
                if self.retry_at:
                    log.info(
                        "service[%s]: Redis answers again; broadcasting to every node (%d message(s) reached "
                        "this node's clients only)",
                        self.service,
                        self.missed,
                    )
                    self.retry_at, self.missed, self.warned = 0.0, 0, 0.0

    def warn(self, why: str) -> None:
        now = time.monotonic()
        if now - self.warned < RELAY_WARN_EVERY:
            return
        self.warned = now
        log.warning(
            "service[%s]: broadcasting to this node's clients only: %s (%d message(s) not sent to other nodes)",
            self.service,
            why,
            self.missed,
        )


class BroadcastService(MessageService):
    TYPE = ServiceType(
        name="broadcast",
        accept=("ws", "wss"),
        connect=(0, 1),
        properties={
            "accept": Property("?", lambda text: parse_uri(text, ("tcp",))),
            "on.client.message": Property("?", lambda text: parse_choice(text, ("noop", "broadcast"))),
            "maximum.pending.bytes": Property("?", parse_size),
            **POLICY_PROPERTY,
        },
        rules=MESSAGE_RULES,
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
        # Accepted feeds and client messages reach the other nodes' clients through Redis (dialled feeds do not).
        shared = runtime.shared
        self.relay: Relay | None = None
        if shared is not None and (self.feed_accept is not None or self.rebroadcast):
            self.relay = Relay(shared, self.relay_channel, self.name, max(RELAY_PENDING, self.limit))
        self._relay_task: asyncio.Task[None] | None = None

    @property
    def relay_channel(self) -> str:
        return f"broadcast:{self.name}"

    def publish(self, data: Data) -> None:
        if not self.rules.open or self.policy is not None:
            self.publish_checked(data)
            return
        dropped = None
        for subscriber in self.subscribers:
            if not subscriber.offer(data):
                dropped = dropped or []
                dropped.append(subscriber)
        if dropped:
            self.subscribers.difference_update(dropped)

    def publish_checked(self, data: Data) -> None:
        """``publish`` under a message policy: ``receive`` decided per subscriber, the fields read once."""
        rules = self.rules
        values = None if rules.open else self.message_checks(rules).values(RECEIVE, data)
        dropped = None
        for subscriber in self.subscribers:
            guard = subscriber.guard
            if guard is not None and (guard.ended or not self.admit_copy(guard, data, values)):
                continue
            if not subscriber.offer(data):
                dropped = dropped or []
                dropped.append(subscriber)
        if dropped:
            self.subscribers.difference_update(dropped)

    def admit_copy(self, guard: GuardedChannel, data: Data, values: Mapping[str, str] | None) -> bool:
        """One subscriber's copy: refused if the decision itself fails (fail closed), never the fan-out."""
        try:
            return self.admit(guard, RECEIVE, data, values)
        except Exception:
            log.exception("service[%s]: deciding a message for %s failed; not sent", self.name, guard.session.remote)
            return False

    def from_other_node(self, payload: bytes) -> None:
        """A message another node's publisher or client sent, from the Redis channel: fanned out here."""
        kind, body = payload[:1], payload[1:]
        if kind == BINARY:
            self.publish(body)
        elif kind == TEXT:
            try:
                self.publish(body.decode())
            except UnicodeDecodeError:
                log.warning("service[%s]: a relayed text message that is not UTF-8 was ignored", self.name)

    async def start(self) -> None:
        if self.relay is not None:
            await self.relay.state.subscribe_raw(self.relay_channel, self.from_other_node)
            self._relay_task = asyncio.create_task(self.relay.run(), name=f"wsgate-relay-{self.name}")
        if self.feed_accept is not None:
            self._feed_server = await asyncio.start_server(
                self.accept_feed, self.feed_accept.host, self.feed_accept.port
            )
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
        if self.relay is not None:
            self.relay.state.unsubscribe_raw(self.relay_channel, self.from_other_node)
        if self._relay_task is not None:
            self._relay_task.cancel()
            await asyncio.gather(self._relay_task, return_exceptions=True)

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
            await self.read_feed(backend.reader, backend.writer, relay=False)  # every node dials its own copy
            log.warning("service[%s]: feed %s closed; redialling", self.name, self.feed_connect)

    async def accept_feed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.read_feed(reader, writer, relay=True)

    async def read_feed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, relay: bool) -> None:
        self._feed_writers.add(writer)
        to_others = self.relay.offer if relay and self.relay is not None else None
        try:
            while data := await reader.read(READ_CHUNK):
                self.publish(data)
                if to_others is not None:
                    to_others(data)
        except OSError as exc:
            log.warning("service[%s]: feed read failed: %s", self.name, exc)
        finally:
            self._feed_writers.discard(writer)
            writer.close()

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        guard = channel if isinstance(channel, GuardedChannel) else None
        # The fan-out decides ``receive`` (``publish_checked``): the subscriber sends through the inner channel.
        subscriber = Subscriber(session, guard.inner if guard is not None else channel, self.limit, guard)
        self.subscribers.add(subscriber)
        sender = subscriber.sender = asyncio.create_task(subscriber.run())
        receive = channel.receive  # the channel counts what it receives
        to_others = self.relay.offer if self.rebroadcast and self.relay is not None else None
        try:
            while (data := await receive()) is not None:
                if self.rebroadcast:
                    self.publish(data)
                    if to_others is not None:
                        to_others(data)
        finally:
            self.subscribers.discard(subscriber)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
