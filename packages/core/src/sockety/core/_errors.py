"""Exceptions raised by sockety.

Every error says who is at fault: the remote peer, our own code, or the network::

    SocketyError
    ├── ProtocolError
    │   ├── RemoteProtocolError   the peer broke the protocol (carries .kind and .events)
    │   └── LocalProtocolError    this side misused the API (e.g. a stream write after end)
    │       └── GoingAwayError    no new messages: Go Away was sent or received
    ├── ConnectError              could not connect (refused, unreachable, TLS handshake, timeout)
    ├── ConnectionClosedError     the connection is gone; carries .reason and .cause
    │   └── ConnectionLostError   it was closed abnormally (reset, EOF mid-exchange, TLS failure,
    │                             idle timeout, protocol error of either side)
    ├── AbortedError              the exchange was aborted (.by_peer says by which side)
    ├── ResponseTimeoutError      (also a TimeoutError) no response in time
    └── FileSizeError             a file's content did not match its declared size

The asyncio layer translates ``OSError`` and ``ssl.SSLError`` into ``ConnectionLostError`` with the
original exception as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from ._events import Event

__all__ = [
    "AbortedError",
    "ConnectError",
    "ConnectionClosedError",
    "ConnectionLostError",
    "FileSizeError",
    "GoingAwayError",
    "LocalProtocolError",
    "ProtocolError",
    "ProtocolErrorKind",
    "RemoteProtocolError",
    "ResponseTimeoutError",
    "SocketyError",
]


class SocketyError(Exception):
    """Base class of every exception raised by sockety."""


class ProtocolError(SocketyError):
    """The Sockety protocol was violated."""


class ProtocolErrorKind(StrEnum):
    """What a remote peer did wrong (PROTOCOL.md Decisions 4 and 8); stable metric labels."""

    BAD_CONNECTION_HEADER = "bad_connection_header"
    UNKNOWN_PACKET = "unknown_packet"
    BAD_HEADER_BYTE = "bad_header_byte"
    CHANNEL_OUT_OF_RANGE = "channel_out_of_range"
    CHANNEL_BUSY = "channel_busy"
    UNEXPECTED_PACKET = "unexpected_packet"
    BAD_HEADER = "bad_header"
    DATA_OVERFLOW = "data_overflow"
    STREAM_CLOSED = "stream_closed"
    FILE_INDEX_OUT_OF_RANGE = "file_index_out_of_range"
    FILE_SIZE_MISMATCH = "file_size_mismatch"
    LIMIT_EXCEEDED = "limit_exceeded"


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol; the connection is failed.

    ``events`` holds what was decoded from the same input before the violation, so nothing that
    arrived intact is lost.
    """

    def __init__(
        self,
        kind: ProtocolErrorKind,
        message: str,
        *,
        channel: int | None = None,
        events: Sequence[Event] = (),
    ) -> None:
        super().__init__(f"{message} ({kind.value})")
        self.kind = kind
        self.detail = message
        self.channel = channel
        self.events: Sequence[Event] = events


class LocalProtocolError(ProtocolError):
    """This side asked for something the protocol does not allow."""


class GoingAwayError(LocalProtocolError):
    """No new message may start: this connection is going away."""


class ConnectError(SocketyError):
    """Could not connect; ``__cause__`` is the underlying OSError, SSLError or TimeoutError."""


class ConnectionClosedError(SocketyError):
    """The connection is closed; ``reason`` says why, ``cause`` is the underlying error if any,
    and ``kind`` is a short stable label for it (for logs and metrics): ``closed`` (by this
    side), ``closed_by_peer``, ``grace_timeout``, ``lost`` (reset, EOF mid-exchange),
    ``tls_error``, ``protocol_error``, ``idle_timeout``, ``open_timeout``, ``refused``."""

    def __init__(
        self, reason: str, cause: BaseException | None = None, *, kind: str = "closed"
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause
        self.kind = kind


class ConnectionLostError(ConnectionClosedError):
    """The connection ended abnormally (reset, EOF mid-exchange, protocol error, timeout)."""


class AbortedError(SocketyError):
    """The message or response was aborted before it was complete."""

    def __init__(self, message: str = "aborted", *, by_peer: bool) -> None:
        super().__init__(message)
        self.by_peer = by_peer


class ResponseTimeoutError(SocketyError, TimeoutError):
    """No response arrived within the timeout."""


class FileSizeError(SocketyError, ValueError):
    """A file's content did not match its declared size."""
