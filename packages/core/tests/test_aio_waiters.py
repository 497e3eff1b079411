"""Tasks that wait for the same connection's output to drain are independent: cancelling one
(e.g. a transfer given up) leaves the others waiting, then writing, as if nothing happened."""

from __future__ import annotations

import asyncio

import pytest

from sockety.core.aio import Draft, FastReply, Message, Router

from ._peers import LOOPS, connected, run

pytestmark = pytest.mark.timeout(60)

up = Draft("up", stream=True)
CHUNK = bytes(256 * 1024)


@pytest.mark.parametrize("loop", LOOPS)
def test_cancelling_one_waiting_writer_leaves_the_others_waiting(loop: str) -> None:
    router = Router()
    reading = asyncio.Event()
    received: list[int] = []

    @router.action("up")
    async def on_up(message: Message) -> int:
        assert message.stream is not None
        await reading.wait()  # nothing is read until the test says so: the client's output piles
        total = 0
        async for chunk in message.stream:
            total += len(chunk)
        received.append(total)
        return FastReply.ACCEPT

    async def main() -> None:
        # Small buffers, so that output piles up soon; a short grace: the cancelled upload never
        # ends, so closing does not wait for it.
        options = {
            "receive_buffer_size": 64 * 1024,
            "max_receive_buffer": 256 * 1024,
            "close_timeout": 0.5,
        }
        async with connected(router, server_options=options, client_options=options) as (
            _,
            client,
        ):

            async def upload(chunks: int) -> object:
                request = client.request(up())
                assert request.stream is not None
                for _ in range(chunks):
                    await request.stream.send(CHUNK)
                request.stream.end()
                return await request

            stuck = asyncio.create_task(upload(64))  # 16 MiB: blocks on backpressure
            other = asyncio.create_task(upload(8))
            # Both wait for the output to drain once the peer's buffers are full: loop turns
            # (no clock) until the transport says so.
            for _ in range(100_000):
                if client.writing_paused:
                    break
                await asyncio.sleep(0)
            assert client.writing_paused
            stuck.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stuck
            reading.set()
            assert await asyncio.wait_for(other, 30) == FastReply.ACCEPT

    run(main(), loop)
    assert len(CHUNK) * 8 in received
