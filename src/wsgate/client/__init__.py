"""wsgate's Python asyncio client: ``await connect(url, challenge_handler=...)``."""

from .challenges import (
    BasicChallengeHandler,
    ChallengeHandler,
    ChallengeRequest,
    ChallengeResponse,
    DispatchChallengeHandler,
    ServerVerifier,
    TokenChallengeHandler,
)
from .connection import (
    AuthenticationError,
    Connection,
    MutualAuthenticationError,
    ReconnectingConnection,
    RefusedError,
    connect,
)
from .negotiate import NegotiateChallengeHandler

__all__ = [
    "AuthenticationError",
    "BasicChallengeHandler",
    "ChallengeHandler",
    "ChallengeRequest",
    "ChallengeResponse",
    "Connection",
    "DispatchChallengeHandler",
    "MutualAuthenticationError",
    "NegotiateChallengeHandler",
    "ReconnectingConnection",
    "RefusedError",
    "ServerVerifier",
    "TokenChallengeHandler",
    "connect",
]
