"""Clients for bench/run.py's ``auth`` scenario, each in its own process (aiohttp; latency, not rate, matters).

Modes (each prints one JSON line):
  probe  one established echo connection: a 32 B message due every --interval for --duration seconds
         (open loop); percentiles of each message's echo time counted from when it was due.
  flood  --conns workers each opening upgrades with a wrong password back to back for --duration
         seconds; counts of the statuses answered (403 refused, 503 busy).
  users  for each --user, --attempts sequential wrong-password upgrades; the median time of each,
         to compare known and unknown user names.
Targets 127.0.0.x only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
from collections import Counter

import aiohttp


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [0.0]

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    return {"count": len(ordered), "p50_ms": at(0.5) * 1e3, "p99_ms": at(0.99) * 1e3, "max_ms": ordered[-1] * 1e3}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def attempt(session: aiohttp.ClientSession, url: str, user: str) -> int:
    try:
        ws = await session.ws_connect(url, headers=basic(user, "wrong password"))
    except aiohttp.WSServerHandshakeError as error:
        return error.status
    await ws.close()
    return 101


async def probe(args: argparse.Namespace) -> dict[str, float]:
    """Open loop: message i is due at start + i × interval and its latency counts from then, so a
    stalled gateway shows in every message it delays, not in one long sample (coordinated omission)."""
    count = int(args.duration / args.interval)
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(args.url) as ws:
        start = time.perf_counter()

        async def receive() -> None:
            for _ in range(count):
                message = await ws.receive()
                due = start + int(message.data[:8]) * args.interval
                latencies.append(time.perf_counter() - due)

        receiver = asyncio.ensure_future(receive())
        for index in range(count):
            await asyncio.sleep(max(0.0, start + index * args.interval - time.perf_counter()))
            await ws.send_bytes(f"{index:08d}".encode().ljust(32, b"x"))
        await asyncio.wait_for(receiver, 60)
    return percentiles(latencies)


async def flood(args: argparse.Namespace) -> dict[str, int]:
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + args.duration

    async def worker(index: int) -> None:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                statuses[await attempt(session, args.url, args.user[index % len(args.user)])] += 1

    await asyncio.gather(*(worker(i) for i in range(args.conns)))
    return {str(status): count for status, count in sorted(statuses.items())}


async def users(args: argparse.Namespace) -> dict[str, float]:
    medians = {}
    async with aiohttp.ClientSession() as session:
        for user in args.user:
            await attempt(session, args.url, user)  # warm: connection pool, caches
            times = []
            for _ in range(args.attempts):
                started = time.perf_counter()
                await attempt(session, args.url, user)
                times.append(time.perf_counter() - started)
            medians[user] = statistics.median(times) * 1e3
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("probe", "flood", "users"))
    parser.add_argument("url")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--user", action="append", default=[])
    parser.add_argument("--attempts", type=int, default=15)
    args = parser.parse_args()
    run = {"probe": probe, "flood": flood, "users": users}[args.mode]
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
