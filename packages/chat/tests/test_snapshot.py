"""Snapshot of the main screen with deterministic content: fixed names, a fixed clock, UTC,
and the address shown as a fixed one. Regenerate with ``pytest --snapshot-update``."""

from __future__ import annotations

import asyncio
from datetime import UTC
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input

from sockety.chat import ChatClient, ChatServer
from sockety.chat._app import ChatApp

from ._helpers import FIXED, HOST, counter_names, until


class SnapshotApp(ChatApp):
    """The real app, plus a scripted peer (bob) that lives as long as the app does."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(
            HOST,
            0,
            name="alice",
            server=ChatServer(clock=lambda: FIXED, anon_name=counter_names(), close_timeout=1),
            downloads=tmp_path,
            clock=lambda: FIXED,
            timezone=UTC,
        )
        self.bob: ChatClient | None = None
        self.bob_task: asyncio.Task[Any] | None = None

    def shown_address(self) -> str:
        return "127.0.0.1:9000"  # the real port is a free one, different every run

    async def on_unmount(self) -> None:
        if self.bob is not None:
            await self.bob.stop()
        await super().on_unmount()


def test_main_screen(snap_compare: Any, tmp_path: Path) -> None:
    shared = tmp_path / "notes.txt"
    shared.write_text("meeting notes\n" * 100)
    app = SnapshotApp(tmp_path / "downloads")

    async def script(pilot: Pilot[None]) -> None:
        app.query_one("#input", Input).cursor_blink = False
        await until(lambda: app.client is not None and app.client.name == "alice")
        app.bob = bob = ChatClient(HOST, app.port, name="bob", backoff=(0.05, 0.2))
        app.bob_task = asyncio.get_running_loop().create_task(bob.run())
        await until(lambda: bob.name == "bob" and "bob" in (app.client.users if app.client else ()))
        await bob.say("hi @alice, the notes from this morning:")
        await bob.send_file(shared)
        await until(lambda: app.client is not None and app.client.files[-1].state == "received")
        await pilot.press(*"thanks @b", "tab")
        await pilot.press(*"will read")
        bob.typing("also, lunch at no")
        await until(lambda: "bob is typing" in str(app.query_one("#typing").render()))
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 28), run_before=script)
