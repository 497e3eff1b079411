"""Two ``sockety.core.aio`` connections over a real 127.0.0.1 socket, without the server
package: what the asyncio layer's own tests drive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sockety.core.aio import Connection, Handler, loop_factory

T = TypeVar("T")
HOST = "127.0.0.1"
LOOPS = ["asyncio", "uvloop"]


def run(main: Coroutine[Any, Any, T], loop: str = "asyncio", timeout: float = 30) -> T:
    """Runs ``main`` on a fresh loop (``asyncio`` or ``uvloop``), bounded by ``timeout``."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main

    with asyncio.Runner(loop_factory=loop_factory(loop == "uvloop")) as runner:
        return runner.run(bounded())


@asynccontextmanager
async def connected(
    server_handler: Handler | None = None,
    client_handler: Handler | None = None,
    *,
    server_options: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Connection, Connection]]:
    """(the accepting side, the connecting side), both opened; closed gracefully on exit."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Connection] = loop.create_future()

    def accept() -> Connection:
        connection = Connection(server_handler, **(server_options or {}))
        if not accepted.done():
            accepted.set_result(connection)
        return connection

    listener = await loop.create_server(accept, HOST, 0)
    try:
        port = listener.sockets[0].getsockname()[1]
        _, client = await loop.create_connection(
            lambda: Connection(client_handler, **(client_options or {})), HOST, port
        )
        server = await accepted
        await asyncio.gather(server.wait_opened(), client.wait_opened())
        try:
            yield server, client
        finally:
            await asyncio.gather(client.close(), server.close())
    finally:
        listener.close()
        await listener.wait_closed()
