"""``wsgate run --workers N``: N gateway processes share each port with SO_REUSEPORT.

The kernel spreads new connections over the workers; each worker is a complete
gateway. What lives in one worker's memory is *not* shared (docs/operations.md):
realm sessions (authorization-mode recycle cookies), connection ids (so a
``/.wsgate/refresh/<id>`` call must reach the worker holding the connection,
which a new TCP connection does only by chance) and revocation
(``Gateway.revoke`` closes the sockets of the worker it runs in).
The supervisor forks after the config is validated, forwards SIGTERM/SIGINT/SIGHUP,
and restarts a worker that dies while the gateway is not stopping.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("wsgate.supervisor")
RESTART_DELAY = 1.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def supervise(count: int, run_worker: Callable[[int], int]) -> int:
    """Fork ``count`` workers running ``run_worker(slot)``; return when all have exited after a stop signal."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: default signal dispositions until its event loop installs its own
            for sig in _FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            code = 1
            try:
                code = run_worker(slot)
            finally:
                os._exit(code)
        children[pid] = slot
        log.info("worker %d started (pid %d)", slot, pid)

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    for slot in range(count):
        spawn(slot)
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        slot = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed |= code != 0
            continue
        log.error("worker %d (pid %d) exited with %d; restarting it in %gs", slot, pid, code, RESTART_DELAY)
        time.sleep(RESTART_DELAY)
        if not stopping:
            spawn(slot)
    return 1 if failed else 0
