"""bench/targets.py judges issue 13's targets from a run's results: met, not met, or not measured."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_targets", BENCH / "targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


targets = _load()


def run(msg_per_s: float, cpu_us: float, **extra: float) -> dict[str, float]:
    return {"msg_per_s": msg_per_s, "server_cpu_us_per_op": cpu_us, "client_cpu_share": 0.5, **extra}


def by_target(results: dict[str, Any]) -> dict[str, Any]:
    return {verdict.target: verdict for verdict in targets.evaluate(results)}


def test_an_empty_run_measures_nothing() -> None:
    verdicts = targets.evaluate({})
    assert len(verdicts) == 13
    assert {v.status for v in verdicts} == {"not measured"}
    assert "not measured" in targets.table(verdicts)


def test_proxy_cells_are_judged_against_nginx_and_websockify() -> None:
    cell = {
        "wsgate": [run(30_000, 20.0), run(32_000, 21.0), run(31_000, 19.0)],
        "nginx": [run(30_000, 22.0)],
        "websockify": [run(7_000, 100.0)],
    }
    verdicts = by_target({"proxy 32B c=100": cell, "proxy 32B c=1": {**cell, "nginx": [run(40_000, 18.0)]}})
    assert verdicts["P1 proxy 32B c=100: CPU/msg ≤ nginx, msg/s ≥ nginx"].status == "met"
    assert verdicts["P1 proxy 32B c=100: msg/s ≥ 4× websockify"].status == "met"
    slower = verdicts["P1 proxy 32B c=1: CPU/msg ≤ nginx, msg/s ≥ nginx"]
    assert slower.status == "not met"
    assert "CPU ×1.11" in slower.figure and "msg/s ×0.78" in slower.figure
    assert verdicts["P1 proxy 16384B c=1: CPU/msg ≤ nginx, msg/s ≥ nginx"].status == "not measured"


def test_idle_needs_fifty_thousand_pinged_connections_under_twenty_kib() -> None:
    idle = {"opened": 50_000, "pongs": 50_000, "rss_per_conn": 19 * 1024, "failures": 0}
    assert targets.idle_target({"idle": idle}).status == "met"
    assert targets.idle_target({"idle": {**idle, "pongs": 49_999}}).status == "not met"
    assert targets.idle_target({"idle": {**idle, "rss_per_conn": 21 * 1024}}).status == "not met"
    fewer = targets.idle_target({"idle": {**idle, "opened": 10_000, "pongs": 10_000}})
    assert fewer.status == "not met" and "only 10000" in fewer.figure


def test_connect_cpu_and_p99_at_the_fixed_rate() -> None:
    results = {
        "connect max (16 in flight)": {"wsgate": [run(0, 600.0, conn_per_s=900)]},
        "connect at 750/s": {"wsgate": [run(0, 500.0, conn_per_s=750, p99_us=25_000)]},
    }
    cpu, p99 = targets.connect_targets(results)
    assert (cpu.status, p99.status) == ("met", "not met")
    results["connect at 750/s"]["wsgate"][0]["client_cpu_share"] = 0.95
    assert "client-bound" in targets.connect_targets(results)[1].figure


def test_echo_overhead_allows_ten_percent() -> None:
    results = {
        "echo 32B c=1": {"wsgate": [run(1, 11.0)], "aiohttp": [run(1, 10.0)]},
        "echo 32B c=100": {"wsgate": [run(1, 11.2)], "aiohttp": [run(1, 10.0)]},
    }
    statuses = [v.status for v in targets.echo_targets(results)]
    assert statuses == ["met", "not met", "not measured", "not measured"]


def test_echo_overhead_is_judged_against_bare_picows_where_it_ran() -> None:
    results = {"echo 32B c=1": {"wsgate": [run(1, 11.0)], "picows": [run(1, 9.0)], "aiohttp": [run(1, 12.0)]}}
    (verdict, *_) = targets.echo_targets(results)
    assert verdict.target.endswith("bare picows") and verdict.status == targets.NOT_MET  # ×1.22 picows's


def test_soak_judges_the_ratio_only_after_ten_minutes() -> None:
    soak = {"minutes": 10, "rss_ratio": 1.08, "rss_minute_1": 100 * 2**20, "rss_minute_n": 108 * 2**20}
    assert targets.soak_target({"soak": soak}).status == "met"
    assert targets.soak_target({"soak": {**soak, "rss_ratio": 1.2}}).status == "not met"
    assert targets.soak_target({"soak": {**soak, "minutes": 1}}).status == "not measured"
