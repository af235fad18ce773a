"""``kdc.proxy``: a Kerberos KDC proxy (MS-KKDCP), so clients get tickets over HTTPS through the gateway.

Stock clients speak it: MIT krb5 (``kdc = https://gateway/KdcProxy`` and ``http_anchors`` in ``krb5.conf``,
with the k5tls plugin) and Windows. Each request is one ``POST`` of a ``KDC-PROXY-MESSAGE``
(``services.kkdcp``); the KDC message inside goes to the first of the service's ``connect`` KDCs that takes
a TCP connection, and the KDC's reply comes back in the same wrapping. The protocol is anonymous by design
(the KDC authenticates the client); a ``realm-name`` works as for any plain HTTP service.

Nothing reaches a KDC unless it is a well-formed AS-REQ or TGS-REQ for the service's ``realm`` no larger than
``maximum.message.size``; at most ``kdc.concurrency`` exchanges run at once. Answers:

- 200 ``application/kerberos``: the KDC's reply (a ticket or a KRB-ERROR: the KDC's word, passed on);
- 400 with a short text: not a request the proxy forwards (garbled DER, trailing bytes, a length prefix that
  does not match, another message type, another realm); 405 for anything but ``POST``; 415 without
  ``Content-Type: application/kerberos``; 413 (from the transport) over ``maximum.message.size``;
- 503 with ``Retry-After``: no KDC took the connection within ``kdc.connect.timeout``, or the one that did
  did not answer within ``kdc.timeout``, or ``kdc.concurrency`` exchanges are already running;
- 502: the KDC's reply was not a length-prefixed message within ``maximum.reply.size``.

Every request is counted in ``wsgate_kdc_proxy_requests_total`` by result; nothing is logged per request at
INFO. An unreachable KDC is a WARNING (rate-limited), a refused request a DEBUG line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..config.model import Service
from ..config.schema import Property
from ..config.values import parse_count, parse_duration, parse_size
from ..core.handshake import Accept, Body, BodyTooLarge, Handshake, Reply, Upgrade
from ..observe.logs import LogLimiter
from .base import ResourceService, Runtime, ServiceType
from .kkdcp import CONTENT_TYPE, PREFIX, Refused, encode_reply, parse_request

log = logging.getLogger("wsgate.kdc_proxy")

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024  # MIT's and Windows' requests are a few kB
DEFAULT_MAX_REPLY_SIZE = 256 * 1024  # a service ticket with a large PAC stays well below
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_CONCURRENCY = 100
RETRY_AFTER = 5  # seconds, on a 503
MAX_KDCS = 8
NO_STORE = (("Cache-Control", "no-store"),)

# ``wsgate_kdc_proxy_requests_total``'s ``result`` label: every value there is.
RESULTS = (
    "ok",
    "method",
    "media_type",
    "too_large",
    "malformed",
    "type",
    "realm",
    "busy",
    "unavailable",
    "bad_reply",
    "client_gone",
)


def parse_realm(text: str) -> str:
    """A Kerberos realm as written in ``krb5.conf`` (``EXAMPLE.COM``): printable ASCII, no spaces."""
    realm = text.strip()
    if not realm or not realm.isascii() or not realm.isprintable() or any(c.isspace() for c in realm):
        raise ValueError(f"{text!r} is not a Kerberos realm; write it as clients do, e.g. EXAMPLE.COM")
    return realm


def parse_timeout(text: str) -> float:
    """A duration above zero: a KDC is never waited for without a bound."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a timeout; write e.g. 2s or 500ms (more than 0)")
    return seconds


def _size_at_least(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        size = parse_size(text)
        if size < least:
            raise ValueError(f"{text!r} is too small; at least {least} bytes")
        return size

    return parse


class KdcUnavailable(Exception):
    """No KDC answered in time (the client gets 503)."""


class BadKdcReply(Exception):
    """A KDC answered something that is not a length-prefixed reply within the limit (the client gets 502)."""


class KdcProxyService(ResourceService):
    TYPE = ServiceType(
        name="kdc.proxy",
        accept=("http", "https"),
        connect=(1, MAX_KDCS),
        connect_schemes=("tcp",),
        properties={
            "realm": Property("1", parse_realm),
            "kdc.connect.timeout": Property("?", parse_timeout),
            "kdc.timeout": Property("?", parse_timeout),
            "kdc.concurrency": Property("?", parse_count),
            "maximum.message.size": Property("?", _size_at_least(PREFIX + 16)),
            "maximum.reply.size": Property("?", _size_at_least(PREFIX + 16)),
        },
        plain_http=True,
    )

    def __init__(self, config: Service, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.realm: str = config.setting("realm")
        self.kdcs = tuple((uri.host, uri.port) for uri in config.connects)
        self.connect_timeout: float = config.setting("kdc.connect.timeout", DEFAULT_CONNECT_TIMEOUT)
        self.timeout: float = config.setting("kdc.timeout", DEFAULT_TIMEOUT)
        self.concurrency: int = config.setting("kdc.concurrency", DEFAULT_CONCURRENCY)
        self.max_message: int = config.setting("maximum.message.size", DEFAULT_MAX_MESSAGE_SIZE)
        self.max_reply: int = config.setting("maximum.reply.size", DEFAULT_MAX_REPLY_SIZE)
        self.pending = 0  # exchanges with a KDC running now
        self.kdc_lines = LogLimiter("KDC unavailable")

    async def respond(self, handshake: Handshake, accept: Accept, body: Body) -> Reply | Upgrade:
        if handshake.method != "POST":
            return self.answer("method", Reply(405, b"Method Not Allowed\n", (("Allow", "POST"),), "text/plain"))
        if not _is_kerberos(handshake.header("Content-Type")):
            return self.answer("media_type", Reply.text(415, f"Content-Type must be {CONTENT_TYPE}\n"))
        try:
            data = await body.read(self.max_message)
        except BodyTooLarge:
            self.count("too_large")
            raise  # the transport answers 413, as for any body over its limit
        except ConnectionResetError:  # the client left before its body was complete: nobody to answer
            return self.answer("client_gone", Reply(400))
        try:
            request = parse_request(data, self.realm)
        except Refused as refused:
            log.debug("service[%s]: refused a request from %s: %s", self.name, handshake.remote, refused)
            return self.answer(refused.reason, Reply.text(400, f"{refused}\n"))
        if self.pending >= self.concurrency:
            return self.answer("busy", self.unavailable("Too many KDC requests in progress"))
        self.pending += 1
        started = time.monotonic()
        try:
            kdc_reply = await self.exchange(request.message)
        except KdcUnavailable:
            return self.answer("unavailable", self.unavailable("No KDC is answering"))
        except BadKdcReply:
            return self.answer("bad_reply", Reply.text(502, "Bad Gateway\n", NO_STORE))
        finally:
            self.pending -= 1
        if self.runtime.metrics is not None:
            self.runtime.metrics.kdc_proxy_seconds.labels(self.name).observe(time.monotonic() - started)
        return self.answer("ok", Reply(200, encode_reply(kdc_reply), NO_STORE, CONTENT_TYPE))

    def answer(self, result: str, reply: Reply) -> Reply:
        self.count(result)
        return reply

    def count(self, result: str) -> None:
        if self.runtime.metrics is not None:
            self.runtime.metrics.kdc_proxy_requests.labels(self.name, result).inc()

    @staticmethod
    def unavailable(text: str) -> Reply:
        return Reply.text(503, f"{text}\n", (("Retry-After", str(RETRY_AFTER)), *NO_STORE))

    async def exchange(self, message: bytes) -> bytes:
        """The reply of the first KDC that takes a connection (length prefix included).

        KDCs are tried in order while they refuse or do not connect within ``kdc.connect.timeout``; the
        one that connects has ``kdc.timeout`` to answer (the request is not sent to another one after it).
        """
        failures = []
        for host, port in self.kdcs:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    reader, writer = await asyncio.open_connection(host, port)
            except (OSError, TimeoutError) as exc:
                failures.append(f"{host}:{port} ({_why(exc)})")
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    writer.write(message)
                    prefix = await reader.readexactly(PREFIX)
                    length = int.from_bytes(prefix, "big")
                    if length > self.max_reply:  # the high bit (RFC 4120 §7.2.2 extensions) is beyond it too
                        raise BadKdcReply(f"{host}:{port} announced a {length}-byte reply")
                    reply = prefix + await reader.readexactly(length)
            except BadKdcReply as exc:
                writer.transport.abort()
                self.kdc_failed(str(exc))
                raise
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                writer.transport.abort()
                self.kdc_failed(f"{host}:{port} did not answer ({_why(exc)})")
                raise KdcUnavailable from None
            writer.close()
            return reply
        self.kdc_failed(f"no KDC took a connection: {', '.join(failures)}")
        raise KdcUnavailable

    def kdc_failed(self, why: str) -> None:
        if self.kdc_lines.allow():
            log.warning("service[%s]: realm %s: %s", self.name, self.realm, why)


def _is_kerberos(content_type: str | None) -> bool:
    """``application/kerberos``, parameters ignored (clients send none)."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == CONTENT_TYPE


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed the connection"
    return getattr(exc, "strerror", None) or type(exc).__name__
