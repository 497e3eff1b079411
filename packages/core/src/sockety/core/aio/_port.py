"""The port: what messages, responses, streams and transfers may do with their connection.

It is their one seam with it: they send through it (answers, stream chunks, files, aborts),
wait through it (writable, sent), account what they hold through it (flow control), and learn
whether the connection is still open. They never see the connection's other parts, and the
port imports none of them, so the modules form no circle: ``_drafts``, ``_output``, ``_flow``
< ``_port`` < ``_streams`` < ``_files`` < ``_exchanges`` < ``_dispatch`` < ``_input`` <
``_connection``.

A concrete final class rather than a ``typing.Protocol``: compiled, every call is a direct C call.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar, final

from .. import _connection as _core
from .._errors import ConnectionClosedError, GoingAwayError
from ._drafts import Outgoing
from ._flow import ReadFlow
from ._output import Output

__all__ = ["Port"]

#: What the port's request table holds (the asyncio layer's ``Request``; the port only keeps it).
R = TypeVar("R")

_GOING_AWAY = "the connection is going away (Go Away sent or received): no new messages"


@final
class Port(Generic[R]):
    """One connection, as its exchanges see it."""

    def __init__(
        self,
        owner: object,
        loop: asyncio.AbstractEventLoop,
        core: _core.Connection,
        output: Output,
        flow: ReadFlow,
    ) -> None:
        #: The connection (what ``message.connection`` returns); None once it closed, which
        #: breaks the one reference cycle (connection -> port -> connection), so that a closed
        #: connection is freed by reference counting alone.
        self.owner: object = owner
        self.loop = loop
        self._core = core
        self._output = output
        self._flow = flow
        #: Our requests awaiting replies, by id (the dispatcher delivers their replies).
        self.requests: dict[bytes, R] = {}
        #: Why the connection closed; None while it is open.
        self.error: ConnectionClosedError | None = None
        #: Whether a transport is attached (the connection was made and not lost yet).
        self.attached = False
        #: Tasks sending files from disk or iterators (cancelled when the connection ends).
        self.pumps: set[asyncio.Task[None]] = set()
        #: Answers sent, by kind (read by metrics).
        self.responses_sent = 0
        self.fast_replies_sent: dict[int, int] = {}

    # -- state --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.error is not None

    def check_open(self) -> None:
        """Raises why the connection closed (or that it is not open yet)."""
        if self.error is not None:
            raise self.error
        if not self.attached:
            raise ConnectionClosedError("the connection is not open")

    # -- sending ------------------------------------------------------------------------------

    def send_message(self, raw_id: bytes, message: Outgoing, expects_response: bool) -> None:
        """Starts a Message (GoingAwayError after Go Away); its files follow with ``send_file``,
        and ``flush`` writes it."""
        if self.error is not None or not self.attached:
            self.check_open()
        try:
            self._core.send_message(
                raw_id,
                message.action,
                message.data,
                files=message.header_files,
                stream=message.stream,
                expects_response=expects_response,
            )
        except GoingAwayError:
            raise GoingAwayError(_GOING_AWAY) from None

    def send_response(
        self, parent_id: bytes, raw_id: bytes, response: Outgoing, expects_response: bool
    ) -> None:
        """Starts a Response to ``parent_id``; as ``send_message``."""
        if self.error is not None or not self.attached:
            self.check_open()
        try:
            self._core.send_response(
                parent_id,
                raw_id,
                response.data,
                files=response.header_files,
                stream=response.stream,
                expects_response=expects_response,
            )
        except GoingAwayError:
            raise GoingAwayError(_GOING_AWAY) from None
        self.responses_sent += 1

    def send_fast_reply(self, raw_id: bytes, code: int) -> None:
        self.check_open()
        self.queue_fast_reply(raw_id, code)
        self._output.schedule_flush()

    def queue_fast_reply(self, raw_id: bytes, code: int) -> None:
        """Queues a fast reply without a flush (while a read is handled: written with the
        read's other answers)."""
        self._core.send_fast_reply(raw_id, code)
        counts = self.fast_replies_sent
        counts[code] = counts.get(code, 0) + 1

    def send_stream(self, raw_id: bytes, chunk: bytes) -> None:
        self.check_open()
        self._core.send_stream(raw_id, chunk)
        self._output.schedule_flush()

    def end_stream(self, raw_id: bytes) -> None:
        """Ends the stream of ``raw_id`` (nothing if the exchange is over: aborted, closed)."""
        core = self._core
        if core.in_progress(raw_id):
            core.end_stream(raw_id)
            self._output.schedule_flush()

    def send_file(self, raw_id: bytes, index: int, chunk: bytes | bytearray | memoryview) -> None:
        """Queues bytes of file ``index`` (``flush`` writes them)."""
        self._core.send_file(raw_id, index, chunk)

    def end_file(self, raw_id: bytes, index: int) -> None:
        self._core.end_file(raw_id, index)

    def abort(self, raw_id: bytes) -> None:
        """Aborts our exchange ``raw_id`` on the wire (nothing once the connection closed)."""
        if self.error is None and self._core.abort(raw_id):
            self._output.schedule_flush()

    def flush(self) -> None:
        """Writes what was queued (now, or at the end of this loop turn)."""
        self._output.schedule_flush()

    def forget_request(self, raw_id: bytes) -> None:
        """Replies to ``raw_id`` are no longer awaited."""
        self.requests.pop(raw_id, None)

    # -- waiting ------------------------------------------------------------------------------

    async def writable(self, raw_id: bytes) -> None:
        """Waits while the exchange ``raw_id`` has too much queued or the transport is paused;
        raises if the connection closed."""
        await self._output.writable(raw_id)
        self.check_open()

    def unsent(self, raw_id: bytes, everything: bool) -> bool:
        """Whether the exchange ``raw_id`` still has bytes to write (see ``Output.unsent``)."""
        return self._output.unsent(raw_id, everything)

    async def progress(self) -> None:
        """Waits for the next write (or the close)."""
        await self._output.progress()

    def future(self) -> asyncio.Future[Any]:
        return self.loop.create_future()

    # -- flow control -------------------------------------------------------------------------

    def received(self, size: int) -> None:
        """A reader holds ``size`` more bytes for the application."""
        self._flow.received(size)

    def consumed(self, size: int) -> None:
        """A reader gave ``size`` bytes to the application (or dropped them)."""
        self._flow.consumed(size)
