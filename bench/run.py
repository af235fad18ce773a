"""Benchmark harness: wsgate against reference servers in one run (see bench/README.md).

Scenarios, alternated server by server over several rounds, medians and ratios reported:
  echo     wsgate echo service vs a bare picows echo and a bare aiohttp echo on the same loop (uvloop + aiofastnet), ws://
  proxy    wsgate wss→tcp proxy with a JWT realm vs websockify 0.13 (wss, same TCP echo) vs nginx
           terminating wss in front of the bare aiohttp echo
  connect  new JWT-authenticated wss connections per second (16 in flight), and handshake latency at a
           fixed 750/s, full and resumed TLS, wsgate vs nginx (no auth); the client is bench/connect.py
  idle     N authenticated wss connections held open: gateway RSS per connection, every one pinged
  workers  wsgate --workers 1 vs 2 on the proxy 32 B c=100 cell
  auth     p99 echo round trip of an established connection, alone and during a 16-way bad-login
           flood on an argon2 `file` realm (target ≤ 50 ms); wrong-password time per user kind
  cluster  3 nodes sharing a redis-server (state: redis): revocation fan-out latency (remote nodes vs the
           revoking node's own connections), broadcast deliveries/s to clients on 3 nodes vs one node
           (memory), server CPU per new JWT wss connection with state redis vs memory; each cell alone:
           --scenarios cluster-revoke, cluster-broadcast or cluster-connect
  soak     one gateway for --soak-minutes (10) under 200 held proxy connections and ~30 new handshakes/s
           (clean closes, RSTs mid-TLS, mid-HTTP and after the 101, refused tokens): its RSS at minute 1
           vs minute N (bench/soak.py)
  amqp     amqp.proxy (rules, user-id) vs a plain proxy to the same RabbitMQ port: messages/s and gateway
           CPU per message (bench/amqp.py; only with --scenarios amqp)
Server CPU is read from /proc for the server's whole process tree (websockify forks per connection,
nginx has a master and a worker); the load client's own CPU is reported to show when it is the limit.
Loopback only; every process is started and stopped here.

With ``--ab REV`` it measures two wsgate versions instead, this checkout's src/ against git revision REV's,
alternating in the echo and proxy cells, and prints ratios new/old and a verdict (bench/README.md, "A/B").

    make bench            # or: .venv/bin/python bench/run.py --rounds 3 --duration 4
    make bench-ab AB=main # or: .venv/bin/python bench/run.py --ab main --rounds 9 --duration 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import PYTHON, Server, free_port, host_busy, median, tree_cpu, tree_rss
from targets import evaluate, table

HERE = Path(__file__).parent
CELLS = [(32, 1, 8), (32, 100, 1), (16384, 1, 8), (16384, 100, 1)]  # size, conns, window
HALF_TARGET_RATE = 750  # connections/s: half the 1,500/s target; p99 handshake is judged here
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


BARE_ECHO = textwrap.dedent("""
    import asyncio, sys
    from aiohttp import web, WSMsgType
    from wsgate.cli import new_event_loop

    async def handler(request):
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def main():
        server = web.Server(handler, access_log=None)
        await asyncio.get_running_loop().create_server(server, "127.0.0.1", int(sys.argv[1]))
        await asyncio.Event().wait()

    new_event_loop("auto").run_until_complete(main())
""")

# The fair "bare server on the same loop" since wsgate's WebSockets run on picows (transport/picows_channel.py):
# a picows echo on uvloop + aiofastnet. With a certificate and key (argv 2, 3) it serves wss:// with wsgate's
# TLS buffer size (argv 4) and read buffer: the floor of an idle TLS WebSocket (bench/idle_probe.py --floor).
BARE_PICOWS = textwrap.dedent("""
    import asyncio, ssl, sys
    from picows import WSListener, WSMsgType, ws_create_server
    from wsgate.cli import new_event_loop

    class Echo(WSListener):
        def on_ws_frame(self, transport, frame):
            kind = frame.msg_type
            if kind is WSMsgType.BINARY or kind is WSMsgType.TEXT:
                transport.send(kind, frame.get_payload_as_memoryview())
            elif kind is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_reason())
                transport.disconnect()

    async def main():
        extra = {}
        if len(sys.argv) > 2:
            extra["ssl"] = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            extra["ssl"].load_cert_chain(sys.argv[2], sys.argv[3])
            extra["ssl_incoming_bio_size"] = extra["ssl_outgoing_bio_size"] = int(sys.argv[4])
            extra["read_buffer_init_size"] = 2048  # as wsgate's
        await ws_create_server(lambda request: Echo(), "127.0.0.1", int(sys.argv[1]), max_frame_size=1 << 20, **extra)
        await asyncio.Event().wait()

    new_event_loop("auto").run_until_complete(main())
""")

TCP_ECHO = textwrap.dedent("""
    import asyncio, sys
    from wsgate.cli import new_event_loop

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)

    async def main():
        await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", int(sys.argv[1]))
        await asyncio.Event().wait()

    new_event_loop("auto").run_until_complete(main())
""")


class Bench:
    """Everything one run needs: ports, certificates, a JWT, the configs and the servers."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.args = work, args
        self.ports = {
            name: free_port()
            for name in ("wsgate", "wsgate-tls", "aiohttp", "picows", "tcp", "ws-echo", "websockify", "nginx")
        }
        self.ca, self.cert, self.key = self._certificates()
        self.token = self._jwt()
        self.config = self._wsgate_config()

    def _certificates(self) -> tuple[str, str, str]:
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(self.work / "ca.pem"))
        leaf.private_key_and_cert_chain_pem.write_to_path(str(self.work / "keystore.pem"))
        leaf.private_key_pem.write_to_path(str(self.work / "key.pem"))
        with open(self.work / "cert.pem", "wb") as chain:
            for blob in leaf.cert_chain_pems:
                chain.write(blob.bytes())
        return str(self.work / "ca.pem"), str(self.work / "cert.pem"), str(self.work / "key.pem")

    def _jwt(self) -> str:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        (self.work / "jwt-public.pem").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        self.jwt_key = key
        return self.jwt_for("bench")

    def jwt_for(self, subject: str) -> str:
        import jwt

        claims = {"sub": subject, "iss": "https://bench.invalid/", "aud": "wsgate", "roles": ["TRADER"]}
        return jwt.encode({**claims, "exp": int(time.time()) + 86400}, self.jwt_key, algorithm="ES256")

    def _wsgate_config(self) -> Path:
        port, tls, tcp = self.ports["wsgate"], self.ports["wsgate-tls"], self.ports["tcp"]
        path = self.work / "bench-gateway.yaml"
        path.write_text(
            textwrap.dedent(f"""
            service-defaults:
              accept-options:
                ws.maximum.message.size: 1M
            service:
              - name: echo
                accept: ws://127.0.0.1:{port}/echo
                type: echo
              - name: secure-echo
                accept: wss://127.0.0.1:{tls}/echo
                type: echo
                realm-name: bench
                authorization-constraint:
                  require-role: TRADER
              - name: proxy
                accept: wss://127.0.0.1:{tls}/proxy
                connect: tcp://127.0.0.1:{tcp}
                type: proxy
                realm-name: bench
                authorization-constraint:
                  require-role: TRADER
            security:
              keystore:
                type: PEM
                file: keystore.pem
              realm:
                - name: bench
                  authentication:
                    http-challenge-scheme: Application Token
                    login-modules:
                      login-module:
                        type: jwt
                        options:
                          key-file: jwt-public.pem
                          issuer: https://bench.invalid/
                          audience: wsgate
            """)
        )
        return path

    def _nginx_config(self) -> Path:
        path = self.work / "nginx.conf"
        work = self.work
        path.write_text(
            textwrap.dedent(f"""
            daemon off;
            worker_processes 1;
            pid {work}/nginx.pid;
            error_log {work}/nginx-error.log error;
            events {{ worker_connections 65536; }}
            http {{
              access_log off;
              client_body_temp_path {work}/nginx-body;
              proxy_temp_path {work}/nginx-proxy;
              server {{
                listen 127.0.0.1:{self.ports["nginx"]} ssl;
                ssl_certificate {self.cert};
                ssl_certificate_key {self.key};
                location / {{
                  proxy_pass http://127.0.0.1:{self.ports["ws-echo"]};
                  proxy_http_version 1.1;
                  proxy_set_header Upgrade $http_upgrade;
                  proxy_set_header Connection "upgrade";
                  proxy_read_timeout 1h;
                  proxy_buffer_size 64k;  # default buffers cost 3.6× the CPU at 16 KiB
                  proxy_buffers 4 64k;
                  proxy_busy_buffers_size 128k;
                }}
              }}
            }}
            """)
        )
        return path

    def wsgate(self, workers: int = 1) -> Server:
        command = [PYTHON, "-m", "wsgate", "run", str(self.config), "--log-level", "error", "--workers", str(workers)]
        return Server(f"wsgate×{workers}" if workers > 1 else "wsgate", command, self.ports["wsgate-tls"])

    def servers(self) -> dict[str, Server]:
        p = self.ports
        return {
            "wsgate": self.wsgate(),
            "aiohttp": Server("aiohttp", [PYTHON, "-c", BARE_ECHO, str(p["aiohttp"])], p["aiohttp"]),
            "picows": Server("picows", [PYTHON, "-c", BARE_PICOWS, str(p["picows"])], p["picows"]),
            "websockify": Server(
                "websockify",
                [
                    PYTHON,
                    "-m",
                    "websockify",
                    "--cert",
                    self.cert,
                    "--key",
                    self.key,
                    "--ssl-only",
                    f"127.0.0.1:{p['websockify']}",
                    f"127.0.0.1:{p['tcp']}",
                ],
                p["websockify"],
            ),
            "nginx": Server("nginx", [NGINX, "-c", str(self._nginx_config()), "-p", str(self.work)], p["nginx"]),
        }

    def urls(self) -> dict[str, str]:
        p = self.ports
        return {
            "wsgate-echo": f"ws://127.0.0.1:{p['wsgate']}/echo",
            "aiohttp": f"ws://127.0.0.1:{p['aiohttp']}/",
            "picows": f"ws://127.0.0.1:{p['picows']}/",
            "wsgate-proxy": f"wss://127.0.0.1:{p['wsgate-tls']}/proxy",
            "wsgate-secure-echo": f"wss://127.0.0.1:{p['wsgate-tls']}/echo",
            "websockify": f"wss://127.0.0.1:{p['websockify']}/",
            "nginx": f"wss://127.0.0.1:{p['nginx']}/",
        }

    def load(
        self,
        mode: str,
        url: str,
        *extra: str,
        timeout: float = 120.0,
        on_mark: Callable[[str], None] | None = None,
        client: str = "load.py",
    ) -> dict[str, Any]:
        """Run the load client (``client``: load.py, or cluster.py whose URLs come in ``extra``); ``on_mark``
        is called as its ``mark start`` / ``mark end`` lines arrive."""
        command = [PYTHON, str(HERE / client), mode, *([url] if url else []), *extra]
        if url.startswith("wss:"):
            command += ["--ca", self.ca]
        if url.startswith(f"wss://127.0.0.1:{self.ports['wsgate-tls']}/"):
            command += ["--token", self.token]
        with tempfile.TemporaryFile("w+") as errors:
            client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
            timer = threading.Timer(timeout, client.kill)
            timer.start()
            try:
                assert client.stdout is not None
                lines = []
                for line in client.stdout:
                    if line.startswith("mark ") and on_mark:
                        on_mark(line.split()[1])
                    lines.append(line)
                returncode = client.wait()
            finally:
                timer.cancel()
            if returncode:
                errors.seek(0)
                raise RuntimeError(f"load client failed: {errors.read().strip().splitlines()[-1:]}")
        return dict(json.loads(lines[-1]))

    def measure(self, server: Server, mode: str, url: str, *extra: str, client: str = "load.py") -> dict[str, Any]:
        """One load run against ``server``: the client's report plus the server's CPU per operation.

        When the client marks its measured window (throughput mode), the server's CPU and the host's
        busy time are sampled at the marks, so connecting and warming up are left out exactly;
        otherwise the whole run's CPU is scaled by duration / elapsed."""
        assert server.process is not None
        pid = server.process.pid
        samples: dict[str, tuple[float, float, float, float]] = {}

        def sample(what: str) -> None:
            samples[what] = (time.monotonic(), tree_cpu(pid), host_busy(), tree_cpu(os.getpid()))

        sample("run")
        result = self.load(
            mode, url, *extra, "--duration", str(self.args.duration), "--warmup", "1", on_mark=sample, client=client
        )
        sample("exit")
        first, last = (samples["start"], samples["end"]) if "end" in samples else (samples["run"], samples["exit"])
        elapsed, cpu, busy, ours = (b - a for a, b in zip(first, last, strict=True))
        count = result.get("messages") or result.get("conn_per_s", 0) * self.args.duration
        if "end" not in samples:
            cpu *= self.args.duration / elapsed  # the server's CPU over the measured part only, roughly
        result["server_cpu_us_per_op"] = cpu / max(count, 1) * 1e6
        result["client_cpu_share"] = result["client_cpu_s"] / (self.args.duration + 1)
        result["server_cpu_share"] = cpu / elapsed if "end" in samples else cpu / self.args.duration
        result["host_busy_cpus"] = busy / elapsed  # cores in use on the whole machine
        # … by processes that are not this harness's (server, client, back ends): other work on the host.
        # The softirq time of our loopback traffic is charged to our processes (tick accounting; checked
        # against a foreign pytest's own utime + stime: 0.98 vs 0.97 cores).
        result["other_cpus"] = max(0.0, busy - ours) / elapsed
        return result


def url_for(bench: Bench, scenario: str, server: str) -> str:
    urls = bench.urls()
    if server.startswith("wsgate"):
        return urls["wsgate-echo" if scenario == "echo" else "wsgate-proxy"]
    return urls[server]


def run_matrix(bench: Bench, results: dict[str, Any], scenario: str, names: list[str]) -> None:
    servers = bench.servers()
    for size, conns, window in CELLS:
        cell = f"{scenario} {size}B c={conns}"
        results[cell] = {}
        for _ in range(bench.args.rounds):
            for name in names:
                with servers[name] as server:
                    extra = ["--conns", str(conns), "--window", str(window), "--size", str(size)]
                    results[cell].setdefault(name, []).append(
                        bench.measure(server, "throughput", url_for(bench, scenario, name), *extra)
                    )
        print(_row(cell, results[cell], "msg_per_s", "msg/s"), flush=True)


def run_idle(bench: Bench, results: dict[str, Any]) -> None:
    """Hold N authenticated wss connections; where one process may not have N descriptors (a container's
    hard limit), the gateway runs as several workers and the load is spread over as many clients."""
    count = bench.args.idle
    per_process = max(1000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 2000)
    processes = -(-count // per_process)
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    with bench.wsgate(processes) as server:
        assert server.process is not None
        before = tree_rss(server.process.pid)
        clients = []
        for index, share in enumerate(shares):
            command = [PYTHON, str(HERE / "load.py"), "idle", bench.urls()["wsgate-secure-echo"]]
            command += ["--conns", str(share), "--sources", "1", "--first-source", str(2 + index)]
            command += ["--concurrency", "32", "--ca", bench.ca, "--token", bench.token]
            clients.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        reports = [json.loads(_line(client)) for client in clients]
        time.sleep(2)
        after = tree_rss(server.process.pid)
        for client in clients:
            assert client.stdin is not None
            client.stdin.write("ping\n")
            client.stdin.flush()
        pongs = [json.loads(_line(client)) for client in clients]
        for client in clients:
            client.wait(60)
    opened = sum(r["opened"] for r in reports)
    failed = sum(r["failures"] for r in reports)
    answered = sum(p["pongs"] for p in pongs)
    seconds = max(r["open_s"] for r in reports)
    per = (after - before) / max(opened, 1)
    results["idle"] = {
        "opened": opened,
        "failures": failed,
        "open_s": seconds,
        "pongs": answered,
        "workers": processes,
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "rss_before": before,
        "rss_after": after,
        "rss_per_conn": per,
    }
    where = f" in {processes} workers (fd limit {per_process + 2000})" if processes > 1 else ""
    print(
        f"{'idle wss+JWT':28} {opened} open{where} ({failed} failed) in {seconds:.0f} s, "
        f"gateway RSS {before / 2**20:.0f} → {after / 2**20:.0f} MiB ({per / 1024:.1f} KiB/conn), "
        f"{answered}/{opened} answered a ping",
        flush=True,
    )


def _line(client: subprocess.Popen[str]) -> str:
    assert client.stdout is not None
    line = client.stdout.readline()
    if not line:
        raise RuntimeError(f"idle client exited with {client.wait()}")
    return line


AUTH_USERS = {"ann": "argon2", "joe": "plain", "nobody": "unknown"}


def _auth_config(bench: Bench) -> tuple[Path, int]:
    """A public echo and a realm whose file has an argon2 user (default cost) next to a plain one."""
    from argon2 import PasswordHasher

    (bench.work / "auth-users.xml").write_text(
        '<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">'
        f"<user><name>ann</name><password>{PasswordHasher().hash('s3cret')}</password><role-name>R</role-name></user>"
        "<user><name>joe</name><password>welcome</password><role-name>R</role-name></user></jaas-config>"
    )
    port = free_port()
    path = bench.work / "auth-gateway.yaml"
    path.write_text(
        textwrap.dedent(f"""
        service:
          - name: echo
            accept: ws://127.0.0.1:{port}/echo
            type: echo
          - name: files
            accept: ws://127.0.0.1:{port}/files
            type: echo
            realm-name: files
            authorization-constraint:
              require-role: R
        security:
          realm:
            name: files
            authentication:
              http-challenge-scheme: Application Basic
              login-modules:
                login-module:
                  type: file
                  options:
                    file: auth-users.xml
        """)
    )
    return path, port


def _auth_client(*args: str, timeout: float = 120.0) -> dict[str, Any]:
    out = subprocess.run([PYTHON, str(HERE / "auth.py"), *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"auth client failed: {out.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_auth(bench: Bench, results: dict[str, Any]) -> None:
    """An established connection's echo while 16 clients send wrong passwords to an argon2 realm;
    with ``--auth-baseline SRC`` the same rounds also run the gateway from an older source tree."""
    config, port = _auth_config(bench)
    builds = {"wsgate": None}
    if bench.args.auth_baseline:
        builds["baseline"] = {"PYTHONPATH": str(Path(bench.args.auth_baseline).resolve())}
    command = [PYTHON, "-m", "wsgate", "run", str(config), "--log-level", "error"]
    for _ in range(bench.args.rounds):
        for name, env in builds.items():
            cell = results.setdefault(f"auth {name}", {"alone": [], "flood": [], "logins": [], "users": []})
            with Server(name, command, port, env):
                _auth_round(bench, port, cell)
    for name in builds:
        cell = results[f"auth {name}"]
        alone = statistics.median(r["p99_ms"] for r in cell["alone"])
        flooded = statistics.median(r["p99_ms"] for r in cell["flood"])
        worst = max(r["max_ms"] for r in cell["flood"])
        per_user = {u: statistics.median(r[u] for r in cell["users"]) for u in AUTH_USERS}
        kinds = ", ".join(f"{AUTH_USERS[u]} {ms:.1f} ms" for u, ms in per_user.items())
        print(
            f"{'auth ' + name:28} echo p99 alone {alone:6.2f} ms | during 16-way bad-login flood {flooded:7.2f} ms "
            f"(max {worst:.1f} ms; target ≤ 50 ms); flood answered {status_totals(cell['logins'])}",
            flush=True,
        )
        print(f"{'':28} wrong password by user: {kinds} (median per attempt, one at a time)", flush=True)


def _auth_round(bench: Bench, port: int, cell: dict[str, list[Any]]) -> None:
    echo, files = f"ws://127.0.0.1:{port}/echo", f"ws://127.0.0.1:{port}/files"
    duration = str(bench.args.duration)
    cell["alone"].append(_auth_client("probe", echo, "--duration", duration))
    users = [arg for user in AUTH_USERS for arg in ("--user", user)]
    flood = subprocess.Popen(
        [PYTHON, str(HERE / "auth.py"), "flood", files, "--duration", str(bench.args.duration + 1), *users],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    cell["flood"].append(_auth_client("probe", echo, "--duration", duration))
    out, _ = flood.communicate(timeout=120)
    cell["logins"].append(json.loads(out.strip().splitlines()[-1]))
    cell["users"].append(_auth_client("users", files, *users))


def status_totals(runs: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for run in runs:
        for status, count in run.items():
            total[status] = total.get(status, 0) + count
    return total


def run_workers(bench: Bench, results: dict[str, Any]) -> None:
    one, two = bench.wsgate(1), bench.wsgate(2)
    cell = "workers proxy 32B c=100"
    results[cell] = {}
    for _ in range(bench.args.rounds):
        for server in (two, one):
            with server:
                results[cell].setdefault(server.name, []).append(
                    bench.measure(server, "throughput", bench.urls()["wsgate-proxy"], "--conns", "100", "--window", "1")
                )
    print(_row(cell, results[cell], "msg_per_s", "msg/s"), flush=True)


# --- cluster: several nodes sharing a redis-server -----------------------------------------------------

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CLUSTER_NODES = 3
CLUSTER_USERS = 10  # revocations per round, each of a user with connections on every node
CLUSTER_CONNS = 20  # per node: each revoked user's connections; broadcast receivers
CLUSTER_BYSTANDERS = 300  # per node: connections of a user never revoked (every revocation scans them)


class Cluster:
    """Configs for 3 nodes that share a redis-server (``state: redis``), and one node on its own (memory).

    Every node: a JWT ``ws://`` echo (the revocation cell's clients), a ``broadcast`` service whose client
    messages go to every client (``on.client.message: broadcast``) and a loopback management API (the
    revocation is its ``DELETE /api/principals/<user>``, i.e. ``gateway.revoke(user)``)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.redis_port = free_port()
        self.ports = [free_port() for _ in range(CLUSTER_NODES)]
        self.admin_ports = [free_port() for _ in range(CLUSTER_NODES)]
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.configs = [self._config(i, self.redis_url) for i in range(CLUSTER_NODES)]
        self.single = self._config(0, None)
        users = {f"user{i}": bench.jwt_for(f"user{i}") for i in range(CLUSTER_USERS)}
        self.tokens = bench.work / "cluster-tokens.json"
        self.tokens.write_text(json.dumps({**users, "bystander": bench.jwt_for("bystander")}))
        # The connect cell: the bench's own gateway config, with its state in Redis.
        self.connect_config = bench.work / "bench-gateway-redis.yaml"
        state = f"state:\n  type: redis\n  url: {self.redis_url}\n  node: bench\n"
        self.connect_config.write_text(bench.config.read_text() + state)

    def _config(self, index: int, redis: str | None) -> Path:
        port, admin = self.ports[index], self.admin_ports[index]
        path = self.bench.work / (f"cluster-n{index}.yaml" if redis else "cluster-single.yaml")
        state = f"state:\n  type: redis\n  url: {redis}\n  node: n{index}\n" if redis else ""
        text = f"""
            service:
              - name: echo
                accept: ws://127.0.0.1:{port}/echo
                type: echo
                realm-name: bench
                authorization-constraint:
                  require-role: TRADER
              - name: chat
                accept: ws://127.0.0.1:{port}/chat
                type: broadcast
                properties:
                  on.client.message: broadcast
              - name: admin
                accept: http://127.0.0.1:{admin}/admin
                type: management
                properties:
                  insecure: true
            security:
              realm:
                - name: bench
                  authentication:
                    http-challenge-scheme: Application Token
                    login-modules:
                      login-module:
                        type: jwt
                        options:
                          key-file: jwt-public.pem
                          issuer: https://bench.invalid/
                          audience: wsgate
            """
        path.write_text(textwrap.dedent(text) + state)
        return path

    def redis(self) -> Server:
        command = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "", "--appendonly"]
        return Server("redis", [*command, "no", "--dir", str(self.bench.work)], self.redis_port)

    def node(self, config: Path, index: int) -> Server:
        command = [PYTHON, "-m", "wsgate", "run", str(config), "--log-level", "error"]
        return Server(f"n{index}", command, self.ports[index])

    def urls(self, path: str) -> list[str]:
        return [f"ws://127.0.0.1:{port}/{path}" for port in self.ports]


def run_cluster(bench: Bench, results: dict[str, Any], cells: list[str]) -> None:
    cluster = Cluster(bench)
    for cell in cells:
        CLUSTER_CELLS[cell](bench, cluster, results)


def _cluster_started(cluster: Cluster, stack: contextlib.ExitStack) -> list[Server]:
    """redis-server, then the nodes (a node refuses to start without its Redis)."""
    servers = [stack.enter_context(cluster.redis())]
    return servers + [stack.enter_context(cluster.node(c, i)) for i, c in enumerate(cluster.configs)]


def run_cluster_revoke(bench: Bench, cluster: Cluster, results: dict[str, Any]) -> None:
    """Revocation fan-out: the reference is the revoking node's own connections, in the same runs."""
    cell = f"cluster revoke {CLUSTER_NODES} nodes"
    runs = results[cell] = []
    for _ in range(bench.args.rounds):
        with contextlib.ExitStack() as stack:
            _cluster_started(cluster, stack)
            extra = [f"--url={url}" for url in cluster.urls("echo")]
            extra += ["--admin", f"http://127.0.0.1:{cluster.admin_ports[0]}/admin", "--tokens", str(cluster.tokens)]
            extra += ["--users", str(CLUSTER_USERS), "--conns", str(CLUSTER_CONNS)]
            extra += ["--bystanders", str(CLUSTER_BYSTANDERS)]
            runs.append(bench.load("revoke", "", *extra, client="cluster.py"))
    remote = {q: median([r["remote"] for r in runs], q) for q in ("p50_ms", "p99_ms")}
    local = {q: median([r["local"] for r in runs], q) for q in ("p50_ms", "p99_ms")}
    failures = sum(r["failures"] for r in runs)
    print(
        f"{cell:28} other nodes p50 {remote['p50_ms']:6.2f} ms p99 {remote['p99_ms']:6.2f} ms "
        f"({runs[0]['remote']['count']} closes/round) | revoking node p50 {local['p50_ms']:6.2f} ms "
        f"p99 {local['p99_ms']:6.2f} ms (×{remote['p50_ms'] / max(local['p50_ms'], 1e-9):.2f} p50, "
        f"×{remote['p99_ms'] / max(local['p99_ms'], 1e-9):.2f} p99); {CLUSTER_BYSTANDERS} other connections "
        f"per node; {failures} not closed with 1008",
        flush=True,
    )


def _measure_pids(bench: Bench, pids: list[int], mode: str, extra: list[str]) -> dict[str, Any]:
    """One cluster.py run; the CPU of every process in ``pids`` (and their children) over its marked window."""
    samples: dict[str, tuple[float, float, float]] = {}

    def sample(what: str) -> None:
        samples[what] = (time.monotonic(), sum(tree_cpu(pid) for pid in pids), host_busy())

    extra = [*extra, "--duration", str(bench.args.duration), "--warmup", "1"]
    result = bench.load(mode, "", *extra, client="cluster.py", on_mark=sample)
    (t0, cpu0, busy0), (t1, cpu1, busy1) = samples["start"], samples["end"]
    result["server_cpu_us_per_op"] = (cpu1 - cpu0) / max(result["messages"], 1) * 1e6
    result["server_cpu_share"] = (cpu1 - cpu0) / (t1 - t0)
    result["host_busy_cpus"] = (busy1 - busy0) / (t1 - t0)
    result["client_cpu_share"] = result["client_cpu_s"] / (t1 - t0)
    return result


def run_cluster_broadcast(bench: Bench, cluster: Cluster, results: dict[str, Any]) -> None:
    """Client messages from one node to receivers on 3 nodes (Redis between them) vs the same receivers on
    one node (memory state); CPU per delivery counts every gateway and redis-server."""
    receivers = CLUSTER_CONNS * CLUSTER_NODES
    cell = f"cluster broadcast {receivers} receivers"
    by_setup: dict[str, list[dict[str, Any]]] = {"3 nodes": [], "1 node": []}
    for _ in range(bench.args.rounds):
        with contextlib.ExitStack() as stack:
            servers = _cluster_started(cluster, stack)
            extra = [f"--url={url}" for url in cluster.urls("chat")] + ["--conns", str(CLUSTER_CONNS)]
            pids = [s.process.pid for s in servers if s.process is not None]
            by_setup["3 nodes"].append(_measure_pids(bench, pids, "broadcast", extra))
        with cluster.node(cluster.single, 0) as single:
            assert single.process is not None
            extra = [f"--url={cluster.urls('chat')[0]}", "--conns", str(receivers)]
            by_setup["1 node"].append(_measure_pids(bench, [single.process.pid], "broadcast", extra))
    results[cell] = by_setup
    parts = []
    for name, runs in by_setup.items():
        rate, cpu = median(runs, "deliveries_per_s"), median(runs, "server_cpu_us_per_op")
        flag = " client-bound" if median(runs, "client_cpu_share") > 0.85 else ""
        parts.append(f"{name} {rate:8.0f} deliveries/s {cpu:5.1f} µs/delivery{flag}")
    cluster_runs, single_runs = by_setup["3 nodes"], by_setup["1 node"]
    ratio = median(cluster_runs, "deliveries_per_s") / max(median(single_runs, "deliveries_per_s"), 1e-9)
    cpu_ratio = median(cluster_runs, "server_cpu_us_per_op") / max(median(single_runs, "server_cpu_us_per_op"), 1e-9)
    print(f"{cell:28} " + " | ".join(parts) + f" (×{ratio:.2f}, CPU ×{cpu_ratio:.2f})", flush=True)


def run_cluster_connect(bench: Bench, cluster: Cluster, results: dict[str, Any]) -> None:
    """New JWT wss connections (16 in flight) on one gateway, state redis vs memory: the revocation checks
    a login and an upgrade make in Redis. redis-server's own CPU per connection is reported beside."""
    cell = "cluster connect redis/memory"
    by_state: dict[str, list[dict[str, Any]]] = {"redis": [], "memory": []}
    url = bench.urls()["wsgate-secure-echo"]
    command = [PYTHON, "-m", "wsgate", "run", str(cluster.connect_config), "--log-level", "error"]
    for _ in range(bench.args.rounds):
        with cluster.redis() as redis, Server("wsgate+redis", command, bench.ports["wsgate-tls"]) as server:
            assert redis.process is not None
            before, started = tree_cpu(redis.process.pid), time.monotonic()
            result = bench.measure(server, "connect", url, "--conns", "16")
            elapsed, used = time.monotonic() - started, tree_cpu(redis.process.pid) - before
            count = max(result["conn_per_s"] * bench.args.duration, 1)
            result["redis_cpu_us_per_op"] = used * bench.args.duration / elapsed / count * 1e6
            by_state["redis"].append(result)
        with bench.wsgate() as server:
            by_state["memory"].append(bench.measure(server, "connect", url, "--conns", "16"))
    results[cell] = by_state
    print(_row(cell, by_state, "conn_per_s", "conn/s"), flush=True)
    print(f"{'':28} redis-server CPU ≈{median(by_state['redis'], 'redis_cpu_us_per_op'):.1f} µs/conn", flush=True)


CLUSTER_CELLS: dict[str, Callable[[Bench, Cluster, dict[str, Any]], None]] = {
    "cluster-revoke": run_cluster_revoke,
    "cluster-broadcast": run_cluster_broadcast,
    "cluster-connect": run_cluster_connect,
}


# --- A/B: two wsgate versions in one run -----------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(HERE.parent), *args], capture_output=True, check=True, text=True
    ).stdout.strip()


def ab_builds(work: Path, rev: str) -> dict[str, dict[str, str]]:
    """``new`` is this checkout's src/ (uncommitted changes included), ``old`` is ``rev``'s src/ from
    ``git archive``; both run with PYTHONPATH pointing at their tree, in the same venv."""
    root = Path(_git("rev-parse", "--show-toplevel"))
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    old = work / f"old-{sha[:12]}"
    old.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(root), "archive", sha, "src"], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(old)], stdin=archive.stdout, check=True)
    if archive.wait():
        raise RuntimeError(f"git archive {sha} src failed")
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(old / "src")], check=True)  # no first-start compile
    head = _git("rev-parse", "HEAD")
    dirty = "+dirty" if _git("status", "--porcelain", "--", "src") else ""
    return {
        "new": {"PYTHONPATH": str(root / "src"), "label": f"{head[:8]}{dirty} (this checkout)"},
        "old": {"PYTHONPATH": str(old / "src"), "label": f"{sha[:8]} ({rev})"},
    }


def run_ab(bench: Bench, results: dict[str, Any], builds: dict[str, dict[str, str]], scenarios: list[str]) -> int:
    """Every cell of ``scenarios`` (echo, proxy) alternates new and old, round by round, in ABBA order
    (new-old, old-new, …), so a drift of the shared host or a first-start effect falls on both alike; each
    measurement starts its server afresh. Rounds go on until ``--rounds`` pairs are clean (no other work on
    the host, see ``clean_pairs``) or three times as many were measured. Prints a row per cell and the
    verdict; returns the exit status (``ab_verdict``)."""
    command = [PYTHON, "-m", "wsgate", "run", str(bench.config), "--log-level", "error"]
    servers = {
        name: Server(name, command, bench.ports["wsgate-tls"], {"PYTHONPATH": build["PYTHONPATH"]})
        for name, build in builds.items()
    }
    by_cell: dict[str, dict[str, list[dict[str, Any]]]] = {}
    quiet = bench.args.ab_quiet
    gate = QuietGate(quiet, bench.args.ab_wait)
    for scenario in scenarios:
        url = bench.urls()["wsgate-echo" if scenario == "echo" else "wsgate-proxy"]
        for size, conns, window in CELLS:
            cell = f"{scenario} {size}B c={conns}"
            runs: dict[str, list[dict[str, Any]]] = {"new": [], "old": []}
            extra = ["--conns", str(conns), "--window", str(window), "--size", str(size)]
            # A pair spoiled by other work on the host is measured again, up to twice the rounds more.
            round_ = 0
            while len(clean_pairs(runs, quiet)) < bench.args.rounds and round_ < 3 * bench.args.rounds:
                quiet_before = gate.wait()
                for name in ("new", "old") if round_ % 2 == 0 else ("old", "new"):
                    with servers[name] as server:
                        result = bench.measure(server, "throughput", url, *extra)
                        runs[name].append({**result, "quiet_before": quiet_before})
                round_ += 1
            by_cell[cell] = results[cell] = runs
            print(f"  {cell}: {len(clean_pairs(runs, quiet))} clean pairs of {round_}", file=sys.stderr, flush=True)
    cells = ab_compare(by_cell, bench.args.ab_tolerance, quiet)
    print(f"A/B  new = {builds['new']['label']}  old = {builds['old']['label']}  ratios are new/old")
    for cell, runs in by_cell.items():
        print(_ab_row(cell, runs, cells[cell]))
    verdict, status = ab_verdict(cells, bench.args.ab_resolution)
    print(verdict, flush=True)
    results["ab"] = {
        "new": builds["new"]["label"],
        "old": builds["old"]["label"],
        "tolerance": bench.args.ab_tolerance,
        "cells": cells,
        "verdict": verdict,
    }
    return status


class QuietGate:
    """Before each pair: wait until the host is quiet (under ``threshold`` cores busy over one second while
    nothing of ours runs), out of a budget of ``budget`` seconds of waiting for the whole run."""

    def __init__(self, threshold: float, budget: float) -> None:
        self.threshold, self.left = threshold, budget
        self.told = 0.0

    def wait(self) -> bool:
        while True:
            started, before = time.monotonic(), host_busy()
            time.sleep(1.0)
            elapsed = time.monotonic() - started
            busy = (host_busy() - before) / elapsed
            if busy < self.threshold:
                return True
            self.left -= elapsed
            if self.left <= 0:
                return False
            if time.monotonic() - self.told > 30:
                self.told = time.monotonic()
                print(f"  host busy ({busy:.2f} cores), waiting ({self.left:.0f} s of waiting left)", file=sys.stderr)


def clean_pairs(runs: dict[str, list[dict[str, Any]]], threshold: float) -> list[int]:
    """The rounds where the host was quiet before the pair and other work stayed under ``threshold``
    cores during both measurements."""
    return [
        i
        for i, (n, o) in enumerate(zip(runs["new"], runs["old"], strict=True))
        if n.get("quiet_before", True) and max(n["other_cpus"], o["other_cpus"]) < threshold
    ]


# What each metric's ratio new/old means: throughput higher is better, CPU per message lower is better.
AB_METRICS = {"msg/s": ("msg_per_s", +1), "CPU/msg": ("server_cpu_us_per_op", -1)}
AB_SIGMAS = 3.0  # a change is called when the median ratio is this many standard errors off 1
AB_MIN_PAIRS = 3  # clean pairs a cell needs to be called at all


def ab_compare(by_cell: dict[str, dict[str, list[dict[str, Any]]]], tolerance: float, quiet: float) -> dict[str, Any]:
    """Per cell and metric: the ratio new/old of each round's pair, their median, and a call.

    The noise is the run-to-run scatter of the paired ratios: σ, the median absolute deviation of the log
    ratios from their cell's median (× 1.4826), the larger of this cell's own and the one pooled over all
    cells of the run; the median of n pairs is then known to about 1.25 σ / √n. A cell is ``worse`` (or
    ``better``) only when its median ratio is off 1 by more than 3 such standard errors and by more than
    ``tolerance``: that bound is the run's resolution, printed as ±x %. Each side's own spread over the
    rounds ((max − min) / median, absolute rates, host drift included) is kept for the record. Only clean
    pairs count (``clean_pairs``: no other work on the host); a cell with fewer than 3 is ``unmeasured``."""
    clean = {cell: clean_pairs(runs, quiet) for cell, runs in by_cell.items()}
    logs: dict[str, dict[str, list[float]]] = {label: {} for label in AB_METRICS}
    for label, (key, _) in AB_METRICS.items():
        for cell, runs in by_cell.items():
            pairs = [(runs["new"][i], runs["old"][i]) for i in clean[cell]]
            logs[label][cell] = [math.log(n[key] / o[key]) for n, o in pairs if n[key] > 0 and o[key] > 0]
    pooled = {label: _mad_sigma([v for v in cells.values() if v]) for label, cells in logs.items()}
    out: dict[str, Any] = {}
    for cell, runs in by_cell.items():
        entry: dict[str, Any] = {"pairs": len(runs["new"]), "clean_pairs": clean[cell]}
        for label, (key, sign) in AB_METRICS.items():
            values = logs[label][cell]
            if len(values) < AB_MIN_PAIRS:
                entry[label] = {"call": "unmeasured", "ratios": [math.exp(v) for v in values]}
                continue
            sigma = max(pooled[label], _mad_sigma([values]))
            bound = max(math.log1p(tolerance), AB_SIGMAS * 1.2533 * sigma / math.sqrt(len(values)))
            middle = statistics.median(values)  # not ``median``: that is harness's, used below
            gain = middle * sign  # > 0: new is better
            spread = {}
            for side in ("new", "old"):
                v = [r[key] for r in runs[side]]
                spread[side] = (max(v) - min(v)) / statistics.median(v)
            entry[label] = {
                "ratio": math.exp(middle),
                "ratios": [math.exp(v) for v in values],
                "low": math.exp(min(values)),
                "high": math.exp(max(values)),
                "sigma": sigma,
                "resolution": math.expm1(bound),
                "call": "worse" if gain < -bound else "better" if gain > bound else "noise",
                "spread": spread,
            }
        for share in ("client_cpu_share", "server_cpu_share", "host_busy_cpus", "other_cpus"):
            entry[share] = {side: median(runs[side], share) for side in runs}
        entry["client_bound"] = max(entry["client_cpu_share"].values()) > 0.85
        out[cell] = entry
    return out


def _mad_sigma(groups: list[list[float]]) -> float:
    """σ from the median absolute deviation of each group's values from the group's median, pooled; in an
    odd group the median's own zero deviation is left out."""
    deviations = []
    for values in groups:
        middle = statistics.median(values)
        devs = sorted(abs(v - middle) for v in values)
        deviations += devs[1:] if len(devs) % 2 else devs
    return 1.4826 * statistics.median(deviations) if deviations else 0.0


def _ab_row(cell: str, runs: dict[str, list[dict[str, Any]]], cmp: dict[str, Any]) -> str:
    """``cell  new rate µs/op | old rate µs/op | msg/s ×ratio ±resolution [range]  CPU/msg …  (cores …)``,
    over the clean pairs only."""
    clean = cmp["clean_pairs"] or list(range(cmp["pairs"]))
    sides = []
    for side in ("new", "old"):
        kept = [runs[side][i] for i in clean]
        sides.append(f"{side} {median(kept, 'msg_per_s'):6.0f} msg/s {median(kept, 'server_cpu_us_per_op'):5.1f} µs/op")
    calls = []
    for label in AB_METRICS:
        m = cmp[label]
        if m["call"] == "unmeasured":
            calls.append(f"{label} unmeasured")
            continue
        flag = {"worse": " WORSE", "better": " better", "noise": ""}[m["call"]]
        calls.append(f"{label} ×{m['ratio']:.3f} ±{m['resolution']:.1%} [{m['low']:.2f}–{m['high']:.2f}]{flag}")
    cores = (
        f"cores: client {max(cmp['client_cpu_share'].values()):.2f} "
        f"server {max(cmp['server_cpu_share'].values()):.2f} "
        f"host {max(cmp['host_busy_cpus'].values()):.2f}/{os.cpu_count()}, "
        f"other work {max(cmp['other_cpus'].values()):.2f}; {len(cmp['clean_pairs'])}/{cmp['pairs']} pairs clean"
    )
    bound = " CLIENT-BOUND" if cmp["client_bound"] else ""
    return f"{cell:17} " + " | ".join(sides) + " | " + "  ".join(calls) + f"  ({cores}){bound}"


def ab_verdict(cells: dict[str, dict[str, Any]], limit: float) -> tuple[str, int]:
    """The verdict line and the exit status: 1 ``REGRESSION`` when some cell is worse beyond the noise;
    2 ``inconclusive`` when none is but some cell could not be measured (other work on the host) or its
    CPU/msg resolution is coarser than ``limit`` (more rounds, longer runs or a quieter host would tell);
    0 ``no regression beyond noise``."""

    def listed(call: str) -> list[str]:
        return [
            f"{cell} {label} ×{c[label]['ratio']:.3f} (±{c[label]['resolution']:.1%})"
            for cell, c in cells.items()
            for label in AB_METRICS
            if c[label]["call"] == call
        ]

    def extent(label: str, key: str) -> str:
        values = [c[label][key] for c in cells.values() if key in c[label]]
        if not values:
            return "–"
        return (
            f"{min(values):.1%}–{max(values):.1%}" if key == "resolution" else f"×{min(values):.3f}–{max(values):.3f}"
        )

    worse, better = listed("worse"), listed("better")
    summary = "; ".join(f"{label} {extent(label, 'ratio')} (±{extent(label, 'resolution')})" for label in AB_METRICS)
    notes = ""
    bound = [cell for cell, c in cells.items() if c["client_bound"]]
    if bound:
        notes += f"; load client above 85 % of a core in {', '.join(bound)}: read CPU/msg there"
    other = statistics.median(max(c["other_cpus"].values()) for c in cells.values())
    if other > 0.1:
        notes += f"; other work on this host took {other:.2f} of {os.cpu_count()} cores (median)"
    if better:
        notes += f"; better beyond noise: {', '.join(better)}"
    unmeasured = [cell for cell, c in cells.items() if c["CPU/msg"]["call"] == "unmeasured"]
    coarse = [cell for cell, c in cells.items() if c["CPU/msg"].get("resolution", 0) > limit]
    if worse:
        return f"verdict: REGRESSION beyond noise: {'; '.join(worse)} [medians new/old: {summary}]{notes}", 1
    if unmeasured or coarse:
        why = []
        if unmeasured:
            why.append(f"{len(unmeasured)} cells had under {AB_MIN_PAIRS} clean pairs (host busy)")
        if coarse:
            why.append(f"CPU/msg resolution coarser than ±{limit:.0%} in {len(coarse)} cells")
        return (
            f"verdict: inconclusive, no regression seen but {' and '.join(why)} [medians new/old: {summary}]{notes}",
            2,
        )
    return f"verdict: no regression beyond noise in {len(cells)} cells [medians new/old: {summary}]{notes}", 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, help="rounds per cell (default 3; 5 with --ab)")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument(
        "--scenarios", help="default: echo,proxy,connect,idle,workers,auth,cluster,soak (echo,proxy with --ab)"
    )
    parser.add_argument("--soak-minutes", type=int, default=10, help="soak: minutes under churn (10; 1 to try)")
    parser.add_argument("--auth-baseline", help="auth scenario: also run the gateway from this older src/ tree")
    parser.add_argument("--idle", type=int, default=50_000, help="connections held open by the idle scenario")
    parser.add_argument("--connect-procs", type=int, default=2, help="connect: load client processes (2)")
    parser.add_argument(
        "--connect-rate", type=int, default=HALF_TARGET_RATE, help="connect: the fixed-rate cells' conn/s (750)"
    )
    parser.add_argument(
        "--connect-baseline",
        action="append",
        default=[],
        help="connect scenario: also run the gateway from this older src/ tree, named by its parent folder (repeatable)",
    )
    parser.add_argument(
        "--ab",
        metavar="REV",
        help="A/B instead of references: this checkout's src/ (new) against git revision REV's src/ (old), "
        "alternating in the echo and proxy cells; exits 1 on a regression beyond the noise, 2 if inconclusive",
    )
    parser.add_argument(
        "--ab-tolerance", type=float, default=0.03, help="--ab: smallest change called, as a fraction (0.03)"
    )
    parser.add_argument(
        "--ab-resolution",
        type=float,
        default=0.10,
        help="--ab: coarsest CPU/msg resolution for a 'no regression' verdict, else 'inconclusive' (0.10)",
    )
    parser.add_argument(
        "--ab-quiet",
        type=float,
        default=0.25,
        help="--ab: a pair counts only if other work on the host stayed under this many cores (0.25)",
    )
    parser.add_argument(
        "--ab-wait", type=float, default=600, help="--ab: seconds in all to wait for a quiet host before pairs (600)"
    )
    args = parser.parse_args()
    args.rounds = args.rounds or (5 if args.ab else 3)
    args.scenarios = args.scenarios or (
        "echo,proxy" if args.ab else "echo,proxy,connect,idle,workers,auth,cluster,soak"
    )
    raise_fd_limit()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"wsgate-bench-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work, args)
    results: dict[str, Any] = {}
    started = time.monotonic()
    if args.ab:
        return main_ab(bench, results, parser, started)
    # Back ends that run for the whole matrix: a TCP echo (wsgate, websockify) and a ws echo (nginx).
    tcp_echo = Server("tcp-echo", [PYTHON, "-c", TCP_ECHO, str(bench.ports["tcp"])], bench.ports["tcp"])
    ws_echo = Server("ws-echo", [PYTHON, "-c", BARE_ECHO, str(bench.ports["ws-echo"])], bench.ports["ws-echo"])
    with tcp_echo, ws_echo:
        for scenario in args.scenarios.split(","):
            if scenario == "echo":
                run_matrix(bench, results, "echo", ["wsgate", "picows", "aiohttp"])
            elif scenario == "proxy":
                run_matrix(bench, results, "proxy", ["wsgate", "websockify", "nginx"])
            elif scenario == "connect":  # full and resumed TLS handshakes vs nginx (bench/connect.py)
                __import__("connect").run_connect(bench, results, args.connect_rate)
            elif scenario == "idle":
                run_idle(bench, results)
            elif scenario == "workers":
                run_workers(bench, results)
            elif scenario == "auth":
                run_auth(bench, results)
            elif scenario == "afn":  # a two-certificate (SNI) wss listener vs one certificate (bench/afn.py)
                __import__("afn").run_afn(bench, results)
            elif scenario == "policy":  # the message policy's cost per message (bench/policy.py), not by default
                __import__("policy").run_policy(bench, results)
            elif scenario == "soak":  # RSS under churn for --soak-minutes (bench/soak.py)
                __import__("soak").run_soak(bench, results)
            elif scenario == "amqp":  # amqp.proxy vs proxy in front of a throwaway RabbitMQ (bench/amqp.py)
                __import__("amqp").run_amqp(bench, results)
            elif scenario == "mqtt":  # mqtt.proxy vs proxy to one Mosquitto (bench/mqtt.py)
                __import__("mqtt").run_mqtt(bench, results)
            elif scenario in CLUSTER_CELLS or scenario == "cluster":
                run_cluster(bench, results, list(CLUSTER_CELLS) if scenario == "cluster" else [scenario])
            else:
                parser.error(f"unknown scenario {scenario!r}")
    print(f"matrix took {time.monotonic() - started:.0f} s")
    verdicts = evaluate(results)  # issue 13's targets, met or not (bench/targets.py)
    print(table(verdicts), flush=True)
    results["targets"] = [vars(verdict) for verdict in verdicts]
    _save(results, args)
    return 0


def main_ab(bench: Bench, results: dict[str, Any], parser: argparse.ArgumentParser, started: float) -> int:
    scenarios = bench.args.scenarios.split(",")
    if set(scenarios) - {"echo", "proxy"}:
        parser.error("--ab measures the echo and proxy scenarios only")
    builds = ab_builds(bench.work, bench.args.ab)
    # The proxy's TCP back end runs for the whole A/B, shared by both versions (it uses new's event loop).
    env = {"PYTHONPATH": builds["new"]["PYTHONPATH"]}
    tcp_echo = Server("tcp-echo", [PYTHON, "-c", TCP_ECHO, str(bench.ports["tcp"])], bench.ports["tcp"], env)
    try:
        with tcp_echo:
            status = run_ab(bench, results, builds, scenarios)
    finally:
        shutil.rmtree(bench.work, ignore_errors=True)  # the old tree, certificates and configs
    print(f"A/B took {time.monotonic() - started:.0f} s")
    _save(results, bench.args)
    return status


def raise_fd_limit(wanted: int = 1 << 20) -> None:
    """Children inherit it: 50,000 connections need 100,000+ descriptors on each side."""
    for limit in ((wanted, wanted), (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            return
        except (ValueError, OSError):
            continue


def _row(cell: str, by_server: dict[str, list[dict[str, Any]]], key: str, unit: str) -> str:
    """``cell  A rate µs/op p99 [client-bound] | B … ×ratio``: ratios are A over each reference."""
    (first, first_runs), *others = list(by_server.items())
    parts = []
    for name, runs in [(first, first_runs), *others]:
        rate, cpu = median(runs, key), median(runs, "server_cpu_us_per_op")
        flag = " client-bound" if median(runs, "client_cpu_share") > 0.85 else ""
        part = f"{name} {rate:8.0f} {unit} {cpu:6.1f} µs/op p99 {median(runs, 'p99_us') / 1000:6.2f} ms{flag}"
        if name != first:
            part += f" (×{median(first_runs, key) / max(rate, 1e-9):.2f}"
            part += f", CPU ×{median(first_runs, 'server_cpu_us_per_op') / cpu:.2f})" if cpu > 0.05 else ")"
        parts.append(part)
    return f"{cell:28} " + " | ".join(parts)


def _save(results: dict[str, Any], args: argparse.Namespace) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    path = HERE / "results" / f"{stamp}.json"
    path.write_text(
        json.dumps({"machine": machine, "rounds": args.rounds, "duration": args.duration, "results": results}, indent=1)
    )
    print(f"saved {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    sys.exit(main())
