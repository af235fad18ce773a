"""``ldap`` login module: search the user, bind as the user, roles from groups (ldap3).

Kaazing's options are kept: ``userProvider`` (``ldap[s]://host:port/<base DN>``),
``userFilter`` with ``{USERNAME}`` (escaped: no LDAP filter injection) and
``authzIdentity`` (``{attribute}``: the user name the gateway uses). ldap3 is
blocking, so each login runs in a worker thread of the module's pool (``pool-size``),
admitted by the realm's verifier (bounded); service connections for the searches
are pooled. An empty password is refused before any bind (no unauthenticated binds).
Whether a user exists must not show in how long a refusal takes: a name no entry (or more
than one) matches is followed by the same bind a wrong password gets, as a DN that names no
entry, and refused whatever it answers.

The user name is the directory's, never what the client typed: without
``authzIdentity`` it is the stored value of the attribute ``userFilter`` matches
``{USERNAME}`` against (``uid`` in ``(uid={USERNAME})``), fetched in the same
search, so ``ALICE`` and ``alice `` both log in as ``alice``. When the filter
does not name one such attribute, or the entry holds several values of it, the
user name is the entry's DN.

With ``authenticate: chain`` the module authenticates nobody: an earlier module of the chain has
(``kerberos5``, ``jwt``, ``certificate``), and this one looks up the entry of the name that module left
in the JAAS shared state and grants the roles of its groups, never binding as the user. No earlier
success, no name: refused. ``strip-realm`` looks up ``alice`` for the Kerberos principal
``alice@EXAMPLE.COM`` (for ``(uid={USERNAME})``; Active Directory's ``userPrincipalName`` keeps it).

``Unavailable`` (503) means the directory could not answer: unreachable, timing
out, or answering busy/unavailable/other. Whatever the client's input causes
(characters LDAP cannot carry, a server refusing the value's syntax, wrong
credentials) is ``Failed``: bad input must never look like an outage.
"""

from __future__ import annotations

import math
import queue
import re
import secrets
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.protocol.sasl.sasl import validate_simple_password
from ldap3.utils.conv import escape_filter_chars

from ...config.values import parse_choice, parse_count, parse_duration, parse_enabled
from ...errors import ConfigError
from .base import (
    Failed,
    LoginAttempt,
    LoginModuleType,
    Outcome,
    Succeeded,
    Unavailable,
    option,
    resolve,
    user_and_password,
)

_OUTAGE = (
    ldap_errors.LDAPCommunicationError,
    ldap_errors.LDAPSocketOpenError,
    ldap_errors.LDAPStartTLSError,
    ldap_errors.LDAPSessionTerminatedByServerError,
    ldap_errors.LDAPResponseTimeoutError,
    OSError,
)
# Result codes that say the server is in trouble, whatever was asked: operationsError,
# timeLimitExceeded, adminLimitExceeded, busy, unavailable, loopDetect, other.
_SERVER_TROUBLE = frozenset({1, 3, 11, 51, 52, 54, 80})
# Search results the client's value causes: sizeLimitExceeded (it matched many),
# inappropriateMatching, invalidAttributeSyntax, invalidDNSyntax.
_INPUT_RESULTS = frozenset({4, 18, 21, 34})
# ldap3 refusing to encode what the client sent, before anything reaches the server.
_INPUT_ERRORS = (
    UnicodeError,
    ldap_errors.LDAPSASLPrepError,
    ldap_errors.LDAPInvalidFilterError,
    ldap_errors.LDAPInvalidValueError,
    ldap_errors.LDAPInvalidDnError,
    ldap_errors.LDAPPasswordIsMandatoryError,
)
_ASSERTION = re.compile(r"\(([^()=~<>:]+)(=|~=|>=|<=|:[^()]*?:=)([^()]*)\)")
_ATTRIBUTE_REF = re.compile(r"\{([A-Za-z][A-Za-z0-9-]*)\}")
OPTIONS = (
    "userProvider",
    "userFilter",
    "authzIdentity",
    "bind-dn",
    "bind-password-file",
    "group-base",
    "group-filter",
    "group-attribute",
    "starttls",
    "ca-file",
    "timeout",
    "pool-size",
    "authenticate",
    "strip-realm",
)


class InputRefused(Exception):
    """The server refused a value the client typed (e.g. invalidAttributeSyntax): a failed login."""


def name_attribute(user_filter: str) -> str | None:
    """The attribute ``userFilter`` compares ``{USERNAME}`` with for equality, if exactly one does."""
    uses = [m for m in _ASSERTION.finditer(user_filter) if "{USERNAME}" in m.group(3)]
    if len(uses) != 1 or uses[0].group(2) != "=" or uses[0].group(3) != "{USERNAME}":
        return None
    attribute = uses[0].group(1).strip()
    return attribute if re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", attribute) else None


class LdapLoginModule:
    TYPE = LoginModuleType(name="ldap", options=OPTIONS, option_prefixes=("role.",), strict=True)

    def __init__(self, options: Mapping[str, str], path: str, base_dir: Path) -> None:
        self.TYPE.check_options(options, path)
        provider = options.get("userProvider")
        if not provider:
            raise ConfigError(
                f"{path}/options/userProvider",
                "is required, e.g. ldap://ldap.example.com:389/ou=people,dc=example,dc=com",
            )
        parts = urlsplit(provider)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ConfigError(
                f"{path}/options/userProvider", f"{provider!r} is not an ldap:// or ldaps:// URL with a host"
            )
        self.base = unquote(parts.path.lstrip("/"))
        # Bound instead of a user that was not found (see the module docstring): a random DN no entry has.
        self.nobody = f"cn=wsgate-nobody-{secrets.token_hex(16)}" + (f",{self.base}" if self.base else "")
        self.user_filter = options.get("userFilter", "(uid={USERNAME})")
        if "{USERNAME}" not in self.user_filter:
            raise ConfigError(f"{path}/options/userFilter", "must contain {USERNAME}, e.g. (uid={USERNAME})")
        self.authz = options.get("authzIdentity")
        self.name_attribute = name_attribute(self.user_filter)
        self.group_base = options.get("group-base")
        self.group_filter = options.get("group-filter", "(member={DN})")
        self.group_attribute = options.get("group-attribute", "cn")
        self.role_map = {name[5:]: value for name, value in options.items() if name.startswith("role.")}
        self.starttls = option(options, "starttls", "false", path, parse_enabled)
        self.chained = option(options, "authenticate", "password", path, _choice("password", "chain")) == "chain"
        self.strip_realm = parse_enabled(option(options, "strip-realm", "false", path, _choice("true", "false")))
        self.timeout = option(options, "timeout", "5s", path, parse_duration)
        self.receive_timeout = max(1, math.ceil(self.timeout))  # ldap3 packs it as whole seconds
        self.bind_dn = options.get("bind-dn")
        self.bind_password = None
        if "bind-password-file" in options:
            try:
                self.bind_password = resolve(base_dir, options["bind-password-file"]).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{path}/options/bind-password-file", f"cannot read it: {exc.strerror}") from None
        tls = None
        if parts.scheme == "ldaps" or self.starttls:
            ca = options.get("ca-file")
            ca_path = str(resolve(base_dir, ca)) if ca else None
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_path)
        self.server_args = {
            "host": parts.hostname,
            "port": parts.port,
            "use_ssl": parts.scheme == "ldaps",
            "tls": tls,
            "get_info": ldap3.NONE,
            "connect_timeout": self.timeout,
        }
        self.address = f"{parts.hostname}:{parts.port or (636 if parts.scheme == 'ldaps' else 389)}"
        size = option(options, "pool-size", "4", path, parse_count)
        self.pool: queue.SimpleQueue[ldap3.Connection] = queue.SimpleQueue()
        self.executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="wsgate-ldap")

    async def login(self, attempt: LoginAttempt) -> Outcome:
        if self.chained:
            return await self._roles_of_earlier_user(attempt)
        found = user_and_password(attempt)
        if isinstance(found, Failed):
            return found
        user, password = found
        if not password:
            return Failed("empty password refused (it would be an unauthenticated bind)")
        try:  # what ldap3 would refuse to send is a refused credential, decided before any thread or server
            user.encode("utf-8")
            validate_simple_password(password)
        except _INPUT_ERRORS as exc:
            return Failed(f"user name or password LDAP cannot carry: {type(exc).__name__}")
        return await attempt.verifier.run(self._login, user, password, attempt.shared, executor=self.executor)

    async def _roles_of_earlier_user(self, attempt: LoginAttempt) -> Outcome:
        """``authenticate: chain``: the roles of the user an earlier module of this chain authenticated."""
        name = attempt.shared.get("name")
        if not name:
            return Failed("no user authenticated by an earlier module to look up")
        if self.strip_realm and "@" in name:
            name = name.rpartition("@")[0]
        try:
            name.encode("utf-8")
        except UnicodeError:
            return Failed("user name LDAP cannot carry")
        return await attempt.verifier.run(self._lookup, name, executor=self.executor)

    # -- blocking part, in a worker thread --------------------------------------------------------

    def _login(self, user: str, password: str, shared: dict[str, str]) -> Outcome:
        return self._guarded(user, lambda: self._bind_user(user, password, shared))

    def _bind_user(self, user: str, password: str, shared: dict[str, str]) -> Outcome:
        found = self._search_user(user)
        if isinstance(found, Failed):
            self._bind_as(self.nobody, password)  # the work of a wrong password: no timing tells who exists
            return found
        dn, attributes = found
        code = self._bind_as(dn, password)
        if code is None or code in _SERVER_TROUBLE:
            return Unavailable(f"LDAP {self.address} could not bind {user!r}: result {code}")
        if code != 0:
            return Failed(f"LDAP bind refused for {user!r}: result {code}")
        roles = self._roles(dn)
        name = self._authz_name(dn, attributes)
        shared.setdefault("name", name)
        return Succeeded(name, roles)

    def _lookup(self, user: str) -> Outcome:
        """The roles of ``user``'s entry, without binding as the user (``authenticate: chain``)."""
        return self._guarded(user, lambda: self._roles_of(user))

    def _roles_of(self, user: str) -> Outcome:
        found = self._search_user(user)
        return found if isinstance(found, Failed) else Succeeded(None, self._roles(found[0]))

    def _guarded(self, user: str, work: Callable[[], Outcome]) -> Outcome:
        """``work()``, with the directory's troubles as ``Unavailable`` and the client's input as ``Failed``."""
        try:
            return work()
        except _OUTAGE as exc:
            return Unavailable(f"LDAP {self.address} unreachable: {type(exc).__name__}")
        except (*_INPUT_ERRORS, InputRefused) as exc:
            return Failed(f"LDAP refused the input for {user!r}: {exc}")
        except ldap_errors.LDAPException as exc:
            return Unavailable(f"LDAP error: {type(exc).__name__}")

    def _search_user(self, user: str) -> tuple[str, dict[str, list[str]]] | Failed:
        search_filter = self.user_filter.replace("{USERNAME}", escape_filter_chars(user))
        attributes = _ATTRIBUTE_REF.findall(self.authz or "")
        if self.name_attribute:
            attributes.append(self.name_attribute)
        entries = self._search(self.base, search_filter, attributes)
        if len(entries) != 1:
            return Failed(f"{len(entries)} LDAP entries match {user!r}")
        return entries[0]

    def _search(self, base: str, search_filter: str, attributes: list[str]) -> list[tuple[str, dict[str, list[str]]]]:
        """Search on a pooled service connection; a pooled one that went stale is replaced once."""
        try:
            return self._search_once(self._service_connection(), base, search_filter, attributes)
        except _OUTAGE:
            return self._search_once(self._service_connection(fresh=True), base, search_filter, attributes)

    def _search_once(
        self, connection: ldap3.Connection, base: str, search_filter: str, attributes: list[str]
    ) -> list[tuple[str, dict[str, list[str]]]]:
        try:
            ok = connection.search(
                base,
                search_filter,
                ldap3.SUBTREE,
                attributes=attributes or ldap3.NO_ATTRIBUTES,
                time_limit=int(self.timeout) or 1,
            )
            code = (connection.result or {}).get("result")
            if not ok and code not in (0, 32, *_INPUT_RESULTS):
                raise ldap_errors.LDAPCommunicationError((connection.result or {}).get("description", "search failed"))
            found = [
                (
                    e["dn"],
                    {k: [str(v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in e["attributes"].items()},
                )
                for e in connection.response or []
                if e.get("type") == "searchResEntry"
            ]
        except BaseException:
            _discard(connection)
            raise
        self.pool.put(connection)
        if not ok and code in _INPUT_RESULTS:
            raise InputRefused(f"search answered {connection.result.get('description')}")
        return found

    def _service_connection(self, fresh: bool = False) -> ldap3.Connection:
        while not fresh:
            try:
                return self.pool.get_nowait()
            except queue.Empty:
                break
        connection = ldap3.Connection(
            self._server(),
            self.bind_dn,
            self.bind_password,
            receive_timeout=self.receive_timeout,
            raise_exceptions=False,
        )
        try:
            self._open(connection)
            if not connection.bind():
                raise ldap_errors.LDAPBindError(f"service bind as {self.bind_dn!r} refused")
        except BaseException:
            _discard(connection)
            raise
        return connection

    async def close(self) -> None:
        """Unbind the pooled service connections (gateway shutdown)."""
        while True:
            try:
                _discard(self.pool.get_nowait())
            except queue.Empty:
                break
        self.executor.shutdown(wait=False)

    def _server(self) -> ldap3.Server:
        """A new Server each time: ldap3 remembers a failed address for minutes, we must not."""
        return ldap3.Server(**self.server_args)

    def _open(self, connection: ldap3.Connection) -> None:
        connection.open()
        if self.starttls and not connection.server.ssl and not connection.start_tls():
            raise ldap_errors.LDAPStartTLSError("StartTLS refused")

    def _bind_as(self, dn: str, password: str) -> int | None:
        """The bind's result code (0: the password is right), ``None`` if the server gave none."""
        connection = ldap3.Connection(
            self._server(), dn, password, receive_timeout=self.receive_timeout, raise_exceptions=False
        )
        try:
            self._open(connection)
            if connection.bind():
                return 0
            code = (connection.result or {}).get("result")
            return code if isinstance(code, int) else None
        finally:
            _discard(connection)

    def _roles(self, dn: str) -> frozenset[str]:
        if not self.group_base:
            return frozenset()
        group_filter = self.group_filter.replace("{DN}", escape_filter_chars(dn))
        groups = self._search(self.group_base, group_filter, [self.group_attribute])
        names = {v for _, attributes in groups for v in attributes.get(self.group_attribute, [])}
        if self.role_map:
            return frozenset(role for role, group in self.role_map.items() if group in names)
        return frozenset(names)

    def _authz_name(self, dn: str, attributes: dict[str, list[str]]) -> str:
        """``authzIdentity`` filled in, else the stored value the filter matched, else the DN.

        ``authzIdentity`` is used only when the entry holds exactly one value of every attribute it names.
        """
        by_name = {name.lower(): values for name, values in attributes.items()}
        canonical = dn
        if self.name_attribute:
            stored = by_name.get(self.name_attribute.lower(), [])
            canonical = stored[0] if len(stored) == 1 and stored[0] else dn
        if not self.authz:
            return canonical
        values = {name.lower(): by_name.get(name.lower(), []) for name in _ATTRIBUTE_REF.findall(self.authz)}
        if any(len(v) != 1 or not v[0] for v in values.values()):
            return canonical  # "emp-" for everyone without employeeNumber would be a name users share
        return _ATTRIBUTE_REF.sub(lambda m: values[m.group(1).lower()][0], self.authz) or canonical


def _choice(*choices: str) -> Callable[[str], str]:
    return lambda text: parse_choice(text, choices)


def _discard(connection: ldap3.Connection) -> None:
    """Unbind and close, ignoring errors: the connection may be broken or never opened
    (ldap3 keeps the socket of a failed connect on the connection without closing it)."""
    try:
        connection.unbind()
    except (ldap_errors.LDAPException, OSError):
        pass
    finally:
        if connection.socket is not None:
            connection.socket.close()
