"""``curl --negotiate -u :`` against Negotiate realms: a real SPNEGO client, with only a ticket cache.

curl (built with GSS-API/SPNEGO), given one auth method, sends its token from ``KRB5CCNAME`` on the first
request (no 401 round first); it gets the WebSocket upgrade's 101, and a plain HTTP resource of the same realm
(a ``directory`` service) answers 200 with the mutual-authentication token ``WWW-Authenticate: Negotiate
<token>``, which a GSS-API initiator accepts as the gateway's proof of its own identity.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import SECURITY_PEM, client_ssl
from .kdc import Kdc, realm_yaml

gssapi = pytest.importorskip("gssapi")
SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
CURL = shutil.which("curl")


def _curl_missing() -> str | None:
    if CURL is None:
        return "curl not installed"
    features = subprocess.run([CURL, "-V"], capture_output=True, text=True, timeout=10).stdout
    if "SPNEGO" not in features or "GSS-API" not in features:
        return "this curl has no GSS-API/SPNEGO (curl -V)"
    return None


pytestmark = pytest.mark.skipif(_curl_missing() is not None and not os.environ.get("CI"), reason=str(_curl_missing()))

UPGRADE = [
    "--http1.1",
    "-H",
    "Connection: Upgrade",
    "-H",
    "Upgrade: websocket",
    "-H",
    "Sec-WebSocket-Version: 13",
    "-H",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
]


def config(kdc: Kdc) -> str:
    """A Negotiate-protected echo and a Negotiate-protected folder on one https://localhost listener."""
    return f"""
service:
  - name: kerberized
    accept: wss://localhost:0/k
    type: echo
    realm-name: corp
    authorization-constraint:
      require-role: AUTHORIZED
    accept-options:
      ssl.bind: 127.0.0.1:0
  - name: private
    accept: https://localhost:0/private/
    type: directory
    properties:
      directory: private
    realm-name: corp
    authorization-constraint:
      require-role: AUTHORIZED
    accept-options:
      ssl.bind: 127.0.0.1:0
{SECURITY_PEM.strip()}
{realm_yaml(kdc)}
"""


class Answer:
    """What curl got: every response's status and headers (``-D``), and the body."""

    def __init__(self, dumped: str, body: str, exit_code: int) -> None:
        self.exit_code = exit_code
        self.body = body
        self.responses: list[tuple[int, dict[str, str]]] = []
        for block in dumped.replace("\r\n", "\n").strip().split("\n\n"):
            status, *lines = block.splitlines()
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.responses.append((int(status.split()[1]), headers))

    @property
    def statuses(self) -> list[int]:
        return [status for status, _ in self.responses]

    @property
    def last(self) -> dict[str, str]:
        return self.responses[-1][1]


async def curl(url: str, ccache: Path, ca_pem: Path, tmp_path: Path, *args: str) -> Answer:
    """``curl --negotiate -u :`` with ``ccache`` as its only credentials (the file need not exist).

    Headers come on stdout (``-D -``) and are read as they arrive: a 101 leaves the connection open and
    curl waiting for a body, so curl is stopped once the 101's headers are complete.
    """
    body = tmp_path / "body.txt"
    body.unlink(missing_ok=True)
    process = await asyncio.create_subprocess_exec(
        str(CURL),
        "-sS",
        "--negotiate",
        "-u",
        ":",
        "--cacert",
        str(ca_pem),
        "--max-time",
        "10",
        "-D",
        "-",
        "-o",
        str(body),
        *args,
        url,
        env={**os.environ, "KRB5CCNAME": f"FILE:{ccache}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    dumped, block, err = "", "", ""
    try:
        async with asyncio.timeout(15):
            while line := (await process.stdout.readline()).decode():
                dumped += line
                block += line
                if line in ("\r\n", "\n"):  # the end of one response's headers
                    if block.split()[1] == "101":
                        process.terminate()  # upgraded: nothing more to read
                        break
                    block = ""
            err = (await process.stderr.read()).decode()
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert dumped, f"curl got no answer (exit {process.returncode}): {err}"
    return Answer(dumped, body.read_text() if body.exists() else "", process.returncode or 0)


@pytest.fixture
async def gateway(start_gateway, kdc, pem_stores, tmp_path):
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "hello.txt").write_text("for AUTHORIZED eyes\n")
    return await start_gateway(config(kdc))


async def test_curl_negotiates_the_websocket_upgrade(gateway, kdc, pem_stores, tmp_path) -> None:
    url = f"https://localhost:{gateway.port_of('kerberized')}/k"
    alice = kdc.kinit("alice", tmp_path / "alice.cc")
    answer = await curl(url, alice, pem_stores["truststore"], tmp_path, *UPGRADE)
    assert answer.statuses == [101], (answer.responses, answer.exit_code)  # the token went on the first request
    assert answer.last["upgrade"].lower() == "websocket"
    assert answer.last["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's sample key
    scheme, _, token = answer.last["www-authenticate"].partition(" ")
    assert scheme == "Negotiate" and base64.b64decode(token, validate=True)  # mutual authentication on the 101


async def test_curl_without_a_ticket_gets_the_challenge(gateway, kdc, pem_stores, tmp_path) -> None:
    url = f"https://localhost:{gateway.port_of('kerberized')}/k"
    answer = await curl(url, tmp_path / "none.cc", pem_stores["truststore"], tmp_path, *UPGRADE)
    assert answer.statuses == [401], answer.responses  # nothing to answer the challenge with
    assert answer.last["www-authenticate"] == "Negotiate"
    assert answer.exit_code == 0


async def test_curl_with_a_ticket_but_no_role_is_forbidden(gateway, kdc, pem_stores, tmp_path) -> None:
    url = f"https://localhost:{gateway.port_of('kerberized')}/k"
    carol = kdc.kinit("carol", tmp_path / "carol.cc")
    answer = await curl(url, carol, pem_stores["truststore"], tmp_path, *UPGRADE)
    assert answer.statuses == [403], answer.responses  # authenticated as carol, but not authorized


async def test_curl_reads_a_negotiate_protected_file_and_gets_the_mutual_token(
    gateway, kdc, pem_stores, tmp_path
) -> None:
    url = f"https://localhost:{gateway.port_of('private')}/private/hello.txt"
    alice = kdc.kinit("alice", tmp_path / "alice.cc")
    answer = await curl(url, alice, pem_stores["truststore"], tmp_path)
    assert answer.statuses == [200], answer.responses
    assert answer.exit_code == 0 and answer.body == "for AUTHORIZED eyes\n"
    scheme, _, token = answer.last.get("www-authenticate", "").partition(" ")
    assert scheme == "Negotiate" and token, answer.last  # the 200 carries the gateway's AP-REP

    none = await curl(url, tmp_path / "none.cc", pem_stores["truststore"], tmp_path)
    assert none.statuses == [401] and none.last["www-authenticate"] == "Negotiate", none.responses
    assert "AUTHORIZED" not in none.body


async def test_the_token_on_a_plain_http_200_completes_mutual_authentication(
    gateway, kdc, pem_stores, tmp_path, http, ca
) -> None:
    """What curl cannot show: the 200's token is the gateway's real AP-REP (the initiator's context completes)."""
    alice = kdc.kinit("alice", tmp_path / "alice.cc")
    context = gssapi.SecurityContext(
        name=gssapi.Name("HTTP@localhost", gssapi.NameType.hostbased_service),
        mech=SPNEGO,
        usage="initiate",
        creds=gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{alice}"}),
        flags=gssapi.RequirementFlag.mutual_authentication,
    )
    url = f"https://localhost:{gateway.port_of('private')}/private/hello.txt"
    headers = {"Authorization": f"Negotiate {base64.b64encode(context.step()).decode()}"}
    async with http.get(url, headers=headers, ssl=client_ssl(ca)) as response:
        assert response.status == 200 and await response.text() == "for AUTHORIZED eyes\n"
        scheme, _, token = response.headers["WWW-Authenticate"].partition(" ")
    assert scheme == "Negotiate"
    assert not context.complete
    context.step(base64.b64decode(token))
    assert context.complete and str(context.target_name).startswith("HTTP/localhost")
