"""Real TLS on loopback: keystores of every type, SNI, mutual TLS."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import warnings
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from wsgate.config.model import Store
from wsgate.errors import ConfigError, TlsSetupError
from wsgate.security.keystore import load_store

from .conftest import SECURITY_PEM, client_ssl

KEYTOOL = shutil.which("keytool")
needs_keytool = pytest.mark.skipif(
    KEYTOOL is None and not __import__("os").environ.get("CI"), reason="keytool not installed"
)


def write_pkcs12(path: Path, cert: trustme.LeafCert, password: str, alias: str = "gateway") -> None:
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    chain = [x509.load_pem_x509_certificate(b.bytes()) for b in cert.cert_chain_pems]
    data = pkcs12.serialize_key_and_certificates(
        alias.encode(), key, chain[0], chain[1:], serialization.BestAvailableEncryption(password.encode())
    )
    path.write_bytes(data)


def keytool_store(
    tmp_path: Path, store_type: str, certs: dict[str, trustme.LeafCert], password: str = "storepass1"
) -> Path:
    """Make a JKS/JCEKS keystore with the real keytool, importing each key under its alias."""
    dest = tmp_path / f"keystore.{store_type.lower()}"
    for alias, cert in certs.items():
        source = tmp_path / f"{alias}.p12"
        write_pkcs12(source, cert, password, alias)
        subprocess.run(
            [
                KEYTOOL or "keytool",
                "-importkeystore",
                "-noprompt",
                "-srckeystore",
                str(source),
                "-srcstoretype",
                "PKCS12",
                "-srcstorepass",
                password,
                "-destkeystore",
                str(dest),
                "-deststoretype",
                store_type,
                "-deststorepass",
                password,
                "-destkeypass",
                password,
                "-srcalias",
                alias,
                "-destalias",
                alias,
            ],
            check=True,
            capture_output=True,
        )
    (tmp_path / "keystore.pw").write_text(password + "\n")
    return dest


def wss_config(store_file: str, store_type: str, extra: str = "", verify: str = "none") -> str:
    return f"""
service:
  - name: echo
    accept: wss://localhost:0/echo
    type: echo
    accept-options:
      ssl.verify-client: {verify}
{extra}
security:
  keystore:
    type: {store_type}
    file: {store_file}
    password-file: keystore.pw
  truststore:
    type: PEM
    file: truststore.pem
"""


async def echo_once(
    http: aiohttp.ClientSession, url: str, context: ssl.SSLContext, server_hostname: str | None = None
) -> str:
    async with http.ws_connect(url, ssl=context, server_hostname=server_hostname) as ws:
        await ws.send_str("secure")
        return (await ws.receive()).data


@pytest.fixture
def truststore(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "truststore.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@needs_keytool
@pytest.mark.parametrize("store_type", ["JKS", "JCEKS"])
async def test_wss_echo_with_keytool_keystore(tmp_path, start_gateway, http, ca, server_cert, truststore, store_type):
    keytool_store(tmp_path, store_type, {"gateway": server_cert})
    gw = await start_gateway(wss_config(f"keystore.{store_type.lower()}", store_type))
    assert await echo_once(http, f"wss://localhost:{gw.port_of('echo')}/echo", client_ssl(ca)) == "secure"


async def test_wss_echo_with_pkcs12_keystore(tmp_path, start_gateway, http, ca, server_cert, truststore):
    write_pkcs12(tmp_path / "keystore.p12", server_cert, "p12pass")
    (tmp_path / "keystore.pw").write_text("p12pass")
    gw = await start_gateway(wss_config("keystore.p12", "PKCS12"))
    assert await echo_once(http, f"wss://localhost:{gw.port_of('echo')}/echo", client_ssl(ca)) == "secure"


async def test_wss_refused_by_client_that_does_not_trust_the_ca(tmp_path, start_gateway, http, other_ca, pem_stores):
    gw = await start_gateway(wss_config("keystore.pem", "PEM").replace("    password-file: keystore.pw\n", "", 1))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await echo_once(http, f"wss://localhost:{gw.port_of('echo')}/echo", client_ssl(other_ca))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_tls_below_1_2_is_refused(tmp_path, start_gateway, ca, pem_stores):
    import asyncio

    gw = await start_gateway(wss_config("keystore.pem", "PEM").replace("    password-file: keystore.pw\n", "", 1))
    listener = next(iter(gw.listeners.values()))
    assert listener.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    context = client_ssl(ca)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection("localhost", gw.port_of("echo"), ssl=context)


@pytest.mark.parametrize("store_type", ["PEM", pytest.param("JKS", marks=needs_keytool)])
async def test_sni_selects_certificate_by_host_name(tmp_path, start_gateway, http, ca, truststore, store_type):
    first = ca.issue_cert("localhost", "127.0.0.1")
    second = ca.issue_cert("other.test")
    if store_type == "PEM":
        (tmp_path / "keystore.pem").write_bytes(
            first.private_key_and_cert_chain_pem.bytes() + second.private_key_and_cert_chain_pem.bytes()
        )
        (tmp_path / "keystore.pw").write_text("")
        store = "keystore.pem"
    else:
        keytool_store(tmp_path, "JKS", {"first": first, "second": second})
        store = "keystore.jks"
    config = wss_config(store, store_type).replace(
        "    password-file: keystore.pw\n", "", 1 if store_type == "PEM" else 0
    )
    config = config.replace(
        "accept: wss://localhost:0/echo", "accept: [wss://localhost:0/echo, wss://other.test:0/echo]"
    )
    config = config.replace("ssl.verify-client: none", "ssl.verify-client: none\n      wss.bind: 127.0.0.1:0")
    gw = await start_gateway(config)
    port = gw.port_of("echo")
    # Default certificate (no SNI match needed): localhost.
    assert await echo_once(http, f"wss://localhost:{port}/echo", client_ssl(ca)) == "secure"
    # SNI other.test: connect to 127.0.0.1 but ask for other.test; verification succeeds only with the second cert.
    resolver = aiohttp.resolver.ThreadedResolver()
    connector = aiohttp.TCPConnector(resolver=_StaticResolver(resolver, {"other.test": "127.0.0.1"}))
    async with aiohttp.ClientSession(connector=connector) as session:
        assert await echo_once(session, f"wss://other.test:{port}/echo", client_ssl(ca)) == "secure"


class _StaticResolver(aiohttp.abc.AbstractResolver):
    def __init__(self, fallback: aiohttp.abc.AbstractResolver, names: dict[str, str]) -> None:
        self.fallback = fallback
        self.names = names

    async def resolve(self, host, port=0, family=0):  # type: ignore[no-untyped-def]
        if host in self.names:
            return [{"hostname": host, "host": self.names[host], "port": port, "family": 2, "proto": 0, "flags": 0}]
        return await self.fallback.resolve(host, port, family)

    async def close(self) -> None:
        await self.fallback.close()


# -- mutual TLS ------------------------------------------------------------------------------


@pytest.fixture
async def mtls_gateway(tmp_path, start_gateway, pem_stores):
    async def start(verify: str):
        config = wss_config("keystore.pem", "PEM", verify=verify).replace("    password-file: keystore.pw\n", "", 1)
        return await start_gateway(config)

    return start


async def test_mtls_required_accepts_client_with_certificate(mtls_gateway, http, ca):
    gw = await mtls_gateway("required")
    client = ca.issue_cert("client@example.test")
    assert await echo_once(http, f"wss://localhost:{gw.port_of('echo')}/echo", client_ssl(ca, client)) == "secure"


async def test_mtls_required_rejects_client_without_certificate(mtls_gateway, http, ca):
    gw = await mtls_gateway("required")
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await echo_once(http, f"wss://localhost:{gw.port_of('echo')}/echo", client_ssl(ca))


async def test_mtls_required_rejects_certificate_from_another_ca(mtls_gateway, http, ca, other_ca):
    gw = await mtls_gateway("required")
    stranger = other_ca.issue_cert("mallory@example.test")
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await echo_once(http, f"wss://localhost:{gw.port_of('echo')}/echo", client_ssl(ca, stranger))


async def test_mtls_optional_accepts_both_and_exposes_identity(mtls_gateway, http, ca, other_ca):
    gw = await mtls_gateway("optional")
    url = f"wss://localhost:{gw.port_of('echo')}/echo"
    seen = []
    service = gw.services["echo"]
    original = service.serve

    async def spy(session, channel):
        seen.append(session.peer)
        await original(session, channel)

    service.serve = spy  # type: ignore[method-assign]
    assert await echo_once(http, url, client_ssl(ca)) == "secure"
    assert await echo_once(http, url, client_ssl(ca, ca.issue_cert("client@example.test"))) == "secure"
    assert seen[0] is None
    assert seen[1] is not None and "client@example.test" in seen[1].emails + seen[1].dns_names + (seen[1].subject,)
    assert len(seen[1].fingerprint_sha256) == 64
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):  # optional still verifies what is sent
        await echo_once(http, url, client_ssl(ca, other_ca.issue_cert("mallory@example.test")))


SHARED_PORT = """
service:
  - name: open
    accept: wss://localhost:0/open
    type: echo
  - name: locked
    accept: wss://localhost:0/locked
    type: echo
    accept-options:
      ssl.verify-client: required
"""


async def test_required_and_none_services_can_share_a_port(tmp_path, start_gateway, http, ca, pem_stores):
    gw = await start_gateway(SHARED_PORT + SECURITY_PEM)
    port = gw.port_of("open")
    assert port == gw.port_of("locked")
    assert await echo_once(http, f"wss://localhost:{port}/open", client_ssl(ca)) == "secure"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await echo_once(http, f"wss://localhost:{port}/locked", client_ssl(ca))
    assert refused.value.status == 403
    assert (
        await echo_once(http, f"wss://localhost:{port}/locked", client_ssl(ca, ca.issue_cert("c@example.test")))
        == "secure"
    )


# -- store loading errors --------------------------------------------------------------------


def test_wrong_keystore_password_names_the_element(tmp_path, server_cert):
    write_pkcs12(tmp_path / "k.p12", server_cert, "right")
    with pytest.raises(TlsSetupError) as error:
        load_store(Store("PKCS12", tmp_path / "k.p12", "wrong", "security/keystore"))
    assert str(error.value).startswith("security/keystore: cannot load PKCS12 store")
    assert "password-file" in str(error.value)


@needs_keytool
def test_wrong_jks_password_names_the_element(tmp_path, server_cert):
    path = keytool_store(tmp_path, "JKS", {"gateway": server_cert})
    with pytest.raises(TlsSetupError, match="^security/keystore: cannot load JKS store"):
        load_store(Store(None, path, "wrong", "security/keystore"))


@needs_keytool
def test_store_type_is_detected_when_omitted(tmp_path, server_cert):
    path = keytool_store(tmp_path, "JCEKS", {"gateway": server_cert})
    material = load_store(Store(None, path, "storepass1", "security/keystore"))
    assert [k.alias for k in material.keys] == ["gateway"]
    assert material.keys[0].serves("localhost") and material.keys[0].serves("gw.test")


def test_missing_keystore_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^security/keystore/file: cannot read"):
        load_store(Store("PEM", tmp_path / "absent.pem", None, "security/keystore"))


def test_verify_client_without_truststore_is_a_config_error(tmp_path, pem_stores):
    from wsgate.catalog import load_config
    from wsgate.gateway import Gateway

    path = tmp_path / "g.yaml"
    path.write_text(
        wss_config("keystore.pem", "PEM", verify="required")
        .split("  truststore:")[0]
        .replace("    password-file: keystore.pw\n", "")
    )
    with pytest.raises(
        ConfigError, match=r"service\[echo\]/accept-options/ssl.verify-client: needs security/truststore"
    ):
        Gateway(load_config(path))


@needs_keytool
async def test_mtls_with_jks_keystore_and_jks_truststore(tmp_path, start_gateway, http, ca, server_cert):
    """The Kaazing layout end to end: JKS keystore, JKS truststore (default password changeit)."""
    keytool_store(tmp_path, "JKS", {"gateway": server_cert})
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    subprocess.run(
        [
            KEYTOOL or "keytool",
            "-importcert",
            "-noprompt",
            "-alias",
            "clients",
            "-file",
            str(tmp_path / "ca.pem"),
            "-keystore",
            str(tmp_path / "truststore.db"),
            "-storetype",
            "JKS",
            "-storepass",
            "changeit",
        ],
        check=True,
        capture_output=True,
    )
    config = wss_config("keystore.jks", "JKS", verify="required").replace(
        "  truststore:\n    type: PEM\n    file: truststore.pem\n", "  truststore:\n    file: truststore.db\n"
    )
    gw = await start_gateway(config)
    url = f"wss://localhost:{gw.port_of('echo')}/echo"
    assert await echo_once(http, url, client_ssl(ca, ca.issue_cert("client@example.test"))) == "secure"
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await echo_once(http, url, client_ssl(ca))


async def test_protocols_option_limits_tls_versions(tmp_path, start_gateway, http, ca, pem_stores):
    config = wss_config("keystore.pem", "PEM").replace("    password-file: keystore.pw\n", "", 1)
    config = config.replace("ssl.verify-client: none", "ssl.verify-client: none\n      ssl.protocols: TLSv1.3")
    gw = await start_gateway(config)
    url = f"wss://localhost:{gw.port_of('echo')}/echo"
    tls12 = client_ssl(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await echo_once(http, url, tls12)
    assert await echo_once(http, url, client_ssl(ca)) == "secure"


# -- failed handshakes: audited, counted, never an ERROR with a traceback ---------------------


def tls_failures(caplog) -> list[dict]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "tls handshake failed"]


async def next_tls_failure(caplog, seen: int) -> dict:
    import asyncio

    for _ in range(100):
        failures = tls_failures(caplog)
        if len(failures) > seen:
            assert len(failures) == seen + 1, failures
            return failures[-1]
        await asyncio.sleep(0.02)
    raise AssertionError("no 'tls handshake failed' line")


def assert_no_errors_or_tracebacks(caplog) -> None:
    """Nothing the gateway logged is louder than info; the test's own TLS 1.1 client may complain."""
    loud = [
        r
        for r in caplog.records
        if (r.levelno >= logging.WARNING or r.exc_info) and "SSLTransport_Socket client" not in r.getMessage()
    ]
    assert not loud, [(r.name, r.levelname, r.getMessage()[:200]) for r in loud]
    assert "Traceback" not in caplog.text and "Logging error" not in caplog.text


async def test_failed_tls_handshakes_are_audit_lines_with_a_reason(mtls_gateway, start_gateway, ca, other_ca, caplog):
    import asyncio

    caplog.set_level(logging.DEBUG)
    gw = await mtls_gateway("required")
    open_gw = await start_gateway(
        wss_config("keystore.pem", "PEM", verify="none").replace("    password-file: keystore.pw\n", "", 1),
        name="open.yaml",
    )
    locked, port = gw.port_of("echo"), open_gw.port_of("echo")

    async def attempt(target: int, context: ssl.SSLContext | None, payload: bytes = b"") -> None:
        try:
            reader, writer = await asyncio.open_connection("localhost", target, ssl=context)
            if payload:
                writer.write(payload)
                await asyncio.wait_for(reader.read(), 2)
            writer.close()
        except (ssl.SSLError, ConnectionError):
            pass

    old_tls = client_ssl(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old_tls.minimum_version, old_tls.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    old_tls.set_ciphers("ALL:@SECLEVEL=0")
    cases = [
        (port, None, b"", "closed before handshake"),  # a load balancer's health check
        (port, None, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "protocol mismatch"),  # plain HTTP on TLS
        (port, old_tls, b"", "protocol mismatch"),  # TLS 1.1
        (locked, client_ssl(ca), b"GET /echo HTTP/1.1\r\n\r\n", "no client certificate"),
        (
            locked,
            client_ssl(ca, other_ca.issue_cert("mallory@example.test")),
            b"GET /echo HTTP/1.1\r\n\r\n",
            "untrusted client certificate",
        ),
    ]
    for seen, (target, context, payload, reason) in enumerate(cases):
        await attempt(target, context, payload)
        line = await next_tls_failure(caplog, seen)
        assert line["reason"] == reason and line["remote"] == "127.0.0.1" and line["level"] == "info", line
        assert line["logger"] == "wsgate.audit" and line["listener"].startswith("tls://localhost:")
    assert_no_errors_or_tracebacks(caplog)
    metrics = gw.runtime.metrics.exposition().decode() + open_gw.runtime.metrics.exposition().decode()
    assert 'wsgate_tls_handshake_failures_total{reason="closed before handshake"} 1.0' in metrics
    assert 'wsgate_tls_handshake_failures_total{reason="protocol mismatch"} 2.0' in metrics
    assert 'wsgate_tls_handshake_failures_total{reason="no client certificate"} 1.0' in metrics
    assert 'wsgate_tls_handshake_failures_total{reason="untrusted client certificate"} 1.0' in metrics
    assert "handshake-timeout" not in metrics  # a failed handshake is not also counted as a slow client


async def test_a_certificate_required_403_on_a_shared_port_is_audited(start_gateway, http, ca, pem_stores, caplog):
    caplog.set_level(logging.INFO)
    gw = await start_gateway(SHARED_PORT + SECURITY_PEM)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await echo_once(http, f"wss://localhost:{gw.port_of('locked')}/locked", client_ssl(ca))
    line = await next_tls_failure(caplog, 0)
    assert line["reason"] == "no client certificate" and line["remote"] == "127.0.0.1"
    assert 'wsgate_tls_handshake_failures_total{reason="no client certificate"} 1.0' in (
        gw.runtime.metrics.exposition().decode()
    )


async def test_other_loop_errors_still_log_with_their_traceback(mtls_gateway, caplog):
    import asyncio

    await mtls_gateway("none")  # a TLS listener installs the handshake audit on the loop
    loop = asyncio.get_running_loop()
    try:
        raise RuntimeError("a real bug")
    except RuntimeError as exc:
        loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": exc})
    loop.call_exception_handler({"message": "SSL handshake failed", "exception": ConnectionResetError})  # not ours
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors[0].exc_info and "a real bug" in caplog.text and "Traceback" in caplog.text
    assert errors[1].exc_info and isinstance(errors[1].exc_info[1], ConnectionResetError)
    assert "Logging error" not in caplog.text


async def test_a_tls_handshake_that_never_comes_is_audited_as_a_timeout(start_gateway, pem_stores, caplog):
    import asyncio

    caplog.set_level(logging.INFO)
    config = wss_config("keystore.pem", "PEM").replace("    password-file: keystore.pw\n", "", 1)
    gw = await start_gateway("limits:\n  handshake-timeout: 500ms\n" + config)
    reader, writer = await asyncio.open_connection("localhost", gw.port_of("echo"))  # and no ClientHello
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()
    line = await next_tls_failure(caplog, 0)
    assert line["reason"] == "timeout"
    assert_no_errors_or_tracebacks(caplog)
