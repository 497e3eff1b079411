"""Sending files: their bytes from memory, from disk or from async iterators, through the port.

Rules:
    * Files given in memory are queued at once, whole (the core packetizes and paces them).
    * Files from disk or iterators are read ``FILE_CHUNK`` bytes at a time, each chunk queued
      only once the exchange is writable again: at most about ``stream_buffer_limit`` of a file
      is held in memory, whatever its size.
    * A file must have exactly its declared size: a source that gives more or fewer bytes raises
      :class:`FileSizeError` (the transfer then aborts the exchange).
"""

from __future__ import annotations

from typing import Any

from .._errors import FileSizeError
from ._drafts import FileTransfer
from ._port import Port

__all__ = ["FILE_CHUNK", "in_memory", "pump", "queue_in_memory"]

FILE_CHUNK = 256 * 1024  # read size for files sent from disk or iterators


def in_memory(files: tuple[FileTransfer, ...]) -> bool:
    """Whether every file's content is in memory (they can be queued at once)."""
    return all(file.content is not None for file in files)


def queue_in_memory(port: Port[Any], raw_id: bytes, files: tuple[FileTransfer, ...]) -> None:
    """Queues files whose content is in memory, whole, and ends them."""
    for index, file in enumerate(files):
        content = file.content
        if content:
            port.send_file(raw_id, index, content)
        port.end_file(raw_id, index)


async def pump(port: Port[Any], raw_id: bytes, files: tuple[FileTransfer, ...]) -> None:
    """Sends the files of the exchange ``raw_id`` one after the other, chunk by chunk as it
    becomes writable; raises FileSizeError (or the source's own error) if one fails."""
    for index, file in enumerate(files):
        sent = 0
        if file.content is not None:
            if file.content:
                port.send_file(raw_id, index, file.content)
            sent = len(file.content)
        elif file.path is not None:
            with file.path.open("rb") as source:
                while chunk := source.read(FILE_CHUNK):
                    sent += len(chunk)
                    if sent > file.size:
                        break
                    port.send_file(raw_id, index, chunk)
                    port.flush()
                    await port.writable(raw_id)
        elif file.source is not None:
            async for chunk in file.source:
                sent += len(chunk)
                if sent > file.size:
                    break
                port.send_file(raw_id, index, bytes(chunk))
                port.flush()
                await port.writable(raw_id)
        if sent != file.size:
            raise FileSizeError(
                f"file {file.name!r} declared {file.size} bytes but "
                f"{'more' if sent > file.size else sent} were given"
            )
        port.end_file(raw_id, index)
        port.flush()
