"""sockety.chat: a terminal chat on Sockety (the ``sockety-chat`` command).

The UI-free parts are importable: :class:`ChatServer` (names, broadcasts, typing and file relays)
and :class:`ChatClient` (reconnects with backoff, reports typed events).
"""

from ._client import (
    ChatClient,
    ChatError,
    ChatEvent,
    ChatMessage,
    Connected,
    Disconnected,
    FileUpdated,
    IncomingFile,
    LoggedIn,
    NameChanged,
    OutgoingFile,
    SystemNotice,
    TypingChanged,
    UploadUpdated,
    UsersChanged,
)
from ._server import ChatServer

__all__ = [
    "ChatClient",
    "ChatError",
    "ChatEvent",
    "ChatMessage",
    "ChatServer",
    "Connected",
    "Disconnected",
    "FileUpdated",
    "IncomingFile",
    "LoggedIn",
    "NameChanged",
    "OutgoingFile",
    "SystemNotice",
    "TypingChanged",
    "UploadUpdated",
    "UsersChanged",
]
