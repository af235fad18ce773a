"""Real network separation for the layered-DMZ tests: four Linux network namespaces made by the test.

Layout (every address lives inside a namespace the test made; nothing is added to the host namespace, and
each namespace has its own stack, so parallel runs reuse the same addresses without clashing)::

    client 10.231.1.1 ──veth── 10.231.1.2 dmz 10.231.2.2 ──veth── 10.231.2.1 internal 10.231.3.1 ──veth── 10.231.3.2 backend

Only connected routes exist and no namespace forwards (``ip_forward`` 0 everywhere), so: client ↔ dmz,
internal ↔ dmz, internal ↔ backend, and nothing else (client and dmz have no route to the backend subnet; the
backend has none to the dmz or the client). The internal namespace runs nftables with ``policy drop`` on input:
loopback and established/related traffic pass, every other inbound packet is dropped and counted
(``dropped_inbound()``), so the internal gateway can only dial *out* (to the DMZ and the back end).

Use the session fixture ``dmz_topology`` (registered in tests/conftest.py) or
``with Topology() as topology:`` in a script. Processes started in a namespace (``popen``, ``gateway``,
``backend_echo``) run the Python of this venv with ``PYTHONPATH=<this checkout>/src``, so a worktree's code is
what runs; their output goes to files under ``topology.folder`` (``.log()``) for failure reports. Sockets can
also be made in a namespace from the test process itself (``socket()``, ``listen()``, ``connector()`` for aiohttp).

The parts, for the DMZ tests: ``gateway(ns, config)`` (gets ``${netns.dmz}``, ``${netns.dmz.tunnel}``,
``${netns.backend}`` … as properties; ``.listening()``, ``.wait_log()``, ``.stop()``, ``.kill()``,
``.restart()``), ``backend_echo()`` (tcp or ws, optional TLS and flood; ``.connections()`` shows what reached
it, an injected identity line or headers included), ``client_ws()`` / ``client_ws_background()`` (aiohttp in
the client namespace, JSON result), ``dial()`` / ``can_connect()`` / ``wait_port()``, ``dropped_inbound()``,
and ``write_tls(topology, ca, folder)`` for certificates naming the topology's addresses.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
"""The checkout these tests belong to: its ``src`` is what namespace processes import."""
SRC = ROOT / "src"
TESTS = ROOT / "tests"
IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
PREFIX = "wsgdmz"
"""Namespace names are ``wsgdmz-<pid>-<random>-<role>``: unique per run, and a dead run's are recognisable."""
_NAME = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-z]+-(client|dmz|internal|backend)$")

ROLES = ("client", "dmz", "internal", "backend")
LINKS = (
    # (namespace, interface, address), (peer namespace, interface, address); every link is a /30
    (("client", "to-dmz", "10.231.1.1"), ("dmz", "to-client", "10.231.1.2")),
    (("internal", "to-dmz", "10.231.2.1"), ("dmz", "to-internal", "10.231.2.2")),
    (("internal", "to-backend", "10.231.3.1"), ("backend", "to-internal", "10.231.3.2")),
)
FIREWALL_TABLE = "wsgate_dmz_test"
FIREWALL = f"""
table inet {FIREWALL_TABLE} {{
    counter inbound_dropped {{ }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        counter name "inbound_dropped" drop
    }}
}}
"""
_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


def missing_tools() -> str | None:
    """Why namespaces cannot be made here (not root, ``ip``/``nft`` missing), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs make test as root)"
    for tool in (IP, NFT):
        if not Path(tool).exists():
            return f"{tool} not installed (make test installs iproute2 and nftables)"
    return None


def _sh(argv: Sequence[str], timeout: float = 10.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespaces() -> list[str]:
    """Every named network namespace on the machine (``ip netns list``)."""
    out = _sh([IP, "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _namespace_pids(name: str) -> list[int]:
    out = _sh([IP, "netns", "pids", name], check=False).stdout
    ours = {os.getpid(), os.getppid()}
    return [int(pid) for pid in out.split() if pid.isdigit() and int(pid) not in ours]


def _delete_namespace(name: str) -> None:
    """Kill what still runs inside (only processes in a namespace a test made), then delete it."""
    for pid in _namespace_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _sh([IP, "netns", "delete", name], check=False)


def remove_leftovers() -> list[str]:
    """Delete the namespaces of runs whose process is gone (a killed pytest leaves them); returns their names."""
    removed = []
    for name in namespaces():
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            _delete_namespace(name)
            removed.append(name)
    return removed


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of namespace processes: this checkout's ``src`` first on ``PYTHONPATH``."""
    env = dict(os.environ)
    paths = [str(SRC)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SRC)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class NsProcess:
    """A process running in a namespace, in its own process group; stdout and stderr go to ``log_path``."""

    def __init__(self, topology: Topology, ns: str, argv: Sequence[str], log_path: Path, **kw: Any) -> None:
        self.topology = topology
        self.ns = ns
        self.argv = list(argv)
        self.log_path = log_path
        self.kw = kw
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> NsProcess:
        """Start (again): the log is appended to; ``log(since_start=True)`` shows only this run's part."""
        if self.running:
            raise RuntimeError(f"{self} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        kw = dict(self.kw)
        kw.setdefault("env", python_env())
        kw.setdefault("cwd", str(self.topology.folder))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [IP, "netns", "exec", self.topology.name(self.ns), *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kw,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def log(self, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        return data[self._log_offset :].decode(errors="replace") if since_start else data.decode(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[re.Match[str]]:
        """Wait until this run's log has ``count`` matches of ``pattern``; fails with the log if the process ends."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.MULTILINE)
        while True:
            found = list(regex.finditer(self.log(since_start=True)))
            if len(found) >= count:
                return found
            if not self.running:
                raise RuntimeError(f"{self} exited ({self.returncode}) before {pattern!r}:\n{self.log(True)[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self}: no {pattern!r} within {timeout} s:\n{self.log(True)[-4000:]}")
            time.sleep(0.02)

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM to the group, SIGKILL after ``timeout``; returns the exit code."""
        if self.process is None:
            return None
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to the group: an end with no goodbye."""
        if self.process is not None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)

    def restart(self, timeout: float = 5.0) -> NsProcess:
        self.stop(timeout)
        return self.start()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.ns} pid={self.pid} {' '.join(self.argv[:4])}>"


class GatewayProcess(NsProcess):
    """``wsgate run CONFIG`` in a namespace (``--grace`` short so a stop takes a moment, not 10 s)."""

    def listening(self, count: int = 1, timeout: float = 15.0) -> list[tuple[str, str, int]]:
        """Wait for ``count`` "listening on" lines of this run: (scheme, host, port) each."""
        found = self.wait_log(r"listening on (\w+)://([^\s:]+|\*):(\d+)", timeout, count)
        return [(m.group(1), m.group(2), int(m.group(3))) for m in found]

    def start(self) -> GatewayProcess:
        super().start()
        return self

    def restart(self, timeout: float = 5.0) -> GatewayProcess:
        self.stop(timeout)
        return self.start()


class BackendProcess(NsProcess):
    """tests/netns_backend.py in the backend namespace: an echo that records what each connection sent.

    ``connections()`` reads its record: one dict per connection, in order, with ``peer``, ``first`` (the first
    bytes received, latin-1 text, up to 4 KiB: an injected identity shows here), ``received`` and ``sent``
    byte counts (updated every 0.1 s while they change), ``closed``; for ``kind="ws"`` also ``path``,
    ``headers`` (the upgrade request's) and ``messages`` (the first 100, text)."""

    def __init__(
        self,
        topology: Topology,
        ns: str,
        kind: str,
        port: int,
        flood: int,
        tls: Path | None,
        log_path: Path,
        **kw: Any,
    ) -> None:
        super().__init__(topology, ns, [], log_path, **kw)
        self.kind, self.flood, self.tls = kind, flood, tls
        self.host = topology.addr(ns)
        self.port = port
        self.record = log_path.with_suffix(".jsonl")

    @property
    def address(self) -> str:
        """``host:port`` (what a gateway's ``connect`` names, after ``tcp://`` or ``ws://``)."""
        return f"{self.host}:{self.port}"

    def start(self) -> BackendProcess:
        """Start (again, on the same port: a restart keeps the port a first start on port 0 was given) and wait
        until it listens."""
        script = str(TESTS / "netns_backend.py")
        self.argv = [sys.executable, script, self.kind, self.host, str(self.port), str(self.record), str(self.flood)]
        self.argv.append(str(self.tls) if self.tls else "-")
        super().start()
        try:
            ready = self.wait_log(r"backend ready \w+ [\d.]+:(\d+)", timeout=10.0)
        except BaseException:
            self.stop()
            raise
        self.port = int(ready[0].group(1))
        return self

    def restart(self, timeout: float = 5.0) -> BackendProcess:
        self.stop(timeout)
        return self.start()

    def connections(self) -> list[dict[str, Any]]:
        merged: dict[int, dict[str, Any]] = {}
        if self.record.exists():
            for line in self.record.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    merged.setdefault(event["id"], {"received": 0, "sent": 0, "closed": False}).update(event)
        return [merged[key] for key in sorted(merged)]

    def wait_connections(self, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` connections have sent their first bytes (or upgrade request)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = [c for c in self.connections() if "first" in c or "headers" in c]
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"back end saw {len(seen)} of {count} connection(s):\n{self.log()[-2000:]}")
            time.sleep(0.02)

    def wait_closed(self, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` connections have ended: their ``received``/``sent`` are then final."""
        deadline = time.monotonic() + timeout
        while True:
            ended = [c for c in self.connections() if c["closed"]]
            if len(ended) >= count:
                return ended
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ended)} of {count} back-end connection(s) ended:\n{self.log()[-2000:]}")
            time.sleep(0.02)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns_call(path: str, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` on a fresh thread moved into the network namespace at ``path``: sockets it creates belong there
    for good, whichever thread uses them later (setns of a network namespace is per thread; the test process
    itself never moves)."""
    libc = _libc()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns {path}: {os.strerror(code)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns {path}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


class Topology:
    """The four namespaces and their links; ``start()``/``close()`` or ``with``. ``firewall=False`` leaves the
    internal namespace open (a scratch topology proving the firewall is what blocks the dial)."""

    def __init__(self, folder: Path | None = None, firewall: bool = True) -> None:
        self.run_id = f"{os.getpid()}-{secrets.token_hex(3)}"
        self._own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="wsgate-netns-")) if folder is None else folder
        self.firewall_enabled = firewall
        self.processes: list[NsProcess] = []
        self.created: list[str] = []
        self._counter = 0

    # -- life cycle ------------------------------------------------------------------------------------------

    def name(self, ns: str) -> str:
        """The real namespace name of role ``ns`` (client, dmz, internal, backend)."""
        if ns not in ROLES:
            raise ValueError(f"no namespace {ns!r}: one of {', '.join(ROLES)}")
        return f"{PREFIX}-{self.run_id}-{ns}"

    def start(self) -> Topology:
        reason = missing_tools()
        if reason:
            raise RuntimeError(reason)
        remove_leftovers()
        self.folder.mkdir(parents=True, exist_ok=True)
        atexit.register(self.close)
        try:
            for role in ROLES:
                _sh([IP, "netns", "add", self.name(role)])
                self.created.append(self.name(role))
                self._ip(role, "link", "set", "lo", "up")
                # no namespace routes for another: the links are the only paths
                self.run(role, ["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"], check=True, python=False)
            for (ns_a, if_a, addr_a), (ns_b, if_b, addr_b) in LINKS:
                self._ip(ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", self.name(ns_b))
                for ns, interface, address in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
                    self._ip(ns, "addr", "add", f"{address}/30", "dev", interface)
                    self._ip(ns, "link", "set", interface, "up")
            if self.firewall_enabled:
                self.set_firewall(True)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every process (bounded), then delete the namespaces (their veths and rules go with them)."""
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop(timeout=3.0)
        for name in self.created:
            _delete_namespace(name)
        self.created.clear()
        atexit.unregister(self.close)
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ip(self, ns: str, *args: str) -> None:
        _sh([IP, "-n", self.name(ns), *args])

    # -- addresses and reachability --------------------------------------------------------------------------

    def addr(self, ns: str, facing: str | None = None) -> str:
        """The address of ``ns`` on its link to ``facing``. Defaults: client and dmz → their client↔dmz link
        (the address clients dial is ``addr("dmz")``), internal → its link to the dmz (the DMZ sees the tunnel
        coming from there), backend → its link to internal (``addr("backend")`` is what the internal gateway
        dials). The DMZ's address for the internal gateway is ``addr("dmz", facing="internal")``."""
        default = {"client": "dmz", "dmz": "client", "internal": "dmz", "backend": "internal"}
        peer = facing or default.get(ns)
        for (ns_a, _, addr_a), (ns_b, _, addr_b) in LINKS:
            if (ns_a, ns_b) == (ns, peer):
                return addr_a
            if (ns_b, ns_a) == (ns, peer):
                return addr_b
        raise ValueError(f"no link between {ns!r} and {peer!r}")

    def socket(
        self, ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        """A socket made inside ``ns`` (it keeps that namespace whichever thread or loop uses it)."""
        self.name(ns)
        return _setns_call(f"/run/netns/{self.name(ns)}", lambda: socket.socket(family, kind, proto))

    def listen(self, ns: str, host: str, port: int = 0, backlog: int = 100) -> socket.socket:
        """A listening socket in ``ns`` (``asyncio.start_server(sock=...)`` serves it from the test process)."""
        sock = self.socket(ns)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        return sock

    def connector(self, ns: str, **kw: Any) -> Any:
        """An aiohttp ``TCPConnector`` whose connections start inside ``ns`` (an in-process client)."""
        import aiohttp

        def factory(info: tuple[Any, ...]) -> socket.socket:
            family, kind, proto = info[0], info[1], info[2]
            sock = self.socket(ns, family, kind, proto)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock

        return aiohttp.TCPConnector(socket_factory=factory, **kw)

    def dial(self, from_ns: str, host: str, port: int, timeout: float = 1.0) -> str:
        """A real TCP dial from inside ``from_ns``: "connected", "refused" (nothing listens), "unreachable"
        (no route), or "timeout" (no answer at all: what the internal firewall's drop looks like)."""
        sock = self.socket(from_ns)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            return "connected"
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return "unreachable"
            return f"error: {exc}"
        finally:
            sock.close()

    def can_connect(self, from_ns: str, host: str, port: int, timeout: float = 1.0) -> bool:
        return self.dial(from_ns, host, port, timeout) == "connected"

    def wait_port(self, ns: str, host: str, port: int, timeout: float = 10.0) -> None:
        """Return once ``host:port`` takes connections from inside ``ns``."""
        deadline = time.monotonic() + timeout
        while not self.can_connect(ns, host, port, timeout=0.5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} not reachable from {ns} within {timeout} s")
            time.sleep(0.02)

    # -- the internal firewall -------------------------------------------------------------------------------

    def set_firewall(self, enabled: bool) -> None:
        """Load (or delete) the internal namespace's drop-inbound table."""
        name = self.name("internal")
        current = _sh([IP, "netns", "exec", name, NFT, "list", "tables"]).stdout
        if f"inet {FIREWALL_TABLE}" in current:
            _sh([IP, "netns", "exec", name, NFT, "delete", "table", "inet", FIREWALL_TABLE])
        if enabled:
            rules = self.folder / "internal.nft"
            rules.write_text(FIREWALL)
            _sh([IP, "netns", "exec", name, NFT, "-f", str(rules)])
        self.firewall_enabled = enabled

    def dropped_inbound(self) -> int:
        """Packets the internal namespace's firewall has dropped so far (0 when it is off)."""
        if not self.firewall_enabled:
            return 0
        out = _sh(
            [
                IP,
                "netns",
                "exec",
                self.name("internal"),
                NFT,
                "-j",
                "list",
                "counter",
                "inet",
                FIREWALL_TABLE,
                "inbound_dropped",
            ]
        ).stdout
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise RuntimeError(f"no counter in {out}")

    # -- processes -------------------------------------------------------------------------------------------

    def _log_path(self, ns: str, what: str) -> Path:
        self._counter += 1
        return self.folder / "logs" / f"{self._counter:02d}-{ns}-{what}.log"

    def popen(self, ns: str, argv: Sequence[str], name: str = "process", **kw: Any) -> NsProcess:
        """Start ``argv`` inside ``ns`` (``ip netns exec``); stopped at teardown; output in ``.log()``."""
        process = NsProcess(self, ns, argv, self._log_path(ns, name), **kw).start()
        self.processes.append(process)
        return process

    def run(
        self,
        ns: str,
        argv: Sequence[str],
        timeout: float = 10.0,
        check: bool = False,
        python: bool = True,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` to its end; output captured. ``python``: the namespace processes' env."""
        if python:
            kw.setdefault("env", python_env())
        result = subprocess.run(
            [IP, "netns", "exec", self.name(ns), *argv], capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{argv} in {ns} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def properties(self) -> dict[str, str]:
        """The topology's addresses as config properties (``${netns.dmz}`` …), which ``gateway`` passes to every
        gateway: netns.client, netns.dmz (the DMZ's address for clients), netns.dmz.tunnel (the DMZ's address
        for the internal gateway), netns.internal, netns.internal.backend (internal's address towards the back
        end), netns.backend."""
        return {
            "netns.client": self.addr("client"),
            "netns.dmz": self.addr("dmz"),
            "netns.dmz.tunnel": self.addr("dmz", facing="internal"),
            "netns.internal": self.addr("internal"),
            "netns.internal.backend": self.addr("internal", facing="backend"),
            "netns.backend": self.addr("backend"),
        }

    def gateway(
        self, ns: str, config: Path, *args: str, grace: float = 2.0, properties: dict[str, str] | None = None
    ) -> GatewayProcess:
        """``python -m wsgate run CONFIG -D …`` inside ``ns`` (cwd: the config's folder), with ``properties()``
        and then ``properties`` given as ``-D NAME=VALUE``; call ``.listening()`` to wait for its listeners."""
        defined = {**self.properties(), **(properties or {})}
        argv = [sys.executable, "-m", "wsgate", "run", str(config), "--grace", str(grace)]
        argv += [f"--property={name}={value}" for name, value in defined.items()]
        process = GatewayProcess(self, ns, [*argv, *args], self._log_path(ns, f"gateway-{config.stem}"))
        process.kw["cwd"] = str(config.parent)
        self.processes.append(process.start())
        return process

    def backend_echo(
        self, port: int = 0, kind: str = "tcp", flood: int = 0, tls: Path | None = None, ns: str = "backend"
    ) -> BackendProcess:
        """An echo back end on ``addr(ns):port`` (port 0: a free one, then ``.port``), ``kind`` "tcp" or "ws",
        returned once it listens. ``flood``: bytes it also pushes to each connection as fast as the connection
        takes them (a slow reader's backpressure shows as ``sent`` stalling). ``tls``: a PEM with key and chain
        (``write_tls(...)["backend"]``): TLS on that port (tls:// or wss:// for the gateway)."""
        process = BackendProcess(self, ns, kind, port, flood, tls, self._log_path(ns, f"backend-{kind}"))
        self.processes.append(process)
        return process.start()

    def client_ws(self, url: str, *, timeout: float = 10.0, ns: str = "client", **options: Any) -> dict[str, Any]:
        """A WebSocket client run in ``ns`` to its end (tests/netns_client.py, aiohttp). Options: ``ca`` (the
        only CA trusted for wss), ``cert`` (one PEM with key and chain to present), ``headers``, ``send`` (texts
        sent once connected), ``expect`` (messages to read), ``hold`` (seconds to stay afterwards),
        ``wait_close`` (wait for the server's close instead of closing), ``drain`` (seconds to read and count
        whatever comes, after ``hold``: a slow reader is ``hold`` then ``drain``). Returns {"status": 101 or the
        refusal's HTTP status or None, "messages": [...], "received": bytes of every message read, "close_code":
        the server's or None, "error": text or None, "elapsed": seconds}."""
        spec = _client_spec(url, timeout, **options)
        result = self.run(ns, [sys.executable, str(TESTS / "netns_client.py"), spec], timeout=timeout + 10)
        return _client_result(result.stdout, f"client in {ns} ({result.returncode}):\n{result.stdout}{result.stderr}")

    def client_ws_background(
        self, url: str, *, timeout: float = 30.0, ns: str = "client", **options: Any
    ) -> ClientProcess:
        """``client_ws`` started and left running (``wait_close=True`` by default: it stays until the server
        closes); ``.connected()`` waits for its 101, ``.result()`` for its end."""
        options.setdefault("wait_close", True)
        argv = [sys.executable, str(TESTS / "netns_client.py"), _client_spec(url, timeout, **options)]
        process = ClientProcess(self, ns, argv, self._log_path(ns, "client"))
        self.processes.append(process.start())
        return process


def _client_spec(
    url: str,
    timeout: float,
    *,
    ca: Path | str | None = None,
    cert: Path | str | None = None,
    headers: dict[str, str] | None = None,
    send: Sequence[str] = (),
    expect: int = 0,
    hold: float = 0.0,
    wait_close: bool = False,
    drain: float = 0.0,
) -> str:
    return json.dumps(
        {
            "url": url,
            "ca": str(ca) if ca else None,
            "cert": str(cert) if cert else None,
            "headers": headers or {},
            "send": list(send),
            "expect": expect,
            "hold": hold,
            "wait_close": wait_close,
            "drain": drain,
            "timeout": timeout,
        }
    )


def _client_result(output: str, failure: str) -> dict[str, Any]:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return json.loads(line)  # type: ignore[no-any-return]
    raise RuntimeError(f"no result from the client: {failure}")


class ClientProcess(NsProcess):
    """A tests/netns_client.py run left in the background (``Topology.client_ws_background``)."""

    def connected(self, timeout: float = 10.0) -> None:
        """Wait until the handshake succeeded (the client prints "connected" then)."""
        self.wait_log(r"^connected$", timeout)

    def result(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self} still running after {timeout} s:\n{self.log()[-2000:]}") from None
        return _client_result(self.log(), self.log()[-2000:])


def write_tls(topology: Topology, ca: Any, folder: Path) -> dict[str, Path]:
    """PEM files for TLS everywhere (``ca``: a trustme CA, the conftest's ``ca``), written to ``folder``:
    "ca" the CA alone (every truststore and client), "dmz" key and chain for both DMZ addresses (clients' and
    the internal gateway's view), "internal" for the internal gateway (common name internal-gateway: its client
    certificate towards the DMZ), "backend" for the back end's address, "client" a client certificate
    (common name client)."""
    folder.mkdir(parents=True, exist_ok=True)
    leaves = {
        "dmz": ca.issue_cert(topology.addr("dmz"), topology.addr("dmz", facing="internal"), "dmz.test"),
        "internal": ca.issue_cert(
            topology.addr("internal"), topology.addr("internal", facing="backend"), common_name="internal-gateway"
        ),
        "backend": ca.issue_cert(topology.addr("backend"), "backend.test"),
        "client": ca.issue_cert("client.test", common_name="client"),
    }
    paths = {"ca": folder / "ca.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    for name, leaf in leaves.items():
        paths[name] = folder / f"{name}.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(paths[name]))
    return paths


def _topology_or_skip(folder: Path) -> Topology:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    return Topology(folder).start()


@pytest.fixture(scope="session")
def dmz_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """The session's client/dmz/internal/backend namespaces (skips when not root or ``ip``/``nft`` missing).
    Tests share it: stop what you start (``process.stop()``) and pick distinct ports."""
    topology = _topology_or_skip(tmp_path_factory.mktemp("netns"))
    try:
        yield topology
    finally:
        topology.close()


@contextlib.contextmanager
def topology(firewall: bool = True) -> Iterator[Topology]:
    """``with topology() as t:`` for scripts: a Topology in a temporary folder, removed afterwards."""
    with Topology(firewall=firewall) as made:
        yield made
