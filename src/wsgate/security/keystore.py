"""Keystores and truststores → key entries and CA certificates, in memory.

JKS and JCEKS are read with pyjks, PKCS#12 and PEM with cryptography. Private
keys never touch the disk: ``tls.py`` hands them to OpenSSL through a memfd.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import jks
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from ..config.model import Store
from ..errors import TlsSetupError

_PEM = serialization.Encoding.PEM
_JKS_MAGIC = b"\xfe\xed\xfe\xed"
_JCEKS_MAGIC = b"\xce\xce\xce\xce"


@dataclass(frozen=True)
class KeyEntry:
    """A private key with its certificate chain, as PEM, and the names it serves."""

    alias: str
    key_pem: bytes = field(repr=False)
    chain_pem: bytes
    names: frozenset[str]  # DNS names (lower case, may start with "*.") and IP addresses

    def serves(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if host in self.names:
            return True
        _, _, parent = host.partition(".")
        return bool(parent) and f"*.{parent}" in self.names


@dataclass(frozen=True)
class KeyMaterial:
    keys: tuple[KeyEntry, ...]
    trusted_pem: bytes  # trusted certificate entries of the store, concatenated

    def key(self, alias: str) -> KeyEntry | None:
        for entry in self.keys:
            if entry.alias.lower() == alias.lower():
                return entry
        return None


def load_store(store: Store) -> KeyMaterial:
    """Read any supported store; errors name the element and say what to check."""
    try:
        data = store.file.read_bytes()
    except OSError as exc:
        raise TlsSetupError(f"{store.path}/file", f"cannot read {str(store.file)!r}: {exc.strerror}") from None
    kind = store.type or _detect(data)
    try:
        if kind in ("JKS", "JCEKS"):
            return _load_jks(data, store)
        if kind == "PKCS12":
            return _load_pkcs12(data, store)
        return _load_pem(data, store)
    except TlsSetupError:
        raise
    except Exception as exc:  # the libraries raise many types for a wrong password or a corrupt file
        hint = "check password-file and type" if kind != "PEM" else "check the PEM blocks"
        raise TlsSetupError(store.path, f"cannot load {kind} store {str(store.file)!r} ({hint}): {exc}") from None


def _detect(data: bytes) -> str:
    if data.startswith(_JKS_MAGIC):
        return "JKS"
    if data.startswith(_JCEKS_MAGIC):
        return "JCEKS"
    if b"-----BEGIN" in data[:4096]:
        return "PEM"
    return "PKCS12"


@contextmanager
def _old_certificates_tolerated() -> Iterator[None]:
    """Kaazing's truststore.db is a copy of a JDK's cacerts, whose old public CAs include certificates with a
    serial number of zero or below. cryptography parses them but warns (CryptographyDeprecationWarning, printed
    with its own source path) once per certificate, at every start, about CAs the operator never chose; only
    that category is silenced, only while a JKS/JCEKS store is parsed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
        yield


def _load_jks(data: bytes, store: Store) -> KeyMaterial:
    if store.password is None:
        raise TlsSetupError(f"{store.path}/password-file", "a JKS/JCEKS store needs a password-file")
    with _old_certificates_tolerated():
        keystore = jks.KeyStore.loads(data, store.password, try_decrypt_keys=True)
        keys = []
        for alias, entry in keystore.private_keys.items():
            if not entry.is_decrypted():
                entry.decrypt(store.password)
            key = serialization.load_der_private_key(entry.pkey_pkcs8, None)
            chain = [x509.load_der_x509_certificate(der) for _, der in entry.cert_chain]
            keys.append(_entry(alias, key, chain))
        trusted = [x509.load_der_x509_certificate(c.cert) for c in keystore.certs.values()]
        return KeyMaterial(tuple(keys), b"".join(c.public_bytes(_PEM) for c in trusted))


def _load_pkcs12(data: bytes, store: Store) -> KeyMaterial:
    password = store.password.encode() if store.password is not None else None
    bundle = pkcs12.load_pkcs12(data, password)
    keys = []
    if bundle.key is not None and bundle.cert is not None:
        chain = [bundle.cert.certificate] + [c.certificate for c in bundle.additional_certs]
        alias = (bundle.cert.friendly_name or b"1").decode(errors="replace")
        keys.append(_entry(alias, bundle.key, chain))
        trusted: list[x509.Certificate] = []
    else:
        trusted = [c.certificate for c in bundle.additional_certs]
    return KeyMaterial(tuple(keys), b"".join(c.public_bytes(_PEM) for c in trusted))


def _load_pem(data: bytes, store: Store) -> KeyMaterial:
    """Keys each followed by their chain; certificates before any key are trusted CAs."""
    password = store.password.encode() if store.password else None
    keys: list[KeyEntry] = []
    trusted: list[x509.Certificate] = []
    chain: list[x509.Certificate] = []
    current_key = None
    for block in _pem_blocks(data):
        if b"PRIVATE KEY" in block.split(b"\n", 1)[0]:
            if current_key is not None:
                keys.append(_entry(str(len(keys) + 1), current_key, chain))
            current_key, chain = serialization.load_pem_private_key(block, password), []
        elif b"CERTIFICATE" in block.split(b"\n", 1)[0]:
            (chain if current_key is not None else trusted).append(x509.load_pem_x509_certificate(block))
    if current_key is not None:
        keys.append(_entry(str(len(keys) + 1), current_key, chain))
    if any(not entry.chain_pem for entry in keys):
        raise TlsSetupError(f"{store.path}/file", "a PEM private key must be followed by its certificate")
    return KeyMaterial(tuple(keys), b"".join(c.public_bytes(_PEM) for c in trusted))


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks, current = [], []
    for line in data.splitlines(keepends=True):
        if line.startswith(b"-----BEGIN"):
            current = [line]
        elif current:
            current.append(line)
            if line.startswith(b"-----END"):
                blocks.append(b"".join(current))
                current = []
    return blocks


def _entry(alias: str, key: object, chain: list[x509.Certificate]) -> KeyEntry:
    key_pem = key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())  # type: ignore[attr-defined]
    chain_pem = b"".join(c.public_bytes(_PEM) for c in chain)
    names = certificate_names(chain[0]) if chain else frozenset()
    return KeyEntry(alias, key_pem, chain_pem, names)


def certificate_names(cert: x509.Certificate) -> frozenset[str]:
    """DNS and IP subject alternative names, else the subject CN (legacy certificates)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
        names |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        if names:
            return frozenset(names)
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return frozenset(str(a.value).lower() for a in cns)
