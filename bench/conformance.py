"""Autobahn|Testsuite against ``wsgate run``: RFC 6455 and permessage-deflate conformance (not part of CI).

    .venv/bin/python bench/conformance.py                  # 1.*-7.*, 9.*, 12.*, 13.*
    .venv/bin/python bench/conformance.py --cases '12.*,13.*'

autobahntestsuite is Python 2 code: this sets up its own environment once, under
``$XDG_CACHE_HOME/wsgate-autobahn`` (``--cache``), from pyenv's Python 2.7 (or ``--python2``) and the pins of
the sdist's ``requires.txt``. It then starts the gateway from this checkout's ``src/`` with an ``echo`` service
that has ``ws.compression: permessage-deflate``, runs ``wstest -m fuzzingclient`` against it, prints one line
per case group (OK / NON-STRICT / INFORMATIONAL / UNIMPLEMENTED / FAILED counts) and exits 1 if any case
FAILED. The full HTML report stays in the run directory (``--out``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from harness import PYTHON, free_port, wait_port

REPO = Path(__file__).resolve().parent.parent
SUITE = "autobahntestsuite==25.10.1"
VIRTUALENV = "virtualenv==20.21.1"  # the last release that still makes Python 2 environments
CASES = "1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,12.*,13.*"
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")

TWO_SERVICES = """\
service:
  - name: deflate
    accept: ws://127.0.0.1:{port}/deflate
    type: echo
    accept-options:
      ws.compression: permessage-deflate
  - name: plain
    accept: ws://127.0.0.1:{port}/plain
    type: echo
"""

CONFIG = """\
service:
  - name: echo
    accept: ws://127.0.0.1:{port}/echo
    type: echo
    accept-options:
      ws.maximum.message.size: 16M     # case group 9 sends messages of up to 16 MiB
      ws.compression: permessage-deflate
      ws.compression.context.takeover: {takeover}
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wsgate-autobahn"


def find_python2(given: str | None) -> str:
    """pyenv's 2.7 (``pyenv root``/versions/2.7.*), else ``python2.7`` on PATH."""
    if given:
        return given
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        root = str(Path.home() / ".pyenv")
    found = sorted(glob.glob(f"{root}/versions/2.7*/bin/python2.7"))
    if found:
        return found[-1]
    for path in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(path) / "python2.7"
        if candidate.is_file() and "shims" not in path:
            return str(candidate)
    sys.exit("no Python 2.7 found: install one with `pyenv install 2.7.18`, or pass --python2 PATH")


def step(args: list[str], **kwargs: object) -> None:
    print("  $", " ".join(args), flush=True)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]


def ensure_wstest(cache: Path, python2: str | None) -> Path:
    """``wstest`` in a Python 2.7 virtualenv under ``cache``, made once."""
    wstest = cache / "venv27" / "bin" / "wstest"
    if wstest.exists():
        return wstest
    print(f"setting up autobahntestsuite under {cache} (once)")
    cache.mkdir(parents=True, exist_ok=True)
    tools = cache / "tools"
    step([PYTHON, "-m", "venv", str(tools)])
    step([str(tools / "bin" / "pip"), "install", "-q", VIRTUALENV])
    step([str(tools / "bin" / "virtualenv"), "-q", "-p", find_python2(python2), str(cache / "venv27")])
    download = cache / "dl"
    step(
        [str(tools / "bin" / "pip"), "download", "-q", "--no-deps", "--no-binary", ":all:", SUITE, "-d", str(download)]
    )
    sdist = next(download.glob("autobahntestsuite-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        archive.extractall(download, filter="data")
    requires = next(download.glob("autobahntestsuite-*/autobahntestsuite.egg-info/requires.txt"))
    pip27 = str(cache / "venv27" / "bin" / "pip")
    step([pip27, "install", "-q", "--disable-pip-version-check", "-r", str(requires), str(sdist)])
    return wstest


def start_gateway(folder: Path, port: int, text: str) -> subprocess.Popen[bytes]:
    config = folder / "gateway.yaml"
    config.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    log = (folder / "gateway.log").open("wb")
    process = subprocess.Popen(
        [PYTHON, "-m", "wsgate", "run", str(config), "--log-level", "warning"], env=env, stdout=log, stderr=log
    )
    wait_port(port, 20)
    return process


def run_suite(wstest: Path, folder: Path, port: int, cases: list[str], agent: str) -> dict[str, str]:
    """Case id → behaviour (the worse of the case's behaviour and its closing behaviour)."""
    spec = {
        "outdir": str(folder / "reports"),
        "servers": [{"agent": agent, "url": f"ws://127.0.0.1:{port}/echo"}],
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    (folder / "fuzzingclient.json").write_text(json.dumps(spec))
    with (folder / "wstest.log").open("wb") as log:
        subprocess.run(
            [str(wstest), "-m", "fuzzingclient", "-s", "fuzzingclient.json"],
            cwd=folder,
            stdout=log,
            stderr=log,
            check=True,
        )
    index = json.loads((folder / "reports" / "index.json").read_text())[agent]
    rank = {verdict: i for i, verdict in enumerate(VERDICTS)}
    results = {}
    for case, result in index.items():
        verdicts = [result["behavior"], result.get("behaviorClose", "OK")]
        results[case] = max(verdicts, key=lambda v: rank.get(v, len(VERDICTS)))
    return results


def answer_to_offer(port: int, path: str) -> str | None:
    """The ``Sec-WebSocket-Extensions`` of the 101 to an upgrade offering permessage-deflate (None: not answered)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    if " 101 " not in lines[0] + " ":
        raise RuntimeError(f"{path}: {lines[0]}")
    found = [
        line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("sec-websocket-extensions:")
    ]
    return found[0] if found else None


def negotiation_target() -> tuple[bool, str]:
    """The issue's "permessage-deflate negotiable per service (off by default)", checked on a real gateway
    (no Python 2 needed): a service with ``ws.compression`` answers the offer, one without does not."""
    folder = Path(tempfile.mkdtemp(prefix="wsgate-deflate-"))
    port = free_port()
    gateway = start_gateway(folder, port, TWO_SERVICES.format(port=port))
    try:
        on, off = answer_to_offer(port, "/deflate"), answer_to_offer(port, "/plain")
    finally:
        gateway.terminate()
        gateway.wait(10)
    met = on is not None and on.startswith("permessage-deflate") and off is None
    return met, f"ws.compression service answers {on!r}; service without it answers {off!r}"


def summary(results: dict[str, str]) -> list[str]:
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for case, verdict in results.items():
        groups[case.split(".")[0]][verdict] += 1
    lines = []
    for group in sorted(groups, key=int):
        counts = groups[group]
        parts = [f"{counts[v]} {v}" for v in VERDICTS if counts[v]]
        lines.append(f"  {group + '.*':6} {sum(counts.values()):4} cases: {', '.join(parts)}")
    failed = sorted(case for case, verdict in results.items() if verdict == "FAILED")
    if failed:
        lines.append(f"  FAILED: {', '.join(failed)}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=CASES, help=f"comma-separated case patterns (default {CASES})")
    parser.add_argument("--cache", type=Path, default=cache_dir(), help="where the Python 2 environment lives")
    parser.add_argument("--python2", help="a Python 2.7 interpreter (default: pyenv's)")
    parser.add_argument(
        "--takeover",
        choices=("enabled", "disabled"),
        default="disabled",
        help="ws.compression.context.takeover of the echo service (default disabled)",
    )
    parser.add_argument("--out", type=Path, help="keep the run directory (reports/index.html) here")
    parser.add_argument(
        "--negotiation-only",
        action="store_true",
        help="only check the 101s of a service with and one without ws.compression (no Autobahn)",
    )
    args = parser.parse_args()
    if args.negotiation_only:
        met, detail = negotiation_target()
        print(f"permessage-deflate negotiable per service, off by default: {'met' if met else 'NOT MET'} ({detail})")
        return 0 if met else 1
    wstest = ensure_wstest(args.cache, args.python2)
    folder = args.out or Path(tempfile.mkdtemp(prefix="wsgate-autobahn-"))
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    gateway = start_gateway(folder, port, CONFIG.format(port=port, takeover=args.takeover))
    started = time.monotonic()
    try:
        results = run_suite(wstest, folder, port, args.cases.split(","), f"wsgate-deflate-takeover-{args.takeover}")
    finally:
        gateway.terminate()
        try:
            gateway.wait(10)
        except subprocess.TimeoutExpired:
            gateway.kill()
    print(
        f"Autobahn fuzzingclient vs wsgate echo (ws.compression permessage-deflate, context.takeover "
        f"{args.takeover}): {len(results)} cases in {time.monotonic() - started:.0f} s; report {folder}/reports"
    )
    print("\n".join(summary(results)))
    return 1 if "FAILED" in results.values() else 0


if __name__ == "__main__":
    sys.exit(main())
