"""What a multi-certificate (SNI) wss listener costs on aiofastnet (bench/README.md, "aiofastnet").

aiofastnet 1.2.0 segfaults when a server context has an ``sni_callback`` (bench/upstream/aiofastnet-1.py).
The same gateway is measured with a one-certificate keystore, with a two-certificate keystore (the second
for another host name; the certificate chosen from the peeked ClientHello, transport/sni.py), and with the
same two certificates chosen in OpenSSL's SNI callback on aiofastnet's stdlib engine (the pre-read switched
off in the bench's process only), everything else equal: wss echo with the bench's JWT realm, server CPU per
message and per new connection, the variants alternated round by round.

Two measurements:

  micro  in one process on the production loop (uvloop + aiofastnet), server and TLS clients on loopback:
         the three ways a listener's context can be set up, the rest equal; CPU (thread) time per echoed
         message and per new connection, client included (the same client in each), so other work on a
         shared host counts far less than in ``wire``. The variants alternate round by round.
  wire   the gateway itself, the harness's way (``bench/run.py``): server CPU from /proc, per message and per
         new JWT-authenticated connection.

    python bench/afn.py --rounds 7                              # micro only (about a minute)
    python bench/run.py --scenarios afn --rounds 5 --duration 3  # micro, then wire
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import PYTHON, Server

sys.path.insert(0, str(Path(__file__).parent.parent / "src"))

CELLS: dict[str, tuple[str, list[str]]] = {
    "wss echo 32B c=100": ("throughput", ["--conns", "100", "--window", "1", "--size", "32"]),
    "wss echo 16KiB c=1": ("throughput", ["--conns", "1", "--window", "8", "--size", "16384"]),
    "wss connect (16 in flight)": ("connect", ["--conns", "16"]),
}


def two_certificate_config(bench: Any) -> Path:
    """The bench config with a keystore that also holds a certificate for ``other.test``."""
    import trustme

    other = trustme.CA().issue_cert("other.test")  # never served here: clients connect to 127.0.0.1
    keystore = bench.work / "keystore-two.pem"
    keystore.write_bytes((bench.work / "keystore.pem").read_bytes() + other.private_key_and_cert_chain_pem.bytes())
    path = bench.work / "bench-gateway-two-certs.yaml"
    path.write_text(Path(bench.config).read_text().replace("file: keystore.pem", "file: keystore-two.pem"))
    return path


# The gateway without the ClientHello pre-read: a two-certificate listener switches in OpenSSL's SNI callback,
# on aiofastnet's stdlib-SSLObject engine (what wsgate did before transport/sni.py).
WITHOUT_PREREAD = (
    "import sys, wsgate.transport.listener as listener; listener.sni_handoff = lambda *args: None; "
    "from wsgate.cli import main; sys.argv[0] = 'wsgate'; sys.exit(main())"
)


def run_afn(bench: Any, results: dict[str, Any]) -> None:
    figures = micro(max(3, bench.args.rounds))
    results["afn micro"] = figures
    print_micro(figures)
    port = bench.ports["wsgate-tls"]
    two = two_certificate_config(bench)
    commands = {
        "one-cert": [PYTHON, "-m", "wsgate", "run", str(bench.config)],
        "two-cert": [PYTHON, "-m", "wsgate", "run", str(two)],
        "two-cert-stdlib": [PYTHON, "-c", WITHOUT_PREREAD, "run", str(two)],
    }
    url = f"wss://127.0.0.1:{port}/echo"
    for cell, (mode, extra) in CELLS.items():
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(bench.args.rounds):
            for name, command in commands.items():
                with Server(name, [*command, "--log-level", "error"], port) as server:
                    runs.setdefault(name, []).append(bench.measure(server, mode, url, *extra))
        results[f"afn {cell}"] = runs
        print(_row(cell, runs, "conn_per_s" if mode == "connect" else "msg_per_s"), flush=True)


def _row(cell: str, runs: dict[str, list[dict[str, Any]]], key: str) -> str:
    """Medians of each variant, then the two-certificate listener's CPU per operation over the one's, with
    the spread of the per-round ratios (the variants run back to back in each round)."""
    parts = []
    for name, variant in runs.items():
        rate = statistics.median(r[key] for r in variant)
        cpu = statistics.median(r["server_cpu_us_per_op"] for r in variant)
        parts.append(f"{name} {rate:7.0f}/s {cpu:7.1f} µs/op")
    for variant in ("two-cert", "two-cert-stdlib"):
        ratios = sorted(
            b["server_cpu_us_per_op"] / a["server_cpu_us_per_op"]
            for a, b in zip(runs["one-cert"], runs[variant], strict=True)
        )
        parts.append(f"CPU {variant}/one ×{statistics.median(ratios):.2f} ({ratios[0]:.2f}..{ratios[-1]:.2f})")
    other = max(r["other_cpus"] for variant in runs.values() for r in variant)
    return f"{cell:28} " + " | ".join(parts) + f" [other work on the host ≤ {other:.2f} cores]"


# --- micro ---------------------------------------------------------------------------------------------

MICRO_CELLS = {  # cell: (connections, messages in flight on each, size, messages in all or connections made)
    "echo 32B c=50": (50, 1, 32, 20_000),
    "echo 16KiB c=1": (1, 8, 16384, 4_000),
    "connect": (8, 0, 0, 400),
}


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Pinger(asyncio.Protocol):
    """Keeps ``window`` messages of ``size`` bytes in flight until ``left`` (shared) runs out."""

    def __init__(self, size: int, window: int, left: list[int], done: asyncio.Future[None]) -> None:
        self.payload, self.window, self.left, self.done = b"x" * size, window, left, done
        self.pending = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        for _ in range(self.window):
            self.send()

    def send(self) -> None:
        if self.left[0] > 0:
            self.left[0] -= 1
            self.transport.write(self.payload)
            self.pending += len(self.payload)

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        while self.pending <= len(self.payload) * (self.window - 1) and self.left[0] > 0:
            self.send()
        if self.left[0] <= 0 and self.pending <= 0 and not self.done.done():
            self.done.set_result(None)


async def serve(variant: str, contexts: dict[str, ssl.SSLContext]) -> asyncio.AbstractServer:
    """An aiofastnet TLS echo server with the listener's context set up as ``variant`` says."""
    from wsgate.transport.accept import guard
    from wsgate.transport.sni import sni_handoff

    loop = asyncio.get_running_loop()
    context = contexts["switching"] if variant != "one-cert" else contexts["default"]
    server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=context, backlog=1024)
    handoff = None
    if variant == "two-cert":  # what the gateway does: the ClientHello chooses, the direct engine serves
        handoff = sni_handoff(server, lambda name: contexts["default"], 10.0, None)
    guard(server, variant, 1024, None, handoff)
    return server


async def measure(variant: str, cell: str, contexts: dict[str, ssl.SSLContext], client: ssl.SSLContext) -> float:
    """CPU µs (this thread: server and clients) per message, or per connection for ``connect``."""
    conns, window, size, count = MICRO_CELLS[cell]
    loop = asyncio.get_running_loop()
    server = await serve(variant, contexts)
    port = server.sockets[0].getsockname()[1]
    try:
        if cell == "connect":
            left = [count]

            async def connect_one_by_one() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    transport, _ = await loop.create_connection(
                        asyncio.Protocol, "127.0.0.1", port, ssl=client, server_hostname="localhost"
                    )
                    transport.abort()

            started = time.thread_time()
            await asyncio.gather(*(connect_one_by_one() for _ in range(conns)))
            return (time.thread_time() - started) / count * 1e6
        left = [count]
        done: asyncio.Future[None] = loop.create_future()
        transports = []
        for _ in range(conns):  # connected first, without sending: only the messages are timed
            transport, _ = await loop.create_connection(
                lambda: Pinger(size, 0, left, done), "127.0.0.1", port, ssl=client, server_hostname="localhost"
            )
            transports.append(transport)
        await asyncio.sleep(0.05)  # the server's side of the last handshake done too
        engines = {type(t).__name__ for t in server._clients}  # type: ignore[attr-defined]
        expected = "SSLTransport_Transport" if variant == "two-cert-stdlib" else "SSLTransport_Socket"
        assert engines == {expected}, f"{variant}: {engines}"
        started = time.thread_time()
        for transport in transports:
            protocol = transport.get_protocol()
            protocol.window = window
            for _ in range(window):
                protocol.send()
        await asyncio.wait_for(done, 120)
        elapsed = time.thread_time() - started
        for transport in transports:
            transport.abort()
        return elapsed / count * 1e6
    finally:
        server.close()


def micro(rounds: int) -> dict[str, dict[str, list[float]]]:
    """CPU µs per operation of each variant in each cell, round by round (the variants alternated)."""
    import trustme

    from wsgate.cli import new_event_loop

    ca = trustme.CA()
    default, other = ca.issue_cert("localhost"), ca.issue_cert("other.test")
    contexts = {}
    for name, leaf in (("default", default), ("switching", default), ("other", other)):
        contexts[name] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(contexts[name])

    def select(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if server_name == "other.test":
            ssl_object.context = contexts["other"]

    contexts["switching"].sni_callback = select
    contexts["switching"]._aiofastnet_force_fallback_ssl = True  # type: ignore[attr-defined]
    client = ssl.create_default_context()
    ca.configure_trust(client)
    loop = new_event_loop("auto")
    samples: dict[str, dict[str, list[float]]] = {cell: {} for cell in MICRO_CELLS}
    try:
        for _ in range(rounds):
            for cell in MICRO_CELLS:
                for variant in ("one-cert", "two-cert", "two-cert-stdlib"):
                    value = loop.run_until_complete(measure(variant, cell, contexts, client))
                    samples[cell].setdefault(variant, []).append(value)
    finally:
        loop.close()
    return samples


def print_micro(samples: dict[str, dict[str, list[float]]]) -> None:
    """Medians, then each variant over one-cert as the median of the rounds' own ratios (paired: measured
    seconds apart, so a change in the host's load falls on both) with their spread."""
    for cell, by in samples.items():
        unit = "µs/conn" if cell == "connect" else "µs/msg"
        parts = []
        for variant, values in by.items():
            part = f"{variant} {statistics.median(values):7.1f} {unit}"
            if variant != "one-cert":
                ratios = sorted(v / b for v, b in zip(values, by["one-cert"], strict=True))
                part += f" ×{statistics.median(ratios):.2f} ({ratios[0]:.2f}..{ratios[-1]:.2f})"
            parts.append(part)
        print(f"{'afn micro ' + cell:28} " + " | ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    print_micro(micro(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
