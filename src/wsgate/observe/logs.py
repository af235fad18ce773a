"""Structured logs with structlog: JSON lines by default, a readable format on a terminal.

Three streams operators filter on by logger name:

- ``wsgate.access``: one line per WebSocket connection when it closes (service, principal,
  remote address, duration, messages and bytes each way, close code);
- ``wsgate.audit``: one line per authentication decision (realm, service, remote, user,
  roles, the login modules' outcomes) and per administrative action;
- everything else (``wsgate``, ``wsgate.proxy``, ...): operational events.

Nothing logs a password, token or request URL (query tokens): the realm code never puts
them in an event, and every record of every logger (libraries' included, whichever handler
formats it) is masked when it is created (``redact``). stdlib ``logging`` calls are rendered
the same way, so libraries' lines are JSON too.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

from .redact import REDACTOR, install

_SHARED: list[Any] = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.PositionalArgumentsFormatter(),
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _route_through_stdlib() -> None:
    """structlog loggers hand their event dicts to stdlib logging; the handler renders them. A call below the
    logger's level is dropped first (``filter_by_level``, the check stdlib makes anyway): otherwise every access
    and audit call would build its timestamp and event dict for nothing, ~20 µs each per connection."""
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


_route_through_stdlib()
install()


def _exception_text(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A library's exception as (masked) text: the record factory formatted it already."""
    exc_info = event.pop("exc_info", None)
    record = event.get("_record")
    text = getattr(record, "exc_text", None)
    if text is None and exc_info:
        text = logging.Formatter().formatException(exc_info)
    if text:
        event["exception"] = REDACTOR.text(text)
    return event


def _masked(_: Any, __: str, rendered: Any) -> str:
    """The last look at the rendered line."""
    return REDACTOR.text(rendered if isinstance(rendered, str) else str(rendered))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


_limiter_log = get_logger("wsgate.audit")


def log_formatter(fmt: str = "auto") -> logging.Formatter:
    """The formatter of wsgate's handler: ``json`` or ``console`` (``auto``: console on a terminal)."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, _exception_text],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer, _masked],
    )


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Install the one stderr handler: ``json``, ``console``, or ``auto`` (console on a terminal).

    Like ``logging.basicConfig``, it leaves logging alone when the root logger already has
    handlers of someone else's.
    """
    formatter = log_formatter(fmt)
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper()))
    root.handlers = [h for h in root.handlers if not getattr(h, "wsgate", False)]
    if root.handlers:  # embedded in an application (or a test runner) that owns logging
        return
    handler = logging.StreamHandler()
    handler.wsgate = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter)
    root.addHandler(handler)


class LogLimiter:
    """At most ``per_second`` lines a second for one kind of client-caused event, then one summary.

    Clients choose how often they misbehave, so they must not choose the log volume: a site asks
    ``allow()`` before logging; what it refuses is counted and reported once per window as
    "suppressed K similar lines". Metrics count every event regardless.
    """

    __slots__ = ("kind", "per_second", "window", "count", "suppressed", "_flush")

    def __init__(self, kind: str, per_second: int = 10) -> None:
        self.kind = kind
        self.per_second = per_second
        self.window = 0.0  # monotonic start of the current one-second window
        self.count = 0
        self.suppressed = 0
        self._flush: asyncio.TimerHandle | None = None

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self.window >= 1.0:
            self.summarize()
            self.window, self.count = now, 0
        if self.count < self.per_second:
            self.count += 1
            return True
        self.suppressed += 1
        if self._flush is None:
            self._schedule(1.0 - (now - self.window))
        return False

    def _schedule(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the next window's first event reports it
            return
        self._flush = loop.call_later(max(delay, 0.0), self.summarize)

    def summarize(self) -> None:
        """Report what was suppressed (once; also called by a timer at the end of the window)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self.suppressed:
            suppressed, self.suppressed = self.suppressed, 0
            _limiter_log.info(f"suppressed {suppressed} similar lines", kind=self.kind, suppressed=suppressed)
