"""amqp.proxy attack review: ways a client could make the broker route or read what the rules refuse, each
checked on a real RabbitMQ node (the broker's state looked at without the gateway)."""

# ruff: noqa: F811  (test_amqp_proxy.py's fixtures are imported, and requested by name)
from __future__ import annotations

import asyncio
import struct

import pytest
from pamqp import body, commands, frame, header

from wsgate.services.amqp_guard import AmqpClose, AmqpGuard

from .amqp_client import AmqpClient
from .rabbitmq import RabbitMq
from .test_amqp_guard import m, opened, parse, publish
from .test_amqp_proxy import RULES, broker_client, connect, gateway, unique  # noqa: F401

pytestmark = pytest.mark.timeout(60)

OWN_EXCHANGES = (
    RULES
    + """      - allow: exchange.declare, exchange.delete
        exchange: "{user}.#"
      - allow: basic.publish
        exchange: "{user}.#"
      - allow: queue.declare
        queue: "*"
"""
)


@pytest.fixture
async def direct(rabbitmq: RabbitMq):
    """A client straight to the broker, as the gateway's broker user: the broker's state without the gateway."""
    client = await broker_client(rabbitmq)
    yield client
    await asyncio.wait_for(client.close(), 5)


async def victim_queue(direct: AmqpClient, key: str = "orders.ann.#") -> str:
    """ann's queue on the orders exchange, made without the gateway: whatever joe gets into it bypassed the rules."""
    await direct.call(
        1, commands.Exchange.Declare(exchange="orders", exchange_type="topic"), commands.Exchange.DeclareOk
    )
    queue = unique("ann.inbox")
    await direct.call(1, commands.Queue.Declare(queue=queue), commands.Queue.DeclareOk)
    await direct.call(1, commands.Queue.Bind(queue=queue, exchange="orders", routing_key=key), commands.Queue.BindOk)
    return queue


async def count(direct: AmqpClient, queue: str) -> int:
    ok = await direct.call(1, commands.Queue.Declare(queue=queue, passive=True), commands.Queue.DeclareOk)
    return int(ok.message_count)


async def after(client: AmqpClient, channel: int) -> object:
    """What the client reads after what it just sent and a ``basic.qos`` on ``channel``: Qos-Ok when it passed."""
    await client.send(channel, commands.Basic.Qos(prefetch_count=1))
    return (await client.recv())[1]


@pytest.mark.parametrize("name", ["CC", "BCC"])
async def test_cc_and_bcc_headers_cannot_add_routing_keys_the_rules_refuse(gateway, connect, direct, name):
    queue = await victim_queue(direct)
    gw = await gateway()
    client = await connect(gw)
    await client.open_channel(1)
    # RabbitMQ's sender-selected distribution: each CC/BCC entry is one more routing key for the message
    headers = {name: ["orders.ann.secret"]}
    await client.publish(1, "orders", "orders.joe.x", b"smuggled", headers=headers)
    reply = await after(client, 1)
    assert await count(direct, queue) == 0
    assert isinstance(reply, commands.Channel.Close) and reply.reply_code == 403, reply
    # an entry the rules allow passes, the message goes to both keys
    mine = unique("joe.inbox")
    await direct.call(1, commands.Queue.Declare(queue=mine), commands.Queue.DeclareOk)
    bind = commands.Queue.Bind(queue=mine, exchange="orders", routing_key="orders.joe.cc")
    await direct.call(1, bind, commands.Queue.BindOk)
    await client.send(1, commands.Channel.CloseOk())
    await client.open_channel(1)
    await client.publish(1, "orders", "orders.joe.x", b"fine", headers={name: ["orders.joe.cc"]})
    assert isinstance(await after(client, 1), commands.Basic.QosOk)
    assert await count(direct, mine) == 1
    for name_ in (queue, mine):
        await direct.call(1, commands.Queue.Delete(queue=name_), commands.Queue.DeleteOk)


async def test_a_dead_letter_exchange_cannot_route_around_the_publish_rules(gateway, connect, direct):
    queue = await victim_queue(direct)
    gw = await gateway()
    client = await connect(gw)
    await client.open_channel(1)
    trap = unique("joe.trap")
    arguments = {
        "x-dead-letter-exchange": "orders",
        "x-dead-letter-routing-key": "orders.ann.secret",
        "x-message-ttl": 0,
    }
    await client.send(1, commands.Queue.Declare(queue=trap, arguments=arguments))
    _, reply = await client.recv()
    if isinstance(reply, commands.Queue.DeclareOk):  # the queue exists: a publish to it now dead-letters to ann
        bind = commands.Queue.Bind(queue=trap, exchange="orders", routing_key="orders.joe.trap")
        await client.call(1, bind, commands.Queue.BindOk)
        await client.publish(1, "orders", "orders.joe.trap", b"smuggled")
        assert isinstance(await after(client, 1), commands.Basic.QosOk)
        await asyncio.sleep(0.2)  # the broker dead-letters it
        await direct.call(1, commands.Queue.Delete(queue=trap), commands.Queue.DeleteOk)
    assert await count(direct, queue) == 0
    assert isinstance(reply, commands.Channel.Close) and reply.reply_code == 403, reply
    # a dead-letter exchange and key the publish rules allow pass
    arguments["x-dead-letter-routing-key"] = "orders.joe.dead"
    await client.send(1, commands.Channel.CloseOk())
    await client.open_channel(1)
    await client.call(1, commands.Queue.Declare(queue=trap, arguments=arguments), commands.Queue.DeclareOk)
    await client.call(1, commands.Queue.Delete(queue=trap), commands.Queue.DeleteOk)
    await direct.call(1, commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)


async def test_an_alternate_exchange_cannot_route_around_the_publish_rules(gateway, connect, direct):
    queue = await victim_queue(direct)
    gw = await gateway(OWN_EXCHANGES)
    client = await connect(gw)
    await client.open_channel(1)
    mine = unique("joe.ex")
    declare = commands.Exchange.Declare(
        exchange=mine, exchange_type="direct", auto_delete=True, arguments={"alternate-exchange": "orders"}
    )
    await client.send(1, declare)
    _, reply = await client.recv()
    if isinstance(reply, commands.Exchange.DeclareOk):  # unroutable here: on to orders with the same key
        await client.publish(1, mine, "orders.ann.secret", b"smuggled")
        assert isinstance(await after(client, 1), commands.Basic.QosOk)
        await client.call(1, commands.Exchange.Delete(exchange=mine), commands.Exchange.DeleteOk)
    assert await count(direct, queue) == 0
    assert isinstance(reply, commands.Channel.Close) and reply.reply_code == 403, reply
    await direct.call(1, commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)


async def test_the_empty_queue_name_means_the_queue_declared_last_even_before_its_declare_ok(gateway, connect, direct):
    theirs = unique("annbox").replace(".", "")  # one level: queue.declare "*" allows a passive declare of it
    await direct.call(1, commands.Queue.Declare(queue=theirs), commands.Queue.DeclareOk)
    await direct.publish(1, "", theirs, b"ann's")
    gw = await gateway(RULES + '      - allow: queue.declare\n        queue: "*"\n')
    client = await connect(gw)
    await client.open_channel(1)
    mine = unique("joe.q")
    await client.call(1, commands.Queue.Declare(queue=mine, auto_delete=True), commands.Queue.DeclareOk)
    # pipelined: the broker's "last declared queue" is ann's by the time it reads the get, the gateway's is joe's
    await client.send(1, commands.Queue.Declare(queue=theirs, passive=True), commands.Basic.Get(queue="", no_ack=True))
    _, reply = await client.recv()
    if isinstance(reply, commands.Queue.DeclareOk):  # (the gateway refuses at once: its Declare-Ok is swallowed)
        _, reply = await client.recv()
    assert not isinstance(reply, commands.Basic.GetOk), "ann's message was read through joe's rules"
    assert isinstance(reply, commands.Channel.Close) and reply.reply_code == 403, reply
    assert await count(direct, theirs) == 1
    await direct.call(1, commands.Queue.Delete(queue=theirs), commands.Queue.DeleteOk)


def typed_header(body_size: int, user_id: bytes) -> bytes:
    """A basic content header written by hand: a headers table with a double, a 64-bit integer and a long string
    that is not UTF-8 (what a client library other than pamqp may send), and a user-id."""
    entries = b"".join(
        bytes((len(name),)) + name + value
        for name, value in (
            (b"price", b"d" + struct.pack(">d", 0.1)),
            (b"qty", b"l" + struct.pack(">q", 2**40)),
            (b"raw", b"S" + struct.pack(">I", 2) + b"\xff\xfe"),
        )
    )
    flags = 1 << 13 | 1 << 4
    payload = struct.pack(">HHQH", 60, 0, body_size, flags) + struct.pack(">I", len(entries)) + entries
    payload += bytes((len(user_id),)) + user_id
    return b"\x02\x00\x01" + struct.pack(">I", len(payload)) + payload + b"\xce"


async def test_header_values_reach_the_broker_as_the_client_typed_them(gateway, connect, direct):
    gw = await gateway()
    client = await connect(gw)
    await client.open_channel(1)
    queue = unique("joe.types")
    await client.call(1, commands.Queue.Declare(queue=queue), commands.Queue.DeclareOk)
    bind = commands.Queue.Bind(queue=queue, exchange="orders", routing_key="orders.joe.t")
    await client.call(1, bind, commands.Queue.BindOk)
    publish = frame.marshal(commands.Basic.Publish(exchange="orders", routing_key="orders.joe.t"), 1)
    await client.send_raw(publish + typed_header(5, b"mallory") + frame.marshal(body.ContentBody(b"typed"), 1))
    assert isinstance(await after(client, 1), commands.Basic.QosOk)
    got = await direct.get(1, queue)
    assert got is not None and got[0].user_id == "joe" and got[1] == b"typed"
    # a double stays a double (pamqp alone writes it back as a 32-bit float), the raw string stays as it was
    assert got[0].headers == {"price": 0.1, "qty": 2**40, "raw": b"\xff\xfe"}
    await direct.call(1, commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)


# -- the same, without I/O (services/amqp_guard.py) -------------------------------------------------------


def test_every_cc_entry_is_decided_and_one_that_is_not_text_is_refused():
    g, asked = opened(allowed={"basic.publish"})
    g.from_client(m(1, commands.Channel.Open()) + publish(1, "ex", "a", b"x", headers={"BCC": ["b", "c"], "k": 1}))
    assert asked[1:] == [
        ("basic.publish", {"exchange": "ex", "routing-key": "b"}),
        ("basic.publish", {"exchange": "ex", "routing-key": "c"}),
    ]
    assert [type(v) for _, v in parse(g.take_to_broker())][1:] == [
        commands.Basic.Publish,
        header.ContentHeader,
        body.ContentBody,
    ]
    # a duplicated key: RabbitMQ reads the first, pamqp the last; both are decided
    entries = b"\x02CCA" + struct.pack(">I", 6) + b"S\x00\x00\x00\x01b" + b"\x02CCA" + struct.pack(">I", 0)
    g, asked = opened(allowed={"basic.publish"})
    g.from_client(m(1, commands.Channel.Open()) + raw_publish(1, entries))
    assert [fields["routing-key"] for _, fields in asked] == ["a", "b"]
    # an entry that is not a UTF-8 string is refused (None: refused once the service has rules)
    entries = b"\x02CCA" + struct.pack(">I", 7) + b"S\x00\x00\x00\x02\xff\xfe"
    g, asked = opened(allowed={"basic.publish"})
    g.from_client(m(1, commands.Channel.Open()) + raw_publish(1, entries))
    assert asked[1] == ("basic.publish", {"exchange": "ex", "routing-key": None})


def test_a_publish_refused_for_its_cc_never_reaches_the_broker():
    g, asked = guard_refusing({"ann"})
    g.from_client(m(1, commands.Channel.Open()) + publish(1, "ex", "joe", b"x", headers={"CC": ["ann"]}))
    assert [type(v) for _, v in parse(g.take_to_broker())] == [commands.Channel.Open, commands.Channel.Close]
    ((_, close),) = parse(g.take_to_client())
    assert close.reply_code == 403 and (close.class_id, close.method_id) == (60, 40)


def test_user_id_is_spliced_in_and_every_other_property_kept_byte_for_byte():
    g, _ = opened(user="joe")
    props = {"content_type": "t", "headers": {"d": 1.5}, "message_type": "m", "app_id": "a", "priority": 3}
    g.from_client(m(1, commands.Channel.Open()) + publish(1, "e", "k", b"abc", **props))
    content = parse(g.take_to_broker())[2][1]
    assert isinstance(content, header.ContentHeader)
    p = content.properties
    assert (p.user_id, p.app_id, p.message_type, p.content_type, p.headers) == ("joe", "a", "m", "t", {"d": 1.5})
    assert p.priority == 3
    for bad in (b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x01", b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x80\x00\x05ab"):
        g, _ = opened()
        g.from_client(m(1, commands.Channel.Open(), commands.Basic.Publish(exchange="e", routing_key="k")))
        with pytest.raises(AmqpClose) as caught:  # reserved flag bits; a property running past the frame
            g.from_client(b"\x02\x00\x01" + struct.pack(">I", len(bad)) + bad + b"\xce")
        assert caught.value.code == 502
        assert [type(v) for _, v in parse(g.take_to_broker())] == [commands.Channel.Open]  # the publish held back


def test_queue_shortcuts_follow_the_broker_declare_by_declare():
    g, asked = opened()
    g.from_client(
        m(1, commands.Channel.Open())
        + m(1, commands.Queue.Declare(queue=""))
        + m(1, commands.Queue.Declare(queue="mine", nowait=True))
        + m(1, commands.Queue.Bind(queue="", exchange="x", routing_key=""))
    )
    g.from_broker(m(1, commands.Queue.DeclareOk(queue="amq.gen-a", message_count=0, consumer_count=0)))
    g.from_client(m(1, commands.Basic.Get(queue="")) + m(1, commands.Queue.Declare(queue="")))
    g.from_client(m(1, commands.Basic.Get(queue="")))
    g.from_broker(m(1, commands.Queue.DeclareOk(queue="amq.gen-b", message_count=0, consumer_count=0)))
    g.from_client(m(1, commands.Basic.Get(queue="")))
    assert [fields for operation, fields in asked if operation != "queue.declare"] == [
        {"queue": "mine", "exchange": "x", "routing-key": "mine"},  # RabbitMQ binds with the queue's name
        {"queue": "mine"},  # the Declare-Ok of an earlier declare changes nothing
        {"queue": None},  # a server-named queue before its Declare-Ok: unknown
        {"queue": "amq.gen-b"},
    ]


def test_alternate_and_dead_letter_exchanges_are_decided_as_publishes():
    g, asked = opened(allowed={"exchange.declare", "queue.declare"})
    g.from_client(
        m(1, commands.Channel.Open())
        + m(1, commands.Exchange.Declare(exchange="e", arguments={"alternate-exchange": "other"}))
    )
    assert asked[-1] == ("basic.publish", {"exchange": "other", "routing-key": "#"})
    assert isinstance(parse(g.take_to_client())[0][1], commands.Channel.Close)
    g, asked = opened(allowed={"exchange.declare", "queue.declare", "basic.publish"})
    dead = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q2"}
    g.from_client(m(1, commands.Channel.Open()) + m(1, commands.Queue.Declare(queue="q", arguments=dead)))
    assert asked[-1] == ("basic.publish", {"exchange": "", "routing-key": "q2"})
    assert g.take_to_client() == b""
    g.from_client(m(1, commands.Queue.Declare(queue="q", arguments={"x-dead-letter-exchange": 5})))
    assert asked[-1] == ("basic.publish", {"exchange": None, "routing-key": "#"})  # not a name: refused with rules


def raw_publish(channel: int, entries: bytes) -> bytes:
    """basic.publish to ex with key a and a content header whose headers table is ``entries`` as given."""
    payload = struct.pack(">HHQH", 60, 0, 0, 1 << 13) + struct.pack(">I", len(entries)) + entries
    content = b"\x02" + channel.to_bytes(2, "big") + struct.pack(">I", len(payload)) + payload + b"\xce"
    return m(channel, commands.Basic.Publish(exchange="ex", routing_key="a")) + content


def guard_refusing(keys: set[str]) -> tuple[AmqpGuard, list]:
    g, asked = opened()
    g.authorize = lambda operation, fields: asked.append((operation, fields)) or fields.get("routing-key") not in keys
    return g, asked


async def test_a_consumer_the_rules_no_longer_allow_gets_nothing_more(gateway, connect, direct, tmp_path):
    gw = await gateway()
    client = await connect(gw)
    await client.open_channel(1)
    await client.open_channel(2)
    queue = unique("joe.feed")
    await client.call(1, commands.Queue.Declare(queue=queue), commands.Queue.DeclareOk)
    await client.call(1, commands.Basic.Consume(queue=queue), commands.Basic.ConsumeOk)
    await direct.publish(1, "", queue, b"before")
    deliver = await client.expect(commands.Basic.Deliver, 1)
    await client.recv(), await client.recv()  # its header and body
    await client.send(1, commands.Basic.Ack(deliver.delivery_tag))
    # a reload takes basic.consume away: the consumer's channel is closed before anything more is delivered
    path = tmp_path / "gateway.yaml"
    path.write_text(path.read_text().replace("      - allow: basic.consume, basic.get\n", "      - deny: basic.get\n"))
    ok, message = await gw.reload()
    assert ok, message
    await direct.publish(1, "", queue, b"after")
    channel, reply = await client.recv()
    assert (channel, type(reply)) == (1, commands.Channel.Close), reply
    assert reply.reply_code == 403 and (reply.class_id, reply.method_id) == (60, 20)
    await client.send(1, commands.Channel.CloseOk())
    # the other channel goes on; the message, delivered to the closed channel unacknowledged, is back in the queue
    await client.call(2, commands.Basic.Qos(prefetch_count=1), commands.Basic.QosOk)
    for _ in range(50):
        if await count(direct, queue) == 1:
            break
        await asyncio.sleep(0.05)
    assert await count(direct, queue) == 1
    await direct.call(1, commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)


def test_consumers_are_decided_again_when_the_rules_or_the_identity_change():
    g, asked = opened()
    basis = [object(), object()]
    g.basis = lambda: (basis[0], basis[1])
    g.decided_on = g.basis()
    g.from_client(
        m(1, commands.Channel.Open())
        + m(1, commands.Basic.Consume(queue="mine", consumer_tag="t1"))
        + m(1, commands.Basic.Consume(queue="other"))
        + m(2, commands.Channel.Open())
        + m(2, commands.Basic.Consume(queue="kept", consumer_tag="t3"))
        + m(2, commands.Basic.Cancel(consumer_tag="t3"))
    )
    g.from_broker(
        m(1, commands.Basic.ConsumeOk(consumer_tag="t1"), commands.Basic.ConsumeOk(consumer_tag="amq.ctag-2"))
    )
    assert g.channels[1].consumers == {"t1": "mine", "amq.ctag-2": "other"} and not g.channels[2].consumers
    g.take_to_broker(), g.take_to_client()
    g.authorize = lambda operation, fields: asked.append((operation, fields)) or fields["queue"] != "other"
    g.from_broker(m(2, commands.Basic.Deliver("t9", 1, False, "", "k")))  # nothing changed: nothing decided
    assert len(asked) == 3 and g.take_to_client()
    basis[1] = object()  # a re-authentication
    g.from_broker(m(1, commands.Basic.Deliver("amq.ctag-2", 1, False, "", "other")))
    assert asked[3:] == [("basic.consume", {"queue": "mine"}), ("basic.consume", {"queue": "other"})]
    ((channel, close), *rest) = parse(g.take_to_client())
    assert channel == 1 and close.reply_code == 403 and not rest  # the delivery swallowed with the channel
    assert [type(v) for _, v in parse(g.take_to_broker())] == [commands.Channel.Close]


def test_a_refusal_on_a_reopened_channel_still_waiting_for_the_broker_leaks_nothing_to_the_client():
    g, _ = opened(allowed={"queue.declare"})
    g.from_client(m(1, commands.Channel.Open()) + publish(1, "e", "k", b"x") + m(1, commands.Channel.CloseOk()))
    g.take_to_broker(), g.take_to_client()
    # reopened before the broker's Close-Ok, and refused again at once: both wait for that Close-Ok
    g.from_client(m(1, commands.Channel.Open()) + publish(1, "e", "k", b"y") + m(1, commands.Channel.CloseOk()))
    assert [type(v) for _, v in parse(g.take_to_client())] == [commands.Channel.Close]
    g.from_broker(m(1, commands.Channel.CloseOk()))
    assert [type(v) for _, v in parse(g.take_to_broker())] == [commands.Channel.Open, commands.Channel.Close]
    # the broker's answers to the second incarnation are the gateway's, as the first's were
    g.from_broker(m(1, commands.Channel.OpenOk()) + m(1, commands.Channel.CloseOk()))
    assert g.take_to_client() == b""
    g.from_client(m(1, commands.Channel.Open()))
    assert [type(v) for _, v in parse(g.take_to_broker())] == [commands.Channel.Open]
    # refused while held, then reopened at once a third time: each incarnation reaches the broker in order
    g, _ = opened(allowed={"queue.declare"})
    g.from_client(m(1, commands.Channel.Open()) + publish(1, "e", "k", b"x") + m(1, commands.Channel.CloseOk()))
    g.from_client(m(1, commands.Channel.Open()) + publish(1, "e", "k", b"y") + m(1, commands.Channel.CloseOk()))
    g.from_client(m(1, commands.Channel.Open(), commands.Queue.Declare(queue="q")))
    g.take_to_broker(), g.take_to_client()
    g.from_broker(m(1, commands.Channel.CloseOk()))
    sent = [type(v) for _, v in parse(g.take_to_broker())]
    assert sent == [commands.Channel.Open, commands.Channel.Close, commands.Channel.Open, commands.Queue.Declare]
    g.from_broker(m(1, commands.Channel.OpenOk(), commands.Channel.CloseOk(), commands.Channel.OpenOk()))
    assert [type(v) for _, v in parse(g.take_to_client())] == [commands.Channel.OpenOk]
