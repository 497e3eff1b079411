"""What is exchanged: messages and responses we receive, transfers and requests we send."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any

import msgpack

from .._errors import AbortedError, LocalProtocolError, ResponseTimeoutError
from .._events import FileHeader
from ._streams import ReceivedFile, StreamReader, StreamWriter

if TYPE_CHECKING:
    from ._connection import Connection
    from ._drafts import Outgoing

__all__ = ["Incoming", "Message", "Request", "Response", "Transfer"]


class Incoming:
    """A message or response that arrived. Its data is here; its stream and files follow."""

    __slots__ = (
        "_answered",
        "_connection",
        "_decoded",
        "_discarded",
        "_raw_id",
        "_replies",
        "data",
        "expects_response",
        "files",
        "stream",
    )

    def __init__(
        self, connection: Connection, raw_id: bytes, expects_response: bool, data: bytes | bytearray
    ) -> None:
        # One frame per arrival: the connection sets the subclass's own field after it, and
        # attaches a stream and files when there are any.
        self._connection = connection
        self._raw_id = raw_id
        self.expects_response = expects_response
        #: The data, complete (bytes; a bytearray when it arrived in several packets).
        self.data = data
        self._decoded: Any = _UNSET
        self._answered = False
        self._discarded = False
        self._replies: list[Transfer] | None = None  # replies aborted if the peer aborts it
        #: The attached stream, or None.
        self.stream: StreamReader | None = None
        #: The attached files, in order.
        self.files: tuple[ReceivedFile, ...] = ()

    def _attach(self, has_stream: bool, files: tuple[FileHeader, ...]) -> None:
        if has_stream:
            self.stream = StreamReader(self._connection)
        if files:
            self.files = _received_files(self._connection, files)

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(bytes=self._raw_id)

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def answered(self) -> bool:
        """Whether we already sent a response or fast reply to it."""
        return self._answered

    def msgpack(self) -> Any:
        """The data decoded as msgpack (decoded once)."""
        if self._decoded is _UNSET:
            self._decoded = msgpack.unpackb(self.data)
        return self._decoded

    def fast_reply(self, code: int) -> None:
        """Answers with a fast-reply code (0..4095; see :class:`FastReply`)."""
        self._answered = True
        connection = self._connection
        connection._check_open()
        connection._core.send_fast_reply(self._raw_id, code)
        counts = connection.fast_replies_sent
        counts[code] = counts.get(code, 0) + 1
        connection._schedule_flush()

    def respond(self, response: Outgoing, *, expects_response: bool = False) -> Transfer:
        """Starts a response (made with a :class:`ResponseDraft`); returns it to stream, await
        ``sent()`` or abort."""
        self._answered = True
        reply = self._connection._start(response, self._raw_id, expects_response, False)
        self._connection.responses_sent += 1
        if self.stream is not None or self.files:
            if self._replies is None:
                self._replies = []
            self._replies.append(reply)  # aborted with this message if the peer aborts it
        return reply

    def discard(self) -> None:
        """Drops the rest of its stream and files as they arrive (e.g. after refusing it):
        nothing more is buffered, and their readers end with :class:`AbortedError`. The sender
        is not told; answer it (a fast reply) if it expects a response."""
        if not self._discarded:
            self._discarded = True
            error = AbortedError("discarded by this side", by_peer=False)
            for reader in (self.stream, *self.files):
                if reader is not None:
                    reader._drop(error)

    def _abort(self, error: BaseException) -> None:
        if self.stream is not None:
            self.stream._fail(error)
        for file in self.files:
            file._fail(error)

    def _unfinished(self) -> bool:
        return (self.stream is not None and not self.stream._done) or any(
            not file._done for file in self.files
        )


def _received_files(
    connection: Connection, files: tuple[FileHeader, ...]
) -> tuple[ReceivedFile, ...]:
    return tuple(
        ReceivedFile(connection, index, file.name, file.size) for index, file in enumerate(files)
    )


_UNSET: Any = object()


class Message(Incoming):
    """A message the peer sent."""

    __slots__ = ("action",)

    action: str  #: the action named by the sender

    def __repr__(self) -> str:
        return f"<Message {self.action!r} {self.id} data={len(self.data)} B>"


class Response(Incoming):
    """A response to one of our messages."""

    __slots__ = ("_parent_id",)

    _parent_id: bytes

    @property
    def parent_id(self) -> uuid.UUID:
        return uuid.UUID(bytes=self._parent_id)

    def __repr__(self) -> str:
        return f"<Response {self.id} to {self.parent_id} data={len(self.data)} B>"


class Transfer:
    """A message or response we send: its stream (if any), completion and abort."""

    __slots__ = ("_connection", "_error", "_pump", "_raw_id", "stream")

    def __init__(self, connection: Connection, raw_id: bytes, has_stream: bool) -> None:
        self._connection = connection
        self._raw_id = raw_id
        self._error: BaseException | None = None
        self._pump: asyncio.Task[None] | None = None
        #: The stream we write, or None.
        self.stream: StreamWriter | None = StreamWriter(connection, raw_id) if has_stream else None

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(bytes=self._raw_id)

    async def sent(self) -> None:
        """Waits until all of it (data, files, stream end) was handed to the network."""
        await self._connection._wait_sent(self, everything=True)

    def abort(self) -> None:
        """Aborts it: the peer's readers fail with AbortedError; so does our side's."""
        self._connection._abort_transfer(self)


class Request(Transfer):
    """A message that expects responses. Await it (or ``response()``) for the first reply: a
    :class:`Response`, or an ``int`` fast-reply code (a :class:`FastReply` when known)."""

    __slots__ = ("_future",)

    _multiple = False  # request(..., multiple=True) makes a _MultiRequest

    def __init__(self, connection: Connection, raw_id: bytes, has_stream: bool) -> None:
        # Transfer.__init__, inlined: this runs for every request.
        self._connection = connection
        self._raw_id = raw_id
        self._error = None
        self._pump = None
        self.stream = StreamWriter(connection, raw_id) if has_stream else None
        self._future: asyncio.Future[Response | int] = connection._loop.create_future()

    def _deliver(self, reply: Response | int) -> None:
        if not self._future.done():
            self._future.set_result(reply)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        future = self._future
        if not future.done():
            future.set_exception(error)
            future.exception()  # retrieved: nobody has to await a failed request
        if self._pump is not None:
            self._pump.cancel()

    def __await__(self) -> Generator[Any, None, Response | int]:
        return self._future.__await__()

    async def response(self, timeout: float | None = None) -> Response | int:
        """The first reply; ``timeout`` in seconds raises :class:`ResponseTimeoutError`."""
        if timeout is None:
            return await self._future
        try:
            return await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except TimeoutError:
            raise ResponseTimeoutError(f"no response to {self.id} within {timeout:g} s") from None

    def responses(self) -> AsyncIterator[Response | int]:
        """Every reply as it arrives (needs ``request(..., multiple=True)``), until ``close()``
        or the connection closes."""
        raise LocalProtocolError("responses() needs request(..., multiple=True)")

    def close(self) -> None:
        """Stops listening for more replies (multiple mode)."""
        self._connection._requests.pop(self._raw_id, None)

    def __repr__(self) -> str:
        return f"<Request {self.id}>"


class _MultiRequest(Request):
    """A request that listens for several replies until closed."""

    __slots__ = ("_closed", "_queue", "_waiter")

    _multiple = True

    def __init__(self, connection: Connection, raw_id: bytes, has_stream: bool) -> None:
        super().__init__(connection, raw_id, has_stream)
        self._queue: deque[Response | int] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def _deliver(self, reply: Response | int) -> None:
        if not self._future.done():
            self._future.set_result(reply)
            return
        self._queue.append(reply)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        super()._fail(error)
        self._wake()

    def responses(self) -> AsyncIterator[Response | int]:
        return _Replies(self)

    def close(self) -> None:
        self._closed = True
        super().close()
        self._wake()


class _Replies:
    """``_MultiRequest.responses()``: the first reply, then each queued one, until closed."""

    __slots__ = ("_first", "_request")

    def __init__(self, request: _MultiRequest) -> None:
        self._request = request
        self._first = True

    def __aiter__(self) -> _Replies:
        return self

    async def __anext__(self) -> Response | int:
        request = self._request
        if self._first:
            self._first = False
            return await request._future
        while not request._queue:
            if request._closed or request._error is not None:
                if request._error is not None and not request._closed:
                    raise request._error
                raise StopAsyncIteration
            request._waiter = request._connection._loop.create_future()
            await request._waiter
        return request._queue.popleft()
