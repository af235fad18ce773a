"""Login modules under attack: work off the event loop and bounded per realm, the same work for
every user name, and hostile input refused as a credential (403), never read as an outage (503).

Timing claims live in bench/ (``--scenarios auth``); these tests check the mechanisms."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections import Counter
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from argon2 import PasswordHasher, extract_parameters
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wsgate.security.challenges import Credentials
from wsgate.security.login import Failed, LoginAttempt, Succeeded
from wsgate.security.login.file import FileLoginModule

LIGHT = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
HEAVIER = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def jaas(path: Path, users: dict[str, str]) -> Path:
    rows = "".join(
        f"<user><name>{n}</name><password>{p}</password><role-name>R</role-name></user>" for n, p in users.items()
    )
    path.write_text(f'<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">{rows}</jaas-config>')
    return path


def attempt(user: str, password: str) -> LoginAttempt:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return LoginAttempt(Credentials("basic", token), "127.0.0.1")


class WorkLog:
    """Spies on the hashing libraries themselves (the real functions still run): which kind of
    verification, with which cost parameters, on which thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, object]] = []
        self.threads: list[str] = []
        argon2_verify, bcrypt_check = PasswordHasher.verify, bcrypt.checkpw
        import hmac

        compare = hmac.compare_digest

        def spy_argon2(hasher, stored, given):  # type: ignore[no-untyped-def]
            p = extract_parameters(stored)
            self.note("argon2", (p.type, p.memory_cost, p.time_cost, p.parallelism))
            return argon2_verify(hasher, stored, given)

        def spy_bcrypt(given, stored):  # type: ignore[no-untyped-def]
            self.note("bcrypt", stored[:7])
            return bcrypt_check(given, stored)

        def spy_compare(a, b):  # type: ignore[no-untyped-def]
            self.note("plain", None)
            return compare(a, b)

        monkeypatch.setattr(PasswordHasher, "verify", spy_argon2)
        monkeypatch.setattr(bcrypt, "checkpw", spy_bcrypt)
        monkeypatch.setattr(hmac, "compare_digest", spy_compare)

    def note(self, kind: str, parameters: object) -> None:
        self.calls.append((kind, parameters))
        self.threads.append(threading.current_thread().name)

    def take(self) -> Counter[tuple[str, object]]:
        work, self.calls = Counter(self.calls), []
        return work


# -- item: the same work whatever the user name (no enumeration by timing) ---------------------


async def test_every_attempt_does_the_same_verifications_whoever_it_names(tmp_path, monkeypatch):
    users = {
        "plain": "plainpw",
        "argon": LIGHT.hash("argonpw"),
        "heavy": HEAVIER.hash("heavypw"),
        "crypt": bcrypt.hashpw(b"cryptpw", bcrypt.gensalt(rounds=4)).decode(),
    }
    module = FileLoginModule({"file": str(jaas(tmp_path / "users.xml", users))}, "m", tmp_path)
    log = WorkLog(monkeypatch)
    work = {}
    for user, password in [*((u, "wrong") for u in users), *((u, f"{u}pw") for u in users), ("nobody", "x")]:
        outcome = await module.login(attempt(user, password))
        assert isinstance(outcome, Succeeded) == (user in users and password == f"{user}pw")
        work[(user, password)] = log.take()
    expected = work[("nobody", "x")]
    assert sum(expected.values()) == 4  # one verification per profile: plain, bcrypt-4, two argon2 profiles
    assert {kind for kind, _ in expected} == {"plain", "bcrypt", "argon2"}
    assert all(w == expected for w in work.values()), work


async def test_unknown_user_costs_a_plain_users_work_in_an_argon2_file(tmp_path, monkeypatch):
    """The reported instance: a plain-text user next to argon2 users; unknown names used to pay argon2 alone."""
    module = FileLoginModule(
        {"file": str(jaas(tmp_path / "u.xml", {"joe": "welcome", "ann": LIGHT.hash("s3cret")}))}, "m", tmp_path
    )
    log = WorkLog(monkeypatch)
    await module.login(attempt("joe", "wrong"))
    plain_user = log.take()
    await module.login(attempt("nobody", "wrong"))
    assert log.take() == plain_user
    assert {kind for kind, _ in plain_user} == {"plain", "argon2"}


def test_an_unparsable_hash_is_a_config_error(tmp_path):
    from wsgate.errors import ConfigError

    with pytest.raises(ConfigError, match="'ann' looks like an argon2 or bcrypt hash but cannot be parsed"):
        FileLoginModule({"file": str(jaas(tmp_path / "u.xml", {"ann": "$argon2id$v=19$broken"}))}, "m", tmp_path)


@pytest.mark.parametrize(
    "password", ["x\ud800", "a\x00b", "\uffff", "é" * 40], ids=["surrogate", "nul", "ffff", "long"]
)
async def test_passwords_no_library_accepts_are_wrong_passwords(tmp_path, password):
    users = {"joe": "welcome", "ann": LIGHT.hash("s3cret"), "bob": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()}
    module = FileLoginModule({"file": str(jaas(tmp_path / "u.xml", users))}, "m", tmp_path)
    for user in ("joe", "ann", "bob", "nobody"):
        outcome = await module.login(LoginAttempt(Credentials(), "r", shared={"name": user, "password": password}))
        assert isinstance(outcome, Failed)


# -- item: verification off the event loop, bounded per realm ---------------------------------


def file_realm(users: Path, extra: str = "") -> str:
    return f"""
service:
  - name: desk
    accept: ws://127.0.0.1:0/desk
    type: echo
    realm-name: files
    authorization-constraint:
      require-role: R
security:
  realm:
    name: files
    authentication:
      http-challenge-scheme: Application Basic
{extra}      login-modules:
        login-module:
          type: file
          options:
            file: {users}
"""


async def status(http, gw, headers) -> tuple[int, dict[str, str]]:  # type: ignore[no-untyped-def]
    try:
        ws = await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('desk')}/desk", headers=headers)
    except aiohttp.WSServerHandshakeError as error:
        return error.status, dict(error.headers or {})
    await ws.close()
    return 101, {}


async def test_hashes_are_verified_on_the_realms_threads_not_the_event_loop(start_gateway, http, tmp_path, monkeypatch):
    users = jaas(tmp_path / "u.xml", {"ann": LIGHT.hash("s3cret"), "joe": "welcome"})
    gw = await start_gateway(file_realm(users))
    log = WorkLog(monkeypatch)
    assert (await status(http, gw, basic("ann", "wrong")))[0] == 403
    assert (await status(http, gw, basic("ann", "s3cret")))[0] == 101
    assert (await status(http, gw, basic("nobody", "x")))[0] == 403
    assert log.threads and all(name.startswith("wsgate-verify-files") for name in log.threads), log.threads


async def test_a_full_verifier_answers_503_with_retry_after_and_counts_it(start_gateway, http, tmp_path):
    users = jaas(tmp_path / "u.xml", {"ann": LIGHT.hash("s3cret")})
    gw = await start_gateway(file_realm(users, "      login-concurrency: 1\n      login-queue: 2\n"))
    verifier = gw.realms["files"].verifier
    assert (verifier.concurrency, verifier.limit) == (1, 3)
    release = threading.Event()
    holders = [asyncio.ensure_future(verifier.run(release.wait, 5)) for _ in range(3)]
    await asyncio.sleep(0)
    try:
        code, headers = await status(http, gw, basic("ann", "s3cret"))
        assert (code, headers.get("Retry-After")) == (503, "1")
        code, headers = await status(http, gw, basic("nobody", "x"))  # unknown users are bounded alike
        assert code == 503
        scrape = gw.runtime.metrics.exposition().decode()
        assert 'wsgate_limited_total{limit="auth-concurrency",service="desk"} 2.0' in scrape
        assert 'wsgate_handshakes_total{outcome="503",service="desk"} 2.0' in scrape
    finally:
        release.set()
        await asyncio.gather(*holders)
    assert verifier.pending == 0
    assert (await status(http, gw, basic("ann", "s3cret")))[0] == 101


BLOCKING_MODULE = """
import threading

from wsgate.security.login import Failed, Succeeded

RELEASE = threading.Event()


class SlowCheck:
    '''A custom module that opts in: its blocking check runs on the realm's verifier.'''

    def __init__(self, options):
        pass

    async def login(self, attempt):
        done = await attempt.verifier.run(RELEASE.wait, 5)
        if done is not True:
            return done  # Busy: the realm's bound is reached
        return Succeeded("slow", frozenset({"R"}))
"""


async def test_custom_modules_opt_in_to_the_realm_bound(start_gateway, http, tmp_path, monkeypatch):
    (tmp_path / "slow_login.py").write_text(BLOCKING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import slow_login  # type: ignore[import-not-found]

    config = file_realm(tmp_path / "unused.xml", "      login-concurrency: 1\n      login-queue: 1\n").replace(
        "type: file\n          options:\n            file: " + str(tmp_path / "unused.xml"),
        "type: class:slow_login.SlowCheck",
    )
    gw = await start_gateway(config)
    verifier = gw.realms["files"].verifier
    first = [asyncio.ensure_future(status(http, gw, {})) for _ in range(2)]
    for _ in range(200):
        if verifier.pending == 2:
            break
        await asyncio.sleep(0.01)
    assert verifier.pending == 2
    code, headers = await status(http, gw, {})
    assert (code, headers.get("Retry-After")) == (503, "1")
    slow_login.RELEASE.set()
    assert [code for code, _ in await asyncio.gather(*first)] == [101, 101]


async def test_a_job_counts_until_its_thread_finishes_even_if_the_client_left():
    from wsgate.security.login import Busy
    from wsgate.security.login.verifier import Verifier

    verifier = Verifier(concurrency=1, queue=0)
    release = threading.Event()
    job = asyncio.ensure_future(verifier.run(release.wait, 5))
    await asyncio.sleep(0)
    job.cancel()
    await asyncio.sleep(0.01)
    assert verifier.pending == 1
    assert isinstance(await verifier.run(lambda: None), Busy)
    release.set()
    for _ in range(100):
        if verifier.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert verifier.pending == 0 and await verifier.run(lambda: 7) == 7
    verifier.close()


# -- item: hostile tokens are refused tokens, not an outage ------------------------------------


async def test_undecodable_token_bytes_are_403_not_503(start_gateway, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "key.pem").write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    gw = await start_gateway("""
service:
  - name: desk
    accept: ws://127.0.0.1:0/desk
    type: echo
    realm-name: tokens
    authorization-constraint:
      require-role: R
security:
  realm:
    name: tokens
    authentication:
      http-challenge-scheme: Application Token
      login-modules:
        login-module:
          type: jwt
          options:
            key-file: key.pem
            issuer: https://issuer.test
            audience: wsgate
""")
    for token in (b"\xff\xfe.e30.x", b"eyJhbGciOiJFUzI1NiJ9.\xc3\x28.x", b"a\x80"):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("desk"))
        writer.write(
            b"GET /desk HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Authorization: Bearer " + token + b"\r\n\r\n"
        )
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert line.split()[1] == b"403", (token, line)


async def test_a_busy_module_makes_the_chain_busy_unless_another_sufficient_one_decides():
    from wsgate.security.login import Busy, ChainEntry, Unavailable, run_chain

    class Fixed:
        def __init__(self, outcome):  # type: ignore[no-untyped-def]
            self.outcome = outcome

        async def login(self, attempt):  # type: ignore[no-untyped-def]
            return self.outcome

    busy, down = Fixed(Busy("full")), Fixed(Unavailable("down"))
    ok, no = Fixed(Succeeded("u", frozenset())), Fixed(Failed("no"))
    run = [ChainEntry("required", down, "ldap"), ChainEntry("required", busy, "file")]
    assert isinstance((await run_chain(run, attempt("u", "p"))).outcome, Busy)
    run = [ChainEntry("required", busy, "file"), ChainEntry("required", no, "jwt")]
    assert isinstance((await run_chain(run, attempt("u", "p"))).outcome, Busy)
    run = [ChainEntry("sufficient", busy, "file"), ChainEntry("sufficient", ok, "jwt")]
    assert isinstance((await run_chain(run, attempt("u", "p"))).outcome, Succeeded)
