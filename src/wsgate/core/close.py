"""WebSocket close codes (RFC 6455 §7.4 and the IANA registry), one vocabulary for every layer."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """Codes wsgate sends or records; ``int`` subclasses, so they print and compare as numbers."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # recorded, never sent: the peer's close frame had no code
    ABNORMAL = 1006  # recorded, never sent: the connection ended without a close frame
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014

    def __str__(self) -> str:  # "1008", never "CloseCode.POLICY_VIOLATION", in logs and the console
        return str(self.value)


# What a server may put in a close frame (RFC 6455 §7.4): a back end's other codes are mapped before relaying.
SERVER_SENDABLE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def client_may_send(code: int) -> bool:
    """RFC 6455 §7.4: codes a client may put in a close frame (0: "the frame had no code")."""
    return code == 0 or 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def server_may_send(code: int) -> bool:
    """Registered codes a server sends, and the application range 3000-4999."""
    return code in SERVER_SENDABLE or 3000 <= code <= 4999
