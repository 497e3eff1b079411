"""Connecting to a Sockety server."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Generator
from types import TracebackType
from typing import Any

from sockety.core import ConnectError, ConnectionClosedError
from sockety.core.aio import OPTIONS, Connection, Handler, check_options

__all__ = ["connect"]

#: Every keyword ``sockety.core.aio.Connection`` takes, checked when ``connect`` is called: a
#: misspelled one fails at once, not once the socket is open.
_OPTIONS = OPTIONS


def _check_options(options: dict[str, Any]) -> None:
    check_options(options, "connect")


class connect:  # used like a function, as websockets.connect is
    """Connects to a Sockety server; await it, or use it with ``async with``::

        async with connect("127.0.0.1", 9000) as client:
            reply = await client.request(ping())

    ``ssl``: None for TCP, True for TLS with the default context (certificates verified), or an
    ``ssl.SSLContext``. ``handler`` receives the messages the server pushes (else iterate the
    connection). ``connect_timeout`` bounds TCP connect, TLS handshake and the Sockety header.
    Other keywords are the connection's options and limits (see ``Connection``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        handler: Handler | None = None,
        connect_timeout: float | None = 10.0,
        **options: Any,
    ) -> None:
        _check_options(options)
        self._host = host
        self._port = port
        if ssl is True:
            ssl = ssl_module.create_default_context()
        self._ssl = ssl or None
        self._server_hostname = server_hostname
        self._handler = handler
        self._timeout = connect_timeout
        self._options = options
        self._connection: Connection | None = None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        where = f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(self._timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(self._handler, **self._options),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname if self._ssl else None,
                )
                await connection.wait_opened()
        except TimeoutError as error:
            raise ConnectError(f"could not connect to {where}: timed out") from error
        except ssl_module.SSLError as error:
            raise ConnectError(f"TLS handshake with {where} failed: {error}") from error
        except OSError as error:
            raise ConnectError(f"could not connect to {where}: {error}") from error
        except ConnectionClosedError as error:
            raise ConnectError(f"{where} closed the connection: {error.reason}") from error
        self._connection = connection
        return connection

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._connect().__await__()

    async def __aenter__(self) -> Connection:
        return await self._connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()
