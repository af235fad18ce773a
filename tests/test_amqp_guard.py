"""amqp.proxy's protocol logic without I/O (services/amqp_guard.py): reassembly, the gateway's login, limits,
refusals and user-id, plus fuzzing of the stream splitter."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import body, commands, frame, header, heartbeat

from wsgate.services.amqp_guard import (
    KEEP,
    PROTOCOL_HEADER,
    AmqpClose,
    AmqpGuard,
    BadProtocolHeader,
    ClientDone,
    Login,
)

LOGIN = Login("gateway", "s3cret", "/prod")


def m(channel: int, *values: object) -> bytes:
    return b"".join(frame.marshal(v, channel) for v in values)  # type: ignore[arg-type]


def parse(data: bytes) -> list[tuple[int, object]]:
    out = []
    while data:
        used, channel, value = frame.unmarshal(data)
        out.append((channel, value))
        data = data[used:]
    return out


START = m(0, commands.Connection.Start(server_properties={"product": "RabbitMQ"}, mechanisms="PLAIN AMQPLAIN"))
TUNE = m(0, commands.Connection.Tune(channel_max=0, frame_max=1 << 20, heartbeat=60))
CLIENT_HANDSHAKE = (
    PROTOCOL_HEADER
    + m(0, commands.Connection.StartOk(mechanism="PLAIN", response="\0mallory\0guess", locale="en_US"))
    + m(0, commands.Connection.TuneOk(10, 8192, 0))
    + m(0, commands.Connection.Open(virtual_host="/prod"))
)


def publish(channel: int, exchange: str, key: str, data: bytes, **props: object) -> bytes:
    return m(
        channel,
        commands.Basic.Publish(exchange=exchange, routing_key=key),
        header.ContentHeader(0, len(data), commands.Basic.Properties(**props)),  # type: ignore[arg-type]
    ) + (m(channel, body.ContentBody(data)) if data else b"")


def guard(allowed: set[str] | None = None, user: str | None = "joe") -> tuple[AmqpGuard, list[tuple[str, dict]]]:
    asked: list[tuple[str, dict]] = []

    def authorize(operation: str, fields: dict) -> bool:
        asked.append((operation, fields))
        return allowed is None or operation in allowed

    return AmqpGuard(LOGIN, authorize, lambda: user), asked


def opened(allowed: set[str] | None = None, user: str | None = "joe") -> tuple[AmqpGuard, list]:
    g, asked = guard(allowed, user)
    g.from_client(PROTOCOL_HEADER)
    g.from_broker(START)
    g.from_broker(TUNE)
    g.from_client(CLIENT_HANDSHAKE[len(PROTOCOL_HEADER) :])
    g.take_to_broker(), g.take_to_client()
    return g, asked


def handshake_guard() -> AmqpGuard:
    g, _ = guard()
    g.from_client(PROTOCOL_HEADER)
    g.from_broker(START)
    g.from_broker(TUNE)
    g.take_to_broker(), g.take_to_client()
    return g


def test_the_login_and_virtual_host_are_the_gateways():
    g, _ = guard()
    g.from_client(PROTOCOL_HEADER)
    assert g.take_to_broker() == PROTOCOL_HEADER
    g.from_broker(START)
    ((_, start),) = parse(g.take_to_client())
    assert start.mechanisms == "PLAIN AMQPLAIN"
    g.from_broker(TUNE)
    ((_, tune),) = parse(g.take_to_client())
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)  # capped
    g.from_client(CLIENT_HANDSHAKE[8:])
    sent = [v for _, v in parse(g.take_to_broker())]
    start_ok, tune_ok, open_ = sent
    assert start_ok.response == "\0gateway\0s3cret" and start_ok.mechanism == "PLAIN"
    assert (tune_ok.channel_max, tune_ok.frame_max) == (10, 8192)
    assert open_.virtual_host == "/prod"
    assert g.running and "s3cret" not in repr(LOGIN)


def test_another_virtual_host_is_refused_with_530():
    g = handshake_guard()
    g.from_client(m(0, commands.Connection.StartOk(mechanism="PLAIN", response="x")))
    g.from_client(m(0, commands.Connection.TuneOk(0, 0, 0)))
    with pytest.raises(AmqpClose) as caught:
        g.from_client(m(0, commands.Connection.Open(virtual_host="/")))
    assert caught.value.code == 530 and caught.value.index == commands.Connection.Open.index
    ((_, close),) = parse(caught.value.frame())
    assert (close.reply_code, close.class_id, close.method_id) == (530, 10, 40)


@pytest.mark.parametrize(
    "tune_ok", [commands.Connection.TuneOk(3000, 8192, 0), commands.Connection.TuneOk(10, 1 << 20, 0)]
)
def test_tune_ok_above_what_was_offered_is_refused(tune_ok):
    g = handshake_guard()
    g.from_client(m(0, commands.Connection.StartOk(mechanism="PLAIN", response="x")))
    with pytest.raises(AmqpClose) as caught:
        g.from_client(m(0, tune_ok))
    assert caught.value.code == 530


def test_the_negotiated_limits_are_enforced():
    g, _ = opened()
    with pytest.raises(AmqpClose) as caught:  # channel-max 10
        g.from_client(m(11, commands.Channel.Open()))
    assert caught.value.code == 504
    g, _ = opened()
    g.from_client(m(1, commands.Channel.Open()))
    with pytest.raises(AmqpClose) as caught:  # frame-max 8192: refused from the header, before the body
        g.from_client(publish(1, "x", "k", b"z" * 9000)[:200])
    assert caught.value.code == 501 or caught.value.code == 505


def test_refused_publish_closes_only_its_channel_and_drops_its_content():
    g, asked = opened(allowed={"queue.declare"})
    g.from_client(
        m(1, commands.Channel.Open()) + publish(1, "orders", "orders.joe", b"secret") + m(1, commands.Channel.CloseOk())
    )
    to_broker = [(c, v) for c, v in parse(g.take_to_broker())]
    assert [type(v) for _, v in to_broker] == [commands.Channel.Open, commands.Channel.Close]
    ((channel, close),) = parse(g.take_to_client())
    assert channel == 1 and close.reply_code == 403 and (close.class_id, close.method_id) == (60, 40)
    assert asked == [("basic.publish", {"exchange": "orders", "routing-key": "orders.joe"})]
    # reopened before the broker's Close-Ok: held, then released by it; the Close-Ok never reaches the client
    g.from_client(m(1, commands.Channel.Open()))
    assert g.take_to_broker() == b""
    g.from_broker(m(1, commands.Basic.Deliver("c", 1, False, "orders", "k")) + m(1, commands.Channel.CloseOk()))
    assert g.take_to_client() == b""
    assert [type(v) for _, v in parse(g.take_to_broker())] == [commands.Channel.Open]


@pytest.mark.parametrize("mode, expected", [("joe", "joe"), (None, None), (KEEP, "spoof")])
def test_user_id_is_set_removed_or_kept(mode, expected):
    g, _ = opened(user=mode)
    g.from_client(m(1, commands.Channel.Open()) + publish(1, "e", "k", b"abc", user_id="spoof", app_id="a"))
    sent = parse(g.take_to_broker())
    content = sent[2][1]
    assert isinstance(content, header.ContentHeader)
    assert content.properties.user_id == expected and content.properties.app_id == "a" and content.body_size == 3
    assert sent[3][1].value == b"abc"


def test_a_body_larger_than_declared_and_frames_out_of_order_close_the_connection():
    g, _ = opened()
    data = m(1, commands.Channel.Open()) + m(1, commands.Basic.Publish(exchange="e", routing_key="k"))
    data += m(1, header.ContentHeader(0, 2, commands.Basic.Properties())) + m(1, body.ContentBody(b"abc"))
    with pytest.raises(AmqpClose) as caught:
        g.from_client(data)
    assert caught.value.code == 501
    assert [type(v) for _, v in parse(g.take_to_broker())][:2] == [commands.Channel.Open, commands.Basic.Publish]
    g, _ = opened()
    with pytest.raises(AmqpClose) as caught:
        g.from_client(m(1, commands.Channel.Open()) + m(1, body.ContentBody(b"x")))
    assert caught.value.code == 505


def test_the_client_may_not_replace_the_login_once_open():
    g, _ = opened()
    with pytest.raises(AmqpClose) as caught:
        g.from_client(m(0, commands.Connection.UpdateSecret(new_secret="token", reason="x")))  # type: ignore[arg-type]
    assert caught.value.code == 503


def test_the_empty_queue_name_is_the_last_declared_or_unknown():
    g, asked = opened()
    g.from_client(m(1, commands.Channel.Open()) + m(1, commands.Queue.Declare(queue="")))
    g.from_client(m(1, commands.Basic.Consume(queue="")))
    g.from_broker(m(1, commands.Queue.DeclareOk(queue="amq.gen-abc", message_count=0, consumer_count=0)))
    g.from_client(m(1, commands.Basic.Get(queue="")))
    assert asked == [
        ("queue.declare", {"queue": ""}),
        ("basic.consume", {"queue": None}),
        ("basic.get", {"queue": "amq.gen-abc"}),
    ]


def test_not_amqp_and_early_close():
    g, _ = guard()
    with pytest.raises(BadProtocolHeader):
        g.from_client(b"GET / HTTP/1.1\r\n")
    g, _ = guard()
    g.from_client(b"AMQ")  # a header may come in pieces
    with pytest.raises(ClientDone):
        g.from_client(b"P\x00\x00\x09\x01" + m(0, commands.Connection.Close(200, "bye", 0, 0)))


def running_stream() -> bytes:
    """A valid client stream once open: channels, declares, publishes with bodies, heartbeats, a close."""
    parts = [m(1, commands.Channel.Open()), m(2, commands.Channel.Open())]
    for n in range(5):
        parts.append(m(1, commands.Queue.Declare(queue=f"q{n}")))
        parts.append(publish(2, "orders", f"k.{n}", bytes([n]) * (n * 700), user_id="spoof"))
        parts.append(frame.marshal(heartbeat.Heartbeat(), 0))
    parts.append(publish(1, "denied", "k", b"x" * 100))
    parts.append(m(1, commands.Channel.CloseOk()))
    parts.append(m(2, commands.Channel.Close(200, "", 0, 0)))
    return b"".join(parts)


def outcome(g: AmqpGuard, pieces: list[bytes]) -> tuple[bytes, bytes, str]:
    error = ""
    try:
        for piece in pieces:
            g.from_client(piece)
    except (AmqpClose, BadProtocolHeader, ClientDone) as exc:
        error = type(exc).__name__ + str(getattr(exc, "code", ""))
    return g.take_to_broker(), g.take_to_client(), error


STREAM = running_stream()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_any_split_of_a_valid_stream_gives_the_same_result(cuts):
    whole, _ = opened()
    whole.authorize = lambda op, fields: fields.get("exchange") != "denied"  # type: ignore[method-assign]
    expected = outcome(whole, [STREAM])
    assert expected[2] == ""
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    split, _ = opened()
    split.authorize = whole.authorize  # type: ignore[method-assign]
    assert outcome(split, [p for p in pieces if p]) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_random_bytes_only_ever_close_cleanly(data, after_handshake):
    g = opened()[0] if after_handshake else guard()[0]
    try:
        g.from_client(data)
        g.from_client(data)
    except (AmqpClose, BadProtocolHeader, ClientDone) as exc:
        if isinstance(exc, AmqpClose):
            assert parse(exc.frame())
    assert g.client.pending <= g.client.limit


def test_a_client_closing_across_the_gateways_close_or_reopening_at_once_goes_on():
    g, _ = opened(allowed=set())
    g.from_client(m(1, commands.Channel.Open()) + m(1, commands.Queue.Purge(queue="q")))
    g.take_to_broker(), g.take_to_client()
    g.from_client(m(1, commands.Channel.Close(200, "", 0, 0)))  # crossing the gateway's Close
    assert [type(v) for _, v in parse(g.take_to_client())] == [commands.Channel.CloseOk]
    assert g.take_to_broker() == b""
    g.from_client(m(1, commands.Channel.Open()))  # without its own Close-Ok: a new channel, held for the broker
    g.from_broker(m(1, commands.Channel.CloseOk()))
    assert [type(v) for _, v in parse(g.take_to_broker())] == [commands.Channel.Open]
    assert g.take_to_client() == b""
