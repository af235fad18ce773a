"""Service types: echo, directory, proxy, broadcast (management and metrics live in ``wsgate.management``).

Each declares itself (``TYPE = ServiceType(...)`` on its handler class); ``wsgate.catalog`` collects them.
"""

from .base import Runtime, ServiceHandler, ServiceType

__all__ = ["Runtime", "ServiceHandler", "ServiceType"]
