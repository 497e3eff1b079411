"""The public surface of sockety.server: pinned, so growing it is a decision. The shared API is
re-exported from sockety.core.aio, the very same objects."""

from __future__ import annotations

import os
import sys

import sockety.core
import sockety.core.aio
import sockety.server

SHARED = {
    "Connection",
    "Draft",
    "FastReply",
    "FileTransfer",
    "IncomingStream",
    "Message",
    "OutgoingStream",
    "ReceivedFile",
    "Request",
    "Response",
    "ResponseDraft",
    "Router",
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
    "Server",
    "ServerMetrics",
    "ServerObserver",
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


def test_the_core_build_is_the_one_the_environment_expects() -> None:
    # tox runs this suite on both builds of sockety-core: server (compiled), server-pure.
    expected = os.environ.get("SOCKETY_EXPECT_COMPILED")
    if expected is not None:
        assert expected == str(int(sockety.core.COMPILED))
        aio_module = sys.modules[sockety.core.aio.Connection.__module__]
        assert str(aio_module.__file__).endswith(".py") == (expected == "0")
