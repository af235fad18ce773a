"""A neutral element tree both front ends produce.

The Kaazing XML loader and the YAML loader each turn their input into ``Node``s
with the same element names; ``config.build`` then validates one shape only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Node:
    name: str
    text: str = ""
    children: list[Node] = field(default_factory=list)
    line: int | None = None
    namespace: str | None = None  # the XML root's namespace (Kaazing schema version); None for YAML

    def first(self, name: str) -> Node | None:
        for child in self.children:
            if child.name == name:
                return child
        return None


def node_from_yaml(name: str, value: Any) -> list[Node]:
    """One YAML value → the nodes it stands for (a list repeats the element)."""
    if isinstance(value, list):
        return [node for item in value for node in node_from_yaml(name, item)]
    if isinstance(value, dict):
        children = [node for key, item in value.items() for node in node_from_yaml(str(key), item)]
        return [Node(name, "", children)]
    if value is None:
        return [Node(name, "")]
    if isinstance(value, bool):
        return [Node(name, "true" if value else "false")]
    return [Node(name, str(value).strip())]
