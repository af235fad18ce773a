"""Gateway state behind small async interfaces: live connections, realm sessions, revocations.

Everything here is keyed by plain strings, floats (wall-clock seconds) and ``Selector`` values and
knows nothing of HTTP, so stores shared by several gateway processes (Redis, the scale-out issue) can
implement the same Protocols: ``ConnectionRegistry``, ``SessionStore``, ``RevocationList``.
"""

from .connections import ConnectionRegistry, MemoryConnections, Selector
from .revocations import MemoryRevocations, RevocationList, identity_keys, token_digest, token_key, user_key
from .sessions import MemorySessions, SessionStore

__all__ = [
    "ConnectionRegistry",
    "MemoryConnections",
    "MemoryRevocations",
    "MemorySessions",
    "RevocationList",
    "Selector",
    "SessionStore",
    "identity_keys",
    "token_digest",
    "token_key",
    "user_key",
]
