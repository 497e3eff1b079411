"""Fixtures: every end-to-end test runs on asyncio and uvloop, over TCP and TLS (trustme
certificates), on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import trustme

from sockety.client import Connection, connect
from sockety.core.aio import loop_factory
from sockety.server import Server, serve

T = TypeVar("T")
HOST = "127.0.0.1"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class Net:
    """How to reach a server in one test: the loop and the transport under test."""

    loop: str
    tls: bool
    server_ssl: ssl.SSLContext | None
    client_ssl: ssl.SSLContext | None

    def run(self, main: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(timeout):
                return await main

        with asyncio.Runner(loop_factory=loop_factory(self.loop == "uvloop")) as runner:
            return runner.run(bounded())

    def serve(self, handler: Any, **options: Any) -> serve:
        return serve(handler, HOST, 0, ssl=self.server_ssl, **options)

    def connect(self, server: Server, **options: Any) -> connect:
        return connect(HOST, server.port, ssl=self.client_ssl, **options)

    @asynccontextmanager
    async def pair(
        self, handler: Any, client_options: dict[str, Any] | None = None, **server_options: Any
    ) -> AsyncIterator[tuple[Server, Connection]]:
        async with (
            self.serve(handler, **server_options) as server,
            self.connect(server, **(client_options or {})) as client,
        ):
            yield server, client


def _contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


@pytest.fixture(
    params=[
        ("asyncio", False),
        ("asyncio", True),
        ("uvloop", False),
        ("uvloop", True),
    ],
    ids=["asyncio-tcp", "asyncio-tls", "uvloop-tcp", "uvloop-tls"],
)
def net(request: pytest.FixtureRequest, ca: trustme.CA) -> Net:
    loop, tls = request.param
    server_ctx, client_ctx = _contexts(ca) if tls else (None, None)
    return Net(loop, tls, server_ctx, client_ctx)


@pytest.fixture(params=["asyncio", "uvloop"])
def tcp(request: pytest.FixtureRequest) -> Net:
    """For tests about behaviour that TLS does not change."""
    return Net(request.param, False, None, None)


Factory = Callable[[], Any]


class Gate:
    """Holds handlers until ``released`` is set; ``arrived`` is set once ``expected`` of them are
    held: a test knows its requests reached their handlers without waiting blindly."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.held = 0
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()

    async def hold(self) -> None:
        self.held += 1
        if self.held >= self.expected:
            self.arrived.set()
        await self.released.wait()


async def until(predicate: Callable[[], object], timeout: float = 10, step: float = 0.01) -> None:
    """Polls ``predicate`` until true, within ``timeout`` seconds: only for state that has no
    event to wait for (a gauge, a flag of the server's); everything else awaits an event."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling is the point, bounded
            await asyncio.sleep(step)
