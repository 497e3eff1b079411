"""The raw-Python ceiling: the smallest multiplexed RPC that asyncio can carry.

Frames are ``(length: u32, id: u32, type: u8)`` little-endian headers followed by ``length``
body bytes. Both sides are :class:`asyncio.BufferedProtocol` subclasses:

* receiving: small frames are parsed out of one reusable buffer; a body larger than
  :data:`BIG` is received straight into a ``bytearray`` sized from the frame header
  (``get_buffer`` returns a memoryview into it), so megabytes are never copied twice;
* sending: the first frame of a loop turn is written at once; frames produced later in the same
  turn are queued and coalesced into one ``transport.write`` by a ``loop.call_soon`` flush;
  large bodies go to the transport as they are (``writelines``), never joined;
* the client keeps a dict of request id -> future, ids come from a counter, and the server
  calls its synchronous handlers directly from ``buffer_updated`` (no task per request).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, Final, cast

import msgpack

from ._cases import REGULAR_RESPONSE
from ._paced import write_paced

__all__ = [
    "BIG",
    "HEADER",
    "RawClientProtocol",
    "RawServerProtocol",
    "T_CHUNK",
    "T_COUNT",
    "T_DATA",
    "T_ECHO",
    "T_END",
    "T_ERROR",
    "T_PING",
    "T_PONG",
    "T_REGULAR",
    "T_RESPONSE",
    "T_SEND",
    "T_SHORT",
    "T_STREAM",
]

HEADER: Final = struct.Struct("<IIB")
_HSIZE: Final = HEADER.size
_U64: Final = struct.Struct("<Q")
_STREAM_REQ: Final = struct.Struct("<QI")
#: Bodies larger than this are received into their own buffer and written without copying.
BIG: Final = 16 * 1024
_RECV_BUFFER: Final = 256 * 1024
_WRITE_HIGH: Final = 4 * 1024 * 1024

T_PING, T_PONG, T_SHORT, T_REGULAR, T_DATA, T_SEND, T_COUNT = 1, 2, 3, 4, 5, 6, 7
T_STREAM, T_RESPONSE, T_CHUNK, T_END, T_ERROR, T_ECHO = 8, 9, 10, 11, 12, 13

Body = bytes | bytearray | memoryview


class _Framed(asyncio.BufferedProtocol):
    """Framing, receive buffers and coalesced writes shared by client and server."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray(_RECV_BUFFER)
        self._mv = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._big: bytearray | None = None
        self._big_mv = memoryview(b"")
        self._big_pos = 0
        self._big_id = 0
        self._big_type = 0
        self._queue: list[Body] = []
        self._corked = False
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed = False

    # -- receiving ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        # Keep a few large bodies queued so the socket never runs dry between them.
        self._transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_HIGH // 4)

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return self._big_mv[self._big_pos :]
        if self._end == len(self._buf):
            # Move the partial frame at the tail to the front (a small frame always fits).
            start, end = self._start, self._end
            self._buf[0 : end - start] = self._buf[start:end]
            self._start, self._end = 0, end - start
        return self._mv[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is not None:
            self._big_pos += nbytes
            if self._big_pos == len(self._big):
                body, self._big = self._big, None
                self._big_mv = memoryview(b"")
                self.frame_received(self._big_id, self._big_type, body)
            return
        end = self._end + nbytes
        start = self._start
        mv = self._mv
        unpack = HEADER.unpack_from
        while end - start >= _HSIZE:
            length, fid, ftype = unpack(mv, start)
            body_start = start + _HSIZE
            avail = end - body_start
            if avail >= length:
                start = body_start + length
                self._start, self._end = start, end
                self.frame_received(fid, ftype, mv[body_start:start])
            elif length > BIG:
                big = bytearray(length)
                big[:avail] = mv[body_start:end]
                self._big, self._big_mv, self._big_pos = big, memoryview(big), avail
                self._big_id, self._big_type = fid, ftype
                start = end = 0
                break
            else:
                break
        if start == end:
            start = end = 0
        self._start, self._end = start, end

    def frame_received(self, fid: int, ftype: int, body: Body) -> None:
        """Handle one frame. ``body`` may be a view into the receive buffer: copy to keep it."""
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._transport = None
        self._wake_drainers(exc or ConnectionResetError("connection lost"))

    # -- sending ------------------------------------------------------------------------------

    def write_frame(self, fid: int, ftype: int, body: Body = b"") -> None:
        transport = self._transport
        if transport is None:
            raise ConnectionResetError("connection closed")
        n = len(body)
        header = HEADER.pack(n, fid, ftype)
        if n > BIG:
            if self._queue:
                self._queue.append(header)
                joined = b"".join(self._queue)
                self._queue.clear()
                transport.writelines((joined, body))
            else:
                transport.writelines((header, body))
            return
        data = header + body if n else header
        if self._corked:
            self._queue.append(data)
        else:
            transport.write(data)
            self._corked = True
            self._loop.call_soon(self._uncork)

    def _uncork(self) -> None:
        self._corked = False
        queue = self._queue
        if queue and self._transport is not None:
            self._transport.write(b"".join(queue) if len(queue) > 1 else queue[0])
        queue.clear()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainers(None)

    def _wake_drainers(self, exc: BaseException | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark."""
        if self._closed:
            raise ConnectionResetError("connection closed")
        while self._paused:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def close(self) -> None:
        if self._transport is not None:
            self._uncork()
            self._transport.close()


class RawServerProtocol(_Framed):
    """The ceiling's server: every handler is a plain function called in ``buffer_updated``."""

    def __init__(self) -> None:
        super().__init__()
        self.received = 0
        self._streams: set[asyncio.Task[None]] = set()

    def frame_received(self, fid: int, ftype: int, body: Body) -> None:
        if ftype == T_SHORT:
            self.write_frame(fid, T_RESPONSE)
        elif ftype == T_REGULAR:
            msgpack.unpackb(body)
            self.write_frame(fid, T_RESPONSE, msgpack.packb(REGULAR_RESPONSE))
        elif ftype == T_PING:
            self.write_frame(fid, T_PONG)
        elif ftype == T_DATA:
            self.write_frame(fid, T_RESPONSE, _U64.pack(len(body)))
        elif ftype == T_SEND:
            msgpack.unpackb(body)
            self.received += 1
        elif ftype == T_COUNT:
            self.write_frame(fid, T_RESPONSE, _U64.pack(self.received))
        elif ftype == T_ECHO:
            self.write_frame(fid, T_RESPONSE, bytes(body))
        elif ftype == T_STREAM:
            total, chunk = _STREAM_REQ.unpack(body)
            task = self._loop.create_task(self._stream(fid, total, chunk))
            self._streams.add(task)
            task.add_done_callback(self._streams.discard)
        else:
            self.write_frame(fid, T_ERROR, b"unknown frame type")

    async def _stream(self, fid: int, total: int, chunk: int) -> None:
        piece = bytes(chunk)
        sent = 0
        try:
            while sent < total:
                n = min(chunk, total - sent)
                self.write_frame(fid, T_CHUNK, piece if n == chunk else piece[:n])
                sent += n
                if self._paused:
                    await self.drain()
            self.write_frame(fid, T_END)
        except ConnectionError:
            pass

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for task in self._streams:
            task.cancel()


class RawClientProtocol(_Framed):
    """The ceiling's client: ``request`` returns a future resolved by the response frame."""

    def __init__(self) -> None:
        super().__init__()
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, Callable[[int], None]] = {}
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._done.set_result(None)

    def request(self, ftype: int, body: Body = b"") -> asyncio.Future[Any]:
        """Send a request frame; the future resolves to the response body (bytes)."""
        self._next_id = fid = (self._next_id + 1) & 0xFFFFFFFF
        self.write_frame(fid, ftype, body)
        fut = self._loop.create_future()
        self._pending[fid] = fut
        return fut

    async def request_paced(self, ftype: int, body: bytes) -> Any:
        """``request``, written as :func:`sockety.benchmark._paced.write_paced` does (the
        ``nagle-1m`` case; the transport has Nagle on)."""
        transport = self._transport
        if transport is None:
            raise ConnectionResetError("connection closed")
        self._next_id = fid = (self._next_id + 1) & 0xFFFFFFFF
        fut = self._loop.create_future()
        self._pending[fid] = fut
        await write_paced(transport, (HEADER.pack(len(body), fid, ftype), body))
        return await fut

    def send(self, ftype: int, body: Body = b"") -> asyncio.Future[None]:
        """Fire-and-forget; the returned future waits only for transport backpressure."""
        self.write_frame(0, ftype, body)
        if self._paused:
            return asyncio.ensure_future(self.drain())
        return self._done

    def stream(self, total: int, chunk: int, on_data: Callable[[int], None]) -> asyncio.Future[Any]:
        """Ask the server to stream ``total`` bytes; ``on_data`` gets each chunk's size."""
        self._next_id = fid = (self._next_id + 1) & 0xFFFFFFFF
        fut = self._loop.create_future()
        self._pending[fid] = fut
        self._streams[fid] = on_data
        self.write_frame(fid, T_STREAM, _STREAM_REQ.pack(total, chunk))
        return fut

    def frame_received(self, fid: int, ftype: int, body: Body) -> None:
        if ftype == T_CHUNK:
            on_data = self._streams.get(fid)
            if on_data is not None:
                on_data(len(body))
            return
        fut = self._pending.pop(fid, None)
        if fut is None or fut.done():
            self._streams.pop(fid, None)
            return
        if ftype == T_RESPONSE:
            fut.set_result(bytes(body) if type(body) is memoryview else body)
        elif ftype == T_PONG:
            fut.set_result(None)
        elif ftype == T_END:
            self._streams.pop(fid, None)
            fut.set_result(None)
        else:
            fut.set_exception(RuntimeError(f"server error: {bytes(body)!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        pending, self._pending = self._pending, {}
        self._streams.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("connection lost"))
