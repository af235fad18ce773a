"""New authenticated wss connections (issue 13, P4): the load client, and the ``connect`` scenario of run.py.

As a script it is the load client: each connection is a TCP connect, a TLS handshake (resumed with
``--resume``: every worker offers the session of its previous connection) and a WebSocket upgrade with a
bearer token, closed once the 101 arrives. It is a small uvloop protocol over ``ssl.MemoryBIO``: picows and
aiohttp cannot offer a saved ``SSLSession``, and it spends less CPU per handshake than either. ``--procs N``
spreads the workers (or the rate) over N processes started together, so the client is not the limit; the
report sums their CPU and says how busy the busiest was.

    connect.py connect wss://127.0.0.1:PORT/echo --ca ca.pem --token JWT [--conns 16 | --rate 750] [--resume]

Prints ``mark start`` / ``mark end`` as the measured window opens and closes, then one JSON line: conn/s over
the window, handshake latency percentiles (connect to 101), failures, the share of resumed sessions and the
client's CPU. Targets 127.0.0.x only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
TIMEOUT = 10.0  # seconds for one connection, connect to 101


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Upgrade(asyncio.Protocol):
    """One wss upgrade: TLS through memory BIOs (so a session can be offered), then the request, then the 101."""

    def __init__(
        self, context: ssl.SSLContext, session: ssl.SSLSession | None, request: bytes, done: asyncio.Future[Any]
    ) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost", session=session)
        self.request, self.done = request, done
        self.handshaken = False
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.step()

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        self.step()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before the 101"))

    def step(self) -> None:
        try:
            if not self.handshaken:
                try:
                    self.tls.do_handshake()
                except ssl.SSLWantReadError:
                    self.flush()
                    return
                self.handshaken = True
                self.tls.write(self.request)
            while True:
                try:
                    chunk = self.tls.read(4096)
                except ssl.SSLWantReadError:
                    break
                if not chunk:
                    raise ConnectionError("TLS closed before the 101")
                self.head += chunk
            self.flush()
            if b"\r\n\r\n" in self.head and not self.done.done():
                status = self.head.split(b" ", 2)[1]
                # TLS 1.3 tickets came before the 101, so the session is the resumable one now
                self.done.set_result((status, self.tls.session_reused, self.tls.session))
        except Exception as exc:
            if not self.done.done():
                self.done.set_exception(exc)

    def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.transport.write(data)


async def connect_once(
    host: str, port: int, context: ssl.SSLContext, session: ssl.SSLSession | None, request: bytes
) -> tuple[bytes, bool, ssl.SSLSession]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    transport, _ = await loop.create_connection(lambda: Upgrade(context, session, request, done), host, port)
    try:
        return await asyncio.wait_for(done, TIMEOUT)
    finally:
        transport.close()


def request_for(path: str, host: str, token: str | None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def run_one_process(args: argparse.Namespace) -> dict[str, Any]:
    """This process's share: ``--conns`` workers back to back, or ``--rate`` per second open loop."""
    scheme, rest = args.url.split("://", 1)
    assert scheme == "wss", "wss only: the point is the TLS handshake"
    authority, _, path = rest.partition("/")
    host, _, port = authority.partition(":")
    assert host.startswith("127."), "loopback only"
    context = ssl.create_default_context(cafile=args.ca)
    request = request_for("/" + path, authority, args.token)
    start = args.start_at or time.monotonic()
    warm_end, deadline = start + args.warmup, start + args.warmup + args.duration
    latencies: list[float] = []
    counts = {"failures": 0, "resumed": 0, "refused": 0, "in_window": 0}
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu = cpu_seconds()

    async def one(session: ssl.SSLSession | None) -> ssl.SSLSession | None:
        begun = time.monotonic()
        try:
            status, reused, new_session = await connect_once(host, int(port), context, session, request)
        except Exception:
            counts["failures"] += 1
            return None
        ended = time.monotonic()
        if status != b"101":
            counts["refused"] += 1
        if begun >= warm_end:
            latencies.append((ended - begun) * 1e6)
            counts["resumed"] += reused
        if warm_end <= ended < deadline:
            counts["in_window"] += 1
        return new_session if args.resume else None

    if args.rate:  # open loop: a new connection every 1/rate s, however long the others take
        tasks = []
        interval = 1.0 / args.rate
        tick = start + args.offset * interval
        session: ssl.SSLSession | None = None
        if args.resume:  # one session, taken once, offered by every connection (as many reconnecting clients)
            session = await one(None)
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
        while tick < deadline:
            tasks.append(asyncio.ensure_future(one(session)))
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        await asyncio.gather(*tasks)
    else:

        async def worker() -> None:
            session: ssl.SSLSession | None = None
            while time.monotonic() < deadline:
                session = await one(session) or session

        await asyncio.gather(*(worker() for _ in range(args.conns)))
    return {"latencies": latencies, "client_cpu_s": cpu_seconds() - cpu, **counts}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [0.0]

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    return {"p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999)}


def spread(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Start ``--procs`` copies of this client on the same clock, print the marks, and add up their reports."""
    start = time.monotonic() + 0.5  # every process is up and waiting by then
    children = []
    for index in range(args.procs):
        share = ["--conns", str(max(1, args.conns // args.procs))]
        if args.rate:
            share = ["--rate", str(args.rate / args.procs), "--offset", str(index)]
        command = [sys.executable, __file__, *argv, "--procs", "1", "--start-at", str(start), *share, "--raw"]
        children.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))

    async def marks() -> None:
        for at, what in ((start + args.warmup, "start"), (start + args.warmup + args.duration, "end")):
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            print(f"mark {what}", flush=True)

    asyncio.run(marks())
    reports = []
    for child in children:
        out, _ = child.communicate(timeout=args.duration + args.warmup + 60)
        if child.returncode:
            raise RuntimeError(f"a client process failed ({child.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    latencies = [v for r in reports for v in r["latencies"]]
    total = {k: sum(r[k] for r in reports) for k in ("failures", "resumed", "refused", "in_window", "client_cpu_s")}
    window = args.duration + args.warmup
    return {
        "conn_per_s": total["in_window"] / args.duration,
        "connections": total["in_window"],
        "failures": total["failures"],
        "refused": total["refused"],
        "resumed_share": total["resumed"] / max(1, len(latencies)),
        "client_cpu_s": total["client_cpu_s"],
        "client_procs": args.procs,
        "client_busiest_share": max(r["client_cpu_s"] for r in reports) / window,
        "window_s": window,
        **percentiles(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("connect",))
    parser.add_argument("url")
    parser.add_argument("--conns", type=int, default=16, help="workers, each connecting back to back")
    parser.add_argument("--rate", type=float, default=0.0, help="new connections per second (open loop)")
    parser.add_argument("--resume", action="store_true", help="offer the previous connection's TLS session")
    parser.add_argument("--procs", type=int, default=2, help="client processes sharing the work")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--token")
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        import uvloop

        print(json.dumps(uvloop.run(run_one_process(args))), flush=True)
        return
    print(json.dumps(spread(args, strip(sys.argv[1:], ("--procs", "--conns", "--rate")))), flush=True)


def strip(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without the options (and their values) that each process gets its own share of."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not any(arg.startswith(o + "=") for o in options):
            out.append(arg)
    return out


# -- the scenario (run.py --scenarios connect) ------------------------------------------------------------


def cells(rate: int) -> dict[str, list[str]]:
    return {
        "connect max (16 in flight)": ["--conns", "16"],
        "connect resumed (16 in flight)": ["--conns", "16", "--resume"],
        f"connect at {rate}/s": ["--rate", str(rate)],
        f"connect resumed at {rate}/s": ["--rate", str(rate), "--resume"],
    }


def run_connect(bench: Any, results: dict[str, Any], rate: int) -> None:
    """wsgate (and each ``--connect-baseline`` tree) vs nginx, alternating round by round in every cell."""
    from harness import PYTHON, Server

    servers = {"wsgate": bench.wsgate(), "nginx": bench.servers()["nginx"]}
    for tree in bench.args.connect_baseline:  # older src/ trees, named by their parent folder
        command = [PYTHON, "-m", "wsgate", "run", str(bench.config), "--log-level", "error"]
        src = Path(tree).resolve()
        servers[src.parent.name] = Server(src.parent.name, command, bench.ports["wsgate-tls"], {"PYTHONPATH": str(src)})
    urls = {"nginx": bench.urls()["nginx"]}
    procs = ["--procs", str(bench.args.connect_procs)]
    for cell, extra in cells(rate).items():
        results[cell] = {}
        for _ in range(bench.args.rounds):
            for name, server in servers.items():
                url = urls.get(name, bench.urls()["wsgate-secure-echo"])
                with server:
                    run = bench.measure(server, "connect", url, *extra, *procs, client="connect.py")
                results[cell].setdefault(name, []).append(run)
        print(row(cell, results[cell]), flush=True)


def row(cell: str, by_server: dict[str, list[dict[str, Any]]]) -> str:
    """Rate, server CPU per connection, p99, resumed share; ratios of wsgate's to each other column's."""
    from harness import median

    first = by_server["wsgate"]
    parts = []
    for name, runs in by_server.items():
        cpu = median(runs, "server_cpu_us_per_op")
        bound = " CLIENT-BOUND" if median(runs, "client_busiest_share") > 0.85 else ""
        part = (
            f"{name} {median(runs, 'conn_per_s'):6.0f} conn/s {cpu:7.1f} µs/conn p99 {median(runs, 'p99_us') / 1e3:6.2f}"
            f" ms resumed {median(runs, 'resumed_share'):4.0%}{bound}"
        )
        if name != "wsgate":
            part += f" (CPU ×{median(first, 'server_cpu_us_per_op') / max(cpu, 1e-9):.2f})"
        fails = sum(r["failures"] + r["refused"] for r in runs)
        parts.append(part + (f" [{fails} failed]" if fails else ""))
    load = (
        f"client {median(first, 'client_cpu_s') / first[0]['window_s']:.2f} cores over "
        f"{first[0]['client_procs']} procs, host {median(first, 'host_busy_cpus'):.2f} busy, "
        f"other work {median(first, 'other_cpus'):.2f}"
    )
    return f"{cell:32} " + " | ".join(parts) + f"  (wsgate runs: {load})"


if __name__ == "__main__":
    main()
