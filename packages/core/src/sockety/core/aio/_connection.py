"""The asyncio connection: an ``asyncio.Protocol`` around the sans-IO core.

Writes: everything produced while handling one read, or in one loop turn, goes out in a single
transport write. The first output of a turn outside of a read is written at once (lowest latency
for a lone request); what follows in the same turn is coalesced and written at the end of it.
Large content is pulled from the core at most ``write_budget`` bytes per turn and only while the
transport is not paused, so big transfers are paced and never starve small messages.

Reads: stream and file chunks wait in their readers until consumed; past ``max_receive_buffer``
bytes waiting (or ``max_queued_messages`` unconsumed messages) reading pauses until the
application catches up, so a slow consumer bounds memory instead of growing it.

Lifecycle: ``close()`` sends Go Away, lets in-flight exchanges finish within the grace period,
then closes the socket. Whatever ends the connection, every pending request, stream and file
fails promptly with a :class:`ConnectionClosedError` (or subclass) that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any, cast

from mypy_extensions import mypyc_attr

from .. import _connection as _core
from .._budget import MemoryPool
from .._constants import FastReply
from .._errors import (
    AbortedError,
    ConnectionClosedError,
    ConnectionLostError,
    FileSizeError,
    GoingAwayError,
    RemoteProtocolError,
)
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
from .._ids import new_id
from ._drafts import FileTransfer, Outgoing
from ._exchanges import Incoming, Message, Request, Response, Transfer, _MultiRequest

__all__ = ["OPTIONS", "Connection", "Handler", "check_options"]

logger = logging.getLogger("sockety")

#: A message handler: called with each message; may return a fast-reply code, None, or an
#: awaitable of either (then it runs as a task).
Handler = Callable[[Message], Any]

_FILE_CHUNK = 256 * 1024  # read size for files sent from disk or iterators
_HANDOFF_EVERY = 16  # events of one read whose answers are written together (see _process)
_HANDOFF_MASK = _HANDOFF_EVERY - 1
# After this much message data in one piece, reads are parsed _HEADER_READ bytes at a time until
# more message data starts (see buffer_updated): a Switch Channel and a Data header, or a whole
# small Message header, with little payload to copy.
_BULK_DATA = 16 * 1024
_HEADER_READ = 64
_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux, macOS
# Acknowledge at once, not after the delayed-ACK timer (40 ms at the least on Linux). A peer with
# Nagle's algorithm on (Node.js sockets by default) holds a small segment until its previous
# one is acknowledged; if it writes a request's last small packets a moment after the rest, each
# waits for our delayed ACK: 40 ms a request (p50 45 ms against 2 ms, sockety-bench nagle-1m).
# Set after a read that took less than it could (the socket is drained: the peer is not sending
# more now) and left an exchange unfinished, which is when a peer can be waiting for that ACK.
# Reads that fill the buffer (bulk arriving faster than we read) and reads that end on a whole
# message (small requests) skip the syscall.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux
# Content packets over TLS when max_packet_size is not given (the core's default is 128 KiB).
# TLS moves bulk about a third as fast as TCP, so each packet written ahead of a small message
# holds it three times as long, and the cost per packet is small next to encryption.
# sockety-bench -f sockety-tls, 3 interleaved runs each: small-request p99 during a 64 MiB
# upload 1.9-2.8x the unloaded one instead of 3.5-5.0x (and 55% more small requests served
# meanwhile); 1 MiB data, 4 MiB data and 1 MiB files as fast (within the runs' spread).
_TLS_PACKET_SIZE = 64 * 1024
_KNOWN_CODES = tuple(FastReply)
# The protocol allows an empty action name (drafts do not: it is reserved for this).
_PING = Outgoing(b"", b"", (), False)


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


_KNOWN_COUNT = len(_KNOWN_CODES)


#: The keyword options of :class:`Connection` (besides ``handler``): what ``serve()`` and
#: ``connect()`` accept for their connections, checked when they are called.
OPTIONS = frozenset(
    {
        "heartbeat_interval",
        "idle_timeout",
        "open_timeout",
        "header_timeout",
        "write_timeout",
        "close_timeout",
        "max_receive_buffer",
        "read_buffer_size",
        "socket_buffer_size",
        "receive_buffer_size",
        "notsent_lowat",
        "max_queued_messages",
        "max_handlers",
        "write_budget",
        "write_buffer_limit",
        "max_send_backlog",
        "stream_buffer_limit",
        "channels",
        "send_channels",
        "max_action_size",
        "max_data_size",
        "max_files",
        "max_header_size",
        "max_buffered_bytes",
        "max_packet_size",
        "pool",
    }
)


def check_options(options: dict[str, Any], where: str = "Connection") -> None:
    """Raises TypeError for a keyword that is not a connection option (a misspelled
    ``idle_timout=3`` fails when ``serve()``/``connect()`` is called, not on every connection
    later), suggesting the closest one."""
    for name in options:
        if name not in OPTIONS:
            close = difflib.get_close_matches(name, OPTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}{hint}")


# The server subclasses it (registration, metrics); compiled, that has to be allowed.
@mypyc_attr(allow_interpreted_subclasses=True)
class Connection(asyncio.BufferedProtocol):
    """A Sockety connection, client or server side: both are peers.

    Send with :meth:`send` / :meth:`send_nowait` (no response) and :meth:`request` (expects
    responses); receive through the ``handler`` or ``async for message in connection``; end
    with :meth:`close`.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        # Ping the peer when we wrote nothing for this long, so its idle timeout does not fire.
        heartbeat_interval: float | None = 10.0,
        # Close when nothing (not even a heartbeat) arrived for this long: the peer is gone.
        # Well over the Node.js reference's 45 s heartbeat (two of them may be missed), so an
        # idle reference peer stays connected. Never counted while *we* paused reading.
        idle_timeout: float | None = 120.0,
        # From the socket's opening (the TLS handshake included, on a server), the peer must
        # send its connection header within this. Our own heartbeats do not extend it.
        open_timeout: float | None = 10.0,
        # A packet or message header that started arriving must be complete within this: a
        # deadline for the whole header, not per byte, so a peer trickling it (slow-loris) is
        # closed however often it sends a byte.
        header_timeout: float | None = 10.0,
        # Close a peer that leaves our writes blocked (it reads nothing) for this long.
        write_timeout: float | None = 30.0,
        # How long close() (and a peer's Go Away) lets in-flight exchanges finish.
        close_timeout: float = 10.0,
        # Stream/file bytes (and the data of queued messages) waiting for the application
        # before reading pauses.
        max_receive_buffer: int = 4 * 1024 * 1024,
        # The reusable read buffer grows up to this when reads fill it (bulk streams and
        # files); it starts at 64 KiB, so that many quiet connections stay cheap.
        read_buffer_size: int = 256 * 1024,
        # Kernel socket buffers (SO_SNDBUF/SO_RCVBUF); None leaves the OS's autotuning. Smaller
        # ones bound how much bulk data can queue ahead of a small message.
        socket_buffer_size: int | None = None,
        # SO_RCVBUF alone (wins over socket_buffer_size): bounds what a fast sender can queue in
        # our kernel ahead of its next small message, with the send side left autotuned.
        receive_buffer_size: int | None = None,
        # Unsent bytes the kernel may hold for us (TCP_NOTSENT_LOWAT, where the OS has it): a
        # small message written after bulk data waits behind about this much (a write to an
        # empty transport buffer may go past it), while the socket buffers stay autotuned.
        # None leaves it to the OS. 64 KiB against 128 KiB in sockety-bench (interleaved
        # runs): small-request p99 during a 64 MiB upload over TLS 3.9-5.0x the unloaded one
        # instead of 4.9-5.8x (why TLS feels it most: see _TLS_PACKET_SIZE), 1 MiB data as fast.
        notsent_lowat: int | None = 64 * 1024,
        # Messages waiting in ``async for`` before reading pauses (without a handler).
        max_queued_messages: int = 1024,
        # Handler tasks (async handlers) running at once before reading pauses: as many as the
        # exchanges a peer can keep open (4096 channels), so that handlers waiting for their
        # streams never stop the others; each costs a task (about 2 KiB) and its message.
        max_handlers: int = 4096,
        # Bytes of queued content pulled from the core per loop turn (at least one packet):
        # paces big transfers, so that small messages are written between their packets.
        write_budget: int = 64 * 1024,
        # Transport buffer size at which producers wait (pause_writing): what can queue ahead
        # of a small message. Measured with sockety-bench against 256 KiB (both with 64 KiB
        # budgets): small-request p99 during a 64 MiB upload 3.2-4.1x the unloaded one instead
        # of 6-9x, and 1 MiB data/files as fast or faster (less memory churn).
        write_buffer_limit: int = 64 * 1024,
        # Output waiting for a peer that does not read (answers, queued data; in the transport
        # and the core) past which reading pauses until it reads again: its requests then wait
        # in its own socket buffers, not in our memory. Servers set it (serve(): 4 MiB); None
        # here, for clients: were both peers to stop reading while each one's own requests
        # wait to be written, neither would ever write again.
        max_send_backlog: int | None = None,
        # Bytes a stream writer may queue before drain() waits.
        stream_buffer_limit: int = 512 * 1024,
        # The sans-IO limits: see sockety.core.Connection for what each bounds and why.
        channels: int = 4096,
        send_channels: int = 4096,
        max_action_size: int = 65535,
        max_data_size: int = 64 * 1024 * 1024,
        max_files: int = 1024,
        max_header_size: int = 1024 * 1024,
        max_buffered_bytes: int = 128 * 1024 * 1024,
        # None: the core's 128 KiB over TCP, 64 KiB over TLS (see _TLS_PACKET_SIZE).
        max_packet_size: int | None = None,
        # A memory budget shared with other connections (a server's), or None.
        pool: MemoryPool | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._core = _core.Connection(
            channels=channels,
            send_channels=send_channels,
            max_action_size=max_action_size,
            max_data_size=max_data_size,
            max_files=max_files,
            max_header_size=max_header_size,
            max_buffered_bytes=max_buffered_bytes,
            max_packet_size=max_packet_size or 128 * 1024,
            pool=pool,
        )
        self._tls_packets = max_packet_size is None  # see connection_made
        self._handler = handler
        self._heartbeat_interval = heartbeat_interval
        self._idle_timeout = idle_timeout
        self._open_timeout = open_timeout
        self._header_timeout = header_timeout
        self._write_timeout = write_timeout
        self._close_timeout = close_timeout
        self._max_handlers = max_handlers
        self._max_send_backlog = max_send_backlog
        self._max_receive_buffer = max_receive_buffer
        self._max_queued_messages = max_queued_messages
        self._write_budget = write_budget
        self._write_buffer_limit = write_buffer_limit
        self._stream_buffer_limit = stream_buffer_limit
        self._transport: asyncio.Transport | None = None
        self._join_free = True  # set in connection_made
        # Reads land here unless they are message data (see get_buffer).
        self._read_view = memoryview(bytearray(min(read_buffer_size, 64 * 1024)))
        self._read_buffer_size = read_buffer_size
        self._socket_buffer_size = socket_buffer_size
        self._notsent_lowat = notsent_lowat
        self._receive_buffer_size = receive_buffer_size
        self._direct = False  # get_buffer returned a view into message data
        self._ack_socket: Any = None  # set when the socket can be told to ACK at once
        self._offered = 0  # the size of the buffer get_buffer gave for the read under way
        self._bulk = False  # bulk message data came last (see buffer_updated)
        self._requests: dict[bytes, Request] = {}
        self._receiving: dict[bytes, Incoming] = {}  # incoming with stream/files unfinished
        self._pumps: set[asyncio.Task[None]] = set()  # tasks sending files from disk/iterators
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inbox: deque[Message] = deque()
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._idle_waiter: asyncio.Future[None] | None = None
        self._going_away: asyncio.Future[None] = self._loop.create_future()
        self._progress: asyncio.Future[None] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_receive = False
        self._write_paused = False
        self._read_paused = False
        self._backlog_paused = False  # reading paused because unread answers piled up
        self._deferred: deque[Message] = deque()  # waiting for one of max_handlers to finish
        self._held_events: deque[Any] = deque()  # events waiting for that peer to read
        self._rx_buffered = 0
        self._last_rx = self._last_tx = self._opened_at = self._loop.time()
        self._header_mark = -1  # the core's header_progress when a partial header was seen
        self._header_since = 0.0
        self._write_stall: asyncio.TimerHandle | None = None
        self._peer_eof = False  # the peer shut its side down (we may still answer)
        self._eof_clean = True  # ... at a clean boundary (the core's ConnectionClosed.clean)
        self._peer_closing = False  # the peer's Go Away came before we began to close
        self._closing = False
        self._error: ConnectionClosedError | None = None
        self._close_task: asyncio.Task[None] | None = None
        #: Traffic counters (read by metrics): bytes, messages received, answers sent.
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.responses_sent = 0
        self.fast_replies_sent: dict[int, int] = {}
        #: Replies to requests we no longer wait for (already answered, or unknown): dropped
        #: as they arrive, their streams and files unbuffered.
        self.orphan_replies = 0
        #: A slot for the application's own per-connection state (a fresh namespace).
        self.state = SimpleNamespace()
        self._remote_address: Any = None
        self._local_address: Any = None
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

    # -- information --------------------------------------------------------------------------

    @property
    def remote_address(self) -> Any:
        """The peer's address (``transport.get_extra_info('peername')``)."""
        return self._remote_address

    @property
    def local_address(self) -> Any:
        return self._local_address

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted."""
        transport = self._transport
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (or failed)."""
        return self._error is not None

    @property
    def close_reason(self) -> ConnectionClosedError | None:
        """Why the connection closed: None while it is open."""
        return self._error

    @property
    def writing_paused(self) -> bool:
        """Whether our output waits for the peer to read (the transport's buffer is full)."""
        return self._write_paused

    @property
    def reading_paused(self) -> bool:
        """Whether we stopped reading the peer (flow control: its bytes wait in its socket)."""
        return self._read_paused

    @property
    def pending_requests(self) -> int:
        """Requests still waiting for their first reply."""
        return len(self._requests)

    @property
    def channels(self) -> int:
        """How many channels we send on (min of ours and the peer's); 0 before the handshake."""
        return self._core.send_channels

    async def ping(self, timeout: float | None = None) -> float:
        """The round-trip time to the peer, in seconds: a request for the empty action, which
        sockety-py peers answer at once (Accept) before any handler (a peer that routes it to
        a handler, e.g. as an unknown action, answers with whatever that returns). Raises
        :class:`ResponseTimeoutError` after ``timeout`` seconds."""
        began = time.perf_counter()
        await self.request(_PING).response(timeout)
        return time.perf_counter() - began

    # -- sending ------------------------------------------------------------------------------

    def send_nowait(self, message: Outgoing) -> Transfer:
        """Sends a message that expects no response; returns at once (it is written at the end
        of this loop turn). Use the returned transfer for its stream, ``sent()`` or ``abort()``."""
        return self._start(message, None, False, False)

    async def send(self, message: Outgoing) -> Transfer:
        """Sends a message that expects no response and waits until its header, data and files
        were handed to the network (not its stream: write that with the returned transfer)."""
        transfer = self._start(message, None, False, False)
        await self._wait_sent(transfer, everything=False)
        return transfer

    def request(self, message: Outgoing, *, multiple: bool = False) -> Request:
        """Sends a message that expects responses. ``await`` the result (or its ``response()``)
        for the first reply; with ``multiple=True`` iterate ``responses()`` for several."""
        # The hot path of a client, so _start() is inlined here.
        if self._error is not None or self._transport is None:
            self._check_open()
        raw_id = new_id()
        try:
            self._core.send_message(
                raw_id,
                message.action,
                message.data,
                files=message.header_files,
                stream=message.stream,
                expects_response=True,
            )
        except GoingAwayError:
            raise GoingAwayError(
                "the connection is going away (Go Away sent or received): no new messages"
            ) from None
        request = (_MultiRequest if multiple else Request)(self, raw_id, message.stream)
        self._requests[raw_id] = request
        if message.files:
            self._send_files(request, message.files)
        if self._flush_handle is None and not self._in_receive:
            self._schedule_flush()
        return request

    def _start(
        self, outgoing: Outgoing, parent_id: bytes | None, expects_response: bool, multiple: bool
    ) -> Transfer:
        if self._error is not None or self._transport is None:
            self._check_open()
        raw_id = new_id()
        core = self._core
        try:
            if parent_id is None:
                core.send_message(
                    raw_id,
                    outgoing.action,
                    outgoing.data,
                    files=outgoing.header_files,
                    stream=outgoing.stream,
                    expects_response=expects_response,
                )
            else:
                core.send_response(
                    parent_id,
                    raw_id,
                    outgoing.data,
                    files=outgoing.header_files,
                    stream=outgoing.stream,
                    expects_response=expects_response,
                )
        except GoingAwayError:
            raise GoingAwayError(
                "the connection is going away (Go Away sent or received): no new messages"
            ) from None
        if expects_response and parent_id is None:
            transfer: Transfer = (_MultiRequest if multiple else Request)(
                self, raw_id, outgoing.stream
            )
            self._requests[raw_id] = transfer  # type: ignore[assignment]
        else:
            transfer = Transfer(self, raw_id, outgoing.stream)
        if outgoing.files:
            self._send_files(transfer, outgoing.files)
        if self._flush_handle is None and not self._in_receive:
            self._schedule_flush()
        return transfer

    def _send_files(self, transfer: Transfer, files: tuple[FileTransfer, ...]) -> None:
        core = self._core
        raw_id = transfer._raw_id
        if all(file.content is not None for file in files):
            for index, file in enumerate(files):
                if file.content:
                    core.send_file(raw_id, index, file.content)
                core.end_file(raw_id, index)
            return
        pump = self._loop.create_task(self._pump_files(transfer, files))
        transfer._pump = pump
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)

    async def _pump_files(self, transfer: Transfer, files: tuple[FileTransfer, ...]) -> None:
        core = self._core
        raw_id = transfer._raw_id
        try:
            for index, file in enumerate(files):
                sent = 0
                if file.content is not None:
                    if file.content:
                        core.send_file(raw_id, index, file.content)
                    sent = len(file.content)
                elif file.path is not None:
                    with file.path.open("rb") as source:
                        while chunk := source.read(_FILE_CHUNK):
                            sent += len(chunk)
                            if sent > file.size:
                                break
                            core.send_file(raw_id, index, chunk)
                            self._schedule_flush()
                            await self._writable(raw_id)
                elif file.source is not None:
                    async for chunk in file.source:
                        sent += len(chunk)
                        if sent > file.size:
                            break
                        core.send_file(raw_id, index, bytes(chunk))
                        self._schedule_flush()
                        await self._writable(raw_id)
                if sent != file.size:
                    raise FileSizeError(
                        f"file {file.name!r} declared {file.size} bytes but "
                        f"{'more' if sent > file.size else sent} were given"
                    )
                core.end_file(raw_id, index)
                self._schedule_flush()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a size mismatch, a read error, or the source's own
            transfer._error = error
            if not self.closed and not isinstance(error, ConnectionClosedError):
                core.abort(raw_id)  # the peer learns the exchange will not complete
                self._schedule_flush()
            if isinstance(transfer, Request):
                transfer._fail(error)
            logger.warning("sending files of %s failed: %s", transfer.id, error)
        finally:
            transfer._pump = None

    def _abort_transfer(self, transfer: Transfer) -> None:
        raw_id = transfer._raw_id
        error = AbortedError("aborted by this side", by_peer=False)
        transfer._error = error
        if transfer.stream is not None:
            transfer.stream._error = error
        if transfer._pump is not None:
            transfer._pump.cancel()
        if isinstance(transfer, Request):
            self._requests.pop(raw_id, None)
            transfer._fail(error)
        if not self.closed and self._core.abort(raw_id):
            self._schedule_flush()

    # -- flow control on the write side --------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_handle is not None or self._in_receive:
            return
        # First output of this loop turn: write at once; coalesce the rest of the turn.
        self._flush_handle = self._loop.call_soon(self._flush)
        self._write()

    def _flush(self) -> None:
        self._flush_handle = None
        self._write()
        if self._core.has_queued and not self._write_paused and self._transport is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _write(self) -> None:
        transport = self._transport
        if transport is None:
            return
        chunks = self._core.data_to_send(0 if self._write_paused else self._write_budget)
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
            self._last_tx = self._loop.time()
        if not self._write_paused:
            progress = self._progress
            if progress is not None:
                self._progress = None
                if not progress.done():
                    progress.set_result(None)
        if self._closing:
            self._check_idle()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._write_timeout and self._write_stall is None:
            self._write_stall = self._loop.call_later(self._write_timeout, self._write_stalled)

    def _write_stalled(self) -> None:
        self._write_stall = None
        if self._write_paused and self._error is None:
            self._fail(
                ConnectionLostError(
                    f"the peer read nothing for {self._write_timeout:g} s while we had data for it",
                    kind="write_timeout",
                )
            )

    @property
    def send_backlog(self) -> int:
        """Bytes waiting to go to the peer: in the transport's buffer and queued in the core."""
        transport = self._transport
        core = self._core
        waiting = core.output_size + core.queued_bytes
        return waiting + transport.get_write_buffer_size() if transport is not None else waiting

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._write_stall is not None:
            self._write_stall.cancel()
            self._write_stall = None
        if self._held_events:
            held = list(self._held_events)
            self._held_events.clear()
            self._process(held)
        if self._backlog_paused and not self._held_events:
            self._backlog_paused = False
            self._resume_reading()
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    async def _next_progress(self) -> None:
        # One future for every waiter, shielded: a waiter cancelled (its transfer given up)
        # must not cancel it for the others.
        if self._progress is None:
            self._progress = self._loop.create_future()
        await asyncio.shield(self._progress)

    async def drain(self) -> None:
        """Waits while the transport's write buffer is over its limit (the peer reads slower
        than we write); raises if the connection closed. ``send_nowait`` + ``drain`` is the
        cheapest way to stream many messages with backpressure."""
        if len(self._core._out) > self._stream_buffer_limit or self._core._chunks:
            self._write()  # large output goes to the transport now, so its limit applies
        while self._write_paused and self._error is None:
            await self._next_progress()
        self._check_open()

    async def _writable(self, raw_id: bytes) -> None:
        """Waits while this exchange has too much queued or the transport is paused."""
        core = self._core
        if core._chunks or core._out:
            # Hand what is produced to the transport now, so that its buffer limit (and
            # pause_writing) sees it: a producer that never yields would otherwise pile its
            # whole output up before the end-of-turn flush.
            self._write()
        while (
            self._write_paused or core.queued_bytes_for(raw_id) > self._stream_buffer_limit
        ) and not self.closed:
            await self._next_progress()
        self._check_open()

    async def _wait_sent(self, transfer: Transfer, *, everything: bool) -> None:
        core = self._core
        raw_id = transfer._raw_id
        while True:
            if transfer._error is not None:
                raise transfer._error
            self._check_open()
            if transfer._pump is not None:
                await asyncio.shield(transfer._pump)
                continue
            busy = core.in_progress(raw_id) if everything else core.queued_bytes_for(raw_id) > 0
            if not busy and not core._out and not core._chunks:
                return
            await self._next_progress()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._transport = transport
        # uvloop's writelines() writes the list as it is (writev), and so does asyncio's from
        # 3.12 (sendmsg); over TLS the SSL layer encrypts the list into its own buffer, so
        # there is no copy to save either. Before 3.12, asyncio's joins the chunks and then
        # copies what the socket does not take at once: _write does better by itself.
        tls = transport.get_extra_info("sslcontext") is not None
        self._join_free = type(transport).writelines is not asyncio.WriteTransport.writelines or tls
        if tls and self._tls_packets:
            self._core.set_max_packet_size(_TLS_PACKET_SIZE)
        self._remote_address = transport.get_extra_info("peername")
        self._local_address = transport.get_extra_info("sockname")
        transport.set_write_buffer_limits(high=self._write_buffer_limit)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            if self._socket_buffer_size:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._socket_buffer_size)
            receive = self._receive_buffer_size or self._socket_buffer_size
            if receive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive)
            if self._notsent_lowat and _NOTSENT_LOWAT is not None:
                with contextlib.suppress(OSError):  # not a TCP socket (e.g. a Unix one)
                    sock.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, self._notsent_lowat)
            if _QUICKACK is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                self._ack_socket = sock
        self._write()  # our connection header
        self._last_rx = self._last_tx = self._loop.time()
        self._arm_timer()

    def start_timers(self, opened_at: float) -> None:
        """Counts the open deadline from ``opened_at`` (a loop time), e.g. the moment a server
        accepted the socket, before a TLS handshake it ran."""
        self._opened_at = opened_at

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
        self._last_rx = self._loop.time()
        self.bytes_received += nbytes
        core = self._core
        if self._direct:
            self._bulk = True
            events = core.payload_received(nbytes)
            if events:
                self._process(events)
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
                if events:
                    self._process(events)
            elif self._bulk:
                # Bulk message data came last: it probably goes on with the next packet.
                # Parse about a header's worth, so that its payload is copied from here.
                end = min(position + _HEADER_READ, nbytes)
                self.data_received(view[position:end])
                position = end
                if end < nbytes and core.payload_buffer() is None:
                    self._bulk = False  # something else: parse the rest at once
            else:
                self.data_received(view[position:nbytes])
                break
            if position == nbytes or self._error is not None:
                break
        if nbytes == len(view) and nbytes < self._read_buffer_size:
            # A full read: bulk traffic. Read more at a time from now on.
            self._read_view = memoryview(bytearray(min(4 * nbytes, self._read_buffer_size)))
        elif nbytes < self._offered and self._ack_socket is not None:
            self._ack_if_waiting()

    def _ack_if_waiting(self) -> None:
        """The read took all there was and left an exchange unfinished: the peer may be holding
        the rest until we acknowledge what came (see _QUICKACK). The read emptied the kernel's
        queue, so the ACK goes out now."""
        if self._core.receiving or self._core.held_bytes:
            with contextlib.suppress(OSError):
                self._ack_socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def data_received(self, data: bytes | memoryview) -> None:
        """Feeds bytes from the peer (``buffer_updated`` does; also usable directly)."""
        try:
            events = self._core.receive_data(data)
        except RemoteProtocolError as error:
            self._process(error.events)  # what arrived intact before the violation
            logger.info(
                "closing connection from %s: protocol error: %s", self._remote_address, error
            )
            self._fail(
                ConnectionLostError(
                    f"protocol error from the peer: {error}", error, kind="protocol_error"
                )
            )
            return
        self._process(events)

    def _process(self, events: Sequence[Any]) -> None:
        if self._held_events:  # earlier events wait for the peer to read: keep the order
            self._held_events.extend(events)
            return
        self._in_receive = True
        handlers = self._handlers
        core = self._core
        limit = self._write_buffer_limit
        first = True
        written = self.bytes_sent
        try:
            for index, event in enumerate(events):
                handlers[type(event)](event)
                if core._out and (first or index & _HANDOFF_MASK == _HANDOFF_MASK):
                    # The first answer of a batch goes out at once, and then what every
                    # _HANDOFF_EVERY events produced, so that the peer works on those answers
                    # while we handle the rest: the two sides overlap instead of alternating
                    # batch by batch (+10-15% requests/s with 64 in flight, compared with
                    # only the first; an answer per write would cost a syscall each).
                    first = False
                    self._write()
                elif len(core._out) + core._chunks_size > limit:  # core.output_size, inlined
                    self._write()
                else:
                    continue
                if self._write_paused and self.bytes_sent - written > limit:
                    # Handling what one read brought produced a lot to write and the peer
                    # does not read it: the rest of the events wait, and so does reading.
                    # Memory stays bounded by about the write limit, not by what the peer's
                    # requests would make us answer.
                    self._held_events.extend(events[index + 1 :])
                    if self._held_events and not self._backlog_paused:
                        self._backlog_paused = True
                        self._pause_reading()
                    break
        finally:
            self._in_receive = False
        self._write()
        if self._write_paused:
            backlog = self._max_send_backlog
            if backlog is not None and not self._backlog_paused and self.send_backlog > backlog:
                # The peer does not read what its requests made us write: stop reading them
                # until it does (resume_writing), so that answers stop piling up here.
                self._backlog_paused = True
                self._pause_reading()
        elif self._core.has_queued and self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def eof_received(self) -> bool:
        ended = self._core.receive_eof()
        # The core says whether the stream ended at a boundary (ConnectionClosed.clean).
        self._eof_clean = bool(ended) and bool(ended[0].clean)
        if not self._tasks or self._error is not None or self.tls:  # (TLS cannot half-close)
            return False
        # The peer shut its side down after its requests: their running handlers still
        # answer, then we close (within close_timeout). Nothing more can arrive: what waits
        # for it fails now.
        self._peer_eof = True
        self._core.release()
        self._fail_waiting(
            ConnectionLostError("the peer shut its side of the connection", kind="lost")
        )
        if not self._closing:
            self._close_task = self._loop.create_task(self.close())
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._error is None:
            if exc is not None:
                tls = isinstance(exc, ssl.SSLError)
                self._set_error(
                    ConnectionLostError(
                        f"{'TLS error' if tls else 'connection lost'}: {exc}",
                        exc,
                        kind="tls_error" if tls else "lost",
                    )
                )
            elif self._peer_eof or (self._closing and self._core.idle and not self._requests):
                self._set_error(self._clean_close())
            elif self._core.idle and not self._requests and not self._receiving:
                self._set_error(
                    ConnectionClosedError("connection closed by the peer", kind="closed_by_peer")
                )
            else:
                self._set_error(
                    ConnectionLostError(
                        "the peer closed the connection during an exchange", kind="lost"
                    )
                )
        self._shutdown()
        if not self._closed.done():
            self._closed.set_result(None)

    # -- events -------------------------------------------------------------------------------

    def _on_opened(self, event: ConnectionOpened) -> None:
        if not self._opened.done():
            self._opened.set_result(None)

    def _on_message(self, event: MessageReceived) -> None:
        self.messages_received += 1
        _, raw_id, action, expects_response, has_stream, files, data = event
        if not action and expects_response:  # ping(): answered here, at once
            self._core.send_fast_reply(raw_id, FastReply.ACCEPT)
            if has_stream or files:  # (not a ping of ours: whatever it carries is dropped)
                ignored = Message(self, raw_id, expects_response, data)
                ignored._attach(has_stream, files)
                self._receiving[raw_id] = ignored
                ignored.discard()
            return
        message = Message(self, raw_id, expects_response, data)
        message.action = action
        if has_stream or files:
            message._attach(has_stream, files)
            self._receiving[raw_id] = message
        handler = self._handler
        if handler is None:
            self._inbox.append(message)
            if data:
                self._buffered(len(data))
            if len(self._inbox) >= self._max_queued_messages:
                self._pause_reading()
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
            if data:
                self._buffered(len(data))
            if len(self._deferred) >= self._max_queued_messages:
                self._pause_reading()
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
            if message.expects_response and not message._answered:
                # message.fast_reply(), inlined: we are inside data_received, the flush follows.
                message._answered = True
                self._core.send_fast_reply(message._raw_id, result)
                counts = self.fast_replies_sent
                counts[result] = counts.get(result, 0) + 1
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
            and not message._answered
            and not self.closed
        ):
            message.fast_reply(code)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        deferred = self._deferred
        if deferred and self._handler is not None and self._error is None:
            message = deferred.popleft()
            if message.data:
                self._rx_buffered -= len(message.data)
            self._dispatch(self._handler, message)
            self._schedule_flush()
        if self._read_paused:
            self._resume_reading()
        if self._closing:
            self._check_idle()

    def _handler_failed(self, message: Message, error: BaseException) -> None:
        logger.error("handler for %r failed", message.action, exc_info=error)
        if message.expects_response and not message._answered and not self.closed:
            message.fast_reply(5)  # InternalError

    def _on_response(self, event: ResponseReceived) -> None:
        _, parent_id, raw_id, expects_response, has_stream, files, data = event
        response = Response(self, raw_id, expects_response, data)
        response._parent_id = parent_id
        if has_stream or files:
            response._attach(has_stream, files)
            self._receiving[raw_id] = response
        request = self._requests.get(parent_id)
        if request is None:
            self._orphan(response)
            return
        if request._multiple:
            request._deliver(response)
        else:
            del self._requests[parent_id]
            future = request._future
            if not future.done():
                future.set_result(response)
            else:  # nobody waits for it (cancelled)
                self._orphan(response)
        if self._closing:
            self._check_idle()

    def _orphan(self, response: Response) -> None:
        """A reply nobody waits for (its request was answered already, or is unknown): its
        stream and files are dropped as they arrive, so they never fill the read buffer."""
        self.orphan_replies += 1
        if response.stream is not None or response.files:
            response.discard()

    def _on_fast_reply(self, event: FastReplyReceived) -> None:
        request = self._requests.pop(event.id, None)
        if request is not None:
            code = event.code
            # Any: anything typed int (FastReply | int is int) is a plain int in compiled code.
            reply: Any = code
            if code < _KNOWN_COUNT:
                reply = _KNOWN_CODES[code]
            future = request._future
            if request._multiple:
                self._requests[event.id] = request  # it listens on until closed
                request._deliver(reply)
            elif not future.done():
                future.set_result(reply)
            if self._closing:
                self._check_idle()

    def _on_stream_chunk(self, event: StreamChunkReceived) -> None:
        target = self._receiving.get(event.id)
        if target is not None and target.stream is not None and not target._discarded:
            target.stream._feed(event.chunk)

    def _on_stream_end(self, event: StreamEnded) -> None:
        target = self._receiving.get(event.id)
        if target is not None and target.stream is not None:
            target.stream._end()
            if not target._unfinished():
                del self._receiving[event.id]

    def _on_file_chunk(self, event: FileChunkReceived) -> None:
        target = self._receiving.get(event.id)
        if target is not None and not target._discarded:
            target.files[event.file_index]._feed(event.chunk)

    def _on_file_end(self, event: FileEnded) -> None:
        target = self._receiving.get(event.id)
        if target is not None:
            target.files[event.file_index]._end()
            if not target._unfinished():
                del self._receiving[event.id]

    def _on_aborted(self, event: Aborted) -> None:
        target = self._receiving.pop(event.id, None)
        if target is None:
            return
        target._abort(AbortedError("aborted by the peer", by_peer=True))
        for reply in target._replies or ():
            reply.abort()  # our answers to an aborted message are cancelled too

    def _ignore(self, event: object) -> None:
        pass

    def _on_go_away(self, event: GoAwayReceived) -> None:
        for raw_id in event.unsent:
            request = self._requests.pop(raw_id, None)
            if request is not None:
                request._fail(GoingAwayError("the peer is going away; the message was not sent"))
        self._set_going_away()
        if not self._closing:
            self._peer_closing = True  # the peer began the close: its Go Away came first
            self._close_task = self._loop.create_task(self.close())

    # -- flow control on the read side ---------------------------------------------------------

    def _buffered(self, size: int) -> None:
        self._rx_buffered += size
        if self._rx_buffered > self._max_receive_buffer:
            self._pause_reading()

    def _consumed(self, size: int) -> None:
        self._rx_buffered -= size
        if self._read_paused and self._rx_buffered <= self._max_receive_buffer // 2:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self._read_paused
            and not self._backlog_paused
            and self._transport is not None
            and len(self._inbox) < self._max_queued_messages
            and self._rx_buffered <= self._max_receive_buffer // 2
            and len(self._deferred) < self._max_queued_messages
        ):
            self._read_paused = False
            self._transport.resume_reading()

    # -- receiving without a handler -----------------------------------------------------------

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Message:
        """The next message, in arrival order (only when there is no handler)."""
        while not self._inbox:
            if self._error is not None:
                raise StopAsyncIteration
            self._inbox_waiter = self._loop.create_future()
            await self._inbox_waiter
        message = self._inbox.popleft()
        if message.data:
            self._rx_buffered -= len(message.data)
        if self._read_paused:
            self._resume_reading()
        return message

    # -- liveness -----------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        periods = [
            p for p in (self._heartbeat_interval, self._idle_timeout, self._header_timeout) if p
        ]
        if self._open_timeout and not self._opened.done():
            periods.append(self._open_timeout)
        if periods:
            self._timer = self._loop.call_later(min(periods) / 4, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._error is not None:
            return
        now = self._loop.time()
        core = self._core
        if self._read_paused or self._peer_eof:
            # We stopped reading (or nothing more can come): silence is not the peer's fault.
            self._last_rx = self._header_since = now
        limit = self._open_timeout
        if limit and not core.opened and now - self._opened_at >= limit:
            self._fail(
                ConnectionLostError(
                    f"no connection header from the peer within {limit:g} s", kind="open_timeout"
                )
            )
            return
        limit = self._header_timeout
        if limit and core.mid_header:
            mark = core.header_progress
            if mark != self._header_mark:
                self._header_mark = mark
                self._header_since = now
            elif now - self._header_since >= limit:
                self._fail(
                    ConnectionLostError(
                        f"a header from the peer stayed incomplete for {limit:g} s",
                        kind="header_timeout",
                    )
                )
                return
        else:
            self._header_mark = -1
        if self._idle_timeout and now - self._last_rx >= self._idle_timeout:
            self._fail(
                ConnectionLostError(
                    f"idle timeout: nothing received for {self._idle_timeout:g} s",
                    kind="idle_timeout",
                )
            )
            return
        if self._heartbeat_interval and now - self._last_tx >= self._heartbeat_interval:
            self._core.send_heartbeat()
            self._schedule_flush()
        self._arm_timer()

    # -- closing ------------------------------------------------------------------------------

    async def wait_opened(self) -> None:
        """Waits for the peer's connection header (raises if the connection ends first)."""
        if not self._opened.done():
            # asyncio.wait neither cancels nor consumes them (a failed _opened is retrieved).
            await asyncio.wait({self._opened, self._closed}, return_when="FIRST_COMPLETED")
        self._check_open()

    @property
    def going_away(self) -> bool:
        """Whether Go Away was sent or received (no new messages), or the connection closed."""
        return self._going_away.done()

    async def wait_going_away(self) -> None:
        """Waits until Go Away is sent or received (e.g. the server is shutting down), or the
        connection closes: the moment to stop sending new messages here."""
        await asyncio.shield(self._going_away)

    async def wait_closed(self) -> None:
        """Waits until the connection is closed."""
        await asyncio.shield(self._closed)

    async def close(self, timeout: float | None = None) -> None:
        """Closes gracefully: Go Away, in-flight exchanges finish within ``timeout`` seconds
        (default: ``close_timeout``), then the socket closes. Idempotent."""
        if self._error is None and self._transport is not None:
            if not self._closing:
                self._closing = True
                self._set_going_away()
                self._core.send_go_away()
                self._schedule_flush()
            limit = self._close_timeout if timeout is None else timeout
            if not self._is_idle():
                if self._idle_waiter is None:
                    self._idle_waiter = self._loop.create_future()
                try:
                    await asyncio.wait_for(asyncio.shield(self._idle_waiter), limit)
                except TimeoutError:
                    self._set_error(
                        ConnectionClosedError(
                            f"closed with exchanges unfinished after {limit:g} s",
                            kind="grace_timeout",
                        )
                    )
            if not self.closed:  # (the property: the grace period may have closed it)
                self._set_error(self._clean_close())
        transport = self._transport
        if transport is not None:
            transport.close()
            try:
                # close() flushes the write buffer first; a peer that reads nothing is cut off.
                await asyncio.wait_for(asyncio.shield(self._closed), self._close_timeout)
            except TimeoutError:
                transport.abort()
        await asyncio.shield(self._closed)

    def _clean_close(self) -> ConnectionClosedError:
        """The reason of a close that ran its course, by who began it: the peer (its Go Away,
        or it shut its side down after its requests: we answered what we could), or this side.
        A peer that shut its side down inside an exchange lost it."""
        if self._peer_eof and not self._eof_clean:
            return ConnectionLostError(
                "the peer shut its side of the connection during an exchange", kind="lost"
            )
        if self._peer_eof or self._peer_closing:
            return ConnectionClosedError("connection closed by the peer", kind="closed_by_peer")
        return ConnectionClosedError("connection closed")

    def _is_idle(self) -> bool:
        core = self._core
        return (
            not core.sending
            and not core.receiving
            and not self._requests
            and not self._tasks
            and not self._deferred
            and not core._out
            and not core._chunks
        )

    def _set_going_away(self) -> None:
        if not self._going_away.done():
            self._going_away.set_result(None)

    def _check_idle(self) -> None:
        waiter = self._idle_waiter
        if waiter is not None and not waiter.done() and self._is_idle():
            waiter.set_result(None)

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._transport is None:
            raise ConnectionClosedError("the connection is not open")

    def _set_error(self, error: ConnectionClosedError) -> None:
        if self._error is None:
            self._error = error

    def _fail(self, error: ConnectionClosedError) -> None:
        """Ends the connection now, for ``error``."""
        self._set_error(error)
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows and fails what is pending
        else:
            self._shutdown()

    def _fail_waiting(self, error: ConnectionClosedError) -> None:
        """Fails what waits for the peer: our requests, and the streams and files coming."""
        requests, self._requests = self._requests, {}
        for request in requests.values():
            request._fail(error)
        receiving, self._receiving = self._receiving, {}
        for incoming in receiving.values():
            incoming._abort(error)

    def _shutdown(self) -> None:
        """Fails everything that is still pending with the close reason."""
        error = self._error
        assert error is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._write_stall is not None:
            self._write_stall.cancel()
            self._write_stall = None
        self._core.release()  # what the peer made us hold goes back (to the pool too)
        # The table of bound methods is the one reference cycle a connection has: dropped, the
        # connection is freed by reference counting alone once the application lets go of it.
        self._handlers = _CLOSED_HANDLERS
        self._held_events.clear()
        self._deferred.clear()
        self._fail_waiting(error)
        for task in [*self._pumps, *self._tasks]:
            task.cancel()
        for future in (self._progress, self._idle_waiter, self._inbox_waiter):
            if future is not None and not future.done():
                future.set_result(None)
        if not self._opened.done():
            self._opened.set_exception(error)
            self._opened.exception()
        self._set_going_away()
        if self._transport is None and not self._closed.done():
            self._closed.set_result(None)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<sockety Connection {self._remote_address} {state}>"
