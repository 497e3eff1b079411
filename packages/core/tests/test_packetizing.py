"""One encoder: every send path honours ``max_packet_size``, and the fast paths of
``send_message``/``send_response`` write exactly what the general encoder writes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sockety.core import (
    Connection,
    FileChunkReceived,
    FileEnded,
    LocalProtocolError,
    MessageReceived,
    PacketType,
    ResponseReceived,
    StreamChunkReceived,
    StreamEnded,
)
from sockety.core._encoding import (
    connection_header,
    file_packet_prefix,
    message_header_packet,
    response_header_packet,
    sized_prefix,
)

ID = bytes(range(16))
ID2 = bytes(range(16, 32))
DATA = PacketType.DATA << 4
STREAM = PacketType.STREAM << 4
STREAM_END = bytes((PacketType.STREAM_END << 4,))
PATTERN = bytes(range(253)) * 300  # distinct bytes, so that a misplaced slice shows


def opened(max_packet_size: int, peer_channels: int = 4096) -> Connection:
    """A connection whose peer announced ``peer_channels``; our own header already collected."""
    connection = Connection(max_packet_size=max_packet_size, max_action_size=65535)
    connection.receive_data(connection_header(peer_channels))
    connection.data_to_send()
    return connection


def split(type_bits: int, payload: bytes, limit: int) -> bytes:
    """``payload`` as the packets the protocol wants: at most ``limit`` bytes each."""
    return b"".join(
        sized_prefix(type_bits, len(payload[i : i + limit])) + payload[i : i + limit]
        for i in range(0, len(payload), limit)
    )


# -- max_packet_size on every send path ----------------------------------------------------------


@pytest.mark.parametrize("expects_response", [False, True])
@pytest.mark.parametrize("size", [65, 200, 255, 256, 1000])
def test_message_data_goes_out_in_packets_of_max_packet_size(
    size: int, expects_response: bool
) -> None:
    # 200 bytes with max_packet_size=64 once went out as one 200-byte packet.
    sender, receiver = opened(64), opened(4096)
    data = bytes(i % 251 for i in range(size))
    sender.send_message(ID, "m", data, expects_response=expects_response)
    wire = sender.bytes_to_send()
    header = message_header_packet(ID, b"m", size, (), False, expects_response)
    assert wire == header + split(DATA, data, 64)
    assert receiver.receive_data(wire) == [
        MessageReceived(0, ID, "m", expects_response, False, (), data)
    ]


@pytest.mark.parametrize("expects_response", [False, True])
@pytest.mark.parametrize("size", [65, 200, 255, 256, 1000])
def test_response_data_goes_out_in_packets_of_max_packet_size(
    size: int, expects_response: bool
) -> None:
    requester, responder = opened(4096), opened(64)
    requester.send_message(ID, "q", expects_response=True)
    responder.receive_data(requester.bytes_to_send())
    data = bytes(i % 251 for i in range(size))
    responder.send_response(ID, ID2, data, expects_response=expects_response)
    wire = responder.bytes_to_send()
    header = response_header_packet(ID, ID2, size, (), False, expects_response)
    assert wire == header + split(DATA, data, 64)
    assert requester.receive_data(wire) == [
        ResponseReceived(0, ID, ID2, expects_response, False, (), data)
    ]


def test_stream_and_file_content_goes_out_in_packets_of_max_packet_size() -> None:
    sender, receiver = opened(64), opened(4096)
    content = bytes(i % 251 for i in range(200))
    sender.send_message(ID, "s", stream=True, files=[("f", 200)])
    sender.send_stream(ID, content)
    sender.end_stream(ID)
    sender.send_file(ID, 0, content)
    sender.end_file(ID, 0)
    wire = sender.bytes_to_send()
    header = message_header_packet(ID, b"s", 0, [(b"f", 200)], True, False)
    file_packets = b"".join(
        file_packet_prefix(0, len(content[i : i + 64])) + content[i : i + 64]
        for i in range(0, 200, 64)
    )
    end_file = bytes((PacketType.FILE_END << 4,))
    assert wire == header + split(STREAM, content, 64) + STREAM_END + file_packets + end_file
    events = receiver.receive_data(wire)
    assert b"".join(e.chunk for e in events if type(e) is StreamChunkReceived) == content
    assert b"".join(e.chunk for e in events if type(e) is FileChunkReceived) == content
    assert StreamEnded(0, ID) in events
    assert FileEnded(0, ID, 0) in events


def test_a_smaller_packet_size_applies_to_the_next_small_message() -> None:
    # The hot path caches headers with their Data prefix: a cached one must not outlive a
    # change of the packet size.
    sender = opened(4096)
    data = bytes(100)
    sender.send_message(ID, "m", data)
    one_packet = sender.bytes_to_send()
    assert one_packet == message_header_packet(ID, b"m", 100, (), False, False) + split(
        DATA, data, 4096
    )
    sender.set_max_packet_size(30)
    sender.send_message(ID2, "m", data)
    wire = sender.bytes_to_send()
    assert wire == message_header_packet(ID2, b"m", 100, (), False, False) + split(DATA, data, 30)


# -- the fast paths write what the general encoder writes ----------------------------------------

sizes = st.one_of(
    st.integers(0, 300),
    st.sampled_from([255, 256, 1000, 65535, 65536, 70000]),
)
actions = st.one_of(
    st.text(max_size=6),
    st.binary(max_size=4),
    st.binary(min_size=255, max_size=300),  # the action length's uint16 width
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("message"), actions, sizes, st.booleans(), st.booleans()),
        st.tuples(st.just("response"), sizes, st.booleans(), st.booleans()),
        st.tuples(st.just("files"), actions, sizes, st.lists(st.integers(0, 300), max_size=2)),
        st.tuples(st.just("stream"), st.integers(0, 7), sizes),
        st.tuples(st.just("end"), st.integers(0, 7)),
        st.tuples(st.just("repeat_id"), st.integers(0, 7), sizes),
        st.tuples(st.just("drain"), st.one_of(st.none(), st.integers(0, 2000))),
        st.tuples(st.just("packet_size"), st.integers(1, 600)),
        st.tuples(st.just("go_away")),
    ),
    max_size=30,
)


def _apply(connection: Connection, general: bool, op: tuple[Any, ...], id: bytes) -> Any:
    """Performs one operation through the public calls (fast paths where they apply) or
    through the general encoder; returns what it produced, or the error it raised."""
    kind = op[0]
    try:
        if kind == "message":
            _, action, size, stream, expects_response = op
            data = PATTERN[:size]
            if general:
                connection._sender._general_message(id, action, data, (), stream, expects_response)
            else:
                connection.send_message(
                    id, action, data, stream=stream, expects_response=expects_response
                )
        elif kind in ("response", "repeat_id"):
            size = op[-1] if kind == "repeat_id" else op[1]
            stream, expects_response = (False, False) if kind == "repeat_id" else op[2:]
            data = PATTERN[:size]
            if general:
                connection._sender._general_response(ID, id, data, (), stream, expects_response)
            else:
                connection.send_response(
                    ID, id, data, stream=stream, expects_response=expects_response
                )
        elif kind == "files":
            _, action, size, file_sizes = op
            files = [(f"f{n}", file_size) for n, file_size in enumerate(file_sizes)]
            data = bytes(size)
            if general:
                connection._sender._general_message(id, action, data, files, False, False)
            else:
                connection.send_message(id, action, data, files=files)
            for index, file_size in enumerate(file_sizes):
                connection.send_file(id, index, bytes(file_size))
                connection.end_file(id, index)
        elif kind == "stream":
            connection.send_stream(id, bytes(op[2]))
        elif kind == "end":
            connection.end_stream(id)
        elif kind == "drain":
            return b"".join(connection.data_to_send(op[1]))
        elif kind == "packet_size":
            connection.set_max_packet_size(op[1])
        else:
            connection.send_go_away()
    except (LocalProtocolError, ValueError) as error:  # GoingAwayError is a LocalProtocolError
        return (type(error), str(error))
    return None


def _packets(max_packet_size: int, ops: list[tuple[Any, ...]]) -> int:
    """About how many content packets ``ops`` make (to keep each example quick)."""
    count = 0
    for op in ops:
        if op[0] == "packet_size":
            max_packet_size = op[1]
        elif op[0] in ("message", "response", "files", "stream", "repeat_id"):
            size = op[1] if op[0] == "response" else op[2]
            count += size // max_packet_size
    return count


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_packet_size=st.one_of(st.integers(1, 600), st.sampled_from([65536, 128 * 1024])),
    peer_channels=st.integers(1, 4),
    ops=operations,
)
def test_fast_paths_write_exactly_what_the_general_encoder_writes(
    max_packet_size: int, peer_channels: int, ops: list[tuple[Any, ...]]
) -> None:
    assume(_packets(max_packet_size, ops) < 5000)  # 1-byte packets of 70,000 bytes are slow
    fast, general = opened(max_packet_size, peer_channels), opened(max_packet_size, peer_channels)
    started: list[bytes] = []
    for number, op in enumerate(ops):
        if op[0] in ("stream", "end", "repeat_id"):
            # An earlier id (possibly finished, possibly still being sent), else a fresh one.
            id = started[op[1] % len(started)] if started else ID2
        else:
            id = number.to_bytes(2, "big") * 8
            started.append(id)
        assert _apply(fast, False, op, id) == _apply(general, True, op, id), op
        assert fast.queued_bytes == general.queued_bytes
        assert fast.sending == general.sending
        assert fast.output_size == general.output_size
    assert fast.bytes_to_send() == general.bytes_to_send()
    assert fast.sending == general.sending


def content_packet_sizes(wire: bytes) -> list[int]:
    """The payload sizes of the Data, Stream and File packets in ``wire`` (after the connection
    header), walking every packet by its type (PROTOCOL.md §3)."""
    sizes = []
    at = 0
    while at < len(wire):
        first = wire[at]
        kind = PacketType(first >> 4)
        if kind in (
            PacketType.SWITCH_CHANNEL_LOW,
            PacketType.STREAM_END,
            PacketType.ABORT,
            PacketType.HEARTBEAT,
            PacketType.GO_AWAY,
        ):
            at += 1
        elif kind is PacketType.SWITCH_CHANNEL_HIGH:
            at += 2
        elif kind is PacketType.FAST_REPLY_LOW:
            at += 17
        elif kind is PacketType.FAST_REPLY_HIGH:
            at += 18
        elif kind is PacketType.FILE_END:
            at += 1 + (first & 3)
        else:  # a size field follows: Message, Response, Continue, Stream, File, Data
            width = 1 + (first >> 2 & 3)
            size = int.from_bytes(wire[at + 1 : at + 1 + width], "little")
            index_width = first & 3 if kind is PacketType.FILE else 0
            at += 1 + width + index_width + size
            if kind in (PacketType.STREAM, PacketType.FILE, PacketType.DATA):
                sizes.append(size)
    assert at == len(wire), "the walk ended inside a packet"
    return sizes


@settings(max_examples=100, deadline=None)
@given(
    max_packet_size=st.integers(1, 600),
    messages=st.lists(
        st.tuples(
            st.integers(0, 3000),  # data
            st.lists(st.integers(0, 3000), max_size=3),  # stream chunks
            st.lists(st.integers(0, 3000), max_size=2),  # files
            st.booleans(),  # a response rather than a message
        ),
        min_size=1,
        max_size=8,
    ),
    budgets=st.lists(st.integers(1, 5000), max_size=5),
)
def test_no_content_packet_is_over_max_packet_size_and_everything_arrives(
    max_packet_size: int,
    messages: list[tuple[int, list[int], list[int], bool]],
    budgets: list[int],
) -> None:
    sender, receiver = opened(max_packet_size), opened(4096)  # (both announce 4096 channels)
    sent: dict[bytes, tuple[bytes, bytes, list[bytes]]] = {}
    for number, (size, chunks, file_sizes, is_response) in enumerate(messages):
        id = (number + 1).to_bytes(2, "big") * 8
        data = PATTERN[number : number + size]
        stream = [PATTERN[n : n + chunk] for n, chunk in enumerate(chunks)]
        files = [PATTERN[n + 1 : n + 1 + file_size] for n, file_size in enumerate(file_sizes)]
        names = [(f"f{n}", len(content)) for n, content in enumerate(files)]
        if is_response:
            sender.send_response(ID, id, data, files=names, stream=bool(chunks))
        else:
            sender.send_message(id, "m", data, files=names, stream=bool(chunks))
        for chunk in stream:
            sender.send_stream(id, chunk)
        if chunks:
            sender.end_stream(id)
        for index, content in enumerate(files):
            sender.send_file(id, index, content)
            sender.end_file(id, index)
        sent[id] = (data, b"".join(stream), files)
    wire = b"".join(b"".join(sender.data_to_send(budget)) for budget in budgets)
    wire += sender.bytes_to_send()
    assert all(1 <= size <= max_packet_size for size in content_packet_sizes(wire))
    got_data: dict[bytes, bytes] = {}
    got_stream: dict[bytes, bytes] = {}
    got_files: dict[tuple[bytes, int], bytes] = {}
    for event in receiver.receive_data(wire):
        if isinstance(event, MessageReceived | ResponseReceived):
            got_data[event.id] = bytes(event.data)
        elif isinstance(event, StreamChunkReceived):
            got_stream[event.id] = got_stream.get(event.id, b"") + bytes(event.chunk)
        elif isinstance(event, FileChunkReceived):
            key = (event.id, event.file_index)
            got_files[key] = got_files.get(key, b"") + bytes(event.chunk)
    for id, (data, streamed, files) in sent.items():
        assert got_data[id] == data
        assert got_stream.get(id, b"") == streamed
        for index, content in enumerate(files):
            assert got_files.get((id, index), b"") == content
