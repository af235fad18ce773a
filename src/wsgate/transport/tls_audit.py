"""TLS handshakes that fail: one audit line each, with a reason, and a metric; no traceback.

A load balancer's health check (TCP connect, close) and a client refused for its certificate
are routine on a public TLS port, not errors. The event loops report them badly: aiofastnet
hands the loop's exception handler the *class* ``ConnectionResetError`` for a peer that closed
during the handshake (logged as ERROR "SSL handshake failed" with an unreadable traceback),
and says nothing at all about handshakes OpenSSL refused (no client certificate, an unknown
CA, plain HTTP, an old protocol version).

Two hooks turn both into ``wsgate.audit`` lines ``tls handshake failed``:

- the loop's exception handler (``install_exception_handler``): contexts about a handshake of
  one of our listeners' connections are claimed; everything else goes on to the previous
  handler, tracebacks included;
- the TLS server's ``_attach``/``_detach`` (aiofastnet's ``Server``, ``TlsAudit.watch``): a
  connection whose transport goes away before its handshake completed has failed. OpenSSL's
  reason is not exposed there, so it is inferred from what the session holds (a client
  certificate that did not verify, none at all) and the time taken.

The reasons are a fixed set (``REASONS``), so the metric's label stays bounded.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from ..observe.logs import LogLimiter, get_logger
from ..observe.metrics import Metrics

audit = get_logger("wsgate.audit")

CLOSED = "closed before handshake"
NO_CERTIFICATE = "no client certificate"
UNTRUSTED = "untrusted client certificate"
PROTOCOL = "protocol mismatch"  # not TLS, an old protocol version, no shared cipher
TIMEOUT = "timeout"
OTHER = "other"
REASONS = (CLOSED, NO_CERTIFICATE, UNTRUSTED, PROTOCOL, TIMEOUT, OTHER)
_HANDSHAKE_MESSAGE = "SSL handshake failed"
_INSTALLED = "_wsgate_tls_audit"  # marks a loop whose exception handler is already ours


class AuditedListener(Protocol):
    """What the audit reads of the listener it watches (``transport.listener.Listener``)."""

    host: str | None
    port: int
    handshake_timeout: float
    ssl_context: ssl.SSLContext | None
    metrics: Metrics | None

    @property
    def tls_audit(self) -> TlsAudit | None: ...


class AuditedConnection(Protocol):
    """A listener's connection protocol (``transport.listener.HttpConnection``)."""

    accepted: float

    @property
    def listener(self) -> AuditedListener: ...

    def handshake_failed(self) -> None: ...


class TlsAudit:
    """One per TLS listener: notices its handshakes that never completed."""

    def __init__(self, listener: AuditedListener) -> None:
        self.listener = listener
        self.pending: weakref.WeakKeyDictionary[Any, AuditedConnection] = weakref.WeakKeyDictionary()
        self.noted: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self.lines = LogLimiter("tls handshake failed")

    def watch(self, server: asyncio.AbstractServer) -> None:
        """Follow the server's transports (aiofastnet's ``Server`` attaches and detaches each one)."""
        attach: Callable[[Any], None] | None = getattr(server, "_attach", None)
        detach: Callable[[Any], None] | None = getattr(server, "_detach", None)
        if attach is None or detach is None or not type(server).__module__.startswith("aiofastnet"):
            return  # other loops: only what reaches the exception handler is audited

        def attached(transport: Any) -> None:
            attach(transport)
            self.attached(transport)

        def detached(transport: Any) -> None:
            detach(transport)
            self.detached(transport)

        server._attach = attached  # type: ignore[attr-defined]
        server._detach = detached  # type: ignore[attr-defined]

    def attached(self, transport: Any) -> None:
        connection = _connection_of(transport)
        if connection is not None and not _handshake_done(transport):
            self.pending[transport] = connection

    def detached(self, transport: Any) -> None:
        connection = self.pending.pop(transport, None)
        if connection is None or _handshake_done(transport):
            return
        connection.handshake_failed()
        reason = self.noted.pop(transport, None) or self.infer(transport, connection)
        self.report(reason, transport)

    def noted_error(self, transport: Any, exc: object) -> None:
        """The loop's exception handler saw this handshake fail (before or after ``detached``)."""
        reason = reason_of(exc)
        if transport in self.pending:
            self.noted[transport] = reason  # reported once, when the transport is detached
        else:
            self.report(reason, transport)

    def infer(self, transport: Any, connection: AuditedConnection) -> str:
        """OpenSSL's reason is gone by now: what the session kept says which side gave up."""
        if asyncio.get_running_loop().time() - connection.accepted >= self.listener.handshake_timeout * 0.9:
            return TIMEOUT
        context = self.listener.ssl_context
        if context is None or context.verify_mode == ssl.CERT_NONE:
            return PROTOCOL
        session = transport.get_extra_info("ssl_object")
        if _chain_length(session, "get_verified_chain") or _chain_length(session, "get_unverified_chain"):
            return UNTRUSTED
        if context.verify_mode == ssl.CERT_REQUIRED:
            return NO_CERTIFICATE  # or a client that is not TLS at all: OpenSSL does not say which
        return PROTOCOL

    def report(self, reason: str, transport: Any = None, remote: str | None = None) -> None:
        if remote is None and transport is not None:
            remote = _address(transport.get_extra_info("peername"))
        listener = self.listener
        if listener.metrics is not None:
            listener.metrics.tls_failures.labels(reason).inc()
        if self.lines.allow():  # clients choose how often they fail: counted always, logged within a limit
            audit.info(
                "tls handshake failed",
                reason=reason,
                remote=remote,
                listener=f"tls://{listener.host or '*'}:{listener.port}",
            )


def reason_of(exc: object) -> str:
    """A bounded reason for an exception (or exception class, as aiofastnet passes) of a handshake."""
    if isinstance(exc, type):
        return CLOSED if issubclass(exc, (ConnectionError, EOFError)) else OTHER
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or ''} {exc}".upper()
        if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text or "CERTIFICATE_REQUIRED" in text:
            return NO_CERTIFICATE
        if "CERTIFICATE_VERIFY_FAILED" in text or "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text:
            return UNTRUSTED
        if isinstance(exc, ssl.SSLEOFError):
            return CLOSED
        return PROTOCOL
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return TIMEOUT
    if isinstance(exc, ConnectionError | EOFError):
        return CLOSED
    return OTHER


def install_exception_handler(loop: asyncio.AbstractEventLoop) -> None:
    """Claim handshake failures of our connections; pass everything else on, tracebacks and all.

    Installed once per loop, chained to whatever handler the application had set.
    """
    if getattr(loop.get_exception_handler(), _INSTALLED, False):
        return
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _claim(context):
            return
        exc = context.get("exception")
        if isinstance(exc, type) and issubclass(exc, BaseException):
            context = {**context, "exception": exc()}  # a class, not an instance, breaks the traceback
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    setattr(handler, _INSTALLED, True)
    loop.set_exception_handler(handler)


def _claim(context: dict[str, Any]) -> bool:
    if not str(context.get("message", "")).startswith(_HANDSHAKE_MESSAGE):
        return False
    transport = context.get("transport")
    connection = _connection_of(transport) or _connection_of(context.get("protocol"))
    if connection is None or connection.listener.tls_audit is None:
        return False
    connection.listener.tls_audit.noted_error(transport, context.get("exception"))
    return True


def _connection_of(owner: Any) -> AuditedConnection | None:
    """Our protocol behind a transport (aiofastnet) or an SSL protocol (asyncio, uvloop): one whose
    listener has a ``TlsAudit`` (so this module needs no import of the listener's)."""
    for attribute in ("get_protocol", "get_app_protocol"):
        getter = getattr(owner, attribute, None)
        candidate = getter() if callable(getter) else None
        if _audited(candidate):
            return candidate
    candidate = getattr(owner, "_app_protocol", owner)
    return candidate if _audited(candidate) else None


def _audited(candidate: Any) -> bool:
    return isinstance(getattr(getattr(candidate, "listener", None), "tls_audit", None), TlsAudit)


def _handshake_done(transport: Any) -> bool:
    return transport.get_extra_info("cipher") is not None


def _chain_length(session: Any, method: str) -> int:
    try:
        return len(getattr(session, method)() or ())
    except (AttributeError, ValueError, ssl.SSLError):
        return 0


def _address(peer: Any) -> str | None:
    return str(peer[0]) if isinstance(peer, tuple) and peer else None
