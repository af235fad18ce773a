"""Service types: echo, directory, proxy, broadcast."""

from . import broadcast, directory, echo, proxy  # noqa: F401  (register the types)
from .base import SERVICE_TYPES, Runtime, ServiceHandler, create_service

__all__ = ["SERVICE_TYPES", "Runtime", "ServiceHandler", "create_service"]
