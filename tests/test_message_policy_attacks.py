"""Attack review of the message policy: regression tests for what the review found (sans-I/O).

The rest of the policy's behaviour: test_message_policy_units.py and test_message_policy.py.
"""

from __future__ import annotations

import pytest

from wsgate.services import messages
from wsgate.services.messages import json_fields

PATHS = tuple((name, messages.json_path(name)) for name in ("json.kind", "json.items.0"))


def fields(data: str | bytes) -> dict[str, str] | None:
    out: dict[str, str] = {}
    return out if json_fields(data, PATHS, out) else None


@pytest.mark.parametrize(
    "text",
    [
        '{"kind": "order"}',
        '\ufeff{"kind": "order"}',  # a byte-order mark: read past in a binary frame, so in a text frame too
        ' \n{"kind": "order", "items": ["a"]}\t',
        '{"kind": "order"} x',
        '{"kind": "order", "kind": "quote"}',
        '["order"]',
        "not json",
        "",
    ],
)
def test_the_frame_type_never_changes_what_the_rules_see(text: str) -> None:
    """docs/security.md: the message is read as JSON whether it came as a text or a binary frame, so the
    frame type cannot slip a message past a rule. A text frame with a BOM gave no fields (the binary one did)."""
    assert fields(text) == fields(text.encode())


def test_a_long_integer_does_not_hide_the_other_fields() -> None:
    """Valid JSON that every common back end reads (as a big number or a float): Python's int() refused more
    than 4300 digits, the whole message became 'not JSON', and a deny rule on its other fields never matched."""
    big = "1" + "0" * 5000
    assert fields('{"kind": "order", "n": ' + big + "}") == {"json.kind": "order"}
    big_paths = (("json.n", ("n",)),)
    out: dict[str, str] = {}
    assert json_fields('{"n": -' + big + "}", big_paths, out) and out == {"json.n": "-" + big}  # its JSON spelling
