"""Attacks on the Kerberos realms (security review), with real tickets from the test KDC.

Each test here failed before its fix: a replay across two realms whose service principal is spelled
differently, a deterministic first SPNEGO round refused as a replay (locking out every multi-round
client), a retry after a busy verifier refused as a replay, and a principal name that is not UTF-8
turning into an exception (503 and a traceback) instead of a refusal.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from wsgate.security.challenges import Credentials
from wsgate.security.login.base import Challenged, Failed, LoginAttempt, Rounds, Succeeded, Unavailable
from wsgate.security.login.kerberos import Kerberos5LoginModule
from wsgate.security.login.verifier import Verifier
from wsgate.state.rounds import MemoryRounds

from .kdc import KADMIN_LOCAL, KINIT, REALM, Kdc
from .test_kerberos import initiator, negotiate

gssapi = pytest.importorskip("gssapi")
KRB5 = "1.2.840.113554.1.2.2"
NTLM = "1.3.6.1.4.1.311.2.2.10"
SPNEGO = "1.3.6.1.5.5.2"


# -- a little DER, to speak SPNEGO the way clients that prefer another mechanism do -----------------


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    width = (size.bit_length() + 7) // 8
    length = bytes([size]) if size < 128 else bytes([0x80 | width]) + size.to_bytes(width, "big")
    return bytes([tag]) + length + body


def _oid(dotted: str) -> bytes:
    parts = [int(x) for x in dotted.split(".")]
    out = bytes([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, out)


def _mech_list(*oids: str) -> bytes:
    return _tlv(0x30, b"".join(_oid(o) for o in oids))


def _neg_init(*oids: str) -> bytes:
    """A NegTokenInit offering ``oids`` with no optimistic token: the same bytes for every client."""
    return _tlv(0x60, _oid(SPNEGO) + _tlv(0xA0, _tlv(0x30, _tlv(0xA0, _mech_list(*oids)))))


def _neg_resp(token: bytes | None = None, mic: bytes | None = None) -> bytes:
    body = b""
    if token is not None:
        body += _tlv(0xA2, _tlv(0x04, token))
    if mic is not None:
        body += _tlv(0xA3, _tlv(0x04, mic))
    return _tlv(0xA1, _tlv(0x30, body))


def _parse(data: bytes, at: int = 0) -> tuple[int, bytes, int]:
    tag, size = data[at], data[at + 1]
    at += 2
    if size & 0x80:
        width = size & 0x7F
        size = int.from_bytes(data[at : at + width], "big")
        at += width
    return tag, data[at : at + size], at + size


def _response_token(neg_token_resp: bytes) -> bytes:
    """The mechanism token ([2] responseToken) in the server's NegTokenResp."""
    _, body, _ = _parse(neg_token_resp)
    _, sequence, _ = _parse(body)
    at = 0
    while at < len(sequence):
        tag, field, at = _parse(sequence, at)
        if tag == 0xA2:
            return _parse(field)[1]
    raise AssertionError("no responseToken")


# -- helpers ---------------------------------------------------------------------------------------


def module(kdc: Kdc, folder: Path, principal: str = f"HTTP/localhost@{REALM}") -> Kerberos5LoginModule:
    options = {
        "keyTab": str(kdc.keytab),
        "principal": principal,
        "replay-cache": str(folder),
        "role.AUTHORIZED": f"alice@{REALM}",
    }
    return Kerberos5LoginModule(options, "security/realm[corp]/login-module[1]", folder)


def kerberos_initiator(ccache: Path) -> Any:
    """A bare Kerberos initiator (the mechanism token a SPNEGO client sends in its second round)."""
    return gssapi.SecurityContext(
        name=gssapi.Name("HTTP@localhost", gssapi.NameType.hostbased_service),
        mech=gssapi.MechType.kerberos,
        usage="initiate",
        creds=gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{ccache}"}),
        flags=gssapi.RequirementFlag.mutual_authentication,
    )


async def present(
    target: Kerberos5LoginModule,
    token: bytes,
    rounds: MemoryRounds | None = None,
    client: str = "192.0.2.1:40000",
    verifier: Verifier | None = None,
) -> Any:
    attempt = LoginAttempt(
        Credentials("negotiate", base64.b64encode(token).decode()),
        client.partition(":")[0],
        rounds=Rounds(rounds, client) if rounds is not None else None,
    )
    if verifier is not None:
        attempt.verifier = verifier
    return await target.login(attempt)


def two_realms(kdc: Kdc, folder: Path) -> str:
    """Two realms on one keytab and one replay cache folder; the principal is spelled two ways."""
    realms = []
    services = []
    for name, principal in (("corp", f"HTTP/localhost@{REALM}"), ("other", "HTTP/localhost")):
        services.append(f"""
  - name: {name}
    accept: ws://localhost:0/{name}
    type: echo
    realm-name: {name}
    authorization-constraint:
      require-role: AUTHORIZED""")
        realms.append(f"""
    - name: {name}
      authentication:
        http-challenge-scheme: Negotiate
        login-modules:
          login-module:
            - type: kerberos5
              options:
                keyTab: {kdc.keytab}
                principal: {principal}
                replay-cache: {folder}
                role.AUTHORIZED: alice@{REALM}""")
    return "service:" + "".join(services) + "\nsecurity:\n  realm:" + "".join(realms) + "\n"


# -- the attacks -----------------------------------------------------------------------------------


async def test_a_token_used_in_one_realm_cannot_be_replayed_in_another(start_gateway, kdc, tmp_path, http) -> None:
    """Both realms accept tickets for the same service key: a captured token must pass only once.
    The replay cache file was named after the ``principal`` option as written, so ``HTTP/localhost``
    and ``HTTP/localhost@EXAMPLE.TEST`` kept two files and each let the other's tokens through."""
    alice = kdc.kinit("alice", tmp_path / "alice.cc")
    folder = tmp_path / "rcache"
    gateway = await start_gateway(two_realms(kdc, folder))
    token = initiator(alice).step()
    async with http.ws_connect(f"http://localhost:{gateway.port_of('corp')}/corp", headers=negotiate(token)):
        pass
    with pytest.raises(aiohttp.WSServerHandshakeError) as replayed:
        async with http.ws_connect(f"http://localhost:{gateway.port_of('other')}/other", headers=negotiate(token)):
            pass
    assert replayed.value.status == 403


async def test_a_client_that_prefers_another_mechanism_is_not_refused_as_a_replay(kdc, tmp_path) -> None:
    """A NegTokenInit that offers NTLM first and carries no Kerberos ticket has the same bytes for every
    such client: the replay guard refused the second client (and anyone could lock them all out by
    sending it first). It carries no authenticator; the ticket in the next round meets the replay cache."""
    target = module(kdc, tmp_path / "rcache")
    rounds = MemoryRounds()
    alice = kdc.kinit("alice", tmp_path / "alice.cc")
    for client in ("192.0.2.1:40000", "192.0.2.2:40000"):  # the attacker (or another user) first, then alice
        first = await present(target, _neg_init(NTLM, KRB5), rounds, client)
        assert isinstance(first, Challenged), (client, first)
    bare = kerberos_initiator(alice)
    ticket = bare.step()
    second = await present(target, _neg_resp(token=ticket), rounds, "192.0.2.2:40000")
    assert isinstance(second, Challenged), second
    bare.step(_response_token(base64.b64decode(second.data)))  # the AP-REP: the gateway proved itself
    mic = bare.get_signature(_mech_list(NTLM, KRB5))  # SPNEGO's mechListMIC: the offer was not downgraded
    done = await present(target, _neg_resp(mic=mic), rounds, "192.0.2.2:40000")
    assert isinstance(done, Succeeded) and done.user == f"alice@{REALM}", done
    # The attacker replays alice's second round after a first round of its own: the replay cache refuses it.
    assert isinstance(await present(target, _neg_init(NTLM, KRB5), rounds, "192.0.2.1:40001"), Challenged)
    replayed = await present(target, _neg_resp(token=ticket), rounds, "192.0.2.1:40001")
    assert isinstance(replayed, Failed) and "replay" in replayed.reason, replayed


async def test_a_busy_verifier_does_not_spend_the_token(kdc, tmp_path) -> None:
    """503 with Retry-After: 1 invites the same request again; the token was never validated, so
    the retry must not be refused as a replay."""
    target = module(kdc, tmp_path / "rcache")
    alice = kdc.kinit("alice", tmp_path / "alice.cc")
    token = initiator(alice).step()
    verifier = Verifier(1, 0, "wsgate-verify-review")
    try:
        verifier.pending = verifier.limit  # at its bound: every job is refused at once
        busy = await present(target, token, verifier=verifier)
        assert isinstance(busy, Unavailable), busy
        verifier.pending = 0
        retried = await present(target, token, verifier=verifier)
        assert isinstance(retried, Succeeded), retried
    finally:
        verifier.close()


async def test_a_busy_verifier_keeps_the_round_for_the_retry(kdc, tmp_path) -> None:
    """The same for a second round: the GSS context waiting for it must survive the 503."""
    target = module(kdc, tmp_path / "rcache")
    rounds = MemoryRounds()
    alice = kdc.kinit("alice", tmp_path / "alice.cc")
    assert isinstance(await present(target, _neg_init(NTLM, KRB5), rounds), Challenged)
    bare = kerberos_initiator(alice)
    token = _neg_resp(token=bare.step())
    verifier = Verifier(1, 0, "wsgate-verify-review")
    try:
        verifier.pending = verifier.limit
        assert isinstance(await present(target, token, rounds, verifier=verifier), Unavailable)
        verifier.pending = 0
        again = await present(target, token, rounds, verifier=verifier)
        assert isinstance(again, Challenged), again  # the round went on (the MIC round follows)
    finally:
        verifier.close()


@pytest.fixture
def latin1_principal(kdc: Kdc, tmp_path: Path) -> Any:
    """A ticket for ``caf\\xe9@EXAMPLE.TEST``: a name that is not UTF-8 (MIT's PAC code refuses it, so the
    KDC issues no PAC while the test runs; a KDC of a trusted foreign realm needs no such help)."""
    env = {**os.environ, **kdc.env()}
    name = b"caf\xe9"
    krbtgt = f"krbtgt/{REALM}@{REALM}"
    subprocess.run(
        [KADMIN_LOCAL.encode(), b"-r", REALM.encode(), b"-q", b"addprinc -pw pw " + name],
        env=env,
        capture_output=True,
        check=True,
    )
    kdc.admin(f"modprinc +no_auth_data_required {krbtgt}")
    try:
        ccache = tmp_path / "latin1.cc"
        subprocess.run(
            [KINIT.encode(), b"-c", f"FILE:{ccache}".encode(), name],
            input=b"pw\n",
            env=env,
            capture_output=True,
            check=True,
        )
        yield ccache
    finally:
        kdc.admin(f"modprinc -no_auth_data_required {krbtgt}")


async def test_a_principal_name_that_is_not_utf8_is_refused_not_raised(kdc, tmp_path, latin1_principal) -> None:
    target = module(kdc, tmp_path / "rcache")
    outcome = await present(target, initiator(latin1_principal).step())
    assert isinstance(outcome, Failed), outcome


async def test_two_kerberos5_modules_in_one_chain_keep_their_rounds_apart(kdc, tmp_path) -> None:
    """A realm for two host names chains two kerberos5 modules (one service principal each). Both ran on
    the first round, and the second took the GSS context the first had just kept for the client (one
    key per client and realm): no multi-round client could ever log in."""
    from wsgate.security.login.chain import ChainEntry, run_chain

    keytab = tmp_path / "gw.keytab"
    kdc.admin(f"addprinc -randkey HTTP/gw.review@{REALM}")
    kdc.admin(f"ktadd -k {keytab} HTTP/gw.review@{REALM}")
    other = Kerberos5LoginModule(
        {"keyTab": str(keytab), "principal": f"HTTP/gw.review@{REALM}", "replay-cache": str(tmp_path / "rcache")},
        "security/realm[corp]/login-module[1]",
        tmp_path,
    )
    chain = [
        ChainEntry("sufficient", other, "kerberos5"),
        ChainEntry("sufficient", module(kdc, tmp_path / "rcache"), "kerberos5"),
    ]
    rounds = MemoryRounds()

    async def step(token: bytes) -> Any:
        attempt = LoginAttempt(
            Credentials("negotiate", base64.b64encode(token).decode()),
            "192.0.2.1",
            rounds=Rounds(rounds, "192.0.2.1:40000"),
        )
        return (await run_chain(chain, attempt)).outcome

    alice = kdc.kinit("alice", tmp_path / "alice.cc")
    assert isinstance(await step(_neg_init(NTLM, KRB5)), Challenged)
    bare = kerberos_initiator(alice)  # a ticket for HTTP/localhost: the second module's
    second = await step(_neg_resp(token=bare.step()))
    assert isinstance(second, Challenged), second
    bare.step(_response_token(base64.b64decode(second.data)))
    done = await step(_neg_resp(mic=bare.get_signature(_mech_list(NTLM, KRB5))))
    assert isinstance(done, Succeeded) and done.user == f"alice@{REALM}", done
