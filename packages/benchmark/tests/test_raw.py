"""The raw-Python ceiling carries bytes correctly (it is the yardstick: it must not cheat)."""

from __future__ import annotations

import asyncio
import os
import random
import struct

import msgpack
import pytest
import uvloop

from sockety.benchmark._cases import REGULAR_REQUEST, REGULAR_RESPONSE
from sockety.benchmark._raw import (
    BIG,
    HEADER,
    T_COUNT,
    T_ECHO,
    T_REGULAR,
    T_SEND,
    T_SHORT,
    RawClientProtocol,
    RawServerProtocol,
)

pytestmark = pytest.mark.timeout(30)

MIB = 1024 * 1024


async def _roundtrip_checks() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RawServerProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(RawClientProtocol, "127.0.0.1", port)
    try:
        body = os.urandom(MIB)
        other = os.urandom(MIB + 12345)
        # Two large echoes and small requests in flight at once on one connection.
        results = await asyncio.wait_for(
            asyncio.gather(
                client.request(T_ECHO, body),
                client.request(T_SHORT),
                client.request(T_ECHO, other),
                client.request(T_REGULAR, msgpack.packb(REGULAR_REQUEST)),
                client.request(T_ECHO, b"tiny"),
            ),
            10,
        )
        assert results[0] == body
        assert results[1] == b""
        assert results[2] == other
        assert msgpack.unpackb(results[3]) == REGULAR_RESPONSE
        assert results[4] == b"tiny"
        for _ in range(100):
            await client.send(T_SEND, msgpack.packb(REGULAR_REQUEST))
        count = struct.unpack("<Q", await asyncio.wait_for(client.request(T_COUNT), 5))[0]
        assert count == 100
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_raw_roundtrip_1mib(loop: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(_roundtrip_checks())


class _Collector(RawServerProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[int, int, bytes]] = []

    def frame_received(self, fid: int, ftype: int, body: bytes | bytearray | memoryview) -> None:
        self.frames.append((fid, ftype, bytes(body)))


def test_parser_reassembles_frames_from_arbitrary_reads() -> None:
    """Frames split at every possible place, large bodies received into their own buffer."""
    asyncio.run(_reassemble())


async def _reassemble() -> None:
    rng = random.Random(7)
    frames = [
        (1, 3, b""),
        (2, 5, os.urandom(MIB)),
        (3, 4, b"x" * 50),
        (4, 5, os.urandom(BIG + 1)),
        (5, 5, os.urandom(BIG)),
        (6, 13, os.urandom(3 * MIB + 7)),
        (7, 1, b""),
    ]
    wire = b"".join(HEADER.pack(len(b), fid, t) + b for fid, t, b in frames)
    proto = _Collector()
    pos = 0
    while pos < len(wire):
        buf = proto.get_buffer(-1)
        assert len(buf) > 0
        n = min(len(buf), rng.choice((1, 5, 9, 100, 4096, 70000, 1 << 20)), len(wire) - pos)
        buf[:n] = wire[pos : pos + n]
        proto.buffer_updated(n)
        pos += n
    assert proto.frames == frames
