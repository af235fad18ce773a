"""The realm's verifier: blocking login work (password hashes, LDAP) off the event loop, bounded.

A password hash costs tens of milliseconds of CPU and an LDAP bind blocks on the network: run
on the event loop, a handful of bad logins stall every open connection. Each realm owns one
verifier, a small thread pool, and modules hand it their blocking work (``await
attempt.verifier.run(fn, *args)``; custom modules may do the same). At most ``concurrency``
jobs run and ``queue`` more wait; anything beyond is refused at once with ``Busy``, which the
realm answers with 503 and Retry-After and counts as ``wsgate_limited{limit="auth-concurrency"}``.
An unbounded queue would only turn a flood into unbounded latency and memory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from .outcomes import Busy

T = TypeVar("T")
DEFAULT_QUEUE = 32


def default_concurrency() -> int:
    """Half the CPUs (at least one): verification must leave cores to the traffic it protects."""
    return max(1, (os.cpu_count() or 2) // 2)


class Verifier:
    def __init__(self, concurrency: int | None = None, queue: int | None = None, name: str = "wsgate-verify") -> None:
        self.concurrency = concurrency or default_concurrency()
        self.queue = DEFAULT_QUEUE if queue is None else queue
        self.limit = self.concurrency + self.queue
        self.pending = 0  # admitted jobs not finished yet (running or waiting); only the loop touches it
        self.executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any, executor: Executor | None = None) -> T | Busy:
        """``fn(*args)`` in a worker thread, or ``Busy`` when the bound is reached.

        ``executor``: a module's own pool (LDAP keeps one per connection pool); the job still
        counts against this realm's bound. A job stays counted until its thread finishes, even
        if the client went away meanwhile: the bound is on work, not on waiting clients.
        """
        if self.pending >= self.limit:
            return Busy(f"{self.pending} logins already in progress (login-concurrency + login-queue)")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(executor or self.executor, fn, *args)
        self.pending += 1
        future.add_done_callback(self._finished)
        return await asyncio.shield(future)

    def _finished(self, future: asyncio.Future[Any]) -> None:
        self.pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved: the awaiting client may have left

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


_shared: Verifier | None = None


def shared_verifier() -> Verifier:
    """For attempts made outside a realm (tests, tools): one process-wide verifier."""
    global _shared
    if _shared is None:
        _shared = Verifier(name="wsgate-verify-shared")
    return _shared
