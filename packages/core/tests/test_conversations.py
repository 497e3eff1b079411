"""Two connections joined in memory, driven by Hypothesis through random conversations.

Everything sent must arrive intact, exactly once, in order per exchange and per channel; aborted
exchanges end with ``Aborted`` (if their header went out) and nothing after; both sides end idle.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from sockety.core import (
    Aborted,
    Connection,
    ConnectionOpened,
    FastReplyReceived,
    FileChunkReceived,
    FileEnded,
    FileHeader,
    HeartbeatReceived,
    MessageReceived,
    ResponseReceived,
    StreamChunkReceived,
    StreamEnded,
)

MIB = 1 << 20
CHANNEL_COUNTS = st.one_of(
    st.sampled_from([1, 2, 3, 4, 5, 8, 16, 255, 256, 257, 4095, 4096]),
    st.integers(1, 4096),
)
BOUNDARY_SIZES = [0, 1, 255, 256, 65535, 65536, 70000]
SMALL_SIZES = st.one_of(st.integers(0, 300), st.integers(0, 300), st.sampled_from(BOUNDARY_SIZES))
LARGE_SIZES = st.one_of(st.sampled_from([3 * MIB, *BOUNDARY_SIZES]), st.integers(0, 300))
OPS = [
    *["message"] * 3,
    *["response"] * 2,
    *["file"] * 3,
    *["stream"] * 2,
    *["end", "fast", "abort", "heartbeat", "pump", "pump", "partial pump"],
]


# -- bookkeeping -------------------------------------------------------------------------------


@dataclass
class Sent:
    """What one side sent (or was asked to send) for one exchange."""

    id: bytes
    is_message: bool
    action: str
    parent_id: bytes
    data: bytes
    names: list[str]
    contents: list[bytes]  # the whole declared content of each file
    expects_response: bool
    has_stream: bool
    file_given: list[int] = field(default_factory=list)  # bytes handed to send_file so far
    file_ended: list[bool] = field(default_factory=list)
    stream: bytearray = field(default_factory=bytearray)  # stream bytes handed over so far
    stream_ended: bool = False
    #: None: not aborted; True: aborted after its header went out; False: aborted while waiting.
    aborted: bool | None = None

    @property
    def user_done(self) -> bool:
        return all(self.file_ended) and (self.stream_ended or not self.has_stream)


@dataclass
class Got:
    """What the other side received of one exchange."""

    channel: int
    files: list[bytearray]
    file_ended: list[bool]
    stream: bytearray = field(default_factory=bytearray)
    stream_ended: bool = False
    aborted: bool = False
    finished: bool = False


class Side:
    def __init__(self, tag: int, conn: Connection, channels: int, max_packet: int) -> None:
        self.tag = tag
        self.conn = conn
        self.channels = channels
        self.send_limit = conn._sender._send_limit
        self.max_packet = max_packet
        self.counter = 0
        self.sent: dict[bytes, Sent] = {}
        self.start_order: list[bytes] = []
        self.open: list[bytes] = []  # exchanges whose files or stream the user did not finish
        self.fast_sent: list[tuple[bytes, int]] = []
        self.heartbeats_sent = 0
        # Receiving end:
        self.opened = 0
        self.got: dict[bytes, Got] = {}
        self.aborted_ids: set[bytes] = set()
        self.header_order: list[bytes] = []
        self.active: dict[int, bytes] = {}  # channel -> exchange in progress on it
        self.answerable: list[bytes] = []
        self.fast_got: list[tuple[bytes, int]] = []
        self.heartbeats_got = 0

    def new_id(self) -> bytes:
        self.counter += 1
        return bytes((self.tag,)) + self.counter.to_bytes(15, "big")


def absorb(side: Side, peer: Side, events: list[Any]) -> None:
    """Checks events ``side`` received from ``peer`` against what ``peer`` sent."""
    for event in events:
        kind = type(event)
        if kind is ConnectionOpened:
            assert side.opened == 0
            side.opened = 1
            assert event.peer_channels == peer.channels
            assert event.send_channels == min(side.send_limit, peer.channels)
        elif kind is MessageReceived or kind is ResponseReceived:
            sent = peer.sent[event.id]
            assert event.id not in side.got and event.id not in side.aborted_ids  # exactly once
            assert sent.aborted is not False  # never written
            assert (kind is MessageReceived) == sent.is_message
            if sent.is_message:
                assert event.action == sent.action
            else:
                assert event.parent_id == sent.parent_id
            assert event.expects_response == sent.expects_response
            assert event.has_stream == sent.has_stream
            assert event.files == tuple(
                FileHeader(name, len(content))
                for name, content in zip(sent.names, sent.contents, strict=True)
            )
            assert bytes(event.data) == sent.data
            assert 0 <= event.channel < side.channels
            assert side.active.get(event.channel) is None, "two exchanges at once on a channel"
            got = Got(
                event.channel, [bytearray() for _ in sent.contents], [False] * len(sent.names)
            )
            side.got[event.id] = got
            side.header_order.append(event.id)
            side.answerable.append(event.id)
            side.active[event.channel] = event.id
            maybe_finished(side, event.id, got, sent)
        elif kind is StreamChunkReceived or kind is StreamEnded:
            got, sent = in_progress(side, peer, event)
            assert sent.has_stream and not got.stream_ended
            if kind is StreamChunkReceived:
                assert event.chunk
                got.stream += event.chunk
                assert sent.stream.startswith(got.stream)
            else:
                assert sent.stream_ended and got.stream == sent.stream
                got.stream_ended = True
                maybe_finished(side, event.id, got, sent)
        elif kind is FileChunkReceived or kind is FileEnded:
            got, sent = in_progress(side, peer, event)
            index = event.file_index
            assert 0 <= index < len(sent.contents) and not got.file_ended[index]
            if kind is FileChunkReceived:
                assert event.chunk
                got.files[index] += event.chunk
                assert sent.contents[index][: sent.file_given[index]].startswith(got.files[index])
            else:
                assert sent.file_ended[index] and got.files[index] == sent.contents[index]
                got.file_ended[index] = True
                maybe_finished(side, event.id, got, sent)
        elif kind is Aborted:
            sent = peer.sent[event.id]
            assert sent.aborted is True
            assert event.id not in side.aborted_ids
            side.aborted_ids.add(event.id)
            got_or_none = side.got.get(event.id)
            if got_or_none is not None:
                assert got_or_none.channel == event.channel and not got_or_none.finished
                got_or_none.aborted = True
                assert side.active.get(event.channel) == event.id
            else:  # its header came, its data did not complete
                assert side.active.get(event.channel) is None
            side.active.pop(event.channel, None)
        elif kind is FastReplyReceived:
            side.fast_got.append((event.id, event.code))
        elif kind is HeartbeatReceived:
            side.heartbeats_got += 1
        else:
            raise AssertionError(f"unexpected event {event!r}")


def in_progress(side: Side, peer: Side, event: Any) -> tuple[Got, Sent]:
    got = side.got[event.id]  # content never comes before its header and data
    assert not got.aborted and not got.finished, "content after the exchange ended"
    assert got.channel == event.channel
    assert side.active.get(event.channel) == event.id
    return got, peer.sent[event.id]


def maybe_finished(side: Side, id: bytes, got: Got, sent: Sent) -> None:
    if all(got.file_ended) and (got.stream_ended or not sent.has_stream):
        got.finished = True
        del side.active[got.channel]


# -- driving -----------------------------------------------------------------------------------


class Run:
    """One conversation: two sides, the randomness for bytes and cut points, and the pump."""

    def __init__(self, data: st.DataObject, sizes: st.SearchStrategy[int]) -> None:
        self.data = data
        self.sizes = sizes
        self.rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
        self.sides = []
        for tag in (0xA, 0xB):
            channels = data.draw(CHANNEL_COUNTS, label="channels")
            send_limit = data.draw(CHANNEL_COUNTS, label="send_channels")
            packet = data.draw(st.sampled_from([64 * 1024, 64 * 1024, 1000, 61]), label="packet")
            if sizes is LARGE_SIZES:
                packet = 64 * 1024
            conn = Connection(channels=channels, send_channels=send_limit, max_packet_size=packet)
            self.sides.append(Side(tag, conn, channels, packet))
        self.max_bytes = data.draw(st.sampled_from([None, None, 1, 100, 64 * 1024]), label="max")
        self.cut_mode = data.draw(
            st.sampled_from(["whole", "few", "many", "in place"]), label="cuts"
        )

    def content(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def pump_once(self, src: Side, dst: Side, max_bytes: int | None) -> int:
        blob = b"".join(src.conn.data_to_send(max_bytes))
        if not blob:
            return 0
        if self.cut_mode == "in place":
            absorb(dst, src, self.read_in_place(dst.conn, blob))
            return len(blob)
        for piece in self.cut(blob):
            absorb(dst, src, dst.conn.receive_data(piece))
        return len(blob)

    def read_in_place(self, conn: Connection, blob: bytes) -> list[Any]:
        """Delivers ``blob`` as the asyncio layer may: message data written straight into the
        view ``payload_buffer`` gives, everything else through ``receive_data``; each piece of
        a random size."""
        events: list[Any] = []
        pos = 0
        while pos < len(blob):
            view = conn.payload_buffer()
            if view is None:
                end = self.rng.randint(pos + 1, len(blob))
                events += conn.receive_data(blob[pos:end])
                pos = end
                continue
            size = min(len(view), len(blob) - pos, self.rng.randint(1, len(view)))
            view[:size] = blob[pos : pos + size]
            pos += size
            events += conn.payload_received(size)
        return events

    def cut(self, blob: bytes) -> list[bytes]:
        if self.cut_mode == "whole":
            return [blob]
        count = self.rng.randint(1, 4) if self.cut_mode == "few" else min(len(blob), 200)
        points = sorted({self.rng.randint(0, len(blob)) for _ in range(count)})
        if self.cut_mode == "many" and len(blob) < 200:
            points = list(range(len(blob)))  # byte by byte
        pieces, start = [], 0
        for point in [*points, len(blob)]:
            pieces.append(blob[start:point])
            start = point
        return pieces

    def pump_all(self) -> None:
        a, b = self.sides
        while True:
            moved = self.pump_once(a, b, self.max_bytes) + self.pump_once(b, a, self.max_bytes)
            if not moved and not a.conn.has_queued and not b.conn.has_queued:
                return

    # -- actions ---------------------------------------------------------------------------

    def start(self, side: Side, parent: bytes | None) -> None:
        draw = self.data.draw
        id = side.new_id()
        action = draw(st.text(max_size=80), label="action") if parent is None else ""
        data = self.content(draw(self.sizes, label="data size"))
        file_count = draw(st.one_of(st.integers(0, 3), st.integers(0, 20)), label="files")
        names = [draw(st.text(max_size=12), label="name") for _ in range(file_count)]
        # At most two files of any size, the others small (keeps large examples bounded).
        contents = [
            self.content(draw(self.sizes if n < 2 else SMALL_SIZES, label="file size"))
            for n in range(file_count)
        ]
        has_stream = draw(st.booleans(), label="stream")
        expects = draw(st.booleans(), label="expects response")
        sent = Sent(
            id,
            parent is None,
            action,
            parent or b"",
            data,
            names,
            contents,
            expects,
            has_stream,
            [0] * file_count,
            [False] * file_count,
        )
        side.sent[id] = sent
        side.start_order.append(id)
        files = [(name, len(content)) for name, content in zip(names, contents, strict=True)]
        if parent is None:
            side.conn.send_message(
                id, action, data, files=files, stream=has_stream, expects_response=expects
            )
        else:
            side.conn.send_response(
                parent, id, data, files=files, stream=has_stream, expects_response=expects
            )
        if not sent.user_done:
            side.open.append(id)
        outgoing = side.conn._sender._outgoing.get(id)
        if outgoing is not None and outgoing.channel < 0 and side.conn.opened:
            note("an exchange waited for a channel")
        if parent is not None:
            note("a response was sent")

    def file_step(self, side: Side) -> None:
        candidates = [id for id in side.open if not all(side.sent[id].file_ended)]
        if not candidates:
            return
        sent = side.sent[self.data.draw(st.sampled_from(candidates), label="file of")]
        index = self.data.draw(
            st.sampled_from([i for i, ended in enumerate(sent.file_ended) if not ended])
        )
        left = len(sent.contents[index]) - sent.file_given[index]
        if left == 0:
            side.conn.end_file(sent.id, index)
            sent.file_ended[index] = True
        else:
            n = self.data.draw(st.integers(1, left), label="file chunk")
            start = sent.file_given[index]
            side.conn.send_file(sent.id, index, sent.contents[index][start : start + n])
            sent.file_given[index] += n
        if sent.user_done:
            side.open.remove(sent.id)

    def stream_step(self, side: Side, end: bool) -> None:
        candidates = [id for id in side.open if side.sent[id].has_stream]
        candidates = [id for id in candidates if not side.sent[id].stream_ended]
        if not candidates:
            return
        sent = side.sent[self.data.draw(st.sampled_from(candidates), label="stream of")]
        if end:
            side.conn.end_stream(sent.id)
            sent.stream_ended = True
            if sent.user_done:
                side.open.remove(sent.id)
        else:
            chunk = self.content(self.data.draw(self.sizes, label="stream chunk"))
            side.conn.send_stream(sent.id, chunk)
            sent.stream += chunk

    def abort_step(self, side: Side) -> None:
        candidates = [id for id, sent in side.sent.items() if sent.aborted is None]
        if not candidates:
            return
        id = self.data.draw(st.sampled_from(candidates), label="abort")
        outgoing = side.conn._sender._outgoing.get(id)
        done = side.conn.abort(id)
        assert done == (outgoing is not None)
        if outgoing is None:  # completely written already: nothing to abort
            assert side.sent[id].user_done
            return
        side.sent[id].aborted = outgoing.channel >= 0
        note("aborted after its header" if outgoing.channel >= 0 else "aborted while waiting")
        if id in side.open:
            side.open.remove(id)

    def finish(self, side: Side) -> None:
        for id in list(side.open):
            sent = side.sent[id]
            for index, ended in enumerate(sent.file_ended):
                if not ended:
                    side.conn.send_file(id, index, sent.contents[index][sent.file_given[index] :])
                    sent.file_given[index] = len(sent.contents[index])
                    side.conn.end_file(id, index)
                    sent.file_ended[index] = True
            if sent.has_stream and not sent.stream_ended:
                side.conn.end_stream(id)
                sent.stream_ended = True
            side.open.remove(id)

    def play(self, steps: int) -> None:
        ops = st.sampled_from(OPS)
        for _ in range(steps):
            side_index = self.data.draw(st.integers(0, 1), label="side")
            side, other = self.sides[side_index], self.sides[1 - side_index]
            op = self.data.draw(ops, label="op")
            if op == "message":
                self.start(side, None)
            elif op == "response" and side.answerable:
                self.start(side, self.data.draw(st.sampled_from(side.answerable)))
            elif op == "file":
                self.file_step(side)
            elif op in ("stream", "end"):
                self.stream_step(side, op == "end")
            elif op == "fast":
                target = side.answerable or [bytes(16)]
                id = self.data.draw(st.sampled_from(target), label="fast reply to")
                code = self.data.draw(st.integers(0, 4095), label="code")
                side.conn.send_fast_reply(id, code)
                side.fast_sent.append((id, code))
            elif op == "abort":
                self.abort_step(side)
            elif op == "heartbeat":
                side.conn.send_heartbeat()
                side.heartbeats_sent += 1
            elif op == "pump":
                self.pump_all()
            elif op == "partial pump":
                budget = self.data.draw(st.sampled_from([0, 1, 500, 64 * 1024]), label="budget")
                self.pump_once(side, other, budget)
        for side in self.sides:
            self.finish(side)
        self.pump_all()
        self.check()

    def check(self) -> None:
        largest = max(
            (
                max(len(sent.data), len(sent.stream), *map(len, sent.contents))
                for side in self.sides
                for sent in side.sent.values()
            ),
            default=0,
        )
        size_class = "3 MiB" if largest >= 3 * MIB else "64 KiB" if largest >= 65536 else "small"
        note(f"largest transfer: {size_class}")
        note(f"cut mode {self.cut_mode}")
        for side, peer in ((self.sides[0], self.sides[1]), (self.sides[1], self.sides[0])):
            assert side.opened == 1
            for id, sent in peer.sent.items():
                if sent.aborted is False:
                    assert id not in side.got and id not in side.aborted_ids
                elif sent.aborted:
                    assert id in side.aborted_ids, "aborted after its header, but no Aborted"
                else:
                    got = side.got[id]
                    assert got.finished and not got.aborted
                    assert [bytes(f) for f in got.files] == sent.contents
                    assert got.stream == sent.stream
            # Exchanges whose header and data went out together arrive in the order started.
            limit = peer.max_packet
            expected = [
                id
                for id in peer.start_order
                if peer.sent[id].aborted is None and len(peer.sent[id].data) <= limit
            ]
            wanted = set(expected)
            assert [id for id in side.header_order if id in wanted] == expected
            assert side.fast_got == peer.fast_sent
            assert side.heartbeats_got == peer.heartbeats_sent
            assert not side.active
            assert side.conn.idle, "not idle at the end"
            assert not side.conn.has_queued and side.conn.queued_bytes == 0
            assert side.conn.sending == 0 and side.conn.receiving == 0


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), steps=st.integers(0, 40))
def test_random_conversations(data: st.DataObject, steps: int) -> None:
    Run(data, SMALL_SIZES).play(steps)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), steps=st.integers(1, 10))
def test_random_conversations_with_large_transfers(data: st.DataObject, steps: int) -> None:
    Run(data, LARGE_SIZES).play(steps)


# -- examples ----------------------------------------------------------------------------------


def pair(
    a_kwargs: dict[str, Any] | None = None, b_kwargs: dict[str, Any] | None = None
) -> tuple[Connection, Connection]:
    a, b = Connection(**(a_kwargs or {})), Connection(**(b_kwargs or {}))
    b.receive_data(a.bytes_to_send())
    a.receive_data(b.bytes_to_send())
    return a, b


def test_a_thousand_messages_through_sixteen_channels() -> None:
    a, b = pair(b_kwargs={"channels": 16})
    assert a.send_channels == 16
    ids = [n.to_bytes(16, "big") for n in range(1000)]
    for n, id in enumerate(ids):
        a.send_message(id, f"m{n}", n.to_bytes(2, "big"), stream=True)
    assert a.sending == 1000
    received: list[Any] = []
    busy: set[int] = set()
    ended = 0
    while ended < 1000:
        for event in b.receive_data(a.bytes_to_send()):
            received.append(event)
            if type(event) is MessageReceived:
                assert event.channel not in busy
                busy.add(event.channel)
            elif type(event) is StreamChunkReceived:
                assert event.chunk == b"s" and event.channel in busy
            else:
                assert type(event) is StreamEnded
                busy.remove(event.channel)
        assert len(busy) <= 16
        # End the oldest open streams, a few at a time: waiting messages take the freed channels.
        started = [e.id for e in received if type(e) is MessageReceived]
        for id in started[ended : ended + 3]:
            a.send_stream(id, b"s")
            a.end_stream(id)
        ended = min(len(started), ended + 3)
    for event in b.receive_data(a.bytes_to_send()):
        received.append(event)
    messages = [e for e in received if type(e) is MessageReceived]
    assert [e.id for e in messages] == ids  # all of them, once each, in order
    assert [e.action for e in messages] == [f"m{n}" for n in range(1000)]
    assert [bytes(e.data) for e in messages] == [n.to_bytes(2, "big") for n in range(1000)]
    assert {e.channel for e in messages} == set(range(16))
    assert sum(1 for e in received if type(e) is StreamEnded) == 1000
    assert a.idle and b.idle


def test_a_thousand_plain_messages_queued_before_the_peer_header() -> None:
    a, b = Connection(), Connection(channels=16)
    for n in range(1000):
        a.send_message(n.to_bytes(16, "big"), "x", b"y" * (n % 300))
    b.receive_data(a.bytes_to_send())
    a.receive_data(b.bytes_to_send())
    events = b.receive_data(a.bytes_to_send())
    assert [e.id for e in events] == [n.to_bytes(16, "big") for n in range(1000)]
    assert [len(e.data) for e in events] == [n % 300 for n in range(1000)]
    assert a.idle and b.idle


def test_a_big_transfer_does_not_hold_back_small_messages() -> None:
    a, b = pair({"max_packet_size": 64 * 1024})
    big, small, late = bytes([1]) * 16, bytes([2]) * 16, bytes([3]) * 16
    payload = random.Random(7).randbytes(8 * MIB)
    a.send_message(big, "big", payload)
    a.send_message(small, "small", b"hello")
    order: list[tuple[int, bytes]] = []
    rounds = 0
    while a.has_queued or rounds == 0:
        rounds += 1
        chunks = a.data_to_send(max_bytes=64 * 1024)
        assert sum(len(c) for c in chunks) <= 3 * 64 * 1024  # bounded bites
        for event in b.receive_data(b"".join(chunks)):
            order.append((rounds, event.id))
        if rounds == 10:
            a.send_message(late, "late", b"!", files=[("f", 1)])
            a.send_file(late, 0, b"f")
            a.end_file(late, 0)
    order += [(rounds + 1, e.id) for e in b.receive_data(a.bytes_to_send())]
    when = {id: n for n, id in order if id in (big, small, late)}
    assert when[small] == 1
    assert when[late] <= 11  # started while the big transfer was under way, not after it
    assert when[big] > 100  # 8 MiB in 64 KiB bites
    assert [id for _, id in order if id == big] == [big]
    assert a.idle and b.idle


def test_big_stream_and_file_interleave_with_other_channels() -> None:
    a, b = pair({"max_packet_size": 64 * 1024})
    s, f, q = bytes([4]) * 16, bytes([5]) * 16, bytes([6]) * 16
    a.send_message(s, "stream", stream=True)
    a.send_message(f, "file", files=[("big", 4 * MIB)])
    blob = random.Random(8).randbytes(4 * MIB)
    a.send_stream(s, blob)
    a.send_file(f, 0, blob)
    a.end_file(f, 0)
    a.end_stream(s)
    a.send_message(q, "quick")
    first = b.receive_data(b"".join(a.data_to_send(max_bytes=64 * 1024)))
    assert MessageReceived(2, q, "quick", False, False, (), b"") in first
    events = first + b.receive_data(a.bytes_to_send())
    assert b"".join(e.chunk for e in events if type(e) is StreamChunkReceived) == blob
    assert b"".join(e.chunk for e in events if type(e) is FileChunkReceived) == blob
    kinds = [type(e) for e in events if type(e) in (StreamChunkReceived, FileChunkReceived)]
    switches = sum(1 for x, y in itertools.pairwise(kinds) if x is not y)
    assert switches > 50  # round-robin: the two transfers alternate
    assert a.idle and b.idle


def test_message_data_written_in_place_packet_by_packet() -> None:
    a, b = pair({"max_packet_size": 1000})
    payload = random.Random(3).randbytes(5000)
    a.send_message(bytes(16), "big", payload)
    a.send_message(bytes([1]) * 16, "next", b"small")
    blob = a.bytes_to_send()
    events: list[Any] = []
    pos = 0
    sizes: list[int] = []
    while pos < len(blob):
        view = b.payload_buffer()
        if view is None:  # headers, a byte at a time
            events += b.receive_data(blob[pos : pos + 1])
            pos += 1
            continue
        sizes.append(len(view))
        with pytest.raises(ValueError):
            b.payload_received(len(view) + 1)
        view[:] = blob[pos : pos + len(view)]  # the rest of this packet's payload
        pos += len(view)
        events += b.payload_received(len(view))
    # A view per Data packet, each exactly its payload: the small message's data went out
    # between the big one's first and second packets.
    assert sizes == [1000, 5, 1000, 1000, 1000, 1000], sizes
    small, big = events  # the small one was complete first
    assert type(big) is MessageReceived and bytes(big.data) == payload
    assert type(small) is MessageReceived and small.action == "next" and small.data == b"small"
    assert b.payload_buffer() is None
    with pytest.raises(ValueError):
        b.payload_received(1)
    assert a.idle and b.idle
