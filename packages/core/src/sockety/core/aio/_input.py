"""The read side of a connection: bytes from the transport go to the core, its events to
dispatch.

Rules:
    * Reads land in one reusable buffer (64 KiB at first, growing up to ``read_buffer_size`` when
      reads fill it), from which message data is copied once, into its own buffer. A payload
      rest at least as large as that buffer is read in place instead (``get_buffer`` returns a
      view into it).
    * After bulk message data, reads are parsed a header's worth at a time, so that the next
      packet's payload is copied from the buffer rather than parsed.
    * When the peer goes quiet inside an exchange (a read took all there was and left it
      unfinished, and nothing more came for about a millisecond), we acknowledge at once
      (TCP_QUICKACK), so a Nagle-bound peer never waits for our delayed ACK.
    * A protocol violation ends the connection (after the events that arrived intact).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, final

from .. import _connection as _core
from .._errors import ConnectionClosedError, ConnectionLostError, RemoteProtocolError
from ._dispatch import Dispatch

__all__ = ["Input"]

logger = logging.getLogger("sockety")

# After this much message data in one piece, reads are parsed _HEADER_READ bytes at a time until
# more message data starts (see buffer_updated): a Switch Channel and a Data header, or a whole
# small Message header, with little payload to copy.
_BULK_DATA = 16 * 1024
_HEADER_READ = 64
# Acknowledge at once, not after the delayed-ACK timer (40 ms at the least on Linux). A peer with
# Nagle's algorithm on (Node.js sockets by default) holds a small segment until its previous
# one is acknowledged; if it writes a request's last small packets a moment after the rest, each
# waits for our delayed ACK: 40 ms a request (p50 45 ms against 2 ms, sockety-bench nagle-1m).
# The peer can be waiting only when a read took less than it could (the socket is drained) and
# left an exchange unfinished; it is waiting if then nothing more comes. So such a read arms one
# check (_ACK_AFTER later) that sends the ACK if nothing arrived meanwhile, instead of a syscall
# per read: with sockety-bench's 64 KiB receive buffers almost every bulk read is drained, and a
# QUICKACK each (an ACK packet each, for both kernels to handle) cost 20-25% more CPU per MB on
# both sides (server 414 against 334 us per MB of 1 MiB data; downloads 505 against 330 on the
# client). Reads that end on a whole message (small requests) arm nothing.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux
# About a loop timer's resolution (1 ms): a quiet peer waits this, not 40 ms.
_ACK_AFTER = 0.001


def _no_failure(error: ConnectionClosedError) -> None:
    pass


@final
class Input:
    """Reads the peer: ``get_buffer``/``buffer_updated`` of the connection's protocol."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        core: _core.Connection,
        dispatch: Dispatch,
        *,
        read_buffer_size: int,
    ) -> None:
        self._loop = loop
        self._core = core
        self._dispatch = dispatch
        # Reads land here unless they are message data (see get_buffer).
        self._read_view = memoryview(bytearray(min(read_buffer_size, 64 * 1024)))
        self._read_buffer_size = read_buffer_size
        self._direct = False  # get_buffer returned a view into message data
        self._ack_socket: Any = None  # set when the socket can be told to ACK at once
        self._offered = 0  # the size of the buffer get_buffer gave for the read under way
        # The quiet-peer check (see _QUICKACK): armed by a drained read inside an exchange.
        self._ack_check: asyncio.TimerHandle | None = None
        self._ack_wanted = False  # the last read was drained inside an exchange
        self._ack_mark = 0  # bytes_received when the check was armed
        self._bulk = False  # bulk message data came last (see buffer_updated)
        #: Bytes read from the peer.
        self.bytes_received = 0
        #: Bytes of those that went through the parser (the rest is message data, copied once
        #: from the read buffer or read in place).
        self.parsed_bytes = 0
        #: The loop time of the last read.
        self.last_rx = loop.time()
        #: For the logs: who the peer is.
        self.peer: Any = None
        #: Told when the peer broke the protocol (the connection fails then).
        self.on_violation: Callable[[ConnectionClosedError], None] = _no_failure

    def attach(self, sock: socket.socket | None) -> None:
        """Reading starts (``sock``: the transport's socket, if it has one)."""
        if (
            sock is not None
            and _QUICKACK is not None
            and sock.family in (socket.AF_INET, socket.AF_INET6)
        ):
            self._ack_socket = sock
        self.last_rx = self._loop.time()

    def close(self) -> None:
        self.on_violation = _no_failure
        if self._ack_check is not None:
            self._ack_check.cancel()
            self._ack_check = None

    def get_buffer(self, sizehint: int) -> memoryview:
        # Reads go to a reusable buffer, from which message data is copied once into its own
        # buffer (see buffer_updated). A payload rest at least as large as that buffer is read
        # in place instead: a read into the buffer could not go past its end either. A smaller
        # rest is not: a read stops where its view ends, so every packet's end would cut a
        # read short (and its next header take one more). With sockety-bench's 64 KiB
        # receive buffers a 1 MiB message took 23 reads that way and takes 10 now; the copy
        # costs less than the reads. 1 MiB data, 5 interleaved runs each: 0.64x the ceiling
        # instead of 0.55x on asyncio and 0.64x instead of 0.56x on uvloop; server CPU per MB
        # 327 us instead of 394 and 286 us instead of 307.
        direct = self._core.payload_buffer()
        if direct is not None and len(direct) >= len(self._read_view):
            self._direct = True
            # A read in place stops at what the socket holds, or this much: as a full read
            # into the read buffer, one at least this large is not a drained socket.
            self._offered = len(self._read_view)
            return direct
        self._direct = False
        self._offered = len(self._read_view)
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.last_rx = self._loop.time()
        self.bytes_received += nbytes
        core = self._core
        if self._direct:
            self._bulk = True
            events = core.payload_received(nbytes)
            if events:
                self._dispatch.process(events)
            if nbytes < self._offered and self._ack_socket is not None:
                self._ack_if_waiting()
            return
        view = self._read_view
        position = 0
        while True:
            target = core.payload_buffer()
            if target is not None:
                # Message data: copied once, into the message's buffer (the parser would copy
                # it twice: its input is bytes).
                size = min(len(target), nbytes - position)
                target[:size] = view[position : position + size]
                position += size
                if size >= _BULK_DATA:
                    self._bulk = True
                events = core.payload_received(size)
                if events and not self._dispatch.process(events):
                    break
            elif self._bulk:
                # Bulk message data came last: it probably goes on with the next packet.
                # Parse about a header's worth, so that its payload is copied from here.
                end = min(position + _HEADER_READ, nbytes)
                going = self.data_received(view[position:end])
                position = end
                if not going:
                    break
                if end < nbytes and core.payload_buffer() is None:
                    self._bulk = False  # something else: parse the rest at once
            else:
                self.data_received(view[position:nbytes])
                break
            if position == nbytes:
                break
        if nbytes == len(view) and nbytes < self._read_buffer_size:
            # A full read: bulk traffic. Read more at a time from now on.
            self._read_view = memoryview(bytearray(min(4 * nbytes, self._read_buffer_size)))
        elif nbytes < self._offered and self._ack_socket is not None:
            self._ack_if_waiting()

    def _ack_if_waiting(self) -> None:
        """The read took all there was: if it left an exchange unfinished, the peer may be
        holding the rest until we acknowledge what came (see _QUICKACK); the check tells."""
        core = self._core
        self._ack_wanted = wanted = bool(core.receiving or core.held_bytes)
        if wanted and self._ack_check is None:
            self._ack_mark = self.bytes_received
            self._ack_check = self._loop.call_later(_ACK_AFTER, self._check_ack)

    def _check_ack(self) -> None:
        self._ack_check = None
        if not self._ack_wanted:
            return  # the last read was not drained inside an exchange
        if self.bytes_received == self._ack_mark:
            # Nothing came since a drained read inside an exchange: the peer is waiting.
            self._ack_wanted = False
            with contextlib.suppress(OSError):
                self._ack_socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        else:  # it went on sending: look again after its latest drained read
            self._ack_mark = self.bytes_received
            self._ack_check = self._loop.call_later(_ACK_AFTER, self._check_ack)

    def data_received(self, data: bytes | memoryview) -> bool:
        """Feeds bytes from the peer; returns whether the connection is still open."""
        self.parsed_bytes += len(data)
        try:
            events = self._core.receive_data(data)
        except RemoteProtocolError as error:
            self._dispatch.process(error.events)  # what arrived intact before the violation
            logger.info("closing connection from %s: protocol error: %s", self.peer, error)
            self.on_violation(
                ConnectionLostError(
                    f"protocol error from the peer: {error}", error, kind="protocol_error"
                )
            )
            return False
        return self._dispatch.process(events)
