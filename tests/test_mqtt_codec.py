"""mqtt.proxy sans-I/O: the codec (fuzzed), the relay's per-packet decisions, CONNECT admission, config.

The broker-facing behaviour is tested end to end against Mosquitto in test_mqtt_proxy.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgate.catalog import load_config
from wsgate.config.model import Rule
from wsgate.core.identity import Identity
from wsgate.errors import ConfigErrors
from wsgate.security.rules import Decision
from wsgate.services.base import Runtime
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
    MqttError,
    Publish,
    Suback,
    Subscribe,
    Will,
)
from wsgate.services.mqtt.proxy import MqttProxyService, covers_dollar
from wsgate.services.mqtt.relay import ALIAS_CAP, Ending, Refusal, Relay, accepted, admit, broker_client_id

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
level = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/+#"), max_size=6)
topics = st.lists(level, min_size=1, max_size=4).map("/".join).filter(bool)
filters = st.builds(
    lambda levels, rest: "/".join(levels + (["#"] if rest else [])),
    st.lists(st.one_of(level, st.just("+")), min_size=1, max_size=4),
    st.booleans(),
).filter(lambda f: bool(f) and not f.startswith("$share/"))
packet_ids = st.integers(1, 0xFFFF)
u16, u32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
binary = st.binary(max_size=20)


def properties(*idents: int) -> st.SearchStrategy[codec.Properties]:
    """Properties among ``idents``, each at most once (user properties any number of times)."""
    values = {
        codec._BYTE: st.integers(0, 1),
        codec._U16: u16,
        codec._U32: u32,
        codec._VARINT: st.integers(1, codec.MAX_VARINT),
        codec._STRING: text,
        codec._BINARY: binary,
        codec._PAIR: st.tuples(text, text),
    }

    def one(ident: int) -> st.SearchStrategy[tuple[int, codec.PropertyValue]]:
        return values[codec.PROPERTY_TYPES[ident]].map(lambda value: (ident, value))

    singles = (
        st.lists(st.sampled_from(idents), unique=True, max_size=3).flatmap(lambda chosen: st.tuples(*map(one, chosen)))
        if idents
        else st.just(())
    )
    users = st.lists(one(codec.USER_PROPERTY), max_size=2)
    return st.tuples(singles, users).map(lambda both: tuple(both[0]) + tuple(both[1]))


def connects(version: int) -> st.SearchStrategy[Connect]:
    v5 = version == MQTT5

    def props(*idents: int) -> st.SearchStrategy[codec.Properties]:
        return properties(*idents) if v5 else st.just(())

    will = st.builds(Will, topics, binary, st.integers(0, 2), st.booleans(), props(0x18, 0x01, 0x02, 0x03))
    connect = st.builds(
        lambda client_id, clean, keep, user, password, w, p: Connect(
            version, client_id, clean, keep, user, password if (v5 or user is not None) else None, w, p
        ),
        text,
        st.booleans(),
        u16,
        st.none() | text,
        st.none() | binary,
        st.none() | will,
        props(codec.SESSION_EXPIRY, 0x21, codec.MAXIMUM_PACKET_SIZE, codec.TOPIC_ALIAS_MAXIMUM),
    )
    return connect


def packets(version: int) -> st.SearchStrategy[codec.Packet]:
    v5 = version == MQTT5

    def props(*idents: int) -> st.SearchStrategy[codec.Properties]:
        return properties(*idents) if v5 else st.just(())

    reason = st.sampled_from((0, 0x10, 0x80, 0x87, 0x91)) if v5 else st.just(0)
    connect = connects(version)
    publish = st.builds(
        lambda topic, payload, qos, retain, dup, packet_id, p: Publish(
            topic, payload, qos, retain, dup and qos > 0, packet_id if qos else 0, p
        ),
        topics,
        st.binary(max_size=64),
        st.integers(0, 2),
        st.booleans(),
        st.booleans(),
        packet_ids,
        props(0x01, 0x02, 0x03, 0x08, 0x09, codec.TOPIC_ALIAS),
    )
    ack = st.builds(Ack, st.sampled_from(codec.ACKS), packet_ids, reason, props(0x1F))
    options = st.integers(0, 2) if not v5 else st.integers(0, 0x2F).filter(lambda o: o & 3 != 3)
    subscribe = st.builds(
        Subscribe,
        packet_ids,
        st.lists(st.tuples(filters, options), min_size=1, max_size=3).map(tuple),
        props(codec.SUBSCRIPTION_ID),
    )
    suback = st.builds(
        Suback, packet_ids, st.lists(st.sampled_from((0, 1, 2, 0x80)), max_size=3).map(tuple), props(0x1F)
    )
    unsubscribe = st.builds(
        codec.Unsubscribe, packet_ids, st.lists(filters, min_size=1, max_size=3).map(tuple), props()
    )
    unsuback = st.builds(
        codec.Unsuback,
        packet_ids,
        st.lists(st.sampled_from((0, 0x11)), max_size=3).map(tuple) if v5 else st.just(()),
        props(0x1F),
    )
    ping = st.sampled_from((codec.Ping(codec.PINGREQ), codec.Ping(codec.PINGRESP)))
    connack = st.builds(
        codec.Connack, st.booleans(), st.sampled_from((0, 1, 5, 0x87)), props(0x12, codec.TOPIC_ALIAS_MAXIMUM)
    )
    disconnect = st.builds(codec.Disconnect, reason, props(0x1F, codec.SESSION_EXPIRY))
    choices = [connect, publish, ack, subscribe, suback, unsubscribe, unsuback, ping, connack, disconnect]
    if v5:
        choices.append(
            st.builds(codec.Auth, st.sampled_from((0, 0x18, 0x19)), props(codec.AUTH_METHOD, codec.AUTH_DATA))
        )
    return st.one_of(*choices)


PACKETS = {version: packets(version) for version in (MQTT311, MQTT5)}
CONNECTS = {version: connects(version) for version in (MQTT311, MQTT5)}


def split(data: bytes) -> tuple[int, bytes]:
    found = codec.packet_at(data, 0, 1 << 28)
    assert found is not None and found[1] == len(data)
    return data[0], data[found[0] :]


versions = st.sampled_from((MQTT311, MQTT5))

# -- codec ------------------------------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_decode_inverts_encode_and_encode_inverts_decode(data):
    version = data.draw(versions)
    packet = data.draw(PACKETS[version])
    wire = codec.encode(packet, version)
    first, body = split(wire)
    decoded = codec.decode(first, body, version)
    assert decoded == packet
    assert codec.encode(decoded, version) == wire


@FUZZ
@given(versions, st.binary(max_size=64))
def test_random_bytes_raise_nothing_but_the_codecs_error(version, data):
    try:
        found = codec.packet_at(data, 0, 1024)
        if found is not None:
            codec.decode(data[0], data[found[0] : found[1]], version)
    except MqttError:
        pass


@FUZZ
@given(versions, st.binary(max_size=80))
def test_random_connect_bodies_raise_nothing_but_the_codecs_error(version, tail):
    """A CONNECT's header is right, the rest is noise: what the gateway reads before it dials anything."""
    try:
        codec.decode(0x10, b"\x00\x04MQTT" + bytes((version,)) + tail, MQTT311)
    except MqttError:
        pass


@FUZZ
@given(st.data())
def test_admit_takes_any_valid_connect(data):
    """Whatever a valid CONNECT holds, the broker's CONNECT is one the codec writes and reads back."""
    version = data.draw(versions)
    connect = data.draw(CONNECTS[version])
    user = data.draw(st.none() | text.filter(bool))
    try:
        upstream = admit(connect, user, b"pw", 4096, only_public)
    except Refusal as refusal:
        assert refusal.reason in (codec.NOT_AUTHORIZED, codec.BAD_AUTH_METHOD, codec.CLIENT_ID_INVALID)
        return
    assert upstream.username == user and upstream.password == (b"pw" if user else None)
    first, body = split(codec.encode(upstream, version))
    assert codec.decode(first, body, version) == upstream


@FUZZ
@given(versions, st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6))
def test_random_streams_through_the_relay_end_the_connection_or_pass(version, data, cuts):
    """Whatever a client sends after its CONNECT, the relay answers with a ``Step``; an ``Ending`` at worst."""
    relay = Relay(version, 1024, lambda op, fields: Decision(fields["topic"].startswith("a")), alias_max=4)
    for piece in pieces(data, cuts):
        step = relay.from_client(piece)
        if step.end is not None:
            assert step.end.code in (1002, 1008, 1009)
            break
    relay.from_broker(data)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]


def client_stream(version: int) -> st.SearchStrategy[list[codec.Packet]]:
    """Packets a client sends after its CONNECT (distinct SUBSCRIBE ids, no topic aliases)."""
    publish = st.builds(
        lambda topic, payload, qos, retain, packet_id: Publish(
            topic, payload, qos, retain, False, packet_id if qos else 0
        ),
        topics,
        st.binary(max_size=64),
        st.integers(0, 2),
        st.booleans(),
        packet_ids,
    )
    ack = st.builds(Ack, st.sampled_from(codec.ACKS), packet_ids)
    unsubscribe = st.builds(codec.Unsubscribe, packet_ids, st.lists(filters, min_size=1, max_size=2).map(tuple))
    packet = st.one_of(publish, ack, unsubscribe, st.just(codec.Ping(codec.PINGREQ)))
    return st.lists(packet, min_size=1, max_size=6)


STREAMS = {version: client_stream(version) for version in (MQTT311, MQTT5)}


@FUZZ
@given(st.data())
def test_any_split_of_a_stream_decides_the_same(data):
    version = data.draw(versions)
    stream = b"".join(codec.encode(p, version) for p in data.draw(STREAMS[version]))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))

    def run(parts: list[bytes]) -> tuple[bytes, bytes]:
        relay = Relay(version, 1 << 20, lambda op, fields: Decision("/" in fields["topic"]))
        steps = [relay.from_client(part) for part in parts]
        assert all(step.end is None for step in steps)
        return b"".join(s.to_broker for s in steps), b"".join(s.to_client for s in steps)

    whole = run([stream])
    assert run(pieces(stream, cuts)) == whole
    allowed = Relay(version, 1 << 20, lambda op, fields: Decision(True))
    assert allowed.from_client(stream).to_broker == stream  # everything allowed: the bytes as they came


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"\x30\x80\x00", codec.MALFORMED),  # remaining length not minimal
        (b"\x30\xff\xff\xff\xff\x01", codec.MALFORMED),  # five length bytes
        (b"\x30\xff\xff\xff\x7f", codec.PACKET_TOO_LARGE),  # refused before its body is there
    ],
)
def test_remaining_lengths(data, reason):
    with pytest.raises(MqttError) as error:
        codec.packet_at(data, 0, 1024)
    assert error.value.reason == reason


@pytest.mark.parametrize(
    "first,body,version,reason",
    [
        (0x30, b"\x00\x03a\x00b", MQTT311, codec.MALFORMED),  # U+0000 in a topic
        (0x30, b"\x00\x03a/+", MQTT311, codec.TOPIC_NAME_INVALID),
        (0x30, b"\x00\x00", MQTT311, codec.TOPIC_NAME_INVALID),  # empty topic in 3.1.1
        (0x38, b"\x00\x01a", MQTT311, codec.MALFORMED),  # DUP at QoS 0
        (0x32, b"\x00\x01a\x00\x00", MQTT311, codec.MALFORMED),  # packet id 0
        (0x82, b"\x00\x01\x00\x03a#b\x00", MQTT311, codec.TOPIC_FILTER_INVALID),
        (0x82, b"\x00\x01\x00\x09$share/g/\x00", MQTT311, codec.TOPIC_FILTER_INVALID),  # no filter after the group
        (0x82, b"\x00\x01\x00\x01a\x04", MQTT311, codec.MALFORMED),  # reserved option bits in 3.1.1
        (0x82, b"\x00\x01\x00", MQTT5, codec.PROTOCOL_ERROR),  # no filter
        (0x80, b"\x00\x01\x00\x01a\x00", MQTT311, codec.MALFORMED),  # SUBSCRIBE without its flag bits
        (0x30, b"\x00\x01a\x06\x23\x00\x01\x23\x00\x02", MQTT5, codec.PROTOCOL_ERROR),  # a property twice
        (0x30, b"\x00\x01a\x02\x7f\x00", MQTT5, codec.MALFORMED),  # unknown property
        (0xF0, b"", MQTT311, codec.MALFORMED),  # AUTH does not exist in 3.1.1
        (0x10, b"\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01x", MQTT311, codec.UNSUPPORTED_VERSION),
        (0x10, b"\x00\x04MQTT\x04\x40\x00\x3c\x00\x01x\x00\x01p", MQTT311, codec.MALFORMED),  # password, no user
        (0x10, b"\x00\x04MQTT\x04\x18\x00\x3c\x00\x01x", MQTT311, codec.MALFORMED),  # will QoS 3
    ],
)
def test_malformed_packets_name_their_reason(first, body, version, reason):
    with pytest.raises(MqttError) as error:
        codec.decode(first, body, version)
    assert error.value.reason == reason


# -- the relay --------------------------------------------------------------------------------------------

PUBLIC = "public/"


def only_public(op: str, fields: dict[str, str]) -> Decision:
    return Decision(fields["topic"].startswith(PUBLIC), None, "refuse")


def enc(packet: codec.Packet, version: int = MQTT5) -> bytes:
    return codec.encode(packet, version)


@pytest.mark.parametrize("version", [MQTT311, MQTT5])
def test_refused_publishes_are_answered_by_the_protocols_means(version):
    relay = Relay(version, 4096, only_public)
    stream = b"".join(enc(Publish("secret/x", b"p", qos, packet_id=qos), version) for qos in (0, 1, 2))
    step = relay.from_client(stream + enc(Publish("public/x", b"ok", 1, packet_id=9), version))
    assert step.to_broker == enc(Publish("public/x", b"ok", 1, packet_id=9), version)
    code = 0x87 if version == MQTT5 else 0
    assert step.to_client == enc(Ack(PUBACK, 1, code), version) + enc(Ack(PUBREC, 2, code), version)
    # the PUBREL for the refused QoS 2 publish stays in the gateway; another id's goes on
    step = relay.from_client(enc(Ack(PUBREL, 2), version) + enc(Ack(PUBREL, 3), version))
    assert step.to_broker == enc(Ack(PUBREL, 3), version)
    assert step.to_client == enc(Ack(PUBCOMP, 2, 0x92 if version == MQTT5 else 0), version)


def test_then_close_ends_after_what_came_before():
    relay = Relay(MQTT5, 4096, lambda op, f: Decision(f["topic"] == "ok", None, "close"))
    step = relay.from_client(enc(Publish("ok", b"1")) + enc(Publish("alarm", b"2")) + enc(Publish("ok", b"3")))
    assert step.to_broker == enc(Publish("ok", b"1"))
    assert step.end is not None and (step.end.code, step.end.reason) == (1008, 0x87)


@pytest.mark.parametrize("version", [MQTT311, MQTT5])
def test_subscribe_is_cut_to_the_allowed_filters_and_the_suback_merged(version):
    relay = Relay(version, 4096, only_public)
    wanted = (("secret/#", 1), ("public/a", 1), ("$share/g/secret/b", 0), ("$share/g/public/b", 2))
    step = relay.from_client(enc(Subscribe(7, wanted), version))
    assert step.to_broker == enc(Subscribe(7, (("public/a", 1), ("$share/g/public/b", 2))), version)
    assert step.to_client == b""
    refused = 0x87 if version == MQTT5 else 0x80
    broker = enc(Suback(7, (1, 2)), version) + enc(codec.Ping(codec.PINGRESP), version)
    out, end = relay.from_broker(broker[:3])
    assert out == b"" and end is None  # half a SUBACK waits for the rest
    out, end = relay.from_broker(broker[3:])
    assert out == enc(Suback(7, (refused, 1, refused, 2)), version) + enc(codec.Ping(codec.PINGRESP), version)
    # nothing allowed: the gateway answers, the broker never hears of it
    step = relay.from_client(enc(Subscribe(8, (("secret/a", 0),)), version))
    assert step.to_broker == b"" and step.to_client == enc(Suback(8, (refused,)), version)


def test_a_subscribe_packet_id_in_use_is_a_protocol_error():
    relay = Relay(MQTT5, 4096, only_public)
    assert relay.from_client(enc(Subscribe(7, (("public/a", 0),)))).end is None
    step = relay.from_client(enc(Subscribe(7, (("public/b", 0),))))
    assert step.to_broker == b"" and step.end is not None and step.end.reason == codec.PROTOCOL_ERROR
    relay = Relay(MQTT5, 4096, only_public)
    relay.from_client(enc(Subscribe(7, (("public/a", 0),))))
    relay.from_broker(enc(Suback(7, (0,))))
    assert relay.from_client(enc(Subscribe(7, (("public/b", 0),)))).end is None  # answered: free again


def test_topic_aliases_are_resolved_and_never_reach_the_broker():
    relay = Relay(MQTT5, 4096, only_public, alias_max=2)
    alias = lambda n: ((codec.TOPIC_ALIAS, n), (0x03, "text/plain"))  # noqa: E731
    step = relay.from_client(
        enc(Publish("public/a", b"1", properties=alias(1))) + enc(Publish("", b"2", properties=alias(1)))
    )
    assert step.to_broker == enc(Publish("public/a", b"1", properties=((0x03, "text/plain"),))) + enc(
        Publish("public/a", b"2", properties=((0x03, "text/plain"),))
    )
    # an alias pointed at a refused topic stays refused, whatever the broker's alias table says
    step = relay.from_client(enc(Publish("secret/b", b"3", 1, packet_id=1, properties=alias(1))))
    step2 = relay.from_client(enc(Publish("", b"4", 1, packet_id=2, properties=alias(1))))
    assert step.to_broker == step2.to_broker == b""
    assert step2.to_client == enc(Ack(PUBACK, 2, 0x87))
    for bad, reason in ((3, codec.TOPIC_ALIAS_INVALID), (0, codec.TOPIC_ALIAS_INVALID), (2, codec.PROTOCOL_ERROR)):
        ending = (
            Relay(MQTT5, 4096, only_public, alias_max=2).from_client(enc(Publish("", b"", properties=alias(bad)))).end
        )
        assert ending is not None and ending.reason == reason


@pytest.mark.parametrize(
    "packet,reason",
    [
        (Connect(MQTT5, "again"), codec.PROTOCOL_ERROR),
        (codec.Auth(0x18), codec.PROTOCOL_ERROR),
        (codec.Connack(False, 0), codec.PROTOCOL_ERROR),
        (Suback(1, (0,)), codec.PROTOCOL_ERROR),
        (codec.Ping(codec.PINGRESP), codec.PROTOCOL_ERROR),
        (Publish("", b"no alias"), codec.PROTOCOL_ERROR),
    ],
)
def test_packets_a_client_may_not_send(packet, reason):
    step = Relay(MQTT5, 4096, only_public).from_client(enc(Publish("public/x", b"")) + enc(packet))
    assert step.to_broker == enc(Publish("public/x", b""))
    assert step.end is not None and step.end.reason == reason and step.end.code == 1002


def test_topic_aliases_hold_a_bounded_number_of_bytes():
    relay = Relay(MQTT5, 1 << 20, only_public, alias_max=ALIAS_CAP)
    long = "public/" + "x" * 30_000
    alias = lambda n: ((codec.TOPIC_ALIAS, n),)  # noqa: E731
    assert relay.from_client(enc(Publish(long, b"", properties=alias(1)))).end is None
    assert relay.from_client(enc(Publish(long, b"", properties=alias(1)))).end is None  # replaced, not added
    assert relay.from_client(enc(Publish(long, b"", properties=alias(2)))).end is None
    ending = relay.from_client(enc(Publish(long, b"", properties=alias(3)))).end
    assert ending is not None and ending.reason == codec.QUOTA_EXCEEDED


def test_limits_both_ways():
    relay = Relay(MQTT311, 64, only_public)
    step = relay.from_client(enc(Publish("public/x", b"x" * 100), MQTT311))
    assert step.end is not None and (step.end.code, step.end.reason) == (1009, codec.PACKET_TOO_LARGE)
    out, end = relay.from_broker(enc(Publish("public/x", b"x" * 100), MQTT311))
    assert out == b"" and end is not None and end.code == 1009


# -- CONNECT ----------------------------------------------------------------------------------------------


def allow_all(op: str, fields: dict[str, str]) -> Decision:
    return Decision(True)


def test_admit_injects_the_principal_and_the_gateways_password():
    claimed = Connect(MQTT311, "phone", username="bob", password=b"bobs-password")
    upstream = admit(claimed, "alice", b"gateway", 4096, allow_all)
    assert (upstream.username, upstream.password, upstream.client_id) == ("alice", b"gateway", "alice:phone")
    anonymous = admit(claimed, None, b"gateway", 4096, allow_all)
    assert (anonymous.username, anonymous.password, anonymous.client_id) == (None, None, ":phone")
    assert admit(Connect(MQTT311, ""), "alice", None, 4096, allow_all).client_id == ""  # the broker assigns one
    v5 = admit(Connect(MQTT5, "x", properties=((codec.MAXIMUM_PACKET_SIZE, 1 << 20),)), "alice", None, 4096, allow_all)
    assert codec.prop(v5.properties, codec.MAXIMUM_PACKET_SIZE) == 4096


@given(st.lists(st.tuples(st.none() | text.filter(bool), text.filter(bool)), unique=True, min_size=2, max_size=6))
def test_broker_client_ids_are_one_to_one(pairs):
    assert len({broker_client_id(user, client_id) for user, client_id in pairs}) == len(pairs)


def test_admit_refuses_a_will_the_rules_refuse_and_enhanced_authentication():
    will = Connect(MQTT5, "x", will=Will("secret/w", b"bye"))
    with pytest.raises(Refusal) as refusal:
        admit(will, "alice", None, 4096, only_public)
    assert refusal.value.reason == codec.NOT_AUTHORIZED
    with pytest.raises(Refusal) as refusal:
        admit(Connect(MQTT5, "x", properties=((codec.AUTH_METHOD, "SCRAM-SHA-1"),)), "alice", None, 4096, allow_all)
    assert refusal.value.reason == codec.BAD_AUTH_METHOD


def test_accepted_caps_topic_aliases_and_packet_size():
    connack, aliases = accepted(codec.Connack(False, 0, ((codec.TOPIC_ALIAS_MAXIMUM, 1000),)), 4096)
    assert aliases == ALIAS_CAP and codec.prop(connack.properties, codec.TOPIC_ALIAS_MAXIMUM) == ALIAS_CAP
    assert codec.prop(connack.properties, codec.MAXIMUM_PACKET_SIZE) == 4096
    connack, aliases = accepted(codec.Connack(False, 0), 4096)
    assert aliases == 0 and codec.prop(connack.properties, codec.TOPIC_ALIAS_MAXIMUM) is None


def test_ending_maps_errors_to_close_codes():
    assert Ending.of(MqttError("x")).code == 1002
    assert Ending.of(MqttError("x", codec.PACKET_TOO_LARGE)).code == 1009


# -- the service's config and $ topics --------------------------------------------------------------------

CONFIG = """
service:
  - name: mqtt
    accept: ws://127.0.0.1:0/mqtt
    connect: tcp://127.0.0.1:1883
    type: mqtt.proxy
    authorization-rule:
{rules}
"""


def service(tmp_path: Path, rules: str) -> MqttProxyService:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(CONFIG.format(rules=rules)))
    return MqttProxyService(load_config(path).service("mqtt"), Runtime())


def test_wildcards_never_cover_dollar_topics(tmp_path):
    rules = '      - allow: [publish, subscribe]\n        topic: "#"\n      - allow: subscribe\n        role: ops\n        topic: "$SYS/broker/#"\n'
    svc = service(tmp_path, rules)
    alice, ops = Identity("r", "alice", frozenset(), None), Identity("r", "olga", frozenset({"ops"}), None)
    assert svc.decide(alice, "subscribe", {"topic": "anything/at/all"}).allowed
    assert not svc.decide(ops, "subscribe", {"topic": "$SYS/#"}).allowed  # wider than $SYS/broker/#
    assert not svc.decide(alice, "subscribe", {"topic": "$SYS/broker/uptime"}).allowed
    assert svc.decide(ops, "subscribe", {"topic": "$SYS/broker/uptime"}).allowed
    assert not svc.decide(ops, "publish", {"topic": "$SYS/broker/uptime", "retain": "false"}).allowed
    assert covers_dollar(Rule(True, ("publish",))) and not covers_dollar(
        Rule(True, ("publish",), fields={"topic": "+/x"})
    )


def test_rules_take_retain_and_share_group(tmp_path):
    rules = '      - deny: publish\n        retain: "true"\n      - allow: publish\n        topic: "a/#"\n      - allow: subscribe\n        topic: "a/#"\n        share-group: "{user}"\n'
    svc = service(tmp_path, rules)
    alice = Identity("r", "alice", frozenset(), None)
    assert svc.decide(alice, "publish", {"topic": "a/b", "retain": "false"}).allowed
    assert not svc.decide(alice, "publish", {"topic": "a/b", "retain": "true"}).allowed
    assert svc.decide(alice, "subscribe", {"topic": "a/b", "share-group": "alice"}).allowed
    assert not svc.decide(alice, "subscribe", {"topic": "a/b", "share-group": "bob"}).allowed
    assert not svc.decide(alice, "subscribe", {"topic": "a/b"}).allowed  # the rule names a group


@pytest.mark.parametrize(
    "extra,message",
    [
        ('      - allow: consume\n        topic: "a"\n', "consume"),
        ('      - allow: publish\n        exchange: "a"\n', "exchange"),
        ("      - deny: publish\n        then: drop\n", "drop"),
        ('      - allow: subscribe\n        topic: "a/#/b"\n', "may only be the last"),
    ],
)
def test_bad_rules_are_located_config_errors(tmp_path, extra, message):
    with pytest.raises(ConfigErrors) as error:
        service(tmp_path, extra)
    assert "service[mqtt]/authorization-rule" in str(error.value) and message in str(error.value)


def test_an_unreadable_password_file_names_the_property(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(
        textwrap.dedent(CONFIG.format(rules='      - allow: "*"\n'))
        + "    properties:\n      mqtt.password-file: missing.pw\n"
    )
    with pytest.raises(ConfigErrors) as error:
        load_config(path)
    assert "service[mqtt]/properties/mqtt.password-file" in str(error.value)
    assert str(tmp_path / "missing.pw") in str(error.value)  # resolved against the config's folder
