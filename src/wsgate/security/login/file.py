"""``file`` login module: users, passwords and roles from Kaazing's ``jaas-config.xml``.

Passwords may be stored as argon2 (``$argon2id$…``) or bcrypt (``$2b$…``) hashes
instead of plain text. Whether a user exists must not show in how long a refusal
takes, so every attempt costs the same work whoever it names: the file's hashes
are grouped into profiles (plain; bcrypt per cost; argon2 per variant and
parameters) and each attempt performs exactly one verification per profile
present, against the user's own hash for the user's profile and against a dummy
of the same profile for the others (and for every profile when the user is
unknown). Plain passwords are compared as SHA-256 digests in constant time.

Hash checks run on the realm's verifier (off the event loop, bounded); a file of
plain passwords only is checked in place (a digest comparison costs microseconds).
Any password, even one no library would accept (NUL, lone surrogates, bcrypt's
73rd byte), is simply a wrong password.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import bcrypt
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError
from lxml import etree

from ...errors import ConfigError
from .base import Failed, LoginAttempt, LoginModuleType, Outcome, Succeeded, resolve, user_and_password

JAAS_NAMESPACE = "http://xmlns.kaazing.com/jaas-config/centurion"
DUMMY_PASSWORD = b"wsgate-dummy-password"
_ARGON2 = PasswordHasher()
Profile = tuple[str | int, ...]  # ("plain",), ("bcrypt", cost), ("argon2", variant, m, t, p, salt, hash length)
PLAIN: Profile = ("plain",)


@dataclass(frozen=True)
class User:
    password: str
    roles: frozenset[str]
    profile: Profile = PLAIN


def profile_of(stored: str) -> Profile | None:
    """The work verifying against ``stored`` costs; ``None`` for a hash that cannot be parsed."""
    if stored.startswith("$argon2"):
        try:
            p = extract_parameters(stored)
        except InvalidHashError:
            return None
        return ("argon2", p.type.name, p.memory_cost, p.time_cost, p.parallelism, p.salt_len, p.hash_len)
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        cost = stored[4:6]
        return ("bcrypt", int(cost)) if cost.isdigit() and len(stored) == 60 else None
    return PLAIN


@cache
def dummy_for(profile: Profile) -> str:
    """A hash of the same profile as the file's, for attempts that must not reveal who exists."""
    if profile[0] == "argon2":
        _, variant, memory, time_cost, lanes, salt_len, hash_len = profile
        hasher = PasswordHasher(
            time_cost=int(time_cost),
            memory_cost=int(memory),
            parallelism=int(lanes),
            hash_len=int(hash_len),
            salt_len=int(salt_len),
            type=Type[str(variant)],
        )
        return hasher.hash(DUMMY_PASSWORD)
    if profile[0] == "bcrypt":
        return bcrypt.hashpw(DUMMY_PASSWORD, bcrypt.gensalt(rounds=int(profile[1]))).decode()
    return DUMMY_PASSWORD.decode()


def verify(kind: str, stored: str, given: bytes) -> bool:
    """One verification of ``kind`` (a profile's first element); never raises for any input."""
    if kind == "argon2":
        try:
            return _ARGON2.verify(stored, given)
        except (VerificationError, InvalidHashError):
            return False
    if kind == "bcrypt":
        try:
            return bcrypt.checkpw(given, stored.encode())
        except ValueError:  # longer than 72 bytes: refused by bcrypt itself, as for every user
            return False
    return hmac.compare_digest(hashlib.sha256(stored.encode()).digest(), hashlib.sha256(given).digest())


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi's defaults) to store as a user's ``<password>``."""
    return _ARGON2.hash(password)


def load_users(path: Path, element: str) -> dict[str, User]:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True)
    try:
        root = etree.fromstring(path.read_bytes(), parser)
    except OSError as exc:
        raise ConfigError(element, f"cannot read {str(path)!r}: {exc.strerror}") from None
    except etree.XMLSyntaxError as exc:
        raise ConfigError(element, f"{str(path)!r} is not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]
        raise ConfigError(element, f"{str(path)!r}: DOCTYPE declarations are not allowed")
    users: dict[str, User] = {}
    for user in root.iter(f"{{{JAAS_NAMESPACE}}}user", "user"):
        fields = {etree.QName(c).localname: (c.text or "").strip() for c in user if isinstance(c.tag, str)}
        roles = frozenset(
            (c.text or "").strip() for c in user if isinstance(c.tag, str) and etree.QName(c).localname == "role-name"
        )
        if not fields.get("name") or "password" not in fields:
            raise ConfigError(element, f"{str(path)!r} line {user.sourceline}: a <user> needs <name> and <password>")
        profile = profile_of(fields["password"])
        if profile is None:
            raise ConfigError(
                element,
                f"{str(path)!r} line {user.sourceline}: the password of {fields['name']!r} looks like an argon2 "
                "or bcrypt hash but cannot be parsed; store a complete hash (or a plain password)",
            )
        if fields["name"] in users:  # which of the two would count is a guess: refuse it
            raise ConfigError(
                element, f"{str(path)!r} line {user.sourceline}: user {fields['name']!r} is defined twice"
            )
        users[fields["name"]] = User(fields["password"], roles, profile)
    return users


class FileLoginModule:
    TYPE = LoginModuleType(name="file", options=("file",))

    def __init__(self, options: Mapping[str, str], path: str, base_dir: Path) -> None:
        if "file" not in options:
            raise ConfigError(f"{path}/options/file", "is required: the jaas-config.xml with users and roles")
        self.users = load_users(resolve(base_dir, options["file"]), f"{path}/options/file")
        profiles = sorted({u.profile for u in self.users.values()} or {PLAIN}, key=repr)
        self.dummies = tuple((profile, dummy_for(profile)) for profile in profiles)
        self.hashed = any(profile != PLAIN for profile in profiles)

    async def login(self, attempt: LoginAttempt) -> Outcome:
        found = user_and_password(attempt)
        if isinstance(found, Failed):
            return found
        user_name, password = found
        user = self.users.get(user_name)
        given = password.encode("utf-8", "surrogatepass")  # never raises: a strange password is a wrong one
        if self.hashed:
            checked = await attempt.verifier.run(self.check, user, given)
            if not isinstance(checked, bool):
                return checked  # Busy
        else:
            checked = self.check(user, given)
        if not checked or user is None:
            return Failed(f"bad user name or password for {user_name!r}")
        attempt.shared.setdefault("name", user_name)
        return Succeeded(user_name, user.roles)

    def check(self, user: User | None, given: bytes) -> bool:
        """Exactly one verification per profile of the file, whoever the user is (blocking)."""
        ok = False
        for profile, dummy in self.dummies:
            if user is not None and user.profile == profile:
                ok = verify(str(profile[0]), user.password, given)
            else:
                verify(str(profile[0]), dummy, given)
        return ok and user is not None
