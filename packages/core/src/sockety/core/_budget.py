"""What a peer may make this side hold in memory, and a pool several connections share.

Each connection's receiver counts every byte it holds on the peer's behalf against its own
budget (``max_buffered_bytes``): partial packets and headers, message data being assembled,
and an estimate of the bookkeeping of every unfinished exchange and declared file. A
:class:`MemoryPool` given to several connections bounds their sum (a server-wide budget).
"""

from __future__ import annotations

from typing import Final

__all__ = ["AHEAD", "EXCHANGE_COST", "FILE_COST", "UNEARNED", "MemoryPool"]

#: Estimated bytes both layers keep for one unfinished incoming exchange (the receiver's record,
#: the message object and its id, the entry in the connection's table), measured with
#: ``sys.getsizeof`` on CPython 3.11-3.13 and rounded up.
EXCHANGE_COST: Final = 512
#: Estimated bytes kept per declared file besides its name (its header tuple, the size still
#: expected, and the reader the application gets), measured the same way.
FILE_COST: Final = 256
#: What a peer may make us hold beyond twice what it sent: room for the declarations of one
#: message with the largest header (``max_files`` files) before any of their content arrived.
UNEARNED: Final = 1024 * 1024
#: Message data is allocated as it arrives: a buffer grows at most this far ahead of the bytes
#: the peer sent (over all its messages), so that a connection that has sent a lot gets its
#: large messages' buffers at once (no copy as they grow) and a new one pays per byte.
AHEAD: Final = 64 * 1024


class MemoryPool:
    """A memory budget shared by connections (e.g. all of a server's): each one takes what it
    holds for its peer from here and gives it back when done or closed."""

    __slots__ = ("held", "limit", "refusals")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a memory pool needs a positive limit")
        self.limit = limit
        #: Bytes the connections hold now.
        self.held = 0
        #: How many times a connection was refused memory (and closed for it).
        self.refusals = 0

    def take(self, size: int) -> bool:
        """Takes ``size`` bytes if they fit; False (and nothing taken) if not."""
        if self.held + size > self.limit:
            self.refusals += 1
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Gives ``size`` bytes back."""
        self.held -= size

    def __repr__(self) -> str:
        return f"<MemoryPool {self.held}/{self.limit} bytes>"
