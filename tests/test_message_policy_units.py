"""Message policy, sans-I/O: what a message says to the rules (type, json.<path>), the element's config
errors, the ``message.policy`` callable, and the ``GuardedChannel`` around an in-memory channel.

The same behaviour through a real gateway and real WebSocket clients: test_message_policy.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from wsgate.catalog import load_config
from wsgate.config.model import Service
from wsgate.core.close import CloseCode
from wsgate.core.identity import Identity
from wsgate.core.session import LiveSession
from wsgate.errors import ConfigError
from wsgate.observe.metrics import Metrics
from wsgate.security.rules import RuleSet
from wsgate.services import messages
from wsgate.services.base import Runtime, ServiceType
from wsgate.services.broadcast import BroadcastService
from wsgate.services.echo import EchoService
from wsgate.services.messages import (
    AMBIGUOUS,
    RECEIVE,
    SEND,
    GuardedChannel,
    MessageChecks,
    json_fields,
    level,
)
from wsgate.services.proxy import ProxyService

from .test_channel_services import FakeChannel

PATHS = tuple((name, messages.json_path(name)) for name in ("json.a", "json.a.b", "json.items.1", "json.n"))


def fields(data: str | bytes) -> dict[str, str] | None:
    out: dict[str, str] = {}
    return out if json_fields(data, PATHS, out) else None


# -- what a message says ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"a": "x", "n": 5}', {"json.a": "x", "json.n": "5"}),
        ('{"a": {"b": "deep"}}', {"json.a": "", "json.a.b": "deep"}),  # an object is present: only * matches
        ('{"items": ["zero", "one"]}', {"json.items.1": "one"}),  # a number indexes an array
        ('{"items": ["zero"]}', {}),  # out of range: absent
        ('{"a": ["x"], "n": true}', {"json.a": "", "json.n": "true"}),
        ('{"a": null, "n": 1.5}', {"json.a": "null", "json.n": "1.5"}),
        ('{"a": "#"}', {"json.a": "+"}),  # a "#" string is a value, not a wildcard: * must still match it
        ('["a", "b"]', {}),  # not an object
        ('"a"', {}),
        ("not json", {}),
        ('{"a": "x"', {}),  # truncated
        (b'{"a": "bytes"}', {"json.a": "bytes"}),  # a binary frame holding JSON is read too
        (b"\xff\xfe\x00", {}),  # not UTF-8
        ('{"a": "utf-16"}'.encode("utf-16-le"), {"json.a": "utf-16"}),  # as json.loads(bytes) would read it
        ('{"a": "x"} {"a": "admin"}', {}),  # extra data: not one JSON value
        ("[" * 100_000 + "]" * 100_000, {}),  # nested too deep to parse: no fields, no crash
        ('{"a": "x", "a": "admin"}', None),  # a repeated key: parsers disagree which counts
        ('{"z": {"k": 1, "k": 2}}', None),  # at any depth
    ],
)
def test_json_fields(data, expected):
    assert fields(data) == expected


def test_json_scalars_keep_their_json_spelling():
    assert [level(v) for v in ("s", 0, -2, 1e100, True, False, None, {}, [])] == [
        "s",
        "0",
        "-2",
        "1e+100",
        "true",
        "false",
        "null",
        "",
        "",
    ]


def rules_of(config: Service) -> RuleSet:
    return RuleSet(config.rules, EchoService.TYPE.rules)


def echo_config(tmp_path: Path, rules: str = "", properties: str = "", name: str = "gateway.yaml") -> Service:
    text = """
    service:
      - name: echo
        type: echo
        accept: ws://127.0.0.1:0/echo
    """
    text = textwrap.dedent(text) + textwrap.indent(textwrap.dedent(rules), "    ") + properties
    (tmp_path / name).write_text(text)
    return load_config(tmp_path / name).service("echo")


def test_json_is_parsed_only_for_a_direction_whose_rules_name_a_path(tmp_path):
    config = echo_config(
        tmp_path,
        """
        authorization-rule:
          - allow: send
            json.kind: quote
          - allow: receive
            type: text
        """,
    )
    checks = MessageChecks(rules_of(config))
    assert checks.paths == {SEND: (("json.kind", ("kind",)),), RECEIVE: ()}
    assert checks.values(RECEIVE, '{"kind": "x"}') == {"type": "text"}  # not parsed
    assert checks.values(SEND, b'{"kind": "quote"}') == {"type": "binary", "json.kind": "quote"}
    assert checks.values(SEND, '{"kind": 1, "kind": 2}') is AMBIGUOUS


# -- the element's config errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "properties", "message"),
    [
        ("    - allow: send\n      json.: x\n", "", "authorization-rule[1]/json.: 'json.' has an empty level"),
        ("    - allow: send\n      json.a..b: x\n", "", "authorization-rule[1]/json.a..b: 'json.a..b' has an empty"),
        ("    - allow: send\n      type: txt\n", "", "authorization-rule[1]/type: 'txt' is not a message type"),
        ("    - deny: receive\n      then: bounce\n", "", "authorization-rule[1]/then: 'bounce' is not a refusal"),
        ("    - allow: publish\n", "", "authorization-rule[1]/allow: unknown operation 'publish'; valid here: send"),
        ("", "    properties:\n      message.policy: mod.Policy\n", "properties/message.policy: 'mod.Policy'"),
        ("", "    properties:\n      message.policy: class:Policy\n", "class:package.module.ClassName"),
    ],
)
def test_bad_message_rules_and_policies_name_the_element(tmp_path, rules, properties, message):
    text = "service:\n  - name: echo\n    type: echo\n    accept: ws://127.0.0.1:0/echo\n"
    text += ("    authorization-rule:\n" + textwrap.indent(rules, "  ")) if rules else ""
    (tmp_path / "gateway.yaml").write_text(text + properties)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gateway.yaml")
    assert message in str(caught.value)
    assert "service[echo]/" in str(caught.value)


# -- the guarded channel -------------------------------------------------------------------------------


def identity(user: str = "alice", *roles: str) -> Identity:
    return Identity("r", user, frozenset(roles), None)


def guarded(service: EchoService, channel: FakeChannel, who: Identity | None = None) -> tuple[LiveSession, Any]:
    session = LiveSession("id-1", service.name, channel, "127.0.0.1", identity=who)
    return session, service.channel_for(session, channel)


def audit_lines(caplog) -> list[dict[str, Any]]:
    return [r.msg for r in caplog.records if r.name == "wsgate.audit" and isinstance(r.msg, dict)]


RULES = """
authorization-rule:
  - deny: send
    json.cmd: shutdown
    then: close
  - allow: send
    role: writer
    type: text
  - allow: receive
    json.channel: public
  - allow: receive
    role: admin
"""


async def serve(service: EchoService, channel: FakeChannel, who: Identity | None) -> LiveSession:
    session, wrapped = guarded(service, channel, who)
    await asyncio.wait_for(service.serve(session, wrapped), 5)
    return session


async def test_send_and_receive_rules_drop_what_they_refuse_and_audit_without_contents(tmp_path, caplog):
    runtime = Runtime(metrics=Metrics(lambda: ()))
    echo = EchoService(echo_config(tmp_path, RULES), runtime)
    public, secret = '{"channel": "public", "x": 1}', '{"channel": "secret-XYZ"}'
    channel = FakeChannel(public, secret, b"binary-XYZ")
    channel.peer_closes()
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        await serve(echo, channel, identity("alice", "writer"))
    assert channel.sent == [public]  # secret: receive refused; binary: send refused (writers send text only)
    assert channel.closes == []  # drop is the default
    lines = audit_lines(caplog)
    assert [(line["operation"], line["type"]) for line in lines] == [("receive", "text"), ("send", "binary")]
    assert all(line["rule"] == "no rule allows it" and line["principal"] == "alice" for line in lines)
    assert "XYZ" not in caplog.text
    assert runtime.metrics is not None
    assert runtime.metrics.denied.labels("echo", "send")._value.get() == 1
    # what came in is counted as received (it crossed the wire); what was dropped never went out
    assert (channel.messages_in, channel.messages_out) == (3, 1)


async def test_then_close_closes_1008_and_nothing_more_passes(tmp_path, caplog):
    echo = EchoService(echo_config(tmp_path, RULES), Runtime())
    channel = FakeChannel('{"channel": "public"}', '{"cmd": "shutdown"}', '{"channel": "public", "after": 1}')
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        await serve(echo, channel, identity("alice", "writer"))
    assert channel.closes == [(CloseCode.POLICY_VIOLATION, "message refused")]
    assert channel.sent == ['{"channel": "public"}']  # the one queued after the refusal is discarded
    (line,) = audit_lines(caplog)
    assert line["rule"] == "service[echo]/authorization-rule[1] (deny)" and line["operation"] == "send"


async def test_a_receive_rule_with_then_close_closes_from_the_sending_side(tmp_path):
    config = echo_config(tmp_path, "authorization-rule:\n  - allow: send\n  - deny: receive\n    then: close\n")
    echo = EchoService(config, Runtime())
    channel = FakeChannel("one", "two")
    await serve(echo, channel, None)
    assert channel.sent == [] and channel.closes == [(CloseCode.POLICY_VIOLATION, "message refused")]


async def test_rules_and_roles_are_read_at_every_message(tmp_path):
    """A reload swaps the rules (update_rules), re-authentication the identity: the next message sees both;
    a service that had no rules when the connection opened gets them, and loses them again."""
    open_config = echo_config(tmp_path, "")
    ruled = echo_config(
        tmp_path, "authorization-rule:\n  - allow: send\n    role: writer\n  - allow: receive\n", "", "b.yaml"
    )
    echo = EchoService(open_config, Runtime())
    channel = FakeChannel()
    session, wrapped = guarded(echo, channel, identity("alice", "reader"))
    assert isinstance(wrapped, GuardedChannel)
    task = asyncio.create_task(echo.serve(session, wrapped))

    async def through(data: str) -> list[str]:
        before = len(channel.sent)
        channel.incoming.put_nowait(data)
        for _ in range(20):
            await asyncio.sleep(0)
        return channel.sent[before:]

    assert await through("1") == ["1"]  # no rules: everything passes
    echo.update_rules(ruled)
    assert await through("2") == []  # rules now: a reader may not send
    session.identity = identity("alice", "writer")  # as LiveSession.refresh does
    assert await through("3") == ["3"]
    echo.update_rules(open_config)
    session.identity = identity("alice", "reader")
    assert await through("4") == ["4"]
    channel.peer_closes()
    await asyncio.wait_for(task, 5)


def test_without_rules_or_policy_send_hands_back_the_inner_coroutine(tmp_path):
    """The no-policy path adds no awaited frame to ``send`` (it decides with the message in hand)."""
    echo = EchoService(echo_config(tmp_path), Runtime())
    channel = FakeChannel()
    _, wrapped = guarded(echo, channel)
    coro = wrapped.send("x")
    assert coro.cr_code is FakeChannel.send.__code__
    coro.close()


def test_a_subclass_with_its_own_rule_schema_is_not_wrapped(tmp_path):
    """A protocol-aware proxy built on ProxyService names its own operations: the message guard stays out."""

    class Protocolled(ProxyService):
        TYPE = ServiceType(name="protocolled", accept=("ws",), connect=(1, 1), rules=None)

    text = "service:\n  - {name: p, type: proxy, accept: 'ws://127.0.0.1:0/p', connect: 'tcp://127.0.0.1:9'}\n"
    (tmp_path / "gateway.yaml").write_text(text)
    service = Protocolled(load_config(tmp_path / "gateway.yaml").service("p"), Runtime())
    channel = FakeChannel()
    session = LiveSession("id-1", "p", channel, "127.0.0.1")
    assert service.channel_for(session, channel) is channel
    proxy = ProxyService(load_config(tmp_path / "gateway.yaml").service("p"), Runtime())
    assert isinstance(proxy.channel_for(session, channel), GuardedChannel)


# -- the message.policy callable -----------------------------------------------------------------------

POLICY = '''
from wsgate.services.messages import ALLOW, CLOSE, DROP


class Policy:
    """Allow what the user's own topic names, close on "bye", drop the rest; "boom" is a bug."""

    def __call__(self, identity, direction, data):
        if data == "boom":
            return {}["secret-in-the-exception"]
        if data == "odd":
            return True
        if data == "bye":
            return CLOSE
        return ALLOW if identity is not None and identity.user in data else DROP


class Later:
    async def __call__(self, identity, direction, data):
        return "allow"


class Nothing:
    pass


def not_a_class(identity, direction, data):
    return "allow"
'''


@pytest.fixture
def policy_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "policy_units.py").write_text(POLICY)
    yield tmp_path
    sys.modules.pop("policy_units", None)


def with_policy(folder: Path, target: str, rules: str = "") -> Service:
    return echo_config(folder, rules, f"    properties:\n      message.policy: class:policy_units.{target}\n")


async def test_the_policy_allows_drops_and_closes_and_fails_closed(policy_dir, caplog):
    runtime = Runtime(metrics=Metrics(lambda: ()), config_dir=policy_dir)
    echo = EchoService(with_policy(policy_dir, "Policy"), runtime)
    channel = FakeChannel("for alice", "for bob", "boom", "odd", "alice again", "bye", "alice after")
    with caplog.at_level(logging.INFO):
        await serve(echo, channel, identity("alice"))
    assert channel.sent == ["for alice", "alice again"]
    assert channel.closes == [(CloseCode.POLICY_VIOLATION, "message refused")]
    assert runtime.metrics is not None
    assert runtime.metrics.policy_errors.labels("echo")._value.get() == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # the second failure in the same second is suppressed (still counted)
    assert "raised KeyError at policy_units.py:" in errors[0] and "in __call__" in errors[0]
    assert "secret-in-the-exception" not in caplog.text and "boom" not in caplog.text
    reasons = {line["rule"] for line in audit_lines(caplog)}
    assert reasons == {"service[echo]/properties/message.policy (deny)"}


async def test_the_policy_runs_only_on_what_the_rules_allowed(policy_dir):
    rules = "authorization-rule:\n  - allow: send\n    json.to: '*'\n  - allow: receive\n"
    echo = EchoService(with_policy(policy_dir, "Policy", rules), Runtime(config_dir=policy_dir))
    channel = FakeChannel("alice, no json", '{"to": "alice"}', '{"to": "bob"}', "boom")
    channel.peer_closes()
    await serve(echo, channel, identity("alice"))
    assert channel.sent == ['{"to": "alice"}']  # "boom" never reached the policy: the rules refused it


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("Later", "must be synchronous"),
        ("Nothing", "has no __call__"),
        ("not_a_class", "is not a class"),
        ("Missing", "module 'policy_units' has no 'Missing'"),
    ],
)
def test_a_policy_that_cannot_work_is_a_located_error(policy_dir, target, message):
    with pytest.raises(ConfigError) as caught:
        EchoService(with_policy(policy_dir, target), Runtime(config_dir=policy_dir))
    assert caught.value.path == "service[echo]/properties/message.policy"
    assert message in caught.value.detail


def test_a_policy_module_found_nowhere_is_a_located_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    config = echo_config(tmp_path, "", "    properties:\n      message.policy: class:no_such_policy_mod.P\n")
    with pytest.raises(ConfigError, match="message.policy: cannot import 'no_such_policy_mod'"):
        EchoService(config, Runtime(config_dir=tmp_path))


# -- broadcast: receive decided per subscriber at fan-out ----------------------------------------------


async def test_broadcast_parses_once_per_message_and_each_subscriber_sees_what_its_roles_allow(tmp_path, monkeypatch):
    text = """
    service:
      - name: feed
        type: broadcast
        accept: ws://127.0.0.1:0/feed
        authorization-rule:
          - allow: receive
            role: trader
          - allow: receive
            json.desk: public
          - deny: receive
            role: intern
            json.desk: secret
            then: close
    """
    (tmp_path / "gateway.yaml").write_text(textwrap.dedent(text))
    feed = BroadcastService(load_config(tmp_path / "gateway.yaml").service("feed"), Runtime())
    parsed = []
    real = messages.json_fields
    monkeypatch.setattr(messages, "json_fields", lambda *a: parsed.append(1) or real(*a))
    subscribers = {}
    tasks = []
    for who in (identity("t", "trader"), identity("v", "viewer"), identity("i", "intern")):
        channel = FakeChannel()
        session, wrapped = guarded(feed, channel, who)  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(feed.serve(session, wrapped)))
        subscribers[who.user] = channel
    await asyncio.sleep(0.01)
    for desk in ("public", "rates", "secret", "public"):
        feed.publish(json.dumps({"desk": desk}))
    await asyncio.sleep(0.05)
    assert len(parsed) == 4  # once per message, not once per subscriber
    assert [json.loads(m)["desk"] for m in subscribers["t"].sent] == ["public", "rates", "secret", "public"]
    assert [json.loads(m)["desk"] for m in subscribers["v"].sent] == ["public", "public"]
    assert [json.loads(m)["desk"] for m in subscribers["i"].sent] == ["public"]  # closed at "secret"
    assert subscribers["i"].closes == [(CloseCode.POLICY_VIOLATION, "message refused")]
    for channel in subscribers.values():
        channel.peer_closes()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def test_a_policy_failing_for_one_subscriber_never_breaks_the_fan_out(policy_dir):
    """Policy.__call__ raises for data "boom" only when it is not for the user: each subscriber is decided alone."""
    text = "service:\n  - name: feed\n    type: broadcast\n    accept: ws://127.0.0.1:0/feed\n"
    text += "    properties:\n      message.policy: class:policy_units.Policy\n"
    (policy_dir / "gateway.yaml").write_text(text)
    feed = BroadcastService(load_config(policy_dir / "gateway.yaml").service("feed"), Runtime(config_dir=policy_dir))
    channels, tasks = {}, []
    for user in ("alice", "bob"):
        channel = FakeChannel()
        session, wrapped = guarded(feed, channel, identity(user))  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(feed.serve(session, wrapped)))
        channels[user] = channel
    await asyncio.sleep(0.01)
    for data in ("for alice", "boom", "for bob", "alice and bob"):
        feed.publish(data)
    await asyncio.sleep(0.05)
    assert channels["alice"].sent == ["for alice", "alice and bob"]
    assert channels["bob"].sent == ["for bob", "alice and bob"]
    for channel in channels.values():
        channel.peer_closes()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
