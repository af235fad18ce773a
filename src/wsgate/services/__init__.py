"""Service types: echo, directory, proxy, broadcast (and management, metrics from wsgate.management)."""

from ..management import service as _management  # noqa: E402, F401  (registers management, metrics)
from . import broadcast, directory, echo, proxy  # noqa: F401  (register the types)
from .base import SERVICE_TYPES, Runtime, ServiceHandler, create_service

__all__ = ["SERVICE_TYPES", "Runtime", "ServiceHandler", "create_service"]
