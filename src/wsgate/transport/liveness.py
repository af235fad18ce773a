"""Sockets whose peer is gone: their transports are closed even where the event loop misses it.

uvloop's ``add_reader``, on which aiofastnet's transports read, turns an error on the socket (EPOLLERR:
the peer reset it) into one last call of the reader and then drops the registration without a word
(libuv reports POLLERR as ``UV_EBADF``; uvloop's ``UVPoll`` closes itself). A transport whose last read
returned data rather than the error (a message longer than one read, a proxy waiting on its back end)
is never called again: ``connection_lost`` never comes, and the connection, its descriptors and its
back end stay open until shutdown.

``ResetWatch`` keeps one epoll set beside the loop that watches each socket for errors only (EPOLLERR,
one shot): one ``epoll_ctl`` when a connection opens and one when it closes, nothing per message. A
socket reported there whose transport is still open a moment later is aborted, so ``connection_lost``
reaches the protocol on every loop. Where the loop noticed by itself, the transport is closed by then
and nothing happens.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
from typing import Any

log = logging.getLogger("wsgate.liveness")

# How long the loop has to notice an error itself before the transport is aborted: a loop that works
# reads the error in the same turn, so this only delays the release of those it missed.
GRACE = 0.1


class ResetWatch:
    """An epoll set of the sockets of open connections, read for errors only."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transports: dict[int, asyncio.Transport] = {}
        self.epoll: Any = None
        if hasattr(select, "epoll"):  # Linux; elsewhere the loop's own error handling is all there is
            self.epoll = select.epoll()
            loop.add_reader(self.epoll.fileno(), self._ready)

    def watch(self, transport: asyncio.Transport) -> int:
        """Watch the socket of ``transport``; its fd (for ``forget``), or -1 if there is none to watch."""
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None and self.epoll is not None else -1
        if fd < 0:
            return -1
        try:
            self.epoll.register(fd, select.EPOLLONESHOT)  # no events asked: EPOLLERR and EPOLLHUP only
        except FileExistsError:
            self.epoll.modify(fd, select.EPOLLONESHOT)
        except OSError:
            return -1
        self.transports[fd] = transport
        return fd

    def forget(self, fd: int, transport: asyncio.Transport) -> None:
        """The connection on ``fd`` is closed: stop watching it (before the fd can be reused)."""
        if fd < 0 or self.transports.get(fd) is not transport:
            return
        del self.transports[fd]
        try:
            self.epoll.unregister(fd)
        except OSError as exc:  # already closed: the kernel dropped it from the set
            if exc.errno not in (errno.EBADF, errno.ENOENT):
                raise

    def close(self) -> None:
        if self.epoll is not None:
            self.loop.remove_reader(self.epoll.fileno())
            self.epoll.close()
            self.epoll = None
        self.transports.clear()

    def _ready(self) -> None:
        for fd, events in self.epoll.poll(0):
            transport = self.transports.get(fd)
            if transport is not None and events & select.EPOLLERR:
                self.loop.call_later(GRACE, self._check, fd, transport)

    def _check(self, fd: int, transport: asyncio.Transport) -> None:
        if self.transports.get(fd) is transport and not transport.is_closing():
            log.debug("fd %d: the peer is gone but the loop did not say so; aborting its transport", fd)
            transport.abort()
