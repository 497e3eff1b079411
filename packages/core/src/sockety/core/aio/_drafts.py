"""Drafts: reusable message and response shapes, prepared once and cheap to send.

A draft fixes the action (for messages) and the kind of content; calling it makes a prepared
message or response::

    ping = Draft("ping")                                  # no content
    log = Draft("log", data="msgpack")                    # msgpack data
    upload = Draft("upload", data="bytes", files=True)    # raw bytes and files
    talk = Draft("talk", stream=True)                     # an attached stream

    await client.send(log({"level": "info"}))
    reply = await client.request(ping())
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgpack
from mypy_extensions import mypyc_attr

from .._errors import LocalProtocolError

__all__ = ["Draft", "FileTransfer", "Outgoing", "ResponseDraft"]

DataKind = Literal["bytes", "msgpack"] | None
_packb = msgpack.Packer(autoreset=True).pack


class FileTransfer:
    """A file to send: a name, a declared size, and where its bytes come from.

    The size is sent before the content, so it must be right: a source that yields more or fewer
    bytes fails the exchange with :class:`~sockety.core.FileSizeError` instead of corrupting it.
    """

    __slots__ = ("content", "name", "path", "size", "source")

    def __init__(
        self,
        name: str,
        size: int,
        *,
        content: bytes | bytearray | memoryview | None = None,
        path: Path | None = None,
        source: AsyncIterable[bytes] | None = None,
    ) -> None:
        self.name = name
        self.size = size
        self.content = content
        self.path = path
        self.source = source

    @classmethod
    def from_bytes(cls, content: bytes | bytearray | memoryview, name: str) -> FileTransfer:
        """A file whose content is in memory."""
        return cls(name, len(content), content=content)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], name: str | None = None) -> FileTransfer:
        """A file read from disk in chunks while it is sent (never whole into memory)."""
        file_path = Path(path)
        return cls(name or file_path.name, file_path.stat().st_size, path=file_path)

    @classmethod
    def from_iterator(cls, source: AsyncIterable[bytes], name: str, size: int) -> FileTransfer:
        """A file whose bytes come from an async iterator; ``size`` must be exact."""
        return cls(name, size, source=source)

    def __repr__(self) -> str:
        return f"FileTransfer({self.name!r}, size={self.size})"


class Outgoing:
    """A prepared message or response: made by calling a draft, sent by a connection."""

    __slots__ = ("action", "data", "files", "header_files", "stream")

    def __init__(
        self,
        action: bytes,
        data: bytes | bytearray | memoryview,
        files: tuple[FileTransfer, ...],
        stream: bool,
    ) -> None:
        self.action = action
        self.data = data
        self.files = files
        self.header_files = tuple((file.name, file.size) for file in files) if files else ()
        self.stream = stream

    def __repr__(self) -> str:
        return (
            f"<Outgoing {self.action.decode()!r} data={len(self.data)} B "
            f"files={len(self.files)} stream={self.stream}>"
        )


@mypyc_attr(allow_interpreted_subclasses=True)  # users may extend drafts (compiled build)
class _BaseDraft:
    __slots__ = ("_action", "_data", "_empty", "_files", "_stream")

    def __init__(self, action: bytes, data: DataKind, files: bool, stream: bool) -> None:
        if data not in (None, "bytes", "msgpack"):
            raise ValueError("data must be None, 'bytes' or 'msgpack'")
        self._action = action
        self._data = data
        self._files = files
        self._stream = stream
        # A draft without data and files always prepares the same (immutable) thing.
        self._empty = None if data or files else Outgoing(action, b"", (), stream)

    def __call__(self, data: Any = None, *, files: Sequence[FileTransfer] = ()) -> Outgoing:
        if self._empty is not None:
            if data is not None or files:
                raise LocalProtocolError("this draft takes no data and no files")
            return self._empty
        if files and not self._files:
            raise LocalProtocolError("this draft takes no files")
        if self._data == "msgpack":
            payload: bytes | bytearray | memoryview = _packb(data)
        elif self._data == "bytes":
            if data is None:
                payload = b""
            elif isinstance(data, bytes | bytearray | memoryview):
                payload = data
            else:
                raise TypeError(f"raw data must be bytes-like, not {type(data).__name__}")
        else:
            if data is not None:
                raise LocalProtocolError("this draft takes no data")
            payload = b""
        return Outgoing(self._action, payload, tuple(files) if files else (), self._stream)


@mypyc_attr(allow_interpreted_subclasses=True)
class Draft(_BaseDraft):
    """The shape of a message: an action and the kind of its content.

    ``data`` is ``None`` (no data), ``"bytes"`` (raw bytes) or ``"msgpack"`` (any object msgpack
    can encode); ``files`` allows files; ``stream`` attaches a stream the sender writes.
    """

    __slots__ = ()

    def __init__(
        self, action: str, *, data: DataKind = None, files: bool = False, stream: bool = False
    ) -> None:
        encoded = action.encode()
        if not encoded or len(encoded) > 0xFFFF:
            raise ValueError("an action is 1..65535 bytes of UTF-8")
        super().__init__(encoded, data, files, stream)

    @property
    def action(self) -> str:
        return self._action.decode()

    def __repr__(self) -> str:
        return (
            f"Draft({self.action!r}, data={self._data!r}, files={self._files}, "
            f"stream={self._stream})"
        )


@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseDraft(_BaseDraft):
    """The shape of a response: the kind of its content (like :class:`Draft`, no action)."""

    __slots__ = ()

    def __init__(self, *, data: DataKind = None, files: bool = False, stream: bool = False) -> None:
        super().__init__(b"", data, files, stream)

    def __repr__(self) -> str:
        return f"ResponseDraft(data={self._data!r}, files={self._files}, stream={self._stream})"
