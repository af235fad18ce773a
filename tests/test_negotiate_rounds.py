"""Multi-round authentication (the seam Negotiate/SPNEGO needs), decided in memory without sockets.

A login module may answer ``Challenged`` and keep state for the client's next request under the
client's connection (``Handshake.client``); a ``Succeeded`` may carry a last token for the client
(Kerberos mutual authentication), which the admission puts in ``WWW-Authenticate`` on the 101.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict, MultiDictProxy

from wsgate.catalog import load_config
from wsgate.core.handshake import Accept, Handshake, Reject, handshake_headers
from wsgate.gateway import Gateway
from wsgate.security.admission import Admission
from wsgate.security.login import Challenged, Failed, LoginAttempt, Succeeded
from wsgate.state.rounds import MemoryRounds

HOST = "127.0.0.1"
CONFIG = """
service:
  - name: kerberized
    accept: ws://127.0.0.1:0/k
    type: echo
    realm-name: corp
    authorization-constraint:
      require-role: AUTHORIZED
security:
  realm:
    - name: corp
      authentication:
        http-challenge-scheme: Negotiate
        login-modules:
          login-module:
            type: class:tests.test_negotiate_rounds.TwoRounds
"""


class TwoRounds:
    """A two-leg exchange like SPNEGO's: ``round-1`` → challenge ``server-1``; ``round-2`` → success."""

    def __init__(self, options: dict[str, str]) -> None:
        self.options = options

    async def login(self, attempt: LoginAttempt) -> Any:
        if attempt.credentials.scheme != "negotiate" or attempt.rounds is None:
            return Failed("no negotiate token or no client key")
        token = attempt.credentials.parameter
        state = await attempt.rounds.load()
        if state is None:
            if token != "round-1":
                return Failed("not a first round")
            await attempt.rounds.keep("after round 1")
            return Challenged("another round", "server-1")
        if state == "after round 1" and token == "round-2":
            return Succeeded("joe@EXAMPLE.TEST", frozenset({"AUTHORIZED"}), response="server-final")
        return Failed("rounds out of order")


@pytest.fixture
async def admission(tmp_path: Path) -> Any:
    (tmp_path / "gateway.yaml").write_text(CONFIG)
    gw = Gateway(load_config(tmp_path / "gateway.yaml"))
    yield next(r.admission for listener in gw.listeners.values() for r in listener.routes)
    for realm in gw.realms.values():
        await realm.close()


def negotiate(token: str, client: str) -> Handshake:
    headers = handshake_headers(
        [
            ("Host", HOST),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
            ("Authorization", f"Negotiate {token}"),
        ]
    )
    return Handshake("GET", HOST, "/k", headers, MultiDictProxy(MultiDict()), remote="192.0.2.1", client=client)


async def test_a_second_round_on_the_same_connection_succeeds_with_the_mutual_token(admission: Admission) -> None:
    first = await admission.admit(negotiate("round-1", "192.0.2.1:40000"))
    assert isinstance(first, Reject) and first.status == 401
    assert first.headers["WWW-Authenticate"] == "Negotiate server-1"
    second = await admission.admit(negotiate("round-2", "192.0.2.1:40000"))
    assert isinstance(second, Accept), second
    assert second.identity is not None and second.identity.user == "joe@EXAMPLE.TEST"
    assert second.headers["WWW-Authenticate"] == "Negotiate server-final"  # sent on the 101
    second.hold.release()


async def test_round_state_belongs_to_one_connection_and_is_answered_once(admission: Admission) -> None:
    await admission.admit(negotiate("round-1", "192.0.2.1:40000"))
    other = await admission.admit(negotiate("round-2", "192.0.2.1:40001"))  # another connection: no state
    assert isinstance(other, Reject) and other.status in (401, 403)
    done = await admission.admit(negotiate("round-2", "192.0.2.1:40000"))
    assert isinstance(done, Accept)
    done.hold.release()
    again = await admission.admit(negotiate("round-2", "192.0.2.1:40000"))  # the state was taken
    assert isinstance(again, Reject)


async def test_a_transport_that_cannot_tell_clients_apart_gets_no_rounds(admission: Admission) -> None:
    refused = await admission.admit(negotiate("round-1", ""))
    assert isinstance(refused, Reject) and refused.status in (401, 403)


async def test_round_state_expires_and_is_bounded() -> None:
    rounds = MemoryRounds(limit=3)
    await rounds.put("a", 1, ttl=-1)  # already expired
    assert await rounds.take("a") is None
    for key in "bcde":
        await rounds.put(key, key)
    assert len(rounds) == 3 and await rounds.take("b") is None  # the oldest went first
    assert await rounds.take("e") == "e" and await rounds.take("e") is None


async def test_one_address_cannot_push_out_other_clients_rounds() -> None:
    rounds = MemoryRounds(limit=20, per_owner=4)
    await rounds.put("198.51.100.9:1000", "victim's round", owner="198.51.100.9")
    for port in range(100):  # an attacker opening first rounds from many source ports
        await rounds.put(f"203.0.113.6:{port}", "junk", owner="203.0.113.6")
    assert len(rounds) == 5  # 4 of the attacker's, the victim's untouched
    assert await rounds.take("198.51.100.9:1000") == "victim's round"
    assert await rounds.take("203.0.113.6:99") == "junk" and await rounds.take("203.0.113.6:0") is None
    await rounds.put("203.0.113.6:5", "again", owner="203.0.113.6")
    await rounds.put("203.0.113.6:5", "replaced", owner="203.0.113.6")  # the same key twice counts once
    assert await rounds.take("203.0.113.6:5") == "replaced"
