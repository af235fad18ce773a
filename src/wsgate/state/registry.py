"""The connection registry in Redis: every node publishes a summary of its live connections, so that the
management API and console of any node can list (and close) the sessions of the whole cluster.

Keys (under the state's ``key-prefix``):

    <prefix>:nodes                        set of node names that have published (pruned when found dead)
    <prefix>:node:<node>                  the node's heartbeat: a string with PX 3 x heartbeat
    <prefix>:node:<node>:connections      hash: connection id -> JSON summary (what the management API shows;
                                          no cookie, token or digest), with the same expiry as the heartbeat

One task per node writes them (``run``): the changes that registration queued (an id and the live object,
or None once it is gone) in one pipeline per wake-up, and the heartbeat every ``heartbeat`` seconds. The
upgrade path only puts an entry in a dict and sets an event: nothing there waits for Redis, and a burst of
connections is written as one batch. A write that fails marks the registry stale; it is then rewritten whole
(republished) at the next heartbeat, as after a Redis outage (``on_reconnect``) or when the heartbeat finds
the hash gone (a Redis restarted without persistence, or pruned while this node was stalled).

A node that stops cleanly deletes its keys. A node that dies stops its heartbeat: its keys expire after
3 x heartbeat, and any node that lists the registry meanwhile skips (and deletes) the hashes of nodes whose
heartbeat key is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic

from .connections import L
from .redis import RedisState, StateUnavailable

log = logging.getLogger("wsgate.state")

BATCH = 1000  # hash fields per HSET in a republish


class NodeRegistry(Generic[L]):
    """This node's entries in the cluster-wide connection registry, and the listing of every node's."""

    def __init__(
        self,
        state: RedisState,
        live: Callable[[], Iterable[L]],
        describe: Callable[[L], dict[str, Any]],
        worker: bool = False,
    ):
        self.state = state
        self.live = live  # this node's live connections, for a republish
        self.describe = describe  # a connection's summary (JSON-serialisable, no secrets)
        # The workers of one node may share its configured name: each keeps entries of its own, or one
        # would overwrite (and, stopping, delete) another's.
        self.node = f"{state.node}/{os.getpid()}" if worker and state.config.node else state.node
        self.heartbeat = state.config.heartbeat
        self.ttl_ms = max(1, int(self.heartbeat * 3 * 1000))
        self.pending: dict[str, L | None] = {}  # id -> the connection to write, None to delete
        self.published: set[str] = set()  # the ids this node believes are in its hash
        self.stale = True  # the hash must be rewritten whole (at start: whatever a previous run left)
        self.retry = True  # republish at the next wake-up (else a stale registry retries at heartbeats only)
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        state.on_reconnect.append(self._reconnected)

    @property
    def nodes_key(self) -> str:
        return self.state.key("nodes")

    def node_key(self, node: str) -> str:
        return self.state.key("node", node)

    def hash_key(self, node: str) -> str:
        return self.state.key("node", node, "connections")

    # -- what registration calls: no I/O --------------------------------------------------------------

    def added(self, connection: L) -> None:
        if not self.stale:  # stale: the next republish writes what is live then (nothing piles up in an outage)
            self.pending[connection.id] = connection
            self.wake.set()

    def removed(self, connection_id: str) -> None:
        if not self.stale:
            self.pending[connection_id] = None
            self.wake.set()

    # -- the writer -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Publish this node's registry now (an error is logged: it is retried at every heartbeat), then keep it."""
        await self._step(beat=True)
        self.task = asyncio.create_task(self._run(), name="wsgate-state-registry")

    async def close(self) -> None:
        """Stop the writer and delete this node's keys (bounded: a Redis in trouble never holds up a stop)."""
        self.closing = True
        if self.task is not None:
            self.task.cancel()  # Python 3.11's wait_for may swallow it: ``closing`` ends the loop then
            await asyncio.wait({self.task}, timeout=self.state.timeout * 2)
            self.task = None
        pipe = self.state.client.pipeline(transaction=True)
        pipe.delete(self.node_key(self.node), self.hash_key(self.node))
        pipe.srem(self.nodes_key, self.node)
        try:
            await self.state.attempt("registry", pipe.execute)
        except StateUnavailable:
            log.warning("state: could not remove node %s from the registry; its entries expire", self.node)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat
        while not self.closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                    await self.wake.wait()
            self.wake.clear()
            if self.closing:
                break
            beat = loop.time() >= next_beat
            if beat:
                next_beat = loop.time() + self.heartbeat
            await self._step(beat)

    async def _step(self, beat: bool) -> None:
        """Write what changed (or everything, when stale), then the heartbeat if it is due."""
        healthy = not self.stale
        try:
            if self.stale:
                if not (beat or self.retry):
                    return
                self.retry = False
                await self._republish()
            elif self.pending:
                await self._write_pending()
            if beat and not self.stale:
                await self._beat()
        except StateUnavailable:
            if healthy:
                log.warning("state: node %s could not update the registry; it republishes when it can", self.node)
            self.stale = True

    async def _write_pending(self) -> None:
        batch, self.pending = self.pending, {}
        gone = [connection_id for connection_id, connection in batch.items() if connection is None]
        entries: dict[Any, str] = {
            connection_id: json.dumps(self.describe(connection))
            for connection_id, connection in batch.items()
            if connection is not None
        }
        key = self.hash_key(self.node)
        pipe = self.state.client.pipeline(transaction=False)
        if gone:
            pipe.hdel(key, *gone)
        if entries:
            pipe.hset(key, mapping=entries)
            pipe.pexpire(key, self.ttl_ms)
        try:
            await self.state.attempt("registry", pipe.execute)
        except StateUnavailable:
            self.stale = True  # what was written of it is unknown: all of it, once Redis answers
            raise
        self.published.difference_update(gone)
        self.published.update(entries)

    async def _republish(self) -> None:
        """Replace this node's hash with what is live now, and beat (one transaction). Registrations queue
        again from the snapshot on (``stale`` cleared first; set again if this fails)."""
        self.pending = {}
        self.stale = False
        live = list(self.live())
        entries = {connection.id: json.dumps(self.describe(connection)) for connection in live}
        key = self.hash_key(self.node)
        pipe = self.state.client.pipeline(transaction=True)
        pipe.delete(key)
        items = list(entries.items())
        for start in range(0, len(items), BATCH):
            pipe.hset(key, mapping=dict(items[start : start + BATCH]))
        if items:
            pipe.pexpire(key, self.ttl_ms)
        self._beat_commands(pipe)
        await self.state.attempt("registry", pipe.execute)
        self.published = set(entries)
        if live:
            log.info("state: node %s published its %d connection(s) to the registry", self.node, len(live))

    def _beat_commands(self, pipe: Any) -> None:
        pipe.set(self.node_key(self.node), json.dumps({"at": time.time()}), px=self.ttl_ms)
        pipe.sadd(self.nodes_key, self.node)

    async def _beat(self) -> None:
        pipe = self.state.client.pipeline(transaction=True)
        self._beat_commands(pipe)
        pipe.pexpire(self.hash_key(self.node), self.ttl_ms)
        results = await self.state.attempt("registry", pipe.execute)
        if self.published and not results[-1]:  # the hash is gone (Redis restarted, or pruned while stalled)
            self.stale = self.retry = True
            self.wake.set()

    async def _reconnected(self) -> None:
        """Back from an outage: the keys may be gone (a restarted Redis) or out of date; rewrite them now."""
        self.stale = self.retry = True
        self.wake.set()

    # -- reading every node's ---------------------------------------------------------------------------

    async def live_nodes(self) -> list[str]:
        """The nodes whose heartbeat is alive; the entries of the others are deleted (they died)."""
        names = sorted(await self.state.attempt("read", self.state.client.smembers, self.nodes_key))
        if not names:
            return []
        pipe = self.state.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(self.node_key(name))
        alive = await self.state.attempt("read", pipe.execute)
        dead = [name for name, exists in zip(names, alive, strict=True) if not exists]
        if dead:
            await self._prune(dead)
        return [name for name, exists in zip(names, alive, strict=True) if exists]

    async def _prune(self, dead: list[str]) -> None:
        pipe = self.state.client.pipeline(transaction=False)
        for name in dead:
            pipe.delete(self.hash_key(name))
        pipe.srem(self.nodes_key, *dead)
        await self.state.attempt("registry", pipe.execute)
        log.info("state: dropped the registry entries of node(s) %s (no heartbeat)", ", ".join(dead))

    async def sessions(self, exclude: str | None = None) -> list[dict[str, Any]]:
        """Every live node's published connections (each with ``id`` and ``node``), ``exclude``'s left out."""
        names = [name for name in await self.live_nodes() if name != exclude]
        if not names:
            return []
        pipe = self.state.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.hash_key(name))
        hashes = await self.state.attempt("read", pipe.execute)
        found: list[dict[str, Any]] = []
        for name, entries in zip(names, hashes, strict=True):
            for connection_id, text in entries.items():
                try:
                    entry = json.loads(text)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    found.append({**entry, "id": connection_id, "node": name})
        return found

    async def holder(self, connection_id: str) -> str | None:
        """The live node whose registry has ``connection_id``, if any."""
        names = await self.live_nodes()
        if not names:
            return None
        pipe = self.state.client.pipeline(transaction=False)
        for name in names:
            pipe.hexists(self.hash_key(name), connection_id)
        found = await self.state.attempt("read", pipe.execute)
        return next((name for name, present in zip(names, found, strict=True) if present), None)
