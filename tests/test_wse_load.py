"""1,000 concurrent emulated sessions against a gateway process: they all work, and memory stays bounded.

The gateway runs as ``wsgate run`` in its own process so its resident memory is its own; the client side
(aiohttp) runs here. Each session is created, attaches a streaming downstream and echoes one message; the
gateway's shutdown then closes them all. About 12 s on an idle 2-CPU machine (gateway start included).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from .processes import free_port, stop, wait_for_port
from .wse_client import WseClient

SESSIONS = 1000
WARM = 100  # sessions opened before the baseline, so allocator and import warm-up is not counted
# Measured on this machine (uvloop, Python 3.11): about 12-20 KiB of gateway memory per emulated session with
# its streaming downstream attached (two HTTP connections' worth of state on the gateway: the create's keep-alive
# one is closed by the client). The bound leaves room for allocator noise, and still fails for a leak of a
# buffer per session.
MAX_PER_SESSION = 64 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def open_session(http: aiohttp.ClientSession, url: str, index: int) -> tuple[WseClient, object]:
    client = WseClient(http, url)
    created = await client.create()
    assert created.status == 201, created.status
    down = await client.open()
    assert down.response.status == 200
    return client, down


async def test_a_thousand_emulated_sessions_with_bounded_memory(tmp_path):
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"service:\n  - name: echo\n    accept: ws://127.0.0.1:{port}/echo\n    type: echo\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    process = subprocess.Popen(
        [sys.executable, "-m", "wsgate", "run", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_for_port, port, "the gateway", 30)
        url = f"http://127.0.0.1:{port}/echo"
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            started = time.monotonic()
            sessions = []
            for batch in range(0, SESSIONS, 100):
                sessions += await asyncio.gather(*(open_session(http, url, i) for i in range(batch, batch + 100)))
                if batch + 100 == WARM:
                    await asyncio.sleep(0.2)
                    baseline = rss(process.pid)
            opened = time.monotonic() - started
            await asyncio.sleep(0.2)
            grown = rss(process.pid) - baseline
            per_session = grown / (SESSIONS - WARM)

            async def echo(pair, index: int) -> None:
                client, down = pair
                assert await client.send(f"message {index}") == 200
                assert await down.data(10) == f"message {index}"

            for batch in range(0, SESSIONS, 200):  # the client shares the CPUs: keep each request within its deadline
                await asyncio.gather(*(echo(sessions[i], i) for i in range(batch, batch + 200)))
            elapsed = time.monotonic() - started
            print(
                f"\n{SESSIONS} WSE sessions opened in {opened:.1f}s, all echoed by {elapsed:.1f}s; "
                f"gateway memory {per_session / 1024:.1f} KiB per session"
            )
            assert per_session < MAX_PER_SESSION, f"{per_session / 1024:.1f} KiB per emulated session"

    finally:
        await asyncio.to_thread(stop, process)  # the gateway's shutdown closes the sessions
