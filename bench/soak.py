"""The ``soak`` scenario of bench/run.py: one gateway under steady traffic and connection churn for N minutes.

One ``wsgate run`` with the bench's config (JWT realm, wss). Two load clients, each this file run as a script
in its own process (picows and asyncio on uvloop):

  hold   200 wss→tcp proxy connections, each sending a 32 B message every 100 ms and counting the echoes.
  churn  about 30 new connections a second, open loop, cycling through: a clean proxy session (one echo,
         close frame), a clean secure-echo session, an RST right after the 101 (SO_LINGER 0, then close),
         an RST in the middle of the TLS handshake (a ClientHello, then RST), an RST after TLS with half an
         HTTP head sent, and a refused token (401).

The gateway's RSS (its process tree, /proc) is sampled every 10 s; the figures are RSS at minute 1 and at
minute N (each the median of the samples within 30 s of it) and their ratio (target: minute 10 within 10 % of minute 1). Beside RSS: the anonymous memory and
thread count of the gateway process (``/proc/<pid>/status``), to tell heap growth from mapped files.

    python bench/run.py --scenarios soak --soak-minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness import PYTHON, tree_cpu, tree_rss  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
HOLD_CONNS = 200
HOLD_INTERVAL = 0.1  # seconds between one connection's messages
CHURN_RATE = 30.0  # new connections per second
MAX_IN_FLIGHT = 150  # churn connections at once (5 s of them); beyond it a slot is skipped
SAMPLE_EVERY = 10.0  # seconds
KINDS = ("proxy-clean", "echo-clean", "rst-after-101", "rst-mid-tls", "rst-mid-http", "bad-token")

# -- the load clients -------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset(sock: Any) -> None:
    """Make the coming close an RST: SO_LINGER on, timeout 0."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def hold(args: argparse.Namespace) -> dict[str, Any]:
    """``--conns`` proxy connections, a message each every ``--interval`` s, until a line (or EOF) on stdin."""
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    counts = {"sent": 0, "echoed": 0, "lost": 0}
    payload = b"x" * 32

    class Holder(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is WSMsgType.BINARY or frame.msg_type is WSMsgType.CONTINUATION:
                counts["echoed"] += frame.payload_size

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            counts["lost"] += 1

    ctx = ssl.create_default_context(cafile=args.ca)
    headers = {"Authorization": f"Bearer {args.token}"}
    transports = []
    for _ in range(args.conns):
        transport, _ = await ws_connect(Holder, args.url, ssl_context=ctx, extra_headers=headers)
        transports.append(transport)
    print("mark held", flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.readline)
    cpu = cpu_seconds()
    # Spread the sends over the interval: one tick per connection slot.
    step = args.interval / len(transports)
    tick = time.monotonic()
    index = 0
    while not stop.done():
        transport = transports[index]
        if not transport.underlying_transport.is_closing():
            transport.send(WSMsgType.BINARY, payload)
            counts["sent"] += len(payload)
        index = (index + 1) % len(transports)
        tick += step
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
    for transport in transports:
        transport.disconnect()
    return {
        "messages_sent": counts["sent"] // len(payload),
        "messages_echoed": counts["echoed"] // len(payload),
        "connections_lost": counts["lost"],
        "client_cpu_s": cpu_seconds() - cpu,
    }


class Churner:
    """New connections at ``--rate`` a second, each of the next kind in ``KINDS``; counts outcomes per kind."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = ssl.create_default_context(cafile=args.ca)
        host, port = args.proxy.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self.address = (host, int(port))
        self.outcomes: dict[str, dict[str, int]] = {kind: {} for kind in (*KINDS, "loop")}

    def count(self, kind: str, outcome: str) -> None:
        self.outcomes[kind][outcome] = self.outcomes[kind].get(outcome, 0) + 1

    async def one(self, kind: str) -> None:
        try:
            outcome = await asyncio.wait_for(getattr(self, kind.replace("-", "_"))(), 15)
        except Exception as exc:  # every failure is counted by type, never raised
            outcome = type(exc).__name__
        self.count(kind, outcome)

    async def _session(self, url: str, token: str) -> tuple[Any, Any]:
        from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

        class Once(WSListener):
            def __init__(self) -> None:
                self.echo: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
                if frame.msg_type is WSMsgType.BINARY and not self.echo.done():
                    self.echo.set_result(None)

        transport, listener = await ws_connect(
            Once, url, ssl_context=self.ctx, extra_headers={"Authorization": f"Bearer {token}"}
        )
        return transport, listener

    async def _clean(self, url: str) -> str:
        from picows import WSMsgType

        transport, listener = await self._session(url, self.args.token)
        transport.send(WSMsgType.BINARY, b"churn")
        await listener.echo
        transport.send_close()
        transport.disconnect()
        await transport.wait_disconnected()
        return "ok"

    async def proxy_clean(self) -> str:
        return await self._clean(self.args.proxy)

    async def echo_clean(self) -> str:
        return await self._clean(self.args.echo)

    async def rst_after_101(self) -> str:
        transport, _ = await self._session(self.args.proxy, self.args.token)
        raw = transport.underlying_transport
        reset(raw.get_extra_info("socket"))
        raw.abort()
        return "ok"

    async def rst_mid_tls(self) -> str:
        """A ClientHello, then RST before the handshake goes on."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ctx.wrap_bio(incoming, outgoing, server_hostname=self.address[0])
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        reader, writer = await asyncio.open_connection(*self.address)
        writer.write(outgoing.read())
        await writer.drain()
        await reader.read(1)  # the server's first flight has begun
        reset(writer.get_extra_info("socket"))
        writer.transport.abort()
        return "ok"

    async def rst_mid_http(self) -> str:
        """TLS done, half an upgrade request, then RST."""
        host, port = self.address
        reader, writer = await asyncio.open_connection(host, port, ssl=self.ctx, server_hostname=host)
        writer.write(b"GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgr")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        if sock is None:  # already closed
            return "closed by server"
        reset(sock)
        writer.transport.abort()
        return "ok"

    async def bad_token(self) -> str:
        from picows import WSError

        try:
            transport, _ = await self._session(self.args.proxy, self.args.token[:-8] + "AAAAAAAA")
        except WSError as exc:
            status = getattr(getattr(exc, "response", None), "status", None)
            return "refused" if int(status or 0) in (401, 403) else f"{type(exc).__name__} {status}"
        transport.disconnect()
        return "accepted"

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        # The loop's own reports (an aborted TLS handshake of ours, say) are counted, not printed.
        loop.set_exception_handler(lambda _loop, context: self.count("loop", str(context.get("message"))[:40]))
        stop = loop.run_in_executor(None, sys.stdin.readline)
        cpu = cpu_seconds()
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / self.args.rate
        tick = time.monotonic()
        started = skipped = 0
        while not stop.done():
            if len(tasks) < MAX_IN_FLIGHT:
                task = asyncio.ensure_future(self.one(KINDS[started % len(KINDS)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                started += 1
            else:
                skipped += 1
            tick += interval
            # Behind (this process starved on a busy host): slots missed are skipped, not sent in a burst,
            # which would measure the burst's high-water mark instead of steady churn.
            now = time.monotonic()
            if now - tick > interval:
                skipped += int((now - tick) / interval)
                tick = now
            await asyncio.sleep(max(0.0, tick - now))
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"started": started, "skipped": skipped, "outcomes": self.outcomes, "client_cpu_s": cpu_seconds() - cpu}


def client_main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("hold", "churn"))
    parser.add_argument("--proxy", required=True, help="wss:// URL of the proxy service")
    parser.add_argument("--echo", help="wss:// URL of the secure echo service (churn)")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--conns", type=int, default=HOLD_CONNS)
    parser.add_argument("--interval", type=float, default=HOLD_INTERVAL)
    parser.add_argument("--rate", type=float, default=CHURN_RATE)
    args = parser.parse_args()
    assert args.proxy.split("://", 1)[1].startswith("127."), "loopback only"
    import uvloop

    if args.mode == "hold":
        args.url = args.proxy
        report = uvloop.run(hold(args))
    else:
        report = uvloop.run(Churner(args).run())
    print(json.dumps(report), flush=True)


# -- the harness side -------------------------------------------------------------------------------------


def process_memory(pid: int) -> dict[str, int]:
    """RssAnon, RssFile and Threads of one process, from /proc/<pid>/status (bytes; threads as a count)."""
    wanted = {"RssAnon": "anon", "RssFile": "file", "Threads": "threads"}
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            fields = value.split()
            out[wanted[key]] = int(fields[0]) * (1024 if len(fields) > 1 else 1)
    return out


def run_soak(bench: Any, results: dict[str, Any]) -> None:
    """bench/run.py's hook: ``bench.wsgate()`` (the bench's JWT config), ``bench.urls()``, ``bench.args``."""
    minutes = bench.args.soak_minutes
    urls = bench.urls()
    common = ["--proxy", urls["wsgate-proxy"], "--ca", bench.ca, "--token", bench.token]
    with bench.wsgate() as server:
        pid = server.process.pid
        holder = subprocess.Popen(
            [PYTHON, str(HERE / "soak.py"), "hold", *common], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdin is not None
        if holder.stdout.readline().strip() != "mark held":
            raise RuntimeError(f"soak: the hold client failed ({holder.wait()})")
        churner = subprocess.Popen(
            [PYTHON, str(HERE / "soak.py"), "churn", *common, "--echo", urls["wsgate-secure-echo"]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        samples = _sample(pid, minutes * 60.0)
        reports = []
        for client in (churner, holder):
            assert client.stdin is not None
            client.stdin.write("stop\n")
            client.stdin.flush()
        for client in (churner, holder):
            out, _ = client.communicate(timeout=60)
            reports.append(json.loads(out.strip().splitlines()[-1]))
    results["soak"] = summarize(samples, minutes, reports[0], reports[1])
    print(soak_row(results["soak"]), flush=True)


def _sample(pid: int, seconds: float) -> list[dict[str, float]]:
    """Every ``SAMPLE_EVERY`` s for ``seconds``: time since start, tree RSS, the process's anon/file/threads, CPU."""
    samples = []
    start = time.monotonic()
    done = threading.Event()
    while True:
        elapsed = time.monotonic() - start
        samples.append({"t": elapsed, "rss": tree_rss(pid), "cpu": tree_cpu(pid), **process_memory(pid)})
        if elapsed >= seconds - 0.5:
            return samples
        done.wait(min(SAMPLE_EVERY, seconds - elapsed))


def rss_at(samples: list[dict[str, float]], minute: int) -> float:
    """The median RSS of the samples within 30 s of ``minute`` minutes after the start: the allocator
    returns memory in steps (the gateway's periodic trim), and one sample would land anywhere on them."""
    near = [s["rss"] for s in samples if abs(s["t"] - 60.0 * minute) <= 30.0]
    return float(statistics.median(near)) if near else min(samples, key=lambda s: abs(s["t"] - 60.0 * minute))["rss"]


def summarize(
    samples: list[dict[str, float]], minutes: int, churn: dict[str, Any], hold: dict[str, Any]
) -> dict[str, Any]:
    first, last = rss_at(samples, 1), rss_at(samples, minutes)
    seconds = samples[-1]["t"] - samples[0]["t"]
    return {
        "minutes": minutes,
        "rss_minute_1": first,
        "rss_minute_n": last,
        "rss_ratio": last / first,
        "rss_by_minute": [rss_at(samples, m) for m in range(minutes + 1)],
        "samples": samples,
        "server_cpu_share": (samples[-1]["cpu"] - samples[0]["cpu"]) / max(seconds, 1e-9),
        "churn": churn,
        "hold": hold,
    }


def soak_row(soak: dict[str, Any]) -> str:
    mib = 2**20
    minutes = soak["minutes"]
    curve = " ".join(f"{r / mib:.0f}" for r in soak["rss_by_minute"])
    churn, hold = soak["churn"], soak["hold"]
    ok = sum(outcomes.get("ok", 0) + outcomes.get("refused", 0) for outcomes in churn["outcomes"].values())
    failed = {
        f"{kind}:{outcome}": n
        for kind, outcomes in churn["outcomes"].items()
        for outcome, n in outcomes.items()
        if outcome not in ("ok", "refused")
    }
    return (
        f"{'soak ' + str(minutes) + ' min':28} gateway RSS minute 1 {soak['rss_minute_1'] / mib:.0f} MiB → "
        f"minute {minutes} {soak['rss_minute_n'] / mib:.0f} MiB (×{soak['rss_ratio']:.3f}; by minute: {curve}); "
        f"churn {churn['started']} connections ({ok} as meant, failures {failed or 0}, "
        f"{churn.get('skipped', 0)} slots skipped while the client lagged); "
        f"{hold['messages_echoed']}/{hold['messages_sent']} held messages echoed, {hold['connections_lost']} "
        f"held connections lost; server {soak['server_cpu_share']:.2f} cores"
    )


if __name__ == "__main__":
    client_main()
