"""64 MiB up and down through streams, checked by sha256, with memory measured."""

from __future__ import annotations

import hashlib
import tracemalloc

from sockety.client import Draft, Message, Response, ResponseDraft, Router

from .conftest import Net

MIB = 1024 * 1024
TOTAL = 64 * MIB
CHUNK = 256 * 1024


def pattern(index: int) -> bytes:
    return index.to_bytes(4, "little") * (CHUNK // 4)


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
        digest = hashlib.sha256()
        async for chunk in message.stream:
            digest.update(chunk)
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
                down = hashlib.sha256()
                async for chunk in reply.stream:
                    down.update(chunk)
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
