"""Large transfers: 64 MiB up and down through streams, checked by sha256, with memory
measured; how reads are split and copied."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import tracemalloc
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest

from sockety.client import (
    Connection,
    Draft,
    FastReply,
    FileTransfer,
    Message,
    Response,
    ResponseDraft,
    Router,
    connect,
)
from sockety.core.aio import Connection as AioConnection
from sockety.core.aio import loop_factory

from .conftest import HOST, Net

T = TypeVar("T")
C = TypeVar("C", bound=AioConnection)

MIB = 1024 * 1024
TOTAL = 64 * MIB
CHUNK = 256 * 1024


def pattern(index: int) -> bytes:
    return index.to_bytes(4, "little") * (CHUNK // 4)


async def hashed(chunks: AsyncIterable[bytes], digest: Any = None) -> Any:
    """``digest`` (a new sha256 if None) updated with every chunk."""
    digest = digest or hashlib.sha256()
    async for chunk in chunks:
        digest.update(chunk)
    return digest


def expected_digest() -> str:
    digest = hashlib.sha256()
    for index in range(TOTAL // CHUNK):
        digest.update(pattern(index))
    return digest.hexdigest()


def test_64_mib_up_and_down_with_bounded_memory(net: Net) -> None:
    router = Router()
    stream_reply = ResponseDraft(data="msgpack", stream=True)

    @router.action("mirror")
    async def mirror(message: Message) -> None:
        # Hash the upload as it arrives, then stream 64 MiB back.
        assert message.stream is not None
        digest = await hashed(message.stream)
        reply = message.respond(stream_reply(digest.hexdigest()))
        assert reply.stream is not None
        for index in range(TOTAL // CHUNK):
            await reply.stream.send(pattern(index))
        reply.stream.end()

    async def main() -> tuple[str, str, int]:
        async with net.pair(router) as (server, client):
            tracemalloc.start()
            try:
                request = client.request(Draft("mirror", stream=True)())
                assert request.stream is not None
                for index in range(TOTAL // CHUNK):
                    await request.stream.send(pattern(index))
                request.stream.end()
                reply = await request.response(timeout=60)
                assert isinstance(reply, Response) and reply.stream is not None
                down = await hashed(reply.stream)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            return reply.msgpack(), down.hexdigest(), peak

    up, down, peak = net.run(main(), timeout=120)
    assert up == down == expected_digest()
    # Both peers run in this process: 128 MiB moved, while the Python heap (of both, and of
    # the transports' buffers) stayed within a small bound.
    assert peak < 24 * MIB, f"peak {peak / MIB:.1f} MiB"
    print(f"peak traced memory during 2 x 64 MiB: {peak / MIB:.1f} MiB")


class _Recorder(AioConnection):
    """A server-side connection that records how it reads and writes: the size of every
    buffer it hands the transport, the bytes that go through the parser (which copies them
    twice), and the size of every write made while the transport's buffer was empty (a
    ``send()`` of its own)."""

    def __init__(self, handler: Router) -> None:
        super().__init__(handler)
        self.buffer_sizes: list[int] = []
        self.sends: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_send_recorder(cast(asyncio.Transport, transport), self.sends))

    def get_buffer(self, sizehint: int) -> memoryview:
        view = super().get_buffer(sizehint)
        self.buffer_sizes.append(len(view))
        return view

    @property
    def copied(self) -> int:
        return self.parsed_bytes


class _SendRecorder:
    def __init__(self, transport: Any, sends: list[int]) -> None:
        self._transport = transport
        self._sends = sends

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes | memoryview) -> None:
        if not self._transport.get_write_buffer_size():
            self._sends.append(len(data))
        self._transport.write(data)

    def writelines(self, chunks: list[bytes | memoryview]) -> None:
        if not self._transport.get_write_buffer_size():
            self._sends.append(sum(map(len, chunks)))
        self._transport.writelines(chunks)


class _JoiningSendRecorder(_SendRecorder):
    # As the transport it records: one whose writelines() joins the chunks (asyncio's before
    # 3.12), which the connection does better by itself (see Output.attach).
    writelines = asyncio.WriteTransport.writelines  # type: ignore[assignment]


def _send_recorder(transport: asyncio.Transport, sends: list[int]) -> Any:
    """Records ``transport``'s sends, with its kind of writelines() (see Output.attach)."""
    joins = type(transport).writelines is asyncio.WriteTransport.writelines
    return (_JoiningSendRecorder if joins else _SendRecorder)(transport, sends)


def _served(
    make: Callable[[], C],
    loop: str,
    talk: Callable[[Connection], Awaitable[T]],
    **client_options: Any,
) -> tuple[T, C]:
    """Serves one connection made by ``make``, lets a client (connected with
    ``client_options``) ``talk`` to it; returns what the talk returned and that connection."""
    made: list[C] = []

    def accept() -> C:
        made.append(make())
        return made[-1]

    async def main() -> T:
        server = await asyncio.get_running_loop().create_server(accept, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server, connect(HOST, port, **client_options) as client:
            return await talk(client)

    with asyncio.Runner(loop_factory=loop_factory(loop == "uvloop")) as runner:
        result = runner.run(asyncio.wait_for(main(), 60))
    (connection,) = made
    return result, connection


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_message_data_is_copied_once_packet_after_packet(loop: str) -> None:
    # 4 MiB of message data arrives in 32 Data packets. Past the first read (the connection and
    # message headers and what payload came with them), each packet's payload should be copied
    # from the read buffer straight into the message's own buffer: only header-sized slices
    # (and the few payload bytes they catch) go through the parser, which copies twice.
    body = bytes(range(256)) * (4 * MIB // 256)
    received: list[bytes] = []
    router = Router()

    @router.action("upload")
    def upload(message: Message) -> int:
        received.append(bytes(message.data))
        return FastReply.ACCEPT

    async def talk(client: Connection) -> Any:
        return await client.request(Draft("upload", data="bytes")(body))

    reply, recorder = _served(lambda: _Recorder(router), loop, talk)
    assert reply == FastReply.ACCEPT and received == [body]
    assert recorder.copied < 128 * 1024, recorder.copied


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_small_messages_are_read_in_large_reads(loop: str) -> None:
    # The rest of a small message's data split by a read is copied along with what follows it:
    # reading it in place would cost a syscall of its own per read (and a header-sized read
    # after it), which made a stream of small messages three times slower.
    count = 0
    router = Router()

    @router.action("small")
    def small(message: Message) -> None:
        nonlocal count
        count += 1

    @router.action("sync")
    def sync(message: Message) -> int:
        return FastReply.ACCEPT

    async def talk(client: Connection) -> None:
        draft = Draft("small", data="msgpack")
        for index in range(5000):
            client.send_nowait(draft({"index": index, "pad": "x" * 40}))
            if index % 500 == 0:
                await client.drain()
        await client.request(Draft("sync")())

    _, recorder = _served(lambda: _Recorder(router), loop, talk)
    assert count == 5000
    assert min(recorder.buffer_sizes) >= 16 * 1024, sorted(recorder.buffer_sizes)[:10]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_packet_headers_do_not_go_out_alone(loop: str) -> None:
    # 4 MiB of response data leaves in 32 Data packets. A write to an empty transport buffer
    # is a send() of its own; a packet header written alone (asyncio before 3.12, which has no
    # writev) went out as a segment of a few bytes, waking the peer for nothing.
    body = bytes(range(256)) * (4 * MIB // 256)
    router = Router()

    @router.action("download")
    def download(message: Message) -> None:
        message.respond(ResponseDraft(data="bytes")(body))

    async def talk(client: Connection) -> Any:
        reply = await client.request(Draft("download")())
        assert isinstance(reply, Response)
        return reply.data

    data, recorder = _served(lambda: _Recorder(router), loop, talk)
    assert data == body
    # The first: our connection header; the last: the one byte answering the client's close.
    header, *data_sends, go_away = recorder.sends
    assert header == go_away == 1
    assert len(data_sends) >= 16 and min(data_sends) >= 1024, sorted(data_sends)[:5]


class _Splitter(AioConnection):
    """A server-side connection whose reads stop at sizes drawn from a seeded generator, so
    that packets, headers and payloads are cut at every kind of place."""

    def __init__(self, handler: Router, seed: int) -> None:
        super().__init__(handler)
        self._random = random.Random(seed)

    def get_buffer(self, sizehint: int) -> memoryview:
        view = super().get_buffer(sizehint)
        size = self._random.choice((1, 2, 5, 13, 64, 65, 700, 4096, 16_384, 70_000, 300_000))
        return view[:size]


@pytest.mark.parametrize("packet_size", [1000, 128 * 1024, MIB])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_mixed_traffic_survives_reads_split_anywhere(loop: str, packet_size: int) -> None:
    # Large and small message data, a stream and a file, all in flight at once (so their
    # packets interleave across channels), read in pieces of random sizes: every byte arrives
    # where it belongs, whether it is copied from the read buffer, parsed, or read in place.
    sizes = [16_383, 16_384, 70_000, 300_000, MIB + 7, 2 * MIB]
    bodies = [bytes([index]) * 3 + os.urandom(size - 3) for index, size in enumerate(sizes)]
    streamed = os.urandom(2 * MIB)
    filed = os.urandom(500_000)
    router = Router()

    @router.action("data")
    def data(message: Message) -> None:
        message.respond(ResponseDraft(data="bytes")(hashlib.sha256(message.data).digest()))

    @router.action("stream")
    async def stream(message: Message) -> None:
        assert message.stream is not None
        digest = await hashed(message.stream)
        message.respond(ResponseDraft(data="bytes")(digest.digest()))

    @router.action("file")
    async def file(message: Message) -> None:
        digest = hashlib.sha256()
        for received in message.files:
            await hashed(received, digest)
        message.respond(ResponseDraft(data="bytes")(digest.digest()))

    async def answer(request: Any) -> bytes:
        reply = await request
        assert isinstance(reply, Response)
        return bytes(reply.data)

    async def send_stream(client: Connection) -> bytes:
        request = client.request(Draft("stream", stream=True)())
        assert request.stream is not None
        for start in range(0, len(streamed), 10_000):
            await request.stream.send(streamed[start : start + 10_000])
        request.stream.end()
        return await answer(request.response())

    async def talk(client: Connection) -> list[bytes]:
        data = Draft("data", data="bytes")
        small = [answer(client.request(data(b"%d" % index))) for index in range(200)]
        large = [answer(client.request(data(body))) for body in bodies]
        upload = Draft("file", files=True)(files=[FileTransfer.from_bytes(filed, "f.bin")])
        return await asyncio.gather(
            *small, *large, send_stream(client), answer(client.request(upload))
        )

    digests, _ = _served(
        lambda: _Splitter(router, packet_size), loop, talk, max_packet_size=packet_size
    )
    expected = [b"%d" % index for index in range(200)] + [*bodies, streamed, filed]
    assert digests == [hashlib.sha256(content).digest() for content in expected]
