"""Load client for bench/run.py, in its own process: N connections, W messages in flight each.

Counts echoed *bytes* (stream proxies such as websockify may split or merge messages), records the
round-trip latency of each window, and prints one JSON line. Targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp


async def one_connection(url: str, size: int, window: int, deadline: float, warmup_end: float, stats: dict) -> None:
    payload = b"x" * size
    async with aiohttp.ClientSession() as session, session.ws_connect(url, compress=0, max_msg_size=0) as ws:
        while time.monotonic() < deadline:
            started = time.monotonic()
            for _ in range(window):
                await ws.send_bytes(payload)
            expected, got = size * window, 0
            while got < expected:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    raise RuntimeError(f"connection ended: {msg.type} {msg.data}")
                got += len(msg.data)
            if started >= warmup_end:
                stats["bytes"] += got
                stats["latencies"].append((time.monotonic() - started) * 1e6)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    assert args.url.startswith(("ws://127.0.0.1", "wss://127.0.0.1")), "loopback only"
    stats: dict = {"bytes": 0, "latencies": []}
    now = time.monotonic()
    await asyncio.gather(
        *(
            one_connection(
                args.url, args.size, args.window, now + args.warmup + args.duration, now + args.warmup, stats
            )
            for _ in range(args.conns)
        )
    )
    latencies = sorted(stats["latencies"]) or [0.0]
    messages = stats["bytes"] / args.size
    print(
        json.dumps(
            {
                "msg_per_s": messages / args.duration,
                "p50_us": statistics.median(latencies),
                "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                "messages": messages,
            }
        )
    )


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
