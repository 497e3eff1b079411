"""Suite ``raw``: the raw-Python ceiling (see ``sockety.benchmark._raw``)."""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from .._cases import ALL_CASE_NAMES
from .._net import bind_socket, forever
from .._paced import nagle_on
from .._raw import (
    T_COUNT,
    T_DATA,
    T_PING,
    T_REGULAR,
    T_SEND,
    T_SHORT,
    RawClientProtocol,
    RawServerProtocol,
)
from .._suite import Connection, Suite
from ._tls import OverTls

__all__ = ["RawConnection", "RawSuite", "RawTlsSuite"]


class RawConnection(Connection):
    def __init__(self, protocol: RawClientProtocol) -> None:
        self.protocol = protocol
        self.nagle = False

    def ping(self) -> Awaitable[Any]:
        return self.protocol.request(T_PING)

    def short(self) -> Awaitable[Any]:
        return self.protocol.request(T_SHORT)

    async def regular(self, obj: dict[str, Any]) -> Any:
        return msgpack.unpackb(await self.protocol.request(T_REGULAR, msgpack.packb(obj)))

    def send(self, obj: dict[str, Any]) -> Awaitable[Any]:
        return self.protocol.send(T_SEND, msgpack.packb(obj))

    async def received(self) -> int:
        count: int = struct.unpack("<Q", await self.protocol.request(T_COUNT))[0]
        return count

    async def upload(self, body: bytes) -> Any:
        # Respect backpressure before queueing another large body: piling megabytes into the
        # transport buffer only measures memmove (quadratically so on asyncio < 3.12).
        await self.protocol.drain()
        return await self.protocol.request(T_DATA, body)

    def upload_paced(self, body: bytes) -> Awaitable[Any]:
        if not self.nagle:
            transport = self.protocol.transport
            assert transport is not None
            nagle_on(transport)
            self.nagle = True
        return self.protocol.request_paced(T_DATA, body)

    def download(self, total: int, chunk: int, on_data: Callable[[int], None]) -> Awaitable[Any]:
        return self.protocol.stream(total, chunk, on_data)

    async def aclose(self) -> None:
        self.protocol.close()


class RawSuite(Suite):
    name = "raw"
    description = (
        "raw-Python ceiling: length-prefixed frames on a BufferedProtocol, coalesced writes"
    )
    cases = ALL_CASE_NAMES
    order = 0

    def server_ssl(self) -> ssl.SSLContext | None:
        return None

    def client_ssl(self) -> ssl.SSLContext | None:
        return None

    async def serve(self, host: str, port: int, ready: Callable[[int], None]) -> None:
        sock = bind_socket(host, port)
        server = await asyncio.get_running_loop().create_server(
            RawServerProtocol, sock=sock, ssl=self.server_ssl()
        )
        ready(sock.getsockname()[1])
        try:
            await forever()
        finally:
            server.close()

    async def connect(self, host: str, port: int) -> Connection:
        _, protocol = await asyncio.get_running_loop().create_connection(
            RawClientProtocol, host, port, ssl=self.client_ssl()
        )
        return RawConnection(protocol)


class RawTlsSuite(OverTls, RawSuite):
    """The same ceiling over TLS (the ssl module through asyncio's transport, as Sockety's): what
    TLS itself costs, so that Sockety over TLS is measured against its own limit."""

    name = "tls-ceiling"
    description = "raw-Python ceiling over TLS (same framing and buffers; trustme certificates)"
    order = 1


SUITES = [RawSuite(), RawTlsSuite()]
