"""A server for operators: refused connections are counted, and a peer that sends requests but
never reads the answers is throttled, then closed.

The aio connection pauses its *producers* when the transport's write buffer is over
``write_buffer_limit`` but keeps reading, so each request read from such a peer still queues an
answer that nobody takes: memory grows with every request. Here reading pauses while writing is
paused (the peer's requests wait in its own socket buffers, not in our memory), and a peer whose
write side stays paused for ``write_timeout`` seconds is closed (``kind="write_timeout"``).

One read can hold thousands of small requests, each answered at once: a large read is fed to the
protocol in slices while answers are piling up (the write buffer is not empty), and what is left
when writing pauses waits, unparsed, until the peer reads again. So the answers queued for a
peer that reads nothing are bounded by ``write_buffer_limit`` plus those to one slice (4 KiB) of
requests. A peer that keeps up costs one extra step per large read.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sockety.core import ConnectionLostError
from sockety.core.aio import Handler

from ._server import Server, _ServerConnection

if TYPE_CHECKING:
    from ._metrics import ServerMetrics

__all__ = ["OperatedServer"]

_SLICE = 4096


class OperatedServer(Server):
    """A :class:`Server` with metrics (optional) and the slow-reader guard."""

    def __init__(
        self,
        handler: Handler | None,
        *,
        metrics: ServerMetrics | None = None,
        write_timeout: float | None = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._metrics = metrics
        self._write_timeout = write_timeout

    def _make_connection(self) -> _ServerConnection:
        return _GuardedConnection(self, self._handler, self._write_timeout, **self._options)

    def _connected(self, connection: Any) -> bool:
        accepted = super()._connected(connection)
        if not accepted and self._metrics is not None:
            self._metrics.on_refused()
        return accepted


class _GuardedConnection(_ServerConnection):
    def __init__(
        self, server: Server, handler: Handler | None, write_timeout: float | None, **options: Any
    ) -> None:
        super().__init__(server, handler, **options)
        self._write_timeout = write_timeout
        self._stall: asyncio.TimerHandle | None = None
        self._held: memoryview | None = None  # read but not parsed: the peer is not reading

    def data_received(self, data: bytes | memoryview) -> None:
        if len(data) <= _SLICE or self._transport is None:
            super().data_received(data)
            return
        view = memoryview(data)
        transport = self._transport
        feed = super().data_received
        feed(view[:_SLICE])
        position = _SLICE
        while position < len(view) and not self.closed:
            if self._write_paused:
                self._held = memoryview(bytes(view[position:]))  # the read buffer is reused
                return
            if transport.get_write_buffer_size() == 0:  # the peer keeps up: the rest at once
                feed(view[position:])
                return
            feed(view[position : position + _SLICE])
            position += _SLICE

    def pause_writing(self) -> None:
        super().pause_writing()
        transport = self._transport
        if transport is not None and not self._read_paused:
            transport.pause_reading()  # our own flag stays: resuming is decided below
        if self._write_timeout and self._stall is None:
            self._stall = self._loop.call_later(self._write_timeout, self._stalled)

    def resume_writing(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        super().resume_writing()
        held, self._held = self._held, None
        if held is not None and not self.closed:
            self.data_received(held)
        transport = self._transport
        if transport is not None and not self._read_paused and not self._write_paused:
            transport.resume_reading()

    def _resume_reading(self) -> None:
        if not self._write_paused:
            super()._resume_reading()

    def _stalled(self) -> None:
        self._stall = None
        if self._write_paused and not self.closed:
            self._fail(
                ConnectionLostError(
                    f"the peer read nothing for {self._write_timeout:g} s while answers waited",
                    kind="write_timeout",
                )
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        super().connection_lost(exc)
