"""The public surface is small and deliberate: pin it, so that growing it is a decision."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

CORE = {
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
}
AIO = {
    "Connection",
    "Draft",
    "FastReply",
    "FileTransfer",
    "Handler",
    "Incoming",
    "Message",
    "Outgoing",
    "ReceivedFile",
    "Request",
    "Response",
    "ResponseDraft",
    "Router",
    "StreamReader",
    "StreamWriter",
    "Transfer",
    "loop_factory",
    "run",
}


@pytest.mark.parametrize(("module", "names"), [("sockety.core", CORE), ("sockety.core.aio", AIO)])
def test_exports_are_pinned(module: str, names: set[str]) -> None:
    imported = importlib.import_module(module)
    assert set(imported.__all__) == names
    for name in names:
        assert getattr(imported, name) is not None


def test_namespace_package_and_typing_marker() -> None:
    import sockety
    import sockety.core

    # PEP 420: sockety is a namespace shared by the distributions, with no __init__.py
    assert getattr(sockety, "__file__", None) is None
    assert (Path(sockety.core.__file__).parent / "py.typed").is_file()


def test_errors_say_who_is_at_fault() -> None:
    from sockety import core

    assert issubclass(core.RemoteProtocolError, core.ProtocolError)
    assert issubclass(core.LocalProtocolError, core.ProtocolError)
    assert issubclass(core.GoingAwayError, core.LocalProtocolError)
    assert issubclass(core.ConnectionLostError, core.ConnectionClosedError)
    assert issubclass(core.ResponseTimeoutError, TimeoutError)
    for name in CORE:
        value = getattr(core, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, core.SocketyError), name
