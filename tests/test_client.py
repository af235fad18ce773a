"""The Python client and wsgate-client against the real gateway on loopback."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wsgate.client import (
    AuthenticationError,
    BasicChallengeHandler,
    DispatchChallengeHandler,
    ReconnectingConnection,
    RefusedError,
    TokenChallengeHandler,
    connect,
)
from wsgate.state.connections import Selector

from .conftest import SECURITY_PEM, client_ssl

KEY = ec.generate_private_key(ec.SECP256R1())


def token(exp_in: float = 300, user: str = "alice") -> str:
    now = time.time()
    claims = {"iss": "https://issuer.test", "aud": "wsgate", "sub": user, "exp": int(now + exp_in), "roles": ["USER"]}
    return jwt.encode(claims, KEY, algorithm="ES256")


@pytest.fixture
async def gw(start_gateway, tmp_path, pem_stores):
    (tmp_path / "jaas-config.xml").write_text(
        '<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">'
        "<user><name>joe</name><password>welcome</password><role-name>USER</role-name></user></jaas-config>"
    )
    (tmp_path / "issuer.pem").write_bytes(
        KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return await start_gateway(
        """
service:
  - name: basic
    accept: ws://127.0.0.1:0/basic
    type: echo
    realm-name: files
    authorization-constraint:
      require-role: USER
  - name: token
    accept: ws://127.0.0.1:0/token
    type: echo
    realm-name: tokens
    authorization-constraint:
      require-role: USER
  - name: mtls
    accept: wss://localhost:0/mtls
    type: echo
    accept-options:
      ssl.verify-client: required
  - name: full
    accept: ws://127.0.0.1:0/full
    type: echo
    accept-options:
      connection.limit: 1
"""
        + SECURITY_PEM
        + """
  realm:
    - name: files
      description: Files Realm
      authentication:
        http-challenge-scheme: Application Basic
        authorization-timeout: 2s
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
    - name: tokens
      authentication:
        http-challenge-scheme: Application Token
        login-modules:
          login-module:
            type: jwt
            options:
              key-file: issuer.pem
              issuer: https://issuer.test
              audience: wsgate
              algorithms: ES256
              leeway: 0s
"""
    )


def ws_url(gw, name: str) -> str:
    return f"ws://127.0.0.1:{gw.port_of(name)}/{name}"


async def echo(connection, text: str = "hello") -> str | bytes:
    await connection.send(text)
    return await asyncio.wait_for(connection.__aiter__().__anext__(), 5)


async def test_basic_challenge_handler_with_per_realm_login(gw):
    asked = []
    handler = BasicChallengeHandler(lambda request: ("joe", "wrong"))
    handler.set_realm_login_handler("Files Realm", lambda request: asked.append(request.realm) or ("joe", "welcome"))
    async with await connect(ws_url(gw, "basic"), challenge_handler=handler) as connection:
        assert await echo(connection) == "hello"
        assert connection.id and connection.refresh_url and connection.refresh_url.endswith(connection.id)
    assert asked == ["Files Realm"]


async def test_wrong_password_and_missing_handler_are_clean_errors(gw):
    with pytest.raises(AuthenticationError) as refused:
        await connect(ws_url(gw, "basic"), challenge_handler=BasicChallengeHandler(lambda r: ("joe", "nope")))
    assert refused.value.status == 403
    with pytest.raises(AuthenticationError) as challenged:
        await connect(ws_url(gw, "basic"))
    assert challenged.value.status == 401 and "Application Basic" in str(challenged.value)
    with pytest.raises(AuthenticationError):  # a handler that gives up
        await connect(ws_url(gw, "basic"), challenge_handler=BasicChallengeHandler(lambda r: None))


async def test_token_handler_refreshes_before_expiry_without_reconnecting(gw):
    issued = []

    async def provider(request):
        issued.append(token(exp_in=2.5))
        return issued[-1]

    connection = await connect(
        ws_url(gw, "token"), challenge_handler=TokenChallengeHandler(provider), refresh_margin=1.2
    )
    async with connection:
        first_expiry = connection.expires
        await asyncio.sleep(3.5)  # past the first token's exp: only a refresh keeps it open
        assert not connection.closed
        assert await echo(connection, "after expiry") == "after expiry"
        assert len(issued) >= 2 and connection.expires > first_expiry


async def test_basic_refresh_keeps_the_connection_past_authorization_timeout(gw):
    handler = BasicChallengeHandler(lambda r: ("joe", "welcome"))
    async with await connect(ws_url(gw, "basic"), challenge_handler=handler, refresh_margin=1.0) as connection:
        await asyncio.sleep(3.0)
        assert await echo(connection, "still") == "still"


def logins(gw, realm: str, module: str) -> int:
    """How many times the realm's login chain ran (one per sign-in or renewal POST that carried credentials)."""
    metrics = gw.runtime.metrics
    return int(metrics.registry.get_sample_value("wsgate_auth_seconds_count", {"realm": realm, "module": module}) or 0)


async def test_a_deadline_inside_the_default_margin_is_renewed_at_a_bounded_rate(gw):
    # authorization-timeout 2 s < the default 30 s margin: every deadline is already "due"
    asked: list[float] = []
    handler = BasicChallengeHandler(lambda r: asked.append(time.time()) or ("joe", "welcome"))
    async with await connect(ws_url(gw, "basic"), challenge_handler=handler) as connection:
        before = logins(gw, "files", "file")
        await asyncio.sleep(4.0)  # two lifetimes: the margin shrinks to a third of one, so 2-4 renewals
        renewals = len(asked) - 1
        assert 1 <= renewals <= 5, renewals
        # at the gateway: each renewal is a bare POST (401) and one with credentials
        assert logins(gw, "files", "file") - before <= 2 * 5
        assert await echo(connection, "kept") == "kept"  # the renewals that did happen kept it open


async def test_a_renewal_that_does_not_move_the_deadline_is_not_repeated(gw):
    fixed = token(exp_in=3)  # the provider can only hand out this one token: renewing cannot help

    async def provider(request):
        asked.append(time.time())
        return fixed

    asked: list[float] = []
    connection = await connect(ws_url(gw, "token"), challenge_handler=TokenChallengeHandler(provider))
    async with connection:
        msg = await asyncio.wait_for(connection.receive(), 6)  # the gateway closes at the token's exp
        assert msg.data == 1008
        assert len(asked) <= 2, len(asked)  # connect, then at most one renewal for this deadline
        assert logins(gw, "tokens", "jwt") <= 4  # each exchange: a bare attempt (401), then the token


async def test_a_token_provider_that_fails_once_is_asked_again(gw):
    calls = []

    def provider(request):
        calls.append(time.time())
        if len(calls) == 2:  # the first renewal: the token file is being rotated
            raise OSError("token file missing")
        return token(exp_in=6)

    async with await connect(ws_url(gw, "token"), challenge_handler=TokenChallengeHandler(provider)) as connection:
        await asyncio.sleep(6.5)  # past the first token's exp: only the retried renewal keeps it open
        assert await echo(connection, "retried") == "retried"
        assert 3 <= len(calls) <= 4, len(calls)


def test_renewal_schedule_shrinks_the_margin_jitters_and_backs_off():
    import random

    from wsgate.client.connection import renewal_delay, retry_delay

    rng = random.Random(7)
    # a 20 s deadline with the default 30 s margin: renew after 2/3 of it (less jitter), not at once
    delays = [renewal_delay(20, 20, 30, rng) for _ in range(200)]
    assert all(20 - 20 / 3 * 1.2 <= d <= 20 - 20 / 3 for d in delays) and len(set(delays)) > 100
    assert 3000 - 30 * 1.2 <= renewal_delay(3000, 3600, 30, rng) <= 3000 - 30  # long lifetimes: the margin
    assert renewal_delay(-5, 20, 30, rng) == 0  # overdue: now, once
    backoff = [max(retry_delay(n, rng) for _ in range(50)) for n in range(1, 8)]
    assert backoff == sorted(backoff) and backoff[0] <= 1 and 15 <= backoff[-1] <= 30


async def test_without_refresh_the_gateway_closes_at_expiry(gw):
    connection = await connect(ws_url(gw, "token"), headers={"Authorization": f"Bearer {token(exp_in=1)}"})
    msg = await asyncio.wait_for(connection.receive(), 4)
    assert msg.data == 1008
    await connection.close()


async def test_dispatch_chooses_by_url(gw):
    basic = BasicChallengeHandler(lambda r: ("joe", "welcome"))
    dispatch = DispatchChallengeHandler().register("ws://127.0.0.1:*/basic", basic)
    async with await connect(ws_url(gw, "basic"), challenge_handler=dispatch) as connection:
        assert await echo(connection) == "hello"
    other = DispatchChallengeHandler().register("wss://elsewhere.example/*", basic)
    with pytest.raises(AuthenticationError):
        await connect(ws_url(gw, "basic"), challenge_handler=other)


async def test_mutual_tls_with_a_private_ca(gw, ca):
    url = f"wss://localhost:{gw.port_of('mtls')}/mtls"
    async with await connect(url, ssl=client_ssl(ca, ca.issue_cert("client@example.test"))) as connection:
        assert await echo(connection) == "hello"


async def test_reconnecting_connection_survives_a_drop(gw):
    client = ReconnectingConnection(
        ws_url(gw, "basic"), challenge_handler=BasicChallengeHandler(lambda r: ("joe", "welcome")), backoff=(0.05, 0.2)
    )
    messages = client.messages()
    await client.send("one")
    assert await asyncio.wait_for(messages.__anext__(), 5) == "one"
    # dropped by the gateway, not revoked (a revoked user could not reconnect)
    assert await gw.runtime.expire(Selector(user="joe"), "dropped") == 1
    await asyncio.sleep(0.3)
    await client.send("two")
    assert await asyncio.wait_for(messages.__anext__(), 5) == "two"
    assert client.connects == 2
    await client.close()
    await messages.aclose()


async def test_refusals_that_are_not_about_credentials_are_not_authentication_errors(gw, http):
    with pytest.raises(RefusedError) as missing:
        await connect(f"ws://127.0.0.1:{gw.port_of('basic')}/nowhere")
    assert missing.value.status == 404 and not isinstance(missing.value, AuthenticationError)
    assert not missing.value.transient
    with pytest.raises(RefusedError):  # a 404 is not worth reconnecting for
        await ReconnectingConnection(f"ws://127.0.0.1:{gw.port_of('basic')}/nowhere", backoff=(0.05, 0.1)).send("x")
    holder = await http.ws_connect(ws_url(gw, "full"))  # the only connection "full" allows: 503 for the next
    with pytest.raises(RefusedError) as full:
        await connect(ws_url(gw, "full"))
    assert full.value.status == 503 and full.value.transient
    client = ReconnectingConnection(ws_url(gw, "full"), backoff=(0.1, 0.2))
    sending = asyncio.create_task(client.send("through"))
    await asyncio.sleep(0.5)
    assert not sending.done()  # retrying the 503, not giving up
    await holder.close()
    await asyncio.wait_for(sending, 5)
    assert await asyncio.wait_for(anext(client.messages()), 5) == "through"
    await client.close()


async def run_cli(*args: str, password: str = "welcome") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from wsgate.client.cli import main; sys.exit(main())",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "WSGATE_TEST_PW": password},
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    return process.returncode or 0, out.decode(), err.decode()


async def test_wsgate_client_command(gw, tmp_path, ca):
    code, out, _ = await run_cli(
        ws_url(gw, "basic"), "--user", "joe", "--password-env", "WSGATE_TEST_PW", "--send", "hi", "--send", "there"
    )
    assert code == 0 and out.splitlines() == ["hi", "there"]
    code, _, err = await run_cli(
        ws_url(gw, "basic"), "--user", "joe", "--password-env", "WSGATE_TEST_PW", "--send", "x", password="bad"
    )
    assert code == 3 and "authentication failed" in err
    (tmp_path / "token").write_text(token())
    code, out, _ = await run_cli(ws_url(gw, "token"), "--token-file", str(tmp_path / "token"), "--send", "tok")
    assert code == 0 and out.strip() == "tok"
    cert = ca.issue_cert("ops@example.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    code, out, _ = await run_cli(
        f"wss://localhost:{gw.port_of('mtls')}/mtls",
        "--cacert",
        str(tmp_path / "truststore.pem"),
        "--cert",
        str(tmp_path / "client.pem"),
        "--send",
        "secure",
    )
    assert code == 0 and out.strip() == "secure"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def python_examples() -> list[str]:
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "clients.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("example", python_examples(), ids=lambda e: e.splitlines()[-1][:30])
async def test_docs_client_examples_run_against_the_default_gateway(tmp_path, example):
    from wsgate.catalog import load_default_config
    from wsgate.gateway import Gateway

    gateway = Gateway(load_default_config({"gateway.hostname": "127.0.0.1", "gateway.port": "0"}))
    await gateway.start()
    try:
        (tmp_path / "example.py").write_text(example)
        url = f"ws://127.0.0.1:{gateway.port_of('secure-echo')}/secure-echo"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(tmp_path / "example.py"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "WSGATE_URL": url},
        )
        out, err = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, err.decode()
        assert out.decode().strip()
    finally:
        await gateway.stop(1)
