"""``certificate`` login module (beyond Kaazing): identity and roles from the verified mTLS certificate.

Only certificates OpenSSL verified against the truststore reach it, and it decides on the
subject's parsed attributes, never on a DN string split at commas (a CN may contain
``,OU=Trading``).

The user is ``principal``:

- ``subject-cn`` (default): the subject's common name; a subject with no CN, or with more
  than one, is refused (no "first wins": RDN order is the issuer's to choose).
- ``san-email`` / ``san-dns``: the certificate's one e-mail / DNS subjectAltName; none or
  several → refused.
- ``subject``: the whole subject as an RFC 4514 string, special characters escaped
  (``CN=Smith\\, John,O=Acme``).
- ``fingerprint``: the certificate's SHA-256, hex.

Roles are ``roles`` (granted to every verified certificate) plus each ``role.NAME`` whose
rule holds. A rule is ``ATTRIBUTE=REGEX``: it holds when some attribute of that type in the
subject has a value the regular expression matches *entirely* (``role.TRADER: OU=Trading``
needs an OU that is exactly ``Trading``; ``OU=Trading.*`` also takes ``Trading Desk``).
``ATTRIBUTE`` is a short name (CN, OU, O, C, L, ST, STREET, DC, UID, emailAddress,
serialNumber, title, GN, SN; any case) or a dotted OID. Several conditions separated by commas,
``OU=Trading,O=Acme``, must all hold, each on its own attribute type; a comma starts a new
condition only when ``NAME=`` follows it, so ``CN=a{1,3}`` is one condition. A leading ``^``
is ignored (rules used to be searched over the DN string), and anything that is not
``ATTRIBUTE=REGEX`` is a configuration error. The certificate's notAfter bounds the connection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ...config.values import parse_csv
from ...errors import ConfigError
from .base import Failed, LoginAttempt, LoginModuleType, Outcome, Succeeded

PRINCIPALS = ("subject-cn", "san-email", "san-dns", "subject", "fingerprint")
ATTRIBUTES = {
    "cn": NameOID.COMMON_NAME,
    "ou": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "o": NameOID.ORGANIZATION_NAME,
    "c": NameOID.COUNTRY_NAME,
    "l": NameOID.LOCALITY_NAME,
    "st": NameOID.STATE_OR_PROVINCE_NAME,
    "street": NameOID.STREET_ADDRESS,
    "dc": NameOID.DOMAIN_COMPONENT,
    "uid": NameOID.USER_ID,
    "emailaddress": NameOID.EMAIL_ADDRESS,
    "serialnumber": NameOID.SERIAL_NUMBER,
    "title": NameOID.TITLE,
    "gn": NameOID.GIVEN_NAME,
    "sn": NameOID.SURNAME,
}
_NAME = r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+"
_CONDITION_START = re.compile(rf",\s*(?=(?:{_NAME})\s*=)")
_CONDITION = re.compile(rf"\s*({_NAME})\s*=(.*)", re.DOTALL)
Condition = tuple[ObjectIdentifier, re.Pattern[str]]


def parse_rule(text: str, element: str) -> tuple[Condition, ...]:
    """``OU=Trading,O=Acme`` → ((OU, re"Trading"), (O, re"Acme")); errors name the element."""
    conditions = []
    for part in _CONDITION_START.split(text.removeprefix("^")):
        match = _CONDITION.fullmatch(part)
        if match is None:
            raise ConfigError(
                element, f"{text!r} is not ATTRIBUTE=REGEX (e.g. OU=Trading): rules match one subject attribute"
            )
        name, pattern = match.groups()
        oid = ATTRIBUTES.get(name.lower()) or (_oid(name) if name[0].isdigit() else None)
        if oid is None:
            raise ConfigError(element, f"unknown attribute {name!r}; use one of {', '.join(ATTRIBUTES)} or an OID")
        try:
            conditions.append((oid, re.compile(pattern)))
        except re.error as exc:
            raise ConfigError(element, f"{pattern!r} is not a regular expression: {exc}") from None
    return tuple(conditions)


def _oid(dotted: str) -> ObjectIdentifier | None:
    try:
        return ObjectIdentifier(dotted)
    except ValueError:
        return None


def rule_holds(conditions: tuple[Condition, ...], name: x509.Name) -> bool:
    """Every condition is met by some attribute of its type whose whole value matches."""
    return all(
        any(isinstance(a.value, str) and pattern.fullmatch(a.value) for a in name.get_attributes_for_oid(oid))
        for oid, pattern in conditions
    )


class CertificateLoginModule:
    TYPE = LoginModuleType(
        name="certificate",
        options=("principal", "roles"),
        option_prefixes=("role.",),
        strict=True,
        ambient="client certificates",
    )

    def __init__(self, options: Mapping[str, str], path: str, base_dir: Path) -> None:
        self.principal = options.get("principal", "subject-cn")
        if self.principal not in PRINCIPALS:
            raise ConfigError(f"{path}/options/principal", f"{self.principal!r} is not one of {', '.join(PRINCIPALS)}")
        self.roles = frozenset(parse_csv(options.get("roles", "")))
        self.rules: list[tuple[str, tuple[Condition, ...]]] = []
        for name, value in options.items():
            if name.startswith("role."):
                self.rules.append((name[5:], parse_rule(value, f"{path}/options/{name}")))
            elif name not in self.TYPE.options:
                raise ConfigError(f"{path}/options/{name}", f"unknown option; valid: {self.TYPE.valid_options}")

    async def login(self, attempt: LoginAttempt) -> Outcome:
        peer = attempt.peer
        if peer is None:
            return Failed("no verified client certificate")
        found = self._user(peer.name, peer.subject, peer.emails, peer.dns_names, peer.fingerprint_sha256)
        if len(found) != 1 or not found[0]:
            return Failed(f"certificate has {len(found)} {self.principal} values; exactly one names the user")
        roles = self.roles | {role for role, conditions in self.rules if rule_holds(conditions, peer.name)}
        attempt.shared.setdefault("name", found[0])
        return Succeeded(found[0], frozenset(roles), peer.not_after)

    def _user(
        self, name: x509.Name, subject: str, emails: tuple[str, ...], dns: tuple[str, ...], fingerprint: str
    ) -> list[str]:
        """Every candidate for the principal: the caller accepts exactly one."""
        if self.principal == "subject":
            return [subject]
        if self.principal == "fingerprint":
            return [fingerprint]
        if self.principal == "san-email":
            return list(emails)
        if self.principal == "san-dns":
            return list(dns)
        return [a.value for a in name.get_attributes_for_oid(NameOID.COMMON_NAME) if isinstance(a.value, str)]
