"""``NegotiateChallengeHandler`` and ``wsgate-client --negotiate`` against a real MIT KDC on loopback.

The gateway is real (a ``kerberos5`` + ``gss`` realm, tests/test_kerberos.py); where the server must
misbehave (an impostor that cannot prove itself, or one that sends no proof), a small aiohttp server
stands in for it, with a real GSS acceptor where it plays an honest server.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from wsgate.client import (
    AuthenticationError,
    ChallengeRequest,
    DispatchChallengeHandler,
    MutualAuthenticationError,
    NegotiateChallengeHandler,
    cli,
    connect,
)

from .kdc import Kdc
from .test_client_cli import run
from .test_kerberos import realm_config

gssapi = pytest.importorskip("gssapi")


@pytest.fixture
def alice(kdc: Kdc, tmp_path: Path) -> Path:
    return kdc.kinit("alice", tmp_path / "alice.cc")


@pytest.fixture
async def kerberized(start_gateway, kdc) -> Callable[..., Any]:
    """``await kerberized(scheme)`` → the URL of a Negotiate-protected echo service on a real gateway."""

    async def start(scheme: str = "Negotiate") -> str:
        gateway = await start_gateway(realm_config(kdc, scheme=scheme), name=f"{scheme.replace(' ', '-')}.yaml")
        return f"ws://localhost:{gateway.port_of('kerberized')}/k"

    return start


@pytest.mark.parametrize("scheme", ["Negotiate", "Application Negotiate"])
async def test_a_ticket_reaches_the_echo_and_the_gateway_proves_itself(kerberized, alice, scheme) -> None:
    url = await kerberized(scheme)
    handler = NegotiateChallengeHandler(ccache=f"FILE:{alice}")
    response = await handler.handle(ChallengeRequest(url, scheme))  # the scheme the server used comes back
    assert response is not None and response.authorization is not None
    assert response.authorization.startswith(f"{scheme} ") and response.next_handler is not None
    async with await connect(url, challenge_handler=handler) as connection:
        assert connection.expires is not None  # the ticket's end
        await connection.send("hello")
        assert await anext(aiter(connection)) == "hello"


async def test_the_default_cache_and_a_dispatch_handler(kerberized, alice, monkeypatch) -> None:
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{alice}")
    url = await kerberized()
    dispatch = DispatchChallengeHandler().register("ws://localhost:*", NegotiateChallengeHandler())
    async with await connect(url, challenge_handler=dispatch) as connection:
        await connection.send("via dispatch")
        assert await anext(aiter(connection)) == "via dispatch"


async def test_a_refresh_presents_a_new_authenticator(kerberized, alice) -> None:
    url = await kerberized()
    async with await connect(url, challenge_handler=NegotiateChallengeHandler(ccache=f"FILE:{alice}")) as connection:
        # the handshake's token is not kept: presenting it again would be a replay (403)
        assert await connection.refresh() is not None
        await connection.send("still open")
        assert await anext(aiter(connection)) == "still open"


async def test_a_user_without_the_role_is_forbidden(kerberized, kdc, tmp_path) -> None:
    carol = kdc.kinit("carol", tmp_path / "carol.cc")
    url = await kerberized()
    with pytest.raises(AuthenticationError) as refused:
        await connect(url, challenge_handler=NegotiateChallengeHandler(ccache=f"FILE:{carol}"))
    assert refused.value.status == 403


async def test_no_ticket_is_a_clear_error(kerberized, tmp_path) -> None:
    url = await kerberized()
    empty = f"FILE:{tmp_path / 'empty.cc'}"
    with pytest.raises(AuthenticationError) as refused:
        await connect(url, challenge_handler=NegotiateChallengeHandler(ccache=empty))
    assert refused.value.status == 401
    assert "no Kerberos ticket" in str(refused.value) and empty in str(refused.value) and "kinit" in str(refused.value)


async def test_an_expired_ticket_is_a_clear_error(kerberized, kdc, tmp_path) -> None:
    url = await kerberized()
    ccache = f"FILE:{kdc.kinit('alice', tmp_path / 'short.cc', lifetime='1s')}"
    await asyncio.sleep(2.5)
    with pytest.raises(AuthenticationError, match=f"ticket in {ccache} has expired; run kinit"):
        await connect(url, challenge_handler=NegotiateChallengeHandler(ccache=ccache))


async def test_a_principal_the_kdc_does_not_know_is_a_clear_error(kerberized, alice) -> None:
    url = await kerberized()
    handler = NegotiateChallengeHandler(ccache=f"FILE:{alice}", service_principal="HTTP@elsewhere")
    with pytest.raises(AuthenticationError, match="HTTP@elsewhere.*not found in Kerberos database"):
        await connect(url, challenge_handler=handler)
    explicit = NegotiateChallengeHandler(ccache=f"FILE:{alice}", service_principal="HTTP/localhost@EXAMPLE.TEST")
    async with await connect(url, challenge_handler=explicit) as connection:
        await connection.send("named")
        assert await anext(aiter(connection)) == "named"


def test_without_gssapi_the_error_says_what_to_install(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "gssapi", None)  # import gssapi now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'wsgate\[kerberos\]'"):
        NegotiateChallengeHandler()
    assert cli.main(["ws://localhost:1/k", "--negotiate", "--send", "x"]) == cli.USAGE
    assert "pip install 'wsgate[kerberos]'" in capsys.readouterr().err


# -- a stand-in server: an impostor, or an acceptor that needs two rounds ----------------------------------


class Standin:
    """An aiohttp server on loopback that answers Negotiate as ``mode`` says and records what it received."""

    def __init__(self, kdc: Kdc, mode: str, alice: Path) -> None:
        self.kdc = kdc
        self.mode = mode
        self.alice = alice
        self.context: Any = None  # the acceptor context between rounds (one client at a time here)
        self.received: list[aiohttp.WSMessage] = []
        self.upgraded = asyncio.Event()
        self.ended = asyncio.Event()

    def acceptor(self) -> Any:
        creds = gssapi.Credentials(usage="accept", store={"keytab": str(self.kdc.keytab)})
        return gssapi.SecurityContext(creds=creds, usage="accept")

    def foreign_ap_rep(self, alice: Path) -> bytes:
        """A genuine AP-REP of the service, but for another client's context (a captured, replayed proof)."""
        creds = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{alice}"})
        other = gssapi.SecurityContext(
            name=gssapi.Name("HTTP@localhost", gssapi.NameType.hostbased_service),
            mech=gssapi.OID.from_int_seq("1.3.6.1.5.5.2"),
            usage="initiate",
            creds=creds,
            flags=gssapi.RequirementFlag.mutual_authentication,
        )
        return bytes(self.acceptor().step(other.step()))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Negotiate" or not token:
            return web.Response(status=401, headers={"WWW-Authenticate": "Negotiate"})
        header: str | None
        if self.mode == "missing":
            header = None
        elif self.mode == "garbage":
            header = "Negotiate eHh4eHh4eHh4"
        elif self.mode == "foreign":
            header = "Negotiate " + base64.b64encode(self.foreign_ap_rep(self.alice)).decode()
        else:  # "honest" and "rounds": a real acceptor
            if self.context is None:
                self.context = self.acceptor()
            answer = self.context.step(base64.b64decode(token))
            if not self.context.complete:
                return web.Response(
                    status=401, headers={"WWW-Authenticate": "Negotiate " + base64.b64encode(answer).decode()}
                )
            header = "Negotiate " + base64.b64encode(answer).decode() if answer else None
            self.context = None
        ws = web.WebSocketResponse()
        if header is not None:
            ws.headers["WWW-Authenticate"] = header
        await ws.prepare(request)
        self.upgraded.set()
        async for message in ws:
            self.received.append(message)
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
        self.ended.set()
        return ws


@pytest.fixture
async def standin(kdc: Kdc, alice: Path) -> AsyncIterator[Callable[[str], Any]]:
    runners: list[web.AppRunner] = []

    async def start(mode: str) -> tuple[str, Standin]:
        server = Standin(kdc, mode, alice)
        app = web.Application()
        app.router.add_get("/k", server.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"ws://localhost:{port}/k", server

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_the_stand_in_accepts_an_honest_exchange(standin, alice) -> None:
    url, _ = await standin("honest")
    async with await connect(url, challenge_handler=NegotiateChallengeHandler(ccache=f"FILE:{alice}")) as connection:
        await connection.send("ok")
        assert await anext(aiter(connection)) == "ok"


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("missing", "no Negotiate token on the 101"),
        ("garbage", "did not prove its identity"),
        ("foreign", "did not prove its identity"),
    ],
)
async def test_a_server_that_cannot_prove_itself_is_dropped(standin, alice, mode, words) -> None:
    url, server = await standin(mode)
    with pytest.raises(MutualAuthenticationError, match=words) as refused:
        await connect(url, challenge_handler=NegotiateChallengeHandler(ccache=f"FILE:{alice}"))
    assert refused.value.status == 101 and isinstance(refused.value, AuthenticationError)
    assert server.upgraded.is_set()
    await asyncio.wait_for(server.ended.wait(), 5)
    assert [m.type for m in server.received] in ([], [aiohttp.WSMsgType.ERROR])  # no message, no close frame


async def test_the_check_can_be_turned_off_for_a_gateway_that_sends_no_proof(standin, alice) -> None:
    url, _ = await standin("missing")
    handler = NegotiateChallengeHandler(ccache=f"FILE:{alice}", mutual_authentication=False)
    async with await connect(url, challenge_handler=handler) as connection:
        await connection.send("unverified")
        assert await anext(aiter(connection)) == "unverified"


async def test_a_continuation_round_then_the_final_proof(standin, alice) -> None:
    """DCE-style Kerberos takes three legs: AP-REQ, the server's AP-REP on a 401, the client's answer,
    then the acceptor's last SPNEGO token on the 101. Every token is real."""
    url, server = await standin("rounds")
    handler = NegotiateChallengeHandler(ccache=f"FILE:{alice}", flags=gssapi.RequirementFlag.dce_style)
    async with await connect(url, challenge_handler=handler) as connection:
        await connection.send("two rounds")
        assert await anext(aiter(connection)) == "two rounds"
    assert server.context is None  # the acceptor completed


async def test_a_continuation_round_through_the_gateway(kerberized, alice) -> None:
    """The gateway keeps the round under the client's TCP connection: aiohttp reuses the connection a 401
    came on (its body is complete), so the next round reaches the acceptor context that asked for it."""
    url = await kerberized()
    answers: list[tuple[int, str]] = []
    trace = aiohttp.TraceConfig()

    async def record(session: Any, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
        answers.append((params.response.status, params.response.headers.get("WWW-Authenticate", "")))

    trace.on_request_end.append(record)
    handler = NegotiateChallengeHandler(ccache=f"FILE:{alice}", flags=gssapi.RequirementFlag.dce_style)
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        await connect(url, challenge_handler=handler, session=session) as connection,
    ):
        await connection.send("two rounds")
        assert await anext(aiter(connection)) == "two rounds"
    assert [status for status, _ in answers] == [401, 401, 101]
    assert answers[0][1] == "Negotiate" and answers[1][1].startswith("Negotiate ")  # the server's round token
    assert answers[2][1].startswith("Negotiate ")  # and its proof


# -- wsgate-client --negotiate -------------------------------------------------------------------------


async def test_the_command_sends_and_reads_the_echo(kerberized, kdc, alice, tmp_path) -> None:
    url = await kerberized("Application Negotiate")
    env = {"KRB5CCNAME": f"FILE:{alice}", "KRB5_CONFIG": str(kdc.config)}
    code, out, err = await run(url, "--negotiate", "--send", "hello", "--send", "again", env=env)
    assert code == 0, err
    assert out.splitlines() == ["hello", "again"]
    named = (url, "--negotiate", "--service-principal", "HTTP/localhost@EXAMPLE.TEST", "--send", "named")
    code, out, err = await run(*named, env=env)
    assert code == 0 and out.strip() == "named", err


async def test_the_command_names_each_failure(kerberized, kdc, tmp_path, standin, alice) -> None:
    url = await kerberized()
    config = {"KRB5_CONFIG": str(kdc.config)}
    code, _, err = await run(url, "--negotiate", "--send", "x", env={**config, "KRB5CCNAME": f"FILE:{tmp_path}/no"})
    assert code == cli.USAGE and "no Kerberos ticket" in err and "kinit" in err and f"{tmp_path}/no" in err
    carol = kdc.kinit("carol", tmp_path / "carol.cc")
    code, _, err = await run(url, "--negotiate", "--send", "x", env={**config, "KRB5CCNAME": f"FILE:{carol}"})
    assert code == cli.AUTHENTICATION and "HTTP 403" in err
    impostor, _ = await standin("garbage")
    code, _, err = await run(impostor, "--negotiate", "--send", "x", env={**config, "KRB5CCNAME": f"FILE:{alice}"})
    assert code == cli.AUTHENTICATION and "did not prove its identity" in err
    code, _, err = await run(url, "--service-principal", "HTTP@localhost", "--send", "x", env=config)
    assert code == cli.USAGE and "--service-principal needs --negotiate" in err
