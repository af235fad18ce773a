"""Message policy of any WebSocket service: ``authorization-rule`` on each message, then a Python callable.

Two operations, named from the client's side: ``send`` (a message the client sends: to the echo, the back
end, the other subscribers) and ``receive`` (a message on its way to the client). A rule matches on
``type`` (``text`` | ``binary``) and on ``json.<dotted path>`` fields of a JSON object message (text or
binary: a back end may take JSON in either frame, so changing the frame type never slips past a rule).

Mechanism apart from the services: ``MessageService.channel_for`` wraps the channel the upgrade runner
hands to ``serve`` in a ``GuardedChannel``, so echo and proxy keep calling ``receive``/``send`` and never
see a rule. The guard reads the handler's *current* rules and policy and the session's *current* identity
at every message: a reload that changes only the rules, and re-authentication, apply to the next one.
Broadcast decides ``receive`` at fan-out, once per subscriber, with the message parsed once for all.

Order per message: the rules first (a service with rules refuses what none allows), then the callable
(``message.policy``), which sees only what the rules allowed. A refusal drops the message (default) or
closes the connection with 1008 (``then: close``, or the callable answering ``close``); each one is
counted and audited (direction, type, the deciding rule: never the message).

The no-policy path (no rules, no callable) costs three attribute reads per message and, for a message
from the client, one coroutine frame: ``send`` hands back the inner channel's own coroutine (it decides
with the message in hand), ``receive`` must decide when the message arrives, not when the wait began (a
reload may add rules in between). bench/policy.py measures it.
"""

from __future__ import annotations

import inspect
import json
import logging
import traceback
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..config.model import Rule, Service
from ..config.schema import Property, RuleSchema
from ..core.channel import Channel, Data, Messages
from ..core.close import CloseCode
from ..core.identity import Identity
from ..core.session import LiveSession
from ..errors import ConfigError
from ..observe.logs import LogLimiter
from ..security.login import import_beside
from ..security.rules import Decision, RuleSet
from .base import Runtime, WebSocketService

log = logging.getLogger("wsgate.service")

SEND = "send"  # from the client
RECEIVE = "receive"  # to the client
ALLOW, DROP, CLOSE = "allow", "drop", "close"  # what a rule's ``then`` or the callable answers
ANSWERS = frozenset({ALLOW, DROP, CLOSE})
CLOSE_REASON = "message refused"  # fixed: never says which rule or what the message held
CLOSE_GRACE = 2.0  # a peer that does not answer the 1008 by then is aborted
JSON_PREFIX = "json."
MAX_PATH_LEVELS = 32
TYPES = ("text", "binary")
POLICY = "message.policy"
TEXT: Mapping[str, str] = MappingProxyType({"type": "text"})  # the fields of a message no json. rule reads
BINARY: Mapping[str, str] = MappingProxyType({"type": "binary"})
AMBIGUOUS: Mapping[str, str] = MappingProxyType({})  # a message whose JSON repeats a key: no rule can judge it


def check_field(name: str, pattern: str) -> None:
    """Config time: a ``type`` that can match, a ``json.`` path that names keys (``RuleSchema.check_field``)."""
    if name == "type":
        if pattern not in (*TYPES, "*", "+", "#"):
            raise ValueError(f"{pattern!r} is not a message type; valid: text, binary, or * for both")
        return
    json_path(name)


def json_path(name: str) -> tuple[str, ...]:
    """``json.order.side`` → ``("order", "side")``; ``ValueError`` for a path that names no key."""
    keys = tuple(name[len(JSON_PREFIX) :].split("."))
    if not all(keys):
        raise ValueError(
            f"{name!r} has an empty level: name the keys from the top of the JSON object, separated by dots "
            "(json.order.side; a number is an array index: json.items.0)"
        )
    if len(keys) > MAX_PATH_LEVELS:
        raise ValueError(f"{name!r} is deeper than {MAX_PATH_LEVELS} levels")
    return keys


def parse_policy_target(text: str) -> str:
    """``class:package.module.Name``: imported when the service is built (``load_policy``)."""
    target = text.strip()
    name = target.removeprefix("class:")
    module, _, cls = name.rpartition(".")
    if not target.startswith("class:") or not module or not cls or not all(module.split(".")):
        raise ValueError(f"{text!r}: name the policy class as class:package.module.ClassName")
    return name


MESSAGE_RULES = RuleSchema(
    operations={SEND: ("type", JSON_PREFIX), RECEIVE: ("type", JSON_PREFIX)},
    field_prefixes=(JSON_PREFIX,),
    outcomes=(DROP, CLOSE),
    check_field=check_field,
)
POLICY_PROPERTY = {POLICY: Property("?", parse_policy_target)}

MessagePolicy = Callable[[Identity | None, str, Data], str]  # (identity, direction, data) → allow | drop | close


def load_policy(service: Service, config_dir: Path | None) -> MessagePolicy | None:
    """The ``message.policy`` object: ``Name()`` of the class named, imported from ``sys.path`` or else the
    config file's folder (as ``class:`` login modules are); errors name the property."""
    target: str | None = service.setting(POLICY)
    if target is None:
        return None
    path = f"service[{service.name}]/properties/{POLICY}"
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(import_beside(module_name, config_dir or Path.cwd()), class_name)
    except ImportError as exc:
        raise ConfigError(path, f"cannot import {module_name!r}: {exc}") from None
    except AttributeError:
        raise ConfigError(path, f"module {module_name!r} has no {class_name!r}") from None
    if not isinstance(cls, type):
        raise ConfigError(path, f"{target} is not a class: name a class whose objects are called per message")
    call = next((vars(k)["__call__"] for k in cls.__mro__ if "__call__" in vars(k)), None)  # what its objects get
    if call is None:
        raise ConfigError(
            path, f"{target} has no __call__(self, identity, direction, data) answering 'allow', 'drop' or 'close'"
        )
    if inspect.iscoroutinefunction(call):
        raise ConfigError(path, f"{target}.__call__ must be synchronous (def, not async def): it runs per message")
    try:
        policy: MessagePolicy = cls()
    except Exception as exc:  # the operator's code: report whatever it raised, located
        raise ConfigError(path, f"{target}() failed: {type(exc).__name__}: {exc}") from None
    return policy


# -- what a message says ---------------------------------------------------------------------------------


class Repeated(ValueError):
    """A JSON object with a key twice: parsers disagree on which one counts, so no rule can judge it."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise Repeated
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique)  # built once: json.loads would build one per message


class Digits(str):
    """A JSON integer longer than ``int()`` reads (Python's 4300-digit limit), kept in its JSON spelling."""


def _integer(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return Digits(text)


# Only for a message the fast decoder refused for an integer too long: valid JSON every common back end reads,
# so one long number must not hide the message's other fields from the rules.
_LONG_DECODER = json.JSONDecoder(object_pairs_hook=_unique, parse_int=_integer)


def level(value: Any) -> str:
    """A JSON value as one pattern level: strings as they are, other scalars in their JSON spelling, an
    object or array as "" (present: only ``*`` matches it)."""
    if type(value) is str:
        return "+" if value == "#" else value  # "#" would read as a wildcard value: "+" matches what it should
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if type(value) is int or type(value) is float:
        return json.dumps(value)
    if type(value) is Digits:
        return str(value)
    return ""


def json_fields(data: Data, paths: tuple[tuple[str, tuple[str, ...]], ...], out: dict[str, str]) -> bool:
    """Add the ``json.`` fields ``paths`` name that ``data`` has to ``out``; False for an ambiguous
    message (a repeated key). Invalid JSON, a message that is not an object, an absent path: no field."""
    try:
        # bytes in the encoding json.loads would detect (UTF-8, -16 or -32, a BOM skipped): a back end reading
        # them with it must not see fields the rules did not; a text frame's BOM is skipped alike
        text = data.removeprefix("\ufeff") if isinstance(data, str) else data.decode(json.detect_encoding(data))
        try:
            doc = _DECODER.decode(text)
        except ValueError as exc:
            if isinstance(exc, (json.JSONDecodeError, Repeated)):
                raise
            doc = _LONG_DECODER.decode(text)  # not a syntax error: an integer longer than int() reads
    except Repeated:
        return False
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; nesting too deep to parse
        return True
    if type(doc) is not dict:
        return True
    for name, keys in paths:
        value: Any = doc
        for key in keys:
            if type(value) is dict:
                if key not in value:
                    break
                value = value[key]
            elif type(value) is list and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                break
        else:
            out[name] = level(value)
    return True


class MessageChecks:
    """What one ``RuleSet`` needs of a message, per direction: the ``json.`` paths its rules name there."""

    __slots__ = ("rules", "paths")

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        paths: dict[str, dict[str, tuple[str, ...]]] = {SEND: {}, RECEIVE: {}}
        for compiled in rules.rules:
            for name in compiled.rule.fields:
                if name.startswith(JSON_PREFIX):
                    for operation in compiled.operations:
                        paths.setdefault(operation, {})[name] = json_path(name)
        self.paths = {operation: tuple(named.items()) for operation, named in paths.items()}

    def values(self, direction: str, data: Data) -> Mapping[str, str]:
        """The fields rules on ``direction`` may match (JSON parsed only if one names a path), or ``AMBIGUOUS``."""
        paths = self.paths[direction]
        if not paths:
            return TEXT if type(data) is str else BINARY
        values = {"type": "text" if type(data) is str else "binary"}
        return values if json_fields(data, paths, values) else AMBIGUOUS


# -- the service side ------------------------------------------------------------------------------------


class MessageService(WebSocketService):
    """A WebSocket service whose messages rules and a callable may govern (echo, proxy, broadcast).

    A subclass that declares another rule schema (a protocol-aware proxy) is not wrapped: its rules name
    its own operations."""

    def __init__(self, config: Service, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.policy = load_policy(config, runtime.config_dir)
        self.checks = MessageChecks(self.rules)
        self.policy_error_lines = LogLimiter("message policy error", per_second=1)
        policy_rule = Rule(False, (SEND, RECEIVE), path=f"service[{self.name}]/properties/{POLICY}")
        self.by_policy = {DROP: Decision(False, policy_rule, DROP), CLOSE: Decision(False, policy_rule, CLOSE)}

    def channel_for(self, session: LiveSession, channel: Channel) -> Channel:
        if self.TYPE.rules is not MESSAGE_RULES:
            return channel
        return GuardedChannel(channel, self, session)

    def message_checks(self, rules: RuleSet) -> MessageChecks:
        """The checks of the current rules (rebuilt once after a reload swapped them)."""
        checks = self.checks
        if checks.rules is not rules:
            checks = self.checks = MessageChecks(rules)
        return checks

    def unguarded(self) -> bool:
        """May messages pass without a decision (no rules, no policy)? Read per message: a reload may change it."""
        return self.rules.open and self.policy is None

    def admit(self, guard: GuardedChannel, direction: str, data: Data, values: Mapping[str, str] | None = None) -> bool:
        """May ``data`` pass in ``direction`` on ``guard``'s connection? A refusal is counted, audited and
        acted on (dropped, or the connection closed with 1008). ``values``: the message's fields when the
        caller already read them (broadcast: once per message for every subscriber)."""
        rules = self.rules
        identity = guard.session.identity
        if not rules.open:
            if values is None:
                values = self.message_checks(rules).values(direction, data)
            if values is AMBIGUOUS:
                ambiguous = Decision(False, None, rules.default_then)
                self.refuse_message(guard, direction, ambiguous, data, "a JSON key repeats")
                return False
            decision = rules.decide(identity, direction, values)
            if not decision.allowed:
                self.refuse_message(guard, direction, decision, data)
                return False
        policy = self.policy
        if policy is None:
            return True
        answer = self.ask(policy, identity, direction, data)
        if answer == ALLOW:
            return True
        self.refuse_message(guard, direction, self.by_policy[answer], data)
        return False

    def ask(self, policy: MessagePolicy, identity: Identity | None, direction: str, data: Data) -> str:
        """The callable's answer; an exception or an answer that is none of allow/drop/close refuses (fail closed)."""
        try:
            answer = policy(identity, direction, data)
        except Exception as exc:
            self.policy_failed(exc)
            return DROP
        if isinstance(answer, str) and answer in ANSWERS:
            return answer
        self.policy_failed(answer)
        return DROP

    def policy_failed(self, what: object) -> None:
        """Counted always, logged within the rate limit: the exception's type and line, or the answer's type;
        never the message, nor the exception's text (which may quote it)."""
        if self.runtime.metrics is not None:
            self.runtime.metrics.policy_errors.labels(self.name).inc()
        if not self.policy_error_lines.allow():
            return
        if isinstance(what, BaseException):
            failure = f"raised {type(what).__name__}{_where(what)}"
        else:
            failure = f"answered a {type(what).__name__}, not 'allow', 'drop' or 'close'"
        log.error("service[%s]: %s %s; the message was refused (fail closed)", self.name, POLICY, failure)

    def refuse_message(
        self, guard: GuardedChannel, direction: str, decision: Decision, data: Data, why: str = ""
    ) -> None:
        extra = {"why": why} if why else {}
        self.refused(guard.session, direction, decision, type="text" if type(data) is str else "binary", **extra)
        if decision.then == CLOSE:
            guard.end()


def _where(exc: BaseException) -> str:
    """`` at file:line in function`` of the innermost frame: enough to find the bug, no values."""
    last = None
    for last in traceback.walk_tb(exc.__traceback__):  # noqa: B007 - the innermost is the last
        pass
    if last is None:
        return ""
    frame, line = last
    return f" at {Path(frame.f_code.co_filename).name}:{line} in {frame.f_code.co_name}"


# -- the channel side ------------------------------------------------------------------------------------


class GuardedChannel(Messages):
    """A ``Channel`` whose messages pass the service's message policy, both ways (see the module docstring).

    ``send`` is a plain function: without rules or callable it hands back the inner channel's coroutine
    itself. After a refusal closed the connection nothing more passes either way."""

    __slots__ = ("inner", "service", "session", "ended", "_receive", "_send")

    def __init__(self, inner: Channel, service: MessageService, session: LiveSession) -> None:
        self.inner = inner
        self.service = service
        self.session = session
        self.ended = False
        self._receive = inner.receive
        self._send = inner.send

    async def receive(self) -> Data | None:
        """Decided once the message is here, not when the wait began: rules a reload adds while a
        connection waits apply to the message it is waiting for."""
        receive, service = self._receive, self.service
        while (data := await receive()) is not None:
            if service.rules.open and service.policy is None:
                return data
            if not self.ended and service.admit(self, SEND, data):
                return data
        return None

    def send(self, data: Data) -> Coroutine[Any, Any, None]:
        service = self.service
        if service.rules.open and service.policy is None:
            return self._send(data)
        return self._send_checked(data)

    async def _send_checked(self, data: Data) -> None:
        if not self.ended and self.service.admit(self, RECEIVE, data):
            await self._send(data)

    def end(self) -> None:
        """A refusal with ``then: close``: 1008 now, from whichever task decided; aborted after the grace."""
        self.ended = True
        self.inner.close_soon(CloseCode.POLICY_VIOLATION, CLOSE_REASON, CLOSE_GRACE)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        await self.inner.close(code, reason)

    def close_soon(self, code: int, reason: str, grace: float) -> None:
        self.inner.close_soon(code, reason, grace)

    def abort(self) -> None:
        self.inner.abort()

    @property
    def closed(self) -> bool:
        return self.inner.closed

    @property
    def gone(self) -> bool:
        return self.inner.gone

    @property
    def close_code(self) -> int | None:
        return self.inner.close_code

    @property
    def peer_close(self) -> tuple[int | None, str]:
        return self.inner.peer_close

    # The inner channel counts what passes the wire (refused messages came in; dropped ones never went out).
    @property
    def messages_in(self) -> int:
        return self.inner.messages_in

    @messages_in.setter
    def messages_in(self, value: int) -> None:
        self.inner.messages_in = value

    @property
    def messages_out(self) -> int:
        return self.inner.messages_out

    @messages_out.setter
    def messages_out(self, value: int) -> None:
        self.inner.messages_out = value

    @property
    def bytes_in(self) -> int:
        return self.inner.bytes_in

    @bytes_in.setter
    def bytes_in(self, value: int) -> None:
        self.inner.bytes_in = value

    @property
    def bytes_out(self) -> int:
        return self.inner.bytes_out

    @bytes_out.setter
    def bytes_out(self, value: int) -> None:
        self.inner.bytes_out = value
