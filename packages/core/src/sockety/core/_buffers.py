"""Buffers for message data being received, allocated without zero-filling.

``bytearray(n)`` writes n zeros before the peer's bytes overwrite every one of them: for the
1 MiB messages of sockety-bench that memset was 9% of the server's CPU time (``perf``). CPython's
``PyByteArray_FromStringAndSize(NULL, n)`` allocates the same object without it. The receiver
hands a buffer to the application only once all of its declared bytes have arrived, so its
stale contents are never seen. Where the C API cannot be called (not CPython), the zeros stay.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["data_buffer"]

# Below this the memset costs less than the foreign call (about half a microsecond).
_UNINITIALIZED_FROM = 32 * 1024


def _c_allocator() -> Callable[[None, int], bytearray] | None:
    try:
        import ctypes  # noqa: PLC0415 - optional: some builds have none

        function = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except (ImportError, AttributeError, OSError):  # no C API to call (e.g. PyPy)
        return None
    function.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
    function.restype = ctypes.py_object  # ctypes takes over the new reference
    return function


_allocate = _c_allocator()


def data_buffer(size: int) -> bytearray:
    """A writable buffer of ``size`` bytes whose contents are unspecified."""
    if size < _UNINITIALIZED_FROM or _allocate is None:
        return bytearray(size)
    return _allocate(None, size)
