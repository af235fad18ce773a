"""Authorization inside the connection: the rule engine (security/rules.py) and the authorization-rule element.

Sans-I/O: patterns, first-match order, roles, {user}, wildcard values, and the config errors that name
the element at fault. The protocol services (amqp.proxy, mqtt.proxy, message policy) test their own
operations against real brokers.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

from wsgate.catalog import CATALOG
from wsgate.config.build import build_config
from wsgate.config.loaders import parse_yaml
from wsgate.config.model import Rule
from wsgate.config.patterns import ONE, REST, Template, parse_pattern
from wsgate.config.schema import Catalog, RuleSchema, ServiceTypeSchema
from wsgate.core.identity import Identity
from wsgate.errors import ConfigErrors
from wsgate.gateway.plan import diff, plan
from wsgate.security.rules import OPEN, RuleSet, match

SCHEMA = RuleSchema(
    operations={
        "publish": ("exchange", "routing-key"),
        "consume": ("queue",),
        "subscribe": ("topic",),
        "send": ("json.",),
    },
    separators={"exchange": ".", "routing-key": ".", "queue": ".", "topic": "/"},
    field_prefixes=("json.",),
    outcomes=("drop", "close"),
)


def identity(user: str | None = "alice", *roles: str) -> Identity:
    return Identity("demo", user, frozenset(roles), None)


def rule(allow: bool, ops: str, roles: tuple[str, ...] = (), then: str | None = None, **fields: str) -> Rule:
    named = {k.replace("_", "-"): v for k, v in fields.items()}
    return Rule(allow, tuple(ops.split(",")), roles, MappingProxyType(named), then, f"rule[{ops}]")


# -- patterns ---------------------------------------------------------------------------------------------


def test_patterns_parse_levels_wildcards_and_templates():
    assert parse_pattern("a.*.#", ".") == ("a", ONE, REST)
    assert parse_pattern("a/+/b", "/") == ("a", ONE, "b")
    assert parse_pattern("u-{user}", None) == (Template(("u-", "user", "")),)
    assert parse_pattern("a*b", None) == ("a*b",)  # one level: only a whole * is a wildcard


@pytest.mark.parametrize(
    "text,separator,message",
    [
        ("", ".", "is empty"),
        ("a.#.b", ".", "may only be the last"),
        ("a.b*", ".", "must be a whole level"),
        ("a/x#", "/", "must be a whole level"),
        ("{role}.x", ".", "unknown placeholder"),
        ("{user", ".", "unknown placeholder"),
    ],
)
def test_bad_patterns_say_what_is_wrong(text, separator, message):
    with pytest.raises(ValueError, match=message):
        parse_pattern(text, separator)


@pytest.mark.parametrize(
    "pattern,value,expected",
    [
        ("sensors/{user}/#", "sensors/alice/t", True),
        ("sensors/{user}/#", "sensors/alice", True),  # # is zero or more levels, as in MQTT
        ("sensors/{user}/#", "sensors/bob/t", False),
        ("sensors/{user}/#", "sensors/#", False),  # a wider subscription is not covered
        ("sensors/{user}/#", "sensors/+/t", False),
        ("sensors/+/t", "sensors/+/t", True),  # the same wildcard covers itself
        ("sensors/+/t", "sensors/#", False),
        ("sensors/#", "sensors/+/#", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("a/b", "a/b/c", False),
        ("#", "anything/at/all", True),
    ],
)
def test_topic_patterns_cover_values_and_wildcard_values(pattern, value, expected):
    assert match(parse_pattern(pattern, "/"), value, "/", "alice") is expected


def test_a_user_name_is_taken_literally():
    pattern = parse_pattern("sensors/{user}/#", "/")
    assert not match(pattern, "sensors/a/b/x", "/", "a/b")  # the separator in a name never spans levels
    assert not match(pattern, "sensors/+/x", "/", "+")  # nor does a wildcard name
    assert not match(pattern, "sensors/x", "/", None)  # no user: no match
    assert not match(pattern, "sensors//x", "/", "")


# -- decisions --------------------------------------------------------------------------------------------


def test_no_rules_is_open_and_rules_deny_by_default():
    assert OPEN.decide(None, "publish", {}).allowed
    rules = RuleSet((rule(True, "consume", queue="q.{user}"),), SCHEMA)
    assert rules.decide(identity(), "consume", {"queue": "q.alice"}).allowed
    refused = rules.decide(identity(), "publish", {"exchange": "x", "routing-key": "k"})
    assert not refused.allowed and refused.rule is None and refused.then == "drop"
    assert refused.reason == "no rule allows it"


def test_first_matching_rule_decides_and_roles_select_rules():
    rules = RuleSet(
        (
            rule(False, "publish", ("intern",), then="close", exchange="orders"),
            rule(True, "publish", ("trader",), exchange="orders", routing_key="orders.{user}.#"),
            rule(True, "publish", ("*",), exchange="chat"),
            rule(True, "consume", queue="public.*"),
        ),
        SCHEMA,
    )
    trader = identity("alice", "trader")
    assert rules.decide(trader, "publish", {"exchange": "orders", "routing-key": "orders.alice.buy"}).allowed
    assert not rules.decide(trader, "publish", {"exchange": "orders", "routing-key": "orders.bob.buy"}).allowed
    both = identity("carol", "trader", "intern")
    denied = rules.decide(both, "publish", {"exchange": "orders", "routing-key": "orders.carol.x"})
    assert not denied.allowed and denied.then == "close" and denied.rule is not None
    assert "deny" in denied.reason
    assert rules.decide(identity("dave"), "publish", {"exchange": "chat", "routing-key": "x"}).allowed
    # "*" means authenticated; a rule without role applies to every connection, anonymous ones too
    assert not rules.decide(None, "publish", {"exchange": "chat", "routing-key": "x"}).allowed
    assert rules.decide(None, "consume", {"queue": "public.news"}).allowed
    # a field the operation did not report never matches a rule that names it
    assert not rules.decide(trader, "publish", {"exchange": "orders"}).allowed


def test_roles_changed_by_reauthentication_apply_to_the_next_decision():
    rules = RuleSet((rule(True, "subscribe", ("ops",), topic="alerts/#"),), SCHEMA)
    assert not rules.decide(identity("alice"), "subscribe", {"topic": "alerts/x"}).allowed
    assert rules.decide(identity("alice", "ops"), "subscribe", {"topic": "alerts/x"}).allowed


# -- the authorization-rule element -----------------------------------------------------------------------

RULED = ServiceTypeSchema(name="ruled", accept=("ws",), rules=SCHEMA)
PLAIN = ServiceTypeSchema(name="plain", accept=("ws",))
TEST_CATALOG = Catalog.of((RULED, PLAIN), tuple(CATALOG.login_modules.values()))


def build(rules_yaml: str, type_: str = "ruled"):
    text = f"""
service:
  - name: s
    type: {type_}
    accept: ws://localhost:8000/s
{rules_yaml}
"""
    return build_config(parse_yaml(text.encode()), TEST_CATALOG)


def test_rules_load_in_order_with_their_element_paths():
    config = build(
        """
    authorization-rule:
      - allow: publish
        role: [trader, admin]
        exchange: orders
        routing-key: "orders.{user}.#"
      - deny: "*"
        then: close
      - allow: send
        json.type: quote
"""
    )
    first, second, third = config.services[0].rules
    assert first.allow and first.operations == ("publish",) and first.roles == ("trader", "admin")
    assert dict(first.fields) == {"exchange": "orders", "routing-key": "orders.{user}.#"}
    assert first.path == "service[s]/authorization-rule[1]"
    assert not second.allow and second.operations == tuple(SCHEMA.operations) and second.then == "close"
    assert dict(third.fields) == {"json.type": "quote"}


@pytest.mark.parametrize(
    "rules_yaml,message",
    [
        ("    authorization-rule:\n      - role: x\n", "authorization-rule[1]: needs exactly one of allow or deny"),
        (
            "    authorization-rule:\n      - allow: publish\n        deny: consume\n",
            "authorization-rule[1]: needs exactly one of allow or deny",
        ),
        ("    authorization-rule:\n      - allow: publsh\n", "authorization-rule[1]/allow: unknown operation 'publsh'"),
        (
            "    authorization-rule:\n      - allow: publish\n        queue: q\n",
            "authorization-rule[1]/queue: does not apply to publish",
        ),
        (
            "    authorization-rule:\n      - allow: publish\n        topik: q\n",
            "authorization-rule[1]/topik: unknown element; did you mean 'topic'?",
        ),
        (
            "    authorization-rule:\n      - allow: publish\n        exchange: 'a.#.b'\n",
            "authorization-rule[1]/exchange: 'a.#.b': # stands for the remaining levels",
        ),
        (
            "    authorization-rule:\n      - deny: publish\n        then: explode\n",
            "authorization-rule[1]/then: 'explode' is not a refusal; valid here: drop, close",
        ),
    ],
)
def test_bad_rules_name_the_element_at_fault(rules_yaml, message):
    with pytest.raises(ConfigErrors) as caught:
        build(rules_yaml)
    assert any(message in str(e) for e in caught.value.errors), caught.value.errors


def test_a_type_without_rules_refuses_them():
    with pytest.raises(ConfigErrors) as caught:
        build("    authorization-rule:\n      - allow: send\n", type_="plain")
    assert "service[s]/authorization-rule: a plain service takes no authorization-rule" in str(caught.value)


def test_a_reload_that_changes_only_rules_keeps_the_service():
    before = build("    authorization-rule:\n      - allow: send\n")
    after = build("    authorization-rule:\n      - deny: send\n")
    changes = diff(plan(before), plan(after))
    assert changes.rules_changed == {"s"} and "s" in changes.unchanged and not changes.changed
    assert "rules of s replaced" in str(changes)
    moved = replace(after, services=(replace(after.services[0], description="other"),))
    changes = diff(plan(before), plan(moved))
    assert changes.changed == {"s"} and not changes.rules_changed
