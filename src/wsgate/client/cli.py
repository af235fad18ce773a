"""``wsgate-client``: connect through a gateway, authenticate, send and print messages.

For operators testing a deployment: ``wsgate-client wss://gw.example.com/echo --user joe --send hi``.
The password is prompted for (or read from ``--password-env``); tokens come from a file, never argv.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import ssl
import sys
from collections.abc import Sequence

import aiohttp

from .challenges import BasicChallengeHandler, ChallengeRequest, DispatchChallengeHandler, TokenChallengeHandler
from .connection import AuthenticationError, Connection, connect


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except AuthenticationError as exc:
        print(f"wsgate-client: authentication failed: {exc}", file=sys.stderr)
        return 3
    except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
        print(f"wsgate-client: cannot connect: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsgate-client", description="Talk to a service through a wsgate gateway")
    parser.add_argument("url", help="ws:// or wss:// URL of the service")
    parser.add_argument("--user", help="user name for Basic / Application Basic challenges")
    parser.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable")
    parser.add_argument("--token-file", metavar="FILE", help="answer token challenges with the token in FILE")
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
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply")
    return parser


def _handler(args: argparse.Namespace) -> DispatchChallengeHandler:
    dispatch = DispatchChallengeHandler()
    if args.user:

        def login(request: ChallengeRequest) -> tuple[str, str]:
            if args.password_env:
                return args.user, os.environ.get(args.password_env, "")
            return args.user, getpass.getpass(f"password for {args.user} ({request.realm or request.location}): ")

        dispatch.register("*", BasicChallengeHandler(login))
    if args.token_file:

        def token(request: ChallengeRequest) -> str:
            with open(args.token_file) as file:  # read afresh each time: refreshes pick up a rotated token
                return file.read().strip()

        dispatch.register("*", TokenChallengeHandler(token))
    return dispatch


def _ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.cacert or args.cert):
        return None
    context = ssl.create_default_context(cafile=args.cacert)
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    return context


async def _run(args: argparse.Namespace) -> int:
    connection = await connect(
        args.url, challenge_handler=_handler(args), ssl=_ssl(args), protocols=tuple(args.protocol)
    )
    async with connection:
        if args.send:
            for message in args.send:
                await connection.send(message)
                reply = await asyncio.wait_for(connection.receive(), args.timeout)
                if reply.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    print(f"closed: {connection.close_code}", file=sys.stderr)
                    return 1
                _print(reply.data)
            return 0
        return await _interactive(connection)


async def _interactive(connection: Connection) -> int:
    async def printer() -> None:
        async for data in connection:
            _print(data)
        print(f"closed: {connection.close_code}", file=sys.stderr)

    reading = asyncio.create_task(printer())
    loop = asyncio.get_running_loop()
    while (line := await loop.run_in_executor(None, sys.stdin.readline)) and not reading.done():
        await connection.send(line.rstrip("\n"))
    await asyncio.sleep(0.2)  # let late replies print
    reading.cancel()
    return 0


def _print(data: str | bytes) -> None:
    print(data if isinstance(data, str) else f"<{len(data)} bytes> {data[:64].hex()}", flush=True)
