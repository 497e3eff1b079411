"""sockety.chat: a terminal chat on Sockety (the ``sockety-chat`` command).

The UI-free parts are importable: :class:`ChatServer` (its :class:`Room` holds the state and
the fan-out) and :class:`ChatClient` (reconnects with backoff, reports typed events).
"""

from ._client import (
    ChatClient,
    ChatError,
    ChatEvent,
    ChatMessage,
    Connected,
    Disconnected,
    FileUpdated,
    GaveUp,
    IncomingFile,
    LoggedIn,
    NameChanged,
    OutgoingFile,
    PrivateMessage,
    SystemNotice,
    TypingChanged,
    UploadUpdated,
    UsersChanged,
)
from ._server import ChatServer, Member, Offer, Room

__all__ = [
    "ChatClient",
    "ChatError",
    "ChatEvent",
    "ChatMessage",
    "ChatServer",
    "Connected",
    "Disconnected",
    "FileUpdated",
    "GaveUp",
    "IncomingFile",
    "LoggedIn",
    "Member",
    "NameChanged",
    "Offer",
    "OutgoingFile",
    "PrivateMessage",
    "Room",
    "SystemNotice",
    "TypingChanged",
    "UploadUpdated",
    "UsersChanged",
]
