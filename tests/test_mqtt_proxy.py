"""mqtt.proxy end to end: paho-mqtt over WebSocket through the gateway to a real Mosquitto.

A direct client of the broker (``watcher``) proves what reached it; the broker's log proves which user
name and client id it was given. Raw WebSocket clients send what no MQTT library would.
"""

from __future__ import annotations

import asyncio
import base64
import textwrap
from pathlib import Path

import aiohttp
import pytest

from wsgate.services.mqtt import codec
from wsgate.services.mqtt.codec import MQTT5, MQTT311

from .mosquitto import GATEWAY_PASSWORD, Mosquitto, Paho, watcher
from .test_realms import AUDIENCE, ISSUER, Issuer

RULES = """\
      - allow: [publish, subscribe]
        topic: "public/#"
      - allow: publish
        topic: "sensors/{user}/#"
      - allow: subscribe
        topic: "sensors/+/temperature"
      - deny: publish
        topic: "alarms/#"
        then: close
      - allow: subscribe
        role: OPS
        topic: "$SYS/#"
"""

USERS = """<?xml version="1.0"?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>alice</name><password>alice-pw</password><role-name>AUTHORIZED</role-name></user>
  <user><name>bob</name><password>bob-pw</password><role-name>AUTHORIZED</role-name></user>
  <user><name>carol</name><password>carol-pw</password><role-name>AUTHORIZED</role-name><role-name>OPS</role-name></user>
</jaas-config>
"""


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{user}-pw".encode()).decode()}


def config(broker: Mosquitto, rules: str = RULES, connect: str = "", extra: str = "") -> str:
    connect = connect or f"tcp://127.0.0.1:{broker.port}"
    return f"""
service:
  - name: mqtt
    accept: ws://127.0.0.1:0/mqtt
    connect: {connect}
    type: mqtt.proxy
    realm-name: users
    authorization-constraint:
      require-role: AUTHORIZED
    properties:
      mqtt.password-file: broker.pw
    authorization-rule:
{rules}
  - name: open
    accept: ws://127.0.0.1:0/open
    connect: tcp://127.0.0.1:{broker.port}
    type: mqtt.proxy
    realm-name: users
    authorization-constraint:
      require-role: AUTHORIZED
    properties:
      mqtt.password-file: broker.pw
  - name: anonymous
    accept: ws://127.0.0.1:0/anonymous
    connect: tcp://127.0.0.1:{broker.port}
    type: mqtt.proxy
{extra}
security:
  realm:
    - name: users
      description: Users
      authentication:
        http-challenge-scheme: Application Basic
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "jaas-config.xml").write_text(USERS)
    (tmp_path / "broker.pw").write_text(GATEWAY_PASSWORD + "\n")
    return tmp_path


@pytest.fixture
async def clients():
    """Every paho client a test opens, closed after it (bounded)."""
    opened: list[Paho] = []
    yield opened
    await asyncio.wait_for(asyncio.gather(*(client.close() for client in opened)), 5)  # paho's loops stop together


@pytest.fixture
async def gw(start_gateway, files, mosquitto):
    return await start_gateway(config(mosquitto))


async def through(gw, clients, user: str | None, version: int, client_id: str = "", service: str = "mqtt", **kwargs):
    """A paho client connected through the gateway as ``user``; asserts the CONNACK accepted it."""
    client = Paho(client_id, version, websocket=(f"/{service}", basic(user) if user else {}), **kwargs)
    clients.append(client)
    code = await client.connect("127.0.0.1", gw.port_of(service))
    assert code == 0, code
    return client


async def watching(broker: Mosquitto, clients, *filters: str) -> Paho:
    client = await watcher(broker, *filters)
    clients.append(client)
    return client


VERSIONS = pytest.mark.parametrize("version", [MQTT311, MQTT5], ids=["3.1.1", "5"])


# -- allowed traffic and identity -----------------------------------------------------------------------


@VERSIONS
async def test_allowed_publish_and_subscribe_pass_both_ways(gw, clients, mosquitto, version):
    broker = await watching(mosquitto, clients, "public/#", "sensors/#")
    alice = await through(gw, clients, "alice", version, client_id=f"c{version}")
    assert await alice.subscribe(("public/#", 1), ("sensors/+/temperature", 0)) == (1, 0)
    await broker.publish("public/news", b"from the broker", 1)
    message = await alice.message()
    assert (message.topic, message.payload) == ("public/news", b"from the broker")
    assert (await broker.message()).topic == "public/news"  # the watcher's own, too
    # QoS 0, 1 and 2 from the client arrive in full at the broker (QoS 2 exercises PUBREC/PUBREL/PUBCOMP)
    for qos in (0, 1, 2):
        acks = await alice.publish(f"sensors/alice/{qos}", b"x" * 1000, qos)
        assert acks in (None, (0,))
        got = await broker.message()
        assert (got.topic, got.payload) == (f"sensors/alice/{qos}", b"x" * 1000)
    log = await mosquitto.logged(f"as alice:c{version} ")
    assert f"as alice:c{version} " in log and "u'alice'" in log  # the principal and the bound client id


@VERSIONS
async def test_the_broker_sees_the_principal_never_the_clients_claims(gw, clients, mosquitto, version):
    broker = await watching(mosquitto, clients, "users/#")
    spoof = await through(gw, clients, "bob", version, "spoof", service="open", credentials=("alice", "guessed"))
    # the broker's own ACL (users/%u/#) applies to bob: the name the gateway gave it, not the claimed alice
    await spoof.publish("users/bob/x", b"mine", 1)
    assert (await broker.message()).topic == "users/bob/x"
    await spoof.publish("users/alice/x", b"not mine", 1)
    await broker.nothing()
    log = await mosquitto.logged("as bob:spoof ")
    assert "as bob:spoof " in log
    line = next(line for line in log.splitlines() if "as bob:spoof " in line)
    assert "u'bob'" in line and "alice" not in line and "guessed" not in log


async def test_a_client_id_cannot_take_over_another_users_session(gw, clients, mosquitto):
    alice = await through(gw, clients, "alice", MQTT5, "phone", service="open")
    broker = await watching(mosquitto, clients, "public/#")
    # bob chooses alice's id, and the id the broker gave alice's connection: both stay bob's own
    await through(gw, clients, "bob", MQTT5, "phone", service="open")
    await through(gw, clients, "bob", MQTT311, "alice:phone", service="open")
    await asyncio.sleep(0.2)
    assert not alice.disconnected.is_set()
    await alice.publish("public/still-here", b"yes", 1)
    assert (await broker.message()).topic == "public/still-here"
    log = await mosquitto.logged("as bob:alice:phone ")
    assert "as bob:phone " in log and "as bob:alice:phone " in log  # each bound to bob


async def test_an_anonymous_connection_has_no_user_name_and_its_own_ids(start_gateway, files, clients, mosquitto):
    gw = await start_gateway(config(mosquitto))
    broker = await watching(mosquitto, clients, "public/#", "users/#")
    anon = await through(gw, clients, None, MQTT311, "kiosk", service="anonymous", credentials=("alice", "x"))
    await anon.publish("public/anon", b"hi", 1)
    assert (await broker.message()).topic == "public/anon"
    await anon.publish("users/alice/x", b"no", 1)  # the broker's anonymous ACL: public only
    await broker.nothing()
    line = next(line for line in (await mosquitto.logged("as :kiosk")).splitlines() if "as :kiosk" in line)
    assert "u'" not in line  # no user name reached the broker


# -- refusals -------------------------------------------------------------------------------------------


async def test_refused_publishes_v5_get_0x87_and_never_reach_the_broker(gw, clients, mosquitto):
    broker = await watching(mosquitto, clients, "#")
    alice = await through(gw, clients, "alice", MQTT5)
    assert await alice.publish("sensors/bob/temperature", b"forged", 1) == (0x87,)
    # QoS 2: PUBREC 0x87 ends the flow, but paho sends its PUBREL anyway and reports the PUBCOMP, which the
    # gateway answers itself (0x92, no such flow): the broker never hears of the packet id
    assert await alice.publish("sensors/bob/temperature", b"forged", 2) == (0x92,)
    await alice.publish("sensors/bob/temperature", b"forged", 0)
    await alice.publish("sensors/alice/ok", b"fine", 1)
    got = await broker.message()
    assert got.topic == "sensors/alice/ok"  # nothing refused came before it; the connection carried on
    await broker.nothing()
    metrics = gw.runtime.metrics
    assert metrics.denied.labels("mqtt", "publish")._value.get() == 3


async def test_refused_publishes_v311_are_acknowledged_and_dropped(gw, clients, mosquitto, caplog):
    broker = await watching(mosquitto, clients, "#")
    alice = await through(gw, clients, "alice", MQTT311)
    with caplog.at_level("INFO", logger="wsgate.audit"):
        assert await alice.publish("secret/x", b"no", 1) == (0,)  # 3.1.1 cannot say refused: acknowledged
        assert await alice.publish("secret/x", b"no", 2) == (0,)  # PUBREC, and the PUBCOMP for its PUBREL
    await alice.publish("public/after", b"ok", 2)
    assert (await broker.message()).topic == "public/after"
    await broker.nothing()
    assert "operation denied" in caplog.text and "secret/x" in caplog.text


@VERSIONS
async def test_refused_filters_get_failure_codes_in_order_and_the_rest_subscribes(gw, clients, mosquitto, version):
    alice = await through(gw, clients, "alice", version)
    refused = 0x87 if version == MQTT5 else 0x80
    codes = await alice.subscribe(
        ("sensors/#", 1),  # wider than sensors/+/temperature: refused
        ("public/#", 1),
        ("$share/team/sensors/#", 0),  # the filter inside a shared subscription is what is checked
        ("sensors/+/temperature", 2),
        ("$SYS/#", 0),  # alice is not OPS
    )
    assert codes == (refused, 1, refused, 2, refused)
    assert await alice.subscribe(("secret/#", 0)) == (refused,)  # nothing allowed: the gateway answers
    broker = await watching(mosquitto, clients)
    await broker.publish("sensors/bob/humidity", b"not subscribed", 1)
    await broker.publish("secret/x", b"not subscribed", 1)
    await broker.publish("sensors/bob/temperature", b"21", 1)
    assert (await alice.message()).topic == "sensors/bob/temperature"
    await alice.nothing()


async def test_a_refused_will_refuses_the_connect(gw, clients, mosquitto):
    for version, expected in ((MQTT5, 0x87), (MQTT311, 0x87)):  # paho reports 3.1.1's 5 as 0x87
        client = Paho("w", version, websocket=("/mqtt", basic("alice")))
        client.client.will_set("secret/last-words", b"bye", 1)
        clients.append(client)
        assert await client.connect("127.0.0.1", gw.port_of("mqtt")) == expected
    allowed = Paho("w2", MQTT5, websocket=("/mqtt", basic("alice")))
    allowed.client.will_set("sensors/alice/last-words", b"bye", 1)
    clients.append(allowed)
    assert await allowed.connect("127.0.0.1", gw.port_of("mqtt")) == 0


async def test_then_close_disconnects_with_0x87(gw, clients, mosquitto):
    broker = await watching(mosquitto, clients, "#")
    alice = await through(gw, clients, "alice", MQTT5)
    alice.client.publish("alarms/fire", b"!", 1)
    await alice.until(alice.disconnected.is_set)
    assert alice.disconnect_code == 0x87
    await broker.nothing()


# -- what no MQTT library sends -------------------------------------------------------------------------


def connect_packet(version: int, client_id: str = "raw", **fields) -> bytes:
    return codec.encode(codec.Connect(version, client_id, **fields), version)


async def raw(http, gw, service: str = "mqtt", protocols=("mqtt",)) -> aiohttp.ClientWebSocketResponse:
    url = f"ws://127.0.0.1:{gw.port_of(service)}/{service}"
    return await http.ws_connect(url, headers=basic("alice"), protocols=protocols)


async def read_until_close(ws) -> tuple[bytes, int | None]:
    """Every binary byte until the close, and the close code."""
    data = b""
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type is aiohttp.WSMsgType.BINARY:
            data += msg.data
        else:
            return data, ws.close_code


async def test_the_stream_may_split_and_join_packets_across_messages(gw, http, mosquitto, clients):
    broker = await watching(mosquitto, clients, "public/#")
    ws = await raw(http, gw)
    assert ws.protocol == "mqtt"
    stream = connect_packet(MQTT5) + codec.encode(codec.Publish("public/a", b"1", 1, packet_id=7), MQTT5)
    stream += codec.encode(codec.Publish("public/b", b"2" * 300), MQTT5)
    for index in range(0, len(stream), 5):  # five bytes a message
        await ws.send_bytes(stream[index : index + 5])
    got = b""
    while len(got) < 4 + 4:  # CONNACK (with properties, so longer) then PUBACK
        got += (await asyncio.wait_for(ws.receive(), 5)).data
    assert got[0] >> 4 == codec.CONNACK
    assert [(await broker.message()).topic for _ in range(2)] == ["public/a", "public/b"]
    await ws.close()


@pytest.mark.parametrize(
    "after_connect,reason,close_code",
    [
        (bytes([0x36, 0x03, 0x00, 0x01, 0x61]), codec.MALFORMED, 1002),  # PUBLISH at QoS 3
        (bytes([0x30, 0xFF, 0xFF, 0xFF, 0x7F]), codec.PACKET_TOO_LARGE, 1009),  # 256 MiB announced
        (connect_packet(MQTT5, "again"), codec.PROTOCOL_ERROR, 1002),  # a second CONNECT
        (codec.encode(codec.Auth(0x18), MQTT5), codec.PROTOCOL_ERROR, 1002),
        (
            codec.encode(codec.Publish("", b"x", properties=((codec.TOPIC_ALIAS, 1),)), MQTT5),
            codec.PROTOCOL_ERROR,
            1002,
        ),
        (bytes([0x30, 0x04, 0x00, 0x02, 0xC3, 0x28]), codec.MALFORMED, 1002),  # topic not UTF-8
    ],
    ids=["qos3", "huge", "second-connect", "auth", "alias-unknown", "bad-utf8"],
)
async def test_malformed_packets_disconnect_v5_with_the_reason_and_close(
    gw, http, mosquitto, clients, after_connect, reason, close_code
):
    broker = await watching(mosquitto, clients, "#")
    ws = await raw(http, gw)
    await ws.send_bytes(connect_packet(MQTT5) + codec.encode(codec.Publish("public/ok", b"before"), MQTT5))
    await ws.send_bytes(after_connect)
    data, code = await read_until_close(ws)
    assert code == close_code
    assert data.endswith(codec.encode(codec.Disconnect(reason), MQTT5))
    assert (await broker.message()).topic == "public/ok"  # what came before it was delivered
    await broker.nothing()


async def test_v311_malformed_closes_and_packets_before_connect_never_dial(gw, http, mosquitto):
    ws = await raw(http, gw)
    await ws.send_bytes(connect_packet(MQTT311) + bytes([0x36, 0x03, 0x00, 0x01, 0x61]))
    data, code = await read_until_close(ws)
    assert code == 1002 and data[0] >> 4 == codec.CONNACK and len(data) == 4  # the CONNACK only
    before = mosquitto.log_text().count("New connection from")
    for first in (codec.encode(codec.Ping(codec.PINGREQ), MQTT311), b"\x00\x00", b"\x10\x80\x80\x80\x80\x01"):
        ws = await raw(http, gw)
        await ws.send_bytes(first)
        assert (await read_until_close(ws))[1] == 1002
    ws = await raw(http, gw)
    await ws.send_str("text is not MQTT")
    assert (await read_until_close(ws))[1] == 1003
    ws = await raw(http, gw, protocols=())
    assert ws.protocol is None and (await read_until_close(ws))[1] == 1002
    ws = await raw(http, gw)
    await ws.send_bytes(codec.frame(0x10, b"\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01x"))  # MQTT 3.1
    assert await read_until_close(ws) == (bytes([0x20, 0x02, 0x00, 0x01]), 1002)
    await asyncio.sleep(0.2)
    assert mosquitto.log_text().count("New connection from") == before  # the broker was never dialled


async def test_topic_aliases_are_resolved_before_the_rules(gw, http, mosquitto, clients):
    broker = await watching(mosquitto, clients, "#")
    ws = await raw(http, gw)
    await ws.send_bytes(connect_packet(MQTT5))
    connack = (await asyncio.wait_for(ws.receive(), 5)).data
    packet = codec.decode(connack[0], connack[2:], MQTT5)
    aliases = codec.prop(packet.properties, codec.TOPIC_ALIAS_MAXIMUM)
    assert isinstance(aliases, int) and aliases >= 2
    alias = lambda n: ((codec.TOPIC_ALIAS, n),)  # noqa: E731
    await ws.send_bytes(
        codec.encode(codec.Publish("public/a", b"set", 1, packet_id=1, properties=alias(1)), MQTT5)
        + codec.encode(codec.Publish("", b"used", 1, packet_id=2, properties=alias(1)), MQTT5)
        + codec.encode(codec.Publish("secret/b", b"set", 1, packet_id=3, properties=alias(2)), MQTT5)
        + codec.encode(codec.Publish("", b"used", 1, packet_id=4, properties=alias(2)), MQTT5)
    )
    acks = b""
    while len(acks) < 4 + 4 + 5 + 5:
        acks += (await asyncio.wait_for(ws.receive(), 5)).data
    assert codec.encode(codec.Ack(codec.PUBACK, 3, 0x87), MQTT5) in acks
    assert codec.encode(codec.Ack(codec.PUBACK, 4, 0x87), MQTT5) in acks
    assert [(m.topic, m.payload) for m in [await broker.message(), await broker.message()]] == [
        ("public/a", b"set"),
        ("public/a", b"used"),
    ]
    await broker.nothing()
    await ws.send_bytes(codec.encode(codec.Publish("public/x", b"", properties=alias(aliases + 1)), MQTT5))
    data, code = await read_until_close(ws)
    assert code == 1002 and data == codec.encode(codec.Disconnect(codec.TOPIC_ALIAS_INVALID), MQTT5)


# -- live changes: reload and re-authentication ---------------------------------------------------------


async def test_a_reload_of_the_rules_applies_to_the_next_packet(start_gateway, files, clients, mosquitto):
    gw = await start_gateway(config(mosquitto))
    broker = await watching(mosquitto, clients, "news/#")
    alice = await through(gw, clients, "alice", MQTT5)
    assert await alice.publish("news/today", b"early", 1) == (0x87,)
    more = RULES + '      - allow: publish\n        topic: "news/#"\n'
    (files / "gateway.yaml").write_text(textwrap.dedent(config(mosquitto, more)))
    ok, message = await gw.reload()
    assert ok and "rules of mqtt replaced" in message, message
    assert await alice.publish("news/today", b"now", 1) == (0,)
    assert (await broker.message()).payload == b"now"
    assert not alice.disconnected.is_set()


async def test_roles_changed_by_reauthentication_apply_without_reconnecting(
    start_gateway, files, clients, mosquitto, http
):
    issuer = Issuer()
    await issuer.start()
    try:
        realm = f"""
    - name: tokens
      description: Tokens
      authentication:
        http-challenge-scheme: Application Token
        login-modules:
          login-module:
            type: jwt
            options:
              jwks-url: {issuer.url}
              issuer: {ISSUER}
              audience: {AUDIENCE}
"""
        service = f"""
  - name: tokens
    accept: ws://127.0.0.1:0/tokens
    connect: tcp://127.0.0.1:{mosquitto.port}
    type: mqtt.proxy
    realm-name: tokens
    authorization-constraint:
      require-role: AUTHORIZED
    properties:
      mqtt.password-file: broker.pw
    authorization-rule:
{RULES}"""
        gw = await start_gateway(config(mosquitto, extra=service) + realm)
        headers = {"Authorization": f"Bearer {issuer.token(sub='carol')}"}
        carol = Paho("", MQTT5, websocket=("/tokens", headers))
        clients.append(carol)
        assert await carol.connect("127.0.0.1", gw.port_of("tokens")) == 0
        assert await carol.subscribe(("$SYS/broker/uptime", 0)) == (0x87,)  # not OPS yet
        # the refresh URL and the connection id: only the WebSocket handshake's response has them
        session = next(live for live in gw.runtime.connections if live.service == "tokens")
        refresh = f"http://127.0.0.1:{gw.port_of('tokens')}/tokens/.wsgate/refresh/{session.id}"
        token = issuer.token(sub="carol", roles=["AUTHORIZED", "OPS"])
        async with http.post(refresh, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200, await response.text()
        assert await carol.subscribe(("$SYS/broker/uptime", 0)) == (0,)
        assert not carol.disconnected.is_set()
    finally:
        assert issuer.runner is not None
        await issuer.runner.cleanup()


# -- broker connections ---------------------------------------------------------------------------------


async def test_tls_to_the_broker_uses_the_truststore(start_gateway, files, clients, mosquitto, pem_stores):
    from .conftest import SECURITY_PEM

    text = config(mosquitto, connect=f"ssl://localhost:{mosquitto.tls_port}")
    gw = await start_gateway(text.replace("security:\n", SECURITY_PEM.strip() + "\n", 1))
    broker = await watching(mosquitto, clients, "public/#")
    alice = await through(gw, clients, "alice", MQTT311)
    await alice.publish("public/tls", b"over tls", 1)
    assert (await broker.message()).payload == b"over tls"


async def test_a_broker_that_is_down_gets_a_server_unavailable_connack(start_gateway, files, clients, mosquitto):
    from .processes import free_port

    gw = await start_gateway(config(mosquitto, connect=f"tcp://127.0.0.1:{free_port()}"))
    for version, expected in ((MQTT5, 0x88), (MQTT311, 0x88)):  # paho reports 3.1.1's 3 as 0x88
        client = Paho("x", version, websocket=("/mqtt", basic("alice")))
        clients.append(client)
        assert await client.connect("127.0.0.1", gw.port_of("mqtt")) == expected


def test_the_example_config_loads():
    from wsgate.catalog import load_config

    example = Path(__file__).parent.parent / "docs" / "examples" / "mqtt.yaml"
    loaded = load_config(example)
    service = loaded.service("sensors")
    assert service.type == "mqtt.proxy" and len(service.rules) >= 3
    assert service.settings["mqtt.password-file"].value == b"development-only-mqtt-broker-password"
    assert b"development-only" not in repr(service).encode()  # the broker password never shows in a repr
