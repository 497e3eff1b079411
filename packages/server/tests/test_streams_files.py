"""Streams, files and aborts end to end, in both directions."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sockety.client import (
    AbortedError,
    Draft,
    FastReply,
    FileSizeError,
    FileTransfer,
    Message,
    Response,
    ResponseDraft,
    Router,
)

from .conftest import Net

talk = Draft("talk", stream=True)
upload = Draft("upload", data="msgpack", files=True)
stream_reply = ResponseDraft(stream=True)
files_reply = ResponseDraft(files=True)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def echo_router() -> Router:
    router = Router()

    @router.action("talk")
    async def on_talk(message: Message) -> None:
        # Echo the request stream back, upper-cased, through a response stream.
        assert message.stream is not None
        reply = message.respond(stream_reply())
        assert reply.stream is not None
        async for chunk in message.stream:
            await reply.stream.send(chunk.upper())
        reply.stream.end()

    @router.action("upload")
    async def on_upload(message: Message) -> None:
        summary = {"meta": message.msgpack(), "files": []}
        for file in message.files:
            content = await file.read()
            summary["files"].append([file.name, file.size, digest(content)])
        message.respond(ResponseDraft(data="msgpack")(summary))

    @router.action("download")
    def on_download(message: Message) -> None:
        names = message.msgpack()
        message.respond(
            files_reply(
                files=[FileTransfer.from_bytes(name.encode() * 1000, name) for name in names]
            )
        )

    return router


def test_request_stream_and_response_stream(net: Net) -> None:
    async def main() -> None:
        async with net.pair(echo_router()) as (server, client):
            request = client.request(talk())
            assert request.stream is not None
            for word in (b"hello ", b"stream ", b"world"):
                await request.stream.send(word)
            request.stream.end()
            reply = await request.response(timeout=10)
            assert isinstance(reply, Response) and reply.stream is not None
            assert await reply.stream.read() == b"HELLO STREAM WORLD"
            assert reply.stream.at_eof

    net.run(main())


async def numbered(count: int, size: int) -> AsyncIterator[bytes]:
    for index in range(count):
        yield bytes([index % 256]) * size
        await asyncio.sleep(0)


def test_files_from_bytes_path_and_iterator(net: Net, tmp_path: Path) -> None:
    on_disk = tmp_path / "disk.bin"
    disk_content = os.urandom(700_000)
    on_disk.write_bytes(disk_content)
    memory = os.urandom(100_000)
    iterated = b"".join(bytes([i % 256]) * 10_000 for i in range(30))

    async def main() -> None:
        async with net.pair(echo_router()) as (server, client):
            files = [
                FileTransfer.from_bytes(memory, "memory.bin"),
                FileTransfer.from_path(on_disk),
                FileTransfer.from_iterator(numbered(30, 10_000), "iterated.bin", 300_000),
                FileTransfer.from_bytes(b"", "empty.txt"),
            ]
            reply = await client.request(upload({"note": "four files"}, files=files))
            assert isinstance(reply, Response)
            assert reply.msgpack() == {
                "meta": {"note": "four files"},
                "files": [
                    ["memory.bin", 100_000, digest(memory)],
                    ["disk.bin", 700_000, digest(disk_content)],
                    ["iterated.bin", 300_000, digest(iterated)],
                    ["empty.txt", 0, digest(b"")],
                ],
            }

    net.run(main())


def test_response_files_saved_to_disk(net: Net, tmp_path: Path) -> None:
    async def main() -> None:
        async with net.pair(echo_router()) as (server, client):
            reply = await client.request(Draft("download", data="msgpack")(["a.txt", "ż.txt"]))
            assert isinstance(reply, Response)
            assert [(f.name, f.size) for f in reply.files] == [("a.txt", 5000), ("ż.txt", 6000)]
            for file in reply.files:
                saved = await file.save(tmp_path / file.name)
                assert saved.read_bytes() == file.name.encode() * 1000

    net.run(main())


def test_file_size_mismatch_is_an_error_not_corruption(tcp: Net) -> None:
    async def main() -> None:
        async with tcp.pair(echo_router()) as (server, client):
            short = FileTransfer.from_iterator(numbered(2, 10), "short.bin", 100)
            request = client.request(upload(None, files=[short]))
            with pytest.raises(FileSizeError, match="declared 100 bytes but 20"):
                await request
            long = FileTransfer.from_iterator(numbered(20, 10), "long.bin", 100)
            with pytest.raises(FileSizeError, match="more"):
                await client.request(upload(None, files=[long]))
            # the connection carries on
            assert await client.request(Draft("nope")()) == FastReply.NOT_IMPLEMENTED

    tcp.run(main())


def test_abort_half_sent_request_stream(net: Net) -> None:
    seen: asyncio.Queue[object] = asyncio.Queue()
    router = Router()

    @router.action("talk")
    async def on_talk(message: Message) -> None:
        assert message.stream is not None
        try:
            async for chunk in message.stream:
                await seen.put(chunk)
        except AbortedError as error:
            await seen.put(error)

    async def main() -> None:
        async with net.pair(router) as (server, client):
            request = client.request(talk())
            assert request.stream is not None
            await request.stream.send(b"first half")
            assert await seen.get() == b"first half"
            request.abort()
            error = await seen.get()
            assert isinstance(error, AbortedError) and error.by_peer
            with pytest.raises(AbortedError) as local:
                await request
            assert not local.value.by_peer

    net.run(main())


def test_abort_half_sent_response_stream(net: Net) -> None:
    router = Router()
    release = asyncio.Event()

    @router.action("talk")
    async def on_talk(message: Message) -> None:
        reply = message.respond(stream_reply())
        assert reply.stream is not None
        await reply.stream.send(b"part one")
        await release.wait()
        reply.abort()

    async def main() -> None:
        async with net.pair(router) as (server, client):
            request = client.request(talk())
            assert request.stream is not None
            request.stream.end()
            reply = await request
            assert isinstance(reply, Response) and reply.stream is not None
            assert await anext(aiter(reply.stream)) == b"part one"
            release.set()
            with pytest.raises(AbortedError) as error:
                await reply.stream.read()
            assert error.value.by_peer

    net.run(main())


def test_many_responses_to_one_request(tcp: Net) -> None:
    router = Router()
    each = ResponseDraft(data="msgpack")

    @router.action("count")
    def on_count(message: Message) -> None:
        for index in range(int(message.msgpack())):
            message.respond(each(index))

    async def main() -> None:
        async with tcp.pair(router) as (server, client):
            request = client.request(Draft("count", data="msgpack")(5), multiple=True)
            got = []
            async for reply in request.responses():
                assert isinstance(reply, Response)
                got.append(reply.msgpack())
                if len(got) == 5:
                    request.close()
            assert got == [0, 1, 2, 3, 4]

    tcp.run(main())


def test_refused_upload_is_discarded_without_stalling_the_connection(tcp: Net) -> None:
    router = Router()

    @router.action("upload")
    def refuse(message: Message) -> int:
        message.discard()  # nothing of it is buffered: the connection keeps flowing
        return FastReply.BAD_REQUEST

    @router.action("ping")
    def ping(message: Message) -> int:
        return FastReply.ACCEPT

    async def main() -> None:
        # 16 MiB of file content against a 1 MiB receive buffer: without discard() reading
        # would pause for good once the unread chunks filled it.
        async with tcp.pair(router, max_receive_buffer=1024 * 1024) as (server, client):
            big = FileTransfer.from_bytes(bytes(16 * 1024 * 1024), "big.bin")
            request = client.request(upload(None, files=[big]))
            assert await request == FastReply.BAD_REQUEST
            await request.sent()
            assert await client.request(Draft("ping")()) == FastReply.ACCEPT

    tcp.run(main())


def test_a_failing_file_source_fails_the_request_and_aborts(tcp: Net) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 10
        raise RuntimeError("the source broke")

    async def main() -> None:
        async with tcp.pair(echo_router()) as (server, client):
            source = FileTransfer.from_iterator(broken(), "broken.bin", 100)
            with pytest.raises(RuntimeError, match="the source broke"):
                await client.request(upload(None, files=[source]))
            assert await client.request(Draft("nope")()) == FastReply.NOT_IMPLEMENTED

    tcp.run(main())
