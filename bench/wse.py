"""WebSocket emulation at scale: N concurrent WSE sessions against a ``wsgate run`` process.

    PYTHONPATH=src python bench/wse.py --sessions 5000

Each session is created (``POST <path>/;e/cbm``), attaches a streaming downstream and echoes one message;
then every session echoes ``--messages`` more, one at a time. Prints the time to open them, the gateway's
resident memory per session, and the echo rate. The default suite runs 1,000 sessions
(tests/test_wse_load.py); this goes further. The client (aiohttp) shares the machine with the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from harness import free_port  # type: ignore[import-not-found]

RECONNECT = b"\x01" + b"01" + b"\xff"
CLOSE = b"\x01" + b"02" + b"\xff"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def frame(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 128
    return b"\x81" + bytes((len(payload),)) + payload


class Session:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.up = self.down = ""
        self.up_seq = 0
        self.response: aiohttp.ClientResponse | None = None
        self.buffer = b""

    async def open(self) -> None:
        headers = {"X-WebSocket-Version": "wseb-1.0", "X-Sequence-No": "0"}
        async with self.http.post(self.url + "/;e/cbm", headers=headers) as created:
            assert created.status == 201, created.status
            self.up, self.down = (await created.text()).split("\n")[:2]
        self.response = await self.http.get(self.down, headers={"X-Sequence-No": "1"})
        assert self.response.status == 200

    async def echo(self, text: str) -> None:
        self.up_seq += 1
        body = frame(text) + RECONNECT
        async with self.http.post(self.up, data=body, headers={"X-Sequence-No": str(self.up_seq)}) as sent:
            assert sent.status == 200
        wanted = frame(text)
        assert self.response is not None
        while len(self.buffer) < len(wanted):
            self.buffer += await asyncio.wait_for(self.response.content.readany(), 30)
            while self.buffer.startswith(b"\x01" + b"00" + b"\xff"):  # heartbeats
                self.buffer = self.buffer[4:]
        assert self.buffer.startswith(wanted)
        self.buffer = self.buffer[len(wanted) :]

    async def close(self) -> None:
        self.up_seq += 1
        async with self.http.post(self.up, data=CLOSE + RECONNECT, headers={"X-Sequence-No": str(self.up_seq)}):
            pass
        if self.response is not None:
            self.response.close()


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gateway.yaml"
        config.write_text(f"service:\n  - name: echo\n    accept: ws://127.0.0.1:{port}/echo\n    type: echo\n")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
        gateway = subprocess.Popen(
            [sys.executable, "-m", "wsgate", "run", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            url = f"http://127.0.0.1:{port}/echo"
            connector = aiohttp.TCPConnector(limit=0, force_close=True)
            async with aiohttp.ClientSession(connector=connector) as http:
                before = rss(gateway.pid)
                sessions = [Session(http, url) for _ in range(args.sessions)]
                started = time.monotonic()
                for batch in range(0, len(sessions), 200):
                    await asyncio.gather(*(s.open() for s in sessions[batch : batch + 200]))
                opened = time.monotonic() - started
                await asyncio.sleep(1)
                after = rss(gateway.pid)
                started = time.monotonic()
                for round_ in range(args.messages):  # 200 at a time: the client shares the CPUs with the gateway
                    for batch in range(0, len(sessions), 200):
                        await asyncio.gather(*(s.echo(f"m{round_}") for s in sessions[batch : batch + 200]))
                echoed = time.monotonic() - started
                count = args.sessions * args.messages
                print(
                    f"wse: {args.sessions} sessions opened in {opened:.1f} s; gateway RSS "
                    f"{before / 2**20:.0f} → {after / 2**20:.0f} MiB ({(after - before) / args.sessions / 1024:.1f} "
                    f"KiB/session); {count} echoes (upstream POST + downstream frame) in {echoed:.1f} s "
                    f"({count / echoed:.0f}/s)",
                    flush=True,
                )
                await asyncio.gather(*(s.close() for s in sessions))
        finally:
            gateway.terminate()
            gateway.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
