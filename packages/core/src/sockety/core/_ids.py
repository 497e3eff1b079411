"""Message ids: random UUID v4 as 16 raw bytes."""

from __future__ import annotations

from os import urandom

__all__ = ["new_id"]

_BATCH = 256  # ids drawn from the OS at once: one getrandom() call per 256 ids
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))  # sets the version nibble to 4
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))  # sets the RFC 4122 variant bits
_pool = b""
_next = 0


def _refill() -> None:
    global _pool, _next
    pool = bytearray(urandom(16 * _BATCH))
    pool[6::16] = pool[6::16].translate(_VERSION_4)
    pool[8::16] = pool[8::16].translate(_VARIANT)
    _pool = bytes(pool)  # immutable: an id is then one slice, one allocation
    _next = 0


def new_id() -> bytes:
    """A random UUID v4 as 16 bytes; cheaper than ``uuid.uuid4().bytes`` (PERFORMANCE.md):
    randomness is drawn from the OS for 256 ids at a time."""
    global _next
    if _next >= len(_pool):
        _refill()
    start = _next
    _next = start + 16
    return _pool[start : start + 16]
