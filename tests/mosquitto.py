"""A throwaway Mosquitto for the mqtt.proxy tests, and paho-mqtt clients that tests can await.

The broker listens on 127.0.0.1 (plain and TLS) with its own config, password file and ACL in a tmp
folder. Every principal the gateway injects has the gateway's broker password (``GATEWAY_PASSWORD``);
the ACL's ``%u`` patterns let a test prove the broker applies its own per-user rules to the injected
name. ``watcher`` (a direct TCP client) reads every topic, to prove what did or did not reach the broker.
Its log (``log_type all``) says which user name and client id each connection presented.

paho runs its network loop in a thread of its own; ``Paho`` turns its callbacks into awaitables, and
runs its blocking ``connect`` in a worker thread, as the gateway under test shares the test's loop. Run as root, the broker stays root (it would switch
to the ``mosquitto`` user, who cannot read the tmp folder).
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from .processes import free_port, stop, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
GATEWAY_PASSWORD = "gateway-broker-secret"
WATCHER = ("watcher", "watcher-secret")
PRINCIPALS = ("alice", "bob", "carol")

ACL = """\
# anonymous clients (no user name): public topics only
topic readwrite public/#
# every user name: these patterns (%u: the user name the broker was given)
pattern readwrite public/#
pattern readwrite sensors/#
pattern readwrite news/#
pattern readwrite alarms/#
pattern readwrite secret/#
pattern readwrite users/%u/#
pattern read $SYS/#

user watcher
topic readwrite #
"""


def installed() -> bool:
    return Path(MOSQUITTO).exists() and Path(MOSQUITTO_PASSWD).exists()


class Mosquitto:
    def __init__(self, folder: Path, cert: trustme.LeafCert) -> None:
        self.folder = folder
        self.cert = cert
        self.port = free_port()
        self.tls_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "mosquitto.log"

    def start(self) -> None:
        folder = self.folder
        passwords = folder / "passwords"
        passwords.write_text("")
        for user in PRINCIPALS:
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), user, GATEWAY_PASSWORD], check=True)
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), *WATCHER], check=True)
        (folder / "acl").write_text(ACL)
        self.cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
        self.cert.private_key_pem.write_to_path(str(folder / "key.pem"))
        (folder / "mosquitto.conf").write_text(
            f"""\
{"user root" if os.geteuid() == 0 else ""}
per_listener_settings false
allow_anonymous true
password_file {passwords}
acl_file {folder / "acl"}
persistence false
log_dest file {self.log}
log_type all
connection_messages true
listener {self.port} 127.0.0.1
listener {self.tls_port} 127.0.0.1
certfile {folder / "cert.pem"}
keyfile {folder / "key.pem"}
"""
        )
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(folder / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port(self.port, "mosquitto")
            wait_for_port(self.tls_port, "mosquitto (TLS)")
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def logged(self, text: str, seconds: float = 3.0) -> str:
        """Wait until the broker's log holds ``text`` (it writes its lines a little later)."""
        deadline = time.monotonic() + seconds
        while True:
            log = self.log_text()
            if text in log or time.monotonic() > deadline:
                return log
            await asyncio.sleep(0.05)


def running_mosquitto(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Mosquitto]:
    """The body of a session fixture (tests/test_mqtt_proxy.py): a broker for the whole session, stopped."""
    if not installed():
        pytest.skip("mosquitto not installed (make test installs it)")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), ca.issue_cert("127.0.0.1", "localhost"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# -- clients --------------------------------------------------------------------------------------------


class Paho:
    """A paho-mqtt 2.2 client whose callbacks are awaitable: over the gateway (``transport="websockets"``)
    or straight to the broker (``tcp``)."""

    def __init__(
        self,
        client_id: str = "",
        version: int = 5,
        websocket: tuple[str, dict[str, str]] | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        from paho.mqtt import client as mqtt

        self.mqtt = mqtt
        protocol = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        self.version = version
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            transport="websockets" if websocket else "tcp",
        )
        if websocket:
            path, headers = websocket
            self.client.ws_set_options(path=path, headers=headers)
        if credentials:
            self.client.username_pw_set(*credentials)
        self.messages: queue.Queue[Any] = queue.Queue()
        self.acks: dict[int, tuple[int, ...]] = {}  # mid → reason codes (PUBACK/PUBREC, SUBACK)
        self.acked = threading.Condition()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connect_code: int | None = None
        self.disconnect_code: int | None = None
        self.client.on_connect = self.on_connect
        self.client.on_disconnect = self.on_disconnect
        self.client.on_message = lambda client, userdata, msg: self.messages.put(msg)
        self.client.on_publish = self.on_publish
        self.client.on_subscribe = self.on_subscribe

    def on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connect_code = reason.value
        self.connected.set()

    def on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.disconnect_code = reason.value
        self.disconnected.set()

    def on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self.acked:
            self.acks[mid] = (reason.value,)
            self.acked.notify_all()

    def on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        with self.acked:
            self.acks[mid] = tuple(r.value for r in reasons)
            self.acked.notify_all()

    async def connect(self, host: str, port: int, **kwargs: Any) -> int | None:
        """Connect and wait for the CONNACK (or the connection's end); the CONNACK's code."""
        await asyncio.to_thread(self.client.connect, host, port, 30, **kwargs)
        self.client.loop_start()  # after the connect: a loop started without a socket first sleeps 1 s
        await self.until(lambda: self.connected.is_set() or self.disconnected.is_set())
        return self.connect_code

    async def until(self, condition: Any, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("paho: condition not met in time")
            await asyncio.sleep(0.01)

    async def ack(self, mid: int, seconds: float = 5.0) -> tuple[int, ...]:
        await self.until(lambda: mid in self.acks, seconds)
        return self.acks[mid]

    async def publish(self, topic: str, payload: bytes, qos: int = 0, **kwargs: Any) -> tuple[int, ...] | None:
        """Publish; for QoS 1 and 2 wait for the acknowledgement and return its reason code."""
        info = self.client.publish(topic, payload, qos, **kwargs)
        if qos == 0:
            return None
        return await self.ack(info.mid)

    async def subscribe(self, *filters: tuple[str, int]) -> tuple[int, ...]:
        """Subscribe and return the SUBACK's codes."""
        result, mid = self.client.subscribe(list(filters))
        assert result == self.mqtt.MQTT_ERR_SUCCESS, result
        return await self.ack(mid)

    async def message(self, seconds: float = 3.0) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            try:
                return self.messages.get_nowait()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError("no message") from None
                await asyncio.sleep(0.01)

    async def nothing(self, seconds: float = 0.3) -> None:
        """No message arrives within ``seconds``."""
        await asyncio.sleep(seconds)
        assert self.messages.empty(), self.messages.get_nowait()

    async def close(self) -> None:
        if self.connected.is_set() and not self.disconnected.is_set():
            self.client.disconnect()
            try:
                await self.until(self.disconnected.is_set, 3.0)
            except TimeoutError:
                pass
        await asyncio.to_thread(self.client.loop_stop)


async def watcher(broker: Mosquitto, *filters: str) -> Paho:
    """A direct client of the broker subscribed to ``filters`` (default ``#``)."""
    client = Paho(version=5, credentials=WATCHER)
    assert await client.connect("127.0.0.1", broker.port) == 0
    await client.subscribe(*((f, 2) for f in filters or ("#",)))
    return client


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Mosquitto]:
    """One broker for the whole session (registered in conftest.py)."""
    yield from running_mosquitto(tmp_path_factory, ca)
