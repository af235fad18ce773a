"""A throwaway redis-server for tests: a random loopback port, no persistence, stoppable and restartable."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .processes import free_port, stop, wait_for_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def installed() -> bool:
    return Path(REDIS_SERVER).exists()


class RedisServer:
    """``tls``: (certificate chain, key, CA) PEM files: the server listens on a TLS port only (``rediss://``),
    without asking clients for certificates."""

    def __init__(self, folder: Path, password: str | None = None, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.folder = folder
        self.password = password
        self.tls = tls
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again, on the same port: a restart after ``stop`` is an outage that ends)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--dir", str(self.folder)]
        if self.tls:
            cert, key, ca = self.tls
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            argv += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
        else:
            argv += ["--port", str(self.port)]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.folder / "redis.log")]
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, "redis-server")

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: an outage with no goodbye (and, without persistence, every key lost)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None
