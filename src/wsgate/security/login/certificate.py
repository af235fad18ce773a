"""``certificate`` login module (beyond Kaazing): identity and roles from the verified mTLS certificate.

Only certificates OpenSSL verified against the truststore reach it. The user is
taken from ``principal`` (``subject-cn`` by default, or ``san-email``, ``san-dns``,
``subject``, ``fingerprint``); roles are ``roles`` (granted to every verified
certificate) plus each ``role.NAME`` whose regular expression matches the subject
DN (``CN=alice,OU=Trading,O=Acme``). The certificate's notAfter bounds the connection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ...config.values import parse_csv
from ...errors import ConfigError
from .base import Failed, LoginAttempt, Outcome, Succeeded

PRINCIPALS = ("subject-cn", "san-email", "san-dns", "subject", "fingerprint")


class CertificateLoginModule:
    def __init__(self, options: Mapping[str, str], path: str, base_dir: Path) -> None:
        self.principal = options.get("principal", "subject-cn")
        if self.principal not in PRINCIPALS:
            raise ConfigError(f"{path}/options/principal", f"{self.principal!r} is not one of {', '.join(PRINCIPALS)}")
        self.roles = frozenset(parse_csv(options.get("roles", "")))
        self.rules: list[tuple[str, re.Pattern[str]]] = []
        for name, value in options.items():
            if name.startswith("role."):
                try:
                    self.rules.append((name[5:], re.compile(value)))
                except re.error as exc:
                    raise ConfigError(
                        f"{path}/options/{name}", f"{value!r} is not a regular expression: {exc}"
                    ) from None
            elif name not in ("principal", "roles"):
                raise ConfigError(f"{path}/options/{name}", "unknown option; valid: principal, roles, role.NAME")

    async def login(self, attempt: LoginAttempt) -> Outcome:
        peer = attempt.peer
        if peer is None:
            return Failed("no verified client certificate")
        user = self._user(peer.subject, peer.emails, peer.dns_names, peer.fingerprint_sha256)
        if not user:
            return Failed(f"certificate has no {self.principal}")
        roles = self.roles | {name for name, rule in self.rules if rule.search(peer.subject)}
        attempt.shared.setdefault("name", user)
        return Succeeded(user, frozenset(roles), peer.not_after)

    def _user(self, subject: str, emails: tuple[str, ...], dns: tuple[str, ...], fingerprint: str) -> str | None:
        if self.principal == "subject":
            return subject
        if self.principal == "fingerprint":
            return fingerprint
        if self.principal == "san-email":
            return emails[0] if emails else None
        if self.principal == "san-dns":
            return dns[0] if dns else None
        cn = [part[3:] for part in subject.split(",") if part.startswith("CN=")]
        return cn[0] if cn else None
