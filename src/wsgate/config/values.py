"""Parsers for the scalar value formats Kaazing configs use.

Each parser raises ``ValueError`` with a message that says what would be valid;
the config builder adds the element path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_DURATION_UNITS = {
    "ms": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

DEFAULT_PORTS = {"ws": 80, "http": 80, "wss": 443, "https": 443}
SECURE_SCHEMES = frozenset({"wss", "https", "ssl", "tls"})


def parse_duration(text: str) -> float:
    """``30`` / ``30s`` / ``3 minutes`` / ``500ms`` → seconds (no unit means seconds)."""
    match = _NUMBER_UNIT.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or (unit and unit not in _DURATION_UNITS):
        raise ValueError(f"{text!r} is not a duration; write e.g. 30, 30s, 500ms, 3 minutes or 1 hour")
    return float(match.group(1)) * (_DURATION_UNITS[unit] if unit else 1.0)


def parse_count(text: str) -> int:
    """A positive whole number (a limit)."""
    value = text.strip().replace("_", "")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{text!r} is not a positive whole number")
    return int(value)


def parse_rate(text: str) -> tuple[float, float]:
    """``10/s``, ``600/min``, optionally ``burst 20``: (tokens per second, burst)."""
    parts = text.split()
    count, _, unit = parts[0].partition("/")
    seconds = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
    if unit not in seconds or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{text!r} is not a rate such as 10/s or 600/min")
    rate = int(count) / seconds[unit]
    burst = float(max(1, int(count))) if unit in ("s", "sec", "second") else max(1.0, rate)
    if len(parts) == 3 and parts[1] == "burst" and parts[2].isdigit() and int(parts[2]) >= 1:
        burst = float(parts[2])
    elif len(parts) != 1:
        raise ValueError(f"{text!r}: write the rate, optionally followed by 'burst N' (e.g. 10/s burst 20)")
    return rate, burst


def parse_size(text: str) -> int:
    """``1024`` / ``64k`` / ``64kB`` / ``1M`` → bytes (binary multiples, as Kaazing)."""
    match = _NUMBER_UNIT.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size; write e.g. 1024, 64k, 64kB or 1M")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_choice(text: str, choices: tuple[str, ...]) -> str:
    """Case-insensitive choice among ``choices``; returns the canonical spelling."""
    for choice in choices:
        if text.strip().lower() == choice.lower():
            return choice
    raise ValueError(f"{text!r} is not one of {', '.join(choices)}")


def parse_enabled(text: str) -> bool:
    """``enabled``/``disabled`` (also true/false, yes/no, on/off) → bool."""
    value = text.strip().lower()
    if value in ("enabled", "true", "yes", "on"):
        return True
    if value in ("disabled", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not one of enabled, disabled")


def parse_csv(text: str) -> tuple[str, ...]:
    """Comma-separated list, blanks dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class Uri:
    """An accept or connect URI, split once at load time."""

    raw: str
    scheme: str
    host: str
    port: int
    path: str

    @property
    def secure(self) -> bool:
        return self.scheme in SECURE_SCHEMES

    def __str__(self) -> str:
        return self.raw


_INTERFACE = re.compile(r"\[@[^\]]*\]")


def _no_interface_name(text: str) -> None:
    """Kaazing's ``[@eth0]`` / ``[@Software Loopback Interface 1]``: a host given as a network interface."""
    match = _INTERFACE.search(text)
    if match:
        raise ValueError(
            f"{text.strip()!r}: network interface names ({match.group(0)}) are not supported yet; write the "
            "interface's IP address instead (e.g. 192.0.2.10 or [2001:db8::10])"
        )


def parse_uri(text: str, schemes: tuple[str, ...]) -> Uri:
    """Parse ``scheme://host:port/path``; tcp/ssl URIs need an explicit port."""
    _no_interface_name(text)
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ValueError(f"{text!r} has scheme {scheme or '(none)'!r}; use one of {', '.join(schemes)}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{text!r} has no host; write e.g. {scheme}://localhost:8000/")
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
        if port is None:
            raise ValueError(f"{text!r} needs a port, e.g. {scheme}://{parts.hostname}:5000")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} must not have a query or fragment")
    return Uri(text.strip(), scheme, parts.hostname.lower(), port, parts.path or "/")


def parse_bind(text: str) -> tuple[str | None, int]:
    """A ``*.bind`` value: ``8000``, ``0.0.0.0:8000`` or ``[::1]:8000`` → (host or None, port)."""
    _no_interface_name(text)
    value = text.strip()
    host: str | None = None
    if ":" in value:
        host, _, value = value.rpartition(":")
        host = host.strip("[]") or None
    if not value.isdigit() or int(value) > 65535:
        raise ValueError(f"{text!r} is not a port or ip:port; write e.g. 8000 or 0.0.0.0:8000")
    return host, int(value)
