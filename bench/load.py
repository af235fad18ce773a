"""Load client for bench/run.py, in its own process, on picows (the cheapest client measured) and uvloop.

Modes (each prints one JSON line, last; ``idle`` prints two and waits for a line on stdin in between):
  throughput  N connections, W messages in flight each, S bytes, D seconds: msg/s and round-trip latency
              of each window. Echoed *bytes* are counted (stream proxies may split or merge messages).
              Prints ``mark start`` and ``mark end`` when the measured window opens and closes.
  connect     new connections (TLS + upgrade + auth) as fast as K workers can, or at --rate per second
              (open loop): connections/s and handshake latency; each is closed right after its upgrade.
  idle        open N connections spread over --sources 127.0.0.x addresses, report, wait for stdin,
              then ping every connection and count the pongs.
Every report includes the client's own CPU seconds, so the harness can tell when the client is the limit.
Targets 127.0.0.x only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import ssl
import sys
import time
from collections.abc import Callable

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [0.0]

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    return {"p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999)}


class Windowed(WSListener):
    """Sends a window of messages, waits for all their bytes back, records the round trip, repeats."""

    def __init__(self, payload: bytes, window: int, stats: dict, warmup_end: float, deadline: float) -> None:
        self.payload, self.window, self.stats = payload, window, stats
        self.warmup_end, self.deadline = warmup_end, deadline
        self.expected = len(payload) * window
        self.got = 0
        self.started = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.fire()

    def fire(self) -> None:
        self.got = 0
        self.started = time.monotonic()
        send, payload = self.transport.send, self.payload
        for _ in range(self.window):
            send(WSMsgType.BINARY, payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            if not self.done.done():
                self.done.set_exception(RuntimeError(f"closed by server: {frame.get_close_code()}"))
            return
        if frame.msg_type is not WSMsgType.BINARY and frame.msg_type is not WSMsgType.CONTINUATION:
            return
        self.got += frame.payload_size
        if self.got < self.expected:
            return
        now = time.monotonic()
        if self.started >= self.warmup_end:
            self.stats["bytes"] += self.got
            self.stats["latencies"].append((now - self.started) * 1e6)
        if now < self.deadline:
            self.fire()
        elif not self.done.done():
            self.done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError("disconnected"))


class Idle(WSListener):
    def __init__(self) -> None:
        self.pong: asyncio.Future[None] | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.PONG and self.pong is not None and not self.pong.done():
            self.pong.set_result(None)


def client_context(ca: str | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=ca) if ca else None


def source_factory(sources: int, first: int = 2) -> Callable[[object], socket.socket]:
    """Bind each new socket to the next 127.0.0.x (x = first..first+sources-1): ~28k ports per address."""
    counter = iter(range(1 << 62))

    def make(_url: object) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((f"127.0.0.{first + next(counter) % sources}", 0))
        sock.setblocking(False)
        return sock

    return make


async def mark(at: float, what: str) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    print(f"mark {what}", flush=True)


def json_payload(size: int) -> bytes:
    """A JSON object of ``size`` bytes (at least its keys'), for rules that read JSON fields (bench/policy.py)."""
    head = b'{"kind":"quote","desk":"public","pad":"'
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


async def throughput(args: argparse.Namespace, headers: dict[str, str], ctx: ssl.SSLContext | None) -> dict:
    stats: dict = {"bytes": 0, "latencies": []}
    now = time.monotonic()
    payload = json_payload(args.size) if args.json else b"x" * args.size
    listeners = []
    # Lines the harness reads as they come, to sample the server's CPU over exactly the measured window.
    marks = [
        asyncio.ensure_future(mark(now + args.warmup, "start")),
        asyncio.ensure_future(mark(now + args.warmup + args.duration, "end")),
    ]
    for _ in range(args.conns):
        _, listener = await ws_connect(
            lambda: Windowed(payload, args.window, stats, now + args.warmup, now + args.warmup + args.duration),
            args.url,
            ssl_context=ctx,
            extra_headers=headers,
            max_frame_size=1 << 24,
        )
        listeners.append(listener)
    cpu = cpu_seconds()
    await asyncio.gather(*(listener.done for listener in listeners), *marks)
    messages = stats["bytes"] / len(payload)
    return {
        "msg_per_s": messages / args.duration,
        "messages": messages,
        "client_cpu_s": cpu_seconds() - cpu,
        **percentiles(stats["latencies"]),
    }


async def connect_once(args: argparse.Namespace, headers: dict[str, str], ctx: ssl.SSLContext | None) -> float:
    started = time.monotonic()
    transport, _ = await ws_connect(WSListener, args.url, ssl_context=ctx, extra_headers=headers)
    elapsed = time.monotonic() - started
    transport.disconnect(graceful=False)
    return elapsed


async def connect_rate(args: argparse.Namespace, headers: dict[str, str], ctx: ssl.SSLContext | None) -> dict:
    latencies: list[float] = []
    failures = 0
    start = time.monotonic()
    warm_end, deadline = start + args.warmup, start + args.warmup + args.duration
    cpu = cpu_seconds()

    async def one() -> None:
        nonlocal failures
        begun = time.monotonic()
        try:
            elapsed = await connect_once(args, headers, ctx)
        except Exception:
            failures += 1
            return
        if begun >= warm_end:
            latencies.append(elapsed * 1e6)

    if args.rate:  # open loop: a new connection every 1/rate s, however long the others take
        tasks = []
        interval = 1.0 / args.rate
        tick = start
        while tick < deadline:
            tasks.append(asyncio.ensure_future(one()))
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        await asyncio.gather(*tasks)
    else:

        async def worker() -> None:
            while time.monotonic() < deadline:
                await one()

        await asyncio.gather(*(worker() for _ in range(args.conns)))
    return {
        "conn_per_s": len(latencies) / args.duration,
        "failures": failures,
        "client_cpu_s": cpu_seconds() - cpu,
        **percentiles(latencies),
    }


async def idle(args: argparse.Namespace, headers: dict[str, str], ctx: ssl.SSLContext | None) -> None:
    factory = source_factory(args.sources, args.first_source)
    transports: list[tuple[WSTransport, Idle]] = []
    failures: list[str] = []
    pending = iter(range(args.conns))
    started = time.monotonic()

    async def opener() -> None:
        for _ in pending:
            try:
                connecting = ws_connect(Idle, args.url, ssl_context=ctx, extra_headers=headers, socket_factory=factory)  # type: ignore[arg-type]
                transports.append(await asyncio.wait_for(connecting, 15))
            except Exception as exc:
                failures.append(type(exc).__name__)

    await asyncio.gather(*(opener() for _ in range(args.concurrency)))
    report = {"opened": len(transports), "failures": len(failures), "open_s": time.monotonic() - started}
    if failures:
        report["first_failure"] = failures[0]
    print(json.dumps(report), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for transport, listener in transports:
        listener.pong = asyncio.get_running_loop().create_future()
        transport.send_ping()
    results = await asyncio.gather(
        *(asyncio.wait_for(listener.pong, 30) for _, listener in transports if listener.pong), return_exceptions=True
    )
    print(json.dumps({"pongs": sum(r is None for r in results), "of": len(transports)}), flush=True)
    for transport, _ in transports:
        transport.disconnect(graceful=False)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("throughput", "connect", "idle"))
    parser.add_argument("url")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument(
        "--json", action="store_true", help="throughput: the payload is a JSON object (bench/policy.py)"
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=0.0, help="connect: new connections per second (open loop)")
    parser.add_argument("--sources", type=int, default=1, help="idle: spread over 127.0.0.2 .. 127.0.0.N+1")
    parser.add_argument("--first-source", type=int, default=2, help="idle: the first 127.0.0.x to bind")
    parser.add_argument("--concurrency", type=int, default=100, help="idle: handshakes in flight")
    parser.add_argument("--ca", help="CA file for wss://")
    parser.add_argument("--token", help="sent as Authorization: Bearer")
    args = parser.parse_args()
    host = args.url.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
    assert host.startswith("127."), "loopback only"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    ctx = client_context(args.ca)
    if args.mode == "throughput":
        print(json.dumps(await throughput(args, headers, ctx)), flush=True)
    elif args.mode == "connect":
        print(json.dumps(await connect_rate(args, headers, ctx)), flush=True)
    else:
        await idle(args, headers, ctx)


def raise_fd_limit(wanted: int = 1 << 20) -> int:
    """As many descriptors as allowed (root may raise the hard limit too); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in ((wanted, wanted), (min(wanted, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            return limit[0]
        except (ValueError, OSError):
            continue
    return soft


if __name__ == "__main__":
    raise_fd_limit()
    import uvloop

    uvloop.run(main())
