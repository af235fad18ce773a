"""``wsgate`` command line: ``run``, ``check-config``, ``default-config``, ``dev-certs``, ``hash-password``,
``dmz-keys``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .catalog import LOGIN_MODULES, load_config, load_default_config, service_type
from .config import GatewayConfig, default_config_files, default_config_text, properties_from_env
from .config.build import TUNNEL_ENDPOINT_TYPE
from .config.model import Realm, Service
from .errors import ConfigError, ConfigErrors, GatewayError, WorkerFailed
from .observe.logs import configure_logging
from .observe.memory import start_heap_trimmer

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("wsgate")


# Exit codes of every command (docs/operations.md, "Exit codes").
EXIT_OK = 0  # done, or stopped by SIGTERM/SIGINT after serving
EXIT_FAILED = 1  # the system refused something: a file not written, workers that could not start
EXIT_CONFIG = 2  # the config (or a command-line argument) is wrong; the message names the element
EXIT_INTERRUPTED = 130  # Ctrl-C before the gateway was serving
EXIT_BROKEN_PIPE = 141  # whoever read the output stopped reading (``| head``); nothing more is printed


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure ends as one line on stderr and a documented exit code."""
    args = _parser().parse_args(argv)
    try:
        code = _command(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except WorkerFailed as exc:
        return _fail(str(exc), EXIT_FAILED)
    except GatewayError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        return _fail(describe_os_error(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _command(args: argparse.Namespace) -> int:
    if args.command == "default-config":
        return _default_config(args.directory)
    if args.command == "dev-certs":
        return _dev_certs(args)
    if args.command == "hash-password":
        return _hash_password(args.stdin)
    if args.command == "dmz-keys":
        return _dmz_keys(Path(args.directory), args.name)
    configure_logging(args.log_level, args.log_format)
    overrides = {**properties_from_env(os.environ), **_properties(args.property)}
    path = args.config

    def loader() -> GatewayConfig:
        return load_config(path, overrides) if path else load_default_config(overrides)

    config = loader()
    if args.command == "check-config":
        return _check(config, resolve=not args.no_resolve)
    if args.workers > 1:
        return _run_workers(config, args.loop, args.grace, args.workers, loader)
    return _run(config, args.loop, args.grace, loader=loader)


def _fail(message: str, code: int) -> int:
    try:
        print(f"wsgate: {message}", file=sys.stderr)
    except OSError:
        pass  # stderr is gone too: the exit code still tells
    return code


def _discard_stdout() -> None:
    """The reader is gone: send what is still buffered nowhere, so the interpreter's exit cannot fail on it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _why_not_writable(target: Path, exc: OSError) -> str:
    """Name the file in the way when a folder cannot be made, else the system's reason."""
    for parent in (target, *target.parents):
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder; choose another folder"
            break
    return describe_os_error(exc)


def describe_os_error(exc: OSError) -> str:
    """``Not a directory: 'afile/sub'`` rather than a traceback."""
    cause = exc.strerror or type(exc).__name__
    return f"{cause}: {exc.filename!r}" if exc.filename is not None else f"{cause} ({exc})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsgate", description="Secure WebSocket gateway")
    parser.add_argument("--version", action="version", version=f"wsgate {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the gateway (embedded default config if none given)")
    run.add_argument("config", nargs="?", help="gateway-config.xml or YAML config")
    run.add_argument(
        "--loop",
        choices=("auto", "asyncio"),
        default="auto",
        help="auto: uvloop and aiofastnet when installed (default); asyncio: the standard loop",
    )
    run.add_argument("--grace", type=float, default=10.0, help="seconds to wait for connections to drain on SIGTERM")
    run.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="run N gateway processes sharing each port (SO_REUSEPORT); see docs/operations.md for what is per worker",
    )
    scaffold = commands.add_parser("default-config", help="print the embedded default config, or write it to a folder")
    scaffold.add_argument("directory", nargs="?", help="write gateway.yaml, jaas-config.xml and web/ here")
    certs = commands.add_parser(
        "dev-certs",
        help="DEVELOPMENT ONLY: a private CA, a server keystore and client certificates for trying TLS",
        description="Make a private CA (reused if the folder has one), a server keystore for --host names, "
        "truststore.pem (the CA, for ssl.verify-client) and client certificates. Development only: every "
        "certificate says so, and the CA's key lies next to the stores.",
    )
    certs.add_argument("directory", help="the folder to write to (created; existing files are never overwritten)")
    certs.add_argument(
        "--host", action="append", default=[], metavar="NAME", help="a host name or IP clients use (repeatable)"
    )
    certs.add_argument(
        "--client", action="append", default=[], metavar="NAME", help="a client certificate for NAME (repeatable)"
    )
    certs.add_argument("--format", choices=("pkcs12", "jks", "pem"), default="pkcs12", help="server keystore format")
    certs.add_argument("--days", type=_positive, default=825, help="validity in days (default 825)")
    hashing = commands.add_parser(
        "hash-password", help="an argon2id hash of a password, for <password> in jaas-config.xml"
    )
    hashing.add_argument(
        "--stdin", action="store_true", help="read the password from standard input instead of prompting"
    )
    keys = commands.add_parser(
        "dmz-keys",
        help="an Ed25519 key pair for a layered DMZ's identity assertions (docs/dmz.md)",
        description="Write NAME.key (private: the DMZ gateway's tunnel.assertion.key, mode 0600) and NAME.pub "
        "(public: the internal gateway's tunnel.assertion.public-key). Existing files are never overwritten.",
    )
    keys.add_argument("directory", help="the folder to write to (created)")
    keys.add_argument("--name", default="dmz-assertion", help="file name stem (default dmz-assertion)")
    check = commands.add_parser("check-config", help="validate a config without binding any port")
    check.add_argument("config", help="gateway-config.xml or YAML config")
    check.add_argument(
        "--no-resolve",
        action="store_true",
        help="do not resolve the hosts the accepts bind (on a build machine without the production DNS)",
    )
    for sub in (run, check):
        sub.add_argument(
            "--property",
            "-D",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="set or override a ${NAME} property (repeatable)",
        )
        sub.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
        sub.add_argument(
            "--log-format",
            default="auto",
            choices=("auto", "json", "console"),
            help="JSON lines, or a readable console format; auto: console on a terminal, JSON otherwise",
        )
    return parser


def _invoked() -> str:
    """The command as the user typed it (``.venv/bin/wsgate``), for "next:" hints they can paste."""
    typed = sys.argv[0] if sys.argv else ""
    return typed if Path(typed).name == "wsgate" else "wsgate"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wsgate")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _dev_certs(args: argparse.Namespace) -> int:
    from .security.devcerts import LABEL, make

    made = make(Path(args.directory), args.host, args.client, args.format, args.days)
    folder = made.folder
    print(f"{LABEL.upper()}: not for production; the CA's key is {folder / 'dev-ca.key'}")
    if made.reused:
        print(f"reused the CA in {folder}")
    print(f"wrote {', '.join(made.written)} to {folder}")
    store = {"pkcs12": "PKCS12", "jks": "JKS", "pem": "PEM"}[args.format]
    password = f", password-file: {made.password_file}" if args.format != "pem" else ""
    print("security:")
    print(f"  keystore: {{type: {store}, file: {made.keystore}{password}}}")
    print("  truststore: {type: PEM, file: truststore.pem}   # client certificates for ssl.verify-client")
    print(f"clients trust {folder / 'dev-ca.pem'} (wsgate-client --cacert, curl --cacert, a browser's authorities)")
    return 0


def _dmz_keys(folder: Path, name: str) -> int:
    from .security.assertion import generate_key_pair

    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            print(f"wsgate: {path} exists; not overwritten (remove it or choose another --name)", file=sys.stderr)
            return 2
    folder.mkdir(parents=True, exist_ok=True)
    private, public = generate_key_pair()
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private)
    public_path.write_bytes(public)
    print(f"wrote {private_path} (DMZ gateway: connect-options tunnel.assertion.key; keep it secret)")
    print(f"wrote {public_path} (internal gateway: accept-options tunnel.assertion.public-key)")
    return 0


def _hash_password(from_stdin: bool) -> int:
    from .security.login.file import hash_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("hash-password", "the two passwords differ; nothing printed")
    if not password:
        raise ConfigError("hash-password", "an empty password would let anyone in with the user's name")
    print(hash_password(password))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _properties(items: list[str]) -> dict[str, str]:
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError("--property", f"{item!r} is not NAME=VALUE")
        result[name] = value
    return result


def _default_config(directory: str | None) -> int:
    """Print the default config, or write it with the files it references into ``directory``."""
    if directory is None:
        print(default_config_text(), end="")
        return 0
    target = Path(directory)
    files = default_config_files()
    existing = [name for name in files if (target / name).exists()]
    if existing:
        print(f"wsgate: {', '.join(existing)} already exist in {target}; nothing written", file=sys.stderr)
        return EXIT_CONFIG
    for name, data in files.items():
        try:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(data)
        except OSError as exc:
            return _fail(f"cannot write {name} to {target}: {_why_not_writable(target, exc)}", EXIT_FAILED)
    print(f"wrote {', '.join(sorted(files))} to {target}; next: {_invoked()} run {target / 'gateway.yaml'}")
    return 0


def _check(config: GatewayConfig, resolve: bool = True) -> int:
    from .gateway import Gateway, check_bind_hosts  # loads keystores and directories too, without binding

    errors: list[ConfigError] = []  # what building finds and the bind hosts that do not resolve, in one report
    for check in (lambda: Gateway(config), lambda: check_bind_hosts(config) if resolve else None):
        try:
            check()
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise ConfigErrors.of(errors)
    for service in config.services:
        print("\n".join(describe_service(service)))
    for warning in [*config.warnings, *unauthenticated_warnings(config), *any_origin_warnings(config)]:
        print(f"WARNING: {warning}")
    print(f"{config.source}: OK, {len(config.services)} service(s)")
    return 0


def describe_service(service: Service) -> list[str]:
    """What an operator must see before going live: where, who may connect, from which pages."""
    accepts = ", ".join(str(u) for u in service.accepts)
    if (inward := service.accept_options.tunnel) is not None:  # the internal end of a DMZ tunnel (docs/dmz.md)
        return [
            f"service[{service.name}] ({service.type}): {accepts}",
            f"  accepts: no listener; tunnels dialled out to {inward.rendezvous} (mTLS)",
            f"  identity: asserted by the DMZ gateway, verified with "
            f"{', '.join(f.name for f in inward.key_files)} (audience {inward.audience})",
            f"  required roles: {_required_roles(service)}",
        ]
    if service.type == TUNNEL_ENDPOINT_TYPE:
        return [
            f"service[{service.name}] ({service.type}): {accepts}",
            "  accepts: the internal gateway's tunnels only: a client certificate the truststore verifies (required)"
            " named by each tunnelled service's tunnel.peer",
        ]
    lines = [
        f"service[{service.name}] ({service.type}): {accepts}",
        f"  realm: {service.realm_name or 'none (no authentication)'}",
        f"  required roles: {_required_roles(service)}",
        f"  origins: {_origin_policy(service)}",
    ]
    if (outward := service.connect_options.tunnel) is not None:
        lines.append(
            f"  back end: tunnels from the internal gateway at {outward.rendezvous} (client certificate required)"
        )
    return lines


def _required_roles(service: Service) -> str:
    if service.accept_options.tunnel is not None and not service.authorization_constraints:
        return "none (any assertion the pinned key signed)"
    if not service.realm_name and service.accept_options.tunnel is None:
        return "none"
    roles = sorted({r for c in service.authorization_constraints for r in c.require_roles if r != "*"})
    return ", ".join(roles) + " (all of them)" if roles else "any authenticated user"


def _origin_policy(service: Service) -> str:
    origins = [c.allow_origin for c in service.cross_site_constraints]
    if "*" in origins:
        return "any (cross-site-constraint allow-origin *)"
    if origins:
        return "same-origin and " + ", ".join(origins)
    return "same-origin only"


def unauthenticated_warnings(config: GatewayConfig) -> list[str]:
    """Services anyone can use although the config defines realms: often a forgotten realm-name."""
    if not config.security.realms:
        return []
    warnings = []
    for service in config.services:
        if service.dropped_realm:
            warnings.append(
                f"service[{service.name}] is reachable without authentication: its realm-name "
                f"{service.dropped_realm!r} has no authorization-constraint, and a 2014/09 or 2015/11 config drops "
                "such a realm (as Kaazing does); add authorization-constraint require-role to protect it"
            )
        elif not service.realm_name and service.type != TUNNEL_ENDPOINT_TYPE:  # tunnels: client certificates
            warnings.append(
                f"service[{service.name}] is reachable without authentication although the config defines "
                f"realm(s) {', '.join(config.security.realms)}; add realm-name if it should be protected"
            )
    return warnings


def any_origin_warnings(config: GatewayConfig) -> list[str]:
    """Services any web page may use with a visitor's credentials: ``allow-origin *`` on a realm that takes
    credentials the browser attaches by itself (cross-site WebSocket hijacking, cross-site admin calls)."""
    warnings = []
    for service in config.services:
        realm = config.security.realms.get(service.realm_name or "")
        if realm is None or not any(c.allow_origin == "*" for c in service.cross_site_constraints):
            continue
        ambient = ambient_credentials(realm)
        if ambient:
            warnings.append(
                f"service[{service.name}] lets any web page in (cross-site-constraint allow-origin *) although realm "
                f"{realm.name} takes credentials a browser sends by itself ({', '.join(ambient)}): a page a signed-in "
                "user visits can act as that user; list the origins that may instead"
            )
    return warnings


def ambient_credentials(realm: Realm) -> list[str]:
    """What a browser would present to ``realm`` on any site's behalf, unasked."""
    auth = realm.authentication
    scheme = (auth.http_challenge_scheme or "").lower().removeprefix("application ").strip()
    ambient = [f"{scheme.capitalize()} credentials it remembers"] if scheme in ("basic", "negotiate") else []
    if auth.authorization_mode == "recycle":
        ambient.append("the realm's session cookie")
    ambient += [f"cookie {name}" for name in auth.http_cookies]
    ambient += sorted(
        {kind.ambient for m in auth.login_modules if (kind := LOGIN_MODULES.get(m.type)) and kind.ambient}
    )
    return ambient


def _run(
    config: GatewayConfig,
    loop_kind: str,
    grace: float,
    worker: bool = False,
    loader: Callable[[], GatewayConfig] | None = None,
    ready: Callable[[], None] | None = None,
) -> int:
    from .gateway import Gateway

    gateway = Gateway(config, reuse_port=worker, loader=loader)
    check_fd_limit(config)
    loop = new_event_loop(loop_kind)
    try:
        loop.run_until_complete(_serve(gateway, grace, os.getppid() if worker else None, ready))
    finally:
        loop.close()
    return 0


def _run_workers(
    config: GatewayConfig, loop_kind: str, grace: float, workers: int, loader: Callable[[], GatewayConfig]
) -> int:
    """Validate once, then fork: every worker binds the same ports with SO_REUSEPORT."""
    from .gateway import Gateway
    from .supervisor import supervise

    planned = Gateway(config, reuse_port=True)
    dynamic = [key for key in planned.listeners if key[1] == 0]
    if dynamic:
        raise ConfigError(
            "service/accept",
            f"--workers {workers} needs fixed ports, but {dynamic[0][0] or '*'}:0 asks for any free port; "
            "give the accept (or its *.bind) a port number",
        )
    log.info("starting %d workers (SO_REUSEPORT)", workers)
    return supervise(
        workers, lambda slot, ready: _run(config, loop_kind, grace, worker=True, loader=loader, ready=ready)
    )


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """uvloop with aiofastnet's faster transports when installed (measured in bench/README.md)."""
    if kind == "asyncio":
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    if os.environ.get("SSLKEYLOGFILE"):
        # ssl.create_default_context() then logs keys, which aiofastnet 1.2's TLS engine answers with a
        # segfault (bench/upstream/aiofastnet-1.py): whoever debugs TLS gets the slower transports instead.
        log.warning("SSLKEYLOGFILE is set: running without aiofastnet, whose TLS engine crashes when logging keys")
        return loop
    try:
        import aiofastnet

        aiofastnet.patch_loop(loop)
    except ImportError:
        pass
    return loop


async def _serve(
    gateway: Gateway, grace: float, supervisor: int | None = None, ready: Callable[[], None] | None = None
) -> None:
    """Run until SIGTERM/SIGINT, or (a worker) until its supervisor is gone; ``ready()`` once serving."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def reload() -> None:
        task = loop.create_task(gateway.reload())
        reloads.add(task)
        task.add_done_callback(reload_done)

    def reload_done(task: asyncio.Task[tuple[bool, str]]) -> None:
        reloads.discard(task)
        if not task.cancelled():
            task.exception()  # a ReloadFailed is logged with its traceback and counted by the gateway

    loop.add_signal_handler(signal.SIGHUP, reload)
    if supervisor is not None:
        _watch_supervisor(loop, supervisor, stop)
    await gateway.start()
    tune_gc()
    trimmer = start_heap_trimmer()  # freed native memory back to the system (observe/memory.py); None: no glibc
    if ready is not None:  # before the "ready at" lines: whoever reads them may already rely on it
        ready()
    for service in gateway.config.services:
        if (tunnel := service.accept_options.tunnel) is not None:  # no listener: it dials out (docs/dmz.md)
            log.info(
                "service[%s] (%s) accepts %s through tunnels to %s",
                service.name,
                service.type,
                service.accepts[0],
                tunnel.rendezvous,
            )
            continue
        for index, uri in enumerate(service.accepts):
            log.info(
                "service[%s] (%s) ready at %s (port %d)",
                service.name,
                service.type,
                uri,
                gateway.port_of(service.name, index),
            )
    await stop.wait()
    log.info("shutting down: no new connections, closing open ones with 1001")
    if trimmer is not None:
        trimmer.stop()
    await gateway.stop(grace)


# Descriptors that are not connections: listeners, the loop's own, log files, resolvers, the management port.
FD_MARGIN = 64


def descriptors_needed(config: GatewayConfig) -> int | None:
    """What the configured limits let connections hold at once (None: no limit bounds them).

    An open WebSocket holds one descriptor, a proxied one two (as its type declares); every handshake in
    progress holds one.
    """
    per_connection = max((service_type(s.type).descriptors_per_connection for s in config.services), default=1)
    connections = config.limits.connections
    if connections is None:
        per_service = [service.accept_options.max_connections for service in config.services]
        if None in per_service:
            return None
        connections = sum(limit or 0 for limit in per_service)
    return connections * per_connection + (config.limits.handshakes or 0) + FD_MARGIN


def check_fd_limit(config: GatewayConfig) -> None:
    """Raise the soft descriptor limit to the hard one; warn if it is still below what the limits allow.

    Out of descriptors, the gateway stops accepting for a while (clients wait in the listen backlog), so
    ``limits/connections`` is the place to refuse load, with a 503, before descriptors run out.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("raised the file descriptor limit from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError):
            pass  # the kernel's fs.nr_open is lower: keep what we have
    needed = descriptors_needed(config)
    if soft == resource.RLIM_INFINITY:
        return
    if needed is None:
        log.info(
            "file descriptor limit %d and no limits/connections: once descriptors run out the gateway stops "
            "accepting (clients wait in the listen backlog) until some free up; set limits/connections below "
            "the limit (half of it with proxy services)",
            soft,
        )
    elif needed > soft:
        log.warning(
            "file descriptor limit %d is below the %d the configured limits allow (limits/connections, "
            "handshakes, two per proxied connection, %d spare); raise it (LimitNOFILE=, ulimit -n) or lower "
            "limits/connections, or the gateway stops accepting before the limits refuse anyone",
            soft,
            needed,
            FD_MARGIN,
        )


def tune_gc() -> None:
    """Keep the cycle collector off the handshake path (it took 14 % of the CPU of new connections).

    Everything built at start-up (config, services, TLS contexts) is frozen out of the collector's
    generations; young collections run after 50,000 allocations instead of 700, then rarely reach the
    older generations that hold long-lived connections (bench/README.md: connect rate, idle).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def _watch_supervisor(loop: asyncio.AbstractEventLoop, supervisor: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL, OOM) stops gracefully instead of serving unsupervised."""
    if os.getppid() != supervisor:
        log.error("supervisor (pid %d) is gone; stopping this worker", supervisor)
        stop.set()
    else:
        loop.call_later(1.0, _watch_supervisor, loop, supervisor, stop)
