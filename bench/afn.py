"""What a multi-certificate (SNI) wss listener costs on aiofastnet (bench/README.md, "aiofastnet").

aiofastnet 1.2.0 segfaults when a server context has an ``sni_callback`` (bench/upstream/aiofastnet-1.py).
The same gateway is measured with a one-certificate keystore, with a two-certificate keystore (the second
for another host name; the certificate chosen from the peeked ClientHello, transport/sni.py), and with the
same two certificates chosen in OpenSSL's SNI callback on aiofastnet's stdlib engine (the pre-read switched
off in the bench's process only), everything else equal: wss echo with the bench's JWT realm, server CPU per
message and per new connection, the variants alternated round by round.

    python bench/run.py --scenarios afn --rounds 5 --duration 3
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from harness import PYTHON, Server

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
