"""Clients for bench/run.py's ``cluster`` cells, each run in its own process (picows on uvloop).

Modes (each prints one JSON line, last):
  revoke     for each of --users users: --conns connections of that user on every --url node, then
             ``DELETE <admin>/api/principals/<user>`` on the first node; the time from sending it to each
             connection's close frame, split into the first node's own connections (local) and the other
             nodes' (remote). --bystanders connections per node that stay open make the registries large.
  broadcast  --conns receivers on every --url node and one publisher on the first, whose 32 B messages
             (``on.client.message: broadcast``) every receiver gets; at most --window messages in flight
             (sent but not yet received by the slowest receiver), so nothing is dropped for being slow.
             Deliveries per second (messages × receivers) over --duration s after a --warmup; prints
             ``mark start`` / ``mark end`` for the harness to sample CPU over exactly that window.
Targets 127.0.0.x only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [0.0]

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    return {"count": len(values), "p50_ms": at(0.5) * 1e3, "p99_ms": at(0.99) * 1e3, "max_ms": ordered[-1] * 1e3}


class Closed(WSListener):
    """Records when its close frame arrives (``at`` is set once, monotonic seconds)."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.code: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE and self.at is None:
            self.at = time.monotonic()
            self.code = frame.get_close_code()
            transport.disconnect(graceful=False)


async def open_many(url: str, count: int, token: str, make: Callable[[], WSListener], inflight: int = 32) -> list:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    opened: list = []
    pending = iter(range(count))

    async def opener() -> None:
        for _ in pending:
            opened.append(await ws_connect(make, url, extra_headers=headers))

    await asyncio.gather(*(opener() for _ in range(inflight)))
    return opened


async def delete(admin: str, path: str) -> int:
    """One HTTP/1.1 DELETE on loopback; returns the status."""
    url = urlsplit(admin)
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(f"DELETE {url.path}{path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode())
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def revoke(args: argparse.Namespace) -> dict:
    tokens: dict[str, str] = json.loads(Path(args.tokens).read_text())
    bystander = tokens.pop("bystander")
    users = list(tokens)[: args.users]
    kept = [c for url in args.url for c in await open_many(url, args.bystanders, bystander, Closed)]
    local: list[float] = []
    remote: list[float] = []
    failures = 0
    cpu = cpu_seconds()
    for user in users:
        per_node = [await open_many(url, args.conns, tokens[user], Closed) for url in args.url]
        await asyncio.sleep(0.05)
        sent = time.monotonic()
        status = await delete(args.admin, f"/api/principals/{user}")
        assert status == 200, status
        deadline = time.monotonic() + 5
        listeners = [listener for opened in per_node for _, listener in opened]
        while any(listener.at is None for listener in listeners) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for index, opened in enumerate(per_node):
            for _, listener in opened:
                if listener.at is None or listener.code != 1008:
                    failures += 1
                else:
                    (local if index == 0 else remote).append(listener.at - sent)
    still_open = sum(listener.at is None for _, listener in kept)
    for transport, _ in kept:
        transport.disconnect(graceful=False)
    return {
        "local": percentiles(local),
        "remote": percentiles(remote),
        "failures": failures,
        "bystanders_open": still_open,
        "client_cpu_s": cpu_seconds() - cpu,
    }


class Receiver(WSListener):
    __slots__ = ("count", "on_count")

    def __init__(self, on_count: Callable[[], None]) -> None:
        self.count = 0
        self.on_count = on_count

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.BINARY:
            self.count += 1
            if not self.count & 7:
                self.on_count()
        elif frame.msg_type is WSMsgType.CLOSE:
            raise SystemExit(f"a receiver was closed: {frame.get_close_code()} {frame.get_close_message()!r}")


async def broadcast(args: argparse.Namespace) -> dict:
    receivers: list[Receiver] = []
    state = {"sent": 0, "sending": False}
    payload = b"x" * 32
    publisher: list[WSTransport] = []
    deadline = 0.0

    def pump() -> None:
        if not publisher or time.monotonic() > deadline:
            return
        slowest = min(r.count for r in receivers)
        send, sent = publisher[0].send, state["sent"]
        while sent - slowest < args.window:
            send(WSMsgType.BINARY, payload)
            sent += 1
        state["sent"] = sent

    def receiver() -> Receiver:
        made = Receiver(pump)
        receivers.append(made)
        return made

    for url in args.url:
        await open_many(url, args.conns, "", receiver)
    transport, _ = await ws_connect(WSListener, args.url[0])
    await asyncio.sleep(0.2)
    start = time.monotonic()
    deadline = start + args.warmup + args.duration + 0.5
    publisher.append(transport)
    pump()
    await asyncio.sleep(args.warmup)
    print("mark start", flush=True)
    first, cpu = sum(r.count for r in receivers), cpu_seconds()
    await asyncio.sleep(args.duration)
    last = sum(r.count for r in receivers)
    print("mark end", flush=True)
    return {
        "deliveries_per_s": (last - first) / args.duration,
        "messages": (last - first),
        "receivers": len(receivers),
        "client_cpu_s": cpu_seconds() - cpu,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("revoke", "broadcast"))
    parser.add_argument("--url", action="append", required=True, help="a node's WebSocket URL (the first: where …)")
    parser.add_argument("--admin", help="revoke: the first node's management URL")
    parser.add_argument("--tokens", help="revoke: JSON file {user: JWT}, a 'bystander' among them")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--conns", type=int, default=50, help="connections per node (per user for revoke)")
    parser.add_argument("--bystanders", type=int, default=500)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    for url in [*args.url, args.admin or "http://127.0.0.1"]:
        assert url.split("://", 1)[1].startswith("127."), "loopback only"
    result = await (revoke(args) if args.mode == "revoke" else broadcast(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
