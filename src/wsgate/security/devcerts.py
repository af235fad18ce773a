"""Development TLS material: a private CA, a server keystore and client certificates (``wsgate dev-certs``).

For trying TLS, mutual TLS and the examples on a laptop or a test rig, never for production: every
certificate says so in its subject, the CA is one nobody else trusts, and its key sits in a file next
to the stores. Made with cryptography (PKCS#12, PEM) and pyjks (JKS); nothing here runs in the gateway.

One folder holds it all, and a second run adds what is missing to the same CA (another client, say)
instead of minting a CA the earlier stores do not chain to. Nothing that exists is overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jks
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError

LABEL = "wsgate development only"
CA_CERT = "dev-ca.pem"
CA_KEY = "dev-ca.key"
FORMATS = ("pkcs12", "jks", "pem")
_PRIVATE = 0o600


class DevCertsError(ConfigError):
    """What ``dev-certs`` cannot do (a file in the way, a host name it cannot put in a certificate)."""


@dataclass
class Made:
    """What a run wrote (and what it found and reused), for the summary it prints."""

    folder: Path
    written: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    keystore: str = ""
    password_file: str = ""


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make(
    folder: Path,
    hosts: Sequence[str],
    clients: Sequence[str] = (),
    store_format: str = "pkcs12",
    days: int = 825,
) -> Made:
    """The CA (made or reused), a server keystore for ``hosts``, the truststore and ``clients``' certificates."""
    if not hosts:
        raise DevCertsError("--host", "name at least one host name or address the gateway is reached by")
    if store_format not in FORMATS:
        raise DevCertsError("--format", f"{store_format!r} is not one of {', '.join(FORMATS)}")
    names = [_name(host) for host in hosts]
    folder.mkdir(parents=True, exist_ok=True)
    made = Made(folder)
    planned = _server_files(store_format) + ["truststore.pem"] + [f for c in clients for f in _client_files(c)]
    if clients and store_format == "pem":
        planned.append("clients.pw")  # the client bundles' password (the other formats have keystore.pw)
    in_the_way = [name for name in planned if (folder / name).exists()]
    if in_the_way:
        raise DevCertsError(
            str(folder), f"{', '.join(in_the_way)} already exist; nothing written (choose another folder)"
        )
    ca = _authority(folder, made, days)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(ca, key, hosts[0], days, server_names=names)
    password = secrets.token_urlsafe(18)
    _write_server(folder, made, store_format, key, cert, ca.cert, password)
    _write(folder / "truststore.pem", ca.cert.public_bytes(serialization.Encoding.PEM), made)
    for client in clients:
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_cert = _issue(ca, client_key, client, days, client=True)
        _write_client(folder, made, client, client_key, client_cert, ca.cert, password)
    if clients and store_format == "pem":
        made.password_file = "clients.pw"
        _write(folder / "clients.pw", (password + "\n").encode(), made, private=True)
    return made


def _server_files(store_format: str) -> list[str]:
    if store_format == "pem":
        return ["keystore.pem"]
    return ["keystore.p12" if store_format == "pkcs12" else "keystore.jks", "keystore.pw"]


def _client_files(name: str) -> list[str]:
    safe = _file_safe(name)
    return [f"client-{safe}.pem", f"client-{safe}.key", f"client-{safe}.p12"]


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _name(host: str) -> x509.GeneralName:
    """A subjectAltName for ``host``: an IP address entry for addresses, a DNS name otherwise."""
    host = host.strip().strip("[]")
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() or c in "/:@" for c in host):
        raise DevCertsError("--host", f"{host!r} is not a host name or an IP address")
    try:
        return x509.DNSName(host.encode("idna").decode("ascii") if not host.isascii() else host.lower())
    except UnicodeError:
        raise DevCertsError("--host", f"{host!r} is not a host name or an IP address") from None


def _authority(folder: Path, made: Made, days: int) -> Authority:
    """The folder's CA if it has one (so earlier stores keep chaining to it), else a new one."""
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise DevCertsError(str(key_path), "is not the EC key dev-certs makes; use another folder")
        made.reused += [CA_CERT, CA_KEY]
        return Authority(cert, key)
    if cert_path.exists() or key_path.exists():
        raise DevCertsError(str(folder), f"has one of {CA_CERT} and {CA_KEY} without the other; use another folder")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, LABEL),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{LABEL}: CA {secrets.token_hex(4)}"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), made, private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), made)
    return Authority(cert, key)


def _issue(
    ca: Authority,
    key: ec.EllipticCurvePrivateKey,
    name: str,
    days: int,
    server_names: Sequence[x509.GeneralName] = (),
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, LABEL), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(server_names)), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def _write_server(
    folder: Path,
    made: Made,
    store_format: str,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    ca: x509.Certificate,
    password: str,
) -> None:
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    if store_format == "pem":
        made.keystore = "keystore.pem"
        _write(folder / "keystore.pem", _key_pem(key) + chain, made, private=True)
        return
    if store_format == "pkcs12":
        made.keystore = "keystore.p12"
        data = pkcs12.serialize_key_and_certificates(
            b"gateway", key, cert, [ca], serialization.BestAvailableEncryption(password.encode())
        )
    else:
        made.keystore = "keystore.jks"
        der_key = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        entry = jks.PrivateKeyEntry.new(
            "gateway",
            [cert.public_bytes(serialization.Encoding.DER), ca.public_bytes(serialization.Encoding.DER)],
            der_key,
            "pkcs8",
        )
        data = jks.KeyStore.new("jks", [entry]).saves(password)
    _write(folder / made.keystore, data, made, private=True)
    made.password_file = "keystore.pw"
    _write(folder / "keystore.pw", (password + "\n").encode(), made, private=True)


def _write_client(
    folder: Path,
    made: Made,
    name: str,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    ca: x509.Certificate,
    password: str,
) -> None:
    """PEM certificate and key (``wsgate-client --cert/--key``, curl), and a PKCS#12 for browsers."""
    safe = _file_safe(name)
    _write(folder / f"client-{safe}.pem", cert.public_bytes(serialization.Encoding.PEM), made)
    _write(folder / f"client-{safe}.key", _key_pem(key), made, private=True)
    bundle = pkcs12.serialize_key_and_certificates(
        name.encode(), key, cert, [ca], serialization.BestAvailableEncryption(password.encode())
    )
    _write(folder / f"client-{safe}.p12", bundle, made, private=True)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, made: Made, private: bool = False) -> None:
    """Create ``path`` (never overwrite), readable by its owner only when ``private``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    made.written.append(path.name)
