"""Accepting connections when the process is out of descriptors (or kernel memory) without spinning.

A listening socket stays readable while ``accept`` fails with EMFILE: the backlog is not empty. The
loops handle it differently, and aiofastnet not at all: its accept loop calls a method the socket does
not have (``socket.remove_reader``), so the reader stays registered and every loop turn fails again,
twice logged with a traceback (a full core and 11,000+ ERROR lines a second). asyncio pauses for a
fixed second and logs each failure as an ERROR with a traceback.

``AcceptGuard`` takes over the reader of a started server's listening sockets and hands each accepted
socket to the server as the loop would. On EMFILE, ENFILE, ENOBUFS or ENOMEM it stops reading that
socket for a while (100 ms, doubling to 1 s) and resumes by itself; the waiting clients stay in the
kernel's backlog meanwhile and are served once descriptors free up. One WARNING line a second at most,
with the count of failures, and ``wsgate_accept_errors_total{reason}``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..observe.metrics import Metrics

log = logging.getLogger("wsgate.listener")

OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
FIRST_PAUSE = 0.1
LONGEST_PAUSE = 1.0
REPORT_EVERY = 1.0  # seconds between two WARNING lines while accepting keeps failing

Handoff = Callable[[socket.socket, Any], None]


class AcceptGuard:
    """Accepts on the listening sockets of one server; backs off while the process is out of resources."""

    def __init__(
        self, server: asyncio.AbstractServer, handoff: Handoff, name: str, backlog: int, metrics: Metrics | None
    ) -> None:
        self.loop = server.get_loop()
        self.server = server
        self.handoff = handoff
        self.name = name
        self.backlog = backlog
        self.metrics = metrics
        self.pause = FIRST_PAUSE
        self.failures = 0  # since accepting last worked
        self.unreported = 0  # since the last WARNING line
        self.next_report = 0.0

    def install(self, sockets: list[socket.socket]) -> None:
        """Replace the loop's reader of each listening socket by ``ready``."""
        for sock in sockets:
            self.loop.remove_reader(sock.fileno())
            self.loop.add_reader(sock.fileno(), self.ready, sock)

    def ready(self, sock: socket.socket) -> None:
        for _ in range(self.backlog):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # reset while in the backlog
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise  # the loop's exception handler logs it
                self.exhausted(sock, exc)
                return
            if self.failures:
                self.recovered()
            conn.setblocking(False)
            self.handoff(conn, address)

    def exhausted(self, sock: socket.socket, exc: OSError) -> None:
        """Stop reading ``sock`` for a while; say so at most once every ``REPORT_EVERY`` seconds."""
        self.loop.remove_reader(sock.fileno())
        self.loop.call_later(self.pause, self.resume, sock)
        reason = errno.errorcode.get(exc.errno or 0, "other").lower()
        if self.metrics is not None:
            self.metrics.accept_errors.labels(reason).inc()
        self.failures += 1
        self.unreported += 1
        now = self.loop.time()
        if now >= self.next_report:
            log.warning(
                "listener %s: accept failed %d time(s) (%s: %s); new connections wait in the backlog, "
                "retrying every %.1f s",
                self.name,
                self.unreported,
                reason.upper(),
                exc.strerror,
                self.pause,
            )
            self.unreported = 0
            self.next_report = now + REPORT_EVERY
        self.pause = min(self.pause * 2, LONGEST_PAUSE)

    def resume(self, sock: socket.socket) -> None:
        if self.server.is_serving() and sock.fileno() >= 0:
            self.loop.add_reader(sock.fileno(), self.ready, sock)

    def recovered(self) -> None:
        log.info("listener %s: accepting again after %d failed accept(s)", self.name, self.failures)
        self.failures = self.unreported = 0
        self.pause = FIRST_PAUSE
        self.next_report = 0.0


def guard(
    server: asyncio.AbstractServer, name: str, backlog: int, metrics: Metrics | None, handoff: Handoff | None = None
) -> AcceptGuard | None:
    """Install an ``AcceptGuard`` on ``server`` if its loop accepts through ``add_reader`` (aiofastnet, asyncio).

    uvloop's own servers accept inside libuv (which refuses the excess clients itself) and are left alone.
    ``handoff``: what to do with each accepted socket instead of the loop's own (transport/sni.py).
    """
    handoff = handoff or _handoff(server)
    sockets: list[socket.socket] | None = getattr(server, "_sockets", None)
    if handoff is None or not sockets:
        return None
    accept_guard = AcceptGuard(server, handoff, name, backlog, metrics)
    accept_guard.install(list(sockets))
    return accept_guard


def _handoff(server: Any) -> Handoff | None:
    """How the server's loop turns an accepted socket into a connection (each loop's own code)."""
    loop: Any = server.get_loop()
    if type(server).__module__.startswith("aiofastnet"):

        def aiofastnet_handoff(conn: socket.socket, address: Any) -> None:
            loop.create_task(server._accept_connection2(conn))

        return aiofastnet_handoff
    plain_asyncio = isinstance(server, asyncio.base_events.Server)  # (no narrowing: its fields are private)
    if plain_asyncio and hasattr(loop, "_accept_connection2"):

        def asyncio_handoff(conn: socket.socket, address: Any) -> None:
            loop.create_task(
                loop._accept_connection2(
                    server._protocol_factory,
                    conn,
                    {"peername": address},
                    server._ssl_context,
                    server,
                    server._ssl_handshake_timeout,
                    server._ssl_shutdown_timeout,
                )
            )

        return asyncio_handoff
    return None
