"""The write side of a connection: what the core produced goes to the transport.

Rules:
    * Everything produced while handling one read, or in one loop turn, goes out in a single
      transport write. The first output of a turn outside of a read is written at once (lowest
      latency for a lone request); what follows in the same turn is coalesced and written at the
      end of it (``schedule_flush``).
    * Large content is pulled from the core at most ``write_budget`` bytes per turn and only
      while the transport is not paused, so big transfers are paced and never starve small
      messages.
    * Producers wait (``drain``, ``writable``) while the transport's buffer is over its limit
      (``pause_writing``) or their own exchange has too much queued; a peer that leaves our
      writes blocked for ``write_timeout`` seconds is reported (``on_stall``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import final

from .. import _connection as _core
from .._errors import ConnectionClosedError, ConnectionLostError

__all__ = ["Output"]


def _no_stall(error: ConnectionClosedError) -> None:
    pass


@final
class Output:
    """Writes the core's output to the transport: coalesced, paced, with backpressure."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        core: _core.Connection,
        *,
        write_budget: int,
        write_buffer_limit: int,
        stream_buffer_limit: int,
        write_timeout: float | None,
    ) -> None:
        self._loop = loop
        self._core = core
        self._transport: asyncio.Transport | None = None
        self._join_free = True  # set in attach
        self._budget = write_budget
        #: The transport's buffer size at which it pauses us (what can queue ahead of a small
        #: message); the dispatcher hands answers over past it.
        self.limit = write_buffer_limit
        self._stream_buffer_limit = stream_buffer_limit
        self._write_timeout = write_timeout
        self._flush_handle: asyncio.Handle | None = None
        self._progress: asyncio.Future[None] | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._closed = False
        #: Whether the transport paused us (its buffer is over ``limit``).
        self.paused = False
        #: Set while the events of a read are handled: their answers are written together
        #: when the batch ends, not one by one.
        self.in_receive = False
        #: Bytes handed to the transport.
        self.bytes_sent = 0
        #: The loop time of the last write.
        self.last_tx = loop.time()
        #: Told when the peer left our writes blocked for ``write_timeout`` (the connection
        #: fails then).
        self.on_stall: Callable[[ConnectionClosedError], None] = _no_stall
        #: Called after each write while set (the connection sets it while closing, to learn
        #: when everything went out).
        self.after_write: Callable[[], None] | None = None

    def attach(self, transport: asyncio.Transport) -> None:
        """Writes go to ``transport`` from now on (and our connection header first)."""
        self._transport = transport
        # uvloop's writelines() writes the list as it is (writev), and so does asyncio's from
        # 3.12 (sendmsg); over TLS the SSL layer encrypts the list into its own buffer, so
        # there is no copy to save either. Before 3.12, asyncio's joins the chunks and then
        # copies what the socket does not take at once: write() does better by itself.
        tls = transport.get_extra_info("sslcontext") is not None
        self._join_free = type(transport).writelines is not asyncio.WriteTransport.writelines or tls
        transport.set_write_buffer_limits(high=self.limit)
        self.write()
        self.last_tx = self._loop.time()

    def detach(self) -> None:
        """The transport is gone: nothing more is written."""
        self._transport = None

    # -- writing ------------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        """New output: written now if it is the first of this loop turn (outside of a read),
        else with the rest of the turn's at its end."""
        if self._flush_handle is not None or self.in_receive:
            return
        # First output of this loop turn: write at once; coalesce the rest of the turn.
        self._flush_handle = self._loop.call_soon(self._flush)
        self.write()

    def flush_soon(self) -> None:
        """Writes at the end of this loop turn (more of the queued content, if any)."""
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self.write()
        if self._core.has_queued and not self.paused and self._transport is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def write(self) -> None:
        """Hands what the core has ready (and up to a budget of queued content) to the
        transport now."""
        transport = self._transport
        if transport is None:
            return
        chunks = self._core.data_to_send(0 if self.paused else self._budget)
        if chunks:
            if len(chunks) == 1:
                transport.write(chunks[0])
                self.bytes_sent += len(chunks[0])
            elif self._join_free:
                transport.writelines(chunks)
                self.bytes_sent += sum(map(len, chunks))
            elif transport.get_write_buffer_size():
                for chunk in chunks:  # appended to the transport's buffer: one copy each
                    transport.write(chunk)
                    self.bytes_sent += len(chunk)
            else:
                # The first write to an empty buffer is a send() of its own: a packet header
                # alone would go out as a segment of a few bytes and wake the peer for them.
                # One write of the lot instead (a view: what send() leaves is copied once).
                # sockety-bench --loop asyncio, 1 MiB data, 5 interleaved runs: 9 sends per
                # MB instead of 16, client CPU 409 us/MB instead of 452, 0.57x the ceiling
                # instead of 0.50x (medians).
                joined = b"".join(chunks)
                transport.write(memoryview(joined))
                self.bytes_sent += len(joined)
            self.last_tx = self._loop.time()
        if not self.paused:
            progress = self._progress
            if progress is not None:
                self._progress = None
                if not progress.done():
                    progress.set_result(None)
        after = self.after_write
        if after is not None:
            after()

    @property
    def backlog(self) -> int:
        """Bytes waiting to go to the peer: in the transport's buffer and queued in the core."""
        transport = self._transport
        core = self._core
        waiting = core.output_size + core.queued_bytes
        return waiting + transport.get_write_buffer_size() if transport is not None else waiting

    # -- backpressure -------------------------------------------------------------------------

    def pause(self) -> None:
        """The transport's buffer went over its limit (``pause_writing``)."""
        self.paused = True
        if self._write_timeout and self._stall is None:
            self._stall = self._loop.call_later(self._write_timeout, self._stalled)

    def resume(self) -> None:
        """The transport's buffer drained (``resume_writing``); call ``flush_soon`` after."""
        self.paused = False
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        if self.paused and not self._closed:
            self.on_stall(
                ConnectionLostError(
                    f"the peer read nothing for {self._write_timeout:g} s while we had data for it",
                    kind="write_timeout",
                )
            )

    async def progress(self) -> None:
        """Waits for the next write that leaves the transport unpaused (or the close)."""
        # One future for every waiter, shielded: a waiter cancelled (its transfer given up)
        # must not cancel it for the others.
        if self._progress is None:
            self._progress = self._loop.create_future()
        await asyncio.shield(self._progress)

    async def drain(self) -> None:
        """Waits while the transport is paused (returns at once once closed)."""
        core = self._core
        if core.holds_views or core.output_size > self._stream_buffer_limit:
            self.write()  # large output goes to the transport now, so its limit applies
        while self.paused and not self._closed:
            await self.progress()

    async def writable(self, raw_id: bytes) -> None:
        """Waits while the exchange ``raw_id`` has too much queued or the transport is paused
        (returns at once once closed)."""
        core = self._core
        if core.has_output:
            # Hand what is produced to the transport now, so that its buffer limit (and
            # pause_writing) sees it: a producer that never yields would otherwise pile its
            # whole output up before the end-of-turn flush.
            self.write()
        while (
            self.paused or core.queued_bytes_for(raw_id) > self._stream_buffer_limit
        ) and not self._closed:
            await self.progress()

    def unsent(self, raw_id: bytes, everything: bool) -> bool:
        """Whether the exchange ``raw_id`` still has bytes to write: all of it (``everything``:
        up to its stream's end) or its header, data and files."""
        core = self._core
        busy = core.in_progress(raw_id) if everything else core.queued_bytes_for(raw_id) > 0
        return busy or core.has_output

    def close(self) -> None:
        """The connection ended: no more flushes or deadlines; every waiter wakes."""
        self._closed = True
        self.after_write = None
        self.on_stall = _no_stall
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        progress = self._progress
        if progress is not None and not progress.done():
            progress.set_result(None)
