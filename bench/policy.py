"""The message policy's cost per message (bench/README.md, "Message policy: cost per message").

Two measurements, each comparing the same four echo services in one run: no rules (the baseline), three
``type`` rules, three ``json.`` rules (the message is parsed), and a ``message.policy`` callable:

  micro  in process, no sockets: an echo loop (receive, send) over an in-memory channel, with and without
         the ``GuardedChannel``; CPU nanoseconds per message (thread time, so other work on a shared host
         does not count), the median of --rounds runs of --messages each.
         This isolates the policy's own work from aiohttp's and the kernel's.
  wire   a real gateway (``bench/run.py``'s harness): load.py's picows clients send JSON objects, server
         CPU per message from /proc over the measured window, the variants alternated round by round.

    python bench/policy.py --rounds 5                         # micro only (a few seconds)
    python bench/run.py --scenarios policy --rounds 3 --duration 3   # micro, then wire
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))

VARIANTS = {
    "none": "",
    "type": """
    authorization-rule:
      - deny: send
        type: text
        then: close
      - allow: send
        type: binary
      - allow: receive
        type: binary
""",
    "json": """
    authorization-rule:
      - deny: send
        json.kind: order
        then: close
      - allow: send
        json.desk: public
      - allow: receive
        json.desk: "*"
""",
    "callable": """
    properties:
      message.policy: class:bench_message_policy.Allow
""",
}
POLICY = """
class Allow:
    def __call__(self, identity, direction, data):
        return "allow"
"""
WIRE_CELLS = [(32, 100, 1), (1024, 1, 8)]  # size, conns, window


def config_text(port: int) -> str:
    text = "service-defaults:\n  accept-options:\n    ws.maximum.message.size: 1M\nservice:\n"
    for name, extra in VARIANTS.items():
        text += f"  - name: {name}\n    accept: ws://127.0.0.1:{port}/{name}\n    type: echo\n"
        text += textwrap.dedent(extra).replace("\n", "\n    ").rstrip(" ") if extra else ""
        text += "\n"
    return text


def write_config(folder: Path, port: int) -> Path:
    (folder / "bench_message_policy.py").write_text(POLICY)
    path = folder / "policy-gateway.yaml"
    path.write_text(config_text(port))
    return path


# -- micro: in process ----------------------------------------------------------------------------------


class Memory:
    """An in-memory channel: ``receive`` hands out the same message for ever, ``send`` only counts."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0

    async def receive(self) -> bytes:
        self.messages_in += 1
        return self.data

    async def send(self, data: bytes) -> None:
        self.messages_out += 1


async def echo_loop(channel: Any, count: int) -> float:
    receive, send = channel.receive, channel.send  # as services/echo.py binds them
    started = time.thread_time()  # CPU time: other work on a shared host does not count
    for _ in range(count):
        await send(await receive())
    return (time.thread_time() - started) / count * 1e9


def micro(rounds: int, messages: int, size: int = 64) -> dict[str, float]:
    """ns per echoed message: ``raw`` is the bare channel, the others go through ``channel_for``."""
    from load import json_payload  # noqa: PLC0415 - bench/ is on sys.path when run as a script

    from wsgate.catalog import load_config
    from wsgate.cli import new_event_loop
    from wsgate.core.session import LiveSession
    from wsgate.services.base import Runtime
    from wsgate.services.echo import EchoService

    data = json_payload(size)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        config = load_config(write_config(folder, 8000))
        sys.path.append(str(folder))
        services = {name: EchoService(config.service(name), Runtime(config_dir=folder)) for name in VARIANTS}
        loop = new_event_loop("auto")
        samples: dict[str, list[float]] = {"raw": [], **{name: [] for name in VARIANTS}}
        try:
            for _ in range(rounds):
                for name in samples:
                    inner = Memory(data)
                    channel: Any = inner
                    if name != "raw":
                        session = LiveSession("bench", name, inner, "127.0.0.1")  # type: ignore[arg-type]
                        channel = services[name].channel_for(session, inner)  # type: ignore[arg-type]
                    samples[name].append(loop.run_until_complete(echo_loop(channel, messages)))
        finally:
            loop.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def print_micro(figures: dict[str, float]) -> None:
    raw = figures["raw"]
    parts = [f"{name} {ns:6.0f} ns (+{ns - raw:5.0f})" for name, ns in figures.items()]
    print(f"{'policy micro (echo loop)':28} " + " | ".join(parts), flush=True)


# -- wire: a real gateway -------------------------------------------------------------------------------


def run_policy(bench: Any, results: dict[str, Any]) -> None:
    """``bench/run.py --scenarios policy``: micro, then each wire cell with the four variants alternated."""
    import harness as run  # noqa: PLC0415 - bench/harness.py: what the scenarios share with run.py

    figures = micro(max(3, bench.args.rounds), 200_000)
    results["policy micro"] = figures
    print_micro(figures)
    port = bench.ports["wsgate"]
    path = write_config(bench.work, port)
    command = [run.PYTHON, "-m", "wsgate", "run", str(path), "--log-level", "error"]
    for size, conns, window in WIRE_CELLS:
        cell = f"policy {size}B c={conns}"
        runs: dict[str, list[dict[str, Any]]] = {}
        names = list(VARIANTS)
        for index in range(bench.args.rounds):
            for name in names[index % len(names) :] + names[: index % len(names)]:  # each goes first in turn
                with run.Server(f"wsgate {name}", command, port) as server:
                    extra = ["--conns", str(conns), "--window", str(window), "--size", str(size), "--json"]
                    url = f"ws://127.0.0.1:{port}/{name}"
                    runs.setdefault(name, []).append(bench.measure(server, "throughput", url, *extra))
        results[cell] = runs
        base = run.median(runs["none"], "server_cpu_us_per_op")
        parts = []
        for name, measured in runs.items():
            cpu, rate = run.median(measured, "server_cpu_us_per_op"), run.median(measured, "msg_per_s")
            ratio = "" if name == "none" else f" (CPU ×{cpu / base:.3f})"
            parts.append(f"{name} {rate:7.0f} msg/s {cpu:5.2f} µs/op{ratio}")
        other = max(m["other_cpus"] for measured in runs.values() for m in measured)
        print(f"{cell:28} " + " | ".join(parts) + f" [other work on the host ≤ {other:.2f} cores]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    print_micro(micro(args.rounds, args.messages))


if __name__ == "__main__":
    main()
