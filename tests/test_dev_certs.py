"""``wsgate dev-certs``, ``hash-password`` and ``--version``: what a newcomer runs before a first TLS config.

The material ``dev-certs`` makes is used for real: a gateway serves wss with it, requires client
certificates from its CA, and a client trusting only that CA talks to it.
"""

from __future__ import annotations

import io
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from wsgate.cli import main
from wsgate.security.login import LoginAttempt
from wsgate.security.login.file import FileLoginModule


def config(folder: Path, store: str, kind: str) -> str:
    password = "\n    password-file: keystore.pw" if kind != "PEM" else ""
    return f"""
service:
  - name: secure
    accept: wss://localhost:0/echo
    type: echo
    accept-options:
      ssl.verify-client: required
security:
  keystore:
    type: {kind}
    file: {folder / store}{password.replace("keystore.pw", str(folder / "keystore.pw"))}
  truststore:
    type: PEM
    file: {folder / "truststore.pem"}
"""


def client_context(folder: Path, client: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(folder / "dev-ca.pem"))
    if client:
        context.load_cert_chain(folder / f"client-{client}.pem", folder / f"client-{client}.key")
    return context


async def echo(port: int, context: ssl.SSLContext) -> str:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"wss://localhost:{port}/echo", ssl=context) as ws:
        await ws.send_str("over dev TLS")
        return (await ws.receive()).data


@pytest.mark.parametrize(
    ("form", "store", "kind"),
    [("pkcs12", "keystore.p12", "PKCS12"), ("jks", "keystore.jks", "JKS"), ("pem", "keystore.pem", "PEM")],
)
async def test_the_material_serves_mutual_tls(start_gateway, tmp_path, capsys, form, store, kind) -> None:
    folder = tmp_path / "certs"
    assert (
        main(
            [
                "dev-certs",
                str(folder),
                "--host",
                "localhost",
                "--host",
                "127.0.0.1",
                "--client",
                "alice",
                "--format",
                form,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "DEVELOPMENT ONLY" in out and f"type: {kind}" in out
    gateway = await start_gateway(config(folder, store, kind))
    port = gateway.port_of("secure")
    assert await echo(port, client_context(folder, "alice")) == "over dev TLS"
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await echo(port, client_context(folder, None))  # ssl.verify-client required: no certificate, no entry


async def test_a_second_run_adds_a_client_of_the_same_ca(start_gateway, tmp_path, capsys) -> None:
    folder = tmp_path / "certs"
    assert main(["dev-certs", str(folder), "--host", "localhost", "--client", "alice"]) == 0
    gateway = await start_gateway(config(folder, "keystore.p12", "PKCS12"))
    again = tmp_path / "more"
    again.mkdir()
    for name in ("dev-ca.pem", "dev-ca.key"):
        (again / name).write_bytes((folder / name).read_bytes())
    assert main(["dev-certs", str(again), "--host", "localhost", "--client", "bob"]) == 0
    assert "reused the CA" in capsys.readouterr().out
    context = ssl.create_default_context(cafile=str(folder / "dev-ca.pem"))
    context.load_cert_chain(again / "client-bob.pem", again / "client-bob.key")
    assert await echo(gateway.port_of("secure"), context) == "over dev TLS"  # the running gateway trusts bob


def test_every_certificate_says_development_only_and_keys_are_private(tmp_path) -> None:
    folder = tmp_path / "certs"
    assert main(["dev-certs", str(folder), "--host", "gw.test", "--client", "alice"]) == 0
    for name in ("dev-ca.pem", "client-alice.pem"):
        cert = x509.load_pem_x509_certificate((folder / name).read_bytes())
        assert "development only" in cert.subject.rfc4514_string()
    for name in ("dev-ca.key", "keystore.p12", "keystore.pw", "client-alice.key", "client-alice.p12"):
        assert (folder / name).stat().st_mode & 0o077 == 0, name


def test_nothing_is_overwritten_and_bad_hosts_are_refused(tmp_path, capsys) -> None:
    folder = tmp_path / "certs"
    assert main(["dev-certs", str(folder), "--host", "localhost"]) == 0
    before = (folder / "keystore.p12").read_bytes()
    assert main(["dev-certs", str(folder), "--host", "localhost"]) == 2
    assert "keystore.p12, keystore.pw, truststore.pem already exist; nothing written" in capsys.readouterr().err
    assert (folder / "keystore.p12").read_bytes() == before
    assert main(["dev-certs", str(tmp_path / "x"), "--host", "not a host"]) == 2
    assert "--host: 'not a host' is not a host name" in capsys.readouterr().err
    assert main(["dev-certs", str(tmp_path / "y")]) == 2
    assert "--host: name at least one host" in capsys.readouterr().err


async def test_hash_password_makes_what_the_file_module_checks(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("pa:ss wörd\n"))
    assert main(["hash-password", "--stdin"]) == 0
    stored = capsys.readouterr().out.strip()
    assert stored.startswith("$argon2id$")
    (tmp_path / "jaas-config.xml").write_text(
        f"<jaas-config><user><name>joe</name><password>{stored}</password><role-name>R</role-name></user></jaas-config>"
    )
    module = FileLoginModule({"file": "jaas-config.xml"}, "login-module[1]", tmp_path)
    from wsgate.security.challenges import Credentials

    def attempt(password: str) -> LoginAttempt:
        import base64

        return LoginAttempt(Credentials("basic", base64.b64encode(f"joe:{password}".encode()).decode()), "192.0.2.1")

    assert type(await module.login(attempt("pa:ss wörd"))).__name__ == "Succeeded"
    assert type(await module.login(attempt("wrong"))).__name__ == "Failed"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["hash-password", "--stdin"]) == 2  # an empty password is never hashed


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("wsgate 0.")


async def test_the_readme_tls_quick_start_works_as_written(start_gateway, tmp_path, capsys, monkeypatch) -> None:
    import asyncio
    import re
    import shlex

    from wsgate.client.cli import main as client

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## TLS quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    make = shlex.split(commands[0].strip())
    assert make[0] == ".venv/bin/wsgate"
    assert main(make[1:]) == 0
    text = re.findall(r"```yaml\n(.*?)```", section, re.S)[0].replace(":8443/", ":0/")
    gateway = await start_gateway(text, name="mygateway/gateway.yaml")
    port = gateway.port_of("echo")
    capsys.readouterr()
    talk = shlex.split(" ".join(line.rstrip("\\") for line in commands[1].strip().splitlines()[1:]))
    assert talk[0] == ".venv/bin/wsgate-client"
    argv = [arg.replace(":8443/", f":{port}/") for arg in talk[1:]]
    assert await asyncio.to_thread(client, argv) == 0
    assert "hello" in capsys.readouterr().out


def test_next_hints_name_the_command_as_it_was_typed(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", [".venv/bin/wsgate", "default-config", str(tmp_path / "mine")])
    assert main(["default-config", str(tmp_path / "mine")]) == 0
    assert "next: .venv/bin/wsgate run " in capsys.readouterr().out
