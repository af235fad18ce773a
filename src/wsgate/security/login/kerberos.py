"""``kerberos5`` and ``gss`` login modules: Kerberos tickets in SPNEGO tokens (``Authorization: Negotiate``).

Kaazing's protected gateway chains ``kerberos5`` (the JDK's Krb5LoginModule: the gateway's service
key from a keytab) and ``gss`` (validates the client's service ticket). Here ``kerberos5`` does both:
it holds acceptor credentials for ``principal`` from ``keyTab`` (checked when the realm is built) and
validates each token with python-gssapi; ``gss`` after it only confirms that a ``kerberos5`` module
validated this request, so a Kaazing chain loads as is (and ``gss`` alone can never let anyone in).
Kaazing's options ``useKeyTab``, ``keyTab``, ``principal``, ``isInitiator`` (must be false: the gateway
accepts tickets), ``storeKey``, ``doNotPrompt``, ``debug`` and ``refreshKrb5Config`` are taken.

Beyond Kaazing:

- ``realms``: the client realms accepted (default: the service principal's realm). A ticket from a
  realm the KDC trusts by a cross-realm key is still refused unless listed.
- ``roles`` (every authenticated principal) and ``role.NAME`` (principals, ``*@REALM`` for a whole
  realm): roles; a following ``ldap`` module with ``authenticate: chain`` may add directory groups.
- ``replay-cache``: the folder of the replay cache file (MIT ``file2``, shared by workers; one file per
  canonical service principal). Default: a private folder of this user under the system temporary
  folder, never the machine-wide default. The file is the protection against replays; each module also
  remembers the digests of the first tokens it saw for the clock-skew window, which refuses a byte-exact
  replay before any decryption (a re-wrapped ticket is left to the file).

SPNEGO may need more than one round: the GSS context waits in the realm's round store under the
client's connection (``LoginAttempt.rounds``) and the client gets ``Challenged`` with the server's
token. The last server token (mutual authentication) goes back on the 101 (``Succeeded.response``).
A connection lives no longer than the ticket (``expires_at``). Token validation (decryption, the replay
cache file) runs on the realm's verifier, off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
import tempfile
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config.values import parse_csv, parse_enabled
from ...errors import ConfigError
from .base import Busy, Challenged, Failed, LoginAttempt, LoginModuleType, Outcome, Succeeded, option, resolve

KAAZING_OPTIONS = (
    "useKeyTab",
    "keyTab",
    "principal",
    "isInitiator",
    "storeKey",
    "doNotPrompt",
    "debug",
    "refreshKrb5Config",
)
REPLAY_WINDOW = 300.0  # seconds: Kerberos' default clock skew, beyond which an authenticator is refused anyway
REPLAY_LIMIT = 100_000  # token digests remembered per module (about 10 MB at the bound)
SPNEGO = "1.3.6.1.5.5.2"
# Shared-state key under which kerberos5 leaves the principal it validated for gss: not a name a module
# of the operator's would write by chance (gss must never take another module's word for a ticket).
VALIDATED = f"wsgate.kerberos5.validated.{secrets.token_hex(8)}"


def _gssapi() -> Any:
    """python-gssapi, imported when a Kerberos realm is built (an optional dependency)."""
    try:
        import gssapi
    except ImportError:
        return None
    return gssapi


@dataclass(frozen=True)
class _Continue:
    """Another round: the GSS context to keep and the server token for the 401."""

    context: Any
    token: bytes


@dataclass(frozen=True)
class _Done:
    principal: str
    lifetime: int | None
    token: bytes | None


class ReplayGuard:
    """Digests of tokens already presented, each for ``window`` seconds, at most ``limit`` of them."""

    def __init__(self, window: float = REPLAY_WINDOW, limit: int = REPLAY_LIMIT) -> None:
        self.window = window
        self.limit = limit
        self.seen: OrderedDict[bytes, float] = OrderedDict()

    def first(self, token: bytes, now: float | None = None) -> bool:
        """True the first time ``token`` is seen inside the window (and remember it)."""
        now = time.monotonic() if now is None else now
        while self.seen:
            oldest, until = next(iter(self.seen.items()))
            if until > now and len(self.seen) < self.limit:
                break
            del self.seen[oldest]
        digest = hashlib.sha256(token).digest()
        if digest in self.seen:
            return False
        self.seen[digest] = now + self.window
        return True

    def forget(self, token: bytes) -> None:
        """``token`` authenticated no one (yet): the same bytes may come again without being a replay."""
        self.seen.pop(hashlib.sha256(token).digest(), None)


def private_folder(folder: Path, element: str) -> Path:
    """``folder``, created if missing, owned by this user and closed to others (no symlink games)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError as exc:
        raise ConfigError(element, f"cannot create the replay cache folder {str(folder)!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(
            element,
            f"{str(folder)!r} must be a folder owned by this user and closed to others (chmod 700): "
            "whoever can write the replay cache can make replayed tickets pass",
        )
    return folder


class Kerberos5LoginModule:
    TYPE = LoginModuleType(
        name="kerberos5",
        options=(*KAAZING_OPTIONS, "realms", "roles", "replay-cache"),
        option_prefixes=("role.",),
        strict=True,
        scheme="negotiate",
    )

    def __init__(self, options: Mapping[str, str], path: str, base_dir: Path) -> None:
        gssapi = _gssapi()
        if gssapi is None:
            raise ConfigError(
                f"{path}/type",
                "the kerberos5 login module needs python-gssapi: pip install 'wsgate[kerberos]' "
                "(it builds against MIT Kerberos: apt install libkrb5-dev gcc)",
            )
        self.gssapi = gssapi
        if option(options, "isInitiator", "false", path, parse_enabled):
            raise ConfigError(
                f"{path}/options/isInitiator", "must be false: the gateway accepts tickets, it does not request them"
            )
        principal = options.get("principal")
        if not principal:
            raise ConfigError(
                f"{path}/options/principal", "is required: the gateway's service principal, HTTP/host@REALM"
            )
        self.roles = frozenset(parse_csv(options.get("roles", "")))
        self.role_rules = {
            name[len("role.") :]: frozenset(parse_csv(value))
            for name, value in options.items()
            if name.startswith("role.")
        }
        store: dict[str, str] = {}
        keytab_element = f"{path}/options/keyTab"
        if option(options, "useKeyTab", "true", path, parse_enabled) and "keyTab" in options:
            keytab = resolve(base_dir, options["keyTab"])
            if not os.access(keytab, os.R_OK):
                raise ConfigError(keytab_element, f"cannot read the keytab {str(keytab)!r}")
            store["keytab"] = f"FILE:{keytab}"
        folder_option = options.get("replay-cache")
        folder = (
            resolve(base_dir, folder_option)
            if folder_option
            else Path(tempfile.gettempdir()) / f"wsgate-rcache-{os.getuid()}"
        )
        folder = private_folder(folder, f"{path}/options/replay-cache")
        try:
            name = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
            self.principal = str(name.canonicalize(gssapi.MechType.kerberos))
            # One file per service principal, named after its canonical form: two realms that spell it
            # differently (``HTTP/host`` and ``HTTP/host@REALM``) accept the same tickets, so they must
            # share one replay cache, or a token used in one realm passes again in the other.
            digest = hashlib.sha256(self.principal.encode()).hexdigest()[:16]
            store["rcache"] = f"file2:{folder / (digest + '.rcache2')}"
            # Kerberos only, bare or inside SPNEGO: no IAKERB (the gateway would relay KDC traffic for the
            # client), no NTLM where a gss-ntlmssp plugin is installed.
            spnego = gssapi.OID.from_int_seq(SPNEGO)
            self.credentials = gssapi.Credentials(
                name=name, usage="accept", store=store, mechs=[spnego, gssapi.MechType.kerberos]
            )
            gssapi.raw.set_neg_mechs(self.credentials, [gssapi.MechType.kerberos])
        except gssapi.exceptions.GSSError as exc:
            raise ConfigError(
                keytab_element if "keytab" in store else f"{path}/options/principal",
                f"no key for {principal!r} ({_message(exc)}): export it with kadmin 'ktadd -k FILE {principal}'",
            ) from None
        own_realm = self.principal.rpartition("@")[2]
        self.realms = frozenset(parse_csv(options.get("realms", own_realm)))
        self.replays = ReplayGuard()
        self.rounds_key = f"kerberos5@{id(self):x}"  # this module's GSS contexts in the realm's round store

    async def login(self, attempt: LoginAttempt) -> Outcome:
        credentials = attempt.credentials
        if credentials.scheme != "negotiate" or not credentials.parameter:
            return Failed("no Negotiate token presented")
        try:
            token = base64.b64decode(credentials.parameter, validate=True)
        except (binascii.Error, ValueError):
            return Failed("Negotiate token is not base64")
        rounds = attempt.rounds.of(self.rounds_key) if attempt.rounds is not None else None
        context = await rounds.load() if rounds is not None else None
        if context is None and not self.replays.first(token):
            return Failed("Negotiate token replayed")
        step = await attempt.verifier.run(self._step, context, token)
        if isinstance(step, Busy):
            # Nothing was validated: the 503's Retry-After invites the same request again, which must find
            # its token unspent and the round it continues still waiting.
            if context is None:
                self.replays.forget(token)
            elif rounds is not None:
                await rounds.keep(context)
            return step
        if isinstance(step, Failed):
            return step
        if isinstance(step, _Continue):
            if context is None:
                # A first round that goes on carries no authenticator of its own (a NegTokenInit offering
                # another mechanism first: the same bytes for every such client), or one the replay cache
                # file has just recorded: remembering its bytes would only refuse the next client.
                self.replays.forget(token)
            if rounds is None:
                return Failed("SPNEGO needs another round, and this transport cannot keep one")
            await rounds.keep(step.context)
            return Challenged("SPNEGO continues", base64.b64encode(step.token).decode())
        return self._succeeded(step, attempt)

    def _step(self, context: Any, token: bytes) -> _Continue | _Done | Failed:
        """One GSS accept step (blocking: decryption and the replay cache file)."""
        gssapi = self.gssapi
        try:
            if context is None:
                context = gssapi.SecurityContext(creds=self.credentials, usage="accept")
            answer = context.step(token)
            if not context.complete:
                return _Continue(context, answer or b"")
            if context.mech != gssapi.MechType.kerberos:
                return Failed(f"Negotiate token of mechanism {context.mech}, not Kerberos")
            initiator, lifetime = bytes(context.initiator_name), context.lifetime
        except gssapi.exceptions.GSSError as exc:
            return Failed(f"Negotiate token refused: {_message(exc)}")
        try:
            return _Done(initiator.decode("utf-8"), lifetime, answer)
        except UnicodeDecodeError:
            # Kerberos names are bytes: a KDC (one of a trusted foreign realm, say) may issue one that is not
            # UTF-8. It matches no configured name: refused like any other ticket, not raised (503, traceback).
            return Failed(f"principal name is not UTF-8: {initiator.decode('utf-8', 'backslashreplace')!r}")

    def _succeeded(self, done: _Done, attempt: LoginAttempt) -> Outcome:
        principal = done.principal
        realm = principal.rpartition("@")[2]
        if realm not in self.realms:
            return Failed(f"principal {principal!r} is from a realm this module does not accept")
        roles = self.roles | {
            role for role, members in self.role_rules.items() if principal in members or f"*@{realm}" in members
        }
        if done.lifetime is not None and done.lifetime <= 0:
            return Failed(f"ticket of {principal!r} has no lifetime left")
        attempt.shared.setdefault("name", principal)  # only once it succeeds: gss and chained modules trust it
        attempt.shared[VALIDATED] = principal
        expires_at = time.time() + done.lifetime if done.lifetime is not None else None
        response = base64.b64encode(done.token).decode() if done.token else None
        return Succeeded(principal, frozenset(roles), expires_at, response=response)


class GssLoginModule:
    """Kaazing's second step: succeeds only for a request a ``kerberos5`` module before it validated."""

    TYPE = LoginModuleType(name="gss", strict=True, scheme="negotiate", after="kerberos5")

    def __init__(self, options: Mapping[str, str], path: str, base_dir: Path) -> None:
        pass

    async def login(self, attempt: LoginAttempt) -> Outcome:
        principal = attempt.shared.get(VALIDATED)
        if principal is None:
            return Failed("no Kerberos ticket validated by a kerberos5 module before gss")
        return Succeeded(principal)


def _message(exc: Exception) -> str:
    """A GSS error's own words, one line (its minor code says what Kerberos found: replay, skew, no key)."""
    text = " ".join(str(exc).split())
    return text.rpartition("Minor")[2].strip(" ():0123456789") or text
