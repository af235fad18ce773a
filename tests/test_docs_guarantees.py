"""docs/security.md's "What wsgate guarantees" list points at tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
SECTION = "## What wsgate guarantees"
REFERENCE = re.compile(r" — (tests/[\w/]+\.py)::(\w+)$")


def guarantee_lines() -> list[str]:
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("- ")]


def test_every_guarantee_names_a_test_that_exists() -> None:
    lines = guarantee_lines()
    assert len(lines) >= 15
    for line in lines:
        match = REFERENCE.search(line)
        assert match, f"no test named at the end of: {line}"
        path, name = match.groups()
        tree = ast.parse((ROOT / path).read_text())
        functions = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert name in functions, f"{path} has no test {name} (docs/security.md: {line})"
