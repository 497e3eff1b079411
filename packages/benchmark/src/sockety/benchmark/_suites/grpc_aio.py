"""Suite ``grpc``: grpc.aio server and client with generic bytes handlers (no protoc).

Methods of service ``bench.Bench`` take and return raw bytes (no serializers), so the cost
measured is gRPC's own. ``noreply`` is a client-streaming call per connection: the client
writes messages and the server counts them and answers the count when the stream is closed.
gRPC has no application-visible ping, so ``ping`` is n/a.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Final

import grpc  # type: ignore[import-untyped]
import msgpack
from grpc import aio

from .._cases import REGULAR_RESPONSE
from .._net import forever
from .._suite import Connection, Suite

__all__ = ["GrpcConnection", "GrpcSuite"]

_SERVICE: Final = "bench.Bench"
_MAX: Final = 128 * 1024 * 1024
_U64: Final = struct.Struct("<Q")
_STREAM: Final = struct.Struct("<QI")
_OPTIONS: Final = [
    ("grpc.max_receive_message_length", _MAX),
    ("grpc.max_send_message_length", _MAX),
]


async def _short(request: bytes, context: Any) -> bytes:
    return b""


async def _regular(request: bytes, context: Any) -> bytes:
    msgpack.unpackb(request)
    packed: bytes = msgpack.packb(REGULAR_RESPONSE)
    return packed


async def _data(request: bytes, context: Any) -> bytes:
    return _U64.pack(len(request))


async def _noreply(requests: AsyncIterator[bytes], context: Any) -> bytes:
    count = 0
    async for message in requests:
        msgpack.unpackb(message)
        count += 1
    return _U64.pack(count)


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    total, chunk = _STREAM.unpack(request)
    piece = bytes(chunk)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield piece if n == chunk else piece[:n]
        sent += n


class GrpcConnection(Connection):
    """One channel (one HTTP/2 connection: the subchannel pool is local to the channel)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._short = channel.unary_unary(f"/{_SERVICE}/Short")
        self._regular = channel.unary_unary(f"/{_SERVICE}/Regular")
        self._data = channel.unary_unary(f"/{_SERVICE}/Data")
        self._stream = channel.unary_stream(f"/{_SERVICE}/Stream")
        self._noreply_method = channel.stream_unary(f"/{_SERVICE}/NoReply")
        self._noreply: Any = None
        self._lock = asyncio.Lock()

    async def short(self) -> Any:
        await self._short(b"")

    async def regular(self, obj: dict[str, Any]) -> Any:
        return msgpack.unpackb(await self._regular(msgpack.packb(obj)))

    async def upload(self, body: bytes) -> Any:
        await self._data(body)

    async def send(self, obj: dict[str, Any]) -> Any:
        message = msgpack.packb(obj)
        async with self._lock:  # one client stream per connection; writes must not overlap
            if self._noreply is None:
                self._noreply = self._noreply_method()
            await self._noreply.write(message)

    async def received(self) -> int:
        if self._noreply is None:
            return 0
        await self._noreply.done_writing()
        count: int = _U64.unpack(await self._noreply)[0]
        self._noreply = None
        return count

    async def download(self, total: int, chunk: int, on_data: Callable[[int], None]) -> Any:
        async for piece in self._stream(_STREAM.pack(total, chunk)):
            on_data(len(piece))

    async def aclose(self) -> None:
        await self.channel.close(None)


class GrpcSuite(Suite):
    name = "grpc"
    description = "gRPC: grpc.aio server and client, generic bytes handlers, 1 channel"
    cases = frozenset(
        {
            "noreply",
            "short",
            "regular",
            "data-1m",
            "data-4m",
            "file-mem",
            "file-disk",
            "stream",
            "fairness",
        }
    )
    order = 30
    unsupported: ClassVar[dict[str, str]] = {
        "ping": "grpc.aio keeps its HTTP/2 pings internal: none to time"
    }

    async def serve(self, host: str, port: int, ready: Callable[[int], None]) -> None:
        handlers = {
            "Short": grpc.unary_unary_rpc_method_handler(_short),
            "Regular": grpc.unary_unary_rpc_method_handler(_regular),
            "Data": grpc.unary_unary_rpc_method_handler(_data),
            "NoReply": grpc.stream_unary_rpc_method_handler(_noreply),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        }
        server = aio.server(options=[*_OPTIONS, ("grpc.so_reuseport", 1)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        actual = server.add_insecure_port(f"{host}:{port}")
        await server.start()
        ready(actual)
        try:
            await forever()
        finally:
            await server.stop(None)

    async def connect(self, host: str, port: int) -> Connection:
        channel = aio.insecure_channel(
            f"{host}:{port}", options=[*_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        )
        await asyncio.wait_for(channel.channel_ready(), 10)
        return GrpcConnection(channel)


SUITES = [GrpcSuite()]
