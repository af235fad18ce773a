"""Multi-certificate TLS listeners on aiofastnet: the certificate is chosen before the TLS engine starts.

aiofastnet 1.2's direct OpenSSL engine segfaults on a context with an ``sni_callback``
(bench/upstream/aiofastnet-1.py); its stdlib-SSLObject engine copes but costs more CPU (+28 % per small
message, +19 % per new connection in the quietest run, bench/README.md "aiofastnet"). So for such a
listener the accepted socket is not handed to the server at once: its ClientHello is peeked at
(``MSG_PEEK``: the bytes stay for OpenSSL), the server name read (core/client_hello.py), and the transport
created with that name's own context, which has no callback. The server's own context (with the callback,
on the stdlib engine) stays what other loops use, and what this loop uses if aiofastnet's internals are not
what this module expects.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..core.client_hello import MAX_HELLO, RECORD_HEADER, NeedMore, server_name
from .tls_audit import CLOSED, TIMEOUT

if TYPE_CHECKING:
    from .tls_audit import TlsAudit

log = logging.getLogger("wsgate.listener")

Select = Callable[[str | None], ssl.SSLContext]
PEEK = 2 * (RECORD_HEADER + MAX_HELLO)
FIRST_WAIT = 0.001  # a ClientHello split over TCP segments: its rest is usually a round trip behind
LONGEST_WAIT = 0.05
# What aiofastnet's ``Server._accept_connection2`` uses; checked once, when the listener starts.
_SERVER_FIELDS = (
    "_protocol_factory",
    "_sockets",
    "_attach",
    "_ssl_handshake_timeout",
    "_ssl_shutdown_timeout",
    "_ssl_incoming_bio_size",
    "_ssl_outgoing_bio_size",
)


def sni_handoff(
    server: Any, select: Select, timeout: float, audit: TlsAudit | None
) -> Callable[[socket.socket, Any], None] | None:
    """How an aiofastnet ``server`` takes an accepted socket once its ClientHello chose the context;
    ``None`` (keep the server's own handoff) when this aiofastnet lacks what it needs."""
    create = getattr(_module("aiofastnet.api_utils"), "_create_connection_transport", None)
    if create is None or not all(hasattr(server, name) for name in _SERVER_FIELDS):
        log.warning("aiofastnet changed: multi-certificate listeners use its slower stdlib TLS engine")
        return None
    loop = server.get_loop()
    tasks: set[asyncio.Task[None]] = set()

    def handoff(conn: socket.socket, address: Any) -> None:
        task = loop.create_task(_accept(server, create, conn, address, select, timeout, audit))
        tasks.add(task)  # a strong reference until done
        task.add_done_callback(tasks.discard)

    return handoff


async def _accept(
    server: Any,
    create: Callable[..., Coroutine[Any, Any, tuple[Any, Any]]],
    conn: socket.socket,
    address: Any,
    select: Select,
    timeout: float,
    audit: TlsAudit | None,
) -> None:
    loop = server.get_loop()
    accepted = loop.time()
    try:
        name = await read_server_name(conn, timeout)
    except asyncio.CancelledError:
        conn.close()
        raise
    except (TimeoutError, OSError) as exc:
        conn.close()
        if audit is not None:
            audit.report(TIMEOUT if isinstance(exc, TimeoutError) else CLOSED, remote=_host(address))
        return
    if server._sockets is None:  # closed meanwhile
        conn.close()
        return

    def backdated() -> Any:
        """The server's protocol, told when the socket was accepted (``HttpConnection.accepted_at``), so
        that its handshake deadline still counts from the accept, peek included."""
        protocol = server._protocol_factory()
        accepted_at = getattr(protocol, "accepted_at", None)
        if accepted_at is not None:
            accepted_at(accepted)
        return protocol

    try:
        transport, _ = await create(
            loop,
            conn,
            backdated,
            select(name),
            server_hostname=None,
            server_side=True,
            # what is left of the handshake timeout, which counts from the accept here too
            ssl_handshake_timeout=max(0.001, accepted + server._ssl_handshake_timeout - loop.time()),
            ssl_shutdown_timeout=server._ssl_shutdown_timeout,
            ssl_incoming_bio_size=server._ssl_incoming_bio_size,
            ssl_outgoing_bio_size=server._ssl_outgoing_bio_size,
            server=server,
        )
    except Exception:
        conn.close()
        log.exception("creating a TLS transport for %s failed", _host(address))
        return
    if server._sockets is None:
        transport.abort()
        return
    server._attach(transport)


async def read_server_name(sock: socket.socket, timeout: float) -> str | None:
    """The server name of the ClientHello waiting on ``sock``, left unread; ``None`` if it names none (or
    is not a ClientHello). Raises ``TimeoutError`` after ``timeout`` s, ``ConnectionError`` at EOF."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        wait = FIRST_WAIT
        while True:
            try:
                data = sock.recv(PEEK, socket.MSG_PEEK)
            except BlockingIOError:
                await _readable(loop, sock)
                continue
            if not data:
                raise ConnectionResetError("closed before its ClientHello")
            name = server_name(data)
            if not isinstance(name, NeedMore):
                return name
            # Peeked bytes keep the socket readable: wait a little rather than spin on it.
            await asyncio.sleep(wait)
            wait = min(wait * 2, LONGEST_WAIT)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _wake, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _host(address: Any) -> str | None:
    return str(address[0]) if isinstance(address, tuple) and address else None
