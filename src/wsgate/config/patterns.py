"""Patterns of ``authorization-rule`` fields: parsed once here, matched by ``security/rules.py``.

A pattern is a sequence of levels split by the field's separator (``.`` for AMQP names and routing
keys, ``/`` for MQTT topics; ``None``: the whole value is one level). A level is a literal, ``*`` or
``+`` (exactly one level), ``#`` (every remaining level, zero or more: last level only), or a template
with ``{user}`` (the authenticated user's name, taken literally: a name holding the separator or a
wildcard never widens the pattern).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ONE = "+"  # exactly one level
REST = "#"  # zero or more levels, last only
PLACEHOLDERS = ("user",)
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Template:
    """A level holding placeholders: ``parts`` alternate literal text and placeholder names."""

    parts: tuple[str, ...]  # literal, name, literal, name, ..., literal

    def fill(self, values: dict[str, str | None]) -> str | None:
        """The level for these values; None when a value is missing (no user: the rule cannot match)."""
        out = []
        for index, part in enumerate(self.parts):
            if index % 2:
                value = values.get(part)
                if not value:
                    return None
                out.append(value)
            else:
                out.append(part)
        return "".join(out)


Level = str | Template  # a literal level, ONE, REST, or a Template
Pattern = tuple[Level, ...]


def parse_pattern(text: str, separator: str | None) -> Pattern:
    """``text`` as levels; ``ValueError`` says what is wrong and what would be valid."""
    if text == "":
        raise ValueError("is empty: give a name, or * for any")
    raw = text.split(separator) if separator else [text]
    levels: list[Level] = []
    for index, level in enumerate(raw):
        if level in ("*", "+"):
            levels.append(ONE)
        elif level == "#":
            if index != len(raw) - 1:
                raise ValueError(f"{text!r}: # stands for the remaining levels and may only be the last one")
            levels.append(REST)
        elif "#" in level or (separator and ("*" in level or "+" in level)):
            raise ValueError(
                f"{text!r}: a wildcard must be a whole level ({separator or ''}*{separator or ''}, "
                f"{separator or ''}#), not part of {level!r}"
            )
        elif "{" in level or "}" in level:
            levels.append(_template(text, level))
        else:
            levels.append(level)
    return tuple(levels)


def _template(text: str, level: str) -> Template:
    parts = _PLACEHOLDER.split(level)
    names = parts[1::2]
    literal = "".join(parts[0::2])
    unknown = [name for name in names if name not in PLACEHOLDERS]
    if unknown or "{" in literal or "}" in literal:
        raise ValueError(
            f"{text!r}: unknown placeholder in {level!r}; valid: " + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
        )
    return Template(tuple(parts))
