"""``wsgate run --workers N``: N gateway processes share each port with SO_REUSEPORT.

The kernel spreads new connections over the workers; each worker is a complete
gateway. What lives in one worker's memory is *not* shared (docs/operations.md):
realm sessions (authorization-mode recycle cookies), connection ids (so a
``/.wsgate/refresh/<id>`` call must reach the worker holding the connection,
which a new TCP connection does only by chance) and revocation
(``Gateway.revoke`` closes the sockets of the worker it runs in).
The supervisor forks after the config is validated, forwards SIGTERM/SIGINT/SIGHUP,
and restarts a worker that dies while the gateway is not stopping.

Each worker tells the supervisor over a pipe when it serves, or why it could not start.
A worker that dies before every worker has served once (a port taken, say) ends the whole
gateway with that worker's error, printed once; later deaths are restarted with a delay
that doubles on each death that comes soon after the last (``RESTART_DELAY`` to ``MAX_RESTART_DELAY``).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from .errors import ConfigError, GatewayError, WorkerFailed

log = logging.getLogger("wsgate.supervisor")
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 60.0  # a worker that served this long before dying restarts after RESTART_DELAY again
POLL = 0.05
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_READY = b"ready\n"
_CONFIG, _OTHER = b"config ", b"error "

Report = Callable[[], None]


@dataclass
class _Slot:
    """One worker position: its current process and how its last deaths went."""

    number: int
    pid: int = 0
    pipe: int = -1  # read end: the worker's ready line or its error
    said: bytes = b""
    ready_at: float | None = None
    deaths: int = 0  # deaths in a row without a stable run, for the back-off
    restart_at: float | None = None

    def read(self) -> None:
        while self.pipe >= 0:
            try:
                chunk = os.read(self.pipe, 4096)
            except BlockingIOError:
                return
            if not chunk:
                os.close(self.pipe)
                self.pipe = -1
                return
            self.said += chunk
            if self.ready_at is None and self.said.startswith(_READY):
                self.ready_at = time.monotonic()


def supervise(count: int, run_worker: Callable[[int, Report], int]) -> int:
    """Fork ``count`` workers running ``run_worker(slot, ready)``; return when all have exited after a stop signal.

    ``ready()`` is the worker's word that it serves. Raises ``ConfigError`` (or ``WorkerFailed``) with a
    worker's own error when one dies before all have served once.
    """
    slots = [_Slot(n) for n in range(count)]
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for slot in slots:
            _signal(slot, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    for slot in slots:
        _spawn(slot, run_worker)
    failed = False
    started = False  # every worker has served once
    while any(slot.pid for slot in slots) or not stopping and any(s.restart_at for s in slots):
        for slot in slots:
            slot.read()
        started = started or all(slot.ready_at is not None for slot in slots)
        exited = _reap(slots)
        for slot, pid, code in exited:
            if stopping:  # a worker that had no handler yet dies of the signal itself: that is a stop too
                failed |= code not in (0, -signal.SIGTERM, -signal.SIGINT)
            elif not started and slot.ready_at is None:
                stopping = True
                for other in slots:
                    _signal(other, signal.SIGTERM)
                _wait_all(slots)
                raise _startup_error(slot, code)
            else:
                _schedule_restart(slot, pid, code)
        now = time.monotonic()
        for slot in slots:
            if slot.restart_at is not None and now >= slot.restart_at and not stopping:
                slot.restart_at = None
                _spawn(slot, run_worker)
        if not exited:
            time.sleep(POLL)
    return 1 if failed else 0


def _spawn(slot: _Slot, run_worker: Callable[[int, Report], int]) -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: default signal dispositions until its event loop installs its own
        os.close(read_end)
        for sig in _FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os._exit(_worker(slot.number, run_worker, write_end))
    os.close(write_end)
    os.set_blocking(read_end, False)
    slot.pid, slot.pipe, slot.said, slot.ready_at = pid, read_end, b"", None
    log.info("worker %d started (pid %d)", slot.number, pid)


def _worker(number: int, run_worker: Callable[[int, Report], int], pipe: int) -> int:
    """Run the worker; its start-up error goes to the supervisor, which prints it once for all workers."""

    def ready() -> None:
        os.write(pipe, _READY)

    try:
        return run_worker(number, ready)
    except ConfigError as exc:
        os.write(pipe, _CONFIG + str(exc).encode())
        return 2
    except GatewayError as exc:
        os.write(pipe, _OTHER + str(exc).encode())
        return 1
    except BaseException as exc:  # a bug: the traceback goes to the log, the supervisor names it
        log.exception("worker %d failed", number)
        os.write(pipe, _OTHER + f"{type(exc).__name__}: {exc}".encode())
        return 1


def _reap(slots: list[_Slot]) -> list[tuple[_Slot, int, int]]:
    exited = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        for slot in slots:
            if slot.pid == pid:
                slot.pid = 0
                slot.read()
                exited.append((slot, pid, os.waitstatus_to_exitcode(status)))
    return exited


def _schedule_restart(slot: _Slot, pid: int, code: int) -> None:
    now = time.monotonic()
    stable = slot.ready_at is not None and now - slot.ready_at >= STABLE_AFTER
    slot.deaths = 1 if stable else slot.deaths + 1
    delay = min(RESTART_DELAY * 2 ** (slot.deaths - 1), MAX_RESTART_DELAY)
    why = slot.said.removeprefix(_READY).split(b" ", 1)[-1].decode(errors="replace")
    log.error(
        "worker %d (pid %d) exited with %d; restarting it in %gs%s",
        slot.number,
        pid,
        code,
        delay,
        f" ({why})" if why else "",
    )
    slot.restart_at = now + delay


def _startup_error(slot: _Slot, code: int) -> GatewayError:
    said = slot.said
    if said.startswith(_CONFIG):
        return ConfigError("", said.removeprefix(_CONFIG).decode(errors="replace"))
    cause = said.removeprefix(_OTHER).decode(errors="replace") or f"exit status {code}"
    return WorkerFailed(f"worker {slot.number} could not start: {cause}")


def _signal(slot: _Slot, signum: int) -> None:
    if slot.pid:
        try:
            os.kill(slot.pid, signum)
        except ProcessLookupError:
            pass


def _wait_all(slots: list[_Slot]) -> None:
    for slot in slots:
        if slot.pid:
            try:
                os.waitpid(slot.pid, 0)
            except ChildProcessError:
                pass
            slot.pid = 0
        if slot.pipe >= 0:
            os.close(slot.pipe)
            slot.pipe = -1
