"""The asyncio layer on its own: two ``sockety.core.aio.Connection`` peers over a real
127.0.0.1 socket (no server package), on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from sockety.core import ConnectionClosedError, GoingAwayError
from sockety.core.aio import (
    Draft,
    FastReply,
    FileTransfer,
    Message,
    Response,
    ResponseDraft,
    Router,
)

from ._peers import LOOPS, connected, run

echo = Draft("echo", data="bytes")
ping = Draft("ping")
note = Draft("note", data="msgpack")
talk = Draft("talk", stream=True)
upload = Draft("upload", files=True)
hold = Draft("hold")
reply_bytes = ResponseDraft(data="bytes")
reply_stream = ResponseDraft(stream=True)


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_request_gets_the_response_to_it(loop: str) -> None:
    router = Router()

    @router.action("echo")
    def on_echo(message: Message) -> None:
        message.respond(reply_bytes(bytes(message.data)[::-1]))

    async def main() -> None:
        async with connected(router) as (_, client):
            request = client.request(echo(b"abc"))
            reply = await request
            assert isinstance(reply, Response)
            assert reply.data == b"cba"
            assert reply.parent_id == request.id
            assert client.pending_requests == 0

    run(main(), loop)


def test_fast_replies_answer_requests_by_code(loop: str) -> None:
    router = Router()

    @router.action("ping")
    def on_ping(message: Message) -> int:
        return FastReply.ACCEPT

    @router.action("echo")
    async def on_code(message: Message) -> int:
        return int.from_bytes(message.data, "little")

    async def main() -> None:
        async with connected(router) as (_, client):
            assert await client.request(ping()) is FastReply.ACCEPT
            assert await client.request(echo((4095).to_bytes(2, "little"))) == 4095
            assert await client.request(Draft("nobody")()) is FastReply.NOT_IMPLEMENTED

    run(main(), loop)


def test_messages_without_a_handler_arrive_in_order_through_async_for(loop: str) -> None:
    async def main() -> None:
        async with connected(None) as (server, client):
            for n in range(3):
                await client.send(note({"n": n}))
            received = []
            async for message in server:
                received.append(message.msgpack())
                if len(received) == 3:
                    break
            assert received == [{"n": 0}, {"n": 1}, {"n": 2}]

    run(main(), loop)


def test_streams_up_and_down(loop: str) -> None:
    router = Router()

    @router.action("talk")
    async def on_talk(message: Message) -> None:
        assert message.stream is not None
        reply = message.respond(reply_stream())
        assert reply.stream is not None
        async for chunk in message.stream:
            await reply.stream.send(chunk.upper())
        reply.stream.end()

    async def main() -> None:
        async with connected(router) as (_, client):
            request = client.request(talk())
            assert request.stream is not None
            for chunk in (b"one ", b"two ", b"x" * 300_000):
                await request.stream.send(chunk)
            request.stream.end()
            reply = await request
            assert isinstance(reply, Response)
            assert reply.stream is not None
            assert await reply.stream.read() == b"ONE TWO " + b"X" * 300_000

    run(main(), loop)


def test_files_arrive_whole_with_their_names(loop: str) -> None:
    router = Router()

    @router.action("upload")
    async def on_upload(message: Message) -> None:
        lines = []
        for file in message.files:
            content = await file.read()
            lines.append(f"{file.name} {file.size} {hashlib.sha256(content).hexdigest()}")
        message.respond(reply_bytes("\n".join(lines).encode()))

    small, large = b"hello", bytes(range(256)) * 4096  # 1 MiB: many packets

    async def main() -> None:
        async with connected(router) as (_, client):
            files = [FileTransfer.from_bytes(small, "a.txt"), FileTransfer.from_bytes(large, "b")]
            reply = await client.request(upload(files=files))
            assert isinstance(reply, Response)
            assert bytes(reply.data).decode().splitlines() == [
                f"a.txt 5 {hashlib.sha256(small).hexdigest()}",
                f"b {len(large)} {hashlib.sha256(large).hexdigest()}",
            ]

    run(main(), loop)


def test_close_lets_in_flight_requests_finish_then_closes_both_sides(loop: str) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()
    router = Router()

    @router.action("hold")
    async def on_hold(message: Message) -> int:
        arrived.set()
        await release.wait()
        return FastReply.ACCEPT

    async def main() -> None:
        async with connected(router) as (server, client):
            request = client.request(hold())
            await arrived.wait()
            closing = asyncio.ensure_future(client.close())
            await server.wait_going_away()  # our Go Away reached the peer
            with pytest.raises(GoingAwayError):
                client.request(ping())
            assert client.pending_requests == 1  # still waiting for its answer
            release.set()
            assert await request is FastReply.ACCEPT
            await closing
            await server.wait_closed()
            assert client.closed and server.closed
            assert type(client.close_reason) is ConnectionClosedError
            assert type(server.close_reason) is ConnectionClosedError
            with pytest.raises(ConnectionClosedError):
                client.request(ping())

    run(main(), loop)
