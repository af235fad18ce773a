"""``amqp.proxy``: AMQP 0-9-1 over WebSocket to a broker, logged in as the gateway, operations decided by rules.

Each accepted WebSocket gets its own broker connection (as ``proxy``); the bytes between them go through an
``AmqpGuard`` (``amqp_guard.py``, no I/O), which replaces the client's login with the gateway's
(``amqp.username``, ``amqp.password-file``, ``virtual.host``), stamps ``user-id`` on every published message
(``amqp.user-id``) and puts every governed method to the service's ``authorization-rule`` list, read afresh
at each one (a reload or a re-authentication applies to the next operation).

The client must finish the AMQP handshake within ``HANDSHAKE_TIMEOUT``. A protocol violation closes it with
``Connection.Close`` (the AMQP reply code) and then the WebSocket (1002; 1008 for what policy refuses); a
refused operation closes only its channel, with 403.
"""

from __future__ import annotations

import asyncio
import logging

from pamqp import commands

from ..config.model import Service
from ..config.schema import Property, RuleSchema
from ..config.values import parse_choice, parse_size
from ..core.channel import Channel, Data
from ..core.close import CloseCode
from ..core.handshake import Handshake
from ..core.session import LiveSession
from ..errors import BackendError, ConfigError
from ..security.challenges import offered_subprotocols
from ..security.rules import Decision
from ..transport.backend import Backend, TcpBackend
from .amqp_guard import (
    ACCESS_REFUSED,
    KEEP,
    NOT_ALLOWED,
    PROTOCOL_HEADER,
    AmqpClose,
    AmqpGuard,
    BadProtocolHeader,
    BrokerFailure,
    ClientDone,
    Login,
    marshal,
)
from .base import Runtime, ServiceType
from .proxy import ProxyService, parse_connect_strategy

log = logging.getLogger("wsgate.amqp")

HANDSHAKE_TIMEOUT = 10.0  # from the 101 to the client's Connection.Open
CLOSE_GRACE = 2.0  # how long a client closed from the broker's side may take to answer the close
SUBPROTOCOL = "amqp"  # accepted when the client offers it (RabbitMQ's Web-AMQP name); never required
USER_ID_MODES = ("principal", "keep", "none")
MECHANISMS = ("PLAIN", "EXTERNAL")
DEFAULT_LOGIN = ("guest", "guest")  # RabbitMQ's default account, which it accepts from loopback only
ENCRYPTION_KEY_ALIAS = (
    "ignored: Kaazing encrypted its session cookies with this key; wsgate keeps no session cookies for amqp.proxy"
)
OPERATIONS: dict[str, tuple[str, ...]] = {
    "exchange.declare": ("exchange",),
    "exchange.delete": ("exchange",),
    "queue.declare": ("queue",),
    "queue.bind": ("queue", "exchange", "routing-key"),
    "queue.unbind": ("queue", "exchange", "routing-key"),
    "queue.delete": ("queue",),
    "queue.purge": ("queue",),
    "basic.publish": ("exchange", "routing-key"),
    "basic.consume": ("queue",),
    "basic.get": ("queue",),
}


class BrokerPassword(str):
    """The broker password read from ``amqp.password-file``: a ``str`` whose repr never shows it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "BrokerPassword('***')"


def read_password(path: str) -> BrokerPassword:
    """The password file's content, trailing newline dropped (the path is already resolved against the config)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read().rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    if not text:
        raise ValueError(f"{path!r} is empty")
    return BrokerPassword(text)


def parse_virtual_host(text: str) -> str:
    value = text.strip()
    if not value or len(value) > 127:
        raise ValueError(f"{text!r} is not a virtual host name (1 to 127 characters, e.g. / or prod)")
    return value


def parse_user_id(text: str) -> str:
    """``principal``: the authenticated user; ``keep``: the client's; ``none``: removed."""
    return parse_choice(text, USER_ID_MODES)


def parse_mechanism(text: str) -> str:
    """``PLAIN`` (amqp.username + amqp.password-file) or ``EXTERNAL`` (the gateway's client certificate)."""
    return parse_choice(text, MECHANISMS)


def parse_username(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("the broker user name is empty")
    return value


class ConnectionPolicy:
    """``authorize`` for one connection: the service's decision, the last one allowed remembered while the rules,
    the identity and the operation stay the same objects and values (a publish loop decides once)."""

    __slots__ = ("service", "session", "last")

    def __init__(self, service: AmqpProxyService, session: LiveSession) -> None:
        self.service = service
        self.session = session
        self.last: tuple[object, object, str, dict[str, str | None]] | None = None

    def __call__(self, operation: str, fields: dict[str, str | None]) -> bool:
        service, session, last = self.service, self.session, self.last
        if (
            last is not None
            and last[0] is service.rules
            and last[1] is session.identity
            and last[2] == operation
            and last[3] == fields
        ):
            return True
        allowed = service.authorize(session, operation, fields)
        if allowed:
            self.last = (service.rules, session.identity, operation, fields)
        return allowed


class AmqpProxyService(ProxyService):
    TYPE = ServiceType(
        name="amqp.proxy",
        accept=("ws", "wss"),
        connect=(1, 1),
        connect_schemes=("tcp", "ssl", "tls"),
        properties={
            "maximum.pending.bytes": Property("?", parse_size),
            "connect.strategy": Property("?", parse_connect_strategy),
            "virtual.host": Property("?", parse_virtual_host),
            "service.domain": Property("?", str),  # Kaazing's: the gateway's domain for its legacy bridges
            "encryption.key.alias": Property("?", str, warning=ENCRYPTION_KEY_ALIAS),
            "amqp.username": Property("?", parse_username),
            "amqp.password-file": Property("?", read_password, file=True),
            "amqp.user-id": Property("?", parse_user_id),
            "amqp.mechanism": Property("?", parse_mechanism),
        },
        rules=RuleSchema(
            operations=OPERATIONS,
            separators={"exchange": ".", "queue": ".", "routing-key": "."},
        ),
        descriptors_per_connection=2,
    )
    lean_backend = False  # the guard reads the broker's stream through TcpBackend
    handshake_timeout = HANDSHAKE_TIMEOUT

    def __init__(self, config: Service, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.login = self.broker_login(config)
        self.user_id_mode: str = config.setting("amqp.user-id", "principal")

    def broker_login(self, config: Service) -> Login:
        """The gateway's broker account; without one, RabbitMQ's guest (loopback only), said at start."""
        username = config.setting("amqp.username")
        password = config.setting("amqp.password-file")
        path = f"service[{config.name}]/properties"
        vhost = config.setting("virtual.host", "/")
        if config.setting("amqp.mechanism") == "EXTERNAL":
            if username is not None or password is not None:
                raise ConfigError(
                    f"{path}/amqp.mechanism",
                    "EXTERNAL logs in by certificate: remove amqp.username and amqp.password-file",
                )
            if not self.uri.secure or not config.connect_options.tls.client_certificate:
                raise ConfigError(
                    f"{path}/amqp.mechanism",
                    "EXTERNAL needs connect ssl://host:port and connect-options ssl.client-certificate (the alias "
                    "of the gateway's key in security/keystore)",
                )
            return Login("", "", vhost, "EXTERNAL")
        if (username is None) != (password is None):
            missing = "amqp.password-file" if password is None else "amqp.username"
            raise ConfigError(f"{path}/{missing}", "amqp.username and amqp.password-file go together")
        if username is None:
            log.warning(
                "service[%s]: no amqp.username: logging in to the broker as %s (RabbitMQ accepts it from loopback "
                "only); set amqp.username and amqp.password-file",
                config.name,
                DEFAULT_LOGIN[0],
            )
            username, password = DEFAULT_LOGIN
        return Login(username, str(password), vhost)

    async def before_upgrade(self, handshake: Handshake) -> tuple[tuple[str, ...], object]:
        _, prepared = await super().before_upgrade(handshake)
        offered = offered_subprotocols(handshake.header("Sec-WebSocket-Protocol"))
        return ((SUBPROTOCOL,) if SUBPROTOCOL in offered else ()), prepared

    # -- policy, read at every operation --------------------------------------------------------

    def authorize(self, session: LiveSession, operation: str, fields: dict[str, str | None]) -> bool:
        """The service's rules for the connection's current identity; a field the gateway cannot know yet
        (a queue named by AMQP's empty-name shortcut before its Declare-Ok) is refused."""
        rules = self.rules
        if rules.open:
            return True
        if any(value is None for value in fields.values()):
            decision = Decision(False)
        else:
            decision = rules.decide(session.identity, operation, fields)  # type: ignore[arg-type]
        if decision.allowed:
            return True
        self.refused(session, operation, decision, **{k.replace("-", "_"): v or "" for k, v in fields.items()})
        return False

    def user_id(self, session: LiveSession) -> str | None:
        mode = self.user_id_mode
        if mode == "keep":
            return KEEP
        identity = session.identity
        if mode == "principal" and identity is not None and identity.user:
            return identity.user
        return None

    # -- the connection -------------------------------------------------------------------------

    async def serve(self, session: LiveSession, channel: Channel) -> None:
        prepared = session.context
        first: Data | None = None
        if self.deferred:
            try:
                first = await asyncio.wait_for(channel.receive(), self.handshake_timeout)
            except TimeoutError:
                await channel.close(CloseCode.POLICY_VIOLATION, "AMQP handshake timed out")
                return
            if first is None:
                return
            try:
                prepared = await self.open_backend()
            except BackendError as exc:
                prepared = exc
        if isinstance(prepared, BackendError):
            await self.refuse(session, channel, prepared)
            return
        assert isinstance(prepared, TcpBackend)
        backend: Backend = prepared
        guard = AmqpGuard(
            self.login,
            ConnectionPolicy(self, session),
            lambda: self.user_id(session),
            lambda: (self.rules, session.identity),
        )
        transport, liveness = backend.transport, self.liveness
        watched = liveness.watch(transport) if liveness is not None and transport is not None else -1
        try:
            await self.relay_amqp(session, channel, backend, guard, first)
        finally:
            await backend.close()
            if self.liveness is not None and transport is not None:
                self.liveness.forget(watched, transport)

    async def relay_amqp(
        self, session: LiveSession, channel: Channel, backend: Backend, guard: AmqpGuard, first: Data | None
    ) -> None:
        up = asyncio.create_task(self.client_to_broker(channel, backend, guard, first))
        down = asyncio.create_task(self.broker_to_client(session, channel, backend, guard))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
            # A side closing the client finishes its close handshake (the other side's receive ended with it).
            if down.done() and not up.done() or up.done() and not down.done() and guard.closing_client:
                await asyncio.wait((up, down), timeout=CLOSE_GRACE, return_when=asyncio.ALL_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        if up.done() and not up.cancelled() and isinstance(up.exception(), OSError):
            log.warning("service[%s]: broker %s write failed: %s", self.name, self.uri, up.exception())
            await channel.close(CloseCode.INTERNAL_ERROR, "back end connection lost")

    async def client_to_broker(self, channel: Channel, backend: Backend, guard: AmqpGuard, first: Data | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.handshake_timeout
        data = first
        while True:
            if data is None:
                if guard.running:
                    data = await channel.receive()
                else:
                    try:
                        data = await asyncio.wait_for(channel.receive(), max(0.0, deadline - loop.time()))
                    except TimeoutError:
                        await channel.close(CloseCode.POLICY_VIOLATION, "AMQP handshake timed out")
                        return
                if data is None:
                    return
            if isinstance(data, str):
                await channel.close(CloseCode.UNSUPPORTED_DATA, "AMQP frames are binary")
                return
            try:
                guard.from_client(data)
            except AmqpClose as exc:
                await self.violation(channel, backend, guard, exc)
                return
            except BadProtocolHeader:
                await channel.send(PROTOCOL_HEADER)  # the spec's answer: the protocol the server speaks
                await channel.close(CloseCode.PROTOCOL_ERROR, "not AMQP 0-9-1")
                return
            except ClientDone:
                await channel.send(marshal(commands.Connection.CloseOk(), 0))
                await channel.close(CloseCode.NORMAL, "")
                return
            data = None
            if guard.to_client:
                await channel.send(guard.take_to_client())
            if guard.to_broker:
                await backend.send(guard.take_to_broker())
            if guard.finished:  # the client answered the broker's Connection.Close
                await channel.close(CloseCode.NORMAL, "")
                return

    async def violation(self, channel: Channel, backend: Backend, guard: AmqpGuard, exc: AmqpClose) -> None:
        """What was accepted before the violation still goes out; then Connection.Close and the WebSocket close."""
        if guard.to_broker:
            await backend.send(guard.take_to_broker())
        out = guard.take_to_client() + exc.frame()
        try:
            await channel.send(out)
        except OSError:
            return
        policy = exc.code in (ACCESS_REFUSED, NOT_ALLOWED)
        await channel.close(
            CloseCode.POLICY_VIOLATION if policy else CloseCode.PROTOCOL_ERROR, f"AMQP {exc.code}"[:120]
        )

    async def broker_to_client(
        self, session: LiveSession, channel: Channel, backend: Backend, guard: AmqpGuard
    ) -> None:
        receive, send = backend.receive, channel.send
        while True:
            try:
                data = await receive()
            except (OSError, asyncio.IncompleteReadError) as exc:
                if guard.logging_in:
                    self.login_failed(guard.login_refused or f"connection lost: {exc}")
                else:
                    log.warning("service[%s]: broker %s lost: %s", self.name, self.uri, exc)
                await self.close_client(guard, channel, CloseCode.INTERNAL_ERROR, "back end connection lost")
                return
            if data is None:
                if guard.logging_in:  # the broker hung up on the gateway's login (with a Close first, or not)
                    self.login_failed(guard.login_refused or "connection closed")
                    await self.close_client(guard, channel, CloseCode.INTERNAL_ERROR, "back end unavailable")
                else:
                    await self.close_client(guard, channel, CloseCode.NORMAL, "back end closed")
                return
            try:
                guard.from_broker(data)  # type: ignore[arg-type]
            except BrokerFailure as exc:
                log.warning("service[%s]: broker %s: %s", self.name, self.uri, exc)
                await self.close_client(guard, channel, CloseCode.INTERNAL_ERROR, "back end protocol error")
                return
            if guard.to_broker:
                await backend.send(guard.take_to_broker())
            if guard.to_client:
                try:
                    await send(guard.take_to_client())
                except OSError as exc:
                    self.lost(session, exc)
                    return
            if guard.finished:  # the broker answered the client's Connection.Close
                await self.close_client(guard, channel, CloseCode.NORMAL, "")
                return

    @staticmethod
    async def close_client(guard: AmqpGuard, channel: Channel, code: int, reason: str) -> None:
        """The broker's side closes the client: the relay lets this close handshake finish."""
        guard.closing_client = True
        await channel.close(code, reason)

    def login_failed(self, reply: str) -> None:
        """The broker closed the connection during the handshake: the gateway's account, not the client, is wrong."""
        if self.runtime.metrics is not None:
            self.runtime.metrics.backend_failures.labels(self.name).inc()
        log.warning(
            "service[%s]: broker %s closed the connection during the gateway's login as %s: %s",
            self.name,
            self.uri,
            self.login.username or "the client certificate",
            reply,
        )
