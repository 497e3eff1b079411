"""A hostile or broken peer: whatever bytes arrive, ``receive_data`` either decodes them or raises
``RemoteProtocolError`` (never anything else), keeps raising it afterwards, and keeps its memory
bounded. Then every violation of PROTOCOL.md Decision 4 crafted by hand, each with its kind."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockety.core import (
    COMPILED,
    Aborted,
    Connection,
    ConnectionOpened,
    FileChunkReceived,
    FileEnded,
    FileHeader,
    HeartbeatReceived,
    MessageReceived,
    ProtocolErrorKind,
    RemoteProtocolError,
    ResponseReceived,
    StreamChunkReceived,
    StreamEnded,
)
from sockety.core._budget import EXCHANGE_COST, UNEARNED
from sockety.core._encoding import (
    file_end_packet,
    file_packet_prefix,
    message_header_packet,
    response_header_packet,
    sized_prefix,
    switch_packet,
)

K = ProtocolErrorKind
ID = bytes(range(16))
ID2 = bytes(range(16, 32))
OPEN = b"\xe3"  # the peer receives on 4096 channels

SMALL_LIMITS: dict[str, Any] = {
    "max_header_size": 4096,
    "max_data_size": 1 << 20,
    "max_buffered_bytes": 4 << 20,
    "max_files": 64,
    "max_action_size": 300,
}


# -- hand-made packets -------------------------------------------------------------------------


def message(
    action: bytes = b"a",
    data_size: int = 0,
    files: tuple[tuple[bytes, int], ...] = (),
    *,
    stream: bool = False,
    id: bytes = ID,
) -> bytes:
    return message_header_packet(id, action, data_size, files, stream, False)


def response(data_size: int = 0, *, stream: bool = False) -> bytes:
    return response_header_packet(ID, ID2, data_size, (), stream, False)


def header_packet(type_bits: int, body: bytes) -> bytes:
    """A Message/Response packet around a hand-made header body."""
    return sized_prefix(type_bits, len(body)) + body


def header_body(packet: bytes) -> bytes:
    """The header body of a Message/Response packet (what follows its size field)."""
    return packet[1 + (1, 2, 3, 4)[(packet[0] >> 2) & 3] :]


def continue_packet(part: bytes) -> bytes:
    return sized_prefix(0x60, len(part)) + part


def data(payload: bytes) -> bytes:
    return sized_prefix(0xE0, len(payload)) + payload


def stream(payload: bytes) -> bytes:
    return sized_prefix(0x70, len(payload)) + payload


def file(index: int, payload: bytes) -> bytes:
    return file_packet_prefix(index, len(payload)) + payload


def one_file_header(file_header_byte: int, *, total: int = 1, name: bytes = b"f") -> bytes:
    """A Message packet with one file of size 1, its bytes written by hand."""
    body = (
        bytes((0x10,))  # EE = 01: uint8 files count; FF = 00: uint16 total size
        + ID
        + b"\x01a"
        + b"\x01"  # one file
        + total.to_bytes(2, "little")
        + bytes((file_header_byte, 1, len(name)))
        + name
    )
    return header_packet(0x20, body)


# -- feeding helpers ---------------------------------------------------------------------------


def feed(conn: Connection, chunks: list[bytes]) -> list[Any]:
    events: list[Any] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    return events


def check_hostile_feed(conn: Connection, chunks: list[bytes]) -> RemoteProtocolError | None:
    """Feeds chunks; only RemoteProtocolError may come out, and then for good."""
    bound = conn._receiver._max_header_size + 8
    error: RemoteProtocolError | None = None
    for chunk in chunks:
        try:
            conn.receive_data(chunk)
        except RemoteProtocolError as exc:
            if error is not None:
                assert exc is error  # later calls raise the same error
            error = exc
            assert isinstance(exc.kind, ProtocolErrorKind)
            assert conn.failed
        else:
            assert error is None, "receive_data went on after a protocol error"
        assert len(conn._receiver._pending) <= bound
    if error is not None:
        with pytest.raises(RemoteProtocolError) as again:
            conn.receive_data(b"\xa0")
        assert again.value is error
    conn.receive_eof()  # never raises either
    return error


def split_at(blob: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(blob) + 1) for cut in cuts})
    chunks, start = [], 0
    for point in [*points, len(blob)]:
        chunks.append(blob[start:point])
        start = point
    return chunks


# -- fuzzing -----------------------------------------------------------------------------------


@settings(max_examples=1500, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"\xe0", b"\xe3", b"\xe1\x05", b"\xe2\x00\x01"]),
    blob=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
    channels=st.sampled_from([1, 3, 16, 4096]),
)
def test_random_bytes_raise_only_remote_protocol_errors(
    prefix: bytes, blob: bytes, cuts: list[int], channels: int
) -> None:
    conn = Connection(channels=channels, **SMALL_LIMITS)
    check_hostile_feed(conn, split_at(prefix + blob, cuts))


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """The bytes a real sender writes for a few random exchanges."""
    receiver_kwargs = {**SMALL_LIMITS, "channels": draw(st.sampled_from([1, 2, 5, 300, 4096]))}
    peer = Connection(**receiver_kwargs)
    sender = Connection(max_packet_size=draw(st.sampled_from([3, 64, 1000])))
    sender.receive_data(peer.bytes_to_send())
    out = [sender.bytes_to_send()]
    open_ids: list[tuple[bytes, int, bool]] = []
    for n in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["message", "response", "fast", "heartbeat", "end"]))
        id = bytes([n + 1]) * 16
        if kind in ("message", "response"):
            payload = draw(st.binary(max_size=300))
            sizes = draw(st.lists(st.integers(0, 40), max_size=3))
            files = [(draw(st.text(max_size=5)), size) for size in sizes]
            has_stream = draw(st.booleans())
            if kind == "message":
                action = draw(st.text(max_size=20))
                sender.send_message(id, action, payload, files=files, stream=has_stream)
            else:
                sender.send_response(ID, id, payload, files=files, stream=has_stream)
            for index, size in enumerate(sizes):
                sender.send_file(id, index, bytes([index]) * size)
                sender.end_file(id, index)
            if has_stream:
                sender.send_stream(id, draw(st.binary(max_size=50)))
                open_ids.append((id, len(sizes), True))
        elif kind == "fast":
            sender.send_fast_reply(id, draw(st.integers(0, 4095)))
        elif kind == "heartbeat":
            sender.send_heartbeat()
        elif open_ids:
            sender.end_stream(open_ids.pop()[0])
        out.append(sender.bytes_to_send())
    for id, _, _ in open_ids:
        sender.end_stream(id)
    out.append(sender.bytes_to_send())
    return b"".join(out), receiver_kwargs


def test_valid_stream_strategy_is_valid() -> None:
    @settings(max_examples=30, deadline=None)
    @given(valid_streams())
    def check(case: tuple[bytes, dict[str, Any]]) -> None:
        blob, kwargs = case
        conn = Connection(**kwargs)
        assert isinstance(conn.receive_data(blob)[0], ConnectionOpened)
        assert conn.receive_eof()[0].clean

    check()


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "replace", "insert", "delete"]),
        st.integers(0, 1 << 16),
        st.integers(0, 255),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=4,
)


def mutate(blob: bytes, mutations: list[tuple[str, int, int, bytes]]) -> bytes:
    out = bytearray(blob)
    for how, where, value, extra in mutations:
        pos = where % (len(out) + 1)
        if how == "insert" or pos == len(out):
            out[pos:pos] = extra
        elif how == "flip":
            out[pos] ^= 1 << (value & 7)
        elif how == "replace":
            out[pos] = value
        else:
            del out[pos : pos + 1 + value % 8]
    return bytes(out)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=valid_streams(), mutations=MUTATIONS, cuts=st.lists(st.integers(0, 5000), max_size=5))
def test_mutated_valid_streams_raise_only_remote_protocol_errors(
    case: tuple[bytes, dict[str, Any]],
    mutations: list[tuple[str, int, int, bytes]],
    cuts: list[int],
) -> None:
    blob, kwargs = case
    check_hostile_feed(Connection(**kwargs), split_at(mutate(blob, mutations), cuts))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=valid_streams(), keep=st.integers(0, 1 << 16), cuts=st.lists(st.integers(0, 5000)))
def test_truncated_valid_streams_decode_without_error(
    case: tuple[bytes, dict[str, Any]], keep: int, cuts: list[int]
) -> None:
    blob, kwargs = case
    blob = blob[: keep % (len(blob) + 1)]
    conn = Connection(**kwargs)
    assert check_hostile_feed(conn, split_at(blob, cuts)) is None
    # What is missing now still decodes once it arrives.
    rest = case[0][len(blob) :]
    feed(conn, [rest])
    assert conn.receive_eof()[0].clean


def test_receive_nothing_before_the_peer_header() -> None:
    # Regression: an empty read before the connection header raised IndexError.
    conn = Connection()
    assert conn.receive_data(b"") == []
    assert conn.receive_data(bytearray()) == []
    assert conn.receive_data(b"\xe1") == []
    assert conn.receive_data(b"") == []
    assert conn.receive_data(b"\x07") == [ConnectionOpened(7, 7)]
    assert conn.receive_data(b"") == []


# -- memory ------------------------------------------------------------------------------------

MIB = 1 << 20


def traced_peak(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        action()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_an_endless_stream_packet_keeps_memory_flat() -> None:
    conn = Connection()
    conn.receive_data(OPEN + message(stream=True) + b"\x7c\xff\xff\xff\xff")  # 4 GiB Stream
    block = os.urandom(64 * 1024)
    seen = [0]

    def run() -> None:
        for _ in range(50 * MIB // len(block)):
            for event in conn.receive_data(block):
                seen[0] += len(event.chunk)
            assert len(conn._receiver._pending) == 0

    assert traced_peak(run) < 1 * MIB
    assert seen[0] == 50 * MIB
    assert not conn.failed


def test_fifty_megabytes_of_small_packets_keep_memory_flat() -> None:
    sender, conn = Connection(), Connection(max_header_size=1024)
    sender.receive_data(conn.bytes_to_send())
    pattern = [sender.bytes_to_send()]
    conn.receive_data(pattern.pop())
    for n in range(40):
        id = bytes([n]) * 16
        sender.send_message(id, "x" * n, os.urandom(n * 37), files=[("f", n)], stream=True)
        sender.send_heartbeat()
        sender.send_file(id, 0, b"z" * n)
        sender.send_fast_reply(id, n * 97)
        sender.end_file(id, 0)
        sender.send_stream(id, b"s" * (n + 1))
        sender.end_stream(id)
        pattern.append(sender.bytes_to_send())
    block = b"".join(pattern)  # packet-aligned, leaves every channel idle: it can repeat
    blob = block * (50 * MIB // len(block))
    counts = [0]

    def run() -> None:
        step = 7919  # a prime, so chunk edges fall everywhere in the packets
        for start in range(0, len(blob), step):
            counts[0] += len(conn.receive_data(blob[start : start + step]))
            assert len(conn._receiver._pending) <= 1024 + 8

    peak = traced_peak(run)
    assert peak < 4 * MIB, peak
    assert counts[0] > 100_000
    assert conn.receive_eof()[0].clean


@pytest.mark.parametrize(
    ("name", "kwargs", "packet"),
    [
        ("data 2^48-1", {}, message(data_size=(1 << 48) - 1)),
        ("data 2^48-1, huge limit", {"max_data_size": 1 << 48}, message(data_size=(1 << 48) - 1)),
        (
            "2^24-1 files",
            {"max_files": 1 << 30},
            header_packet(0x20, b"\x30" + ID + b"\x01a" + b"\xff\xff\xff" + b"\x00\x00"),
        ),
        (
            "2^24-1 files, default limit",
            {},
            header_packet(0x20, b"\x30" + ID + b"\x01a\xff\xff\xff"),
        ),
        ("header size 2^32-1", {}, b"\x2c\xff\xff\xff\xff"),
        ("response header 2^32-1", {}, b"\x5c\xff\xff\xff\xff"),
    ],
)
def test_huge_declarations_are_refused_before_allocating(
    name: str, kwargs: dict[str, Any], packet: bytes
) -> None:
    conn = Connection(**kwargs)
    conn.receive_data(OPEN)
    errors: list[RemoteProtocolError] = []

    def run() -> None:
        try:
            conn.receive_data(packet + data(b"x"))
        except RemoteProtocolError as error:
            errors.append(error)

    if name == "data 2^48-1, huge limit":
        # The declared size passes max_data_size, but data is allocated as it arrives, within
        # twice what the peer sent plus UNEARNED: the declaration itself costs nothing.
        assert traced_peak(run) < UNEARNED + 64 * 1024
        assert not errors
        assert conn.held_bytes <= 2 * conn.received_bytes + UNEARNED + EXCHANGE_COST
        return
    if name == "2^24-1 files":
        # Over the limit the header is refused at once; here the header is merely incomplete,
        # and it must not have allocated anything for the announced files.
        assert traced_peak(run) < MIB
        assert errors and errors[0].kind is K.UNEXPECTED_PACKET
        return
    assert traced_peak(run) < MIB
    assert errors and errors[0].kind is K.LIMIT_EXCEEDED


# -- Decision 4 violations, one by one ---------------------------------------------------------

M_STREAM = message(stream=True)
M_FILE1 = message(files=((b"f", 1),))

VIOLATIONS: list[tuple[str, dict[str, Any], bytes, bytes, ProtocolErrorKind]] = [
    *[
        (f"unknown packet {b:#04x}", {}, OPEN, bytes((b, 0, 0)), K.UNKNOWN_PACKET)
        for b in range(0xF0, 0x100)
    ],
    ("switch low over limit", {"channels": 4}, OPEN + b"\x03", b"\x04", K.CHANNEL_OUT_OF_RANGE),
    ("switch low, one channel", {"channels": 1}, OPEN + b"\x00", b"\x01", K.CHANNEL_OUT_OF_RANGE),
    ("switch high 16 of 16", {"channels": 16}, OPEN + b"\x0f", b"\x10\x10", K.CHANNEL_OUT_OF_RANGE),
    (
        "switch high over limit",
        {"channels": 300},
        OPEN + b"\x11\x2b",  # 299 is fine
        b"\x11\x2c",
        K.CHANNEL_OUT_OF_RANGE,
    ),
    (
        "switch 4095 of 4095",
        {"channels": 4095},
        OPEN + b"\x1f\xfe",
        b"\x1f\xff",
        K.CHANNEL_OUT_OF_RANGE,
    ),
    ("data beyond declared", {}, OPEN + message(data_size=3), data(b"abcd"), K.DATA_OVERFLOW),
    (
        "second data packet beyond declared",
        {},
        OPEN + message(data_size=3) + data(b"ab"),
        data(b"cd"),
        K.DATA_OVERFLOW,
    ),
    ("data without declared data", {}, OPEN + M_STREAM, data(b"x"), K.DATA_OVERFLOW),
    ("message on busy channel", {}, OPEN + M_STREAM, message(id=ID2), K.CHANNEL_BUSY),
    (
        "message on channel awaiting data",
        {},
        OPEN + message(data_size=5) + data(b"ab"),
        message(id=ID2),
        K.CHANNEL_BUSY,
    ),
    ("response on busy channel", {}, OPEN + M_FILE1, response(), K.CHANNEL_BUSY),
    (
        "message on busy channel 77",
        {},
        OPEN + b"\x10\x4d" + M_STREAM + b"\x00" + M_STREAM + b"\x10\x4d",
        message(id=ID2),
        K.CHANNEL_BUSY,
    ),
    (
        "stream bytes after stream end",
        {},
        OPEN + message(files=((b"f", 1),), stream=True) + stream(b"x") + b"\x80",
        stream(b"y"),
        K.STREAM_CLOSED,
    ),
    (
        "second stream end",
        {},
        OPEN + message(files=((b"f", 1),), stream=True) + b"\x80",
        b"\x80",
        K.STREAM_CLOSED,
    ),
    (
        "stream bytes after the exchange ended",
        {},
        OPEN + M_STREAM + b"\x80",
        stream(b"y"),
        K.UNEXPECTED_PACKET,
    ),
    ("stream on message without stream", {}, OPEN + M_FILE1, stream(b"x"), K.STREAM_CLOSED),
    ("stream end without stream", {}, OPEN + M_FILE1, b"\x80", K.STREAM_CLOSED),
    ("file index out of range", {}, OPEN + M_FILE1, file(1, b"x"), K.FILE_INDEX_OUT_OF_RANGE),
    (
        "file end index out of range",
        {},
        OPEN + M_FILE1,
        file_end_packet(2),
        K.FILE_INDEX_OUT_OF_RANGE,
    ),
    (
        "file index 2^24-1",
        {},
        OPEN + M_FILE1,
        file((1 << 24) - 1, b"x"),
        K.FILE_INDEX_OUT_OF_RANGE,
    ),
    (
        "file on message without files",
        {},
        OPEN + M_STREAM,
        file(0, b"x"),
        K.FILE_INDEX_OUT_OF_RANGE,
    ),
    (
        "file end short",
        {},
        OPEN + message(files=((b"f", 5),)) + file(0, b"abc"),
        b"\xd0",
        K.FILE_SIZE_MISMATCH,
    ),
    (
        "file bytes over declared",
        {},
        OPEN + message(files=((b"f", 2),)),
        file(0, b"abc"),
        K.FILE_SIZE_MISMATCH,
    ),
    (
        "file bytes after file end",
        {},
        OPEN + message(files=((b"f", 0), (b"g", 1))) + b"\xd0",
        file(0, b"x"),
        K.FILE_SIZE_MISMATCH,
    ),
    (
        "second file end",
        {},
        OPEN + message(files=((b"f", 0), (b"g", 1))) + b"\xd0",
        b"\xd0",
        K.FILE_SIZE_MISMATCH,
    ),
    *[
        (f"bad header byte {b:#04x}", {}, OPEN + M_FILE1, bytes((b, 1, 0, 0)), K.BAD_HEADER_BYTE)
        for b in (
            *(0x81, 0x84, 0x8F, 0x91, 0x98, 0xA1, 0xAF, 0xB1, 0xBC),  # one-byte packets
            *(0x61, 0x62, 0x63, 0x71, 0x72, 0x77, 0xE1, 0xE2, 0xEF),  # Continue, Stream, Data
            *(0xD4, 0xD8, 0xDC, 0xDF),  # File End
        )
    ],
    (
        "reserved flag bit 0",
        {},
        OPEN,
        header_packet(0x20, b"\x01" + ID + b"\x01a"),
        K.BAD_HEADER,
    ),
    ("response with action bit", {}, OPEN, header_packet(0x50, b"\x02" + ID + ID2), K.BAD_HEADER),
    *[
        (f"file header byte {b:#04x}", {}, OPEN, one_file_header(b), K.BAD_HEADER)
        for b in (0x01, 0x10, 0x20, 0x40, 0x80, 0xF0)
    ],
    *[
        (f"connection header {b:#04x}", {}, b"", bytes((b, 0, 0)), K.BAD_CONNECTION_HEADER)
        for b in (0x00, 0x20, 0xA0, 0xE4, 0xE8, 0xEC, 0xE7, 0xF0, 0xFF)
    ],
    ("E2 with 0 channels", {}, b"", b"\xe2\x00\x00", K.BAD_CONNECTION_HEADER),
    ("E2 with 4097 channels", {}, b"", b"\xe2\x01\x10", K.BAD_CONNECTION_HEADER),
    (
        "E2 with 5000 channels",
        {},
        b"",
        b"\xe2" + (5000).to_bytes(2, "little"),
        K.BAD_CONNECTION_HEADER,
    ),
    (
        "action over max_action_size",
        {"max_action_size": 10},
        OPEN + message(b"0123456789"),
        message(b"0123456789a", id=ID2),
        K.LIMIT_EXCEEDED,
    ),
    (
        "data size 2^48-1 over max_data_size",
        {},
        OPEN + message(data_size=64 << 20) + b"\x90",
        message(data_size=(1 << 48) - 1),
        K.LIMIT_EXCEEDED,
    ),
    (
        "files count 2^24-1 over max_files",
        {},
        OPEN,
        header_packet(0x20, b"\x30" + ID + b"\x01a\xff\xff\xff"),
        K.LIMIT_EXCEEDED,
    ),
    (
        "files over max_files",
        {"max_files": 2},
        OPEN + message(files=((b"a", 0), (b"b", 0))) + b"\xd0\xd1\x01",
        message(files=((b"a", 0), (b"b", 0), (b"c", 0))),
        K.LIMIT_EXCEEDED,
    ),
    (
        "header over max_header_size",
        {"max_header_size": 100},
        OPEN + message(b"x" * 80),
        message(b"x" * 90),
        K.LIMIT_EXCEEDED,
    ),
    ("declared header size 2^32-1", {}, OPEN, b"\x2c\xff\xff\xff\xff", K.LIMIT_EXCEEDED),
    (
        "continue over max_header_size",
        {"max_header_size": 40},
        OPEN + header_packet(0x20, header_body(message(b"x" * 30))[:20]),
        continue_packet(b"x" * 21),
        K.LIMIT_EXCEEDED,
    ),
    (
        "data over max_buffered_bytes",
        # Room for one exchange's bookkeeping and 10 bytes of data.
        {"max_buffered_bytes": EXCHANGE_COST + 10},
        OPEN + message(data_size=10) + data(b"12345") + data(b"67890"),
        message(data_size=11) + data(b"123456") + data(b"78901"),
        K.LIMIT_EXCEEDED,
    ),
    ("continue on idle channel", {}, OPEN, continue_packet(b"\x00"), K.UNEXPECTED_PACKET),
    (
        "continue after header complete",
        {},
        OPEN + M_STREAM,
        continue_packet(b"\x00"),
        K.UNEXPECTED_PACKET,
    ),
    ("invalid UTF-8 in action", {}, OPEN, message(b"ok\xff"), K.BAD_HEADER),
    ("truncated UTF-8 in action", {}, OPEN, message(b"\xc3"), K.BAD_HEADER),
    ("invalid UTF-8 in file name", {}, OPEN, message(files=((b"\xe2\x82", 0),)), K.BAD_HEADER),
    ("surrogate in file name", {}, OPEN, message(files=((b"\xed\xa0\x80", 0),)), K.BAD_HEADER),
    ("total files size too big", {}, OPEN, one_file_header(0x00, total=2), K.BAD_HEADER),
    ("total files size too small", {}, OPEN, one_file_header(0x00, total=0), K.BAD_HEADER),
    (
        "bytes after the end of a header",
        {},
        OPEN,
        header_packet(0x20, header_body(message(b"abc")) + b"\x00"),
        K.BAD_HEADER,
    ),
    (
        "bytes after the end of a response header",
        {},
        OPEN,
        header_packet(0x50, header_body(response()) + b"\x00"),
        K.BAD_HEADER,
    ),
    (
        "stream before data complete",
        {},
        OPEN + message(data_size=2, stream=True) + data(b"a"),
        stream(b"x"),
        K.UNEXPECTED_PACKET,
    ),
    (
        "file before data complete",
        {},
        OPEN + message(data_size=2, files=((b"f", 1),)),
        file(0, b"x"),
        K.UNEXPECTED_PACKET,
    ),
    (
        "file end before data complete",
        {},
        OPEN + message(data_size=2, files=((b"f", 0),)),
        b"\xd0",
        K.UNEXPECTED_PACKET,
    ),
    ("data on idle channel", {}, OPEN + message() + b"\x01", data(b"x"), K.UNEXPECTED_PACKET),
    ("abort on idle channel", {}, OPEN + message(), b"\x90", K.UNEXPECTED_PACKET),
    ("stream end on idle channel", {}, OPEN, b"\x80", K.UNEXPECTED_PACKET),
    ("file end on idle channel", {}, OPEN, b"\xd0", K.UNEXPECTED_PACKET),
    (
        "data while the header is incomplete",
        {},
        OPEN + header_packet(0x20, header_body(message(data_size=1))[:5]),
        data(b"x"),
        K.UNEXPECTED_PACKET,
    ),
    (
        "stream while the header is incomplete",
        {},
        OPEN + header_packet(0x22, b""),
        stream(b"x"),
        K.UNEXPECTED_PACKET,
    ),
]


@pytest.mark.parametrize("split", ["whole", "bytewise"])
@pytest.mark.parametrize(
    ("kwargs", "prefix", "bad", "kind"),
    [pytest.param(*case[1:], id=case[0]) for case in VIOLATIONS],
)
def test_protocol_violation(
    kwargs: dict[str, Any], prefix: bytes, bad: bytes, kind: ProtocolErrorKind, split: str
) -> None:
    conn = Connection(**kwargs)
    # Everything up to the bad packet is fine...
    if split == "whole":
        feed(conn, [prefix])
    else:
        feed(conn, [prefix[i : i + 1] for i in range(len(prefix))])
    assert not conn.failed
    # ...and the bad packet fails the connection with the right kind, for good.
    with pytest.raises(RemoteProtocolError) as raised:
        if split == "whole":
            conn.receive_data(bad)
        else:
            feed(conn, [bad[i : i + 1] for i in range(len(bad))])
    error = raised.value
    assert error.kind is kind, str(error)
    assert kind.value in str(error)
    assert conn.failed
    for later in (b"", b"\xa0", prefix):
        with pytest.raises(RemoteProtocolError) as again:
            conn.receive_data(later)
        assert again.value is error
    assert conn.receive_eof()[0].clean is False


def test_channel_limit_allows_the_last_channel() -> None:
    for channels, switch in ((2, b"\x01"), (16, b"\x0f"), (17, b"\x10\x10"), (4096, b"\x1f\xff")):
        conn = Connection(channels=channels)
        events = conn.receive_data(OPEN + switch + message(data_size=1) + data(b"x"))
        assert [type(e) for e in events] == [ConnectionOpened, MessageReceived]
        assert events[1].channel == channels - 1


def test_error_carries_the_events_decoded_before_it() -> None:
    conn = Connection()
    with pytest.raises(RemoteProtocolError) as raised:
        conn.receive_data(OPEN + b"\xa0" + message(data_size=2) + data(b"hi") + b"\x02\xf5\xa0")
    error = raised.value
    assert error.kind is K.UNKNOWN_PACKET
    assert error.events == [
        ConnectionOpened(4096, 4096),
        HeartbeatReceived(),
        MessageReceived(0, ID, "a", False, False, (), b"hi"),
    ]
    # Split: only the events of the failing call are attached.
    conn = Connection()
    assert len(conn.receive_data(OPEN + b"\xa0")) == 2
    with pytest.raises(RemoteProtocolError) as raised:
        conn.receive_data(b"\xa0" + M_STREAM + message(id=ID2))
    assert raised.value.kind is K.CHANNEL_BUSY
    assert raised.value.channel == 0
    assert raised.value.events == [
        HeartbeatReceived(),
        MessageReceived(0, ID, "a", False, True, (), b""),
    ]


def test_connection_header_split_and_followed_by_packets() -> None:
    conn = Connection()
    assert conn.receive_data(b"\xe2") == []
    assert conn.receive_data(b"\x00") == []
    events = conn.receive_data(b"\x01\xa0")
    assert events == [ConnectionOpened(256, 256), HeartbeatReceived()]
    conn = Connection(send_channels=10)
    assert conn.receive_data(b"\xe1\x00") == [ConnectionOpened(256, 10)]  # Decision 5


# -- Continue ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    first=st.integers(0, 400),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    action=st.text(max_size=60),
    names=st.lists(st.text(max_size=10), max_size=4),
    payload=st.binary(max_size=40),
    is_response=st.booleans(),
    bytewise=st.booleans(),
)
def test_header_split_over_continue_packets(
    *,
    first: int,
    cuts: list[int],
    action: str,
    names: list[str],
    payload: bytes,
    is_response: bool,
    bytewise: bool,
) -> None:
    files = tuple((name.encode(), n) for n, name in enumerate(names))
    if is_response:
        packet = response_header_packet(ID, ID2, len(payload), files, False, True)
    else:
        packet = message_header_packet(ID, action.encode(), len(payload), files, False, True)
    body = header_body(packet)
    first %= len(body) + 1
    parts = split_at(body[first:], cuts)
    wire = header_packet(packet[0] & 0xF3, body[:first])
    wire += b"".join(continue_packet(part) for part in parts if part)
    wire += b"\xa0" + (data(payload) if payload else b"")
    for index, (_, size) in enumerate(files):
        wire += file(index, bytes([index]) * size) + file_end_packet(index)
    conn = Connection()
    conn.bytes_to_send()
    chunks = [wire[i : i + 1] for i in range(len(wire))] if bytewise else [wire]
    events = feed(conn, [OPEN, *chunks])
    headers = [FileHeader(name, n) for n, name in enumerate(names)]
    if is_response:
        expected: Any = ResponseReceived(0, ID, ID2, True, False, tuple(headers), payload)
    else:
        expected = MessageReceived(0, ID, action, True, False, tuple(headers), payload)
    announced = [e for e in events if type(e) in (MessageReceived, ResponseReceived)]
    assert announced == [expected]
    assert HeartbeatReceived() in events
    for index, (_, size) in enumerate(files):
        chunks_in = b"".join(
            e.chunk for e in events if type(e) is FileChunkReceived and e.file_index == index
        )
        assert chunks_in == bytes([index]) * size
        assert FileEnded(0, ID2 if is_response else ID, index) in events
    assert conn.receiving == 0


def test_continue_with_wide_size_fields() -> None:
    body = header_body(message(b"q" * 300, data_size=1))
    conn = Connection()
    wire = OPEN + header_packet(0x20, body[:3])
    wire += b"\x64" + (200).to_bytes(2, "little") + body[3:203]  # Continue, uint16 size
    wire += b"\x68" + (len(body) - 203).to_bytes(3, "little") + body[203:]  # uint24 size
    events = conn.receive_data(wire + data(b"!"))
    assert events[1] == MessageReceived(0, ID, "q" * 300, False, False, (), b"!")


def test_abort_of_an_incomplete_header_frees_the_channel_silently() -> None:
    conn = Connection()
    body = header_body(message(b"abc"))
    events = conn.receive_data(OPEN + header_packet(0x20, body[:10]) + b"\x90")
    assert events == [ConnectionOpened(4096, 4096)]  # no Aborted: the id is not known yet
    assert conn.receiving == 0
    events = conn.receive_data(message(id=ID2, stream=True) + b"\x90")
    assert events == [MessageReceived(0, ID2, "a", False, True, (), b""), Aborted(0, ID2)]
    assert conn.receiving == 0


@pytest.mark.skipif(
    COMPILED,
    reason="counts calls by replacing a method, which compiled classes refuse; "
    "tox's core-pure environment runs it",
)
def test_a_header_trickling_in_is_not_reparsed_for_every_byte() -> None:
    # Regression: each Continue re-parsed the whole header, so a 200 KB header sent one byte per
    # Continue packet took minutes of CPU (quadratic).
    files = tuple((b"n" * 200, n) for n in range(300))
    body = header_body(message(b"act", 0, files))
    wire = bytearray(OPEN + b"\x20\x00")
    for i in range(len(body)):
        wire += b"\x60\x01" + body[i : i + 1]
    conn = Connection()
    calls = [0]
    parse = conn._receiver._parse_header

    def counting(*args: Any) -> int:
        calls[0] += 1
        return parse(*args)

    conn._receiver._parse_header = counting  # type: ignore[method-assign]
    events = conn.receive_data(bytes(wire))
    assert len(events[1].files) == 300
    assert events[1].files[-1] == FileHeader("n" * 200, 299)
    assert calls[0] <= 4 * len(files) + 10, calls[0]


def test_stream_and_file_chunks_keep_their_order_and_channel() -> None:
    conn = Connection()
    wire = OPEN + b"\x05" + message(files=((b"f", 4),), stream=True)
    wire += b"\x06" + message(id=ID2, stream=True)
    wire += b"\x05" + stream(b"ab") + file(0, b"12") + b"\x06" + stream(b"zz") + b"\x80"
    wire += b"\x05" + file(0, b"34") + b"\xd0" + stream(b"c") + b"\x80"
    events = conn.receive_data(wire)[1:]
    assert events == [
        MessageReceived(5, ID, "a", False, True, (FileHeader("f", 4),), b""),
        MessageReceived(6, ID2, "a", False, True, (), b""),
        StreamChunkReceived(5, ID, b"ab"),
        FileChunkReceived(5, ID, 0, b"12"),
        StreamChunkReceived(6, ID2, b"zz"),
        StreamEnded(6, ID2),
        FileChunkReceived(5, ID, 0, b"34"),
        FileEnded(5, ID, 0),
        StreamChunkReceived(5, ID, b"c"),
        StreamEnded(5, ID),
    ]
    assert conn.receiving == 0


def test_partial_headers_on_every_channel_count_against_max_buffered_bytes() -> None:
    """A peer could keep an unfinished header (Message packet, Continue to come) on each of
    4096 channels; those bytes are limited like data being assembled."""
    connection = Connection(max_buffered_bytes=64 * 1024)
    connection.receive_data(b"\xe3")
    # flags, id, an action length of 255, and only 100 of those bytes: Continue must follow
    partial = b"\x20" + bytes([118]) + b"\x00" + bytes(16) + b"\xff" + b"a" * 100
    wire = b"".join(switch_packet(channel) + partial for channel in range(1, 4096))
    with pytest.raises(RemoteProtocolError) as error:
        connection.receive_data(wire)
    assert error.value.kind == ProtocolErrorKind.LIMIT_EXCEEDED
    assert "max_buffered_bytes" in str(error.value)
