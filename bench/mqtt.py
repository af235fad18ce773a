"""The ``mqtt`` scenario of bench/run.py: MQTT over WebSocket through ``mqtt.proxy`` vs a plain ``proxy``.

One gateway serves both, in front of one Mosquitto: ``mqtt.proxy`` (3 topic rules, every PUBLISH and
SUBSCRIBE decided, whole packets cut from the stream) and ``proxy`` (bytes relayed as they come). The
load client (this file run as a script, in its own process) opens N MQTT 5 connections, each subscribed
to its own topic, and keeps W QoS 0 PUBLISHes of S bytes in flight: each message goes client → gateway →
broker → gateway → client, so a message counts both directions. Reported per cell: messages/s and the
gateway's CPU per message (user + system from /proc over the client's marked window), alternating the two
services round by round.

    python bench/run.py --scenarios mqtt --rounds 3 --duration 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import Server, free_port, tree_cpu  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
CELLS = ((32, 1, 64), (32, 20, 8), (1024, 20, 8))  # (message bytes, connections, messages in flight each)

RULES = """\
      - allow: publish
        topic: "bench/+"
      - allow: subscribe
        topic: "bench/+"
      - deny: publish
        topic: "alarms/#"
        then: close
"""

# -- the load client --------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def client(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    from wsgate.services.mqtt import codec

    counts = [0]
    payload = b"x" * args.size
    stop = asyncio.Event()

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        topic = f"bench/{index}"
        publish = codec.encode(codec.Publish(topic, payload), codec.MQTT5)
        async with session.ws_connect(args.url, protocols=("mqtt",), max_msg_size=0) as ws:
            await ws.send_bytes(codec.encode(codec.Connect(codec.MQTT5, f"load{index}"), codec.MQTT5))
            await ws.send_bytes(codec.encode(codec.Subscribe(1, ((topic, 0),)), codec.MQTT5))
            buffer = bytearray()
            while not stop.is_set():
                message = await ws.receive()
                if message.type is not aiohttp.WSMsgType.BINARY:
                    raise RuntimeError(f"connection {index} closed: {ws.close_code}")
                buffer += message.data
                pos = echoed = 0
                subscribed = False
                while (found := codec.packet_at(buffer, pos, 1 << 24)) is not None:
                    kind = buffer[pos] >> 4
                    echoed += kind == codec.PUBLISH
                    subscribed |= kind == codec.SUBACK
                    pos = found[1]
                del buffer[:pos]
                counts[0] += echoed
                more = echoed + (args.window if subscribed else 0)  # the SUBACK opens the window
                if more:
                    await ws.send_bytes(publish * more)
            await ws.close()

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(one(session, i)) for i in range(args.conns)]
        await asyncio.sleep(args.warmup)
        start_count, start_cpu, start = counts[0], cpu_seconds(), time.monotonic()
        print("mark start", flush=True)
        await asyncio.sleep(args.duration)
        print("mark end", flush=True)
        messages, elapsed = counts[0] - start_count, time.monotonic() - start
        cpu = cpu_seconds() - start_cpu
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"messages": messages, "msg_per_s": messages / elapsed, "client_cpu_s": cpu, "elapsed": elapsed}


# -- the harness side -------------------------------------------------------------------------------------


def measure(work: Path, gateway: int, url: str, cell: tuple[int, int, int], duration: float) -> dict[str, Any]:
    """One load run against ``url``; the gateway's (process ``gateway``) CPU per message from /proc."""
    size, conns, window = cell
    command = [sys.executable, str(HERE / "mqtt.py"), "client", url, "--size", str(size), "--conns", str(conns)]
    command += ["--window", str(window), "--duration", str(duration)]
    marks: dict[str, float] = {}
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as load:
        assert load.stdout is not None
        lines = []
        for line in load.stdout:
            if line.startswith("mark "):
                marks[line.split()[1]] = tree_cpu(gateway)
            lines.append(line)
        if load.wait(duration + 60):
            raise RuntimeError("the mqtt load client failed")
    result: dict[str, Any] = json.loads(lines[-1])
    result["server_cpu_us_per_op"] = (marks["end"] - marks["start"]) / max(result["messages"], 1) * 1e6
    result["client_cpu_share"] = result["client_cpu_s"] / duration
    return result


def run_mqtt(bench: Any, results: dict[str, Any]) -> None:
    """bench/run.py's hook: ``bench.work`` (a temporary folder) and ``bench.args`` (rounds, duration)."""
    if not Path(MOSQUITTO).exists():
        print("mqtt: mosquitto not installed, skipped")
        return
    work: Path = bench.work
    broker_port, gateway_port = free_port(), free_port()
    (work / "mqtt-mosquitto.conf").write_text(
        f"{'user root' if os.geteuid() == 0 else ''}\nallow_anonymous true\npersistence false\n"
        f"log_type none\nmax_queued_messages 100000\nlistener {broker_port} 127.0.0.1\n"
    )
    config = work / "mqtt-gateway.yaml"
    config.write_text(
        f"""service:
  - name: mqtt
    accept: ws://127.0.0.1:{gateway_port}/mqtt
    connect: tcp://127.0.0.1:{broker_port}
    type: mqtt.proxy
    authorization-rule:
{RULES}
  - name: proxy
    accept: ws://127.0.0.1:{gateway_port}/proxy
    connect: tcp://127.0.0.1:{broker_port}
    type: proxy
"""
    )
    urls = {"mqtt.proxy": f"ws://127.0.0.1:{gateway_port}/mqtt", "proxy": f"ws://127.0.0.1:{gateway_port}/proxy"}
    broker = Server("mosquitto", [MOSQUITTO, "-c", str(work / "mqtt-mosquitto.conf")], broker_port)
    command = [sys.executable, "-m", "wsgate", "run", str(config), "--log-level", "error"]
    with broker, Server("wsgate", command, gateway_port, {"PYTHONPATH": str(SRC)}) as gateway:
        assert gateway.process is not None
        for cell in CELLS:
            name = f"mqtt {cell[0]}B c={cell[1]} w={cell[2]}"
            runs: dict[str, list[dict[str, Any]]] = {"mqtt.proxy": [], "proxy": []}
            for round_ in range(bench.args.rounds):
                order = ["mqtt.proxy", "proxy"] if round_ % 2 == 0 else ["proxy", "mqtt.proxy"]
                for service in order:
                    runs[service].append(measure(work, gateway.process.pid, urls[service], cell, bench.args.duration))
            results[name] = runs
            report(name, runs)


def report(name: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    def median(service: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[service])

    ours, plain = median("mqtt.proxy", "msg_per_s"), median("proxy", "msg_per_s")
    cpu, plain_cpu = median("mqtt.proxy", "server_cpu_us_per_op"), median("proxy", "server_cpu_us_per_op")
    bound = " client-bound" if median("mqtt.proxy", "client_cpu_share") > 0.85 else ""
    print(
        f"{name:26} mqtt.proxy {ours:8.0f} msg/s {cpu:6.1f} µs/msg{bound} | proxy {plain:8.0f} msg/s "
        f"{plain_cpu:6.1f} µs/msg (×{ours / plain:.2f}, CPU ×{cpu / plain_cpu:.2f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("client",))
    parser.add_argument("url")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    from wsgate.cli import new_event_loop

    loop = new_event_loop("auto")
    print(json.dumps(loop.run_until_complete(client(args))), flush=True)


if __name__ == "__main__":
    main()
