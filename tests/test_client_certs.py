"""The certificate login module against hostile subjects: real mTLS handshakes through the gateway
with certificates the trusted test CA issued, whose names try to smuggle a CN, an OU or an order."""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .conftest import SECURITY_PEM, client_ssl

CN, OU, ORG = NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.ORGANIZATION_NAME
Rdns = list[list[tuple[x509.ObjectIdentifier, str]]]

CONFIG = (
    """
service:
  - name: desk
    accept: wss://localhost:0/desk
    type: echo
    accept-options:
      ssl.verify-client: optional
    realm-name: by-cn
    authorization-constraint:
      require-role: TRADER
  - name: any
    accept: wss://localhost:0/any
    type: echo
    accept-options:
      ssl.verify-client: optional
    realm-name: by-cn
    authorization-constraint:
      require-role: USER
  - name: acme
    accept: wss://localhost:0/acme
    type: echo
    accept-options:
      ssl.verify-client: optional
    realm-name: by-cn
    authorization-constraint:
      require-role: ACME-TRADER
  - name: whole
    accept: wss://localhost:0/whole
    type: echo
    accept-options:
      ssl.verify-client: optional
    realm-name: by-subject
    authorization-constraint:
      require-role: USER
  - name: mail
    accept: wss://localhost:0/mail
    type: echo
    accept-options:
      ssl.verify-client: optional
    realm-name: by-email
    authorization-constraint:
      require-role: USER
"""
    + SECURITY_PEM
    + """
  realm:
    - name: by-cn
      authentication:
        login-modules:
          login-module:
            type: certificate
            options:
              roles: USER
              role.TRADER: "OU=Trading"
              role.ACME-TRADER: "OU=Trading,O=Acme"
    - name: by-subject
      authentication:
        login-modules:
          login-module:
            type: certificate
            options:
              principal: subject
              roles: USER
    - name: by-email
      authentication:
        login-modules:
          login-module:
            type: certificate
            options:
              principal: san-email
              roles: USER
"""
)


def issue(ca: trustme.CA, folder: Path, rdns: Rdns, emails: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A client certificate with exactly these RDNs (first = most significant), signed by the test CA."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(o, v) for o, v in r]) for r in rdns])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if emails:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(e) for e in emails]), False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    path = folder / f"client-{cert.serial_number}.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = client_ssl(ca)
    context.load_cert_chain(str(path))
    return context


@pytest.fixture
async def gateway(start_gateway, pem_stores):  # type: ignore[no-untyped-def]
    return await start_gateway(CONFIG)


async def login(http, gw, service: str, context: ssl.SSLContext, caplog) -> tuple[int, str | None]:  # type: ignore[no-untyped-def]
    """(status, the user the audit log says was authenticated)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        try:
            ws = await http.ws_connect(f"wss://localhost:{gw.port_of(service)}/{service}", ssl=context)
        except aiohttp.WSServerHandshakeError as error:
            return error.status, None
        await ws.close()
    users = [
        r.msg["user"] for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("decision") == "authenticated"
    ]
    return 101, users[-1]


async def test_a_comma_in_the_cn_does_not_make_an_ou(gateway, http, ca, tmp_path, caplog):
    mallory = issue(ca, tmp_path, [[(OU, "Back Office")], [(CN, "mallory,OU=Trading")]])
    assert await login(http, gateway, "desk", mallory, caplog) == (403, None)
    assert await login(http, gateway, "any", mallory, caplog) == (101, "mallory,OU=Trading")


async def test_a_cn_with_a_comma_is_the_whole_principal(gateway, http, ca, tmp_path, caplog):
    smith = issue(ca, tmp_path, [[(ORG, "Acme")], [(CN, "Smith, John")]])
    assert await login(http, gateway, "any", smith, caplog) == (101, "Smith, John")
    assert await login(http, gateway, "whole", smith, caplog) == (101, "CN=Smith\\, John,O=Acme")


@pytest.mark.parametrize(
    "rdns",
    [
        [[(CN, "admin")], [(CN, "alice")]],
        [[(CN, "alice")], [(CN, "admin")]],
        [[(CN, "alice"), (CN, "admin")]],  # both in one multi-valued RDN
    ],
    ids=["admin-first", "admin-last", "one-rdn"],
)
async def test_several_cns_are_refused_not_first_wins(gateway, http, ca, tmp_path, caplog, rdns):
    assert await login(http, gateway, "any", issue(ca, tmp_path, rdns), caplog) == (403, None)


async def test_a_cn_smuggled_into_another_attribute_is_no_cn(gateway, http, ca, tmp_path, caplog):
    smuggler = issue(ca, tmp_path, [[(ORG, "x,CN=admin")], [(OU, "OU=Trading")]])
    assert await login(http, gateway, "any", smuggler, caplog) == (403, None)
    assert await login(http, gateway, "whole", smuggler, caplog) == (
        101,
        "OU=OU=Trading,O=x\\,CN=admin",
    )  # RFC 4514: "=" needs no escape


async def test_role_rules_match_whole_attribute_values(gateway, http, ca, tmp_path, caplog):
    trader = issue(ca, tmp_path, [[(ORG, "Acme")], [(OU, "Trading")], [(CN, "alice")]])
    desk_only = issue(ca, tmp_path, [[(ORG, "Acme Ltd")], [(OU, "Trading")], [(CN, "carol")]])
    near_miss = issue(ca, tmp_path, [[(ORG, "Acme")], [(OU, "Trading Desk")], [(CN, "bob")]])
    assert await login(http, gateway, "desk", trader, caplog) == (101, "alice")
    assert await login(http, gateway, "acme", trader, caplog) == (101, "alice")
    assert await login(http, gateway, "desk", desk_only, caplog) == (101, "carol")
    assert await login(http, gateway, "acme", desk_only, caplog) == (403, None)
    assert await login(http, gateway, "desk", near_miss, caplog) == (403, None)


async def test_several_san_emails_are_refused(gateway, http, ca, tmp_path, caplog):
    one = issue(ca, tmp_path, [[(CN, "alice")]], emails=("alice@example.test",))
    two = issue(ca, tmp_path, [[(CN, "alice")]], emails=("alice@example.test", "admin@example.test"))
    assert await login(http, gateway, "mail", one, caplog) == (101, "alice@example.test")
    assert await login(http, gateway, "mail", two, caplog) == (403, None)
