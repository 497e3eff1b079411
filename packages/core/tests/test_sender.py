"""The sending half: smallest field widths, channel reuse, API misuse, Go Away and Abort."""

from __future__ import annotations

from typing import Any

import pytest

from sockety.core import (
    Aborted,
    Connection,
    ConnectionOpened,
    FastReplyReceived,
    FileChunkReceived,
    FileEnded,
    FileHeader,
    GoAwayReceived,
    GoingAwayError,
    LocalProtocolError,
    MessageReceived,
    ResponseReceived,
    StreamChunkReceived,
    StreamEnded,
)
from sockety.core._encoding import (
    connection_header,
    fast_reply_packet,
    file_end_packet,
    file_packet_prefix,
    message_header_packet,
    sized_prefix,
    switch_packet,
)

ID = bytes(range(16))
ID2 = bytes(range(16, 32))
ID3 = bytes(range(32, 48))
U24 = 1 << 24
U32 = 1 << 32
U48 = 1 << 48


def ids(n: int) -> list[bytes]:
    return [n.to_bytes(2, "big") * 8 for n in range(n)]


def pair(
    a_kwargs: dict[str, Any] | None = None, b_kwargs: dict[str, Any] | None = None
) -> tuple[Connection, Connection]:
    """Two connections whose headers were exchanged; nothing left to send."""
    a, b = Connection(**(a_kwargs or {})), Connection(**(b_kwargs or {}))
    b.receive_data(a.bytes_to_send())
    a.receive_data(b.bytes_to_send())
    return a, b


def deliver(src: Connection, dst: Connection) -> list[Any]:
    return dst.receive_data(src.bytes_to_send())


# -- field widths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "aa", "width"),
    [
        (0, 0, 1),
        (255, 0, 1),
        (256, 1, 2),
        (65535, 1, 2),
        (65536, 2, 3),
        (U24 - 1, 2, 3),
        (U24, 3, 4),
        (U32 - 1, 3, 4),
    ],
)
def test_packet_size_uses_the_smallest_width(size: int, aa: int, width: int) -> None:
    for type_bits in (0x70, 0xE0, 0x60):
        prefix = sized_prefix(type_bits, size)
        assert prefix[0] == type_bits | aa << 2
        assert len(prefix) == 1 + width
        assert int.from_bytes(prefix[1:], "little") == size
    prefix = file_packet_prefix(0, size)
    assert prefix[0] == 0xC0 | aa << 2
    assert int.from_bytes(prefix[1:], "little") == size


@pytest.mark.parametrize("size", [1, 255, 256, 65535, 65536, 70000, U24 - 1, U24])
def test_stream_packet_sizes_round_trip(size: int) -> None:
    a, b = pair({"max_packet_size": U24})
    payload = bytes([size % 251]) * size
    a.send_message(ID, "s", stream=True)
    a.send_stream(ID, payload)
    a.end_stream(ID)
    wire = a.bytes_to_send()
    header = message_header_packet(ID, b"s", 0, (), True, False)
    assert wire[: len(header)] == header
    prefix = sized_prefix(0x70, size)
    assert wire[len(header) : len(header) + len(prefix)] == prefix  # one packet, smallest width
    assert wire.endswith(b"\x80")
    events = b.receive_data(wire)
    assert b"".join(e.chunk for e in events if type(e) is StreamChunkReceived) == payload
    assert events[-1] == StreamEnded(0, ID)
    assert a.idle and b.receiving == 0


def decode_header(packet: bytes, **limits: Any) -> Any:
    """Decodes a Message packet alone; returns its event, or the channel state if data is due."""
    conn = Connection(max_data_size=U48, max_files=70000, max_action_size=65535, **limits)
    events = conn.receive_data(b"\xe3" + packet)
    if len(events) == 2:
        return events[1]
    return conn._receiver._incoming[0]


@pytest.mark.parametrize(
    ("size", "dd", "width"),
    [
        (0, 0, 0),
        (1, 1, 1),
        (255, 1, 1),
        (256, 2, 2),
        (65535, 2, 2),
        (65536, 3, 6),
        (U24, 3, 6),
        (U32, 3, 6),
        (U48 - 1, 3, 6),
    ],
)
def test_data_size_field(size: int, dd: int, width: int) -> None:
    packet = message_header_packet(ID, b"a", size, (), False, False)
    body = packet[2:]
    assert body[0] >> 6 == dd
    assert len(body) == 1 + 16 + 2 + width
    assert int.from_bytes(body[19:], "little") == size
    decoded = decode_header(packet)
    if size:
        assert decoded.data_size == size
    else:
        assert decoded == MessageReceived(0, ID, "a", False, False, (), b"")


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
def test_data_round_trip(size: int) -> None:
    a, b = pair()
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    a.send_message(ID, "d", payload)
    events = deliver(a, b)
    assert events == [MessageReceived(0, ID, "d", False, False, (), payload)]


@pytest.mark.parametrize(
    ("count", "ee", "width"),
    [(1, 1, 1), (255, 1, 1), (256, 2, 2), (65535, 2, 2), (65536, 3, 3)],
)
def test_files_count_field(count: int, ee: int, width: int) -> None:
    files = [(b"", 0)] * count
    packet = message_header_packet(ID, b"", 0, files, False, False)
    body = packet[1 + (1, 2, 3, 4)[(packet[0] >> 2) & 3] :]
    assert (body[0] >> 4) & 3 == ee
    assert int.from_bytes(body[18 : 18 + width], "little") == count
    decoded = decode_header(packet)
    assert decoded.files == (FileHeader("", 0),) * count


@pytest.mark.parametrize(
    ("sizes", "ff", "width"),
    [
        ([65535], 0, 2),
        ([65535, 1], 1, 3),
        ([U24 - 1], 1, 3),
        ([U24 - 1, 1], 2, 4),
        ([U32 - 1], 2, 4),
        ([U32 - 1, 1], 3, 6),
        ([U48 - 1], 3, 6),
    ],
)
def test_total_files_size_field(sizes: list[int], ff: int, width: int) -> None:
    packet = message_header_packet(ID, b"", 0, [(b"f", s) for s in sizes], False, False)
    body = packet[1 + (1, 2, 3, 4)[(packet[0] >> 2) & 3] :]
    assert (body[0] >> 2) & 3 == ff
    assert int.from_bytes(body[19 : 19 + width], "little") == sum(sizes)
    decoded = decode_header(packet)
    assert decoded.files == tuple(FileHeader("f", s) for s in sizes)


@pytest.mark.parametrize(
    ("size", "aa", "width"),
    [
        (0, 0, 1),
        (255, 0, 1),
        (256, 1, 2),
        (65535, 1, 2),
        (65536, 2, 3),
        (U24 - 1, 2, 3),
        (U24, 3, 6),
        (U48 - 1, 3, 6),
    ],
)
def test_file_size_field(size: int, aa: int, width: int) -> None:
    packet = message_header_packet(ID, b"", 0, [(b"n", size)], False, False)
    body = packet[1 + (1, 2, 3, 4)[(packet[0] >> 2) & 3] :]
    total_width = (2, 3, 4, 6)[(body[0] >> 2) & 3]
    file_header = body[19 + total_width :]
    assert file_header[0] == aa << 2
    assert int.from_bytes(file_header[1 : 1 + width], "little") == size
    assert file_header[1 + width :] == b"\x01n"
    assert decode_header(packet).files == (FileHeader("n", size),)


@pytest.mark.parametrize(("length", "g"), [(0, 0), (255, 0), (256, 1), (65535, 1)])
def test_action_length_field(length: int, g: int) -> None:
    action = "é" * (length // 2) + "x" * (length % 2)
    packet = message_header_packet(ID, action.encode(), 0, (), False, False)
    body = packet[1 + (1, 2, 3, 4)[(packet[0] >> 2) & 3] :]
    assert (body[0] >> 1) & 1 == g
    assert int.from_bytes(body[17 : 18 + g], "little") == length
    assert decode_header(packet).action == action


@pytest.mark.parametrize(("length", "b"), [(0, 0), (255, 0), (256, 1), (65535, 1)])
def test_file_name_length_field(length: int, b: int) -> None:
    name = "€" * (length // 3) + "y" * (length % 3)
    packet = message_header_packet(ID, b"", 0, [(name.encode(), 7)], False, False)
    body = packet[1 + (1, 2, 3, 4)[(packet[0] >> 2) & 3] :]
    file_header = body[21:]
    assert file_header[0] == b << 1
    assert int.from_bytes(file_header[2 : 3 + b], "little") == length
    assert decode_header(packet).files == (FileHeader(name, 7),)


def test_fields_over_the_protocol_limits_are_refused() -> None:
    a, _ = pair()
    with pytest.raises(LocalProtocolError):
        message_header_packet(ID, b"", U48, (), False, False)
    with pytest.raises(LocalProtocolError):
        a.send_message(ID, "x" * 65536)
    with pytest.raises(LocalProtocolError):
        a.send_message(ID, "", files=[("n" * 65536, 0)])
    with pytest.raises(LocalProtocolError):
        a.send_message(ID, "", files=[("n", U48)])
    with pytest.raises(LocalProtocolError):
        a.send_message(ID, "", files=[("n", U48 // 2), ("m", U48 // 2)])  # total 2^48
    assert a.bytes_to_send() == b""
    assert a.idle


@pytest.mark.parametrize(
    ("channel", "wire"), [(0, b"\x00"), (15, b"\x0f"), (16, b"\x10\x10"), (4095, b"\x1f\xff")]
)
def test_switch_widths(channel: int, wire: bytes) -> None:
    assert switch_packet(channel) == wire


def test_all_4096_channels_in_use() -> None:
    a, b = pair()
    all_ids = ids(4096)
    for id in all_ids:
        a.send_message(id, "", stream=True)
    events = deliver(a, b)
    assert [e.channel for e in events] == list(range(4096))  # scanning up from the current one
    assert [e.id for e in events] == all_ids
    for id in reversed(all_ids):
        a.end_stream(id)
    wire = a.bytes_to_send()
    assert wire[:4] == b"\x80\x1f\xfe\x80"  # already on 4095: Stream End, Switch to 4094, ...
    assert b"\x10\x11\x80\x10\x10\x80\x0f\x80\x0e\x80" in wire  # long Switch up to 16 only
    assert wire.endswith(b"\x01\x80\x00\x80")
    events = b.receive_data(wire)
    assert [e.channel for e in events] == list(range(4095, -1, -1))
    assert a.idle and b.idle


@pytest.mark.parametrize(
    ("code", "wire"),
    [(0, b"\x30"), (15, b"\x3f"), (16, b"\x40\x10"), (255, b"\x40\xff"), (4095, b"\x4f\xff")],
)
def test_fast_reply_widths(code: int, wire: bytes) -> None:
    assert fast_reply_packet(ID, code) == wire + ID
    a, b = pair()
    a.send_fast_reply(ID, code)
    assert deliver(a, b) == [FastReplyReceived(ID, code)]


@pytest.mark.parametrize(
    ("channels", "wire"),
    [
        (1, b"\xe0"),
        (2, b"\xe1\x02"),
        (255, b"\xe1\xff"),
        (256, b"\xe2\x00\x01"),
        (257, b"\xe2\x01\x01"),
        (4095, b"\xe2\xff\x0f"),
        (4096, b"\xe3"),
    ],
)
def test_connection_header_widths(channels: int, wire: bytes) -> None:
    assert connection_header(channels) == wire
    a = Connection(channels=channels)
    assert a.bytes_to_send() == wire
    b = Connection(send_channels=300)
    assert b.receive_data(wire) == [ConnectionOpened(channels, min(300, channels))]
    assert b.send_channels == min(300, channels)


def test_file_index_widths_round_trip() -> None:
    count = 65537
    a, b = pair(b_kwargs={"max_files": count})
    interesting = {0: 0xC0, 1: 0xC1, 255: 0xC1, 256: 0xC2, 65535: 0xC2, 65536: 0xC3}
    a.send_message(ID, "", files=[("", 1 if i in interesting else 0) for i in range(count)])
    b.receive_data(a.bytes_to_send())
    assert file_packet_prefix(65536, 1) == b"\xc3\x01\x00\x00\x01"
    assert file_end_packet(65536) == b"\xd3\x00\x00\x01"
    assert file_end_packet((1 << 24) - 1) == b"\xd3\xff\xff\xff"
    events = []
    for index, first in interesting.items():
        a.send_file(ID, index, bytes([index & 0xFF]))
        wire = a.bytes_to_send()
        assert wire[0] == first
        assert wire[-1] == index & 0xFF
        events += b.receive_data(wire)
    for index in range(count):
        a.end_file(ID, index)
    assert a.sending == 0
    assert not a.idle  # its File Ends are not collected yet
    events += deliver(a, b)
    assert b.receiving == 0
    chunks = [e for e in events if type(e) is FileChunkReceived]
    assert [(e.file_index, e.chunk) for e in chunks] == [
        (i, bytes([i & 0xFF])) for i in interesting
    ]
    ends = [e.file_index for e in events if type(e) is FileEnded]
    assert ends == list(range(count))
    assert b.idle


# -- channel reuse -----------------------------------------------------------------------------


def test_sequential_messages_need_no_switch() -> None:
    a, b = pair()
    wires = []
    for id in ids(5):
        a.send_message(id, "seq", b"x")
        wires.append(a.bytes_to_send())
    for wire in wires:
        assert wire[0] == 0x20  # straight on with the Message packet
    events = b.receive_data(b"".join(wires))
    assert [e.channel for e in events] == [0] * 5


def test_concurrent_messages_scan_upward_from_the_current_channel() -> None:
    a, b = pair(b_kwargs={"channels": 4})
    m0, m1, m2, m3, m4 = ids(5)
    for id in (m0, m1, m2):
        a.send_message(id, "", stream=True)
    wire = a.bytes_to_send()
    header = message_header_packet(m0, b"", 0, (), True, False)
    assert wire[: len(header)] == header  # channel 0: no Switch
    assert wire[len(header)] == 0x01
    assert wire[-len(header) - 1] == 0x02
    assert [(e.channel, e.id) for e in b.receive_data(wire)] == [(0, m0), (1, m1), (2, m2)]
    # Free channel 0 (behind the current one) and go back to channel 2: a new message scans
    # upward from 2 and takes 3, not 0.
    a.end_stream(m0)
    a.send_stream(m2, b"!")
    a.send_message(m3, "", stream=True)
    wire = a.bytes_to_send()
    assert wire.startswith(b"\x00\x80\x02\x70\x01!\x03\x22")
    # All four busy but 0, current channel 3: the scan wraps around to 0.
    a.send_message(m4, "")
    assert a.bytes_to_send().startswith(b"\x00\x20")
    events = b.receive_data(wire)
    assert [type(e) for e in events] == [StreamEnded, StreamChunkReceived, MessageReceived]
    assert events[2].channel == 3


def test_a_freed_channel_goes_to_the_next_waiting_message() -> None:
    a, b = pair(b_kwargs={"channels": 2})
    m0, m1, m2, m3 = ids(4)
    for id in (m0, m1, m2, m3):
        a.send_message(id, "w", stream=True)
    deliver(a, b)
    assert a.sending == 4
    a.send_stream(m0, b"on 0")  # m2 and m3 wait; nothing of them is written
    assert a.bytes_to_send() == b"\x00\x70\x04on 0"
    a.send_stream(m1, b"on 1")
    assert a.bytes_to_send() == b"\x01\x70\x04on 1"
    a.end_stream(m1)
    wire = a.bytes_to_send()
    header = message_header_packet(m2, b"w", 0, (), True, False)
    assert wire == b"\x80" + header  # m2 starts on channel 1 right after, without a Switch
    a.end_stream(m0)
    wire = a.bytes_to_send()
    assert wire == b"\x00\x80" + message_header_packet(m3, b"w", 0, (), True, False)
    a.end_stream(m2)
    a.end_stream(m3)
    events = b.receive_data(wire + a.bytes_to_send())
    assert [(type(e), e.channel) for e in events] == [
        (StreamEnded, 0),
        (MessageReceived, 0),
        (StreamEnded, 1),
        (StreamEnded, 0),
    ]
    assert a.idle and b.idle


def test_messages_before_the_peer_header_wait() -> None:
    a, b = Connection(), Connection(channels=3)
    a.send_message(ID, "early", b"data")
    assert a.bytes_to_send() == b"\xe3"  # our header only
    assert a.sending == 1 and not a.opened
    a.send_fast_reply(ID2, 7)  # channel-free packets do not wait
    assert a.bytes_to_send() == fast_reply_packet(ID2, 7)
    b.receive_data(b"\xe3")
    assert a.receive_data(b.bytes_to_send()) == [ConnectionOpened(3, 3)]
    assert deliver(a, b) == [MessageReceived(0, ID, "early", False, False, (), b"data")]


def test_data_to_send_without_a_limit_produces_everything() -> None:
    # Regression: a channel released during the round-robin started the next waiting exchange
    # only after the last round, so its queued content stayed behind.
    a, b = pair({"max_packet_size": 3}, {"channels": 1})
    a.send_message(ID, "", stream=True)
    a.send_message(ID2, "", b"1234")
    a.send_message(ID3, "", files=[("f", 3)])
    a.send_file(ID3, 0, b"abc")
    a.end_file(ID3, 0)
    deliver(a, b)
    a.end_stream(ID)
    events = deliver(a, b)
    assert not a.has_queued
    assert a.idle
    assert [type(e) for e in events] == [
        StreamEnded,
        MessageReceived,
        MessageReceived,
        FileChunkReceived,
        FileEnded,
    ]
    assert b.receiving == 0


def test_idle_counts_bytes_not_yet_collected() -> None:
    # Regression: large payloads go to a separate buffer list that ``idle`` overlooked.
    a, b = pair()
    a.send_message(ID, "big", b"x" * 20000)
    assert a.sending == 0
    assert not a.idle
    assert len(deliver(a, b)[0].data) == 20000
    assert a.idle


# -- misuse ------------------------------------------------------------------------------------


def test_local_protocol_errors() -> None:
    a, _ = pair()
    a.send_message(ID, "m", files=[("f", 2), ("g", 0)])
    with pytest.raises(LocalProtocolError):
        a.send_stream(ID, b"x")  # no stream
    with pytest.raises(LocalProtocolError):
        a.end_stream(ID)
    with pytest.raises(LocalProtocolError):
        a.send_file(ID, 0, b"abc")  # over the declared size
    with pytest.raises(LocalProtocolError):
        a.send_file(ID, 2, b"")  # no file 2
    with pytest.raises(LocalProtocolError):
        a.send_file(ID, -1, b"")
    a.send_file(ID, 0, b"a")
    with pytest.raises(LocalProtocolError):
        a.end_file(ID, 0)  # short
    with pytest.raises(LocalProtocolError):
        a.send_file(ID, 0, b"bc")  # still over: 1 byte left
    with pytest.raises(LocalProtocolError):
        a.send_message(ID, "again")  # duplicate id while in progress
    with pytest.raises(LocalProtocolError):
        a.send_response(ID2, ID, b"")
    a.end_file(ID, 1)
    with pytest.raises(LocalProtocolError):
        a.end_file(ID, 1)  # already ended
    with pytest.raises(LocalProtocolError):
        a.send_file(ID, 1, b"")
    for bad_id in (ID2, b"short"):
        with pytest.raises(LocalProtocolError):
            a.send_stream(bad_id, b"x")
        with pytest.raises(LocalProtocolError):
            a.send_file(bad_id, 0, b"x")
        with pytest.raises(LocalProtocolError):
            a.end_file(bad_id, 0)
        with pytest.raises(LocalProtocolError):
            a.end_stream(bad_id)
    for code in (4096, -1, 1 << 20):
        with pytest.raises(LocalProtocolError):
            a.send_fast_reply(ID2, code)
    with pytest.raises(LocalProtocolError):
        a.send_fast_reply(b"short", 0)
    with pytest.raises(LocalProtocolError):
        a.send_message(b"short", "x")
    a.send_file(ID, 0, b"b")
    a.end_file(ID, 0)
    assert a.sending == 0
    a.send_message(ID, "again")  # the id is free once its exchange is complete
    assert not a.has_queued


def test_stream_misuse_after_end() -> None:
    a, b = pair()
    a.send_message(ID, "s", stream=True, files=[("f", 1)])
    a.send_stream(ID, b"")  # an empty chunk writes nothing
    a.end_stream(ID)
    with pytest.raises(LocalProtocolError):
        a.send_stream(ID, b"late")
    with pytest.raises(LocalProtocolError):
        a.end_stream(ID)
    a.send_file(ID, 0, b"z")
    a.end_file(ID, 0)
    events = deliver(a, b)
    assert [type(e) for e in events] == [MessageReceived, StreamEnded, FileChunkReceived, FileEnded]
    assert a.idle and b.idle


# -- Go Away -----------------------------------------------------------------------------------


def test_go_away_sent_blocks_new_messages_not_responses() -> None:
    a, b = pair()
    b.send_message(ID, "q", expects_response=True)
    (question,) = deliver(b, a)
    a.send_go_away()
    a.send_go_away()  # once only
    assert a.going_away
    with pytest.raises(GoingAwayError):
        a.send_message(ID2, "new")
    a.send_response(question.id, ID3, b"answer")
    assert deliver(a, b) == [
        GoAwayReceived(()),
        ResponseReceived(0, ID, ID3, False, False, (), b"answer"),
    ]
    assert b.going_away
    with pytest.raises(GoingAwayError):
        b.send_message(ID2, "new")
    b.send_fast_reply(ID3, 0)  # fast replies still go
    assert deliver(b, a) == [FastReplyReceived(ID3, 0)]
    assert a.idle and b.idle


def test_go_away_received_reports_unsent_messages() -> None:
    a, b = pair(b_kwargs={"channels": 1})
    m0, m1, m2 = ids(3)
    a.send_message(m0, "first", stream=True)
    a.send_message(m1, "queued", b"never sent")
    a.send_response(ID, ID2, b"reply")  # a queued response still goes
    a.send_message(m2, "queued too", files=[("f", 1)])
    a.send_file(m2, 0, b"x")
    deliver(a, b)
    assert a.queued_bytes == len("never sent") + len("reply") + 1
    b.send_go_away()
    events = deliver(b, a)
    assert events == [GoAwayReceived((m1, m2))]
    assert a.queued_bytes == len("reply")
    with pytest.raises(GoingAwayError):
        a.send_message(ID3, "after")
    with pytest.raises(LocalProtocolError):
        a.send_file(m2, 0, b"")  # forgotten
    a.send_stream(m0, b"in flight")  # what started finishes
    a.end_stream(m0)
    events = deliver(a, b)
    assert [type(e) for e in events] == [StreamChunkReceived, StreamEnded, ResponseReceived]
    assert all(e.id not in (m1, m2) for e in events)
    assert a.idle and b.idle


# -- Abort -------------------------------------------------------------------------------------


def test_abort_of_a_waiting_message_writes_nothing() -> None:
    a, b = pair(b_kwargs={"channels": 1})
    a.send_message(ID, "busy", stream=True)
    a.send_message(ID2, "waiting", b"data")
    deliver(a, b)
    assert a.queued_bytes == 4
    assert a.abort(ID2)
    assert a.bytes_to_send() == b""
    assert a.queued_bytes == 0
    assert not a.abort(ID2)
    with pytest.raises(LocalProtocolError):
        a.send_stream(ID2, b"")
    a.end_stream(ID)
    events = deliver(a, b)
    assert events == [StreamEnded(0, ID)]
    assert a.idle and b.idle


def test_abort_of_a_started_exchange_writes_switch_and_abort() -> None:
    a, b = pair()
    a.send_message(ID, "one", stream=True)
    a.send_message(ID2, "two", files=[("f", 10)])
    a.send_file(ID2, 0, b"12345")
    deliver(a, b)
    assert a.abort(ID)
    assert a.bytes_to_send() == b"\x00\x90"  # back to channel 0, Abort
    assert not a.abort(ID)
    a.send_message(ID3, "three")  # channel 0 is free again, and current: no Switch
    wire = a.bytes_to_send()
    assert wire == message_header_packet(ID3, b"three", 0, (), False, False)
    assert a.abort(ID2)
    assert a.bytes_to_send() == b"\x01\x90"
    events = b.receive_data(b"\x00\x90" + wire + b"\x01\x90")
    assert events == [
        Aborted(0, ID),
        MessageReceived(0, ID3, "three", False, False, (), b""),
        Aborted(1, ID2),
    ]
    assert a.idle and b.idle


def test_abort_drops_queued_content_and_returns_false_when_complete() -> None:
    a, b = pair({"max_packet_size": 1000})
    a.send_message(ID, "big", b"x" * 100_000)
    first = a.data_to_send(max_bytes=0)
    assert a.has_queued
    assert a.abort(ID)
    assert not a.has_queued
    assert a.queued_bytes == 0
    rest = a.bytes_to_send()
    assert rest.endswith(b"\x90")
    events = b.receive_data(b"".join(first) + rest)
    assert events == [Aborted(0, ID)]
    a.send_message(ID2, "small", b"y")
    assert not a.abort(ID2)  # already written completely
    assert deliver(a, b)[0].data == b"y"
    assert a.idle and b.idle


def test_the_packet_size_can_change_before_content_is_written() -> None:
    a, b = pair()
    assert a.max_packet_size == 128 * 1024
    a.set_max_packet_size(300)
    assert a.max_packet_size == 300
    a.send_message(ID, "big", bytes(range(250)) * 4)
    header = b"".join(a.data_to_send(max_bytes=0))
    first = b"".join(a.data_to_send(max_bytes=1))  # one quantum: one packet
    assert 300 < len(first) <= 304
    events = b.receive_data(header + first + a.bytes_to_send())
    assert [event.data for event in events] == [bytes(range(250)) * 4]
    for bad in (0, 16 * 1024 * 1024 + 1):
        with pytest.raises(ValueError, match="max_packet_size"):
            a.set_max_packet_size(bad)
    assert a.max_packet_size == 300
