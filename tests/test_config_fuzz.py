"""Fuzzing the config builder: any tree of known and unknown elements gives a model or located
``ConfigErrors``, never another exception (a crash would hide the operator's real mistake)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgate.catalog import build_config
from wsgate.config.build import (
    ACCEPT_OPTION_NAMES,
    AUTHENTICATION,
    CROSS_SITE,
    LOGIN_MODULE,
    REALM,
    SECURITY,
    SERVICE,
    STORE,
    TOP,
)
from wsgate.config.tree import Node
from wsgate.errors import ConfigErrors

NAMES = sorted(
    {
        *TOP,
        *SERVICE,
        *SECURITY,
        *STORE,
        *REALM,
        *AUTHENTICATION,
        *LOGIN_MODULE,
        *CROSS_SITE,
        *ACCEPT_OPTION_NAMES,
        "property",
        "name",
        "value",
        "login-modules",
        "login-module",
        "options",
        "directory",
        "accept",
        "maximum.pending.bytes",
        "location",
        "patterns",
        "cache-control",
        "bogus",
    }
)
TEXTS = st.one_of(
    st.sampled_from(
        [
            "",
            "echo",
            "proxy",
            "broadcast",
            "directory",
            "ws://localhost:8000/a",
            "wss://h/x",
            "tcp://127.0.0.1:1",
            "64k",
            "30s",
            "required",
            "*",
            "${x}",
            "${",
            "http://a:1",
            "1M",
            "0",
        ]
    ),
    st.text(max_size=12),
)


def nodes(depth: int) -> st.SearchStrategy[Node]:
    leaf = st.builds(Node, st.sampled_from(NAMES), TEXTS)
    if depth == 0:
        return leaf
    return st.one_of(leaf, st.builds(Node, st.sampled_from(NAMES), st.just(""), st.lists(nodes(depth - 1), max_size=5)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(nodes(4), max_size=6))
def test_any_tree_gives_a_model_or_located_errors(children):
    try:
        build_config(Node("gateway-config", "", children))
    except ConfigErrors as errors:
        assert errors.errors and all(str(e) for e in errors.errors)
