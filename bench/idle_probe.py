"""Where the bytes of one idle authenticated wss connection go (bench/README.md, "Memory per idle connection").

``python bench/idle_probe.py --conns 2000`` runs the bench's gateway config **in this process** (uvloop +
aiofastnet, as ``wsgate run``) and holds ``--conns`` JWT-authenticated wss connections to its echo service,
opened by ``load.py idle`` in a child process. It prints per connection:

- ``rss``: this process's resident memory after minus before (what the idle scenario measures);
- ``heap``: glibc's ``mallinfo2`` bytes in use (Python's small objects sit in arenas of their own and are
  not in it; OpenSSL's, aiofastnet's and picows's buffers are);
- ``python``: what tracemalloc counts (``--trace``; tracing costs memory of its own, so ``rss`` is only
  meaningful without it), with the largest allocation sites;
- ``objects``: gc-tracked objects by type (the count per connection).

Before the connections are measured the heap is frozen as ``wsgate run`` does (``cli.tune_gc``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from harness import Server, free_port, tree_rss  # noqa: E402
from run import BARE_PICOWS, PYTHON, Bench, raise_fd_limit  # noqa: E402

from wsgate.transport.listener import TLS_BIO_SIZE  # noqa: E402


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not taken back (0 where mallinfo2 is missing)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return 0
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def malloc_trim() -> None:
    """Give free pages inside glibc's heap back to the kernel (``malloc_trim(0)``)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def sessions_cached(context: Any) -> int:
    """How many sessions ``context``'s (an ``ssl.SSLContext``) server-side cache holds (``SSL_CTX_sess_number``)."""
    import _ssl

    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value  # PySSLContext's SSL_CTX *
    control = ctypes.CDLL(_ssl.__file__).SSL_CTX_ctrl
    control.restype, control.argtypes = ctypes.c_long, [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    return int(control(pointer, 20, 0, None))  # SSL_CTRL_SESS_NUMBER


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def resident_by_mapping() -> Counter[str]:
    """Resident bytes of glibc's heap (``[heap]``), anonymous mappings (Python's arenas, large mallocs) and
    the rest, from /proc/self/smaps."""
    totals: Counter[str] = Counter()
    kind = "other"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:
            name = fields[5] if len(fields) > 5 else ""
            kind = "heap" if name == "[heap]" else "anon" if not name else "other"
        elif fields and fields[0] == "Rss:":
            totals[kind] += int(fields[1]) * 1024
    return totals


def objects_by_type() -> Counter[str]:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def explain(name: str, baseline: Counter[str]) -> None:
    """Print what holds the newest object of type ``name`` (two levels of referrers)."""
    found = [o for o in gc.get_objects() if type(o).__qualname__ == name]
    if not found:
        return
    target = found[-1]
    print(f"  {name}: {str(target)[:200]}")
    for holder in gc.get_referrers(target):
        if holder is found:
            continue
        print(f"    held by {type(holder).__qualname__}: {str(holder)[:160]}")
        for outer in gc.get_referrers(holder):
            if outer is found or isinstance(outer, list) and len(outer) > 100:
                continue
            print(f"      held by {type(outer).__qualname__}: {str(outer)[:160]}")


async def probe(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    from wsgate.catalog import load_config
    from wsgate.cli import tune_gc
    from wsgate.gateway import Gateway

    os.chdir(bench.work)
    if args.bio:
        import wsgate.transport.listener

        wsgate.transport.listener.TLS_BIO_SIZE = args.bio
    if args.bare:  # the floor in this process: a bare picows wss echo, as BARE_PICOWS runs it
        namespace: dict[str, Any] = {}
        exec(BARE_PICOWS.split("async def main")[0], namespace)  # the Echo listener only
        import ssl

        from picows import ws_create_server

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(bench.cert, bench.key)
        if args.tickets is not None:
            context.num_tickets = args.tickets
        port = free_port()
        size = args.bio or TLS_BIO_SIZE
        tls = {} if args.plain else {"ssl": context, "ssl_incoming_bio_size": size, "ssl_outgoing_bio_size": size}
        server = await ws_create_server(
            lambda _request: namespace["Echo"](), "127.0.0.1", port, read_buffer_init_size=2048, **tls
        )
        url = f"{'ws' if args.plain else 'wss'}://127.0.0.1:{port}/"
    else:
        gateway = Gateway(load_config(bench.config))
        await gateway.start()
        url = bench.urls()["wsgate-secure-echo"]
    tune_gc()
    command = [str(Path(__file__).parent / "load.py"), "idle", url, "--conns", str(args.conns)]
    command += ["--concurrency", "16", "--ca", bench.ca, "--token", bench.token]
    client = await asyncio.create_subprocess_exec(
        PYTHON, *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert client.stdout is not None and client.stdin is not None
    # A few connections first, so lazily built things (caches, the first TLS session) are in the baseline.
    await asyncio.sleep(0)
    gc.collect()
    before = {"rss": rss(), "heap": heap_in_use(), "objects": objects_by_type(), "maps": resident_by_mapping()}
    if args.trace:
        tracemalloc.start(args.frames)
    report = json.loads(await client.stdout.readline())
    await asyncio.sleep(1)
    gc.collect()
    snapshot = tracemalloc.take_snapshot() if args.trace else None
    traced = tracemalloc.get_traced_memory()[0] if args.trace else 0
    after = {"rss": rss(), "heap": heap_in_use(), "objects": objects_by_type(), "maps": resident_by_mapping()}
    tracemalloc.stop()
    for name in args.why or ():
        explain(name, before["objects"])
    malloc_trim()
    trimmed = rss()
    client.stdin.write(b"ping\n")
    await client.stdin.drain()
    pongs = json.loads(await client.stdout.readline())
    await client.wait()
    if args.bare:
        print("  OpenSSL's server session cache holds", sessions_cached(context), "sessions")
        server.close()
    else:
        await gateway.stop(2.0)
    n = max(report["opened"], 1)
    result: dict[str, Any] = {
        "opened": report["opened"],
        "failures": report["failures"],
        "pongs": pongs["pongs"],
        "rss_per_conn": (after["rss"] - before["rss"]) / n,
        "heap_per_conn": (after["heap"] - before["heap"]) / n,
        "trimmed_per_conn": (trimmed - before["rss"]) / n,
        "resident_per_conn": {k: (after["maps"][k] - before["maps"][k]) / n for k in ("heap", "anon", "other")},
    }
    grown = after["objects"] - before["objects"]
    result["objects"] = {name: round(count / n, 2) for name, count in grown.most_common(25) if count >= n / 2}
    if snapshot is not None:
        result["python_per_conn"] = traced / n
        stats = snapshot.statistics("traceback" if args.frames > 1 else "lineno")
        sites = []
        for stat in stats[: args.top]:
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback)
            sites.append((round(stat.size / n), round(stat.count / n, 2), where))
        result["sites"] = sites
    return result


def floor(args: argparse.Namespace, bench: Bench) -> float:
    """RSS per idle connection of a bare picows wss echo (uvloop + aiofastnet, wsgate's TLS buffer size):
    what is left once wsgate's own objects are gone."""
    import subprocess

    port = free_port()
    command = [PYTHON, "-c", BARE_PICOWS, str(port), bench.cert, bench.key, str(args.bio or TLS_BIO_SIZE)]
    with Server("picows", command, port) as server:
        assert server.process is not None
        before = tree_rss(server.process.pid)
        url = f"wss://127.0.0.1:{port}/"
        client = [PYTHON, str(Path(__file__).parent / "load.py"), "idle", url, "--conns", str(args.conns)]
        client += ["--concurrency", "16", "--ca", bench.ca]
        with subprocess.Popen(client, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as load:
            assert load.stdout is not None and load.stdin is not None
            report = json.loads(load.stdout.readline())
            import time

            time.sleep(1)
            after = tree_rss(server.process.pid)
            load.stdin.write("ping\n")
            load.stdin.flush()
            pongs = json.loads(load.stdout.readline())
    per = (after - before) / max(report["opened"], 1)
    print(
        f"floor: bare picows wss echo, {report['opened']} open, {pongs['pongs']} answered a ping: RSS {per / 1024:.1f} KiB/conn"
    )
    return per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--trace", action="store_true", help="count Python allocations (tracemalloc)")
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames per allocation site")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--bare", action="store_true", help="a bare picows wss echo in this process instead")
    parser.add_argument("--plain", action="store_true", help="--bare: ws:// (no TLS)")
    parser.add_argument("--tickets", type=int, help="--bare: TLS 1.3 session tickets sent per connection")
    parser.add_argument("--floor", action="store_true", help="measure a bare picows wss echo instead")
    parser.add_argument("--why", action="append", help="print what holds an object of this type (repeatable)")
    parser.add_argument(
        "--bio", type=int, help="aiofastnet's TLS buffer size each way (transport.listener.TLS_BIO_SIZE)"
    )
    args = parser.parse_args()
    raise_fd_limit()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"wsgate-probe-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work, argparse.Namespace())
    if args.floor:
        floor(args, bench)
        return 0
    from wsgate.cli import new_event_loop

    loop = new_event_loop("auto")
    try:
        result = loop.run_until_complete(probe(args, bench))
    finally:
        loop.close()
    print(
        f"{result['opened']} open ({result['failures']} failed), {result['pongs']} answered a ping: "
        f"RSS {result['rss_per_conn'] / 1024:.1f} KiB/conn, malloc heap {result['heap_per_conn'] / 1024:.1f} KiB/conn, "
        f"RSS after malloc_trim {result['trimmed_per_conn'] / 1024:.1f} KiB/conn"
        + (f", Python (tracemalloc) {result['python_per_conn'] / 1024:.1f} KiB/conn" if args.trace else "")
    )
    print("  resident by mapping (KiB/conn):", {k: round(v / 1024, 1) for k, v in result["resident_per_conn"].items()})
    for size, count, where in result.get("sites", []):
        print(f"  {size:6d} B {count:5.2f}×  {where}")
    print("  objects per connection:", ", ".join(f"{k} {v}" for k, v in result["objects"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
