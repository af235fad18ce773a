"""Sans-I/O tests: challenge parsing and building, credential sources, JAAS chain semantics."""

from __future__ import annotations

import base64
import itertools

import pytest

from wsgate.security.challenges import (
    AmbiguousCredentials,
    Credentials,
    CredentialsError,
    challenge_header,
    decode_basic,
    gather_credentials,
    parse_authorization,
    realm_schemes,
    without_token_offers,
)
from wsgate.security.login import ChainEntry, Failed, LoginAttempt, Succeeded, Unavailable, run_chain


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("Basic abc", ("basic", "abc")),
        ("Application Basic abc", ("basic", "abc")),
        ("application   basic abc", ("basic", "abc")),
        ("Bearer t.o.k", ("bearer", "t.o.k")),
        ("Application Token xyz", ("token", "xyz")),
        ("Negotiate YII=", ("negotiate", "YII=")),
        ("", None),
        ("  ", None),
    ],
)
def test_parse_authorization(header, parsed):
    assert parse_authorization(header) == parsed


@pytest.mark.parametrize(
    "bad", ["!!!", b64("no-colon"), b64(":nouser"), base64.b64encode(b"\xff\xfe:x").decode(), "YWJj ZA=="]
)
def test_garbled_basic_is_refused(bad):
    with pytest.raises(CredentialsError):
        decode_basic(bad)


def test_basic_keeps_colons_and_unicode_in_the_password():
    assert decode_basic(b64("jöe:pa:ss wörd")) == ("jöe", "pa:ss wörd")


def test_gather_from_every_source_and_refuse_duplicates():
    headers = {"X-Token": ["s"], "Cookie": ["sso=s; other=1"]}
    token_schemes = realm_schemes("Application Token")
    creds = gather_credentials(
        headers, {"t": ["s"]}, token_schemes, ("X-Token",), ("t",), ("sso",), ("chat", "wsgate.token.s")
    )
    assert dict(creds.tokens) == {"header:x-token": "s", "query:t": "s", "cookie:sso": "s", "subprotocol": "s"}
    assert creds.bearer() == "s"
    with pytest.raises(AmbiguousCredentials, match="more than one Authorization"):
        gather_credentials({"Authorization": ["Basic a", "Basic b"]}, {}, token_schemes)
    with pytest.raises(AmbiguousCredentials, match="query:t given more than once"):
        gather_credentials({}, {"t": ["1", "1"]}, token_schemes, (), ("t",))
    with pytest.raises(AmbiguousCredentials, match="subprotocol given more than once"):
        gather_credentials({}, {}, token_schemes, subprotocols=("wsgate.token.a", "wsgate.token.b"))
    with pytest.raises(AmbiguousCredentials, match="different tokens in header:x-token"):
        gather_credentials({"Authorization": ["Bearer a"], "X-Token": ["b"]}, {}, token_schemes, ("X-Token",))


def test_a_realm_reads_only_its_own_scheme():
    assert realm_schemes("Application Basic") == realm_schemes("Basic") == {"basic"}
    assert realm_schemes("Application Token") == {"bearer", "token"}
    assert realm_schemes("Application Negotiate") == {"negotiate"} and realm_schemes(None) == frozenset()
    basic_header = {"Authorization": ["Basic " + b64("joe:welcome")]}
    assert gather_credentials(basic_header, {}, realm_schemes("Application Token")).empty
    assert gather_credentials({"Authorization": ["Bearer t"]}, {}, realm_schemes("Basic")).empty
    assert gather_credentials({"Authorization": [""]}, {}, realm_schemes("Basic")).empty
    assert gather_credentials(basic_header, {}, realm_schemes("Basic")).basic() == ("joe", "welcome")


def test_bearer_prefers_authorization_and_token_offers_are_never_echoed():
    assert Credentials("bearer", "a", {"query:t": "b"}).bearer() == "a"
    assert Credentials("basic", "x", {}).bearer() is None
    assert without_token_offers(("wsgate.token.secret", "mqtt")) == ("mqtt",)


@pytest.mark.parametrize(
    ("scheme", "plain", "header"),
    [
        ("Basic", False, 'Basic realm="Demo \\"Realm\\""'),
        ("Application Basic", False, 'Application Basic realm="Demo \\"Realm\\""'),
        ("Application Basic", True, 'Basic realm="Demo \\"Realm\\""'),
        ("Application Token", False, "Application Token"),
        ("Negotiate", False, "Negotiate"),
        ("Application Negotiate", True, "Negotiate"),
    ],
)
def test_challenge_headers(scheme, plain, header):
    assert challenge_header(scheme, 'Demo "Realm"', plain) == header


# -- chain semantics ---------------------------------------------------------------------------


class Fixed:
    def __init__(self, outcome):
        self.outcome = outcome
        self.calls = 0

    async def login(self, attempt):
        self.calls += 1
        return self.outcome


OK = Succeeded("u", frozenset({"R"}))
NO = Failed("no")
DOWN = Unavailable("down")
FLAGS = ("required", "requisite", "sufficient", "optional")


def reference_result(chain: list[tuple[str, object]]) -> tuple[str, int]:
    """An independent reading of the JAAS table: (overall, modules called)."""
    strict_failed = False
    any_success = False
    calls = 0
    for flag, outcome in chain:
        calls += 1
        ok = outcome is OK
        any_success |= ok
        if ok and flag == "sufficient" and not strict_failed:
            return "ok", calls
        if not ok and flag in ("required", "requisite"):
            strict_failed = True
            if flag == "requisite":
                break
    has_strict = any(f in ("required", "requisite") for f, _ in chain)
    success = not strict_failed and (has_strict or any_success)
    return ("ok" if success else "fail"), calls


CASES = [
    list(zip(flags, outcomes, strict=True))
    for n in (1, 2, 3)
    for flags in itertools.product(FLAGS, repeat=n)
    for outcomes in itertools.product((OK, NO), repeat=n)
]


@pytest.mark.parametrize("chain", CASES, ids=lambda c: "+".join(f"{f[:4]}:{'ok' if o is OK else 'no'}" for f, o in c))
async def test_chain_matches_the_jaas_table(chain):
    modules = [Fixed(o) for _, o in chain]
    entries = [ChainEntry(f, m, f"m{i}") for i, ((f, _), m) in enumerate(zip(chain, modules, strict=True))]
    result = await run_chain(entries, LoginAttempt(Credentials(), "1.2.3.4"))
    expected, calls = reference_result(chain)
    assert ("ok" if isinstance(result.outcome, Succeeded) else "fail") == expected
    assert sum(m.calls for m in modules) == calls


async def test_empty_chain_denies():
    assert isinstance((await run_chain([], LoginAttempt(Credentials(), "x"))).outcome, Failed)


async def test_outage_is_unavailable_never_access_or_wrong_password():
    entries = [ChainEntry("required", Fixed(DOWN), "ldap"), ChainEntry("optional", Fixed(OK), "file")]
    assert isinstance((await run_chain(entries, LoginAttempt(Credentials(), "x"))).outcome, Unavailable)
    entries = [ChainEntry("sufficient", Fixed(DOWN), "ldap"), ChainEntry("sufficient", Fixed(OK), "jwt")]
    assert isinstance((await run_chain(entries, LoginAttempt(Credentials(), "x"))).outcome, Succeeded)


async def test_principals_merge_and_earliest_expiry_wins():
    entries = [
        ChainEntry("required", Fixed(Succeeded("alice", frozenset({"A"}), 200.0)), "jwt"),
        ChainEntry("optional", Fixed(Succeeded(None, frozenset({"B"}), 100.0)), "roles"),
    ]
    outcome = (await run_chain(entries, LoginAttempt(Credentials(), "x"))).outcome
    assert outcome == Succeeded("alice", frozenset({"A", "B"}), 100.0)


class Broken:
    async def login(self, attempt):
        raise RuntimeError("bug in a custom module")


async def test_a_module_that_raises_is_unavailable_not_access(caplog):
    entries = [ChainEntry("required", Broken(), "class:x.Broken")]
    result = await run_chain(entries, LoginAttempt(Credentials(), "x"))
    assert isinstance(result.outcome, Unavailable)
    assert "login module class:x.Broken raised" in caplog.text


async def test_session_store_keeps_only_digests_and_prunes_expired_sessions(monkeypatch):
    import time as time_module

    from wsgate.core.identity import Identity
    from wsgate.state.sessions import MemorySessions, digest

    store = MemorySessions()
    identity = Identity("r", "joe", frozenset(), None)
    token, session = await store.issue(identity, time_module.time() + 60)
    assert await store.lookup(token) is session and token not in repr(store._sessions)
    assert digest(token) in store._sessions
    for _ in range(1500):
        await store.issue(identity, time_module.time() - 1)  # already expired
    assert len(store) < 1100  # pruned on the way
    assert await store.lookup(token) is session
    assert await store.lookup("forged") is None
