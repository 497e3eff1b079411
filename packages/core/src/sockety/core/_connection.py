"""The sans-IO Sockety connection: bytes in -> events out, calls in -> bytes out.

It never touches a socket, a clock or an event loop; the asyncio layer (``sockety.core.aio``) and
the tests drive it. Both peers are symmetrical, so one class serves clients and servers.
"""

from __future__ import annotations

from ._budget import MemoryPool
from ._receiver import Receiver
from ._sender import Sender

__all__ = ["Connection"]


class Connection(Sender):
    """One side of a Sockety connection.

    Output starts with our connection header; call :meth:`data_to_send` to collect bytes to
    write, :meth:`receive_data` with bytes read. Messages started before the peer's header
    arrived wait for it.
    """

    def __init__(
        self,
        *,
        # How many channels we receive on (announced in our header). Each costs one slot here.
        channels: int = 4096,
        # How many channels we send on at most (the peer's announcement lowers it).
        send_channels: int = 4096,
        # The protocol's own limit (a uint16 length): the Node.js reference sends names that
        # long, and max_header_size bounds the memory a header takes anyway.
        max_action_size: int = 65535,
        # Message data is held in memory until complete: bound it. Use streams or files beyond.
        max_data_size: int = 64 * 1024 * 1024,
        # Each file costs a header entry and bookkeeping before any byte of it arrives.
        max_files: int = 1024,
        # Headers are buffered whole before they are parsed.
        max_header_size: int = 1024 * 1024,
        # The connection's memory budget: everything the peer makes us hold at once (partial
        # headers, data being assembled, the bookkeeping of unfinished exchanges and declared
        # files; see _budget). Room for the largest message (max_data_size) twice over; a peer
        # also never gets more than twice what it sent plus 1 MiB (UNEARNED).
        max_buffered_bytes: int = 128 * 1024 * 1024,
        # A budget shared with other connections (a server's), or None.
        pool: MemoryPool | None = None,
        # Content packets we write: small enough for other channels to interleave with low
        # latency, large enough that per-packet work and syscalls stay small. Measured with
        # sockety-bench (compiled build, 128 KiB socket buffers), 64 / 128 / 256 KiB: 1 MiB data
        # 0.31-0.66x / 0.51-0.58x / 0.57-0.70x the raw ceiling, small-request p99 during a
        # 64 MiB upload 2.1-2.5x / 3.0-3.6x / 3.4-6.8x the unloaded one. (The asyncio layer
        # uses 64 KiB over TLS unless this is given: see sockety.core.aio.)
        max_packet_size: int = 128 * 1024,
    ) -> None:
        if not 1 <= channels <= 4096:
            raise ValueError("channels must be 1..4096")
        Receiver.__init__(
            self,
            channels=channels,
            max_action_size=max_action_size,
            max_data_size=max_data_size,
            max_files=max_files,
            max_header_size=max_header_size,
            max_buffered_bytes=max_buffered_bytes,
            pool=pool,
        )
        Sender.__init__(
            self,
            channels=channels,
            send_channels=send_channels,
            max_packet_size=max_packet_size,
        )

    @property
    def opened(self) -> bool:
        """Whether the peer's connection header arrived."""
        return self._peer_channels > 0

    @property
    def failed(self) -> bool:
        """Whether the peer broke the protocol (``receive_data`` raises from then on)."""
        return self._error is not None

    @property
    def idle(self) -> bool:
        """Nothing is being sent or received: no exchange in progress in either direction."""
        return not self._outgoing and not self._open and not self._out and not self._chunks
