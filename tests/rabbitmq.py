"""A throwaway RabbitMQ node for tests: free ports, its own node name, Erlang cookie, mnesia and logs in a tmp dir.

``RabbitMq.start`` runs ``rabbitmq-server`` (the Debian package's scripts, without its root-only wrapper) and
waits for ``rabbitmqctl await_startup``; ``ctl`` runs rabbitmqctl against it with the same environment. Users:
``wsgate`` (password ``GATEWAY_PASSWORD``, tagged ``impersonator`` so the gateway may publish with another
user-id) and ``guest`` (RabbitMQ's default, tagged impersonator too, for Kaazing's shipped layout, which names no
broker account). ``stop`` stops the node and its epmd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from .processes import free_port, stop, wait_for_port

SBIN = Path("/usr/lib/rabbitmq/bin")
SERVER = SBIN / "rabbitmq-server"
CTL = SBIN / "rabbitmqctl"
GATEWAY_USER = "wsgate"
GATEWAY_PASSWORD = "gw-Secret-1"  # noqa: S105 (a throwaway broker's)


CERT_USER = "wsgate-gateway"  # the common name of the gateway's client certificate: its EXTERNAL login


def installed() -> bool:
    return SERVER.exists() and CTL.exists()


class RabbitMq:
    def __init__(self, folder: Path, ca: trustme.CA | None = None) -> None:
        self.folder = folder
        self.ca = ca  # with a CA: also a TLS listener (tls_port) that takes EXTERNAL logins by client certificate
        self.tls_port = free_port() if ca is not None else 0
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"wsgate{os.getpid()}x{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    @property
    def env(self) -> dict[str, str]:
        folder = self.folder
        return {
            **os.environ,
            "HOME": str(folder),  # the Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
        }

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "rabbitmq-env.conf").write_text("")
        conf = f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        plugins = ""
        if self.ca is not None:
            plugins = "rabbitmq_auth_mechanism_ssl"
            self.ca.cert_pem.write_to_path(str(self.folder / "ca.pem"))
            server = self.ca.issue_cert("localhost", "127.0.0.1")
            server.cert_chain_pems[0].write_to_path(str(self.folder / "server.pem"))
            server.private_key_pem.write_to_path(str(self.folder / "server.key"))
            conf += textwrap.dedent(f"""\
                listeners.ssl.default = 127.0.0.1:{self.tls_port}
                ssl_options.cacertfile = {self.folder / "ca.pem"}
                ssl_options.certfile = {self.folder / "server.pem"}
                ssl_options.keyfile = {self.folder / "server.key"}
                ssl_options.verify = verify_peer
                ssl_options.fail_if_no_peer_cert = false
                auth_mechanisms.1 = PLAIN
                auth_mechanisms.2 = AMQPLAIN
                auth_mechanisms.3 = EXTERNAL
                ssl_cert_login_from = common_name
                """)
        (self.folder / "enabled_plugins").write_text(f"[{plugins}].\n")
        (self.folder / "rabbitmq.conf").write_text(conf)
        started = time.monotonic()
        log = (self.folder / "server.out").open("wb")
        self.process = subprocess.Popen([str(SERVER)], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port, "rabbitmq-server", seconds=60)
        self.ctl("await_startup", "--timeout", "60")
        self.start_seconds = time.monotonic() - started
        self.ctl("add_user", GATEWAY_USER, GATEWAY_PASSWORD)
        self.ctl("set_user_tags", GATEWAY_USER, "impersonator")
        self.ctl("set_permissions", "-p", "/", GATEWAY_USER, ".*", ".*", ".*")
        self.ctl("set_user_tags", "guest", "administrator", "impersonator")
        if self.ca is not None:  # EXTERNAL: the user is the certificate's common name; its password is never used
            self.ctl("add_user", CERT_USER, GATEWAY_PASSWORD + "-unused")
            self.ctl("set_user_tags", CERT_USER, "impersonator")
            self.ctl("set_permissions", "-p", "/", CERT_USER, ".*", ".*", ".*")
        self.ctl("add_vhost", "other")
        self.ctl("set_permissions", "-p", "other", GATEWAY_USER, ".*", ".*", ".*")

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            [str(CTL), "-n", self.node, "-q", *args], env=self.env, capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def rows(self, what: str, *columns: str, vhost: str = "/") -> list[tuple[str, ...]]:
        """``list_queues``/``list_exchanges``/``list_bindings`` as tuples of the columns asked for."""
        text = self.ctl(what, "-p", vhost, "--no-table-headers", *columns)
        return [tuple(line.split("\t")) for line in text.splitlines() if line.strip()]

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            self.ctl("stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        stop(self.process)
        self.process = None
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run([epmd, "-kill"], env=self.env, capture_output=True, timeout=10, check=False)


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[RabbitMq]:
    if not installed():
        pytest.skip("rabbitmq-server is not installed (make test installs it)")
    broker = RabbitMq(tmp_path_factory.mktemp("rabbitmq"), ca)
    try:
        broker.start()
    except BaseException:
        broker.stop()
        raise
    print(f"\nRabbitMQ node {broker.node} started in {broker.start_seconds:.1f} s")  # noqa: T201
    yield broker
    broker.stop()
