"""Flow control on the read side: what arrived and waits for the application pauses reading.

Rules:
    * Stream and file chunks, and the data of queued messages, count as received-but-unconsumed
      bytes until the application takes them. Past ``max_receive_buffer`` of them, or
      ``max_queued_messages`` messages waiting (in ``async for``, or for a free handler),
      reading pauses; it resumes once they fell to half (and under the message limit).
    * Reading also pauses while the peer does not read the answers its requests made
      (``pause_for_backlog``), until it reads again (``end_backlog``).
    * While reading is paused, the peer's silence is ours: the idle timeout does not count it.
"""

from __future__ import annotations

import asyncio
from typing import final

__all__ = ["ReadFlow"]


@final
class ReadFlow:
    """Pauses and resumes reading the peer by what waits for the application."""

    def __init__(self, *, max_receive_buffer: int, max_queued_messages: int) -> None:
        self._transport: asyncio.Transport | None = None
        self._max = max_receive_buffer
        self._max_queued = max_queued_messages
        #: Whether reading is paused (the peer's bytes wait in its socket).
        self.paused = False
        #: Whether it is paused because the peer does not read our answers.
        self.backlog_paused = False
        #: Received bytes the application did not consume yet.
        self.buffered = 0
        #: Messages waiting for the application (in the inbox, or for a free handler).
        self.queued = 0

    def attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def detach(self) -> None:
        self._transport = None

    def received(self, size: int) -> None:
        """``size`` bytes arrived for a reader (a stream or file chunk)."""
        self.buffered += size
        if self.buffered > self._max:
            self.pause()

    def consumed(self, size: int) -> None:
        """The application took (or dropped) ``size`` of those bytes."""
        self.buffered -= size
        if self.paused and self.buffered <= self._max // 2:
            self.resume()

    def queue_message(self, size: int) -> None:
        """A message with ``size`` bytes of data waits for the application."""
        self.queued += 1
        if size:
            self.received(size)
        if self.queued >= self._max_queued:
            self.pause()

    def unqueue_message(self, size: int) -> None:
        """A waiting message was taken (call ``resume`` when the moment suits)."""
        self.queued -= 1
        self.buffered -= size

    def pause(self) -> None:
        if not self.paused and self._transport is not None:
            self.paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        """Resumes reading if nothing holds it paused any more."""
        if (
            self.paused
            and not self.backlog_paused
            and self._transport is not None
            and self.queued < self._max_queued
            and self.buffered <= self._max // 2
        ):
            self.paused = False
            self._transport.resume_reading()

    def pause_for_backlog(self) -> None:
        """The peer does not read what its requests made us write: stop reading them."""
        if not self.backlog_paused:
            self.backlog_paused = True
            self.pause()

    def end_backlog(self) -> None:
        """The peer reads again."""
        if self.backlog_paused:
            self.backlog_paused = False
            self.resume()
