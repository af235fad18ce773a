"""mqtt.proxy attack review: what the broker delivers is held to the subscribe rules in force now, not to the ones
in force when the subscription was made (a resumed session, a reload, a re-authentication)."""

# ruff: noqa: F811  (session and test fixtures are imported, and requested by name)
from __future__ import annotations

import asyncio
import textwrap

import pytest

from wsgate.security.rules import Decision
from wsgate.services.mqtt import codec
from wsgate.services.mqtt.codec import (
    MQTT5,
    MQTT311,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Ack,
    Connect,
    Publish,
    Subscribe,
    Will,
)
from wsgate.services.mqtt.relay import Relay, admit

from .mosquitto import Paho
from .test_mqtt_proxy import RULES, basic, clients, config, files, raw, watching  # noqa: F401

NEWS = RULES + '      - allow: subscribe\n        topic: "news/#"\n'


async def persistent(gw, clients, user: str, client_id: str) -> Paho:
    """A 3.1.1 client with a session the broker keeps (clean session off)."""
    client = Paho(client_id, MQTT311, websocket=("/mqtt", basic(user)))
    client.client._clean_session = False  # paho's constructor flag, set after: the helper does not pass it
    clients.append(client)
    assert await client.connect("127.0.0.1", gw.port_of("mqtt")) == 0
    return client


async def test_deliveries_follow_the_rules_in_force_now(start_gateway, files, clients, mosquitto):
    gw = await start_gateway(config(mosquitto, NEWS))
    alice = await persistent(gw, clients, "alice", "keep")
    assert await alice.subscribe(("news/#", 2)) == (2,)
    broker = await watching(mosquitto, clients, "news/#")
    await broker.publish("news/a", b"allowed", 1)
    assert (await alice.message()).payload == b"allowed"
    # a reload takes news/# away: the subscription made under the old rules delivers nothing more
    (files / "gateway.yaml").write_text(textwrap.dedent(config(mosquitto, RULES)))
    ok, message = await gw.reload()
    assert ok, message
    await broker.publish("news/b", b"after the reload", 1)
    await alice.nothing(0.5)
    # nor does the broker's session when alice comes back to it
    await alice.close()
    await broker.publish("news/c", b"queued", 1)
    alice = await persistent(gw, clients, "alice", "keep")
    for number in range(30):  # more than the broker's window of unacknowledged QoS 2 messages (20)
        await broker.publish(f"news/{number}", b"resumed", 2)
    await alice.nothing(0.5)
    # the gateway acknowledged what it dropped (QoS 2 to the end): what the rules allow still arrives
    assert await alice.subscribe(("public/#", 2)) == (2,)
    await broker.publish("public/x", b"fine", 2)
    assert (await alice.message()).payload == b"fine"


@pytest.mark.parametrize("version, ending", [(MQTT311, b""), (MQTT5, b""), (MQTT5, b"\xe0\x01\x04")])
async def test_a_will_the_rules_no_longer_allow_is_not_published(
    start_gateway, files, clients, mosquitto, http, version, ending
):
    gw = await start_gateway(config(mosquitto, RULES + '      - allow: publish\n        topic: "news/#"\n'))
    broker = await watching(mosquitto, clients, "news/#")
    will = Will("news/will", b"alice is gone")
    for client_id in ("allowed", "w"):
        ws = await raw(http, gw)
        await ws.send_bytes(codec.encode(Connect(version, client_id, will=will), version))
        assert (await asyncio.wait_for(ws.receive(), 5)).data[0] >> 4 == codec.CONNACK
        if client_id == "allowed":  # while the rules allow it, the will goes out as the client asked
            if ending:
                await ws.send_bytes(ending)
            await asyncio.wait_for(ws.close(), 5)
            assert (await broker.message()).payload == b"alice is gone"
    # a reload takes news/# away: the will, admitted at CONNECT, is a publish the rules now refuse
    (files / "gateway.yaml").write_text(textwrap.dedent(config(mosquitto, RULES)))
    ok, message = await gw.reload()
    assert ok, message
    if ending:  # MQTT 5: DISCONNECT 0x04, "with will message"
        await ws.send_bytes(ending)
    await asyncio.wait_for(ws.close(), 5)  # else gone without a DISCONNECT: the broker would publish the will
    await broker.nothing(0.7)


# -- the same, without I/O (services/mqtt/relay.py) -----------------------------------------------------------


def test_a_delivery_the_rules_refuse_is_dropped_and_acknowledged_to_the_broker():
    allowed = {"public/x"}
    relay = Relay(MQTT5, 4096, lambda op, f: Decision(True), receiving=lambda: lambda topic, groups: topic in allowed)
    stream = enc(Publish("secret/a", b"1", 1, packet_id=3)) + enc(Publish("public/x", b"2", 2, packet_id=4))
    stream += enc(Publish("secret/b", b"3", 2, packet_id=5)) + enc(Publish("secret/c", b"4"))
    out, end = relay.from_broker(stream)
    assert end is None and out == enc(Publish("public/x", b"2", 2, packet_id=4))
    assert relay.take_answers() == enc(Ack(PUBACK, 3)) + enc(Ack(PUBREC, 5))
    out, end = relay.from_broker(enc(Ack(PUBREL, 5)) + enc(Ack(PUBREL, 4)))  # 4 is the client's to answer
    assert out == enc(Ack(PUBREL, 4)) and relay.take_answers() == enc(Ack(PUBCOMP, 5))
    _, end = relay.from_broker(enc(Publish("", b"", properties=((codec.TOPIC_ALIAS, 1),))))
    assert end is not None  # the gateway offers the broker no topic aliases
    # without rules nothing is read on the way down
    relay = Relay(MQTT5, 4096, lambda op, f: Decision(True), receiving=lambda: None)
    assert relay.from_broker(stream) == (stream, None) and relay.take_answers() == b""


def test_share_groups_subscribed_with_count_for_deliveries():
    def decide(op: str, fields: dict[str, str]) -> Decision:
        return Decision(fields.get("share-group") == "g")

    asked: list[tuple[str, frozenset[str]]] = []

    def receivable(topic: str, groups: frozenset[str]) -> bool:
        asked.append((topic, groups))
        return "g" in groups

    relay = Relay(MQTT5, 4096, decide, receiving=lambda: receivable)
    relay.from_client(enc(Subscribe(1, (("$share/g/news/#", 0), ("$share/h/news/#", 0)))))
    assert relay.groups == frozenset({"g"})  # only the group whose subscription passed
    out, _ = relay.from_broker(enc(Publish("news/a", b"")))
    assert out == enc(Publish("news/a", b"")) and asked == [("news/a", frozenset({"g"}))]


def test_the_broker_is_offered_no_topic_aliases():
    connect = Connect(MQTT5, "id", properties=((codec.TOPIC_ALIAS_MAXIMUM, 10),))
    upstream = admit(connect, "alice", None, 4096, lambda op, f: Decision(True))
    assert codec.prop(upstream.properties, codec.TOPIC_ALIAS_MAXIMUM) is None


def enc(packet: object) -> bytes:
    return codec.encode(packet, MQTT5)  # type: ignore[arg-type]
