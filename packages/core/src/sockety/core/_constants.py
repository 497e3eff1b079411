"""Wire constants of the Sockety protocol (see PROTOCOL.md)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["MAX_CHANNELS", "MAX_FAST_REPLY_CODE", "FastReply", "PacketType"]

#: The protocol's channel ids are 12-bit: 4096 channels at most.
MAX_CHANNELS = 4096
#: Fast-reply codes are 12-bit too.
MAX_FAST_REPLY_CODE = 4095


class PacketType(IntEnum):
    """The high nibble of a packet's first byte."""

    SWITCH_CHANNEL_LOW = 0x0
    SWITCH_CHANNEL_HIGH = 0x1
    MESSAGE = 0x2
    FAST_REPLY_LOW = 0x3
    FAST_REPLY_HIGH = 0x4
    RESPONSE = 0x5
    CONTINUE = 0x6
    STREAM = 0x7
    STREAM_END = 0x8
    ABORT = 0x9
    HEARTBEAT = 0xA
    GO_AWAY = 0xB
    FILE = 0xC
    FILE_END = 0xD
    DATA = 0xE


class FastReply(IntEnum):
    """Fast-reply codes in use by convention; any int 0..4095 is valid on the wire."""

    ACCEPT = 0
    REJECT = 1
    NOT_IMPLEMENTED = 2
    UNAUTHORIZED = 3
    BAD_REQUEST = 4
    INTERNAL_ERROR = 5
