"""Benchmark harness (first part of the benchmark issue): wsgate against references in one run.

Scenarios, each alternated A/B over several rounds, medians and ratios reported:
  echo   wsgate echo service  vs  a bare aiohttp echo on the same loop (uvloop + aiofastnet)
  proxy  wsgate ws→tcp proxy  vs  websockify 0.13, both in front of the same TCP echo
Matrix: 32 B and 16 KiB messages, c=1 (window 8) and c=100 (window 1).
Server CPU is read from /proc for the server's whole process tree (websockify forks per connection),
reported as µs per message. Loopback only; every process is started and stopped here.

    make bench            # or: .venv/bin/python bench/run.py --rounds 3 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).parent
PYTHON = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
CELLS = [(32, 1, 8), (32, 100, 1), (16384, 1, 8), (16384, 100, 1)]  # size, conns, window


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


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        # utime + stime, plus cutime + cstime: children that exited and were reaped (websockify forks per connection)
        times[int(entry.name)] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICK
    members, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in members]
        members.update(children)
        frontier.extend(children)
    return sum(times.get(p, 0.0) for p in members)


BARE_ECHO = textwrap.dedent("""
    import asyncio, sys
    from aiohttp import web, WSMsgType
    from wsgate.cli import new_event_loop

    async def handler(request):
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def main():
        server = web.Server(handler, access_log=None)
        await asyncio.get_running_loop().create_server(server, "127.0.0.1", int(sys.argv[1]))
        await asyncio.Event().wait()

    new_event_loop("auto").run_until_complete(main())
""")

TCP_ECHO = textwrap.dedent("""
    import asyncio, sys
    from wsgate.cli import new_event_loop

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)

    async def main():
        await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", int(sys.argv[1]))
        await asyncio.Event().wait()

    new_event_loop("auto").run_until_complete(main())
""")


class Server:
    def __init__(self, name: str, command: list[str], port: int, cwd: Path | None = None) -> None:
        self.name, self.command, self.port, self.cwd = name, command, port, cwd
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def measure(server: Server, url: str, size: int, conns: int, window: int, duration: float) -> dict[str, float]:
    assert server.process is not None
    cpu_before = tree_cpu(server.process.pid)
    out = subprocess.run(
        [
            PYTHON,
            str(HERE / "load.py"),
            url,
            "--conns",
            str(conns),
            "--window",
            str(window),
            "--size",
            str(size),
            "--duration",
            str(duration),
            "--warmup",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    cpu = tree_cpu(server.process.pid) - cpu_before
    result["server_cpu_us_per_msg"] = cpu / max(result["messages"], 1) * 1e6 * (duration / (duration + 1))
    return result


def wsgate_config(folder: Path, port: int, backend: int) -> Path:
    path = folder / "bench-gateway.yaml"
    path.write_text(
        textwrap.dedent(f"""
        service:
          - name: echo
            accept: ws://127.0.0.1:{port}/echo
            type: echo
            accept-options:
              ws.maximum.message.size: 1M
          - name: proxy
            accept: ws://127.0.0.1:{port}/proxy
            connect: tcp://127.0.0.1:{backend}
            type: proxy
            accept-options:
              ws.maximum.message.size: 1M
    """)
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--scenarios", default="echo,proxy")
    args = parser.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"wsgate-bench-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    gw_port, bare_port, tcp_port, wsf_port = free_port(), free_port(), free_port(), free_port()
    servers = {
        "wsgate": Server(
            "wsgate",
            [PYTHON, "-m", "wsgate", "run", str(wsgate_config(work, gw_port, tcp_port)), "--log-level", "error"],
            gw_port,
        ),
        "aiohttp": Server("aiohttp", [PYTHON, "-c", BARE_ECHO, str(bare_port)], bare_port),
        "websockify": Server(
            "websockify", [PYTHON, "-m", "websockify", f"127.0.0.1:{wsf_port}", f"127.0.0.1:{tcp_port}"], wsf_port
        ),
    }
    pairs = {
        "echo": (("wsgate", f"ws://127.0.0.1:{gw_port}/echo"), ("aiohttp", f"ws://127.0.0.1:{bare_port}/")),
        "proxy": (("wsgate", f"ws://127.0.0.1:{gw_port}/proxy"), ("websockify", f"ws://127.0.0.1:{wsf_port}/")),
    }
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with Server("tcp-echo", [PYTHON, "-c", TCP_ECHO, str(tcp_port)], tcp_port):
        for scenario in args.scenarios.split(","):
            for size, conns, window in CELLS:
                cell = f"{scenario} {size}B c={conns}"
                results[cell] = {}
                for _ in range(args.rounds):
                    for name, url in pairs[scenario]:
                        with servers[name] as server:
                            results[cell].setdefault(name, []).append(
                                measure(server, url, size, conns, window, args.duration)
                            )
                print(_row(cell, results[cell]), flush=True)
    _save(results, args)
    return 0


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _row(cell: str, by_server: dict[str, list[dict[str, float]]]) -> str:
    (a, a_runs), (b, b_runs) = list(by_server.items())
    ratio = _median(a_runs, "msg_per_s") / max(_median(b_runs, "msg_per_s"), 1e-9)
    b_cpu = _median(b_runs, "server_cpu_us_per_msg")
    cpu_ratio = f"×{_median(a_runs, 'server_cpu_us_per_msg') / b_cpu:.2f}" if b_cpu > 0.05 else "n/a"
    return (
        f"{cell:24} {a} {_median(a_runs, 'msg_per_s'):9.0f} msg/s {_median(a_runs, 'server_cpu_us_per_msg'):6.1f} µs/msg"
        f" | {b} {_median(b_runs, 'msg_per_s'):9.0f} msg/s {_median(b_runs, 'server_cpu_us_per_msg'):6.1f} µs/msg"
        f" | throughput ×{ratio:.2f}, CPU/msg {cpu_ratio}"
    )


def _save(results: dict, args: argparse.Namespace) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    path = HERE / "results" / f"{stamp}.json"
    path.write_text(
        json.dumps({"machine": machine, "rounds": args.rounds, "duration": args.duration, "results": results}, indent=1)
    )
    print(f"saved {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    sys.exit(main())
