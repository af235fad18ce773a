"""The one exception tree of wsgate.

::

    GatewayError
    ├── ConfigError          an operator's config is wrong (names the element and the fix)
    ├── TlsSetupError        keystore / truststore cannot be turned into a TLS context (a ConfigError)
    └── BackendError         a back end refused, dropped or failed verification (close code 1011/1014)

Peers' protocol errors (bad upgrade, oversized message) are answered with an HTTP
status or a WebSocket close code by the transport and never raised past it.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error wsgate raises on purpose."""


class ConfigError(GatewayError):
    """A configuration element is invalid.

    ``path`` names the element (``service[echo]/accept-options/ssl.verify-client``)
    so the message can point the operator straight at it.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.detail = message


class ConfigErrors(ConfigError):
    """Several config errors found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        text = "\n".join(str(e) for e in errors)
        super().__init__("", f"{len(errors)} configuration error(s):\n{text}")


class TlsSetupError(ConfigError):
    """A keystore, truststore or TLS option cannot be applied."""


class BackendError(GatewayError):
    """A back-end connection failed; ``close_code`` is what the client gets."""

    def __init__(self, message: str, close_code: int = 1011) -> None:
        super().__init__(message)
        self.close_code = close_code
