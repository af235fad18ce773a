"""Authorization inside the connection: a service's ``authorization-rule`` list, decided per operation.

Policy apart from mechanism: a protocol-aware service (``amqp.proxy``, ``mqtt.proxy``, the message
policy of any WebSocket service) names the operation and its fields (``publish`` with ``exchange`` and
``routing-key``); the ``RuleSet`` says allowed or refused, and by which rule. The first rule whose
operation, roles and fields all match decides; a service with rules refuses what no rule allows (deny by
default). A service without rules is ``OPEN``: the upgrade's ``authorization-constraint`` is its only
check, as in Kaazing.

The identity is read at every decision, so roles changed by re-authentication apply to the next
operation; a reload that changes only the rules swaps the ``RuleSet`` under live connections.

A value level that is itself a wildcard (an MQTT subscription to ``a/+``, an AMQP binding key ``a.#``)
covers what the wildcard covers, so it is matched only by a pattern wildcard at least as wide: a rule
for ``sensors/{user}/#`` never lets ``sensors/#`` through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config.model import Rule
from ..config.patterns import ONE, REST, Pattern, Template, parse_pattern
from ..config.schema import RuleSchema
from ..core.identity import Identity
from ..observe.logs import get_logger

audit = get_logger("wsgate.audit")

ANY_AUTHENTICATED = "*"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one operation: allowed or not, the rule that decided (None: no rule matched), and
    what a refusal does (the rule's ``then``, else the type's default)."""

    allowed: bool
    rule: Rule | None = None
    then: str | None = None

    @property
    def reason(self) -> str:
        """For the audit log: which rule decided."""
        if self.rule is None:
            return "no rule allows it" if not self.allowed else "no rules"
        return f"{self.rule.path} ({'allow' if self.rule.allow else 'deny'})"


ALLOWED = Decision(True)


class CompiledRule:
    __slots__ = ("rule", "operations", "roles", "fields", "decision")

    def __init__(self, rule: Rule, schema: RuleSchema) -> None:
        self.rule = rule
        self.operations = frozenset(rule.operations)
        self.roles = frozenset(rule.roles)
        default_then = schema.outcomes[0] if schema.outcomes else None
        # Made once: a frozen dataclass costs ~0.3 µs to build, more than matching a rule (per message).
        self.decision = Decision(rule.allow, rule, None if rule.allow else (rule.then or default_then))
        self.fields: tuple[tuple[str, Pattern, str | None], ...] = tuple(
            (name, parse_pattern(text, schema.separator(name)), schema.separator(name))
            for name, text in rule.fields.items()
        )

    def applies_to(self, identity: Identity | None) -> bool:
        if not self.roles:
            return True
        if identity is None or identity.user is None and not identity.roles:
            return False
        return ANY_AUTHENTICATED in self.roles or not self.roles.isdisjoint(identity.roles)

    def matches(self, values: Mapping[str, str], user: str | None) -> bool:
        for name, pattern, separator in self.fields:
            value = values.get(name)
            if value is None or not match(pattern, value, separator, user):
                return False
        return True


class RuleSet:
    """A service's rules, compiled once per config (a reload builds a new one)."""

    __slots__ = ("rules", "default_then", "open", "refusal")

    def __init__(self, rules: tuple[Rule, ...], schema: RuleSchema | None) -> None:
        if rules and schema is None:
            raise ValueError("rules given for a service type that takes none")
        self.rules = tuple(CompiledRule(rule, schema) for rule in rules) if schema is not None else ()
        self.default_then = schema.outcomes[0] if schema is not None and schema.outcomes else None
        self.open = not rules  # no rules: every operation is allowed
        self.refusal = Decision(False, None, self.default_then)  # no rule matched

    def decide(self, identity: Identity | None, operation: str, values: Mapping[str, str]) -> Decision:
        """Allowed or refused: the first rule on ``operation`` that applies to ``identity`` and matches
        ``values`` decides; none: refused."""
        if self.open:
            return ALLOWED
        user = identity.user if identity is not None else None
        for compiled in self.rules:
            if operation in compiled.operations and compiled.applies_to(identity) and compiled.matches(values, user):
                return compiled.decision
        return self.refusal


OPEN = RuleSet((), None)


def match(pattern: Pattern, value: str, separator: str | None, user: str | None) -> bool:
    """Does ``pattern`` cover ``value``? (See the module docstring for wildcard values.)"""
    levels = value.split(separator) if separator else [value]
    for index, want in enumerate(pattern):
        if want == REST:  # the last level (parse_pattern): every remaining level, wildcards included
            return True
        if index >= len(levels):
            return False
        got = levels[index]
        if want == ONE:
            if got == REST:  # a "#" in the value covers more than one level
                return False
            continue
        if got in (ONE, REST, "*"):  # a wildcard in the value is covered only by a wildcard in the pattern
            return False
        if isinstance(want, Template):
            if user is None or (separator and separator in user) or want.fill({"user": user}) != got:
                return False
        elif want != got:
            return False
    return len(levels) == len(pattern)


def audit_refusal(
    service: str,
    identity: Identity | None,
    remote: str | None,
    operation: str,
    decision: Decision,
    **fields: str,
) -> None:
    """One audit line per refused operation: who, what, where, which rule (never message contents)."""
    audit.info(
        "operation denied",
        service=service,
        realm=identity.realm if identity is not None else None,
        principal=identity.user if identity is not None else None,
        remote=remote,
        operation=operation,
        decision="denied",
        rule=decision.reason,
        **fields,
    )
