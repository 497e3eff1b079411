"""Message ids: random UUID v4 as 16 raw bytes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain
from os import urandom
from struct import Struct

__all__ = ["new_id"]

_BATCH = 256  # ids drawn from the OS at once: one getrandom() call per 256 ids
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))  # sets the version nibble to 4
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))  # sets the RFC 4122 variant bits
_SPLIT = Struct("16s" * _BATCH)  # the pool cut into ids in one C call


def _batch() -> list[bytes]:
    pool = bytearray(urandom(16 * _BATCH))
    pool[6::16] = pool[6::16].translate(_VERSION_4)
    pool[8::16] = pool[8::16].translate(_VARIANT)
    return list(_SPLIT.unpack(pool))


# Endless: _batch() never returns the sentinel None.
_ids: Iterator[bytes] = chain.from_iterable(iter(_batch, None))

#: A random UUID v4 as 16 bytes; cheaper than ``uuid.uuid4().bytes`` (PERFORMANCE.md):
#: randomness is drawn from the OS for 256 ids at a time, and taking one is a C-level ``next``.
new_id: Callable[[], bytes] = _ids.__next__
