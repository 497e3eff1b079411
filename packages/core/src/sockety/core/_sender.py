"""The sending half of a connection: channel reservation, packetizing and fair scheduling.

Rules:
    * Nothing but the connection header is written before the peer's header arrived: messages
      wait in a queue until then (we do not know how many channels the peer accepts).
    * A Message/Response takes a free channel among ``min(our limit, the peer's)``: the current
      write channel if it is free (sequential exchanges need no Switch), else the first free one
      scanning up from it (the reference's policy). With none free it waits, first come first
      served, and starts as soon as a channel is released.
    * A channel is released once everything of its exchange was written: header, data, every
      file's End and, if it has one, the Stream End. Abort releases it at once.
    * Data, stream and file content goes out in packets of at most ``max_packet_size`` bytes
      (File packets never over 16 MiB, Decision 6). Content that does not fit one packet is
      queued, and ``data_to_send`` serves the queued exchanges round-robin, one quantum each per
      round, so a large transfer never holds back small messages on other channels.
    * After Go Away (sent or received), no new Message starts; responses still may.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Sequence
from typing import final

from ._constants import MAX_CHANNELS, MAX_FAST_REPLY_CODE
from ._encoding import (
    ACTION_U16,
    DATA_U8,
    DATA_U16,
    DATA_U48,
    EXPECTS_RESPONSE,
    HAS_STREAM,
    TYPE_ABORT,
    TYPE_DATA,
    TYPE_FAST_REPLY_LOW,
    TYPE_GO_AWAY,
    TYPE_HEARTBEAT,
    TYPE_MESSAGE,
    TYPE_STREAM,
    TYPE_STREAM_END,
    connection_header,
    fast_reply_packet,
    file_end_packet,
    file_packet_prefix,
    message_header_packet,
    response_header_packet,
    sized_prefix,
    switch_packet,
)
from ._errors import GoingAwayError, LocalProtocolError

__all__ = ["Sender"]

Buffer = bytes | bytearray | memoryview

_DATA, _STREAM, _STREAM_END, _FILE, _FILE_END = range(5)
_FILE_PACKET_LIMIT = 16 * 1024 * 1024  # Decision 6
#: Payloads below this size are copied into the output buffer; larger ones are passed on as
#: memoryviews so that the transport can write them without a copy.
_COPY_LIMIT = 16 * 1024
_UINT8 = [bytes((value,)) for value in range(256)]
_U48 = 1 << 48


class _Outgoing:
    """One Message or Response being sent."""

    __slots__ = (
        "channel",
        "file_left",
        "header",
        "id",
        "in_ring",
        "is_message",
        "open_parts",
        "queue",
        "queued",
        "stream_writable",
    )

    def __init__(self, id: bytes, header: bytes, is_message: bool) -> None:
        self.id = id
        self.header = header
        self.is_message = is_message
        self.channel = -1  # -1 while waiting for a channel
        self.queue: deque[tuple[int, int, Buffer]] = deque()
        self.queued = 0  # payload bytes in the queue
        self.open_parts = 0  # stream + files whose End is not written yet
        self.stream_writable = False
        self.file_left: list[int] = []  # bytes the user may still send per file; -1 once ended
        self.in_ring = False


def _packet_size(size: int) -> int:
    if not 1 <= size <= _FILE_PACKET_LIMIT:
        raise ValueError(f"max_packet_size must be 1..{_FILE_PACKET_LIMIT}")
    return size


def _as_bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


@final
class Sender:
    """Turns calls into bytes: the sending half of :class:`~sockety.core.Connection`.

    It shares no state with the receiving half, which only tells it what the peer's connection
    header and Go Away change (``peer_opened``, ``peer_going_away``).
    """

    def __init__(self, *, channels: int, send_channels: int, max_packet_size: int) -> None:
        if not 1 <= send_channels <= MAX_CHANNELS:
            raise ValueError(f"send_channels must be 1..{MAX_CHANNELS}")
        self._send_limit = send_channels
        self._max_packet = _packet_size(max_packet_size)
        self._out = bytearray(connection_header(channels))
        self._chunks: list[Buffer] = []
        self._chunks_size = 0
        self._send_channels = 0  # 0 until the peer's header arrived
        self._busy = bytearray()
        self._free = 0
        self._wch = 0  # current write channel
        self._waiting: deque[_Outgoing] = deque()
        self._outgoing: dict[bytes, _Outgoing] = {}
        self._ring: deque[_Outgoing] = deque()
        self._queued = 0  # payload bytes queued over all exchanges
        self._going_away = False
        self._peer_going_away = False
        self._actions: dict[str | bytes, tuple[int, bytes]] = {}
        self._headers: dict[tuple[str | bytes, int, bool], tuple[bytes, bytes]] = {}
        self._responses: dict[tuple[int, bool], tuple[bytes, bytes]] = {}  # at most 512

    # -- output -------------------------------------------------------------------------------

    def data_to_send(self, max_bytes: int | None = None) -> list[Buffer]:
        """Everything ready to write, in order, as a list of buffers for ``writelines``.

        Queued content is served round-robin until about ``max_bytes`` were produced (all of it
        when None); call again for more (``has_queued`` says whether there is any). Buffers that
        are memoryviews point into the caller's payloads, which must stay unchanged until written.
        """
        if self._ring:
            self._serve(sys.maxsize if max_bytes is None else max_bytes)
        chunks = self._chunks
        if self._out:
            chunks.append(bytes(self._out))
            self._out.clear()
        self._chunks = []
        self._chunks_size = 0
        return chunks

    def bytes_to_send(self) -> bytes:
        """All of ``data_to_send()`` joined into one bytes object (handy in tests)."""
        return b"".join(self.data_to_send())

    @property
    def output_size(self) -> int:
        """Bytes ready for ``data_to_send`` (not counting queued content)."""
        return len(self._out) + self._chunks_size

    @property
    def has_output(self) -> bool:
        """Whether ``data_to_send`` has bytes ready (not counting queued content)."""
        return bool(self._out) or bool(self._chunks)

    @property
    def holds_views(self) -> bool:
        """Whether the ready output includes views of large payloads, which must stay unchanged
        until written (write them out before the caller may reuse its buffers)."""
        return bool(self._chunks)

    @property
    def has_queued(self) -> bool:
        """Whether content is queued that ``data_to_send`` has not produced yet."""
        return bool(self._ring)

    @property
    def queued_bytes(self) -> int:
        """Payload bytes accepted but not yet produced by ``data_to_send``, over all exchanges."""
        return self._queued

    def queued_bytes_for(self, id: bytes) -> int:
        """Payload bytes of one exchange accepted but not produced yet (0 if it is finished)."""
        outgoing = self._outgoing.get(id)
        return outgoing.queued if outgoing is not None else 0

    def in_progress(self, id: bytes) -> bool:
        """Whether the exchange ``id`` is waiting for a channel or not completely produced."""
        return id in self._outgoing

    @property
    def max_packet_size(self) -> int:
        """The largest content packet written (Data, Stream or File payload bytes)."""
        return self._max_packet

    def set_max_packet_size(self, size: int) -> None:
        """Changes the size of the content packets written from now on."""
        self._max_packet = _packet_size(size)

    @property
    def send_channels(self) -> int:
        """Channels we send on: min(our limit, the peer's); 0 until the peer's header arrived."""
        return self._send_channels

    @property
    def sending(self) -> int:
        """Exchanges started or waiting whose last byte is not produced yet."""
        return len(self._outgoing)

    @property
    def going_away(self) -> bool:
        """Whether Go Away was sent or received: no new message may start."""
        return self._going_away or self._peer_going_away

    # -- starting exchanges -------------------------------------------------------------------

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
        if self._going_away or self._peer_going_away:
            raise GoingAwayError("the connection is going away: no new messages")
        size = len(data)
        # Two fast paths for messages without files; _general_message makes the very same bytes
        # (test_packetizing proves it for random messages and packet sizes), only slower.
        if not files and size < 0x100 and size <= self._max_packet and not stream and len(id) == 16:
            # The hottest shape: no files, no stream, data small enough for one packet.
            # Everything of the header but the id is cached per (action, size,
            # expects_response); the exchange is complete once written, so when a channel is
            # free it is written at once (see _write_whole).
            key = (action, size, expects_response)
            parts = self._headers.get(key)
            if parts is None:
                parts = self._cache_header(action, size, expects_response)
            if self._free and not self._waiting and id not in self._outgoing:
                channel = self._wch
                if channel >= self._send_channels or self._busy[channel]:
                    self._switch(self._free_channel())
                out = self._out
                out += parts[0]
                out += id
                out += parts[1]
                if size:
                    out += data
                return
        if not files and len(id) == 16:
            # The common shape (no files): the header from a cached action field.
            cached = self._actions.get(action)
            if cached is None:
                cached = self._cache_action(action)
            flags, action_part = cached
            if not size:
                size_part = b""
            elif size < 0x100:
                flags |= DATA_U8
                size_part = _UINT8[size]
            elif size < 0x10000:
                flags |= DATA_U16
                size_part = size.to_bytes(2, "little")
            elif size < _U48:
                flags |= DATA_U48
                size_part = size.to_bytes(6, "little")
            else:
                raise LocalProtocolError(f"data of {size} bytes is over the protocol's 2^48")
            length = 17 + len(action_part) + len(size_part)  # flags, id, action, data size
            type_bits = (
                TYPE_MESSAGE
                | (HAS_STREAM if stream else 0)
                | (EXPECTS_RESPONSE if expects_response else 0)
            )
            if length < 0x100:
                head = _UINT8[type_bits] + _UINT8[length] + _UINT8[flags]
            else:
                head = sized_prefix(type_bits, length) + _UINT8[flags]
            header = b"".join((head, id, action_part, size_part))
            if stream or not self._write_whole(id, header, data):
                self._begin(_Outgoing(id, header, True), data, [], stream)
            return
        self._general_message(id, action, data, files, stream, expects_response)

    def _general_message(
        self,
        id: bytes,
        action: str | bytes,
        data: Buffer,
        files: Sequence[tuple[str | bytes, int]],
        stream: bool,
        expects_response: bool,
    ) -> None:
        """The one general encoder of a Message: every shape, packets of ``max_packet_size``.

        The fast paths of ``send_message`` must produce exactly its bytes (test_packetizing)."""
        if self._going_away or self._peer_going_away:
            raise GoingAwayError("the connection is going away: no new messages")
        file_list = [(_as_bytes(name), size) for name, size in files]
        header = message_header_packet(
            id, _as_bytes(action), len(data), file_list, stream, expects_response
        )
        self._begin(_Outgoing(id, header, True), data, file_list, stream)

    def _cache_header(
        self, action: str | bytes, size: int, expects_response: bool
    ) -> tuple[bytes, bytes]:
        """(what precedes the id, what follows it up to the data) of a small message's header
        and its Data packet prefix."""
        header = message_header_packet(
            bytes(16), _as_bytes(action), size, [], False, expects_response
        )
        cut = 2 + (1, 2, 3, 4)[(header[0] >> 2) & 3]  # the id follows type, size and flags
        after = header[cut + 16 :] + (sized_prefix(TYPE_DATA, size) if size else b"")
        parts = (header[:cut], after)
        if len(self._headers) < 65536:  # bounded: actions x small sizes
            self._headers[(action, size, expects_response)] = parts
        return parts

    def _cache_action(self, action: str | bytes) -> tuple[int, bytes]:
        encoded = _as_bytes(action)
        length = len(encoded)
        if length < 0x100:
            cached = (0, _UINT8[length] + encoded)
        elif length < 0x10000:
            cached = (ACTION_U16, length.to_bytes(2, "little") + encoded)
        else:
            raise LocalProtocolError("an action name is over 65,535 bytes")
        if len(self._actions) < 4096:  # a bounded cache: actions are few in practice
            self._actions[action] = cached
        return cached

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
        size = len(data)
        if (
            not files
            and not stream
            and size < 0x100
            and size <= self._max_packet
            and len(id) == 16
            and len(parent_id) == 16
            and self._free
            and not self._waiting
            and id not in self._outgoing
        ):
            # The hot path, as in send_message: a small response is written at once from a
            # cached header (the ids are its only varying part); _general_response makes the
            # very same bytes (test_packetizing proves it).
            parts = self._responses.get((size, expects_response))
            if parts is None:
                header = response_header_packet(
                    bytes(16), bytes(16), size, [], False, expects_response
                )
                cut = 2 + (1, 2, 3, 4)[(header[0] >> 2) & 3]  # after type, size and flags
                parts = (
                    header[:cut],
                    header[cut + 32 :] + (sized_prefix(TYPE_DATA, size) if size else b""),
                )
                self._responses[(size, expects_response)] = parts
            channel = self._wch
            if channel >= self._send_channels or self._busy[channel]:
                self._switch(self._free_channel())
            out = self._out
            out += parts[0]
            out += parent_id
            out += id
            out += parts[1]
            if size:
                out += data
            return
        file_list = [(_as_bytes(name), size) for name, size in files]
        header = response_header_packet(
            parent_id, id, len(data), file_list, stream, expects_response
        )
        if file_list or stream or not self._write_whole(id, header, data):
            self._begin(_Outgoing(id, header, False), data, file_list, stream)

    def _general_response(
        self,
        parent_id: bytes,
        id: bytes,
        data: Buffer,
        files: Sequence[tuple[str | bytes, int]],
        stream: bool,
        expects_response: bool,
    ) -> None:
        """The one general encoder of a Response (see ``_general_message``)."""
        file_list = [(_as_bytes(name), size) for name, size in files]
        header = response_header_packet(
            parent_id, id, len(data), file_list, stream, expects_response
        )
        self._begin(_Outgoing(id, header, False), data, file_list, stream)

    def _write_whole(self, id: bytes, header: bytes, data: Buffer) -> bool:
        """The hot path: an exchange of a header and at most one packet of data is written at
        once when a channel is free, taken and released in the same breath. False if it cannot
        be (then it goes the general way)."""
        if len(data) > self._max_packet or not self._free or self._waiting:
            return False
        if len(id) != 16:
            raise LocalProtocolError("an id is 16 bytes")
        if id in self._outgoing:
            raise LocalProtocolError(f"id {id.hex()} is already being sent")
        channel = self._wch
        if channel >= self._send_channels or self._busy[channel]:
            channel = self._free_channel()
            self._switch(channel)
        self._out += header
        if data:
            self._payload(sized_prefix(TYPE_DATA, len(data)), data)
        return True

    def _begin(
        self, outgoing: _Outgoing, data: Buffer, files: list[tuple[bytes, int]], stream: bool
    ) -> None:
        if len(outgoing.id) != 16:
            raise LocalProtocolError("an id is 16 bytes")
        if outgoing.id in self._outgoing:
            raise LocalProtocolError(f"id {outgoing.id.hex()} is already being sent")
        if stream:
            outgoing.stream_writable = True
            outgoing.open_parts = 1
        if files:
            outgoing.file_left = [size for _, size in files]
            outgoing.open_parts += len(files)
        if data:
            outgoing.queue.append((_DATA, 0, data))
            outgoing.queued = len(data)
            self._queued += len(data)
        self._outgoing[outgoing.id] = outgoing
        if self._free and not self._waiting:
            self._assign(outgoing)
        else:
            self._waiting.append(outgoing)
            self._start_waiting()

    # -- content ------------------------------------------------------------------------------

    def send_stream(self, id: bytes, chunk: Buffer) -> None:
        """Queues stream bytes of the exchange ``id`` (an empty chunk sends nothing)."""
        outgoing = self._get(id)
        if not outgoing.stream_writable:
            raise LocalProtocolError("this exchange has no stream, or its stream ended")
        if chunk:
            self._push(outgoing, (_STREAM, 0, chunk), len(chunk))

    def end_stream(self, id: bytes) -> None:
        outgoing = self._get(id)
        if not outgoing.stream_writable:
            raise LocalProtocolError("this exchange has no stream, or its stream ended")
        outgoing.stream_writable = False
        self._push(outgoing, (_STREAM_END, 0, b""), 0)

    def send_file(self, id: bytes, index: int, chunk: Buffer) -> None:
        """Queues bytes of file ``index``; more than its declared size is an error."""
        outgoing = self._get(id)
        left = self._file_left(outgoing, index)
        if len(chunk) > left:
            raise LocalProtocolError(
                f"file {index}: {len(chunk)} bytes given, only {left} left of its declared size"
            )
        outgoing.file_left[index] = left - len(chunk)
        if chunk:
            self._push(outgoing, (_FILE, index, chunk), len(chunk))

    def end_file(self, id: bytes, index: int) -> None:
        """Ends file ``index``; all of its declared bytes must have been given."""
        outgoing = self._get(id)
        left = self._file_left(outgoing, index)
        if left:
            raise LocalProtocolError(f"file {index} ended {left} bytes short of its size")
        outgoing.file_left[index] = -1
        self._push(outgoing, (_FILE_END, index, b""), 0)

    def abort(self, id: bytes) -> bool:
        """Aborts the exchange ``id``: writes Abort on its channel (if it started) and frees the
        channel. Returns False if the exchange was already completely written."""
        outgoing = self._outgoing.pop(id, None)
        if outgoing is None:
            return False
        self._queued -= outgoing.queued
        outgoing.queue.clear()
        outgoing.queued = 0
        if outgoing.channel < 0:
            self._waiting.remove(outgoing)
            return True
        if outgoing.in_ring:
            self._ring.remove(outgoing)
            outgoing.in_ring = False
        self._switch(outgoing.channel)
        self._out.append(TYPE_ABORT)
        self._release(outgoing.channel)
        self._start_waiting()
        return True

    # -- channel-free packets -----------------------------------------------------------------

    def send_fast_reply(self, id: bytes, code: int) -> None:
        if len(id) != 16:
            raise LocalProtocolError("an id is 16 bytes")
        if 0 <= code < 16:
            out = self._out
            out += _UINT8[TYPE_FAST_REPLY_LOW | code]
            out += id
            return
        if not 0 <= code <= MAX_FAST_REPLY_CODE:
            raise LocalProtocolError(f"fast-reply code must be 0..4095, got {code}")
        self._out += fast_reply_packet(id, code)

    def send_heartbeat(self) -> None:
        self._out.append(TYPE_HEARTBEAT)

    def send_go_away(self) -> None:
        """Tells the peer we start no new messages (sent once; later calls do nothing)."""
        if not self._going_away:
            self._going_away = True
            self._out.append(TYPE_GO_AWAY)

    # -- told by the receiving half -----------------------------------------------------------

    def peer_opened(self, channels: int) -> int:
        """The peer's connection header arrived: it receives on ``channels``. Returns how many
        channels we send on; messages waiting for it start."""
        count = min(self._send_limit, channels)
        self._send_channels = count
        self._busy = bytearray(count)
        self._free = count
        self._start_waiting()
        return count

    def peer_going_away(self) -> tuple[bytes, ...]:
        """The peer sent Go Away: no new message starts. Returns the ids of our messages still
        waiting for a channel, which now will never be sent (Decision 2)."""
        self._peer_going_away = True
        unsent = tuple(o.id for o in self._waiting if o.is_message)
        if unsent:
            for id in unsent:
                outgoing = self._outgoing.pop(id)
                self._queued -= outgoing.queued
            self._waiting = deque(o for o in self._waiting if not o.is_message)
        return unsent

    # -- internals ----------------------------------------------------------------------------

    def _get(self, id: bytes) -> _Outgoing:
        outgoing = self._outgoing.get(id)
        if outgoing is None:
            raise LocalProtocolError(f"no exchange {id.hex()} is being sent")
        return outgoing

    def _file_left(self, outgoing: _Outgoing, index: int) -> int:
        if not 0 <= index < len(outgoing.file_left):
            raise LocalProtocolError(f"no file {index} in this exchange")
        left = outgoing.file_left[index]
        if left < 0:
            raise LocalProtocolError(f"file {index} already ended")
        return left

    def _push(self, outgoing: _Outgoing, item: tuple[int, int, Buffer], size: int) -> None:
        outgoing.queue.append(item)
        outgoing.queued += size
        self._queued += size
        if outgoing.channel >= 0 and not outgoing.in_ring:
            self._emit(outgoing, self._max_packet)
            self._after_emit(outgoing)
            self._start_waiting()

    def _switch(self, channel: int) -> None:
        if channel != self._wch:
            self._wch = channel
            if channel < 16:
                self._out.append(channel)
            else:
                self._out += switch_packet(channel)

    def _payload(self, prefix: bytes, payload: Buffer) -> None:
        out = self._out
        out += prefix
        if len(payload) < _COPY_LIMIT:
            out += payload
        else:
            if out:
                self._chunks.append(bytes(out))
                self._chunks_size += len(out)
                out.clear()
            self._chunks.append(payload)
            self._chunks_size += len(payload)

    def _free_channel(self) -> int:
        """The current write channel if it is free, else the first free one scanning up."""
        busy = self._busy
        channel = self._wch
        if channel >= self._send_channels or busy[channel]:
            count = self._send_channels
            channel = (channel + 1) % count
            while busy[channel]:
                channel = (channel + 1) % count
        return channel

    def _assign(self, outgoing: _Outgoing) -> None:
        busy = self._busy
        channel = self._free_channel()
        busy[channel] = 1
        self._free -= 1
        outgoing.channel = channel
        self._switch(channel)
        self._out += outgoing.header
        if outgoing.queue:
            self._emit(outgoing, self._max_packet)
        self._after_emit(outgoing)

    def _after_emit(self, outgoing: _Outgoing) -> None:
        if outgoing.queue:
            if not outgoing.in_ring:
                outgoing.in_ring = True
                self._ring.append(outgoing)
        elif not outgoing.open_parts:
            del self._outgoing[outgoing.id]
            self._release(outgoing.channel)

    def _release(self, channel: int) -> None:
        self._busy[channel] = 0
        self._free += 1

    def _start_waiting(self) -> None:
        waiting = self._waiting
        while waiting and self._free:
            self._assign(waiting.popleft())

    def _emit(self, outgoing: _Outgoing, quantum: int) -> int:
        """Writes up to about ``quantum`` payload bytes of the exchange's queue."""
        queue = outgoing.queue
        limit = self._max_packet
        emitted = 0
        self._switch(outgoing.channel)
        while queue and emitted < quantum:
            kind, index, payload = queue[0]
            if kind == _STREAM_END:
                queue.popleft()
                self._out.append(TYPE_STREAM_END)
                outgoing.open_parts -= 1
                continue
            if kind == _FILE_END:
                queue.popleft()
                self._out += file_end_packet(index)
                outgoing.open_parts -= 1
                continue
            if len(payload) > limit:
                view = payload if isinstance(payload, memoryview) else memoryview(payload)
                part: Buffer = view[:limit]
                queue[0] = (kind, index, view[limit:])
            else:
                part = payload
                queue.popleft()
            size = len(part)
            if kind == _DATA:
                self._payload(sized_prefix(TYPE_DATA, size), part)
            elif kind == _STREAM:
                self._payload(sized_prefix(TYPE_STREAM, size), part)
            else:
                self._payload(file_packet_prefix(index, size), part)
            emitted += size
        outgoing.queued -= emitted
        self._queued -= emitted
        return emitted

    def _serve(self, budget: int) -> None:
        """One or more round-robin rounds over the exchanges with queued content."""
        ring = self._ring
        quantum = self._max_packet
        while ring and budget > 0:
            outgoing = ring.popleft()
            outgoing.in_ring = False
            budget -= self._emit(outgoing, quantum)
            self._after_emit(outgoing)
            budget -= 1  # an exchange with only End markers still costs a turn
            # A released channel goes to the next waiting exchange at once; it may join the ring.
            self._start_waiting()
