"""wsgate's Python asyncio client: ``await connect(url, challenge_handler=...)``."""

from .challenges import (
    BasicChallengeHandler,
    ChallengeHandler,
    ChallengeRequest,
    ChallengeResponse,
    DispatchChallengeHandler,
    TokenChallengeHandler,
)
from .connection import AuthenticationError, Connection, ReconnectingConnection, RefusedError, connect

__all__ = [
    "AuthenticationError",
    "BasicChallengeHandler",
    "ChallengeHandler",
    "ChallengeRequest",
    "ChallengeResponse",
    "Connection",
    "DispatchChallengeHandler",
    "ReconnectingConnection",
    "RefusedError",
    "TokenChallengeHandler",
    "connect",
]
