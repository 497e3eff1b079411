"""The public surface of sockety.client: pinned, so growing it is a decision."""

from __future__ import annotations

import sockety.client
import sockety.core
import sockety.core.aio

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
    "ConnectError",
    "ConnectionClosedError",
    "ConnectionLostError",
    "FileSizeError",
    "GoingAwayError",
    "RemoteProtocolError",
    "ResponseTimeoutError",
    "SocketyError",
}


def test_exports_are_pinned() -> None:
    assert set(sockety.client.__all__) == SHARED | ERRORS | {"connect"}
    for name in SHARED:
        assert getattr(sockety.client, name) is getattr(sockety.core.aio, name)
    for name in ERRORS:
        assert getattr(sockety.client, name) is getattr(sockety.core, name)
