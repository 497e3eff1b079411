"""sockety.client: connect to a Sockety server over TCP or TLS.

Re-exports the shared API of ``sockety.core.aio`` (drafts, router, messages, ...)."""

from sockety.core import (
    AbortedError,
    ConnectError,
    ConnectionClosedError,
    ConnectionLostError,
    FastReply,
    FileSizeError,
    GoingAwayError,
    RemoteProtocolError,
    ResponseTimeoutError,
    SocketyError,
)
from sockety.core.aio import (
    Connection,
    Draft,
    FileTransfer,
    IncomingStream,
    Message,
    OutgoingStream,
    ReceivedFile,
    Request,
    Response,
    ResponseDraft,
    Router,
    Transfer,
    run,
)

from ._connect import connect

__all__ = [
    "AbortedError",
    "ConnectError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionLostError",
    "Draft",
    "FastReply",
    "FileSizeError",
    "FileTransfer",
    "GoingAwayError",
    "IncomingStream",
    "Message",
    "OutgoingStream",
    "ReceivedFile",
    "RemoteProtocolError",
    "Request",
    "Response",
    "ResponseDraft",
    "ResponseTimeoutError",
    "Router",
    "SocketyError",
    "Transfer",
    "connect",
    "run",
]
