"""How the ``nagle-1m`` case's client writes: as a Node.js client may, not as ours does.

Node.js sockets leave Nagle's algorithm on, and a client that writes packet by packet can send
the last small packets of a request a moment after its body. With Nagle on, a small segment
waits until the peer acknowledges the previous one; a peer that delays its ACK (Linux: 40 ms
at the least) while it waits for the rest of the request then stalls every such request by
40 ms. These helpers reproduce that pattern exactly: body, pause, small piece, pause, small
piece, over a socket with Nagle on.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Final

__all__ = ["PAUSE", "TAIL_PIECES", "nagle_on", "write_paced"]

#: The request's last bytes, written one piece at a time after a pause.
TAIL_PIECES: Final = (20, 20)
#: 0.1 ms: long enough for the kernel to send what came before (measured: at 0.1 ms every
#: request stalls on a peer without quick ACKs, p50 45 ms), short against the 1 MiB transfer.
PAUSE: Final = 0.0001


def nagle_on(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm back on for ``transport`` (asyncio turns it off)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)


async def write_paced(transport: asyncio.Transport, parts: Sequence[bytes | memoryview]) -> None:
    """Write ``parts``, holding back the last ``sum(TAIL_PIECES)`` bytes, which follow in small
    pieces, each after a pause."""
    tail = sum(TAIL_PIECES)
    last = memoryview(parts[-1])
    if len(last) <= tail:
        raise ValueError("the last part must be longer than the paced tail")
    transport.writelines([*parts[:-1], last[:-tail]])
    position = len(last) - tail
    for size in TAIL_PIECES:
        await asyncio.sleep(PAUSE)
        transport.write(last[position : position + size])
        position += size
