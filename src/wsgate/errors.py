"""The one exception tree of wsgate.

::

    GatewayError
    ├── ConfigError          an operator's config is wrong (names the element and the fix)
    ├── TlsSetupError        keystore / truststore cannot be turned into a TLS context (a ConfigError)
    ├── ReloadFailed         a reload broke for an unexpected reason; the running configuration stays
    ├── WorkerFailed         a ``--workers`` worker died before serving, for a reason other than its config
    └── BackendError         a back end refused, dropped or failed verification (close code 1011/1014)

Peers' protocol errors (bad upgrade, oversized message) are answered with an HTTP
status or a WebSocket close code by the transport and never raised past it.
"""

from __future__ import annotations

import errno
import socket


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

    @staticmethod
    def of(errors: list[ConfigError]) -> ConfigError:
        """One error to raise for ``errors`` (at least one): itself when alone, else all of them, flattened."""
        flat = [item for error in errors for item in (error.errors if isinstance(error, ConfigErrors) else [error])]
        return flat[0] if len(flat) == 1 else ConfigErrors(flat)


class TlsSetupError(ConfigError):
    """A keystore, truststore or TLS option cannot be applied."""


class BackendError(GatewayError):
    """A back-end connection failed; ``close_code`` (a ``core.close.CloseCode``) is what the client gets."""

    def __init__(self, message: str, close_code: int) -> None:
        super().__init__(message)
        self.close_code = close_code


class ReloadFailed(GatewayError):
    """A reload failed for a reason other than a refused config (a bug): logged with its traceback."""


class WorkerFailed(GatewayError):
    """A worker of ``wsgate run --workers`` could not start; names the worker and its error."""


# The usual causes of a failed bind, and what the operator does about each.
_BIND_FIXES = {
    errno.EADDRINUSE: ("address already in use", "another process listens there: stop it or choose another port"),
    errno.EACCES: (
        "permission denied",
        "ports below 1024 need root or CAP_NET_BIND_SERVICE: grant it or choose a port of 1024 or more",
    ),
    errno.EADDRNOTAVAIL: (
        "address not available",
        "the host is no address of this machine: use one of its addresses, or 0.0.0.0 for all of them",
    ),
}


def bind_error(exc: OSError, where: str, address: str | None = None) -> ConfigError:
    """A ``ConfigError`` for a socket that could not be bound: ``where`` (the services), the address,
    the cause, and a fix that fits the cause."""
    cause = exc.strerror or str(exc)
    if address:
        cause = cause.rsplit(": ", 1)[-1]  # asyncio prefixes the address it tried, named here already
    if isinstance(exc, socket.gaierror):
        what, fix = f"host does not resolve ({cause})", "fix the host name (or its *.bind) or use an IP address"
    else:
        what, fix = _BIND_FIXES.get(exc.errno or 0, (cause, "check the address and the system's limits"))
    if not address:
        return ConfigError(where, f"cannot start: {cause}; {fix}")
    return ConfigError(where, f"cannot bind {address}: {what}; {fix}")
