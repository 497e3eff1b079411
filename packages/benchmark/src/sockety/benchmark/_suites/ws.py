"""Suite ``websockets``: the ``websockets`` library (asyncio implementation) on both sides.

One WebSocket connection carries every request; each binary message starts with a 5 byte
header ``(request id: u32, action: u8)`` so responses can be matched to requests (multiplexed).
``ping`` is the WebSocket protocol ping; ``noreply`` messages carry no id and are counted by
the server, which reports the count in answer to a final request on the same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Any, Final

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .._cases import ALL_CASE_NAMES, REGULAR_RESPONSE
from .._net import bind_socket, forever
from .._suite import Connection, Suite

__all__ = ["WebSocketsConnection", "WebSocketsSuite"]

_HDR: Final = struct.Struct("<IB")
_U64: Final = struct.Struct("<Q")
_STREAM: Final = struct.Struct("<QI")
_MAX: Final = 128 * 1024 * 1024
A_SHORT, A_REGULAR, A_DATA, A_SEND, A_COUNT, A_STREAM = 1, 2, 3, 4, 5, 6
R_OK, R_CHUNK, R_END = 10, 11, 12


async def _stream(ws: ServerConnection, rid: int, total: int, chunk: int) -> None:
    head = _HDR.pack(rid, R_CHUNK)
    piece = head + bytes(chunk)
    sent = 0
    with contextlib.suppress(ConnectionClosed):
        while sent < total:
            n = min(chunk, total - sent)
            await ws.send(piece if n == chunk else piece[: len(head) + n])
            sent += n
        await ws.send(_HDR.pack(rid, R_END))


async def _handler(ws: ServerConnection) -> None:
    received = 0
    streams: set[asyncio.Task[None]] = set()
    try:
        async for message in ws:
            assert isinstance(message, bytes)
            rid, action = _HDR.unpack_from(message)
            if action == A_SHORT:
                await ws.send(_HDR.pack(rid, R_OK))
            elif action == A_REGULAR:
                msgpack.unpackb(memoryview(message)[_HDR.size :])
                await ws.send(_HDR.pack(rid, R_OK) + msgpack.packb(REGULAR_RESPONSE))
            elif action == A_DATA:
                await ws.send(_HDR.pack(rid, R_OK) + _U64.pack(len(message) - _HDR.size))
            elif action == A_SEND:
                msgpack.unpackb(memoryview(message)[_HDR.size :])
                received += 1
            elif action == A_COUNT:
                await ws.send(_HDR.pack(rid, R_OK) + _U64.pack(received))
            elif action == A_STREAM:
                total, chunk = _STREAM.unpack_from(message, _HDR.size)
                task = asyncio.create_task(_stream(ws, rid, total, chunk))
                streams.add(task)
                task.add_done_callback(streams.discard)
    except ConnectionClosed:
        pass
    finally:
        for task in streams:
            task.cancel()


class WebSocketsConnection(Connection):
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.streams: dict[int, Callable[[int], None]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        error: BaseException = ConnectionResetError("connection closed")
        try:
            async for message in self.ws:
                assert isinstance(message, bytes)
                rid, kind = _HDR.unpack_from(message)
                if kind == R_CHUNK:
                    on_data = self.streams.get(rid)
                    if on_data is not None:
                        on_data(len(message) - _HDR.size)
                    continue
                self.streams.pop(rid, None)
                fut = self.pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(message)
        except ConnectionClosed as exc:
            error = exc
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(error)
            self.pending.clear()

    async def _request(self, action: int, payload: bytes = b"") -> bytes:
        self.next_id = rid = (self.next_id + 1) & 0xFFFFFFFF
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            await self.ws.send(_HDR.pack(rid, action) + payload)
        except BaseException:
            self.pending.pop(rid, None)
            raise
        return await fut

    async def ping(self) -> Any:
        await (await self.ws.ping())

    async def short(self) -> Any:
        await self._request(A_SHORT)

    async def regular(self, obj: dict[str, Any]) -> Any:
        response = await self._request(A_REGULAR, msgpack.packb(obj))
        return msgpack.unpackb(memoryview(response)[_HDR.size :])

    async def send(self, obj: dict[str, Any]) -> Any:
        await self.ws.send(_HDR.pack(0, A_SEND) + msgpack.packb(obj))

    async def received(self) -> int:
        count: int = _U64.unpack_from(await self._request(A_COUNT), _HDR.size)[0]
        return count

    async def upload(self, body: bytes) -> Any:
        await self._request(A_DATA, body)

    async def download(self, total: int, chunk: int, on_data: Callable[[int], None]) -> Any:
        self.next_id = rid = (self.next_id + 1) & 0xFFFFFFFF
        self.streams[rid] = on_data
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.ws.send(_HDR.pack(rid, A_STREAM) + _STREAM.pack(total, chunk))
        await fut

    async def aclose(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(BaseException):
            await self.reader


class WebSocketsSuite(Suite):
    name = "websockets"
    description = "WebSockets: websockets (asyncio) server and client, 1 connection, request ids"
    cases = ALL_CASE_NAMES - {"nagle-1m"}  # no way to pace what the library writes
    order = 40

    async def serve(self, host: str, port: int, ready: Callable[[int], None]) -> None:
        sock = bind_socket(host, port)
        async with serve(_handler, sock=sock, max_size=_MAX, compression=None, ping_interval=None):
            ready(sock.getsockname()[1])
            await forever()

    async def connect(self, host: str, port: int) -> Connection:
        ws = await connect(
            f"ws://{host}:{port}/", max_size=_MAX, compression=None, ping_interval=None
        )
        return WebSocketsConnection(ws)


SUITES = [WebSocketsSuite()]
