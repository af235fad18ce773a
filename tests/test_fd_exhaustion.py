"""``wsgate run`` out of file descriptors: it backs off instead of spinning, says so briefly, and recovers.

A real process under a low RLIMIT_NOFILE (soft = hard, so the gateway cannot raise it), real sockets.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from .test_websocket_protocol import BINARY, frame, request_bytes

FD_LIMIT = 64
HELD = 100  # more connections than the gateway has descriptors for


def low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


async def start(config: Path, out: BinaryIO, limit: Callable[[], None], *args: str) -> asyncio.subprocess.Process:
    """``wsgate run CONFIG`` with console logs to ``out``, ``limit`` applied in the child before it starts."""
    command = [sys.executable, "-m", "wsgate", "run", str(config), "--log-format", "console", *args]
    return await asyncio.create_subprocess_exec(*command, stdout=out, stderr=out, preexec_fn=limit)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lines(log: Path) -> int:
    return log.read_bytes().count(b"\n")


async def wait_for_line(log: Path, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := re.search(pattern, log.read_text(errors="replace")):
            return match
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the log:\n{log.read_text(errors='replace')[-2000:]}")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=20) as response:
        return str(response.read().decode())


def echo_once(port: int) -> bytes:
    """A blocking client: upgrade, one message, its echo."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request_bytes("/echo"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(frame(BINARY, b"back"))
        return sock.recv(16)


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
async def test_out_of_descriptors_backs_off_logs_briefly_and_recovers(tmp_path: Path, loop: str) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(
        "limits:\n  handshake-timeout: 120s\n"
        "service:\n  - name: echo\n    accept: ws://127.0.0.1:0/echo\n    type: echo\n"
        "  - name: admin\n    accept: http://127.0.0.1:0/admin\n    type: management\n"
        "    properties:\n      insecure: true\n"
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = await start(config, out, low_fd_limit, "--loop", loop)
    held: list[socket.socket] = []
    try:
        port = int((await wait_for_line(log, r"service\[echo\].*\(port (\d+)\)")).group(1))
        admin = int((await wait_for_line(log, r"service\[admin\].*\(port (\d+)\)")).group(1))
        for _ in range(HELD):  # the kernel completes them all; the gateway accepts until it has no fd left
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        await wait_for_line(log, r"accept failed|Too many open files|out of system resource")
        await asyncio.sleep(0.5)
        before_cpu, before_lines = cpu_seconds(process.pid), lines(log)
        await asyncio.sleep(2.0)
        cpu = (cpu_seconds(process.pid) - before_cpu) / 2.0
        logged = lines(log) - before_lines
        assert cpu < 0.3, f"the gateway used {cpu:.0%} of a core while out of descriptors"
        assert logged < 10, f"{logged} log lines in 2 s while out of descriptors"
        assert "Traceback" not in log.read_text(errors="replace")
        for sock in held:
            sock.close()
        held.clear()
        assert await asyncio.to_thread(echo_once, port) == b"\x82\x04back"
        await wait_for_line(log, r"accepting again after \d+ failed accept")
        metrics = await asyncio.to_thread(scrape, f"http://127.0.0.1:{admin}/admin/metrics")
        assert re.search(r'wsgate_accept_errors_total\{reason="emfile"\} [1-9]', metrics), metrics
    finally:
        for sock in held:
            sock.close()
        process.kill()
        await process.wait()


async def test_start_up_raises_the_soft_limit_and_warns_when_the_limits_allow_more(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(
        "limits:\n  connections: 1000\nservice:\n  - name: echo\n    accept: ws://127.0.0.1:0/echo\n    type: echo\n"
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = await start(config, out, lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, 256)))
    try:
        await wait_for_line(log, r"listening on tcp://")
        text = log.read_text()
        assert "raised the file descriptor limit from 64 to 256" in text
        assert re.search(r"(?i)warning.*file descriptor limit 256 is below the 2064 the configured limits allow", text)
    finally:
        process.kill()
        await process.wait()
