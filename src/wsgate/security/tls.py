"""TLS contexts: server side per listener (SNI, mTLS) and client side for back ends.

Policy only: contexts are built from the config and key material; the transport
wraps sockets with them. Defaults are Mozilla "intermediate": TLS 1.2+, AEAD ciphers.
"""

from __future__ import annotations

import os
import ssl

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

    Two ways to choose, one per kind of TLS engine: ``select(name)`` before the engine starts, from the
    peeked ClientHello (transport/sni.py, on aiofastnet), among contexts without any callback; and
    ``context``, which switches in OpenSSL's SNI callback (asyncio, uvloop), a context of its own.
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
        first = next(((e, c) for e, c in self.contexts for h in hosts if e.serves(h)), self.contexts[0])
        self.default = first[1]
        self.context = self.default
        if len(self.contexts) > 1:
            # aiofastnet's direct OpenSSL engine crashes on any context with an SNI callback
            # (bench/upstream/aiofastnet-1.py); its stdlib-SSLObject engine copes. The callback lives on a
            # context of its own so that those ``select`` returns stay safe for the direct engine.
            self.context = server_context(first[0], options, verify_client, trusted_pem, path)
            self.context.sni_callback = self._select
            self.context._aiofastnet_force_fallback_ssl = True  # type: ignore[attr-defined]

    @property
    def several(self) -> bool:
        return len(self.contexts) > 1

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context for a ClientHello's server name: the first certificate serving it, else the default."""
        if server_name:
            for entry, context in self.contexts:
                if entry.serves(server_name):
                    return context
        return self.default

    def _select(self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        chosen = self.select(server_name)
        if chosen is not self.default:  # this context already serves the default certificate
            ssl_object.context = chosen


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
