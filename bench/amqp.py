"""bench/run.py's ``amqp`` scenario: AMQP 0-9-1 through ``amqp.proxy`` vs a plain ``proxy`` to the same broker port.

One gateway process serves both services (the same realm, Application Basic with a plain-text user), in front
of a throwaway RabbitMQ node (tests/rabbitmq.py). Each measurement runs this file as a client process: every
connection declares its own queue, consumes it (no-ack) and keeps ``--window`` messages published and not yet
delivered, each delivery triggering the next publish; it prints one JSON line with the messages delivered.
The gateway's CPU (its process tree, from /proc) over the client's run, divided by the messages, is µs per
message (a message crosses the gateway twice: published and delivered). Rounds alternate the two services.

  python bench/run.py --scenarios amqp --rounds 3 --duration 4
  python bench/amqp.py client --url ws://... --user joe --password welcome --login wsgate:secret ...
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CELLS = [(32, 1, 16), (32, 10, 4), (4096, 10, 4)]  # size, connections, window per connection


# -- the client (its own process) ------------------------------------------------------------------


async def connection(args: argparse.Namespace, index: int, deadline: float, counts: list[int]) -> None:
    import aiohttp
    from pamqp import body, commands, frame, header

    user, _, password = args.login.partition(":")
    auth = base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    payload = b"x" * args.size
    queue = f"bench.{args.user}.{index}.{time.monotonic_ns()}"

    def m(channel: int, *values: Any) -> bytes:
        return b"".join(frame.marshal(v, channel) for v in values)

    publish = m(
        1,
        commands.Basic.Publish(exchange="", routing_key=queue),
        header.ContentHeader(0, len(payload), commands.Basic.Properties(delivery_mode=1)),
        body.ContentBody(payload),
    )
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(args.url, headers={"Authorization": f"Basic {auth}"}, max_msg_size=0)
        buffer = b""

        async def frames() -> Any:
            nonlocal buffer
            while True:
                while True:
                    try:
                        used, channel, value = frame.unmarshal(buffer)
                    except Exception:  # noqa: BLE001 (incomplete)
                        break
                    buffer = buffer[used:]
                    yield channel, value
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    raise RuntimeError(f"closed: {msg}")
                buffer += msg.data

        stream = frames()

        async def expect(kind: type) -> Any:
            async for _, value in stream:
                if isinstance(value, kind):
                    return value
            raise RuntimeError("stream ended")

        await ws.send_bytes(b"AMQP\x00\x00\x09\x01")
        await expect(commands.Connection.Start)
        await ws.send_bytes(m(0, commands.Connection.StartOk(mechanism="PLAIN", response=f"\0{user}\0{password}")))
        tune = await expect(commands.Connection.Tune)
        await ws.send_bytes(
            m(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0), commands.Connection.Open("/"))
        )
        await expect(commands.Connection.OpenOk)
        await ws.send_bytes(m(1, commands.Channel.Open()))
        await expect(commands.Channel.OpenOk)
        await ws.send_bytes(m(1, commands.Queue.Declare(queue=queue, exclusive=True)))
        await expect(commands.Queue.DeclareOk)
        await ws.send_bytes(m(1, commands.Basic.Consume(queue=queue, no_ack=True)))
        await expect(commands.Basic.ConsumeOk)
        await ws.send_bytes(publish * args.window)
        done = 0
        async for _, value in stream:
            if isinstance(value, body.ContentBody):
                done += 1
                if time.monotonic() >= deadline:
                    break
                await ws.send_bytes(publish)
        counts[index] = done
        await ws.close()


async def client(args: argparse.Namespace) -> dict[str, Any]:
    counts = [0] * args.conns
    started = time.monotonic()
    deadline = started + args.duration
    await asyncio.gather(*(connection(args, i, deadline, counts) for i in range(args.conns)))
    elapsed = time.monotonic() - started
    return {"messages": sum(counts), "seconds": elapsed, "msg_per_s": sum(counts) / elapsed}


# -- the scenario (imported by run.py) --------------------------------------------------------------


def _config(work: Path, port: int, broker_port: int, password: str) -> Path:
    (work / "amqp-users.xml").write_text(
        '<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">'
        "<user><name>joe</name><password>welcome</password><role-name>R</role-name></user></jaas-config>"
    )
    (work / "broker.pw").write_text(password)
    path = work / "amqp-gateway.yaml"
    realm = """
            realm-name: files
            authorization-constraint:
              require-role: R"""
    path.write_text(
        textwrap.dedent(f"""
        service:
          - name: amqp
            accept: ws://127.0.0.1:{port}/amqp
            connect: tcp://127.0.0.1:{broker_port}
            type: amqp.proxy
            properties:
              amqp.username: wsgate
              amqp.password-file: broker.pw{realm}
            authorization-rule:
              - allow: queue.declare, basic.consume
                queue: "bench.{{user}}.#"
              - allow: basic.publish
                exchange: "*"
                routing-key: "bench.{{user}}.#"
          - name: proxy
            accept: ws://127.0.0.1:{port}/proxy
            connect: tcp://127.0.0.1:{broker_port}
            type: proxy{realm}
        security:
          realm:
            name: files
            authentication:
              http-challenge-scheme: Application Basic
              login-modules:
                login-module:
                  type: file
                  options:
                    file: amqp-users.xml
        """)
    )
    return path


def run_amqp(bench: Any, results: dict[str, Any]) -> None:
    """Every cell alternates amqp.proxy and proxy, round by round, in one gateway process."""
    import subprocess

    from harness import PYTHON, Server, free_port, tree_cpu  # type: ignore[import-not-found]

    sys.path.insert(0, str(HERE.parent))
    from tests.rabbitmq import GATEWAY_PASSWORD, GATEWAY_USER, RabbitMq

    broker = RabbitMq(Path(tempfile.mkdtemp(prefix="bench-rabbitmq-", dir=bench.work)))
    broker.start()
    print(f"amqp: RabbitMQ started in {broker.start_seconds:.1f} s", flush=True)
    try:
        port = free_port()
        config = _config(bench.work, port, broker.port, GATEWAY_PASSWORD)
        command = [PYTHON, "-m", "wsgate", "run", str(config), "--log-level", "error"]
        with Server("wsgate-amqp", command, port) as server:
            assert server.process is not None
            for size, conns, window in CELLS:
                cell = f"amqp {size}B c={conns}"
                results[cell] = {}
                for _ in range(bench.args.rounds):
                    for name, login in (
                        ("amqp.proxy", "ignored:ignored"),
                        ("proxy", f"{GATEWAY_USER}:{GATEWAY_PASSWORD}"),
                    ):
                        url = f"ws://127.0.0.1:{port}/{'amqp' if name == 'amqp.proxy' else 'proxy'}"
                        argv = [PYTHON, str(HERE / "amqp.py"), "client", "--url", url, "--user", "joe"]
                        argv += ["--password", "welcome", "--login", login, "--size", str(size)]
                        argv += ["--conns", str(conns), "--window", str(window), "--duration", str(bench.args.duration)]
                        before = tree_cpu(server.process.pid)
                        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
                        cpu = tree_cpu(server.process.pid) - before
                        result = json.loads(out.stdout.strip().splitlines()[-1])
                        result["us_per_msg"] = cpu / max(1, result["messages"]) * 1e6
                        results[cell].setdefault(name, []).append(result)
                print(_row(cell, results[cell]), flush=True)
    finally:
        broker.stop()


def _row(cell: str, runs: dict[str, list[dict[str, Any]]]) -> str:
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    a_rate, a_cpu = median("amqp.proxy", "msg_per_s"), median("amqp.proxy", "us_per_msg")
    b_rate, b_cpu = median("proxy", "msg_per_s"), median("proxy", "us_per_msg")
    return (
        f"{cell:22} amqp.proxy {a_rate:7.0f} msg/s {a_cpu:6.1f} µs/msg | proxy {b_rate:7.0f} msg/s "
        f"{b_cpu:6.1f} µs/msg (rate ×{a_rate / b_rate:.2f}, CPU ×{a_cpu / b_cpu:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["client"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--login", required=True, help="user:password sent in Start-Ok")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(client(args))))


if __name__ == "__main__":
    main()
