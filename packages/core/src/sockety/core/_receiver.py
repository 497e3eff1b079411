"""The receiving half of a connection: an incremental packet parser and one state machine per
channel.

Rules (PROTOCOL.md §2-§6 and Decisions 1, 4, 5, 7, 8). Anything not allowed here raises
:class:`RemoteProtocolError` and fails the connection for good.

Connection
    * The stream opens with the peer's connection header: ``E0`` | ``E1 n`` | ``E2 n n`` | ``E3``
      (bits 3-2 zero). ``E1 00`` reads as 256 (Decision 5); ``E2`` takes 1..4096.
    * Then packets. Switch Channel sets the channel later packets are bound to; a channel id at or
      above the number of channels *we* announced is an error. Fast Reply, Heartbeat and Go Away
      may come anywhere and do not touch the channel. Type ``1111`` is an error, and so are set bits
      that a packet type defines as zero.

Channel: ``IDLE -> HEADER -> BODY -> IDLE``
    IDLE
        Message or Response starts an exchange: -> HEADER, or straight on when its header is
        complete in that packet. Every other channel-bound packet is an error.
    HEADER
        Only Continue (more header bytes) or Abort. A header longer than ``max_header_size``, a
        field over a limit, or bytes beyond the header's end are errors.
    BODY
        * Data, while declared data remains (never more than declared).
        * Stream, if the stream bit was set, the data is complete, and no Stream End came yet.
        * File for an index below the file count, once the data is complete, never past the file's
          declared size nor after its File End. File End once exactly the declared size arrived.
        * Abort ends the exchange at once (Decision 1).
        The exchange is reported (Message/ResponseReceived) when its header and data are complete,
        and the channel returns to IDLE when, besides, every file ended and the stream ended.
    A Message or Response on a channel that is not IDLE is an error (``CHANNEL_BUSY``).

Memory: one budget per connection (``max_buffered_bytes``, optionally shared through a
:class:`~sockety.core.MemoryPool`) counts everything the peer makes us hold: partial headers,
message data being assembled, and the bookkeeping of every unfinished exchange and declared file
(estimated: ``EXCHANGE_COST``, ``FILE_COST``). Past it, or past twice what the peer sent plus
``UNEARNED`` (exchange bookkeeping aside, which the channel count bounds), the connection fails
with ``LIMIT_EXCEEDED``. Message data is allocated as it arrives, within that credit: a declared
size costs nothing until its bytes come. A partial packet is kept only up to its size (headers are
limited by ``max_header_size``; other packets stream their payload through).
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct
from typing import final

from ._budget import AHEAD, EXCHANGE_COST, FILE_COST, UNEARNED, MemoryPool
from ._buffers import data_buffer
from ._errors import ProtocolErrorKind, RemoteProtocolError
from ._events import (
    Aborted,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    FastReplyReceived,
    FileChunkReceived,
    FileEnded,
    FileHeader,
    GoAwayReceived,
    HeartbeatReceived,
    MessageReceived,
    ResponseReceived,
    StreamChunkReceived,
    StreamEnded,
)
from ._sender import Sender

__all__ = ["Receiver"]

K = ProtocolErrorKind
_SIZE_WIDTHS = (1, 2, 3, 4)  # AA bits of a packet size
_DATA_WIDTHS = (0, 1, 2, 6)  # DD bits of a header
_COUNT_WIDTHS = (0, 1, 2, 3)  # EE bits
_TOTAL_WIDTHS = (2, 3, 4, 6)  # FF bits
_FILE_SIZE_WIDTHS = (1, 2, 3, 6)  # AA bits of a file header
_INDEX_WIDTHS = (0, 1, 2, 3)  # BB bits of File / File End

_DATA, _STREAM, _FILE = 0, 1, 2
_new = tuple.__new__  # builds a NamedTuple event without its Python-level __new__
# Fields of small exchanges read in one call, from the type byte on (see _on_message): header
# size, flags, id(s), then the action length, or the data size and the Data packet's type and size.
_MESSAGE_START = Struct("<xBB16sB").unpack_from
_DATA_START = Struct("<BBB").unpack_from
_RESPONSE_WITH_DATA = Struct("<xBB16s16sBBB").unpack_from
_RESPONSE_WITHOUT_DATA = Struct("<xBB16s16s").unpack_from


def _released(buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
    raise RemoteProtocolError(K.UNEXPECTED_PACKET, "input after the connection was released")


_PacketHandler = Callable[[bytes, int, int, int, list[Event]], int]
_RELEASED: tuple[_PacketHandler, ...] = (_released,) * 16


class _NoCredit(Exception):
    """Inside ``_reserve``: not enough credit to grow a data buffer ahead of its bytes."""


class _Incomplete(Exception):
    """Raised inside the header parser when more header bytes are needed; ``args[0]`` is the
    header length to wait for before parsing again (so a header trickling in through many small
    Continue packets is not re-parsed for every one of them)."""


class _Incoming:
    """One Message or Response being received on a channel."""

    __slots__ = (
        "action",
        "data",
        "data_left",
        "data_size",
        "expects_response",
        "file_left",
        "files",
        "files_open",
        "has_stream",
        "header",
        "header_need",
        "held",
        "id",
        "is_response",
        "parent_id",
        "stream_open",
    )

    def __init__(self, is_response: bool, expects_response: bool, has_stream: bool) -> None:
        self.is_response = is_response
        self.expects_response = expects_response
        self.has_stream = has_stream
        self.stream_open = has_stream
        self.header: bytearray | None = None  # header bytes while it is incomplete
        self.header_need = 0  # header length needed before parsing it again is worthwhile
        self.id = b""
        self.parent_id = b""
        self.action = ""
        self.files: tuple[FileHeader, ...] = ()
        self.file_left: list[int] = []  # bytes still expected per file; -1 once ended
        self.files_open = 0
        self.data_size = 0
        self.data_left = 0
        self.data: bytearray | None = None  # data being assembled (grows as it arrives)
        self.held = 0  # bytes counted for it against the budget


@final
class Receiver:
    """Parses the peer's bytes into events: the receiving half of a Connection.

    It tells the sending half (``sender``) when the peer's connection header and Go Away
    arrive: both change what may be sent. The halves share no other state.
    """

    def __init__(
        self,
        *,
        channels: int,
        max_action_size: int,
        max_data_size: int,
        max_files: int,
        max_header_size: int,
        max_buffered_bytes: int,
        pool: MemoryPool | None = None,
        sender: Sender,
    ) -> None:
        self._sender = sender
        self._in_channels = channels
        self._max_action_size = max_action_size
        self._max_data_size = max_data_size
        self._max_files = max_files
        self._max_header_size = max_header_size
        self._max_buffered_bytes = max_buffered_bytes
        # Declarations allowed beyond twice what the peer sent: UNEARNED, or more when
        # max_files was raised (room for two messages with that many files).
        self._unearned = max(UNEARNED, 2 * max_files * FILE_COST)
        self._error: RemoteProtocolError | None = None
        self._peer_channels = 0  # 0 until the peer's connection header is read
        self._pending = bytearray()  # unconsumed bytes of a partial packet
        self._need = 0  # how many bytes _pending must hold before parsing can go on
        self._channel = 0  # current read channel
        self._incoming: list[_Incoming | None] = [None] * channels
        self._open = 0  # how many of them are not None
        self._pool = pool
        self._held = 0  # bytes counted against the budget, over all channels
        self._received = 0  # bytes the peer sent so far
        self._partial_headers = 0  # headers waiting for Continue packets
        self._settled = 0  # counts the moments no packet or header was left partial
        # A packet whose payload is split over several receive_data() calls:
        self._payload_left = 0
        self._payload_kind = _DATA
        self._payload_index = 0
        self._payload_target: _Incoming | None = None
        self._handlers: tuple[_PacketHandler, ...] = (
            self._on_switch_low,
            self._on_switch_high,
            self._on_message,
            self._on_fast_reply_low,
            self._on_fast_reply_high,
            self._on_response,
            self._on_continue,
            self._on_stream,
            self._on_stream_end,
            self._on_abort,
            self._on_heartbeat,
            self._on_go_away,
            self._on_file,
            self._on_file_end,
            self._on_data,
            self._on_invalid,
        )

    # -- public -------------------------------------------------------------------------------

    @property
    def peer_channels(self) -> int:
        """How many channels the peer receives on; 0 until its connection header arrived."""
        return self._peer_channels

    @property
    def receiving(self) -> int:
        """How many incoming exchanges are unfinished (header, data, files or stream pending)."""
        return self._open

    @property
    def held_bytes(self) -> int:
        """Bytes held for the peer now (counted against ``max_buffered_bytes``), including a
        partial packet."""
        return self._held + len(self._pending)

    @property
    def received_bytes(self) -> int:
        """Bytes the peer sent so far."""
        return self._received

    @property
    def failed(self) -> bool:
        """Whether the peer broke the protocol (``receive_data`` raises from then on)."""
        return self._error is not None

    @property
    def mid_header(self) -> bool:
        """Whether a packet or message header is partly here, waiting for the rest."""
        return bool(self._pending) or self._partial_headers > 0

    @property
    def header_progress(self) -> int:
        """Grows every time a partial packet or the last partial header completes: while
        :attr:`mid_header` stays true and this does not change, the peer is not finishing a
        header (a completion deadline, not one per byte, catches a slow-loris)."""
        return self._settled

    def release(self) -> None:
        """Forgets every unfinished exchange and gives what they held back to the pool (the
        connection is gone: no more input is parsed). Idempotent."""
        # The packet table holds bound methods, a reference cycle: without it the connection
        # is freed by reference counting alone.
        self._handlers = _RELEASED
        self._incoming = [None] * self._in_channels
        self._open = 0
        self._partial_headers = 0
        self._payload_left = 0
        self._payload_target = None
        self._pending.clear()
        if self._held:
            if self._pool is not None:
                self._pool.give(self._held)
            self._held = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the peer; returns the events they complete, in order.

        Raises :class:`RemoteProtocolError` on the first violation; its ``events`` attribute holds
        the events decoded before it, and every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        self._received += len(data)
        pending = self._pending
        if pending:
            pending += data
            if len(pending) < self._need:
                return []
            buf = bytes(pending)
            pending.clear()
            if not self._partial_headers:
                self._settled += 1
        elif type(data) is bytes:
            buf = data
        else:
            buf = bytes(data)
        events: list[Event] = []
        try:
            self._parse(buf, events)
        except RemoteProtocolError as error:
            error.events = events
            self._fail(error)
            raise
        return events

    def payload_buffer(self) -> memoryview | None:
        """Where the peer's next bytes belong when they are message data being assembled: a
        writable view of the rest of the current Data packet inside the message's own buffer
        (sized from its declared length). Reading straight into it (``recv_into``) spares a
        copy; report how much was written with :meth:`payload_received`. None otherwise."""
        if not self._payload_left or self._payload_kind != _DATA or self._error is not None:
            return None
        incoming = self._payload_target
        assert incoming is not None
        offset = incoming.data_size - incoming.data_left
        data = incoming.data
        if data is None or len(data) <= offset:
            data = self._reserve(incoming, 0)
            if data is None:  # no credit: the parser takes the bytes once they are here
                return None
        return memoryview(data)[offset : offset + min(self._payload_left, len(data) - offset)]

    def payload_received(self, size: int) -> list[Event]:
        """``size`` bytes were written into the view :meth:`payload_buffer` returned."""
        incoming = self._payload_target
        if self._payload_kind != _DATA or incoming is None or not 0 < size <= self._payload_left:
            raise ValueError("payload_received() does not match payload_buffer()")
        self._received += size
        self._payload_left -= size
        incoming.data_left -= size
        events: list[Event] = []
        if not incoming.data_left:
            self._data_complete(incoming, events)
        return events

    def receive_eof(self) -> list[Event]:
        """The peer closed its side; reports whether that happened at a clean boundary."""
        clean = (
            self._error is None and not self._pending and not self._payload_left and not self._open
        )
        return [ConnectionClosed(clean)]

    # -- internals ----------------------------------------------------------------------------

    def _fail(self, error: RemoteProtocolError) -> None:
        self._error = error
        self.release()

    def _parse(self, buf: bytes, events: list[Event]) -> None:
        pos = 0
        n = len(buf)
        if self._payload_left:
            pos = self._take_payload(buf, 0, n, self._payload_left, events)
        elif not self._peer_channels and n:
            pos = self._read_connection_header(buf, events)
            if pos < 0:
                return
        handlers = self._handlers
        while pos < n:
            b = buf[pos]
            new = handlers[b >> 4](buf, pos, n, b, events)
            if new < 0:  # incomplete: -new is how many bytes the packet needs
                self._pending += buf[pos:]
                self._need = -new
                return
            pos = new

    def _read_connection_header(self, buf: bytes, events: list[Event]) -> int:
        b = buf[0]
        if b & 0xFC != 0xE0:
            raise RemoteProtocolError(K.BAD_CONNECTION_HEADER, f"bad connection header {b:#04x}")
        width = b & 3
        need = 1 + (1 if width == 1 else 2 if width == 2 else 0)
        if len(buf) < need:
            self._pending += buf
            self._need = need
            return -1
        if width == 0:
            channels = 1
        elif width == 1:
            channels = buf[1] or 256  # Decision 5: the reference writes 256 as E1 00
        elif width == 2:
            channels = buf[1] | buf[2] << 8
            if not 1 <= channels <= 4096:
                raise RemoteProtocolError(
                    K.BAD_CONNECTION_HEADER, f"peer announced {channels} channels"
                )
        else:
            channels = 4096
        self._peer_channels = channels
        events.append(ConnectionOpened(channels, self._sender.peer_opened(channels)))
        return need

    def _sized(self, buf: bytes, pos: int, n: int, b: int) -> tuple[int, int]:
        """Reads the size field of a sized packet: (size, position after it) or (-need, 0)."""
        aa = (b >> 2) & 3
        if aa == 0:
            if pos + 2 > n:
                return -2, 0
            return buf[pos + 1], pos + 2
        width = _SIZE_WIDTHS[aa]
        end = pos + 1 + width
        if end > n:
            return -(1 + width), 0
        return int.from_bytes(buf[pos + 1 : end], "little"), end

    # -- the budget ---------------------------------------------------------------------------

    def _take(self, incoming: _Incoming, size: int, ahead: bool = False) -> None:
        """Counts ``size`` more bytes held for ``incoming``; raises (counting nothing) past the
        connection's budget, past the pool's, or past twice what the peer sent plus UNEARNED
        (the bookkeeping of open exchanges aside: the channel count bounds it). Room ``ahead``
        of the bytes that arrived (a data buffer grown before its bytes come) is limited to
        once what the peer sent plus AHEAD, so that the bytes that then fill other buffers
        stay within twice."""
        held = self._held + size
        if held > self._max_buffered_bytes:
            raise self._violation(
                K.LIMIT_EXCEEDED,
                f"the peer would make us hold {held} bytes (headers, data, files being "
                f"received), over max_buffered_bytes={self._max_buffered_bytes}",
            )
        allowed = self._received + AHEAD if ahead else 2 * self._received + self._unearned
        if held - self._open * EXCHANGE_COST > allowed:
            raise self._violation(
                K.LIMIT_EXCEEDED,
                f"the peer would make us hold {held} bytes for the {self._received} it sent "
                f"(over twice that plus {self._unearned}): declarations without content",
            )
        pool = self._pool
        if pool is not None and not pool.take(size):
            raise self._violation(
                K.LIMIT_EXCEEDED, f"the shared memory budget ({pool.limit} bytes) is used up"
            )
        incoming.held += size
        self._held = held

    def _give(self, incoming: _Incoming, size: int) -> None:
        incoming.held -= size
        self._held -= size
        if self._pool is not None:
            self._pool.give(size)

    def _finish(self, channel: int, incoming: _Incoming) -> None:
        """The exchange on ``channel`` is over: its slot and what it held are released."""
        self._incoming[channel] = None
        self._open -= 1
        if incoming.held:
            self._give(incoming, incoming.held)

    def _reserve(self, incoming: _Incoming, want: int) -> bytearray | None:
        """Room in the data buffer for ``want`` more bytes (the bytes in hand). The buffer
        grows at once to what the credit allows (what the peer sent plus AHEAD, less what we
        hold), never past the declared size; without that much credit it doubles what it will
        hold (within twice what was sent: every byte in it arrived), or takes just the bytes in
        hand; past the budget that raises. With ``want`` 0 (room for bytes still to come) it
        grows only within the credit, never raises, and returns None if there is none."""
        data = incoming.data
        have = len(data) if data is not None else 0
        offset = incoming.data_size - incoming.data_left
        size = incoming.data_size
        need = offset + want
        credit = self._received + AHEAD - (self._held - self._open * EXCHANGE_COST)
        ahead = min(size, have + credit)
        try:
            if ahead >= min(size, 2 * need) and ahead > offset:
                self._take(incoming, ahead - have, ahead=True)
                size = ahead
            elif not want:
                return None
            else:
                raise _NoCredit
        except (RemoteProtocolError, _NoCredit):
            if not want:
                return None
            size = min(size, 2 * need)  # doubling: copies stay linear in the data's size
            try:
                self._take(incoming, size - have)
            except RemoteProtocolError:
                size = need
                self._take(incoming, size - have)
        grown = data_buffer(size)
        if offset:
            assert data is not None
            grown[:offset] = memoryview(data)[:offset]
        incoming.data = grown
        return grown

    def _data_complete(self, incoming: _Incoming, events: list[Event]) -> None:
        """All declared data arrived: the buffer goes to the application (the connection no
        longer holds it for the peer)."""
        data = incoming.data
        assert data is not None and len(data) == incoming.data_size
        incoming.data = None
        self._give(incoming, len(data))
        self._announce(incoming, events, data)

    def _violation(self, kind: ProtocolErrorKind, message: str) -> RemoteProtocolError:
        """The error for a violation on the current channel."""
        return RemoteProtocolError(kind, message, channel=self._channel)

    def _current(self, name: str) -> _Incoming:
        incoming = self._incoming[self._channel]
        if incoming is None:
            raise self._violation(
                K.UNEXPECTED_PACKET,
                f"{name} on channel {self._channel} with no message in progress",
            )
        return incoming

    def _switch_to(self, channel: int) -> None:
        if channel >= self._in_channels:
            raise RemoteProtocolError(
                K.CHANNEL_OUT_OF_RANGE,
                f"switch to channel {channel}, but we receive on {self._in_channels}",
                channel=channel,
            )
        self._channel = channel

    # Packet handlers: return the position after the packet, or -(bytes the packet needs).

    def _on_switch_low(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        channel = b & 0x0F
        self._switch_to(channel)
        return pos + 1

    def _on_switch_high(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if pos + 2 > n:
            return -2
        channel = (b & 0x0F) << 8 | buf[pos + 1]
        self._switch_to(channel)
        return pos + 2

    def _on_fast_reply_low(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        end = pos + 17
        if end > n:
            return -17
        events.append(_new(FastReplyReceived, (buf[pos + 1 : end], b & 0x0F)))
        return end

    def _on_fast_reply_high(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        end = pos + 18
        if end > n:
            return -18
        events.append(FastReplyReceived(buf[pos + 2 : end], (b & 0x0F) << 8 | buf[pos + 1]))
        return end

    # The hot path of both sides: a small Message or Response whose header (no files, no
    # stream, one packet of < 256 bytes) and data (< 256 bytes, one Data packet right after it)
    # are here whole is reported at once, without channel state: no _Incoming, no copy of the
    # header. Whatever does not fit that shape exactly -- including every violation -- returns
    # to the general path (_start), which also says precisely what is wrong.

    def _on_message(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if pos + 20 <= n and not b & 0x0E:  # a 1-byte header size, no stream (b is 0x20 | 0x21)
            header_size, flags, id, length = _MESSAGE_START(buf, pos)
            p: int = pos + 20 + length  # after the action
            if (
                length <= self._max_action_size
                and self._incoming[self._channel] is None
                and header_size <= self._max_header_size
            ):
                end: int = -1
                if flags == 0x40 and header_size == 19 + length and p + 3 <= n:
                    # A 1-byte data size closes the header; a Data packet with a 1-byte size.
                    size, data_type, data_size = _DATA_START(buf, p)
                    if data_type == 0xE0 and data_size == size <= self._max_data_size:
                        end = p + 3 + size
                elif flags == 0 and header_size == 18 + length:  # no data
                    end = p
                if 0 <= end <= n:
                    try:
                        action = buf[pos + 20 : p].decode()
                    except UnicodeDecodeError:
                        return self._start(buf, pos, n, b, events, False)
                    data = buf[p + 3 : end] if end > p else b""
                    fields = (self._channel, id, action, b == 0x21, False, (), data)
                    events.append(_new(MessageReceived, fields))
                    return end
        return self._start(buf, pos, n, b, events, False)

    def _on_response(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if pos + 38 <= n and not b & 0x0E:  # a 1-byte header size, no stream (b is 0x50 | 0x51)
            # With data: header size 34, flags 0x40 (a 1-byte data size), the ids and the size;
            # then a Data packet with a 1-byte size.
            header_size, flags, parent_id, id, size, data_type, data_size = _RESPONSE_WITH_DATA(
                buf, pos
            )
            end: int = pos + 38 + size
            if (
                header_size == 34
                and flags == 0x40
                and data_type == 0xE0
                and data_size == size
                and end <= n
                and self._incoming[self._channel] is None
                and size <= self._max_data_size
                and self._max_header_size >= 34
            ):
                data = buf[pos + 38 : end]
                fields = (self._channel, parent_id, id, b == 0x51, False, (), data)
                events.append(_new(ResponseReceived, fields))
                return end
        if pos + 35 <= n and not b & 0x0E:
            # Without data: header size 33, flags 0, the ids.
            header_size, flags, parent_id, id = _RESPONSE_WITHOUT_DATA(buf, pos)
            if (
                header_size == 33
                and flags == 0
                and self._incoming[self._channel] is None
                and self._max_header_size >= 33
            ):
                fields = (self._channel, parent_id, id, b == 0x51, False, (), b"")
                events.append(_new(ResponseReceived, fields))
                return pos + 35
        return self._start(buf, pos, n, b, events, True)

    def _start(
        self, buf: bytes, pos: int, n: int, b: int, events: list[Event], is_response: bool
    ) -> int:
        size, start = self._sized(buf, pos, n, b)
        if size < 0:
            return size
        if size > self._max_header_size:
            raise self._violation(
                K.LIMIT_EXCEEDED,
                f"header of {size} bytes is over max_header_size={self._max_header_size}",
            )
        end = start + size
        if end > n:
            return pos - end
        channel = self._channel
        if self._incoming[channel] is not None:
            raise RemoteProtocolError(
                K.CHANNEL_BUSY,
                f"{'response' if is_response else 'message'} started on busy channel {channel}",
                channel=channel,
            )
        incoming = _Incoming(is_response, bool(b & 1), bool(b & 2))
        self._incoming[channel] = incoming
        self._open += 1
        self._take(incoming, EXCHANGE_COST)
        header = buf[start:end]
        if not self._read_header(incoming, header):
            incoming.header = bytearray(header)
            self._take(incoming, len(header))
            self._partial_headers += 1
        elif incoming.data_left == 0:
            self._announce(incoming, events, b"")
        elif end < n and buf[end] & 0xF3 == 0xE0:
            # The data follows at once, whole, in one Data packet.
            size, data_start = self._sized(buf, end, n, buf[end])
            if size == incoming.data_size and data_start + size <= n:
                incoming.data_left = 0
                self._announce(incoming, events, buf[data_start : data_start + size])
                return data_start + size
        return end

    def _on_continue(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if b & 3:
            raise RemoteProtocolError(K.BAD_HEADER_BYTE, f"bad Continue byte {b:#04x}")
        size, start = self._sized(buf, pos, n, b)
        if size < 0:
            return size
        incoming = self._current("Continue")
        header = incoming.header
        if header is None:
            raise self._violation(
                K.UNEXPECTED_PACKET,
                f"Continue on channel {self._channel} after the header was complete",
            )
        if len(header) + size > self._max_header_size:
            raise self._violation(
                K.LIMIT_EXCEEDED,
                f"header over max_header_size={self._max_header_size}",
            )
        end = start + size
        if end > n:
            return pos - end
        self._take(incoming, size)
        header += buf[start:end]
        if len(header) >= incoming.header_need and self._read_header(incoming, bytes(header)):
            incoming.header = None
            self._give(incoming, len(header))
            self._partial_headers -= 1
            if not self._partial_headers:
                self._settled += 1
            if incoming.data_left == 0:
                self._announce(incoming, events, b"")
        return end

    def _on_data(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if b & 3:
            raise RemoteProtocolError(K.BAD_HEADER_BYTE, f"bad Data byte {b:#04x}")
        size, start = self._sized(buf, pos, n, b)
        if size < 0:
            return size
        incoming = self._body("Data")
        if size > incoming.data_left or not incoming.data_left:
            raise self._violation(
                K.DATA_OVERFLOW,
                f"{size} data bytes, but only {incoming.data_left} more were declared",
            )
        if size == incoming.data_size and start + size <= n:
            # The whole data in one packet, already here: the common, fast case.
            end = start + size
            incoming.data_left = 0
            self._announce(incoming, events, buf[start:end])
            return end
        self._payload_kind = _DATA
        self._payload_target = incoming
        return self._take_payload(buf, start, n, size, events)

    def _on_stream(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if b & 3:
            raise RemoteProtocolError(K.BAD_HEADER_BYTE, f"bad Stream byte {b:#04x}")
        size, start = self._sized(buf, pos, n, b)
        if size < 0:
            return size
        incoming = self._body("Stream")
        self._check_stream(incoming, "Stream")
        self._payload_kind = _STREAM
        self._payload_target = incoming
        return self._take_payload(buf, start, n, size, events)

    def _on_stream_end(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if b != 0x80:
            raise RemoteProtocolError(K.BAD_HEADER_BYTE, f"bad Stream End byte {b:#04x}")
        incoming = self._body("Stream End")
        self._check_stream(incoming, "Stream End")
        incoming.stream_open = False
        events.append(StreamEnded(self._channel, incoming.id))
        if not incoming.files_open:
            self._finish(self._channel, incoming)
        return pos + 1

    def _on_file(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        size, start = self._sized(buf, pos, n, b)
        if size < 0:
            return size
        width = _INDEX_WIDTHS[b & 3]
        end = start + width
        if end > n:
            return pos - end
        index = int.from_bytes(buf[start:end], "little") if width else 0
        incoming = self._body("File")
        left = self._check_file(incoming, index, "File")
        if size > left:
            raise self._violation(
                K.FILE_SIZE_MISMATCH,
                f"{size} bytes for file {index}, but only {left} more were declared",
            )
        incoming.file_left[index] = left - size
        self._payload_kind = _FILE
        self._payload_index = index
        self._payload_target = incoming
        return self._take_payload(buf, end, n, size, events)

    def _on_file_end(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if b & 0x0C:
            raise RemoteProtocolError(K.BAD_HEADER_BYTE, f"bad File End byte {b:#04x}")
        width = _INDEX_WIDTHS[b & 3]
        end = pos + 1 + width
        if end > n:
            return pos - end
        index = int.from_bytes(buf[pos + 1 : end], "little") if width else 0
        incoming = self._body("File End")
        left = self._check_file(incoming, index, "File End")
        if left:
            raise self._violation(
                K.FILE_SIZE_MISMATCH,
                f"file {index} ended {left} bytes short of its declared size",
            )
        incoming.file_left[index] = -1
        incoming.files_open -= 1
        events.append(FileEnded(self._channel, incoming.id, index))
        if not incoming.files_open and not incoming.stream_open:
            self._finish(self._channel, incoming)
        return end

    def _on_abort(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if b != 0x90:
            raise RemoteProtocolError(K.BAD_HEADER_BYTE, f"bad Abort byte {b:#04x}")
        incoming = self._current("Abort")
        if incoming.header is not None:
            self._partial_headers -= 1
            if not self._partial_headers:
                self._settled += 1
        self._finish(self._channel, incoming)
        if incoming.header is None:  # its id is known
            events.append(Aborted(self._channel, incoming.id))
        return pos + 1

    def _on_heartbeat(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if b != 0xA0:
            raise RemoteProtocolError(K.BAD_HEADER_BYTE, f"bad Heartbeat byte {b:#04x}")
        events.append(HeartbeatReceived())
        return pos + 1

    def _on_go_away(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        if b != 0xB0:
            raise RemoteProtocolError(K.BAD_HEADER_BYTE, f"bad Go Away byte {b:#04x}")
        events.append(GoAwayReceived(self._sender.peer_going_away()))
        return pos + 1

    def _on_invalid(self, buf: bytes, pos: int, n: int, b: int, events: list[Event]) -> int:
        raise RemoteProtocolError(K.UNKNOWN_PACKET, f"unknown packet type {b:#04x}")

    # -- helpers for the channel state machine ------------------------------------------------

    def _body(self, name: str) -> _Incoming:
        incoming = self._current(name)
        if incoming.header is not None:
            raise self._violation(
                K.UNEXPECTED_PACKET,
                f"{name} on channel {self._channel} before its header was complete",
            )
        return incoming

    def _check_stream(self, incoming: _Incoming, name: str) -> None:
        if not incoming.stream_open:
            raise self._violation(
                K.STREAM_CLOSED,
                f"{name} on channel {self._channel}, but "
                + ("its stream already ended" if incoming.has_stream else "it has no stream"),
            )
        if incoming.data_left:
            raise self._violation(
                K.UNEXPECTED_PACKET,
                f"{name} on channel {self._channel} before its data was complete",
            )

    def _check_file(self, incoming: _Incoming, index: int, name: str) -> int:
        if index >= len(incoming.file_left):
            raise self._violation(
                K.FILE_INDEX_OUT_OF_RANGE,
                f"{name} for file {index}, but only {len(incoming.file_left)} were declared",
            )
        left = incoming.file_left[index]
        if left < 0:
            raise self._violation(
                K.FILE_SIZE_MISMATCH,
                f"{name} for file {index} after its File End",
            )
        if incoming.data_left:
            raise self._violation(
                K.UNEXPECTED_PACKET,
                f"{name} on channel {self._channel} before its data was complete",
            )
        return left

    def _take_payload(self, buf: bytes, pos: int, n: int, size: int, events: list[Event]) -> int:
        """Consumes up to ``size`` payload bytes of the current Data/Stream/File packet."""
        take = n - pos
        if take >= size:
            take = size
            self._payload_left = 0
        else:
            self._payload_left = size - take
        incoming = self._payload_target
        assert incoming is not None
        end = pos + take
        kind = self._payload_kind
        if kind == _DATA:
            if take:
                offset = incoming.data_size - incoming.data_left
                data = incoming.data
                if data is None or len(data) < offset + take:
                    data = self._reserve(incoming, take)
                    assert data is not None
                data[offset : offset + take] = memoryview(buf)[pos:end]
                incoming.data_left -= take
                if not incoming.data_left:
                    self._data_complete(incoming, events)
        elif take:
            chunk = buf if take == n else buf[pos:end]
            channel = self._channel
            if kind == _STREAM:
                events.append(StreamChunkReceived(channel, incoming.id, chunk))
            else:
                events.append(FileChunkReceived(channel, incoming.id, self._payload_index, chunk))
        return end

    def _announce(self, incoming: _Incoming, events: list[Event], data: bytes | bytearray) -> None:
        channel = self._channel
        if incoming.is_response:
            events.append(
                ResponseReceived(
                    channel,
                    incoming.parent_id,
                    incoming.id,
                    incoming.expects_response,
                    incoming.has_stream,
                    incoming.files,
                    data,
                )
            )
        else:
            events.append(
                MessageReceived(
                    channel,
                    incoming.id,
                    incoming.action,
                    incoming.expects_response,
                    incoming.has_stream,
                    incoming.files,
                    data,
                )
            )
        if not incoming.files_open and not incoming.stream_open:
            self._finish(channel, incoming)

    def _read_header(self, incoming: _Incoming, h: bytes) -> bool:
        """Parses a Message/Response header into ``incoming``; False if more bytes are needed."""
        try:
            end = self._parse_header(incoming, h)
        except _Incomplete as incomplete:
            incoming.header_need = incomplete.args[0]
            return False
        except UnicodeDecodeError as error:
            raise self._violation(K.BAD_HEADER, f"invalid UTF-8 in header: {error}") from None
        if end != len(h):
            raise self._violation(
                K.BAD_HEADER,
                f"{len(h) - end} bytes after the end of the header",
            )
        files = incoming.files
        if files:
            self._take(incoming, len(files) * FILE_COST + sum(len(file.name) for file in files))
        return True

    def _parse_header(self, incoming: _Incoming, h: bytes) -> int:
        n = len(h)
        if not n:
            raise _Incomplete(1)
        flags = h[0]
        if flags & 1:
            raise RemoteProtocolError(K.BAD_HEADER, "reserved flag bit 0 is set")
        if incoming.is_response:
            if flags & 2:
                raise RemoteProtocolError(K.BAD_HEADER, "response flags with the action bit set")
            p = 33
            if p > n:
                raise _Incomplete(p)
            incoming.parent_id = h[1:17]
            incoming.id = h[17:33]
        else:
            p = 17
            if flags & 2:
                if p + 2 > n:
                    raise _Incomplete(p + 2)
                length = h[p] | h[p + 1] << 8
                p += 2
            else:
                if p + 1 > n:
                    raise _Incomplete(p + 1)
                length = h[p]
                p += 1
            if length > self._max_action_size:
                raise self._violation(
                    K.LIMIT_EXCEEDED,
                    f"action of {length} bytes is over max_action_size={self._max_action_size}",
                )
            if p + length > n:
                raise _Incomplete(p + length)
            incoming.id = h[1:17]
            incoming.action = h[p : p + length].decode()
            p += length
        width = _DATA_WIDTHS[flags >> 6]
        if width:
            if p + width > n:
                raise _Incomplete(p + width)
            size = h[p] if width == 1 else int.from_bytes(h[p : p + width], "little")
            p += width
            if size > self._max_data_size:
                raise self._violation(
                    K.LIMIT_EXCEEDED,
                    f"data of {size} bytes is over max_data_size={self._max_data_size}",
                )
            incoming.data_size = incoming.data_left = size
        width = _COUNT_WIDTHS[(flags >> 4) & 3]
        if width:
            if p + width > n:
                raise _Incomplete(p + width)
            count = int.from_bytes(h[p : p + width], "little")
            p += width
            if count > self._max_files:
                raise self._violation(
                    K.LIMIT_EXCEEDED,
                    f"{count} files are over max_files={self._max_files}",
                )
            width = _TOTAL_WIDTHS[(flags >> 2) & 3]
            if p + width > n:
                raise _Incomplete(p + width)
            total = int.from_bytes(h[p : p + width], "little")
            p += width
            files = []
            for _ in range(count):
                if p >= n:
                    raise _Incomplete(p + 1)
                fh = h[p]
                if fh & 0xF1:
                    raise RemoteProtocolError(K.BAD_HEADER, f"bad file header byte {fh:#04x}")
                width = _FILE_SIZE_WIDTHS[(fh >> 2) & 3]
                name_width = 2 if fh & 2 else 1
                q = p + 1 + width + name_width
                if q > n:
                    raise _Incomplete(q)
                file_size = int.from_bytes(h[p + 1 : p + 1 + width], "little")
                length = int.from_bytes(h[p + 1 + width : q], "little")
                if q + length > n:
                    raise _Incomplete(q + length)
                files.append(FileHeader(h[q : q + length].decode(), file_size))
                p = q + length
            if sum(file.size for file in files) != total:
                raise self._violation(
                    K.BAD_HEADER,
                    f"total files size {total} is not the sum of the file sizes",
                )
            incoming.files = tuple(files)
            incoming.file_left = [file.size for file in files]
            incoming.files_open = count
        return p
