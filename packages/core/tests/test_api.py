"""The public surface is small and deliberate: pin it, so that growing it is a decision."""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest

CORE = {
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
}
AIO = {
    "OPTIONS",
    "Connection",
    "Draft",
    "FastReply",
    "FileTransfer",
    "Handler",
    "Incoming",
    "IncomingStream",
    "Message",
    "Outgoing",
    "OutgoingStream",
    "ReceivedFile",
    "Request",
    "Response",
    "ResponseDraft",
    "Router",
    "Transfer",
    "check_options",
    "loop_factory",
    "run",
}


@pytest.mark.parametrize(("module", "names"), [("sockety.core", CORE), ("sockety.core.aio", AIO)])
def test_exports_are_pinned(module: str, names: set[str]) -> None:
    imported = importlib.import_module(module)
    assert set(imported.__all__) == names
    for name in names:
        assert getattr(imported, name) is not None


def hot_modules() -> list[str]:
    """The modules setup.py compiles, read from it (one list, so the test follows it)."""
    setup = Path(__file__).parents[1] / "setup.py"
    for node in ast.parse(setup.read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "HOT_MODULES":
            paths: list[str] = ast.literal_eval(node.value)
            return [p.removeprefix("src/").removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no HOT_MODULES")


def test_the_build_is_all_compiled_or_all_pure() -> None:
    from sockety.core import COMPILED

    modules = hot_modules()
    assert "sockety.core.aio._connection" in modules
    kinds = {m: not str(importlib.import_module(m).__file__).endswith(".py") for m in modules}
    assert set(kinds.values()) == {COMPILED}, kinds
    # tox says which build each environment installed (core: compiled, core-pure: pure).
    expected = os.environ.get("SOCKETY_EXPECT_COMPILED")
    if expected is not None:
        assert expected == str(int(COMPILED))


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


def test_user_classes_may_extend_router_and_drafts() -> None:
    # The compiled build refuses interpreted subclasses unless a class allows them: these do.
    from sockety.core.aio import Draft, ResponseDraft, Router

    class Tagged(Draft):
        def __init__(self, action: str) -> None:
            super().__init__(action, data="msgpack")
            self.tag = "mine"

    class Quiet(ResponseDraft):
        pass

    class Routes(Router):
        pass

    draft = Tagged("hello")
    assert draft.tag == "mine"
    assert draft({"a": 1}).action == b"hello"
    assert Quiet()().data == b""
    routes = Routes()

    @routes.action("hello")
    def hello(message: object) -> int:
        return 0

    assert routes.actions == frozenset({"hello"})
