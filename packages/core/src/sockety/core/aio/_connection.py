"""The asyncio connection: the ``asyncio.BufferedProtocol`` that composes the parts around the
sans-IO core, and the user API of a connection (send, request, close, counters).

The parts, each in its own module (the module map is in packages/core/README.md):
    * ``_output.Output``: writes — coalescing, pacing (``write_budget``), drain, write timeout.
    * ``_flow.ReadFlow``: read-side flow control — pause/resume reading by what waits unconsumed.
    * ``_port.Port``: what messages, responses, streams and transfers see of their connection.
    * ``_dispatch.Dispatch``: the core's events to handlers, the inbox and our requests.
    * ``_input.Input``: reads — the read buffer, in-place payload reads, quick ACKs.
    * ``_files``: files sent from memory, disk or iterators.

This class keeps what concerns the connection as a whole: its options, the socket's setup, the
liveness timers (open, header and idle timeouts, heartbeats) and the lifecycle. ``close()``
sends Go Away, lets in-flight exchanges finish within the grace period, then closes the socket.
Whatever ends the connection, every pending request, stream and file fails promptly with a
:class:`ConnectionClosedError` (or subclass) that says why.

Subclassing (``allow_interpreted_subclasses``; the server's connection does): override the
``asyncio.Protocol`` methods calling ``super()``; ``set_remote_address`` and ``fail`` serve a
socket that is accepted but not yet (or never) made a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import socket
import ssl
import time
from types import SimpleNamespace
from typing import Any, cast

from mypy_extensions import mypyc_attr

from .. import _connection as _core
from .._budget import MemoryPool
from .._errors import ConnectionClosedError, ConnectionLostError
from .._events import ConnectionClosed
from .._ids import new_id
from ._dispatch import Dispatch, Handler
from ._drafts import Outgoing
from ._exchanges import Message, Request, RequestPort, Transfer, _MultiRequest, start
from ._flow import ReadFlow
from ._input import Input
from ._output import Output
from ._port import Port

__all__ = ["OPTIONS", "Connection", "Handler", "check_options"]

_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux, macOS
# Content packets over TLS when max_packet_size is not given (the core's default is 128 KiB).
# TLS moves bulk about a third as fast as TCP, so each packet written ahead of a small message
# holds it three times as long, and the cost per packet is small next to encryption.
# sockety-bench -f sockety-tls, 3 interleaved runs each: small-request p99 during a 64 MiB
# upload 1.9-2.8x the unloaded one instead of 3.5-5.0x (and 55% more small requests served
# meanwhile); 1 MiB data, 4 MiB data and 1 MiB files as fast (within the runs' spread).
_TLS_PACKET_SIZE = 64 * 1024
# The protocol allows an empty action name (drafts do not: it is reserved for this).
_PING = Outgoing(b"", b"", (), False)


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
        loop = self._loop = asyncio.get_running_loop()
        core = self._core = _core.Connection(
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
        self._heartbeat_interval = heartbeat_interval
        self._idle_timeout = idle_timeout
        self._open_timeout = open_timeout
        self._header_timeout = header_timeout
        self._close_timeout = close_timeout
        self._socket_buffer_size = socket_buffer_size
        self._notsent_lowat = notsent_lowat
        self._receive_buffer_size = receive_buffer_size
        self._transport: asyncio.Transport | None = None
        # The parts (see the module map in packages/core/README.md): writes, read-side flow
        # control, the port the exchanges see, event dispatch, reads.
        output = self._output = Output(
            loop,
            core,
            write_budget=write_budget,
            write_buffer_limit=write_buffer_limit,
            stream_buffer_limit=stream_buffer_limit,
            write_timeout=write_timeout,
        )
        flow = self._flow = ReadFlow(
            max_receive_buffer=max_receive_buffer, max_queued_messages=max_queued_messages
        )
        port: RequestPort = Port(self, loop, core, output, flow)
        self._port = port
        self._opened: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._going_away: asyncio.Future[None] = loop.create_future()
        dispatch = self._dispatch = Dispatch(
            port,
            core,
            output,
            flow,
            handler,
            max_handlers=max_handlers,
            max_send_backlog=max_send_backlog,
            opened=self._opened,
        )
        self._input = Input(loop, core, dispatch, read_buffer_size=read_buffer_size)
        self._timer: asyncio.TimerHandle | None = None
        self._opened_at = loop.time()
        self._header_mark = -1  # the core's header_progress when a partial header was seen
        self._header_since = 0.0
        self._peer_eof = False  # the peer shut its side down (we may still answer)
        self._eof_clean = True  # ... at a clean boundary (the core's ConnectionClosed.clean)
        self._peer_closing = False  # the peer's Go Away came before we began to close
        self._closing = False
        self._shut = False  # _shutdown ran
        self._close_task: asyncio.Task[None] | None = None
        #: A slot for the application's own per-connection state (a fresh namespace).
        self.state = SimpleNamespace()
        self._remote_address: Any = None
        self._local_address: Any = None

    # -- information --------------------------------------------------------------------------

    @property
    def remote_address(self) -> Any:
        """The peer's address (``transport.get_extra_info('peername')``)."""
        return self._remote_address

    def set_remote_address(self, address: Any) -> None:
        """Sets ``remote_address`` before ``connection_made`` (a server knows the peer when it
        accepts the socket, before admission and its TLS handshake); connection_made sets it
        again from the transport."""
        self._remote_address = address

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
        return self._port.error is not None

    @property
    def closing(self) -> bool:
        """Whether this side began to close (``close()`` was called, or the peer's Go Away
        made it close): no new messages, in-flight exchanges finishing."""
        return self._closing

    @property
    def close_reason(self) -> ConnectionClosedError | None:
        """Why the connection closed: None while it is open."""
        return self._port.error

    @property
    def writing_paused(self) -> bool:
        """Whether our output waits for the peer to read (the transport's buffer is full)."""
        return self._output.paused

    @property
    def reading_paused(self) -> bool:
        """Whether we stopped reading the peer (flow control: its bytes wait in its socket)."""
        return self._flow.paused

    @property
    def backlog_paused(self) -> bool:
        """Whether reading is paused because the peer does not read the answers its requests
        made (``max_send_backlog``): its next requests wait in its own socket."""
        return self._flow.backlog_paused

    @property
    def pending_requests(self) -> int:
        """Requests still waiting for their first reply."""
        return len(self._port.requests)

    @property
    def channels(self) -> int:
        """How many channels we send on (min of ours and the peer's); 0 before the handshake."""
        return self._core.send_channels

    # Traffic counters (read by metrics): bytes, messages received, answers sent.

    @property
    def bytes_received(self) -> int:
        return self._input.bytes_received

    @property
    def parsed_bytes(self) -> int:
        """Bytes received that went through the parser: headers, and message data too small to
        be worth copying apart (the rest was copied once, or read in place)."""
        return self._input.parsed_bytes

    @property
    def bytes_sent(self) -> int:
        return self._output.bytes_sent

    @property
    def messages_received(self) -> int:
        return self._dispatch.messages_received

    @property
    def responses_sent(self) -> int:
        return self._port.responses_sent

    @property
    def fast_replies_sent(self) -> dict[int, int]:
        """Fast replies sent, by code."""
        return self._port.fast_replies_sent

    @property
    def orphan_replies(self) -> int:
        """Replies to requests we no longer wait for (already answered, or unknown): dropped
        as they arrive, their streams and files unbuffered."""
        return self._dispatch.orphan_replies

    @property
    def send_backlog(self) -> int:
        """Bytes waiting to go to the peer: in the transport's buffer and queued in the core."""
        return self._output.backlog

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
        return start(self._port, message, None, False, False)

    async def send(self, message: Outgoing) -> Transfer:
        """Sends a message that expects no response and waits until its header, data and files
        were handed to the network (not its stream: write that with the returned transfer)."""
        transfer = start(self._port, message, None, False, False)
        await transfer.wait_sent(everything=False)
        return transfer

    def request(self, message: Outgoing, *, multiple: bool = False) -> Request:
        """Sends a message that expects responses. ``await`` the result (or its ``response()``)
        for the first reply; with ``multiple=True`` iterate ``responses()`` for several."""
        # The hot path of a client, so start() is inlined here.
        port = self._port
        raw_id = new_id()
        port.send_message(raw_id, message, True)
        request = (_MultiRequest if multiple else Request)(
            port, raw_id, message.stream, message.files
        )
        port.requests[raw_id] = request
        self._output.schedule_flush()
        return request

    async def drain(self) -> None:
        """Waits while the transport's write buffer is over its limit (the peer reads slower
        than we write); raises if the connection closed. ``send_nowait`` + ``drain`` is the
        cheapest way to stream many messages with backpressure."""
        await self._output.drain()
        self._port.check_open()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._transport = transport
        self._port.attached = True
        if transport.get_extra_info("sslcontext") is not None and self._tls_packets:
            self._core.set_max_packet_size(_TLS_PACKET_SIZE)
        self._remote_address = transport.get_extra_info("peername")
        self._local_address = transport.get_extra_info("sockname")
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
        self._flow.attach(transport)
        self._input.peer = self._remote_address
        self._input.on_violation = self._fail
        self._output.on_stall = self._fail
        self._dispatch.on_go_away = self._peer_going_away
        self._output.attach(transport)  # writes our connection header
        self._input.attach(sock)
        self._arm_timer()

    def start_timers(self, opened_at: float) -> None:
        """Counts the open deadline from ``opened_at`` (a loop time), e.g. the moment a server
        accepted the socket, before a TLS handshake it ran."""
        self._opened_at = opened_at

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._input.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._input.buffer_updated(nbytes)

    def data_received(self, data: bytes | memoryview) -> None:
        """Feeds bytes from the peer (``buffer_updated`` does; also usable directly)."""
        self._input.data_received(data)

    def pause_writing(self) -> None:
        self._output.pause()

    def resume_writing(self) -> None:
        self._output.resume()
        self._dispatch.release_held()
        self._output.flush_soon()

    def eof_received(self) -> bool:
        ended = self._core.receive_eof()
        # The core says whether the stream ended at a boundary (ConnectionClosed.clean).
        self._eof_clean = any(isinstance(e, ConnectionClosed) and e.clean for e in ended)
        if not self._dispatch.running or self._port.error is not None or self.tls:
            return False  # (TLS cannot half-close)
        # The peer shut its side down after its requests: their running handlers still
        # answer, then we close (within close_timeout). Nothing more can arrive: what waits
        # for it fails now.
        self._peer_eof = True
        self._core.release()
        self._dispatch.fail_waiting(
            ConnectionLostError("the peer shut its side of the connection", kind="lost")
        )
        if not self._closing:
            self._close_task = self._loop.create_task(self.close())
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._port.attached = False
        self._output.detach()
        self._flow.detach()
        if self._port.error is None:
            core = self._core
            requests = self._port.requests
            if exc is not None:
                tls = isinstance(exc, ssl.SSLError)
                self._set_error(
                    ConnectionLostError(
                        f"{'TLS error' if tls else 'connection lost'}: {exc}",
                        exc,
                        kind="tls_error" if tls else "lost",
                    )
                )
            elif self._peer_eof or (self._closing and core.idle and not requests):
                self._set_error(self._clean_close())
            elif core.idle and not requests and not self._dispatch.receiving:
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

    # -- receiving without a handler -----------------------------------------------------------

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Message:
        """The next message, in arrival order (only when there is no handler)."""
        message = await self._dispatch.next_message()
        if message is None:
            raise StopAsyncIteration
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
        if self._port.error is not None:
            return
        now = self._loop.time()
        core = self._core
        reader = self._input
        if self._flow.paused or self._peer_eof:
            # We stopped reading (or nothing more can come): silence is not the peer's fault.
            reader.last_rx = self._header_since = now
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
        if self._idle_timeout and now - reader.last_rx >= self._idle_timeout:
            self._fail(
                ConnectionLostError(
                    f"idle timeout: nothing received for {self._idle_timeout:g} s",
                    kind="idle_timeout",
                )
            )
            return
        if self._heartbeat_interval and now - self._output.last_tx >= self._heartbeat_interval:
            core.send_heartbeat()
            self._output.schedule_flush()
        self._arm_timer()

    # -- closing ------------------------------------------------------------------------------

    async def wait_opened(self) -> None:
        """Waits for the peer's connection header (raises if the connection ends first)."""
        if not self._opened.done():
            # asyncio.wait neither cancels nor consumes them (a failed _opened is retrieved).
            await asyncio.wait({self._opened, self._closed}, return_when="FIRST_COMPLETED")
        self._port.check_open()

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
        dispatch = self._dispatch
        if self._port.error is None and self._transport is not None:
            if not self._closing:
                self._closing = True
                dispatch.closing = True
                self._output.after_write = dispatch.check_idle
                self._set_going_away()
                self._core.send_go_away()
                self._output.schedule_flush()
            limit = self._close_timeout if timeout is None else timeout
            if not dispatch.idle:
                try:
                    await asyncio.wait_for(asyncio.shield(dispatch.idle_waiter()), limit)
                except TimeoutError:
                    self._set_error(
                        ConnectionClosedError(
                            f"closed with exchanges unfinished after {limit:g} s",
                            kind="grace_timeout",
                        )
                    )
            if not self.closed:  # (the grace period may have closed it)
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

    def _peer_going_away(self) -> None:
        self._set_going_away()
        if not self._closing:
            self._peer_closing = True  # the peer began the close: its Go Away came first
            self._close_task = self._loop.create_task(self.close())

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

    def _set_going_away(self) -> None:
        if not self._going_away.done():
            self._going_away.set_result(None)

    def _set_error(self, error: ConnectionClosedError) -> None:
        if self._port.error is None:
            self._port.error = error

    def fail(self, error: ConnectionClosedError) -> None:
        """Ends the connection now, for ``error`` (its ``close_reason``, unless it closed
        already): the socket is aborted, and everything pending fails with it. A subclass (a
        server's connection) also calls it for a socket it never opened: refused at
        admission, or whose TLS handshake failed."""
        self._fail(error)

    def _fail(self, error: ConnectionClosedError) -> None:
        self._set_error(error)
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows and fails what is pending
        else:
            self._shutdown()

    def _shutdown(self) -> None:
        """Fails everything that is still pending with the close reason."""
        error = self._port.error
        assert error is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._shut:
            return
        self._shut = True
        self._output.close()
        self._input.close()
        self._core.release()  # what the peer made us hold goes back (to the pool too)
        self._dispatch.close(error)
        self._port.owner = None  # (messages keep their connection: the port's cycle is broken)
        if not self._opened.done():
            self._opened.set_exception(error)
            self._opened.exception()
        self._set_going_away()
        if self._transport is None and not self._closed.done():
            self._closed.set_result(None)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<sockety Connection {self._remote_address} {state}>"
