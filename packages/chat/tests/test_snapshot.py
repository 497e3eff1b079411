"""Snapshots of the screen with deterministic content: fixed names, a fixed clock, UTC, the
address shown as a fixed one, seeded retry jitter. Regenerate with ``pytest --snapshot-update``
(and look at the pictures: ``python -m tests.render_snapshots`` turns them into PNGs)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input, Static

from sockety.chat import ChatClient, ChatServer
from sockety.chat._app import ChatApp, LogView

from ._helpers import FIXED, HOST, counter_names, until


class SnapshotApp(ChatApp):
    """The real app, plus a scripted peer (bob) that lives as long as the app does."""

    ALERT_TIMEOUT = 600.0  # the mention's notification stays until the picture is taken

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        super().__init__(
            HOST,
            0,
            name="alice",
            server=ChatServer(
                clock=lambda: FIXED, anon_name=counter_names(), close_timeout=1, join_grace=0.1
            ),
            downloads=tmp_path,
            clock=lambda: FIXED,
            timezone=UTC,
            **options,
        )
        self.bob: ChatClient | None = None

    def shown_address(self) -> str:
        return "127.0.0.1:9000"  # the real port is a free one, different every run

    async def start_bob(self) -> ChatClient:
        await until(lambda: self.client is not None and self.client.name == "alice")
        self.query_one("#input", Input).cursor_blink = False
        self.bob = bob = ChatClient(HOST, self.port, name="bob", backoff=(0.05, 0.2))
        task = asyncio.get_running_loop().create_task(bob.run())
        self._tasks.add(task)
        await until(lambda: bob.name == "bob" and self.client is not None)
        await until(lambda: self.client is not None and "bob" in self.client.users)
        await until(lambda: any("bob joined" in t for t in self.transcript), what="join line")
        return bob

    async def on_unmount(self) -> None:
        if self.bob is not None:
            await self.bob.stop()
        await super().on_unmount()


def test_main_screen_with_a_file_offer(snap_compare: Any, tmp_path: Path) -> None:
    shared = tmp_path / "notes.txt"
    shared.write_text("meeting notes\n" * 100)
    app = SnapshotApp(tmp_path / "downloads")

    async def script(pilot: Pilot[None]) -> None:
        bob = await app.start_bob()
        await bob.say("hi @alice, the notes from this morning:")
        await bob.offer_file(shared)
        await until(lambda: app.client is not None and 1 in app.client.files, what="offer")
        await bob.say("waves", me=True)
        await until(lambda: any("* bob waves" in t for t in app.transcript), what="/me")
        await pilot.press(*"thanks @b", "tab")
        await pilot.press(*"will read")
        bob.typing("also, lunch at no")
        await until(lambda: "bob is typing" in str(app.query_one("#typing").render()))
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 28), run_before=script)


def test_scrolled_up_with_new_messages_below(snap_compare: Any, tmp_path: Path) -> None:
    app = SnapshotApp(tmp_path / "downloads")

    async def script(pilot: Pilot[None]) -> None:
        bob = await app.start_bob()
        for i in range(30):
            await bob.say(f"line {i} of the morning's discussion")
        await until(lambda: any("line 29" in t for t in app.transcript), what="lines")
        await pilot.pause()
        await pilot.press("pageup")
        await pilot.pause()
        await bob.say("a new one while alice reads")
        await bob.say("and another")
        below = app.query_one("#below", Static)
        await until(lambda: "2 new messages below" in str(below.render()), what="marker")
        assert not app.query_one("#log", LogView).following
        await pilot.pause()

    assert snap_compare(app, terminal_size=(90, 24), run_before=script)


def test_reconnecting(snap_compare: Any, tmp_path: Path) -> None:
    random.seed(16)  # the retry delay's jitter
    app = SnapshotApp(tmp_path / "downloads", backoff=(30.0, 30.0))

    async def script(pilot: Pilot[None]) -> None:
        bob = await app.start_bob()
        await bob.stop()  # (its retries would draw from the seeded jitter too)
        await until(lambda: any("bob left" in t for t in app.transcript), what="bob leaves")
        assert app._server is not None
        await app._server.close()
        await until(lambda: any("reconnecting in" in t for t in app.transcript), what="lost")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(90, 20), run_before=script)
