"""sockety.core: the Sockety protocol without I/O, and the API both peers share."""

from . import _connection
from ._budget import MemoryPool
from ._connection import Connection
from ._constants import MAX_CHANNELS, MAX_FAST_REPLY_CODE, FastReply, PacketType
from ._errors import (
    AbortedError,
    ConnectError,
    ConnectionClosedError,
    ConnectionLostError,
    FileSizeError,
    GoingAwayError,
    LocalProtocolError,
    ProtocolError,
    ProtocolErrorKind,
    RemoteProtocolError,
    ResponseTimeoutError,
    SocketyError,
)
from ._events import (
    Aborted,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    FastReplyReceived,
    FileChunkReceived,
    FileEnded,
    FileHeader,
    GoAwayReceived,
    HeartbeatReceived,
    MessageReceived,
    ResponseReceived,
    StreamChunkReceived,
    StreamEnded,
)
from ._ids import new_id

#: Whether the hot modules run compiled (mypyc, built at install when a C compiler is there) or
#: as pure Python. Both behave the same; the compiled ones are faster.
COMPILED: bool = not _connection.__file__.endswith(".py")

__all__ = [
    "COMPILED",
    "MAX_CHANNELS",
    "MAX_FAST_REPLY_CODE",
    "Aborted",
    "AbortedError",
    "ConnectError",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionLostError",
    "ConnectionOpened",
    "Event",
    "FastReply",
    "FastReplyReceived",
    "FileChunkReceived",
    "FileEnded",
    "FileHeader",
    "FileSizeError",
    "GoAwayReceived",
    "GoingAwayError",
    "HeartbeatReceived",
    "LocalProtocolError",
    "MemoryPool",
    "MessageReceived",
    "PacketType",
    "ProtocolError",
    "ProtocolErrorKind",
    "RemoteProtocolError",
    "ResponseReceived",
    "ResponseTimeoutError",
    "SocketyError",
    "StreamChunkReceived",
    "StreamEnded",
    "new_id",
]
