"""The public surface of sockety.server: pinned, so growing it is a decision. The shared API is
re-exported from sockety.core.aio, the very same objects."""

from __future__ import annotations

import sockety.core.aio
import sockety.server

SHARED = {
    "Connection",
    "Draft",
    "FastReply",
    "FileTransfer",
    "Message",
    "ReceivedFile",
    "Request",
    "Response",
    "ResponseDraft",
    "Router",
    "StreamReader",
    "StreamWriter",
    "Transfer",
    "run",
}
ERRORS = {
    "AbortedError",
    "ConnectionClosedError",
    "ConnectionLostError",
    "FileSizeError",
    "GoingAwayError",
    "RemoteProtocolError",
    "ResponseTimeoutError",
    "SocketyError",
}
OWN = {
    "OperatedServer",
    "Server",
    "ServerMetrics",
    "multiprocess_registry",
    "serve",
    "serve_metrics",
    # the seam sockety-cluster joins servers through, and how a handler reaches its server
    "ClusterLink",
    "server_of",
}


def test_exports_are_pinned() -> None:
    assert set(sockety.server.__all__) == SHARED | ERRORS | OWN
    for name in SHARED:
        assert getattr(sockety.server, name) is getattr(sockety.core.aio, name)
