"""Connecting: awaited or as a context manager, TLS verification on by default, typed errors."""

from __future__ import annotations

import ast
import asyncio
import socket
import ssl
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme

from sockety.client import ConnectError, Draft, FastReply, Message, Router, connect
from sockety.core.aio import loop_factory
from sockety.server import serve

T = TypeVar("T")
HOST = "127.0.0.1"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Any:
    def runner(main: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(30):
                return await main

        with asyncio.Runner(loop_factory=loop_factory(request.param == "uvloop")) as r:
            return r.run(bounded())

    return runner


def ok_router() -> Router:
    router = Router()

    @router.action("ping")
    def ping(message: Message) -> int:
        return FastReply.ACCEPT

    return router


def tls_contexts(hostname: str = HOST) -> tuple[ssl.SSLContext, trustme.CA]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(hostname).configure_cert(server_context)
    return server_context, ca


def test_await_and_async_with(run: Any) -> None:
    async def main() -> None:
        async with serve(ok_router()) as server:
            client = await connect(HOST, server.port)
            assert await client.request(Draft("ping")()) == FastReply.ACCEPT
            assert client.channels == 4096
            await client.close()
            async with connect(HOST, server.port) as second:
                assert await second.request(Draft("ping")()) == FastReply.ACCEPT
            assert second.closed

    run(main())


def test_refused_is_a_connect_error(run: Any) -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
        sock.close()
        with pytest.raises(ConnectError, match="could not connect") as error:
            await connect(HOST, port)
        assert isinstance(error.value.__cause__, OSError)

    run(main())


def test_connect_timeout_when_the_peer_never_speaks(run: Any) -> None:
    async def main() -> None:
        # A listener that accepts but never sends a Sockety header.
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await asyncio.start_server(silent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ConnectError, match="timed out"):
            await connect(HOST, port, connect_timeout=0.3)
        assert time.monotonic() - started < 2
        server.close()

    run(main())


def test_tls_verifies_certificates_by_default(run: Any) -> None:
    server_context, ca = tls_contexts()

    async def main() -> None:
        async with serve(ok_router(), ssl=server_context) as server:
            # ssl=True: the system's trust store, which does not know this test CA.
            with pytest.raises(ConnectError, match="TLS handshake") as error:
                await connect(HOST, server.port, ssl=True)
            assert isinstance(error.value.__cause__, ssl.SSLCertVerificationError)
            trusting = ssl.create_default_context()
            ca.configure_trust(trusting)
            async with connect(HOST, server.port, ssl=trusting) as client:
                assert client.tls
                assert await client.request(Draft("ping")()) == FastReply.ACCEPT

    run(main())


def test_tls_host_name_is_checked(run: Any) -> None:
    server_context, ca = tls_contexts("other.example")

    async def main() -> None:
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        async with serve(ok_router(), ssl=server_context) as server:
            with pytest.raises(ConnectError, match="TLS handshake"):
                await connect(HOST, server.port, ssl=trusting)
            # ... unless the expected name is given
            async with connect(
                HOST, server.port, ssl=trusting, server_hostname="other.example"
            ) as client:
                assert await client.request(Draft("ping")()) == FastReply.ACCEPT

    run(main())


def test_client_handler_receives_pushes(run: Any) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    client_router = Router()

    @client_router.action("news")
    def news(message: Message) -> None:
        got.put_nowait(message.msgpack())

    async def main() -> None:
        async with (
            serve(ok_router()) as server,
            connect(HOST, server.port, handler=client_router) as client,
        ):
            await client.request(Draft("ping")())
            assert server.broadcast(Draft("news", data="msgpack")("hello")) == 1
            assert await got.get() == "hello"

    run(main())


def test_a_misspelled_option_is_a_type_error_at_once() -> None:
    # No loop, no socket: the call itself fails (it used to connect, then misbehave).
    with pytest.raises(TypeError, match=r"'idle_timout' \(did you mean 'idle_timeout'\?\)"):
        connect(HOST, 9, idle_timout=3)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'colour'$"):
        connect(HOST, 9, colour="blue")


def _keyword_parameters(source: Path) -> set[str]:
    """The keyword-only parameters of ``Connection.__init__`` in ``source``."""
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "Connection":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    return {argument.arg for argument in item.args.kwonlyargs}
    raise AssertionError(f"no Connection.__init__ in {source}")


def test_every_connection_option_is_accepted() -> None:
    # The list connect() checks against matches both connections' signatures (read from the
    # sources: the compiled build keeps no signatures).
    from sockety.client._connect import _OPTIONS

    core = Path(__file__).parents[2] / "core" / "src" / "sockety" / "core"
    options = _keyword_parameters(core / "aio" / "_connection.py")
    limits = _keyword_parameters(core / "_connection.py")
    assert options and limits
    assert options | limits == _OPTIONS
    every: dict[str, Any] = dict.fromkeys(_OPTIONS, 1)
    connect(HOST, 9, **every)  # accepted (not connected: never awaited)


def test_limits_given_to_connect_reach_the_connection(run: Any) -> None:
    async def main() -> None:
        async with (
            serve(ok_router()) as server,
            connect(HOST, server.port, send_channels=3, idle_timeout=None) as client,
        ):
            assert client.channels == 3  # min(the server's 4096, our 3)
            assert await client.request(Draft("ping")()) == FastReply.ACCEPT

    run(main())
