"""Connecting to a Sockety server."""

from __future__ import annotations

import asyncio
import difflib
import ssl as ssl_module
from collections.abc import Generator
from types import TracebackType
from typing import Any

from sockety.core import ConnectError, ConnectionClosedError
from sockety.core.aio import Connection, Handler

__all__ = ["connect"]

#: Every keyword ``sockety.core.aio.Connection`` takes (its options, then the sans-IO limits it
#: passes on to ``sockety.core.Connection``), checked when ``connect`` is called: a misspelled
#: one fails at once, not once the socket is open. Listed rather than read from the signatures,
#: which the compiled build does not keep; a test compares this with both signatures.
_OPTIONS = frozenset(
    {
        "heartbeat_interval",
        "idle_timeout",
        "open_timeout",
        "close_timeout",
        "max_receive_buffer",
        "read_buffer_size",
        "socket_buffer_size",
        "receive_buffer_size",
        "notsent_lowat",
        "max_queued_messages",
        "write_budget",
        "write_buffer_limit",
        "stream_buffer_limit",
        # sockety.core.Connection
        "channels",
        "send_channels",
        "max_action_size",
        "max_data_size",
        "max_files",
        "max_header_size",
        "max_buffered_bytes",
        "max_packet_size",
    }
)


def _check_options(options: dict[str, Any]) -> None:
    for name in options:
        if name not in _OPTIONS:
            close = difflib.get_close_matches(name, _OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"connect() got an unexpected keyword argument {name!r}{hint}")


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
