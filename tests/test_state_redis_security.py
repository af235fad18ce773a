"""Shared state and secrets: Redis AUTH and TLS, and no password, cookie or token ever reaching Redis usably.

``wsgate run`` against a Redis it cannot use (no or a wrong password, a CA that does not sign its certificate,
plain text to a TLS port) exits 2 before opening a port, with one line naming the element to fix;
``check-config`` never contacts Redis.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest
import trustme
from redis import asyncio as aioredis

from wsgate.state.sessions import digest

from .processes import free_port
from .redis_server import RedisServer, installed
from .test_state_nodes import PASSWORD, basic, node_config, users_xml, wsgate

pytestmark = pytest.mark.skipif(not installed(), reason="redis-server not installed (make test installs it)")
REDIS_PASSWORD = "r3dis-AUTH-secret"


async def run_fails(folder: Path, config: str, *args: str) -> str:
    """``wsgate run`` that must exit 2 before serving: its stderr."""
    path = folder / "failing.yaml"
    path.write_text(config)
    process = await wsgate("run", str(path), *args, cwd=folder)
    assert process.stderr is not None
    err = await asyncio.wait_for(process.stderr.read(), 30)
    assert await asyncio.wait_for(process.wait(), 10) == 2, err
    text = err.decode()
    assert "Traceback" not in text and "ready at" not in text, text
    return text


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


# -- AUTH ----------------------------------------------------------------------------------------------------


@pytest.fixture
def redis_with_password(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis-auth", password=REDIS_PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_node_with_the_password_file_shares_sessions(start_gateway, redis_with_password, tmp_path, http):
    (tmp_path / "users.xml").write_text(users_xml())
    (tmp_path / "redis.pw").write_text(REDIS_PASSWORD + "\n")
    extra = "  password-file: redis.pw\n"
    url = redis_with_password.url
    a = await start_gateway(node_config(0, "a", url, extra), name="a.yaml")
    b = await start_gateway(node_config(0, "b", url, extra), name="b.yaml")
    async with http.post(f"http://127.0.0.1:{a.port_of('echo')}/echo/.wsgate/session", headers=basic("joe")) as signed:
        assert signed.status == 200
        cookie = signed.headers["Set-Cookie"].split(";")[0]
    async with http.ws_connect(f"ws://127.0.0.1:{b.port_of('echo')}/echo", headers={"Cookie": cookie}) as ws:
        await ws.send_str("authenticated to Redis")
        assert (await ws.receive()).data == "authenticated to Redis"


async def test_run_without_or_with_a_wrong_redis_password_exits_2_naming_the_password_file(
    redis_with_password, tmp_path
):
    (tmp_path / "users.xml").write_text(users_xml())
    url = redis_with_password.url
    missing = await run_fails(tmp_path, node_config(0, "a", url))
    assert last_line(missing) == f"wsgate: state/password-file: Redis {url} requires a password: name a file holding it"

    (tmp_path / "wrong.pw").write_text("not-the-password\n")
    wrong = await run_fails(tmp_path, node_config(0, "a", url, "  password-file: wrong.pw\n"))
    assert last_line(wrong).startswith(f"wsgate: state/password-file: Redis {url} refused the password (")
    assert "not-the-password" not in wrong

    # The same with workers: each worker finds it; the supervisor reports it once, with the same exit code.
    port = free_port()
    workers = await run_fails(tmp_path, node_config(port, "a", url, "  password-file: wrong.pw\n"), "--workers", "2")
    assert workers.count("refused the password") == 1 and last_line(workers) == last_line(wrong)


async def test_check_config_does_not_contact_redis(tmp_path):
    (tmp_path / "users.xml").write_text(users_xml())
    config = tmp_path / "g.yaml"
    config.write_text(node_config(0, "a", f"redis://127.0.0.1:{free_port()}/0"))  # nothing listens there
    process = await wsgate("check-config", str(config), cwd=tmp_path)
    assert process.stderr is not None
    err = await asyncio.wait_for(process.stderr.read(), 30)
    assert await asyncio.wait_for(process.wait(), 10) == 0, err


# -- TLS -----------------------------------------------------------------------------------------------------


@pytest.fixture
def redis_over_tls(tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert) -> AsyncIterator[RedisServer]:
    """redis-server on a TLS port only, its certificate (127.0.0.1, localhost) signed by the test CA."""
    folder = tmp_path / "redis-tls"
    folder.mkdir()
    chain, key, authority = folder / "chain.pem", folder / "key.pem", tmp_path / "redis-ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in server_cert.cert_chain_pems))
    server_cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(authority))
    server = RedisServer(folder, tls=(chain, key, authority))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_nodes_over_tls_with_the_ca_file_share_sessions(start_gateway, redis_over_tls, tmp_path, http):
    (tmp_path / "users.xml").write_text(users_xml())
    url = redis_over_tls.url
    assert url.startswith("rediss://")
    extra = "  ca-file: redis-ca.pem\n"
    a = await start_gateway(node_config(0, "a", url, extra), name="a.yaml")
    b = await start_gateway(node_config(0, "b", url, extra), name="b.yaml")
    async with http.post(f"http://127.0.0.1:{a.port_of('echo')}/echo/.wsgate/session", headers=basic("joe")) as signed:
        assert signed.status == 200
        cookie = signed.headers["Set-Cookie"].split(";")[0]
    ws = await http.ws_connect(f"ws://127.0.0.1:{b.port_of('echo')}/echo", headers={"Cookie": cookie})
    await ws.send_str("over TLS")
    assert (await ws.receive()).data == "over TLS"
    await a.revoke(user="joe")  # and a revocation's message crosses over TLS too
    message = await asyncio.wait_for(ws.receive(), 2)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008


async def test_run_refuses_a_redis_certificate_its_ca_file_does_not_sign(
    redis_over_tls, tmp_path, other_ca: trustme.CA
):
    (tmp_path / "users.xml").write_text(users_xml())
    other_ca.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    url = redis_over_tls.url
    wrong = await run_fails(tmp_path, node_config(0, "a", url, "  ca-file: other-ca.pem\n"))
    line = last_line(wrong)
    assert line.startswith(f"wsgate: state/ca-file: TLS with Redis {url} failed: CERTIFICATE_VERIFY_FAILED"), line
    assert "other-ca.pem" in line
    system = await run_fails(tmp_path, node_config(0, "a", url))  # no ca-file: the system's CAs do not sign it
    assert "state/ca-file: TLS with Redis" in last_line(system) and "the system's CAs" in last_line(system)
    plain = await run_fails(tmp_path, node_config(0, "a", url.replace("rediss://", "redis://")))
    assert last_line(plain).startswith(f"wsgate: state/url: Redis {url.replace('rediss://', 'redis://')} does not")


# -- secrets -------------------------------------------------------------------------------------------------


async def everything_in(client: aioredis.Redis) -> dict[str, str]:
    """Every key in Redis with its value as text, whatever its type."""
    found: dict[str, str] = {}
    async for name in client.scan_iter(count=1000):
        kind = await client.type(name)
        if kind == "string":
            value: object = await client.get(name)
        elif kind == "set":
            value = sorted(await client.smembers(name))
        elif kind == "hash":
            value = await client.hgetall(name)
        elif kind == "list":
            value = await client.lrange(name, 0, -1)
        elif kind == "zset":
            value = await client.zrange(name, 0, -1, withscores=True)
        else:
            value = f"<{kind}>"
        found[name] = json.dumps(value)
    return found


async def test_no_password_cookie_or_token_is_stored_or_sent_to_redis(start_gateway, redis_server, tmp_path, http):
    """After a Basic login, a session cookie used on another node, two token revocations and a logout, neither
    a key, a value nor any command sent to Redis (MONITOR: published messages included) holds a secret."""
    (tmp_path / "users.xml").write_text(users_xml())
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    commands: list[str] = []

    async def monitor() -> None:
        async with client.monitor() as watch:
            async for command in watch.listen():
                commands.append(command["command"])

    watching = asyncio.create_task(monitor())
    try:
        await asyncio.sleep(0.2)
        a = await start_gateway(node_config(0, "a", redis_server.url), name="a.yaml")
        b = await start_gateway(node_config(0, "b", redis_server.url), name="b.yaml")
        echo_a, echo_b = (f"ws://127.0.0.1:{g.port_of('echo')}/echo" for g in (a, b))
        async with http.ws_connect(echo_a, headers=basic("ann")) as ws:  # Basic, no session
            await ws.send_str("basic")
            assert (await ws.receive()).data == "basic"
        async with http.post(
            f"http://127.0.0.1:{a.port_of('echo')}/echo/.wsgate/session", headers=basic("joe")
        ) as signed:
            assert signed.status == 200
            cookie = signed.headers["Set-Cookie"].split(";")[0]
        session = cookie.split("=", 1)[1]
        live = await http.ws_connect(echo_b, headers={"Cookie": cookie})
        await live.send_str("session")
        assert (await live.receive()).data == "session"

        signed_jwt = jwt.encode(
            {"sub": "joe", "jti": "jti-4711", "exp": int(time.time()) + 600}, "k" * 32, algorithm="HS256"
        )
        opaque = "opaque-bearer-" + "x9" * 20
        admin = f"http://127.0.0.1:{b.port_of('admin')}/admin/api/revocations"
        for token in (signed_jwt, opaque):
            async with http.post(admin, json={"token": token}) as revoked:
                assert revoked.status == 200, await revoked.text()

        stored = await everything_in(client)
        keys = " ".join(stored)
        assert f"session:demo:{digest(session)}" in keys  # sessions by their digest…
        assert "revocation:jti:jti-4711" in keys  # …a JWT by its jti…
        assert f"revocation:token:{hashlib.sha256(opaque.encode()).hexdigest()}" in keys  # …another token by digest

        async with http.delete(
            f"http://127.0.0.1:{a.port_of('echo')}/echo/.wsgate/session", headers={"Cookie": cookie}
        ):
            pass  # a logout publishes the session's digest to every node
        closed = await asyncio.wait_for(live.receive(), 2)
        assert closed.type == aiohttp.WSMsgType.CLOSE
        stored.update(await everything_in(client))
        await asyncio.sleep(0.2)  # the last commands reach MONITOR
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await client.aclose()

    secrets = {
        "the password": PASSWORD,
        "Basic credentials": base64.b64encode(f"ann:{PASSWORD}".encode()).decode(),
        "the session cookie": session,
        "the JWT": signed_jwt,
        "the JWT's signature": signed_jwt.rsplit(".", 1)[1],
        "the opaque token": opaque,
    }
    assert any("PUBLISH" in c.upper() for c in commands) and any(digest(session) in c for c in commands)
    everywhere = {"keys and values": json.dumps(stored), "commands sent (MONITOR)": "\n".join(commands)}
    for where, text in everywhere.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} found in Redis {where}"
