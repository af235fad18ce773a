"""Gateway state that must outlive a connection (revocations), behind small interfaces.

Everything here is keyed by plain strings and floats (wall-clock seconds) and knows nothing of
HTTP, so a store shared by several gateway processes (Redis) can implement the same Protocol.
"""

from .revocations import MemoryRevocations, RevocationStore, identity_keys, token_digest, token_key, user_key

__all__ = ["MemoryRevocations", "RevocationStore", "identity_keys", "token_digest", "token_key", "user_key"]
