"""amqp.proxy end to end: a browser-style AMQP client over WebSocket, the gateway, and a real RabbitMQ node.

Checked on the broker itself (rabbitmqctl, or a client straight over TCP): what the rules refuse never arrives,
what they allow does, with user-id = the principal; the client's login and virtual host never reach it.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import uuid
from pathlib import Path

import pytest
from pamqp import commands

from wsgate.core.identity import Identity
from wsgate.core.session import Timeouts

from .amqp_client import AmqpClient
from .rabbitmq import CERT_USER, GATEWAY_PASSWORD, GATEWAY_USER, RabbitMq

pytestmark = pytest.mark.timeout(60)

USERS = """<?xml version="1.0"?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>joe</name><password>welcome</password><role-name>TRADER</role-name></user>
  <user><name>ann</name><password>welcome</password><role-name>VIEWER</role-name></user>
</jaas-config>
"""
RULES = """
    authorization-rule:
      - allow: exchange.declare, exchange.delete
        exchange: "orders"
      - allow: queue.declare, queue.delete, queue.purge
        queue: "{user}.#"
      - allow: queue.bind, queue.unbind
        role: TRADER
        queue: "{user}.#"
        exchange: orders
        routing-key: "orders.{user}.#"
      - allow: basic.publish
        role: TRADER
        exchange: orders
        routing-key: "orders.{user}.#"
      - allow: basic.consume, basic.get
        queue: "{user}.#"
"""


def config(port: int, rules: str = RULES, extra: str = "") -> str:
    return f"""
service:
  - name: amqp
    accept: ws://127.0.0.1:0/amqp
    connect: tcp://127.0.0.1:{port}
    type: amqp.proxy
    properties:
      amqp.username: {GATEWAY_USER}
      amqp.password-file: broker.pw{extra}
    realm-name: demo
    authorization-constraint:
      require-role: "*"
{rules}
security:
  realm:
    name: demo
    authentication:
      http-challenge-scheme: Application Basic
      login-modules:
        login-module:
          type: file
          options:
            file: users.xml
"""


def basic(user: str, password: str = "welcome") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
async def gateway(start_gateway, tmp_path: Path, rabbitmq: RabbitMq):  # noqa: F811
    (tmp_path / "broker.pw").write_text(GATEWAY_PASSWORD + "\n")
    (tmp_path / "users.xml").write_text(USERS)

    async def start(rules: str = RULES, extra: str = ""):
        return await start_gateway(config(rabbitmq.port, rules, extra))

    return start


@pytest.fixture
async def connect(http, gateway):
    clients: list[AmqpClient] = []

    async def open_client(gw, user: str = "joe", handshake: bool = True, **kwargs) -> AmqpClient:
        url = f"ws://127.0.0.1:{gw.port_of('amqp')}/amqp"
        client = await AmqpClient.over_ws(http, url, headers=basic(user), **kwargs)
        clients.append(client)
        if handshake:
            await client.handshake("spoofed-user", "spoofed-password", "/")
        return client

    yield open_client
    for client in clients:
        await asyncio.wait_for(client.close(), 5)


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


async def broker_client(rabbitmq: RabbitMq) -> AmqpClient:  # noqa: F811
    direct = await AmqpClient.over_tcp(rabbitmq.port)
    await direct.handshake(GATEWAY_USER, GATEWAY_PASSWORD)
    await direct.open_channel(1)
    return direct


async def test_allowed_operations_pass_with_the_principal_as_user_id(gateway, connect, rabbitmq):  # noqa: F811
    gw = await gateway()
    client = await connect(gw)
    assert client.ws.protocol is None  # no subprotocol asked, none chosen
    await client.open_channel(1)
    queue = unique("joe.inbox")
    await client.call(
        1, commands.Exchange.Declare(exchange="orders", exchange_type="topic"), commands.Exchange.DeclareOk
    )
    await client.call(1, commands.Queue.Declare(queue=queue), commands.Queue.DeclareOk)
    bind = commands.Queue.Bind(queue=queue, exchange="orders", routing_key="orders.joe.#")
    await client.call(1, bind, commands.Queue.BindOk)
    await client.publish(1, "orders", "orders.joe.new", b"buy 10", user_id="admin", app_id="spoof")
    await client.publish(1, "orders", "orders.joe.new", b"buy 20")  # no user-id: one is set
    # consumed through the gateway
    got = await client.get(1, queue)
    assert got is not None and got[1] == b"buy 10" and got[0].user_id == "joe" and got[0].app_id == "spoof"
    # and checked on the broker, straight over TCP
    direct = await broker_client(rabbitmq)
    try:
        got = await direct.get(1, queue)
        assert got is not None and got[1] == b"buy 20" and got[0].user_id == "joe"
    finally:
        await direct.close()
    # the broker saw the gateway's account and virtual host, never the client's
    connections = rabbitmq.ctl("list_connections", "--no-table-headers", "user", "vhost")
    assert "spoofed" not in connections and GATEWAY_USER in connections


DENIED = [  # each would leave a trace on the broker if it got there
    commands.Exchange.Declare(exchange="trades", exchange_type="topic"),
    commands.Exchange.Delete(exchange="orders.x"),
    commands.Queue.Declare(queue="ann.inbox"),
    commands.Queue.Bind(queue="joe.x", exchange="orders", routing_key="orders.#"),
    commands.Queue.Unbind(queue="joe.x", exchange="orders", routing_key="orders.ann"),
    commands.Queue.Delete(queue="ann.box"),
    commands.Queue.Purge(queue="ann.box"),
    commands.Basic.Consume(queue="ann.box", no_ack=True),
    commands.Basic.Get(queue="ann.box", no_ack=True),
    commands.Exchange.Bind(destination="orders", source="amq.topic", routing_key="x"),
]


async def test_each_denied_operation_closes_its_channel_with_403_and_never_reaches_the_broker(
    gateway, connect, rabbitmq
):
    direct = await broker_client(rabbitmq)  # the broker's state, made without the gateway
    await direct.call(
        1, commands.Exchange.Declare(exchange="orders", exchange_type="topic"), commands.Exchange.DeclareOk
    )
    await direct.call(
        1, commands.Exchange.Declare(exchange="orders.x", exchange_type="topic"), commands.Exchange.DeclareOk
    )
    await direct.call(1, commands.Queue.Declare(queue="joe.x"), commands.Queue.DeclareOk)
    bind = commands.Queue.Bind(queue="joe.x", exchange="orders", routing_key="orders.ann")
    await direct.call(1, bind, commands.Queue.BindOk)
    await direct.call(1, commands.Queue.Declare(queue="ann.box"), commands.Queue.DeclareOk)
    await direct.publish(1, "", "ann.box", b"kept")
    gw = await gateway()
    client = await connect(gw)
    await client.open_channel(2)
    for method in DENIED:
        await client.open_channel(1)
        await client.send(1, method)
        close = await client.expect(commands.Channel.Close, 1)
        assert close.reply_code == 403 and (close.class_id << 16 | close.method_id) == method.index, method
        await client.send(1, commands.Channel.CloseOk())
    # the connection and its other channel go on
    await client.call(2, commands.Queue.Declare(queue=unique("joe.ok"), auto_delete=True), commands.Queue.DeclareOk)
    # nothing reached the broker
    ok = await direct.call(1, commands.Queue.Declare(queue="ann.box", passive=True), commands.Queue.DeclareOk)
    assert (ok.message_count, ok.consumer_count) == (1, 0)
    await direct.call(1, commands.Exchange.Declare(exchange="orders.x", passive=True), commands.Exchange.DeclareOk)
    names = {row[0] for row in rabbitmq.rows("list_exchanges", "name")}
    assert "trades" not in names and "orders.x" in names
    assert ("ann.inbox",) not in rabbitmq.rows("list_queues", "name")
    bindings = rabbitmq.rows("list_bindings", "source_name", "destination_name", "routing_key")
    assert ("orders", "joe.x", "orders.ann") in bindings and ("orders", "joe.x", "orders.#") not in bindings
    assert not [b for b in bindings if b[0] == "amq.topic"]
    await direct.call(1, commands.Queue.Delete(queue="ann.box"), commands.Queue.DeleteOk)
    await direct.call(1, commands.Exchange.Delete(exchange="orders.x"), commands.Exchange.DeleteOk)
    await direct.close()


async def test_a_refused_publish_drops_its_content_and_the_channel_reopens(gateway, connect, rabbitmq):  # noqa: F811
    gw = await gateway()
    client = await connect(gw, "ann")  # a VIEWER: may not publish
    await client.open_channel(1)
    queue = unique("ann.box")
    await client.call(1, commands.Queue.Declare(queue=queue, auto_delete=False), commands.Queue.DeclareOk)
    await client.publish(1, "", queue, b"x" * 10000)  # default exchange straight into ann's own queue: refused
    close = await client.expect(commands.Channel.Close, 1)
    assert close.reply_code == 403 and close.method_id == commands.Basic.Publish.index & 0xFFFF
    await client.send(1, commands.Channel.CloseOk())
    await client.open_channel(1)
    assert await client.get(1, queue) is None  # nothing reached the queue
    await client.call(1, commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)


async def test_a_client_asking_for_another_vhost_is_refused_the_amqp_way(gateway, connect, rabbitmq):  # noqa: F811
    gw = await gateway()
    client = await connect(gw, handshake=False)
    await client.send_raw(b"AMQP\x00\x00\x09\x01")
    await client.expect(commands.Connection.Start, 0)
    await client.send(0, commands.Connection.StartOk(mechanism="PLAIN", response="\0joe\0welcome"))
    tune = await client.expect(commands.Connection.Tune, 0)
    await client.send(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
    await client.send(0, commands.Connection.Open(virtual_host="other"))
    close = await client.expect(commands.Connection.Close, 0)
    assert close.reply_code == 530 and (close.class_id, close.method_id) == (10, 40)
    assert await client.closed() == 1008


async def test_server_named_queue_and_the_empty_name_shortcut(gateway, connect, rabbitmq):  # noqa: F811
    rules = RULES + '      - allow: queue.declare\n        queue: "*"\n'
    gw = await gateway(rules)
    client = await connect(gw)
    await client.open_channel(1)
    ok = await client.call(1, commands.Queue.Declare(queue="", exclusive=True), commands.Queue.DeclareOk)
    assert ok.queue.startswith("amq.gen-")
    # consume "" means the queue just declared (amq.gen-...): decided on that name, which no rule allows
    await client.send(1, commands.Basic.Consume(queue=""))
    close = await client.expect(commands.Channel.Close, 1)
    assert close.reply_code == 403


async def test_roles_and_rules_change_under_a_live_connection(gateway, connect, rabbitmq, tmp_path):  # noqa: F811
    gw = await gateway()
    client = await connect(gw, "ann")
    await client.open_channel(1)
    await client.call(
        1, commands.Exchange.Declare(exchange="orders", exchange_type="topic"), commands.Exchange.DeclareOk
    )
    await client.publish(1, "orders", "orders.ann.x", b"1")
    assert (await client.expect(commands.Channel.Close, 1)).reply_code == 403
    await client.send(1, commands.Channel.CloseOk())
    # re-authentication gives ann TRADER: the next publish passes, on the same connection
    (session,) = [s for s in gw.deployment.services["amqp"].runtime.connections if s.identity.user == "ann"]
    session.refresh(Identity("demo", "ann", frozenset({"TRADER"}), None), Timeouts())
    await client.open_channel(1)
    queue = unique("ann.q")
    await client.call(1, commands.Queue.Declare(queue=queue, auto_delete=False), commands.Queue.DeclareOk)
    bind = commands.Queue.Bind(queue=queue, exchange="orders", routing_key="orders.ann.#")
    await client.call(1, bind, commands.Queue.BindOk)
    await client.publish(1, "orders", "orders.ann.x", b"2")
    got = await client.get(1, queue)
    assert got is not None and got[1] == b"2" and got[0].user_id == "ann"
    # a reload that denies every publish applies to the next one, the connection stays
    path = tmp_path / "gateway.yaml"
    path.write_text(path.read_text().replace("      - allow: basic.publish\n", "      - deny: basic.publish\n"))
    await gw.reload()
    await client.publish(1, "orders", "orders.ann.x", b"3")
    assert (await client.expect(commands.Channel.Close, 1)).reply_code == 403
    await client.send(1, commands.Channel.CloseOk())
    await client.open_channel(1)
    assert await client.get(1, queue) is None
    await client.call(1, commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"HTTP/1.1 GET /\r\n", 1002),  # not AMQP at all: the protocol header, then 1002
        (b"AMQP\x00\x00\x09\x01" + b"\x09" + b"\x00" * 10, 1002),  # unknown frame type
        (b"AMQP\x00\x00\x09\x01" + b"\x01\x00\x00\x00\x10\x00\x00" + b"\x00" * 64, 1002),  # over frame-max
    ],
)
async def test_malformed_input_closes_cleanly(gateway, connect, payload, code):
    gw = await gateway()
    client = await connect(gw, handshake=False)
    await client.send_raw(payload)
    assert await client.closed() == code


async def test_frames_on_an_unopened_channel_and_oversized_bodies_close_the_connection(gateway, connect):
    gw = await gateway()
    client = await connect(gw)
    await client.send(5, commands.Queue.Declare(queue="joe.x"))
    assert await client.closed() == 1002
    assert any(isinstance(v, commands.Connection.Close) and v.reply_code == 504 for _, v in client.frames)


async def test_a_client_that_never_finishes_the_handshake_is_closed(gateway, connect, monkeypatch):
    from wsgate.services.amqp_proxy import AmqpProxyService

    monkeypatch.setattr(AmqpProxyService, "handshake_timeout", 0.5)
    gw = await gateway()
    client = await connect(gw, handshake=False)
    await client.send_raw(b"AMQP\x00\x00\x09\x01")
    assert await client.closed(timeout=5) == 1008


async def test_text_messages_are_refused(gateway, connect):
    gw = await gateway()
    client = await connect(gw, handshake=False)
    await client.ws.send_str("AMQP")
    assert await client.closed() == 1003


async def test_subprotocol_amqp_is_accepted_when_offered(gateway, connect):
    gw = await gateway()
    client = await connect(gw, protocols=("amqp",))
    assert client.ws.protocol == "amqp"


async def test_kaazing_shipped_layout_runs_against_the_broker(tmp_path, http, rabbitmq):  # noqa: F811
    from wsgate.catalog import load_config
    from wsgate.gateway import Gateway

    from .test_kaazing_configs import DATA, DOCS

    text = (DATA / "kaazing-default-layout.xml").read_text()
    text = text.replace("tcp://${gateway.hostname}:5672", f"tcp://127.0.0.1:{rabbitmq.port}")
    conf = tmp_path / "conf"  # GATEWAY_HOME/conf, its web root GATEWAY_HOME/web
    conf.mkdir()
    (conf / "gateway-config.xml").write_text(text)
    for name in ("keystore.db", "keystore.pw", "truststore.db", "jaas-config.xml"):
        shutil.copy(DOCS / "examples" / name, conf / name)
    (tmp_path / "web" / "welcome").mkdir(parents=True)
    (tmp_path / "web" / "error-pages").mkdir()
    config = load_config(conf / "gateway-config.xml", {"gateway.port": "0", "gateway.hostname": "127.0.0.1"})
    assert any("encryption.key.alias" in w for w in config.warnings)
    gw = Gateway(config)
    await gw.start()
    try:
        url = f"ws://127.0.0.1:{gw.port_of('AMQP Service')}/amqp"
        client = await AmqpClient.over_ws(
            http, url, headers={"Authorization": "Application Basic " + base64.b64encode(b"joe:welcome").decode()}
        )
        await client.handshake("joe", "welcome")
        await client.open_channel(1)
        queue = unique("kaazing")
        await client.call(1, commands.Queue.Declare(queue=queue, auto_delete=True), commands.Queue.DeclareOk)
        await client.publish(1, "", queue, b"hello")
        got = await client.get(1, queue)
        assert got is not None and got[1] == b"hello" and got[0].user_id == "joe"
        await client.close()
    finally:
        await gw.stop(grace=2.0)


async def test_connection_close_from_the_client_is_relayed(gateway, connect):
    gw = await gateway()
    client = await connect(gw)
    await client.send(0, commands.Connection.Close(200, "bye", 0, 0))
    await client.expect(commands.Connection.CloseOk, 0)
    assert await client.closed(timeout=2) == 1000


# -- the broker login, TLS and configuration -------------------------------------------------------------


def tls_config(rabbitmq: RabbitMq, properties: str, connect_options: str = "") -> str:
    return f"""
service:
  - name: amqp
    accept: ws://127.0.0.1:0/amqp
    connect: ssl://localhost:{rabbitmq.tls_port}
    type: amqp.proxy
    properties:
{properties}
    connect-options:
      ssl.client-certificate: '1'
security:
  keystore:
    type: PEM
    file: keystore.pem
  truststore:
    type: PEM
    file: truststore.pem
"""


@pytest.fixture
def gateway_cert(tmp_path: Path, ca, rabbitmq: RabbitMq) -> None:
    """The gateway's key and a certificate whose common name is its broker user, and the CA it trusts."""
    ca.issue_cert("wsgate-gateway.test", common_name=CERT_USER).private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "keystore.pem")
    )
    ca.cert_pem.write_to_path(str(tmp_path / "truststore.pem"))


@pytest.mark.parametrize(
    "properties",
    [
        "      amqp.mechanism: EXTERNAL",
        f"      amqp.username: {GATEWAY_USER}\n      amqp.password-file: broker.pw",
    ],
    ids=["external", "plain"],
)
async def test_tls_to_the_broker_with_plain_or_external_login(
    start_gateway, http, tmp_path, rabbitmq, gateway_cert, properties
):
    (tmp_path / "broker.pw").write_text(GATEWAY_PASSWORD)
    gw = await start_gateway(tls_config(rabbitmq, properties))
    client = await AmqpClient.over_ws(http, f"ws://127.0.0.1:{gw.port_of('amqp')}/amqp")
    try:
        await client.handshake("anyone", "anything")
        await client.open_channel(1)
        queue = unique("tls")
        await client.call(1, commands.Queue.Declare(queue=queue, auto_delete=True), commands.Queue.DeclareOk)
        await client.publish(1, "", queue, b"over tls", user_id="spoof")
        got = await client.get(1, queue)
        assert got is not None and got[1] == b"over tls" and got[0].user_id is None  # no principal: removed
        users = rabbitmq.ctl("list_connections", "--no-table-headers", "user", "ssl", "auth_mechanism")
        expected = (CERT_USER, "EXTERNAL") if "EXTERNAL" in properties else (GATEWAY_USER, "PLAIN")
        assert any(line.split("\t") == [expected[0], "true", expected[1]] for line in users.splitlines()), users
    finally:
        await client.close()


@pytest.mark.parametrize("capabilities", [{"authentication_failure_close": True}, {}])
async def test_a_broker_refusing_the_gateways_login_is_logged_not_blamed_on_the_client(
    start_gateway, http, tmp_path, rabbitmq, caplog, capabilities
):
    (tmp_path / "broker.pw").write_text("wrong password")
    (tmp_path / "users.xml").write_text(USERS)
    gw = await start_gateway(config(rabbitmq.port, rules=""))
    client = await AmqpClient.over_ws(http, f"ws://127.0.0.1:{gw.port_of('amqp')}/amqp", headers=basic("joe"))
    await client.send_raw(b"AMQP\x00\x00\x09\x01")
    await client.expect(commands.Connection.Start, 0)
    properties = {"capabilities": capabilities}
    await client.send(0, commands.Connection.StartOk(properties, mechanism="PLAIN", response="\0joe\0welcome"))
    if capabilities:  # the broker says why before it hangs up: relayed
        close = await client.expect(commands.Connection.Close, 0)
        assert close.reply_code == 403
    assert await client.closed() == 1011  # the back end's failure, not the client's
    assert f"closed the connection during the gateway's login as {GATEWAY_USER}" in caplog.text
    assert "wrong password" not in caplog.text


async def test_deferred_connect_strategy(gateway, connect):
    gw = await gateway(extra="\n      connect.strategy: deferred")
    client = await connect(gw)
    await client.open_channel(1)


@pytest.mark.parametrize(
    "properties, message",
    [
        (
            "amqp.username: gw",
            "service[amqp]/properties/amqp.password-file: amqp.username and amqp.password-file go together",
        ),
        ("amqp.user-id: mine", "service[amqp]/properties/amqp.user-id: 'mine' is not one of"),
        (
            "amqp.password-file: missing.pw\n      amqp.username: gw",
            "service[amqp]/properties/amqp.password-file: cannot read",
        ),
        ("amqp.mechanism: EXTERNAL", "service[amqp]/properties/amqp.mechanism: EXTERNAL needs connect ssl://"),
        ("virtual.host: ''", "service[amqp]/properties/virtual.host:"),
    ],
)
def test_configuration_errors_name_the_property(tmp_path, properties, message):
    from wsgate.catalog import load_config
    from wsgate.errors import ConfigError
    from wsgate.gateway import Gateway

    path = tmp_path / "gateway.yaml"
    path.write_text(
        "service:\n  - name: amqp\n    accept: ws://127.0.0.1:0/amqp\n    connect: tcp://127.0.0.1:5672\n"
        f"    type: amqp.proxy\n    properties:\n      {properties}\n"
    )
    with pytest.raises(ConfigError) as caught:
        Gateway(load_config(path))
    assert message in str(caught.value)


async def test_the_docs_example_runs_against_the_broker(tmp_path, http, rabbitmq):
    """docs/examples/amqp.yaml as shipped, its broker property and password file pointed at the test broker."""
    from wsgate.catalog import load_config
    from wsgate.gateway import Gateway

    from .test_kaazing_configs import DOCS

    shutil.copytree(DOCS / "examples", tmp_path, dirs_exist_ok=True)
    (tmp_path / "amqp.pw").write_text(GATEWAY_PASSWORD + "\n")
    overrides = {"broker": f"tcp://127.0.0.1:{rabbitmq.port}"}
    text = (tmp_path / "amqp.yaml").read_text().replace("ws://localhost:8000/amqp", "ws://127.0.0.1:0/amqp")
    (tmp_path / "amqp.yaml").write_text(text)
    gw = Gateway(load_config(tmp_path / "amqp.yaml", overrides))
    await gw.start()
    url = f"ws://127.0.0.1:{gw.port_of('amqp')}/amqp"
    try:
        admin = await AmqpClient.over_ws(http, url, headers=basic("admin", "admin"))
        joe = await AmqpClient.over_ws(http, url, headers=basic("joe"))
        for client in (admin, joe):
            await client.handshake()
            await client.open_channel(1)
        await admin.call(
            1, commands.Exchange.Declare(exchange="prices", exchange_type="topic"), commands.Exchange.DeclareOk
        )
        queue = unique("joe.prices")
        await joe.call(1, commands.Queue.Declare(queue=queue, auto_delete=True), commands.Queue.DeclareOk)
        bind = commands.Queue.Bind(queue=queue, exchange="prices", routing_key="eu.#")
        await joe.call(1, bind, commands.Queue.BindOk)
        await admin.publish(1, "prices", "eu.gold", b"1900")
        got = None
        for _ in range(50):  # another connection: routed when the broker gets to it
            if (got := await joe.get(1, queue)) is not None:
                break
            await asyncio.sleep(0.05)
        assert got is not None and got[1] == b"1900" and got[0].user_id == "admin"
        await joe.publish(1, "prices", "eu.gold", b"0")  # joe may not publish prices
        assert (await joe.expect(commands.Channel.Close, 1)).reply_code == 403
        for client in (admin, joe):
            await client.close()
    finally:
        await gw.stop(grace=2.0)
