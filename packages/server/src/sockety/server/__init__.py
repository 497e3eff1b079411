"""sockety.server: serve Sockety over TCP or TLS.

Re-exports the shared API of ``sockety.core.aio`` (drafts, router, messages, ...)."""

from sockety.core import (
    AbortedError,
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
    Message,
    ReceivedFile,
    Request,
    Response,
    ResponseDraft,
    Router,
    StreamReader,
    StreamWriter,
    Transfer,
    run,
)

from ._metrics import ServerMetrics, multiprocess_registry, serve_metrics
from ._observer import ServerObserver
from ._server import ClusterLink, Server, serve, server_of

__all__ = [
    "AbortedError",
    "ClusterLink",
    "Connection",
    "ConnectionClosedError",
    "ConnectionLostError",
    "Draft",
    "FastReply",
    "FileSizeError",
    "FileTransfer",
    "GoingAwayError",
    "Message",
    "ReceivedFile",
    "RemoteProtocolError",
    "Request",
    "Response",
    "ResponseDraft",
    "ResponseTimeoutError",
    "Router",
    "SocketyError",
    "Server",
    "ServerMetrics",
    "ServerObserver",
    "StreamReader",
    "StreamWriter",
    "Transfer",
    "multiprocess_registry",
    "run",
    "serve",
    "serve_metrics",
    "server_of",
]
