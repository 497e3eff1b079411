"""Encoders for packets and headers (PROTOCOL.md §2-§5). Writers use the smallest width that fits.

These are pure functions of their arguments; the sender (``_sender``) decides what to write when.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ._constants import MAX_CHANNELS, PacketType
from ._errors import LocalProtocolError

__all__ = [
    "ACTION_U16",
    "DATA_U8",
    "DATA_U16",
    "DATA_U48",
    "EXPECTS_RESPONSE",
    "HAS_STREAM",
    "TYPE_ABORT",
    "TYPE_DATA",
    "TYPE_FAST_REPLY_HIGH",
    "TYPE_FAST_REPLY_LOW",
    "TYPE_FILE",
    "TYPE_FILE_END",
    "TYPE_GO_AWAY",
    "TYPE_HEARTBEAT",
    "TYPE_MESSAGE",
    "TYPE_RESPONSE",
    "TYPE_STREAM",
    "TYPE_STREAM_END",
    "TYPE_SWITCH_HIGH",
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

# First bytes of packets: the PacketType in the high nibble (PROTOCOL.md §3). Plain ints, so that
# the compiled sender reads them as constants rather than as enum attributes.
TYPE_SWITCH_HIGH: Final = PacketType.SWITCH_CHANNEL_HIGH << 4
TYPE_MESSAGE: Final = PacketType.MESSAGE << 4
TYPE_FAST_REPLY_LOW: Final = PacketType.FAST_REPLY_LOW << 4
TYPE_FAST_REPLY_HIGH: Final = PacketType.FAST_REPLY_HIGH << 4
TYPE_RESPONSE: Final = PacketType.RESPONSE << 4
TYPE_STREAM: Final = PacketType.STREAM << 4
TYPE_STREAM_END: Final = PacketType.STREAM_END << 4
TYPE_ABORT: Final = PacketType.ABORT << 4
TYPE_HEARTBEAT: Final = PacketType.HEARTBEAT << 4
TYPE_GO_AWAY: Final = PacketType.GO_AWAY << 4
TYPE_FILE: Final = PacketType.FILE << 4
TYPE_FILE_END: Final = PacketType.FILE_END << 4
TYPE_DATA: Final = PacketType.DATA << 4
# Bits of a Message/Response packet's first byte (``0010AABC``): B and C.
HAS_STREAM: Final = 0b10
EXPECTS_RESPONSE: Final = 0b01
# The width of a packet's size field, bits AA of its first byte (§3).
_SIZE_U16 = 0b01 << 2
_SIZE_U24 = 0b10 << 2
_SIZE_U32 = 0b11 << 2
# The Message header's flags byte ``DDEEFFG0`` (§4): data size width DD, files count width EE,
# total files size width FF, action length width G.
DATA_U8: Final = 0b01 << 6
DATA_U16: Final = 0b10 << 6
DATA_U48: Final = 0b11 << 6
_FILES_U8 = 0b01 << 4
_FILES_U16 = 0b10 << 4
_FILES_U24 = 0b11 << 4
_TOTAL_U24 = 0b01 << 2
_TOTAL_U32 = 0b10 << 2
_TOTAL_U48 = 0b11 << 2
ACTION_U16: Final = 0b1 << 1
# A file header's first byte ``0000AAB0`` (§4): file size width AA, name length width B.
_FILE_SIZE_U16 = 0b01 << 2
_FILE_SIZE_U24 = 0b10 << 2
_FILE_SIZE_U48 = 0b11 << 2
_NAME_U16 = 0b1 << 1
# Connection headers (§2): 1 channel, n on uint8, n on uint16, 4096 channels.
_HEADER_ONE = 0xE0
_HEADER_U8 = 0xE1
_HEADER_U16 = 0xE2
_HEADER_ALL = 0xE3


def connection_header(channels: int) -> bytes:
    """The header announcing that we receive on ``channels`` channels (1..4096).

    256 is written ``E2 00 01`` (the reference's ``E1 00`` is a bug, Decision 5).
    """
    if not 1 <= channels <= MAX_CHANNELS:
        raise LocalProtocolError(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
    if channels == 1:
        return bytes((_HEADER_ONE,))
    if channels == MAX_CHANNELS:
        return bytes((_HEADER_ALL,))
    if channels < 256:
        return bytes((_HEADER_U8, channels))
    return bytes((_HEADER_U16,)) + channels.to_bytes(2, "little")


def switch_packet(channel: int) -> bytes:
    if channel < 16:
        return bytes((channel,))
    return bytes((TYPE_SWITCH_HIGH | channel >> 8, channel & 0xFF))


def sized_prefix(type_bits: int, size: int) -> bytes:
    """First byte (``type_bits`` with the size width in bits 3-2) and the size field."""
    if size < 0x100:
        return bytes((type_bits, size))
    if size < 0x10000:
        return bytes((type_bits | _SIZE_U16, size & 0xFF, size >> 8))
    if size < 0x1000000:
        return bytes((type_bits | _SIZE_U24, size & 0xFF, (size >> 8) & 0xFF, size >> 16))
    return bytes((type_bits | _SIZE_U32,)) + size.to_bytes(4, "little")


def file_packet_prefix(index: int, size: int) -> bytes:
    """The prefix of a File packet: ``1100AABB``, size, then the file index."""
    head = bytearray(sized_prefix(TYPE_FILE, size))
    if index:
        width = 1 if index < 0x100 else 2 if index < 0x10000 else 3
        head[0] |= width
        head += index.to_bytes(width, "little")
    return bytes(head)


def file_end_packet(index: int) -> bytes:
    if index == 0:
        return bytes((TYPE_FILE_END,))
    width = 1 if index < 0x100 else 2 if index < 0x10000 else 3
    return bytes((TYPE_FILE_END | width,)) + index.to_bytes(width, "little")


def fast_reply_packet(message_id: bytes, code: int) -> bytes:
    if code < 16:
        return bytes((TYPE_FAST_REPLY_LOW | code,)) + message_id
    return bytes((TYPE_FAST_REPLY_HIGH | code >> 8, code & 0xFF)) + message_id


def abort_packet() -> bytes:
    return bytes((TYPE_ABORT,))


def _content_fields(data_size: int, files: Sequence[tuple[bytes, int]]) -> tuple[int, bytes]:
    """Flags bits DDEEFF (without G) and the data size, files count, total size, file headers."""
    flags = 0
    parts: list[bytes] = []
    if data_size:
        if data_size < 0x100:
            flags |= DATA_U8
            parts.append(bytes((data_size,)))
        elif data_size < 0x10000:
            flags |= DATA_U16
            parts.append(data_size.to_bytes(2, "little"))
        elif data_size < _U48:
            flags |= DATA_U48
            parts.append(data_size.to_bytes(6, "little"))
        else:
            raise LocalProtocolError(f"data of {data_size} bytes is over the protocol's 2^48")
    if files:
        count = len(files)
        if count < 0x100:
            flags |= _FILES_U8
            parts.append(bytes((count,)))
        elif count < 0x10000:
            flags |= _FILES_U16
            parts.append(count.to_bytes(2, "little"))
        elif count < 0x1000000:
            flags |= _FILES_U24
            parts.append(count.to_bytes(3, "little"))
        else:
            raise LocalProtocolError(f"{count} files are over the protocol's 2^24 - 1")
        total = sum(size for _, size in files)
        if total < 0x10000:
            parts.append(total.to_bytes(2, "little"))
        elif total < 0x1000000:
            flags |= _TOTAL_U24
            parts.append(total.to_bytes(3, "little"))
        elif total < 0x100000000:
            flags |= _TOTAL_U32
            parts.append(total.to_bytes(4, "little"))
        elif total < _U48:
            flags |= _TOTAL_U48
            parts.append(total.to_bytes(6, "little"))
        else:
            raise LocalProtocolError(f"files of {total} bytes in all are over 2^48")
        for name, size in files:
            if size < 0x100:
                head, size_bytes = 0, bytes((size,))
            elif size < 0x10000:
                head, size_bytes = _FILE_SIZE_U16, size.to_bytes(2, "little")
            elif size < 0x1000000:
                head, size_bytes = _FILE_SIZE_U24, size.to_bytes(3, "little")
            elif size < _U48:
                head, size_bytes = _FILE_SIZE_U48, size.to_bytes(6, "little")
            else:
                raise LocalProtocolError(f"a file of {size} bytes is over 2^48")
            if len(name) < 0x100:
                parts.append(bytes((head,)) + size_bytes + bytes((len(name),)) + name)
            elif len(name) < 0x10000:
                parts.append(
                    bytes((head | _NAME_U16,)) + size_bytes + len(name).to_bytes(2, "little")
                )
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
        flags |= ACTION_U16
        action_part = n.to_bytes(2, "little") + action
    else:
        raise LocalProtocolError("an action name is over 65,535 bytes")
    body = bytes((flags,)) + message_id + action_part + rest
    type_bits = (
        TYPE_MESSAGE
        | (HAS_STREAM if has_stream else 0)
        | (EXPECTS_RESPONSE if expects_response else 0)
    )
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
    type_bits = (
        TYPE_RESPONSE
        | (HAS_STREAM if has_stream else 0)
        | (EXPECTS_RESPONSE if expects_response else 0)
    )
    return sized_prefix(type_bits, len(body)) + body
