"""Dispatch: the core's events become messages for handlers (or the inbox) and replies for our
requests.

Rules:
    * A message goes to the handler, called at once; an awaitable result runs as a task. At most
      ``max_handlers`` tasks run: later messages wait (their streams and files still arrive),
      and past ``max_queued_messages`` waiting, reading pauses. Without a handler, messages
      queue in the inbox for ``async for``, with the same limit.
    * A handler's int result is its fast reply (if nothing answered yet); a handler that raises
      answers InternalError.
    * A request for the empty action (``ping()``) is answered Accept here, before any handler.
    * A reply goes to the request awaiting it; a single-reply request is answered once. A reply
      nobody waits for (answered already, unknown, cancelled) is an orphan: counted, and its
      stream and files dropped as they arrive, never buffered.
    * Stream and file chunks go to their readers; the peer's Abort fails them, and cancels our
      answers to the aborted message.
    * Go Away from the peer fails our requests it will never see, and begins our close.
    * The answers that handling one read produced are written together, in hand-offs (see
      ``process``); if the peer does not read them, the rest of the events wait, and so does
      reading.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, final

from .. import _connection as _core
from .._constants import FastReply
from .._errors import ConnectionClosedError, GoingAwayError
from .._events import (
    Aborted,
    ConnectionClosed,
    ConnectionOpened,
    FastReplyReceived,
    FileChunkReceived,
    FileEnded,
    GoAwayReceived,
    HeartbeatReceived,
    MessageReceived,
    ResponseReceived,
    StreamChunkReceived,
    StreamEnded,
)
from ._exchanges import Incoming, Message, RequestPort, Response
from ._flow import ReadFlow
from ._output import Output

__all__ = ["Dispatch", "Handler"]

logger = logging.getLogger("sockety")

#: A message handler: called with each message; may return a fast-reply code, None, or an
#: awaitable of either (then it runs as a task).
Handler = Callable[[Message], Any]

_HANDOFF_EVERY = 16  # events of one read whose answers are written together (see process)
_HANDOFF_MASK = _HANDOFF_EVERY - 1
_KNOWN_CODES = tuple(FastReply)
_KNOWN_COUNT = len(_KNOWN_CODES)


def _closed_handler(event: object) -> None:
    pass  # events that come after the connection closed (none should) are dropped


_CLOSED_HANDLERS: dict[type, Callable[[Any], None]] = {
    event_type: _closed_handler
    for event_type in (
        MessageReceived,
        FastReplyReceived,
        ResponseReceived,
        StreamChunkReceived,
        StreamEnded,
        FileChunkReceived,
        FileEnded,
        Aborted,
        HeartbeatReceived,
        GoAwayReceived,
        ConnectionOpened,
        ConnectionClosed,
    )
}


def _nothing() -> None:
    pass


@final
class Dispatch:
    """Turns the core's events into messages, replies, chunks and lifecycle changes."""

    def __init__(
        self,
        port: RequestPort,
        core: _core.Connection,
        output: Output,
        flow: ReadFlow,
        handler: Handler | None,
        *,
        max_handlers: int,
        max_send_backlog: int | None,
        opened: asyncio.Future[None],
    ) -> None:
        self._port = port
        self._loop = port.loop
        self._core = core
        self._output = output
        self._flow = flow
        self._handler = handler
        self._max_handlers = max_handlers
        self._max_send_backlog = max_send_backlog
        self._opened = opened
        self._receiving: dict[bytes, Incoming] = {}  # incoming with stream/files unfinished
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inbox: deque[Message] = deque()
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._deferred: deque[Message] = deque()  # waiting for one of max_handlers to finish
        self._held: deque[Any] = deque()  # events waiting for that peer to read
        self._idle_waiter: asyncio.Future[None] | None = None
        #: Set while the connection closes: the idle waiter learns when exchanges end.
        self.closing = False
        #: Called when the peer's Go Away arrives (the connection begins its close).
        self.on_go_away: Callable[[], None] = _nothing
        #: Messages received (read by metrics).
        self.messages_received = 0
        #: Replies to requests we no longer wait for (already answered, or unknown): dropped
        #: as they arrive, their streams and files unbuffered.
        self.orphan_replies = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            MessageReceived: self._on_message,
            FastReplyReceived: self._on_fast_reply,
            ResponseReceived: self._on_response,
            StreamChunkReceived: self._on_stream_chunk,
            StreamEnded: self._on_stream_end,
            FileChunkReceived: self._on_file_chunk,
            FileEnded: self._on_file_end,
            Aborted: self._on_aborted,
            HeartbeatReceived: self._ignore,  # it already refreshed the idle timer
            GoAwayReceived: self._on_go_away,
            ConnectionOpened: self._on_opened,
            ConnectionClosed: self._ignore,  # connection_lost follows
        }

    # -- state --------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Handler tasks running."""
        return len(self._tasks)

    @property
    def receiving(self) -> int:
        """Incoming messages and responses whose stream or files are unfinished."""
        return len(self._receiving)

    @property
    def idle(self) -> bool:
        """No exchange in progress: nothing to send or receive, no request, no handler."""
        core = self._core
        return (
            not core.sending
            and not core.receiving
            and not self._port.requests
            and not self._tasks
            and not self._deferred
            and not core.has_output
        )

    def idle_waiter(self) -> asyncio.Future[None]:
        """A future done once ``idle`` (with ``closing`` set, ``check_idle`` is called as
        exchanges end), or once the connection ended."""
        if self._idle_waiter is None:
            self._idle_waiter = self._loop.create_future()
        return self._idle_waiter

    def check_idle(self) -> None:
        """Wakes ``wait_idle`` if the exchanges ended."""
        waiter = self._idle_waiter
        if waiter is not None and not waiter.done() and self.idle:
            waiter.set_result(None)

    # -- events -------------------------------------------------------------------------------

    def process(self, events: Sequence[Any]) -> bool:
        """Handles what one read brought; returns whether the connection is still open."""
        if self._held:  # earlier events wait for the peer to read: keep the order
            self._held.extend(events)
            return self._port.error is None
        output = self._output
        output.in_receive = True
        handlers = self._handlers
        core = self._core
        limit = output.limit
        first = True
        written = output.bytes_sent
        try:
            for index, event in enumerate(events):
                handlers[type(event)](event)
                if core.has_output and (first or index & _HANDOFF_MASK == _HANDOFF_MASK):
                    # The first answer of a batch goes out at once, and then what every
                    # _HANDOFF_EVERY events produced, so that the peer works on those answers
                    # while we handle the rest: the two sides overlap instead of alternating
                    # batch by batch (+10-15% requests/s with 64 in flight, compared with
                    # only the first; an answer per write would cost a syscall each).
                    first = False
                    output.write()
                elif core.output_size > limit:
                    output.write()
                else:
                    continue
                if output.paused and output.bytes_sent - written > limit:
                    # Handling what one read brought produced a lot to write and the peer
                    # does not read it: the rest of the events wait, and so does reading.
                    # Memory stays bounded by about the write limit, not by what the peer's
                    # requests would make us answer.
                    self._held.extend(events[index + 1 :])
                    if self._held:
                        self._flow.pause_for_backlog()
                    break
        finally:
            output.in_receive = False
        output.write()
        if output.paused:
            backlog = self._max_send_backlog
            if backlog is not None and not self._flow.backlog_paused and output.backlog > backlog:
                # The peer does not read what its requests made us write: stop reading them
                # until it does (resume_writing), so that answers stop piling up here.
                self._flow.pause_for_backlog()
        elif core.has_queued:
            output.flush_soon()
        return self._port.error is None

    def release_held(self) -> None:
        """The peer reads again: the events held for it are handled, and reading resumes."""
        if self._held:
            held = list(self._held)
            self._held.clear()
            self.process(held)
        if not self._held:
            self._flow.end_backlog()

    def _on_opened(self, event: ConnectionOpened) -> None:
        if not self._opened.done():
            self._opened.set_result(None)

    def _on_message(self, event: MessageReceived) -> None:
        self.messages_received += 1
        _, raw_id, action, expects_response, has_stream, files, data = event
        port = self._port
        if not action and expects_response:  # ping(): answered here, at once
            self._core.send_fast_reply(raw_id, FastReply.ACCEPT)
            if has_stream or files:  # (not a ping of ours: whatever it carries is dropped)
                ignored = Message(port, raw_id, expects_response, data, has_stream, files)
                self._receiving[raw_id] = ignored
                ignored.discard()
            return
        message = Message(port, raw_id, expects_response, data, has_stream, files)
        message.action = action
        if has_stream or files:
            self._receiving[raw_id] = message
        handler = self._handler
        if handler is None:
            self._inbox.append(message)
            self._flow.queue_message(len(data))
            waiter = self._inbox_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if len(self._tasks) >= self._max_handlers:
            # As many handlers run as max_handlers allows: this one starts when one of them
            # finishes (_task_done). Its stream and files are received meanwhile, so that
            # running handlers waiting for theirs behind it are never stopped; past
            # max_queued_messages waiting, reading pauses.
            self._deferred.append(message)
            self._flow.queue_message(len(data))
            return
        self._dispatch(handler, message)

    def _dispatch(self, handler: Handler, message: Message) -> None:
        try:
            result = handler(message)
        except Exception as error:
            self._handler_failed(message, error)
            return
        if result is None:
            return
        if type(result) is int or isinstance(result, int):
            if message.expects_response and not message.answered:
                message.answer_with(result)  # written with the rest of the read's answers
        elif inspect.isawaitable(result):
            task = self._loop.create_task(self._run_handler(message, result))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    async def _run_handler(self, message: Message, result: Awaitable[Any]) -> None:
        try:
            code = await result
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._handler_failed(message, error)
            return
        if (
            isinstance(code, int)
            and message.expects_response
            and not message.answered
            and self._port.error is None
        ):
            message.fast_reply(code)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        deferred = self._deferred
        if deferred and self._handler is not None and self._port.error is None:
            message = deferred.popleft()
            self._flow.unqueue_message(len(message.data))
            self._dispatch(self._handler, message)
            self._output.schedule_flush()
        if self._flow.paused:
            self._flow.resume()
        if self.closing:
            self.check_idle()

    def _handler_failed(self, message: Message, error: BaseException) -> None:
        logger.error("handler for %r failed", message.action, exc_info=error)
        if message.expects_response and not message.answered and self._port.error is None:
            message.fast_reply(5)  # InternalError

    def _on_response(self, event: ResponseReceived) -> None:
        _, parent_id, raw_id, expects_response, has_stream, files, data = event
        port = self._port
        response = Response(port, parent_id, raw_id, expects_response, data, has_stream, files)
        if has_stream or files:
            self._receiving[raw_id] = response
        request = port.requests.get(parent_id)
        if request is None:  # unknown, or answered already
            self._orphan(response)
            return
        if not request.deliver(response):  # nobody waits for it (cancelled)
            self._orphan(response)
        if self.closing:
            self.check_idle()

    def _orphan(self, response: Response) -> None:
        """A reply nobody waits for (its request was answered already, or is unknown): its
        stream and files are dropped as they arrive, so they never fill the read buffer."""
        self.orphan_replies += 1
        if response.stream is not None or response.files:
            response.discard()

    def _on_fast_reply(self, event: FastReplyReceived) -> None:
        request = self._port.requests.get(event.id)
        if request is not None:
            code = event.code
            # Any: anything typed int (FastReply | int is int) is a plain int in compiled code.
            reply: Any = code
            if code < _KNOWN_COUNT:
                reply = _KNOWN_CODES[code]
            request.deliver(reply)
            if self.closing:
                self.check_idle()

    def _on_stream_chunk(self, event: StreamChunkReceived) -> None:
        target = self._receiving.get(event.id)
        if target is not None:
            target.feed_stream(event.chunk)

    def _on_stream_end(self, event: StreamEnded) -> None:
        target = self._receiving.get(event.id)
        if target is not None and target.end_stream():
            del self._receiving[event.id]

    def _on_file_chunk(self, event: FileChunkReceived) -> None:
        target = self._receiving.get(event.id)
        if target is not None:
            target.feed_file(event.file_index, event.chunk)

    def _on_file_end(self, event: FileEnded) -> None:
        target = self._receiving.get(event.id)
        if target is not None and target.end_file(event.file_index):
            del self._receiving[event.id]

    def _on_aborted(self, event: Aborted) -> None:
        target = self._receiving.pop(event.id, None)
        if target is not None:
            target.peer_aborted()  # its readers fail, and our answers to it are aborted

    def _ignore(self, event: object) -> None:
        pass

    def _on_go_away(self, event: GoAwayReceived) -> None:
        requests = self._port.requests
        for raw_id in event.unsent:
            request = requests.pop(raw_id, None)
            if request is not None:
                request.set_exception(
                    GoingAwayError("the peer is going away; the message was not sent")
                )
        self.on_go_away()

    # -- receiving without a handler -----------------------------------------------------------

    async def next_message(self) -> Message | None:
        """The next message of the inbox, in arrival order; None once the connection closed
        and the inbox is empty."""
        while not self._inbox:
            if self._port.error is not None:
                return None
            self._inbox_waiter = self._loop.create_future()
            await self._inbox_waiter
        message = self._inbox.popleft()
        flow = self._flow
        flow.unqueue_message(len(message.data))
        if flow.paused:
            flow.resume()
        return message

    # -- the end ------------------------------------------------------------------------------

    def fail_waiting(self, error: ConnectionClosedError) -> None:
        """Fails what waits for the peer: our requests, and the streams and files coming."""
        port = self._port
        requests, port.requests = port.requests, {}
        for request in requests.values():
            request.set_exception(error)
        receiving, self._receiving = self._receiving, {}
        for incoming in receiving.values():
            incoming.set_exception(error)

    def close(self, error: ConnectionClosedError) -> None:
        """The connection ended for ``error``: everything still pending fails with it."""
        # The table of bound methods is the one reference cycle a connection has: dropped, the
        # connection is freed by reference counting alone once the application lets go of it.
        self._handlers = _CLOSED_HANDLERS
        self.on_go_away = _nothing
        self._held.clear()
        self._deferred.clear()
        self.fail_waiting(error)
        for task in [*self._port.pumps, *self._tasks]:
            task.cancel()
        for future in (self._idle_waiter, self._inbox_waiter):
            if future is not None and not future.done():
                future.set_result(None)
