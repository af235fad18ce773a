"""What every bench scenario shares: free ports, server processes, and CPU and memory read from /proc.

``run.py`` and the scenario modules it loads (``amqp.py``, ``policy.py``, ...) import it; it imports
neither, so the scenarios never reach back up into ``run.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PYTHON = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _proc_stats() -> dict[int, list[str]]:
    """The fields after the command name of every /proc/<pid>/stat."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    return stats


def tree_pids(pid: int, stats: dict[int, list[str]] | None = None) -> set[int]:
    """``pid`` and all its descendants."""
    parents = {p: int(fields[1]) for p, fields in (stats or _proc_stats()).items()}
    members, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in members]
        members.update(children)
        frontier.extend(children)
    return members


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants."""
    total = 0
    for member in tree_pids(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants, from /proc.

    cutime + cstime count children that exited and were reaped (websockify forks per connection).
    """
    stats = _proc_stats()
    return sum(sum(int(f) for f in stats[p][11:15]) / TICK for p in tree_pids(pid, stats) if p in stats)


def host_busy() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O), from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK  # user..steal, minus idle and iowait


class Server:
    """A server process (group) started for one measurement and stopped after it."""

    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.name, self.command, self.port, self.env = name, command, port, env
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **self.env} if self.env else None,
        )
        wait_port(self.port)
        time.sleep(0.3)  # every worker up, not just the first to listen
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))
