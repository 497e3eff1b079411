"""Streams and files: what the peer sends arrives through readers, what we send goes through
writers. Both take part in the connection's flow control, through its port."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from pathlib import Path
from typing import Any

from .._errors import LocalProtocolError
from ._port import Port

__all__ = ["IncomingStream", "OutgoingStream", "ReceivedFile"]


class IncomingStream:
    """Bytes the peer streams to us, as an async iterator of chunks.

    ``async for chunk in message.stream`` or ``await message.stream.read()``. Chunks that arrived
    are always delivered; an abort or a lost connection is raised after them.
    """

    __slots__ = ("_chunks", "_done", "_error", "_port", "_received", "_waiter")

    def __init__(self, port: Port[Any]) -> None:
        self._port = port
        # Made with the first chunk: a message may declare a thousand files that never come.
        self._chunks: deque[bytes] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._received = 0

    @property
    def received(self) -> int:
        """How many bytes arrived so far."""
        return self._received

    @property
    def at_eof(self) -> bool:
        """True once the stream ended and every chunk was read."""
        return self._done and not self._chunks

    # -- the connection's side: called as the peer's bytes arrive (not for applications) -----

    @property
    def ended(self) -> bool:
        """Whether the stream ended: all of it arrived, or it failed (chunks may be unread)."""
        return self._done

    def feed_data(self, chunk: bytes) -> None:
        """A chunk arrived (it counts for flow control until read)."""
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = deque()
        chunks.append(chunk)
        self._received += len(chunk)
        self._port.received(len(chunk))
        self._wake()

    def feed_eof(self) -> None:
        """The stream ended."""
        self._done = True
        self._wake()

    def set_exception(self, error: BaseException) -> None:
        """The stream will not end: ``error`` is raised after the chunks that arrived."""
        if not self._done:
            self._error = error
            self._done = True
            self._wake()

    def drop(self, error: BaseException) -> None:
        """Discards what is buffered (releasing it from flow control) and fails the reader."""
        chunks = self._chunks
        if chunks:
            self._port.consumed(sum(map(len, chunks)))
            chunks.clear()
        self.set_exception(error)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def __aiter__(self) -> IncomingStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._waiter = self._port.loop.create_future()
            await self._waiter
        chunks = self._chunks
        assert chunks is not None
        chunk = chunks.popleft()
        self._port.consumed(len(chunk))
        return chunk

    async def read(self) -> bytes:
        """Everything until the end of the stream."""
        return b"".join([chunk async for chunk in self])


class ReceivedFile(IncomingStream):
    """A file the peer sends: its name, declared size, and its bytes as an async iterator."""

    __slots__ = ("index", "name", "size")

    def __init__(self, port: Port[Any], index: int, name: str, size: int) -> None:
        super().__init__(port)
        self.index = index
        self.name = name
        self.size = size

    async def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the file to ``path`` chunk by chunk; returns the path."""
        target = Path(path)
        with target.open("wb") as out:  # noqa: ASYNC230 - page-cache writes of one chunk
            async for chunk in self:
                out.write(chunk)
        return target

    def __repr__(self) -> str:
        return f"<ReceivedFile {self.name!r} {self.received}/{self.size} B>"


class OutgoingStream:
    """The stream we attach to a message or response.

    ``write()`` queues bytes (it never blocks); ``await drain()`` waits while too much is queued
    or the transport is paused; ``await send(data)`` does both; ``end()`` ends the stream.
    """

    __slots__ = ("_ended", "_error", "_id", "_port")

    def __init__(self, port: Port[Any], id: bytes) -> None:
        self._port = port
        self._id = id
        self._ended = False
        self._error: BaseException | None = None

    @property
    def ended(self) -> bool:
        return self._ended

    def set_exception(self, error: BaseException) -> None:
        """The exchange was aborted: writing raises ``error`` from now on (the connection's
        side; not for applications)."""
        self._error = error

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._ended:
            raise LocalProtocolError("the stream has ended")
        # Our own copy: the caller may reuse its buffer once write() returned.
        chunk = data if type(data) is bytes else bytes(data)
        self._port.send_stream(self._id, chunk)

    async def drain(self) -> None:
        """Waits until the queued bytes of this stream are below the limit and can be written."""
        await self._port.writable(self._id)
        if self._error is not None:
            raise self._error

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """``write(data)``, then ``await drain()``."""
        self.write(data)
        await self.drain()

    def end(self) -> None:
        """Ends the stream (idempotent)."""
        if self._ended or self._error is not None:
            return
        self._ended = True
        self._port.end_stream(self._id)
