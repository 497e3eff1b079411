"""The sans-IO Sockety connection: bytes in -> events out, calls in -> bytes out.

It never touches a socket, a clock or an event loop; the asyncio layer (``sockety.core.aio``) and
the tests drive it. Both peers are symmetrical, so one class serves clients and servers.

It is composed of two halves, each with its own rules at the top of its module: a
:class:`~sockety.core._receiver.Receiver` (bytes in -> events out) and a
:class:`~sockety.core._sender.Sender` (calls in -> bytes out). The receiver tells the sender when
the peer's connection header and Go Away arrive; they share nothing else. This class holds the
two, checks the limits they share, and is the one public face of both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

from ._budget import MemoryPool
from ._events import Event
from ._receiver import Receiver
from ._sender import Buffer, Sender

__all__ = ["Connection"]


@final
class Connection:
    """One side of a Sockety connection.

    Output starts with our connection header; call :meth:`data_to_send` to collect bytes to
    write, :meth:`receive_data` with bytes read. Messages started before the peer's header
    arrived wait for it.
    """

    def __init__(
        self,
        *,
        # How many channels we receive on (announced in our header). Each costs one slot here.
        channels: int = 4096,
        # How many channels we send on at most (the peer's announcement lowers it).
        send_channels: int = 4096,
        # The protocol's own limit (a uint16 length): the Node.js reference sends names that
        # long, and max_header_size bounds the memory a header takes anyway.
        max_action_size: int = 65535,
        # Message data is held in memory until complete: bound it. Use streams or files beyond.
        max_data_size: int = 64 * 1024 * 1024,
        # Each file costs a header entry and bookkeeping before any byte of it arrives.
        max_files: int = 1024,
        # Headers are buffered whole before they are parsed.
        max_header_size: int = 1024 * 1024,
        # The connection's memory budget: everything the peer makes us hold at once (partial
        # headers, data being assembled, the bookkeeping of unfinished exchanges and declared
        # files; see _budget). Room for the largest message (max_data_size) twice over; a peer
        # also never gets more than twice what it sent plus 1 MiB (UNEARNED).
        max_buffered_bytes: int = 128 * 1024 * 1024,
        # A budget shared with other connections (a server's), or None.
        pool: MemoryPool | None = None,
        # Content packets we write: small enough for other channels to interleave with low
        # latency, large enough that per-packet work and syscalls stay small. Measured with
        # sockety-bench (compiled build, 128 KiB socket buffers), 64 / 128 / 256 KiB: 1 MiB data
        # 0.31-0.66x / 0.51-0.58x / 0.57-0.70x the raw ceiling, small-request p99 during a
        # 64 MiB upload 2.1-2.5x / 3.0-3.6x / 3.4-6.8x the unloaded one. (The asyncio layer
        # uses 64 KiB over TLS unless this is given: see sockety.core.aio.)
        max_packet_size: int = 128 * 1024,
    ) -> None:
        if not 1 <= channels <= 4096:
            raise ValueError("channels must be 1..4096")
        sender = self._sender = Sender(
            channels=channels,
            send_channels=send_channels,
            max_packet_size=max_packet_size,
        )
        self._receiver = Receiver(
            channels=channels,
            max_action_size=max_action_size,
            max_data_size=max_data_size,
            max_files=max_files,
            max_header_size=max_header_size,
            max_buffered_bytes=max_buffered_bytes,
            pool=pool,
            sender=sender,
        )

    # -- the connection as a whole ------------------------------------------------------------

    @property
    def opened(self) -> bool:
        """Whether the peer's connection header arrived."""
        return self._receiver.peer_channels > 0

    @property
    def failed(self) -> bool:
        """Whether the peer broke the protocol (``receive_data`` raises from then on)."""
        return self._receiver.failed

    @property
    def idle(self) -> bool:
        """Nothing is being sent or received: no exchange in progress in either direction."""
        sender = self._sender
        return not sender.sending and not self._receiver.receiving and not sender.has_output

    # -- receiving (see _receiver) ------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the peer; returns the events they complete, in order.

        Raises :class:`RemoteProtocolError` on the first violation; its ``events`` attribute holds
        the events decoded before it, and every later call raises the same error.
        """
        return self._receiver.receive_data(data)

    def payload_buffer(self) -> memoryview | None:
        """Where the peer's next bytes belong when they are message data being assembled: a
        writable view of the rest of the current Data packet inside the message's own buffer
        (sized from its declared length). Reading straight into it (``recv_into``) spares a
        copy; report how much was written with :meth:`payload_received`. None otherwise."""
        return self._receiver.payload_buffer()

    def payload_received(self, size: int) -> list[Event]:
        """``size`` bytes were written into the view :meth:`payload_buffer` returned."""
        return self._receiver.payload_received(size)

    def receive_eof(self) -> list[Event]:
        """The peer closed its side; reports whether that happened at a clean boundary."""
        return self._receiver.receive_eof()

    def release(self) -> None:
        """Forgets every unfinished exchange and gives what they held back to the pool (the
        connection is gone: no more input is parsed). Idempotent."""
        self._receiver.release()

    @property
    def peer_channels(self) -> int:
        """How many channels the peer receives on; 0 until its connection header arrived."""
        return self._receiver.peer_channels

    @property
    def receiving(self) -> int:
        """How many incoming exchanges are unfinished (header, data, files or stream pending)."""
        return self._receiver.receiving

    @property
    def held_bytes(self) -> int:
        """Bytes held for the peer now (counted against ``max_buffered_bytes``), including a
        partial packet."""
        return self._receiver.held_bytes

    @property
    def received_bytes(self) -> int:
        """Bytes the peer sent so far."""
        return self._receiver.received_bytes

    @property
    def mid_header(self) -> bool:
        """Whether a packet or message header is partly here, waiting for the rest."""
        return self._receiver.mid_header

    @property
    def header_progress(self) -> int:
        """Grows every time a partial packet or the last partial header completes: while
        :attr:`mid_header` stays true and this does not change, the peer is not finishing a
        header (a completion deadline, not one per byte, catches a slow-loris)."""
        return self._receiver.header_progress

    # -- output (see _sender) -----------------------------------------------------------------

    def data_to_send(self, max_bytes: int | None = None) -> list[Buffer]:
        """Everything ready to write, in order, as a list of buffers for ``writelines``.

        Queued content is served round-robin until about ``max_bytes`` were produced (all of it
        when None); call again for more (``has_queued`` says whether there is any). Buffers that
        are memoryviews point into the caller's payloads, which must stay unchanged until written.
        """
        return self._sender.data_to_send(max_bytes)

    def bytes_to_send(self) -> bytes:
        """All of ``data_to_send()`` joined into one bytes object (handy in tests)."""
        return self._sender.bytes_to_send()

    @property
    def output_size(self) -> int:
        """Bytes ready for ``data_to_send`` (not counting queued content)."""
        return self._sender.output_size

    @property
    def has_output(self) -> bool:
        """Whether ``data_to_send`` has bytes ready (not counting queued content)."""
        return self._sender.has_output

    @property
    def holds_views(self) -> bool:
        """Whether the ready output includes views of large payloads, which must stay unchanged
        until written (write them out before the caller may reuse its buffers)."""
        return self._sender.holds_views

    @property
    def has_queued(self) -> bool:
        """Whether content is queued that ``data_to_send`` has not produced yet."""
        return self._sender.has_queued

    @property
    def queued_bytes(self) -> int:
        """Payload bytes accepted but not yet produced by ``data_to_send``, over all exchanges."""
        return self._sender.queued_bytes

    def queued_bytes_for(self, id: bytes) -> int:
        """Payload bytes of one exchange accepted but not produced yet (0 if it is finished)."""
        return self._sender.queued_bytes_for(id)

    def in_progress(self, id: bytes) -> bool:
        """Whether the exchange ``id`` is waiting for a channel or not completely produced."""
        return self._sender.in_progress(id)

    @property
    def max_packet_size(self) -> int:
        """The largest content packet written (Data, Stream or File payload bytes)."""
        return self._sender.max_packet_size

    def set_max_packet_size(self, size: int) -> None:
        """Changes the size of the content packets written from now on."""
        self._sender.set_max_packet_size(size)

    @property
    def send_channels(self) -> int:
        """Channels we send on: min(our limit, the peer's); 0 until the peer's header arrived."""
        return self._sender.send_channels

    @property
    def sending(self) -> int:
        """Exchanges started or waiting whose last byte is not produced yet."""
        return self._sender.sending

    @property
    def going_away(self) -> bool:
        """Whether Go Away was sent or received: no new message may start."""
        return self._sender.going_away

    # -- sending (see _sender) ----------------------------------------------------------------

    def send_message(
        self,
        id: bytes,
        action: str | bytes,
        data: Buffer = b"",
        *,
        files: Sequence[tuple[str | bytes, int]] = (),
        stream: bool = False,
        expects_response: bool = False,
    ) -> None:
        """Starts a Message. Its files' content follows with ``send_file``/``end_file`` and its
        stream with ``send_stream``/``end_stream``; it is complete when all of those ended."""
        self._sender.send_message(
            id, action, data, files=files, stream=stream, expects_response=expects_response
        )

    def send_response(
        self,
        parent_id: bytes,
        id: bytes,
        data: Buffer = b"",
        *,
        files: Sequence[tuple[str | bytes, int]] = (),
        stream: bool = False,
        expects_response: bool = False,
    ) -> None:
        """Starts a Response to the message ``parent_id``; like ``send_message`` otherwise."""
        self._sender.send_response(
            parent_id, id, data, files=files, stream=stream, expects_response=expects_response
        )

    def send_stream(self, id: bytes, chunk: Buffer) -> None:
        """Queues stream bytes of the exchange ``id`` (an empty chunk sends nothing)."""
        self._sender.send_stream(id, chunk)

    def end_stream(self, id: bytes) -> None:
        self._sender.end_stream(id)

    def send_file(self, id: bytes, index: int, chunk: Buffer) -> None:
        """Queues bytes of file ``index``; more than its declared size is an error."""
        self._sender.send_file(id, index, chunk)

    def end_file(self, id: bytes, index: int) -> None:
        """Ends file ``index``; all of its declared bytes must have been given."""
        self._sender.end_file(id, index)

    def abort(self, id: bytes) -> bool:
        """Aborts the exchange ``id``: writes Abort on its channel (if it started) and frees the
        channel. Returns False if the exchange was already completely written."""
        return self._sender.abort(id)

    def send_fast_reply(self, id: bytes, code: int) -> None:
        self._sender.send_fast_reply(id, code)

    def send_heartbeat(self) -> None:
        self._sender.send_heartbeat()

    def send_go_away(self) -> None:
        """Tells the peer we start no new messages (sent once; later calls do nothing)."""
        self._sender.send_go_away()
