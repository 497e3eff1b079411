"""Encoders for packets and headers (PROTOCOL.md §2-§5). Writers use the smallest width that fits.

These are pure functions of their arguments; the sender (``_sender``) decides what to write when.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._constants import MAX_CHANNELS
from ._errors import LocalProtocolError

__all__ = [
    "abort_packet",
    "connection_header",
    "fast_reply_packet",
    "file_end_packet",
    "file_packet_prefix",
    "message_header_packet",
    "response_header_packet",
    "sized_prefix",
    "switch_packet",
]

_U48 = 1 << 48


def connection_header(channels: int) -> bytes:
    """The header announcing that we receive on ``channels`` channels (1..4096).

    256 is written ``E2 00 01`` (the reference's ``E1 00`` is a bug, Decision 5).
    """
    if not 1 <= channels <= MAX_CHANNELS:
        raise LocalProtocolError(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
    if channels == 1:
        return b"\xe0"
    if channels == MAX_CHANNELS:
        return b"\xe3"
    if channels < 256:
        return bytes((0xE1, channels))
    return b"\xe2" + channels.to_bytes(2, "little")


def switch_packet(channel: int) -> bytes:
    if channel < 16:
        return bytes((channel,))
    return bytes((0x10 | channel >> 8, channel & 0xFF))


def sized_prefix(type_bits: int, size: int) -> bytes:
    """First byte (``type_bits`` with the size width in bits 3-2) and the size field."""
    if size < 0x100:
        return bytes((type_bits, size))
    if size < 0x10000:
        return bytes((type_bits | 0x04, size & 0xFF, size >> 8))
    if size < 0x1000000:
        return bytes((type_bits | 0x08, size & 0xFF, (size >> 8) & 0xFF, size >> 16))
    return bytes((type_bits | 0x0C,)) + size.to_bytes(4, "little")


def file_packet_prefix(index: int, size: int) -> bytes:
    """The prefix of a File packet: ``1100AABB``, size, then the file index."""
    if size < 0x100:
        head = bytearray((0xC0, size))
    elif size < 0x10000:
        head = bytearray((0xC4, size & 0xFF, size >> 8))
    elif size < 0x1000000:
        head = bytearray((0xC8,)) + size.to_bytes(3, "little")
    else:
        head = bytearray((0xCC,)) + size.to_bytes(4, "little")
    if index:
        width = 1 if index < 0x100 else 2 if index < 0x10000 else 3
        head[0] |= width
        head += index.to_bytes(width, "little")
    return bytes(head)


def file_end_packet(index: int) -> bytes:
    if index == 0:
        return b"\xd0"
    if index < 0x100:
        return bytes((0xD1, index))
    if index < 0x10000:
        return bytes((0xD2, index & 0xFF, index >> 8))
    return b"\xd3" + index.to_bytes(3, "little")


def fast_reply_packet(message_id: bytes, code: int) -> bytes:
    if code < 16:
        return bytes((0x30 | code,)) + message_id
    return bytes((0x40 | code >> 8, code & 0xFF)) + message_id


def abort_packet() -> bytes:
    return b"\x90"


def _content_fields(data_size: int, files: Sequence[tuple[bytes, int]]) -> tuple[int, bytes]:
    """Flags bits DDEEFF (without G) and the data size, files count, total size, file headers."""
    flags = 0
    parts: list[bytes] = []
    if data_size:
        if data_size < 0x100:
            flags |= 0x40
            parts.append(bytes((data_size,)))
        elif data_size < 0x10000:
            flags |= 0x80
            parts.append(data_size.to_bytes(2, "little"))
        elif data_size < _U48:
            flags |= 0xC0
            parts.append(data_size.to_bytes(6, "little"))
        else:
            raise LocalProtocolError(f"data of {data_size} bytes is over the protocol's 2^48")
    if files:
        count = len(files)
        if count < 0x100:
            flags |= 0x10
            parts.append(bytes((count,)))
        elif count < 0x10000:
            flags |= 0x20
            parts.append(count.to_bytes(2, "little"))
        elif count < 0x1000000:
            flags |= 0x30
            parts.append(count.to_bytes(3, "little"))
        else:
            raise LocalProtocolError(f"{count} files are over the protocol's 2^24 - 1")
        total = sum(size for _, size in files)
        if total < 0x10000:
            parts.append(total.to_bytes(2, "little"))
        elif total < 0x1000000:
            flags |= 0x04
            parts.append(total.to_bytes(3, "little"))
        elif total < 0x100000000:
            flags |= 0x08
            parts.append(total.to_bytes(4, "little"))
        elif total < _U48:
            flags |= 0x0C
            parts.append(total.to_bytes(6, "little"))
        else:
            raise LocalProtocolError(f"files of {total} bytes in all are over 2^48")
        for name, size in files:
            if size < 0x100:
                head, size_bytes = 0x00, bytes((size,))
            elif size < 0x10000:
                head, size_bytes = 0x04, size.to_bytes(2, "little")
            elif size < 0x1000000:
                head, size_bytes = 0x08, size.to_bytes(3, "little")
            elif size < _U48:
                head, size_bytes = 0x0C, size.to_bytes(6, "little")
            else:
                raise LocalProtocolError(f"a file of {size} bytes is over 2^48")
            if len(name) < 0x100:
                parts.append(bytes((head,)) + size_bytes + bytes((len(name),)) + name)
            elif len(name) < 0x10000:
                parts.append(bytes((head | 0x02,)) + size_bytes + len(name).to_bytes(2, "little"))
                parts.append(name)
            else:
                raise LocalProtocolError("a file name is over 65,535 bytes")
    return flags, b"".join(parts)


def message_header_packet(
    message_id: bytes,
    action: bytes,
    data_size: int,
    files: Sequence[tuple[bytes, int]],
    has_stream: bool,
    expects_response: bool,
) -> bytes:
    """The whole Message packet (one packet; we never need Continue for what we write)."""
    flags, rest = _content_fields(data_size, files)
    n = len(action)
    if n < 0x100:
        action_part = bytes((n,)) + action
    elif n < 0x10000:
        flags |= 0x02
        action_part = n.to_bytes(2, "little") + action
    else:
        raise LocalProtocolError("an action name is over 65,535 bytes")
    body = bytes((flags,)) + message_id + action_part + rest
    type_bits = 0x20 | (0x02 if has_stream else 0) | (0x01 if expects_response else 0)
    return sized_prefix(type_bits, len(body)) + body


def response_header_packet(
    parent_id: bytes,
    response_id: bytes,
    data_size: int,
    files: Sequence[tuple[bytes, int]],
    has_stream: bool,
    expects_response: bool,
) -> bytes:
    flags, rest = _content_fields(data_size, files)
    body = bytes((flags,)) + parent_id + response_id + rest
    type_bits = 0x50 | (0x02 if has_stream else 0) | (0x01 if expects_response else 0)
    return sized_prefix(type_bits, len(body)) + body
