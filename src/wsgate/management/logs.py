"""Structured logs with structlog: JSON lines by default, a readable format on a terminal.

Three streams operators filter on by logger name:

- ``wsgate.access``: one line per WebSocket connection when it closes (service, principal,
  remote address, duration, messages and bytes each way, close code);
- ``wsgate.audit``: one line per authentication decision (realm, service, remote, user,
  roles, the login modules' outcomes) and per administrative action;
- everything else (``wsgate``, ``wsgate.proxy``, ...): operational events.

Nothing logs a password, token or request URL (query tokens): the realm code never puts
them in an event. stdlib ``logging`` calls are rendered the same way, so libraries' lines
are JSON too.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SHARED: list[Any] = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.PositionalArgumentsFormatter(),
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _route_through_stdlib() -> None:
    """structlog loggers hand their event dicts to stdlib logging; the handler renders them."""
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


_route_through_stdlib()


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Install the one stderr handler: ``json``, ``console``, or ``auto`` (console on a terminal).

    Like ``logging.basicConfig``, it leaves logging alone when the root logger already has
    handlers of someone else's.
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper()))
    root.handlers = [h for h in root.handlers if not getattr(h, "wsgate", False)]
    if root.handlers:  # embedded in an application (or a test runner) that owns logging
        return
    handler = logging.StreamHandler()
    handler.wsgate = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter)
    root.addHandler(handler)
