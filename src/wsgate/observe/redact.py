"""Credentials never reach a log line, whoever logs them.

Our own events carry no secrets, but libraries do: aiohttp's handshake warning lists the
client's subprotocol offers (``wsgate.token.<JWT>``), and its 400 for an over-long request line
or header quotes the first bytes (``?access_token=…``, ``Authorization: Bearer …``), in the
message and in the exception's traceback. So redaction happens when a ``LogRecord`` is
created (``install``: a record factory wrapping whatever factory was there), before any
handler — ours, an embedding application's, pytest's — formats it.

What is redacted (``Redactor``): ``Authorization``/``Proxy-Authorization``/``Cookie``/
``Set-Cookie`` header values of any scheme, scheme credentials (``Basic …``, ``Bearer …``), the password
of a URL's userinfo (a ``jwks-url`` ``https://user:password@…`` in an audit reason),
``wsgate.token.`` offers, JWT-shaped strings (``eyJ…``), query parameters that commonly carry
credentials (``CREDENTIAL_PARAMETERS``), event-dict values under credential-like keys, and the
query parameter, header and cookie names the loaded realms read credentials from (``Redactor.add``,
called by the gateway for every configuration it loads), realm session cookies included.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any

MASK = "[redacted]"
CREDENTIAL_PARAMETERS = (
    "access_token",
    "token",
    "id_token",
    "refresh_token",
    "logout_token",  # OpenID Connect: a back-channel logout's form, an RP-initiated logout's URL
    "id_token_hint",
    "auth_token",
    "jwt",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "code",
    "ticket",
    "session",
    "sig",
    "signature",
)
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key")
# Event-dict keys whose values are masked whole ("code", "session" are too common as keys to be on this
# list): these, every credential header name, and the names a configuration adds.
CREDENTIAL_KEYS = frozenset(
    {
        *(p for p in CREDENTIAL_PARAMETERS if p not in ("code", "session", "sig", "signature", "ticket")),
        *(h.replace("-", "_") for h in CREDENTIAL_HEADERS),
        "credentials",
    }
)
_SCHEMES = (
    r"(?:Application\s+)?(?:Basic|Bearer|Token|Negotiate|Digest|NTLM|Kerberos|Hawk|AWS4-HMAC-SHA256|[A-Za-z]+-?Token)"
)
# A scheme followed by credentials: 8+ token68 characters (RFC 7235), not "realm=..." parameters.
_SCHEME_CREDENTIALS = re.compile(rf"(?i)\b({_SCHEMES})(\s+)(?![A-Za-z]+=\")[A-Za-z0-9._~+/=-]{{8,}}")
_SUBPROTOCOL_TOKEN = re.compile(r"(?i)(wsgate\.token\.)[^\s,'\"\])}>]+")
# '{"' base64url-encoded, a JWT's header; also the first segments of a truncated one.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*){0,2}")
# Raw bytes from the wire, as libraries quote them ("Got more than 8190 bytes when reading: b'…'"): a
# header value too long to parse is quoted without its name, so nothing else would recognise the token.
_BYTES_LITERAL = re.compile(r"""\bb(['"])(?:\\.|(?!\1).)+\1""")
# "token 'a1b2…'", "password: x9…" in free text: a credential word, then a value with a digit or a
# token68 symbol in it (so that "password presented" stays readable).
_NAMED_VALUE = re.compile(
    r"(?i)\b(token|password|passwd|secret|credentials?|api[-_ ]?key)(\s*[:=]?\s*)(['\"]?)"
    r"(?=[A-Za-z0-9._~+/=-]{8,})(?=[A-Za-z]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]+"
)
# scheme://user:password@host: the password, up to the '@' (one inside a password is percent-encoded).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@'\"]*:)[^\s/@'\"]+(?=@)")
_FORMATTER = logging.Formatter()


class Redactor:
    """Regular expressions over text, rebuilt when a configuration adds names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.parameters: set[str] = set(CREDENTIAL_PARAMETERS)
        self.headers: set[str] = set(CREDENTIAL_HEADERS)
        self.cookies: set[str] = set()
        self.keys: frozenset[str] = CREDENTIAL_KEYS
        self._compile()

    def add(self, parameters: Iterable[str] = (), headers: Iterable[str] = (), cookies: Iterable[str] = ()) -> None:
        """More names that carry credentials (a realm's ``http-query-parameter``, ``http-header``, ``http-cookie``)."""
        with self._lock:
            before = (len(self.parameters), len(self.headers), len(self.cookies))
            self.parameters.update(p for p in parameters if p)
            self.headers.update(h.lower() for h in headers if h)
            self.cookies.update(c for c in cookies if c)
            if (len(self.parameters), len(self.headers), len(self.cookies)) != before:
                named = (*parameters, *headers, *cookies)  # what a realm reads is a credential, whatever its name
                self.keys = self.keys | {_key(n) for n in named if n}
                self._compile()

    def _compile(self) -> None:
        headers = "|".join(re.escape(h) for h in sorted(self.headers, key=len, reverse=True))
        # "Name: value" on the wire, "'Name': 'value'" in a repr, "name=value" in key=value output,
        # "('Name', 'value')" in a list of pairs. The value stops at a backslash too: a masked JSON line
        # keeps its escapes and stays JSON.
        self._header = re.compile(rf"(?i)(?<![\w-])({headers})((?:['\"]\s*[,:=]|\s*[:=])\s*)(['\"]?)[^\r\n'\"\\]*")
        names = "|".join(re.escape(n) for n in sorted(self.parameters | self.cookies, key=len, reverse=True))
        self._assignment = re.compile(rf"(?i)(?<![\w-])({names})(=)[^&;\s'\"\\#,)\]}}>]*")
        self._quoted = re.compile(rf"(?i)(['\"])({names})\1(\s*:\s*)(['\"])(?:(?!\4).)*\4")

    def text(self, text: str) -> str:
        if not text:
            return text
        text = _BYTES_LITERAL.sub(lambda m: f"b{m[1]}{MASK}{m[1]}", text)
        text = self._header.sub(lambda m: f"{m[1]}{m[2]}{m[3]}{MASK}", text)
        text = _SCHEME_CREDENTIALS.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text)
        text = _SUBPROTOCOL_TOKEN.sub(lambda m: f"{m[1]}{MASK}", text)
        text = _URL_PASSWORD.sub(lambda m: f"{m[1]}{MASK}", text)
        text = _JWT.sub(MASK, text)
        text = _NAMED_VALUE.sub(lambda m: f"{m[1]}{m[2]}{m[3]}{MASK}", text)
        text = self._assignment.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text)
        return self._quoted.sub(lambda m: f"{m[1]}{m[2]}{m[1]}{m[3]}{m[4]}{MASK}{m[4]}", text)

    def value(self, value: Any, depth: int = 0) -> Any:
        """A copy of an event dict (or list, or value) with credentials masked."""
        if isinstance(value, str):
            return self.text(value)
        if value is None or isinstance(value, bool | int | float) or depth > 8:
            return value
        if isinstance(value, dict):
            return {k: MASK if self.is_credential_key(k) else self.value(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return type(value)(self.value(v, depth + 1) for v in value) if not _is_exc_info(value) else value
        if isinstance(value, bytes | bytearray):
            text = bytes(value).decode("latin-1")
            clean = self.text(text)
            return value if clean == text else clean
        text = str(value)  # an object whose str shows a URL or headers: masked as text if it must be
        clean = self.text(text)
        return value if clean == text else clean

    def is_credential_key(self, key: object) -> bool:
        return isinstance(key, str) and _key(key) in self.keys

    def record(self, record: logging.LogRecord) -> None:
        """Mask the message, its arguments, the exception and the stack of a record, in place."""
        if isinstance(record.msg, dict):  # a structlog event dict on its way to the stdlib
            record.msg = self.event(record.msg)
        else:
            try:
                message = record.getMessage()
            except Exception:  # a broken format string: the handler reports it, with the masked parts
                record.msg, record.args = self.value(record.msg), self.value(record.args)
            else:
                clean = self.text(message)
                if clean != message:
                    record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[0] is not None:
            formatted = _FORMATTER.formatException(record.exc_info)
            record.exc_text = self.text(formatted)
            if record.exc_text != formatted:
                record.exc_info = None  # handlers render exc_text instead: the exception itself holds the secret
        if record.stack_info:
            record.stack_info = self.text(record.stack_info)

    def event(self, event: dict[str, Any]) -> dict[str, Any]:
        """A structlog event dict: an exception becomes masked text now, while it can still be formatted."""
        exc_info = event.get("exc_info")
        if exc_info:
            resolved = _exc_info(exc_info)
            event = {k: v for k, v in event.items() if k != "exc_info"}
            if resolved is not None:
                event["exception"] = _FORMATTER.formatException(resolved)
        return self.value(event)  # type: ignore[no-any-return]


REDACTOR = Redactor()
_INSTALLED = "_wsgate_redacts"


def install() -> None:
    """Wrap the record factory once: every record of every logger is masked at creation."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, _INSTALLED, False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            REDACTOR.record(record)
        except Exception:  # never lose a log line to the redactor; drop what could not be checked
            record.msg, record.args, record.exc_info, record.exc_text = "[unredactable log record]", (), None, None
        return record

    setattr(factory, _INSTALLED, True)
    logging.setLogRecordFactory(factory)


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _is_exc_info(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException)


def _exc_info(value: object) -> Any:
    if value is True:
        info = sys.exc_info()
        return info if info[0] is not None else None
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    return value if _is_exc_info(value) else None
