"""What is exchanged: messages and responses we receive, transfers and requests we send.

They act on their connection only through its port (``_port.Port``): answers, aborts, waits
and flow control. ``start`` begins a message or response we send.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, cast

import msgpack

from .._errors import AbortedError, ConnectionClosedError, LocalProtocolError, ResponseTimeoutError
from .._events import FileHeader
from .._ids import new_id
from . import _files
from ._drafts import FileTransfer, Outgoing
from ._port import Port
from ._streams import IncomingStream, OutgoingStream, ReceivedFile

if TYPE_CHECKING:
    # Only to annotate the public ``connection`` properties: the port's owner is the
    # connection, which these objects never call.
    from ._connection import Connection

__all__ = ["Incoming", "Message", "Request", "RequestPort", "Response", "Transfer", "start"]

logger = logging.getLogger("sockety")


class Incoming:
    """A message or response that arrived. Its data is here; its stream and files follow."""

    __slots__ = (
        "_answered",
        "_decoded",
        "_discarded",
        "_owner",
        "_port",
        "_raw_id",
        "_replies",
        "data",
        "expects_response",
        "files",
        "stream",
    )

    def __init__(
        self,
        port: RequestPort,
        raw_id: bytes,
        expects_response: bool,
        data: bytes | bytearray,
        has_stream: bool,
        files: tuple[FileHeader, ...],
    ) -> None:
        # One frame per arrival: the connection sets a Message's action after it.
        self._port = port
        self._owner = port.owner  # the connection (the port forgets it once closed)
        self._raw_id = raw_id
        self.expects_response = expects_response
        #: The data, complete (bytes; a bytearray when it arrived in several packets).
        self.data = data
        self._decoded: Any = _UNSET
        self._answered = False
        self._discarded = False
        self._replies: list[Transfer] | None = None  # replies aborted if the peer aborts it
        #: The attached stream, or None.
        self.stream: IncomingStream | None = IncomingStream(port) if has_stream else None
        #: The attached files, in order.
        self.files: tuple[ReceivedFile, ...] = _received_files(port, files) if files else ()

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(bytes=self._raw_id)

    @property
    def connection(self) -> Connection:
        return cast("Connection", self._owner)

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
        self._port.send_fast_reply(self._raw_id, code)

    def respond(self, response: Outgoing, *, expects_response: bool = False) -> Transfer:
        """Starts a response (made with a :class:`ResponseDraft`); returns it to stream, await
        ``sent()`` or abort."""
        self._answered = True
        reply = start(self._port, response, self._raw_id, expects_response, False)
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
                    reader.drop(error)

    # -- the connection's side: called as the peer's bytes arrive (not for applications) -----

    def answer_with(self, code: int) -> None:
        """The handler returned ``code``: its fast reply, queued with the other answers of the
        read being handled (the connection writes them together)."""
        self._answered = True
        self._port.queue_fast_reply(self._raw_id, code)

    @property
    def discarded(self) -> bool:
        """Whether ``discard()`` was called."""
        return self._discarded

    @property
    def complete(self) -> bool:
        """Whether its stream and every file ended (all arrived, or failed)."""
        return (self.stream is None or self.stream.ended) and all(file.ended for file in self.files)

    def feed_stream(self, chunk: bytes) -> None:
        """A chunk of its stream arrived (dropped once discarded)."""
        if self.stream is not None and not self._discarded:
            self.stream.feed_data(chunk)

    def end_stream(self) -> bool:
        """Its stream ended; returns whether it is complete now."""
        if self.stream is None:
            return False
        self.stream.feed_eof()
        return self.complete

    def feed_file(self, index: int, chunk: bytes) -> None:
        """A chunk of file ``index`` arrived (dropped once discarded)."""
        if not self._discarded:
            self.files[index].feed_data(chunk)

    def end_file(self, index: int) -> bool:
        """File ``index`` ended; returns whether it is complete now."""
        self.files[index].feed_eof()
        return self.complete

    def set_exception(self, error: BaseException) -> None:
        """The rest will not arrive: its stream and files raise ``error`` (after their chunks)."""
        if self.stream is not None:
            self.stream.set_exception(error)
        for file in self.files:
            file.set_exception(error)

    def peer_aborted(self) -> None:
        """The peer aborted it: its readers fail, and so do our answers to it."""
        self.set_exception(AbortedError("aborted by the peer", by_peer=True))
        for reply in self._replies or ():
            reply.abort()


def _received_files(port: RequestPort, files: tuple[FileHeader, ...]) -> tuple[ReceivedFile, ...]:
    return tuple(
        ReceivedFile(port, index, file.name, file.size) for index, file in enumerate(files)
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

    def __init__(
        self,
        port: RequestPort,
        parent_id: bytes,
        raw_id: bytes,
        expects_response: bool,
        data: bytes | bytearray,
        has_stream: bool,
        files: tuple[FileHeader, ...],
    ) -> None:
        super().__init__(port, raw_id, expects_response, data, has_stream, files)
        self._parent_id = parent_id

    @property
    def parent_id(self) -> uuid.UUID:
        return uuid.UUID(bytes=self._parent_id)

    def __repr__(self) -> str:
        return f"<Response {self.id} to {self.parent_id} data={len(self.data)} B>"


class Transfer:
    """A message or response we send: its stream (if any), completion and abort."""

    __slots__ = ("_error", "_port", "_pump", "_raw_id", "stream")

    def __init__(
        self,
        port: RequestPort,
        raw_id: bytes,
        has_stream: bool,
        files: tuple[FileTransfer, ...] = (),
    ) -> None:
        self._port = port
        self._raw_id = raw_id
        self._error: BaseException | None = None
        self._pump: asyncio.Task[None] | None = None
        #: The stream we write, or None.
        self.stream: OutgoingStream | None = OutgoingStream(port, raw_id) if has_stream else None
        if files:
            self._send_files(files)

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(bytes=self._raw_id)

    async def sent(self) -> None:
        """Waits until all of it (data, files, stream end) was handed to the network."""
        await self.wait_sent(everything=True)

    async def wait_sent(self, *, everything: bool) -> None:
        """Waits until it was handed to the network: all of it (``everything``), or its
        header, data and files (not its stream)."""
        port = self._port
        raw_id = self._raw_id
        while True:
            if self._error is not None:
                raise self._error
            port.check_open()
            if self._pump is not None:
                await asyncio.shield(self._pump)
                continue
            if not port.unsent(raw_id, everything):
                return
            await port.progress()

    def abort(self) -> None:
        """Aborts it: the peer's readers fail with AbortedError; so does our side's."""
        error = AbortedError("aborted by this side", by_peer=False)
        self._error = error
        if self.stream is not None:
            self.stream.set_exception(error)
        if self._pump is not None:
            self._pump.cancel()
        self._aborted(error)
        self._port.abort(self._raw_id)

    def _aborted(self, error: BaseException) -> None:
        pass  # a request stops waiting for replies

    def _send_files(self, files: tuple[FileTransfer, ...]) -> None:
        port = self._port
        if _files.in_memory(files):
            _files.queue_in_memory(port, self._raw_id, files)
            return
        pump = port.loop.create_task(self._pump_files(files))
        self._pump = pump
        port.pumps.add(pump)
        pump.add_done_callback(port.pumps.discard)

    async def _pump_files(self, files: tuple[FileTransfer, ...]) -> None:
        port = self._port
        try:
            await _files.pump(port, self._raw_id, files)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a size mismatch, a read error, or the source's own
            self._error = error
            if not port.closed and not isinstance(error, ConnectionClosedError):
                port.abort(self._raw_id)  # the peer learns the exchange will not complete
            self._pump_failed(error)
            logger.warning("sending files of %s failed: %s", self.id, error)
        finally:
            self._pump = None

    def _pump_failed(self, error: BaseException) -> None:
        pass  # a request fails with it


class Request(Transfer):
    """A message that expects responses. Await it (or ``response()``) for the first reply: a
    :class:`Response`, or an ``int`` fast-reply code (a :class:`FastReply` when known)."""

    __slots__ = ("_future",)

    def __init__(
        self,
        port: RequestPort,
        raw_id: bytes,
        has_stream: bool,
        files: tuple[FileTransfer, ...] = (),
    ) -> None:
        # Transfer.__init__, inlined: this runs for every request.
        self._port = port
        self._raw_id = raw_id
        self._error = None
        self._pump = None
        self.stream = OutgoingStream(port, raw_id) if has_stream else None
        self._future: asyncio.Future[Response | int] = port.loop.create_future()
        if files:
            self._send_files(files)

    # -- the connection's side: called as replies arrive (not for applications) -------------

    def deliver(self, reply: Response | int) -> bool:
        """A reply arrived; returns whether it was taken (False: nobody waits for it any more,
        an orphan). A single-reply request is answered once and stops listening."""
        self._port.forget_request(self._raw_id)
        future = self._future
        if future.done():
            return False
        future.set_result(reply)
        return True

    def set_exception(self, error: BaseException) -> None:
        """It failed: awaiting it raises ``error`` (its file pump stops)."""
        self._error = error
        future = self._future
        if not future.done():
            future.set_exception(error)
            future.exception()  # retrieved: nobody has to await a failed request
        if self._pump is not None:
            self._pump.cancel()

    def _aborted(self, error: BaseException) -> None:
        self._port.forget_request(self._raw_id)
        self.set_exception(error)

    def _pump_failed(self, error: BaseException) -> None:
        self.set_exception(error)

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
        self._port.forget_request(self._raw_id)

    def __repr__(self) -> str:
        return f"<Request {self.id}>"


class _MultiRequest(Request):
    """A request that listens for several replies until closed."""

    __slots__ = ("_closed", "_queue", "_waiter")

    def __init__(
        self,
        port: RequestPort,
        raw_id: bytes,
        has_stream: bool,
        files: tuple[FileTransfer, ...] = (),
    ) -> None:
        self._queue: deque[Response | int] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        super().__init__(port, raw_id, has_stream, files)

    def deliver(self, reply: Response | int) -> bool:
        """A reply arrived: the first answers it, later ones queue for ``responses()``; it
        listens on until closed."""
        if not self._future.done():
            self._future.set_result(reply)
            return True
        self._queue.append(reply)
        self._wake()
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def set_exception(self, error: BaseException) -> None:
        super().set_exception(error)
        self._wake()

    def responses(self) -> AsyncIterator[Response | int]:
        return _Replies(self)

    async def first_reply(self) -> Response | int:
        return await self._future

    async def next_reply(self) -> Response | int | None:
        """The next queued reply; None once closed (raises why it failed, if it did)."""
        while not self._queue:
            if self._closed or self._error is not None:
                if self._error is not None and not self._closed:
                    raise self._error
                return None
            self._waiter = self._port.loop.create_future()
            await self._waiter
        return self._queue.popleft()

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
            return await request.first_reply()
        reply = await request.next_reply()
        if reply is None:
            raise StopAsyncIteration
        return reply


#: The port of a connection whose request table holds :class:`Request` objects.
RequestPort = Port[Request]


def start(
    port: RequestPort,
    outgoing: Outgoing,
    parent_id: bytes | None,
    expects_response: bool,
    multiple: bool,
) -> Transfer:
    """Starts sending a message (``parent_id`` None) or a response to ``parent_id``: a
    :class:`Request` (registered to receive its replies) for a message that expects responses,
    else a :class:`Transfer`."""
    raw_id = new_id()
    if parent_id is None:
        port.send_message(raw_id, outgoing, expects_response)
    else:
        port.send_response(parent_id, raw_id, outgoing, expects_response)
    if expects_response and parent_id is None:
        request = (_MultiRequest if multiple else Request)(
            port, raw_id, outgoing.stream, outgoing.files
        )
        port.requests[raw_id] = request
        transfer: Transfer = request
    else:
        transfer = Transfer(port, raw_id, outgoing.stream, outgoing.files)
    port.flush()
    return transfer
