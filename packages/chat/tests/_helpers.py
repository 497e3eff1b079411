"""Shared helpers: run a coroutine with a bound, wait for a condition without sleeping blindly,
and collect a ChatClient's events."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sockety.chat import ChatClient, ChatEvent, ChatServer, FileUpdated

T = TypeVar("T")
HOST = "127.0.0.1"
FIXED = datetime(2024, 5, 17, 9, 30, 0, tzinfo=UTC)


def run(main: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main

    return asyncio.run(bounded())


async def until(condition: Callable[[], Any], timeout: float = 10, what: str = "") -> None:
    """Waits for ``condition()`` (checked every loop turn-ish), failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.01)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def counter_names(prefix: str = "anon_") -> Callable[[], str]:
    count = iter(range(1, 1_000_000))
    return lambda: f"{prefix}{next(count):04d}"


class Peer:
    """A ChatClient running in the background, with its events recorded."""

    def __init__(self, port: int, name: str | None, downloads: Path | None = None, **kw: Any):
        self.events: list[ChatEvent] = []
        #: (name, bytes received) at each FileUpdated: the event carries the live object.
        self.progress: list[tuple[str, int]] = []
        self.client = ChatClient(
            HOST,
            port,
            name=name,
            on_event=self._record,
            backoff=(0.05, 0.2),
            downloads=downloads,
            **kw,
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Peer:
        self.task = asyncio.get_running_loop().create_task(self.client.run())
        wanted = self.client.wanted_name
        await until(
            lambda: self.client.connected and (wanted is None or self.client.name == wanted),
            what=f"{wanted} to join",
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)

    def _record(self, event: ChatEvent) -> None:
        self.events.append(event)
        if isinstance(event, FileUpdated):
            self.progress.append((event.file.name, event.file.received))

    def of(self, kind: type[T]) -> list[T]:
        return [event for event in self.events if isinstance(event, kind)]


async def start_server(**options: Any) -> ChatServer:
    server = ChatServer(close_timeout=1.0, **options)
    await server.start(HOST, 0)
    return server
