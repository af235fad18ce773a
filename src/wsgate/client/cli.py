"""``wsgate-client``: connect through a gateway, authenticate, send and print messages.

For operators testing a deployment: ``wsgate-client wss://gw.example.com/echo --user joe --send hi``.
The password is prompted for on the terminal (or read from ``--password-env``); tokens come from a
file, never argv; ``--negotiate`` answers Kerberos challenges with the ticket cache ``kinit`` filled
(``KRB5CCNAME``) and requires the gateway to prove itself. Every failure is one line on stderr naming
its cause, and the exit status says which kind it was (docs/clients.md, "Exit codes"): an operator's
script can tell a wrong password from a missing service from a network fault.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import os
import ssl
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from .challenges import BasicChallengeHandler, DispatchChallengeHandler, TokenChallengeHandler
from .connection import AuthenticationError, Connection, RefusedError, connect
from .negotiate import NegotiateChallengeHandler

OK = 0
FAILED = 1  # could not connect, TLS failed, no reply in time, closed abnormally by the gateway
USAGE = 2  # bad arguments, or a password / token / certificate / Kerberos ticket that cannot be had
AUTHENTICATION = 3  # the gateway refused the credentials (401, 403)
REFUSED = 4  # the gateway refused otherwise: no such service (404), unavailable (503, 429), not WebSocket
INTERRUPTED = 130  # Ctrl-C (the connection is closed first)

REFUSALS = {
    404: "no such service on the gateway (HTTP 404)",
    429: "too many connections or handshakes from this address (HTTP 429); try again later",
    503: "service unavailable (HTTP 503): the gateway is full or stopping, or could not check credentials",
}


class Failure(Exception):
    """Why the command stops: a one-line ``message`` for stderr and its exit ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Closed:
    """The gateway's close frame: its code and reason."""

    code: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.code if self.code is not None else 'without a close code'} {self.reason}".strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check(args)
        context = _ssl(args)
        password = _password(args)
        negotiate = _negotiate(args)
        return asyncio.run(_run(args, password, context, negotiate))
    except Failure as exc:
        _error(exc.message)
        return exc.code
    except KeyboardInterrupt:
        _error("interrupted")
        return INTERRUPTED


def _error(message: str) -> None:
    print(f"wsgate-client: {message}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgate-client",
        description="Talk to a service through a wsgate gateway",
        epilog="exit status: 0 done, 1 connection failed or broke, 2 usage, 3 authentication refused, "
        "4 refused otherwise (404, 503 ...), 130 interrupted",
    )
    parser.add_argument("url", help="ws:// or wss:// URL of the service")
    parser.add_argument("--user", help="user name for Basic / Application Basic challenges")
    parser.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable")
    parser.add_argument("--token-file", metavar="FILE", help="answer token challenges with the token in FILE")
    parser.add_argument(
        "--negotiate",
        action="store_true",
        help="answer Negotiate / Application Negotiate (Kerberos) challenges with the ticket cache (KRB5CCNAME, "
        "filled by kinit); the gateway must prove itself (mutual authentication). Needs wsgate[kerberos]",
    )
    parser.add_argument(
        "--service-principal",
        metavar="NAME",
        help="the gateway's Kerberos principal for --negotiate: HTTP@host or HTTP/host@REALM "
        "(default: HTTP@ the URL's host)",
    )
    parser.add_argument("--cacert", metavar="PEM", help="trust this CA for wss (default: system CAs)")
    parser.add_argument("--cert", metavar="PEM", help="client certificate (mutual TLS)")
    parser.add_argument("--key", metavar="PEM", help="key of --cert, if not in the same file")
    parser.add_argument("--protocol", action="append", default=[], help="subprotocol to offer (repeatable)")
    parser.add_argument(
        "--send",
        action="append",
        default=[],
        metavar="MESSAGE",
        help="send MESSAGE and print the reply (repeatable); without it, lines from stdin are sent",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait to connect and for each reply")
    parser.add_argument(
        "--transport",
        choices=("websocket", "wse", "auto"),
        default="websocket",
        help="wse: WebSocket emulation over plain HTTP (for proxies that block WebSocket); auto: WebSocket, "
        "else emulation (default: websocket)",
    )
    return parser


# -- what is needed before connecting: every usage problem shows before any traffic -------------------


def _check(args: argparse.Namespace) -> None:
    if URL(args.url).scheme not in ("ws", "wss") or not URL(args.url).host:
        raise Failure(USAGE, f"{args.url!r} is not a ws:// or wss:// URL")
    if args.password_env and not args.user:
        raise Failure(USAGE, "--password-env needs --user")
    if args.key and not args.cert:
        raise Failure(USAGE, "--key needs --cert")
    if args.service_principal and not args.negotiate:
        raise Failure(USAGE, "--service-principal needs --negotiate")
    if args.timeout <= 0:
        raise Failure(USAGE, "--timeout must be more than 0 seconds")
    if args.token_file:
        _read_token(args.token_file)


def _password(args: argparse.Namespace) -> str | None:
    """The password for ``--user``: from ``--password-env`` (which must be set) or asked on the terminal."""
    if not args.user:
        return None
    if args.password_env:
        value = os.environ.get(args.password_env)
        if not value:
            state = "is not set" if value is None else "is empty"
            raise Failure(USAGE, f"--password-env: environment variable {args.password_env} {state}")
        return value
    if not _has_terminal():
        raise Failure(USAGE, f"--user {args.user}: no terminal to ask for the password on; use --password-env VAR")
    try:
        password = getpass.getpass(f"password for {args.user}: ")
    except EOFError:
        password = ""
    if not password:
        raise Failure(USAGE, "no password entered")
    return password


def _has_terminal() -> bool:
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return False
    return True


def _negotiate(args: argparse.Namespace) -> NegotiateChallengeHandler | None:
    """The Kerberos handler for ``--negotiate``: python-gssapi installed, a ticket in the cache."""
    if not args.negotiate:
        return None
    try:
        handler = NegotiateChallengeHandler(service_principal=args.service_principal)
    except ImportError as exc:
        raise Failure(USAGE, f"--negotiate: {exc}") from None
    try:
        handler.principal()
    except AuthenticationError as exc:
        raise Failure(USAGE, f"--negotiate: {exc}") from None
    return handler


def _read_token(path: str) -> str:
    try:
        with open(path) as file:
            token = file.read().strip()
    except OSError as exc:
        raise Failure(USAGE, f"cannot read --token-file {path}: {exc.strerror or exc}") from None
    if not token:
        raise Failure(USAGE, f"--token-file {path} is empty")
    return token


def _handler(
    args: argparse.Namespace, password: str | None, negotiate: NegotiateChallengeHandler | None = None
) -> DispatchChallengeHandler:
    dispatch = DispatchChallengeHandler()
    if negotiate is not None:
        dispatch.register("*", negotiate)
    if args.user and password is not None:
        dispatch.register("*", BasicChallengeHandler(lambda request: (args.user, password)))
    if args.token_file:
        # read afresh each time: refreshes pick up a rotated token
        dispatch.register("*", TokenChallengeHandler(lambda request: _read_token(args.token_file)))
    return dispatch


def _ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.cacert or args.cert):
        return None
    try:
        context = ssl.create_default_context(cafile=args.cacert)
    except (OSError, ssl.SSLError) as exc:
        raise Failure(USAGE, f"cannot load --cacert {args.cacert}: {_describe(exc)}") from None
    if args.cert:
        try:
            context.load_cert_chain(args.cert, args.key)
        except (OSError, ssl.SSLError) as exc:
            raise Failure(USAGE, f"cannot load --cert {args.cert}: {_describe(exc)}") from None
    return context


# -- the session ---------------------------------------------------------------------------------------


async def _run(
    args: argparse.Namespace,
    password: str | None,
    context: ssl.SSLContext | None,
    negotiate: NegotiateChallengeHandler | None = None,
) -> int:
    connection = await _connect(args, password, context, negotiate)
    try:
        async with connection:
            if args.send:
                return await _send_each(connection, args.send, args.timeout)
            return await _interactive(connection)
    except (aiohttp.ClientError, OSError) as exc:
        raise Failure(FAILED, f"connection lost: {_describe(exc)}") from None


async def _connect(
    args: argparse.Namespace,
    password: str | None,
    context: ssl.SSLContext | None,
    negotiate: NegotiateChallengeHandler | None = None,
) -> Connection:
    handler = _handler(args, password, negotiate)
    try:
        return await asyncio.wait_for(
            connect(
                args.url,
                challenge_handler=handler,
                ssl=context,
                protocols=tuple(args.protocol),
                transport=args.transport,
            ),
            args.timeout,
        )
    except AuthenticationError as exc:
        if exc.status == 403:
            reason = f"{args.url}: credentials refused, or they lack a role the service requires (HTTP 403)"
        else:
            reason = str(exc)
        raise Failure(AUTHENTICATION, f"authentication failed: {reason}") from None
    except RefusedError as exc:
        raise Failure(REFUSED, f"{args.url}: {_refusal(exc.status)}") from None
    except TimeoutError:
        raise Failure(FAILED, f"{args.url}: no answer from the gateway within {args.timeout:g} s") from None
    except aiohttp.ServerDisconnectedError:
        raise Failure(FAILED, f"{args.url}: {await _hung_up(args)}") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        reason = _describe(exc.certificate_error)
        message = f"TLS: the gateway's certificate is not trusted ({reason}); --cacert names the CA to trust"
        raise Failure(FAILED, f"{args.url}: {message}") from None
    except (aiohttp.ClientError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ECONNRESET:  # a TLS refusal may be a reset too
            raise Failure(FAILED, f"{args.url}: {await _hung_up(args)}") from None
        raise Failure(FAILED, f"{args.url}: cannot connect: {_describe(exc)}") from None


def _refusal(status: int) -> str:
    if status in REFUSALS:
        return REFUSALS[status]
    if status < 300:
        return f"not a WebSocket service (HTTP {status})"
    return f"refused with HTTP {status}"


async def _hung_up(args: argparse.Namespace) -> str:
    """Why the gateway closed before answering. Over wss it is usually the client certificate, which
    the gateway checks in the TLS handshake and refuses by hanging up: aiohttp only says "Server
    disconnected", so shake hands once more, capped at TLS 1.2 where that check happens inside
    the handshake, and see where it ends."""
    url = URL(args.url)
    if url.scheme != "wss":
        return "the gateway closed the connection before answering"
    stage, detail = await _tls_probe(url, args, ssl.TLSVersion.TLSv1_2)
    if stage == "alert" and "PROTOCOL_VERSION" in detail.upper():  # a TLS 1.3-only gateway
        stage, detail = await _tls_probe(url, args, None)
    if stage == "alert":
        return f"TLS: the gateway ended the handshake with the alert {detail}" + _certificate_hint(args)
    if stage == "handshake":
        return "TLS: the gateway hung up during the handshake" + _certificate_hint(args)
    if stage == "after":  # TLS 1.3: the client certificate is checked once the client has finished
        return "TLS: the gateway hung up right after the handshake" + _certificate_hint(args)
    return "the gateway closed the connection before answering"


def _certificate_hint(args: argparse.Namespace) -> str:
    if args.cert:
        return f"; it most likely does not accept the client certificate {args.cert} (unknown CA, or expired)"
    return "; it most likely requires a client certificate: pass --cert"


async def _tls_probe(url: URL, args: argparse.Namespace, maximum: ssl.TLSVersion | None) -> tuple[str, str]:
    """Where a bare TLS connection ends: ``alert`` (with its name), ``handshake`` (hung up during it),
    ``after`` (hung up instead of answering a request) or ``other`` (answered: the problem is elsewhere)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only the gateway's side of the handshake is of interest here
    if maximum is not None:
        context.maximum_version = maximum
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(url.host, url.port or 443, ssl=context), 5)
    except ssl.SSLError as exc:
        return ("alert", exc.reason) if exc.reason and "ALERT" in exc.reason else ("handshake", str(exc))
    except ConnectionError as exc:
        return "handshake", _describe(exc)
    except (OSError, TimeoutError) as exc:
        return "other", _describe(exc)
    try:
        writer.write(f"GET {url.raw_path} HTTP/1.1\r\nHost: {url.host}\r\nConnection: close\r\n\r\n".encode())
        answered = await asyncio.wait_for(reader.read(1), 5)
    except ssl.SSLError as exc:
        return ("alert", exc.reason) if exc.reason and "ALERT" in exc.reason else ("after", str(exc))
    except (OSError, TimeoutError) as exc:
        return ("after", _describe(exc)) if isinstance(exc, ConnectionError) else ("other", _describe(exc))
    finally:
        writer.close()
    return ("other", "") if answered else ("after", "")


async def _send_each(connection: Connection, messages: Sequence[str], timeout: float) -> int:
    for number, message in enumerate(messages, 1):
        await connection.send(message)
        try:
            reply = await asyncio.wait_for(_next(connection), timeout)
        except TimeoutError:
            raise Failure(FAILED, f"no reply to message {number} within {timeout:g} s") from None
        if isinstance(reply, Closed):
            raise Failure(FAILED, f"closed by the gateway before replying to message {number}: {reply}")
        _print(reply)
    return OK


async def _next(connection: Connection) -> str | bytes | Closed:
    """The next message, or how the connection closed."""
    while True:
        msg = await connection.receive()
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            data: str | bytes = msg.data
            return data
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return Closed(msg.data, msg.extra or "")
        if msg.type == aiohttp.WSMsgType.ERROR:
            return Closed(connection.close_code, f"({_describe(msg.data)})")
        if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return Closed(connection.close_code, "")


async def _interactive(connection: Connection) -> int:
    """Send stdin's lines and print what arrives, until stdin ends, the gateway closes, or Ctrl-C."""
    lines = _stdin_lines()
    printer = asyncio.create_task(_print_until_closed(connection))
    try:
        while True:
            line = asyncio.ensure_future(lines.get())
            await asyncio.wait({line, printer}, return_when=asyncio.FIRST_COMPLETED)
            if printer.done():
                line.cancel()
                return _closed(printer.result())
            text = line.result()
            if text is None:  # end of input: let late replies print, then close
                await asyncio.wait({printer}, timeout=0.5)
                return OK
            await connection.send(text)
    finally:
        printer.cancel()


async def _print_until_closed(connection: Connection) -> Closed:
    while not isinstance(message := await _next(connection), Closed):
        _print(message)
    return message


def _closed(closed: Closed) -> int:
    if closed.code == 1000:
        _error(f"closed by the gateway: {closed}")
        return OK
    raise Failure(FAILED, f"closed by the gateway: {closed}")


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of stdin (``None`` at its end), read by a daemon thread with ``os.read``.

    Neither an executor (``asyncio.run`` would wait for its blocked thread at exit, so Ctrl-C
    could not end the command) nor ``sys.stdin`` (whose lock a blocked reader holds at exit).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(item: str | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: the command is ending
            pass

    def read() -> None:
        pending = b""
        while chunk := _read_chunk():
            *complete, pending = (pending + chunk).split(b"\n")
            for line in complete:
                put(line.decode(errors="replace").rstrip("\r"))
        if pending:
            put(pending.decode(errors="replace"))
        put(None)

    threading.Thread(target=read, name="wsgate-client-stdin", daemon=True).start()
    return queue


def _read_chunk() -> bytes:
    try:
        return os.read(sys.stdin.fileno(), 65536)
    except (OSError, ValueError, AttributeError):  # closed or no stdin: that is its end
        return b""


def _describe(exc: BaseException) -> str:
    """An exception as words, never empty (``TimeoutError()`` has no message of its own)."""
    text = str(exc).strip()
    if isinstance(exc, aiohttp.ClientConnectorError):  # asyncio words errno 111 "Connect call failed"
        error = exc.os_error
        text = f"{exc.host}:{exc.port}: {os.strerror(error.errno) if error.errno else _describe(error)}"
    return text or type(exc).__name__


def _print(data: str | bytes) -> None:
    print(data if isinstance(data, str) else f"<{len(data)} bytes> {data[:64].hex()}", flush=True)
