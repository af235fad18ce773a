"""``file`` login module: users, passwords and roles from Kaazing's ``jaas-config.xml``.

Passwords may be stored as argon2 (``$argon2id$…``) or bcrypt (``$2b$…``) hashes
instead of plain text. Unknown users cost the same work as known ones, and
plain passwords are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from lxml import etree

from ...errors import ConfigError
from .base import Failed, LoginAttempt, Outcome, Succeeded, resolve, user_and_password

JAAS_NAMESPACE = "http://xmlns.kaazing.com/jaas-config/centurion"
_ARGON2 = PasswordHasher()
_DUMMY_ARGON2 = _ARGON2.hash("wsgate-dummy-password")
_DUMMY_BCRYPT = bcrypt.hashpw(b"wsgate-dummy-password", bcrypt.gensalt(rounds=10))


@dataclass(frozen=True)
class User:
    password: str
    roles: frozenset[str]


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
        users[fields["name"]] = User(fields["password"], roles)
    return users


def verify_password(stored: str, given: str) -> bool:
    if stored.startswith("$argon2"):
        try:
            return _ARGON2.verify(stored, given)
        except (VerificationError, InvalidHashError):
            return False
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        try:
            return bcrypt.checkpw(given.encode(), stored.encode())
        except ValueError:
            return False
    return hmac.compare_digest(stored.encode(), given.encode())


class FileLoginModule:
    def __init__(self, options: Mapping[str, str], path: str, base_dir: Path) -> None:
        if "file" not in options:
            raise ConfigError(f"{path}/options/file", "is required: the jaas-config.xml with users and roles")
        self.users = load_users(resolve(base_dir, options["file"]), f"{path}/options/file")
        hashes = [u.password for u in self.users.values()]
        self.dummy = (
            _DUMMY_ARGON2
            if any(h.startswith("$argon2") for h in hashes)
            else (_DUMMY_BCRYPT.decode() if any(h.startswith("$2") for h in hashes) else "wsgate-dummy-password")
        )

    async def login(self, attempt: LoginAttempt) -> Outcome:
        found = user_and_password(attempt)
        if isinstance(found, Failed):
            return found
        user_name, password = found
        user = self.users.get(user_name)
        if not verify_password(user.password if user else self.dummy, password) or user is None:
            return Failed(f"bad user name or password for {user_name!r}")
        attempt.shared.setdefault("name", user_name)
        return Succeeded(user_name, user.roles)
