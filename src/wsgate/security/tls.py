"""TLS contexts: server side per listener (SNI, mTLS) and client side for back ends.

Policy only: contexts are built from the config and key material; the transport
wraps sockets with them. Defaults are Mozilla "intermediate": TLS 1.2+, AEAD ciphers.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..config.model import TlsOptions
from ..errors import TlsSetupError
from .keystore import KeyEntry, KeyMaterial

INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class PeerIdentity:
    """The verified client certificate of a connection, for later layers (login modules, logs).

    Names come from the certificate's DER parsed by ``cryptography``: ``name`` is the subject as
    attributes, for anything that decides (principals, roles); ``subject`` and ``issuer`` are
    RFC 4514 strings with every special character escaped (``CN=Smith\\, John,O=Acme``), for
    display and as an unambiguous principal. Never split a DN string to decide anything: a
    value may contain ``,`` or ``=``.
    """

    subject: str
    issuer: str
    dns_names: tuple[str, ...]
    emails: tuple[str, ...]
    fingerprint_sha256: str
    der: bytes
    not_after: float | None = None  # wall-clock seconds
    name: x509.Name = x509.Name([])  # the subject, parsed

    @classmethod
    def from_ssl_object(cls, ssl_object: Any) -> PeerIdentity | None:
        """Only certificates OpenSSL verified reach here: with CERT_NONE getpeercert() is empty."""
        if ssl_object is None:
            return None
        info = ssl_object.getpeercert()
        der = ssl_object.getpeercert(binary_form=True)
        if not info or not der:
            return None
        return cls.from_der(der)

    @classmethod
    def from_der(cls, der: bytes) -> PeerIdentity | None:
        """``None`` for a certificate ``cryptography`` cannot parse: no identity, never a guessed one."""
        try:
            cert = x509.load_der_x509_certificate(der)
            subject, issuer = cert.subject, cert.issuer
            try:
                alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                alt = x509.SubjectAlternativeName([])
            return cls(
                subject=subject.rfc4514_string(_NAME_OVERRIDES),
                issuer=issuer.rfc4514_string(_NAME_OVERRIDES),
                dns_names=tuple(alt.get_values_for_type(x509.DNSName)),
                emails=tuple(alt.get_values_for_type(x509.RFC822Name)),
                fingerprint_sha256=hashlib.sha256(der).hexdigest(),
                der=der,
                not_after=cert.not_valid_after_utc.timestamp(),
                name=subject,
            )
        except ValueError:
            return None


_NAME_OVERRIDES = {NameOID.EMAIL_ADDRESS: "emailAddress"}  # as OpenSSL and earlier wsgate versions print it


def _apply_options(context: ssl.SSLContext, options: TlsOptions, path: str) -> None:
    versions = [_VERSIONS[p] for p in options.protocols] or [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
    context.minimum_version = min(versions)
    context.maximum_version = max(versions)
    try:
        context.set_ciphers(options.ciphers or INTERMEDIATE_CIPHERS)
    except ssl.SSLError:
        raise TlsSetupError(
            f"{path}/ssl.ciphers",
            f"{options.ciphers!r} selects no cipher OpenSSL knows; use an OpenSSL cipher string such as ECDHE+AESGCM",
        ) from None
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def load_key(context: ssl.SSLContext, entry: KeyEntry) -> None:
    """Give OpenSSL the key and chain through an anonymous in-memory file."""
    fd = os.memfd_create(f"wsgate-key-{entry.alias}", os.MFD_CLOEXEC)
    try:
        os.write(fd, entry.key_pem + entry.chain_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def server_context(
    entry: KeyEntry, options: TlsOptions, verify_client: str, trusted_pem: bytes | None, path: str
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_options(context, options, path)
    load_key(context, entry)
    if verify_client != "none":
        if not trusted_pem:
            raise TlsSetupError(
                f"{path}/ssl.verify-client", "needs security/truststore with the CA(s) that issue client certificates"
            )
        context.load_verify_locations(cadata=trusted_pem.decode())
        context.verify_mode = _VERIFY[verify_client]
    return context


class ListenerTls:
    """One TLS endpoint: a context per certificate, chosen by SNI host name.

    The default certificate is the one serving the accept URI's host, else the
    first in the keystore. Clients that send no SNI (or an unknown name) get it.
    """

    def __init__(
        self,
        keys: KeyMaterial,
        hosts: list[str],
        options: TlsOptions,
        verify_client: str,
        trusted_pem: bytes | None,
        path: str,
    ) -> None:
        if not keys.keys:
            raise TlsSetupError("security/keystore", "holds no private key entry to serve wss/https with")
        self.contexts = [(e, server_context(e, options, verify_client, trusted_pem, path)) for e in keys.keys]
        default = next((c for e, c in self.contexts for h in hosts if e.serves(h)), self.contexts[0][1])
        self.context = default
        if len(self.contexts) > 1:
            default.sni_callback = self._select
            # aiofastnet's direct OpenSSL engine cannot switch contexts mid-handshake (it crashes);
            # its stdlib-SSLObject engine can. Only multi-certificate listeners pay for it.
            default._aiofastnet_force_fallback_ssl = True  # type: ignore[attr-defined]

    def _select(self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if server_name:
            for entry, context in self.contexts:
                if entry.serves(server_name):
                    ssl_object.context = context
                    return


def client_context(
    options: TlsOptions, trusted_pem: bytes | None, keys: KeyMaterial | None, path: str
) -> ssl.SSLContext:
    """Verified TLS to a back end: truststore CAs (system CAs if none), host name checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_options(context, options, path)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if trusted_pem:
        context.load_verify_locations(cadata=trusted_pem.decode())
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if options.client_certificate:
        entry = keys.key(options.client_certificate) if keys else None
        if entry is None:
            aliases = ", ".join(e.alias for e in keys.keys) if keys else "none"
            raise TlsSetupError(
                f"{path}/ssl.client-certificate",
                f"no key entry '{options.client_certificate}' in security/keystore (aliases: {aliases})",
            )
        load_key(context, entry)
    return context
