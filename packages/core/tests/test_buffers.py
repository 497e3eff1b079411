"""Message data buffers: allocated without zero-filling on CPython, and without leaks."""

from __future__ import annotations

import platform
import sys

import pytest

from sockety.core import _buffers
from sockety.core._buffers import data_buffer


@pytest.mark.parametrize("size", [0, 1, 32 * 1024 - 1, 32 * 1024, 1 << 20])
def test_a_writable_buffer_of_the_size_asked(size: int) -> None:
    buffer = data_buffer(size)
    assert type(buffer) is bytearray
    assert len(buffer) == size
    buffer[:] = b"\xab" * size
    assert buffer.count(0xAB) == size


def test_large_buffers_come_from_the_c_api_without_a_leaked_reference() -> None:
    if platform.python_implementation() == "CPython":
        assert _buffers._allocate is not None  # else every large message pays a memset
    buffer = data_buffer(1 << 20)
    assert sys.getrefcount(buffer) == 2  # the name and getrefcount's argument: nothing leaked


def test_without_the_c_api_large_buffers_are_zero_filled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_buffers, "_allocate", None)
    assert data_buffer(1 << 20) == bytes(1 << 20)
