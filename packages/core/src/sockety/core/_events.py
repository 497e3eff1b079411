"""Events the sans-IO connection reports, named for what already happened.

They are NamedTuples: cheap to create on the hot path, immutable, and easy to compare in tests.
``id`` and ``parent_id`` are the 16 raw bytes of a UUID; ``channel`` is the channel the packet
arrived on.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "Aborted",
    "ConnectionClosed",
    "ConnectionOpened",
    "Event",
    "FastReplyReceived",
    "FileChunkReceived",
    "FileEnded",
    "FileHeader",
    "GoAwayReceived",
    "HeartbeatReceived",
    "MessageReceived",
    "ResponseReceived",
    "StreamChunkReceived",
    "StreamEnded",
]


class FileHeader(NamedTuple):
    """A file announced in a Message or Response header."""

    name: str
    size: int


class ConnectionOpened(NamedTuple):
    """The peer's connection header arrived."""

    #: How many channels the peer receives on (what it announced).
    peer_channels: int
    #: How many channels this side will use to send: min(own limit, peer_channels).
    send_channels: int


class MessageReceived(NamedTuple):
    """A Message arrived: its header and all of its data (data is held in memory, bounded by
    ``max_data_size``). Its stream and files, if any, follow as further events."""

    channel: int
    id: bytes
    action: str
    expects_response: bool
    has_stream: bool
    files: tuple[FileHeader, ...]
    data: bytes | bytearray


class ResponseReceived(NamedTuple):
    """A Response to the message ``parent_id`` arrived, with all of its data."""

    channel: int
    parent_id: bytes
    id: bytes
    expects_response: bool
    has_stream: bool
    files: tuple[FileHeader, ...]
    data: bytes | bytearray


class StreamChunkReceived(NamedTuple):
    """Bytes of the stream attached to the message/response ``id``."""

    channel: int
    id: bytes
    chunk: bytes


class StreamEnded(NamedTuple):
    """The stream of the message/response ``id`` ended."""

    channel: int
    id: bytes


class FileChunkReceived(NamedTuple):
    """Bytes of file ``file_index`` of the message/response ``id``."""

    channel: int
    id: bytes
    file_index: int
    chunk: bytes


class FileEnded(NamedTuple):
    """File ``file_index`` of the message/response ``id`` is complete (its declared size
    arrived)."""

    channel: int
    id: bytes
    file_index: int


class FastReplyReceived(NamedTuple):
    """The message ``id`` was answered with a fast-reply code (0..4095)."""

    id: bytes
    code: int


class Aborted(NamedTuple):
    """The peer aborted the message/response ``id`` in progress on ``channel``; whatever of its
    data, stream or files was still unfinished will not arrive."""

    channel: int
    id: bytes


class HeartbeatReceived(NamedTuple):
    """The peer sent a Heartbeat."""


class GoAwayReceived(NamedTuple):
    """The peer will start no new messages. ``unsent`` lists the ids of our own messages that were
    still queued for a channel and now will never be sent (PROTOCOL.md Decision 2)."""

    unsent: tuple[bytes, ...]


class ConnectionClosed(NamedTuple):
    """The byte stream ended. ``clean`` is False when it ended inside a packet or while an
    incoming message/response was unfinished."""

    clean: bool


Event = (
    ConnectionOpened
    | MessageReceived
    | ResponseReceived
    | StreamChunkReceived
    | StreamEnded
    | FileChunkReceived
    | FileEnded
    | FastReplyReceived
    | Aborted
    | HeartbeatReceived
    | GoAwayReceived
    | ConnectionClosed
)
