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
    "Server",
    "ServerMetrics",
    "ServerObserver",
    "Transfer",
    "multiprocess_registry",
    "run",
    "serve",
    "serve_metrics",
    "server_of",
]
