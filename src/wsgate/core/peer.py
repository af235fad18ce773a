"""The verified client certificate of a connection: a value every layer can read."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID


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
