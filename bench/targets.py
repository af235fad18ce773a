"""Issue 13's published targets, judged from one bench run's results (bench/run.py prints the table last).

Pure functions over the results dict that run.py builds (and saves as bench/results/<time>.json), so a
saved run can be judged again: ``python bench/targets.py bench/results/<time>.json``. Every figure is a
ratio to a reference measured in the same run, or an absolute the target names; a target whose scenario
did not run is ``not measured``.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"
PROXY_CELLS = ("proxy 32B c=1", "proxy 32B c=100", "proxy 16384B c=1", "proxy 16384B c=100")
ECHO_CELLS = ("echo 32B c=1", "echo 32B c=100", "echo 16384B c=1", "echo 16384B c=100")
IDLE_CONNECTIONS = 50_000
IDLE_BYTES_PER_CONN = 20 * 1024
CONNECT_CPU_US = 670.0
CONNECT_P99_US = 20_000.0
CONNECT_MAX_CELL = "connect max (16 in flight)"
CONNECT_RATE_CELL = "connect at 750/s"
ECHO_CPU_RATIO = 1.10
SOAK_RSS_RATIO = 1.10
WEBSOCKIFY_FACTOR = 4.0
CLIENT_BOUND = 0.85  # share of a core above which the load client, not the server, sets the rate


@dataclass(frozen=True)
class Verdict:
    target: str
    status: str  # MET, NOT_MET or NOT_MEASURED
    figure: str


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def _judge(target: str, ok: bool, figure: str) -> Verdict:
    return Verdict(target, MET if ok else NOT_MET, figure)


def _runs(results: dict[str, Any], cell: str, *servers: str) -> list[list[dict[str, Any]]] | None:
    """Each server's runs in ``cell``, or None when the cell (or one of the servers) was not measured."""
    found = results.get(cell) or {}
    runs = [found.get(server) or [] for server in servers]
    return runs if all(runs) else None


def _bound(runs: list[dict[str, Any]]) -> str:
    return " (load client-bound)" if _median(runs, "client_cpu_share") > CLIENT_BOUND else ""


def proxy_targets(results: dict[str, Any]) -> list[Verdict]:
    """P1: in every proxy cell wsgate's CPU per message ≤ nginx's and its rate ≥ nginx's; at 32 B c=100 its
    rate ≥ 4× websockify's."""
    out = []
    for cell in PROXY_CELLS:
        target = f"P1 {cell}: CPU/msg ≤ nginx, msg/s ≥ nginx"
        runs = _runs(results, cell, "wsgate", "nginx")
        if runs is None:
            out.append(Verdict(target, NOT_MEASURED, ""))
            continue
        ours, nginx = runs
        cpu = _median(ours, "server_cpu_us_per_op") / _median(nginx, "server_cpu_us_per_op")
        rate = _median(ours, "msg_per_s") / _median(nginx, "msg_per_s")
        out.append(_judge(target, cpu <= 1.0 and rate >= 1.0, f"CPU ×{cpu:.2f}, msg/s ×{rate:.2f}{_bound(ours)}"))
    target = "P1 proxy 32B c=100: msg/s ≥ 4× websockify"
    runs = _runs(results, "proxy 32B c=100", "wsgate", "websockify")
    if runs is None:
        out.append(Verdict(target, NOT_MEASURED, ""))
    else:
        ours, theirs = runs
        rate = _median(ours, "msg_per_s") / _median(theirs, "msg_per_s")
        cpu = _median(theirs, "server_cpu_us_per_op") / _median(ours, "server_cpu_us_per_op")
        figure = f"msg/s ×{rate:.2f} (by CPU/msg ×{cpu:.2f} cheaper){_bound(ours)}"
        out.append(_judge(target, rate >= WEBSOCKIFY_FACTOR, figure))
    return out


def idle_target(results: dict[str, Any]) -> Verdict:
    """P3: 50,000 idle authenticated wss connections at ≤ 20 KiB each, every one answering a ping."""
    target = "P3 50,000 idle wss+JWT: ≤ 20 KiB/conn, all pinged"
    idle = results.get("idle")
    if not idle:
        return Verdict(target, NOT_MEASURED, "")
    opened, pongs, per = idle["opened"], idle["pongs"], idle["rss_per_conn"]
    figure = f"{per / 1024:.1f} KiB/conn, {pongs}/{opened} answered a ping"
    if opened < IDLE_CONNECTIONS:
        figure += f" (only {opened} connections opened)"
    ok = opened >= IDLE_CONNECTIONS and pongs == opened and per <= IDLE_BYTES_PER_CONN
    return _judge(target, ok, figure)


def connect_targets(results: dict[str, Any]) -> list[Verdict]:
    """P4: ≤ 0.67 ms of server CPU per new JWT wss connection (as fast as 16 in flight allow); p99 handshake
    ≤ 20 ms at 750/s (which the load client must actually reach)."""
    out = []
    target = "P4 new JWT wss connection: ≤ 0.67 ms server CPU"
    runs = _runs(results, CONNECT_MAX_CELL, "wsgate")
    if runs is None:
        out.append(Verdict(target, NOT_MEASURED, ""))
    else:
        cpu = _median(runs[0], "server_cpu_us_per_op")
        figure = f"{cpu / 1000:.2f} ms/conn at {_median(runs[0], 'conn_per_s'):.0f} conn/s{_bound(runs[0])}"
        out.append(_judge(target, cpu <= CONNECT_CPU_US, figure))
    target = "P4 p99 handshake ≤ 20 ms at 750/s"
    runs = _runs(results, CONNECT_RATE_CELL, "wsgate")
    if runs is None:
        out.append(Verdict(target, NOT_MEASURED, ""))
    else:
        p99, rate = _median(runs[0], "p99_us"), _median(runs[0], "conn_per_s")
        figure = f"p99 {p99 / 1000:.1f} ms at {rate:.0f} conn/s{_bound(runs[0])}"
        out.append(_judge(target, p99 <= CONNECT_P99_US and rate >= 0.95 * 750, figure))
    return out


def echo_targets(results: dict[str, Any]) -> list[Verdict]:
    """Echo overhead ≤ 10 %: wsgate's CPU per message ≤ 1.10× a bare echo's on the same loop, in every echo
    cell: picows's (the library wsgate's WebSockets run on), or aiohttp's in a run from before picows."""
    out = []
    for cell in ECHO_CELLS:
        bare_name = "picows" if (results.get(cell) or {}).get("picows") else "aiohttp"
        target = f"echo overhead {cell.removeprefix('echo ')}: CPU/msg ≤ 1.10× bare {bare_name}"
        runs = _runs(results, cell, "wsgate", bare_name)
        if runs is None:
            out.append(Verdict(target, NOT_MEASURED, ""))
            continue
        ours, bare = runs
        cpu = _median(ours, "server_cpu_us_per_op") / _median(bare, "server_cpu_us_per_op")
        out.append(_judge(target, cpu <= ECHO_CPU_RATIO, f"CPU ×{cpu:.2f}"))
    return out


def soak_target(results: dict[str, Any]) -> Verdict:
    """Churn soak: the gateway's RSS at minute 10 within 10 % of minute 1 (a shorter soak is reported but
    judges nothing: not measured)."""
    target = "churn soak: RSS at minute 10 ≤ 1.10× minute 1"
    soak = results.get("soak")
    if not soak:
        return Verdict(target, NOT_MEASURED, "")
    figure = (
        f"×{soak['rss_ratio']:.3f} ({soak['rss_minute_1'] / 2**20:.0f} → "
        f"{soak['rss_minute_n'] / 2**20:.0f} MiB at minute {soak['minutes']})"
    )
    if soak["minutes"] < 10:
        return Verdict(target, NOT_MEASURED, figure + ", too short")
    return _judge(target, soak["rss_ratio"] <= SOAK_RSS_RATIO, figure)


def evaluate(results: dict[str, Any]) -> list[Verdict]:
    """Every issue-13 target, in the issue's order."""
    return [
        *proxy_targets(results),
        idle_target(results),
        *connect_targets(results),
        *echo_targets(results),
        soak_target(results),
    ]


def table(verdicts: list[Verdict]) -> str:
    width = max(len(v.target) for v in verdicts)
    lines = ["issue 13 targets:"]
    lines += [f"  {v.target:{width}}  {v.status:12}  {v.figure}".rstrip() for v in verdicts]
    return "\n".join(lines)


if __name__ == "__main__":
    saved = json.loads(Path(sys.argv[1]).read_text())
    print(table(evaluate(saved["results"])))
