"""The real Textual app, driven by Pilot, against a real chat server on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from textual import events
from textual.widgets import Input, ProgressBar, Static

from sockety.chat import ChatMessage, ChatServer, PrivateMessage, TypingChanged
from sockety.chat._app import ChatApp, LogView

from ._helpers import HOST, Peer, digest, run, start_server, until


def make_app(port: int, name: str | None, tmp_path: Path, **options: Any) -> ChatApp:
    return ChatApp(
        HOST, port, name=name, downloads=tmp_path / "downloads", backoff=(0.05, 0.2), **options
    )


async def joined(app: ChatApp, name: str) -> None:
    await until(lambda: app.client is not None and app.client.name == name, what=f"{name}")


async def enter(pilot: Any, app: ChatApp, text: str) -> None:
    app.query_one("#input", Input).value = text
    await pilot.press("enter")
    await pilot.pause()


def typing_text(app: ChatApp) -> str:
    return str(app.query_one("#typing", Static).render())


def test_app_chats_with_live_typing_both_ways(tmp_path: Path) -> None:
    """One Pilot-driven app and a ChatClient peer (two Textual apps in one event loop do not
    shut down cleanly under run_test, so the other side is the UI-free client the app uses)."""

    async def main() -> None:
        server = await start_server()
        app = make_app(server.port, "alice", tmp_path)
        async with (
            Peer(server.port, "bob") as bob,
            Peer(server.port, "carol") as carol,
            app.run_test(size=(100, 30)) as pilot,
        ):
            await joined(app, "alice")
            await until(lambda: "carol" in str(app.query_one("#users", Static).render()))
            # Alice types: Bob sees the live line grow; Tab completes a mention.
            await pilot.press(*"hello ")
            await until(lambda: bob.of(TypingChanged), what="live line")
            await until(lambda: bob.of(TypingChanged)[-1].text == "hello ", what="hello")
            await pilot.press("@", "b", "tab")
            assert app.query_one("#input", Input).value == "hello @bob "
            await until(lambda: bob.of(TypingChanged)[-1].text == "hello @bob ", what="@bob")
            await pilot.press(*"there", "enter")
            for peer in (bob, carol):
                await until(lambda p=peer: p.of(ChatMessage), what="message")
                await until(lambda p=peer: p.of(TypingChanged)[-1].text is None, what="resolved")
                assert peer.of(ChatMessage)[-1].content == "hello @bob there"
            await until(lambda: any("alice: hello @bob there" in t for t in app.transcript))
            # Bob types: Alice's screen shows the live line, then the message replaces it.
            bob.client.typing("hi @ali")
            await until(lambda: "bob is typing: hi @ali" in typing_text(app), what="bob's line")
            assert not app.query_one("#typing").has_class("-empty")
            await bob.client.say("hi @alice")
            await until(lambda: any("bob: hi @alice" in t for t in app.transcript))
            await until(lambda: app.query_one("#typing").has_class("-empty"), what="line gone")
            # A line cleared before Enter disappears too, and is never sent.
            await pilot.press(*"hmm")
            await until(lambda: carol.of(TypingChanged)[-1].text == "hmm", what="hmm")
            await pilot.press("backspace", "backspace", "backspace")
            await until(lambda: carol.of(TypingChanged)[-1].text is None, what="cleared")
            assert [m.content for m in carol.of(ChatMessage)] == ["hello @bob there", "hi @alice"]
        await server.close()

    run(main(), timeout=40)


def test_commands_and_rejected_input(tmp_path: Path) -> None:
    async def main() -> None:
        server = await start_server()
        app = make_app(server.port, "alice", tmp_path)
        async with Peer(server.port, "bob") as bob, app.run_test(size=(100, 30)) as pilot:
            await joined(app, "alice")

            async def enter(text: str) -> None:
                app.query_one("#input", Input).value = text
                await pilot.press("enter")
                await pilot.pause()

            await until(lambda: "bob" in (app.client.users if app.client else ()))
            await enter("/name bob")
            await until(lambda: "✗ the name bob is taken" in app.transcript[-1], what="dup")
            await enter("/name x")
            await until(lambda: "✗ invalid name 'x'" in app.transcript[-1], what="invalid")
            await enter("   ")
            assert "✗ empty message: nothing sent" in app.transcript[-1]
            await enter("/frobnicate")
            assert "unknown command /frobnicate" in app.transcript[-1]
            await enter("/name carol")
            await until(lambda: app.client is not None and app.client.name == "carol")
            await until(lambda: "carol" in bob.client.users, what="bob sees carol")
            assert "Sockety chat" in app.title and app.sub_title.startswith("carol @ ")
            await enter("/users")
            assert app.transcript[-1].endswith("2 here: bob, carol")
            await enter("/help")
            assert any("/send PATH" in t for t in app.transcript)
            await enter("//not a command")
            await until(lambda: bob.of(ChatMessage), what="escaped slash")
            assert bob.of(ChatMessage)[-1].content == "/not a command"
            await enter("/quit")
            await until(lambda: not app.is_running, what="quit")
        await server.close()

    run(main(), timeout=40)


def test_files_are_offered_and_got_with_progress(tmp_path: Path) -> None:
    source = tmp_path / "report.bin"
    source.write_bytes(os.urandom(2 * 1024 * 1024 + 3))

    async def main() -> None:
        server = await start_server()
        app = make_app(server.port, "alice", tmp_path / "a")
        async with (
            Peer(server.port, "bob", downloads=tmp_path / "bob") as bob,
            app.run_test(size=(100, 14)) as pilot,
        ):
            await joined(app, "alice")
            assert app.client is not None
            # Alice offers from the app; Bob gets it intact.
            await enter(pilot, app, f"/send {source}")
            await until(lambda: bob.client.files, what="the offer")
            bob.client.get()
            await until(lambda: bob.client.files[1].state == "saved", what="bob's copy")
            assert digest(bob.client.files[1].saved_to or Path()) == digest(source)
            await until(lambda: "1 copy asked" in str(app.query("#log Static").last().render()))
            # Bob offers; Alice's card says how to get it; /get N DIR puts it where she says.
            await bob.client.offer_file(source)
            await until(lambda: app.client.files, what="offer seen")
            card = app.query("FileCard").last()
            await until(lambda: "/get 2 to receive it" in str(card.query_one(Static).render()))
            assert not card.query_one(ProgressBar).display
            await enter(pilot, app, f"/get 2 {tmp_path / 'chosen'}")
            await until(lambda: app.client.files[2].state == "saved", what="saved")
            saved = app.client.files[2].saved_to
            assert saved == tmp_path / "chosen" / "report.bin"
            assert digest(saved) == digest(source)
            await until(lambda: "saved to" in str(card.query_one(Static).render()), what="label")
            await pilot.pause()
            assert card.query_one(ProgressBar).progress == source.stat().st_size
            # The card grew (its progress bar appeared, its label got longer) at the end of the
            # log: its last row is in view, not cut off below.
            log = app.query_one("#log", LogView)
            await until(lambda: log.max_scroll_y > 0, what="a log taller than its view")
            await until(
                lambda: card.region.bottom == log.content_region.bottom, what="the end in view"
            )
        await server.close()

    run(main(), timeout=40)


def test_server_lost_then_back(tmp_path: Path) -> None:
    async def main() -> None:
        server = await start_server()
        port = server.port
        app = make_app(port, "alice", tmp_path)
        async with app.run_test(size=(100, 30)):
            await joined(app, "alice")
            await server.close()
            await until(lambda: any("reconnecting in" in t for t in app.transcript), what="lost")
            assert app.sub_title == "reconnecting…"
            assert app.is_running  # no traceback, no exit
            restarted = ChatServer(close_timeout=1.0)
            await restarted.start(HOST, port)
            await until(lambda: restarted.names == ["alice"], what="back under the same name")
            await until(lambda: app.sub_title.startswith("alice @"), what="title")
            assert sum("Connected to" in t for t in app.transcript) == 1
            await until(lambda: any("Reconnected to" in t for t in app.transcript))
            # One line for the outage: the first reason, retries counted on it.
            assert sum("✗ the server closed the connection" in t for t in app.transcript) >= 1
        await restarted.close()

    run(main(), timeout=40)


def test_moved_to_the_next_server_shows_where_it_is(tmp_path: Path) -> None:
    """Given several addresses, the app says (and shows in its title) the server it is on,
    not the first address it was given."""

    async def main() -> None:
        first, second = await start_server(), await start_server()
        app = make_app(first.port, "alice", tmp_path, others=[(HOST, second.port)])
        async with app.run_test(size=(100, 30)):
            await joined(app, "alice")
            assert app.sub_title == f"alice @ {HOST}:{first.port}"
            await first.close()
            await until(lambda: second.names == ["alice"], what="on the second server")
            await until(lambda: any("Reconnected to" in t for t in app.transcript))
            assert any(f"Reconnected to {HOST}:{second.port}" in t for t in app.transcript)
            await until(lambda: app.sub_title == f"alice @ {HOST}:{second.port}", what="title")
        await second.close()

    run(main(), timeout=40)


def test_embedded_server(tmp_path: Path) -> None:
    """``sockety-chat`` without a command: the app starts its own server and joins it."""

    async def main() -> None:
        app = make_app(0, "alice", tmp_path, server=ChatServer(close_timeout=1.0))
        async with app.run_test(size=(100, 30)):
            await joined(app, "alice")
            assert app.port != 0
            assert app.transcript[0].startswith("── ")  # the day
            assert "others join with `sockety-chat join" in app.transcript[1]
            async with Peer(app.port, "bob") as bob:
                bob.client.typing("hi")
                await until(lambda: "bob is typing: hi" in typing_text(app), what="typing")
                assert not bob.of(TypingChanged)

    run(main(), timeout=40)


def burst(app: ChatApp, text: str) -> None:
    """Hands keys to the app the way its driver does, all at once (as a terminal delivers a
    fast typist's or a paste's bytes), without waiting for any of them to be handled."""
    driver = app._driver
    assert driver is not None
    for char in text:
        if char == "\n":
            event = events.Key("enter", "\r")
        elif char == " ":
            event = events.Key("space", " ")
        else:
            event = events.Key(char, char)
        event.set_sender(app)
        driver.send_message(event)


def test_500_lines_typed_in_a_burst_arrive_once_each_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        server = await start_server()
        app = make_app(server.port, "alice", tmp_path)
        async with Peer(server.port, "bob") as bob, app.run_test(size=(100, 30)):
            await joined(app, "alice")
            lines = [f"rapid {i}" for i in range(500)]
            burst(app, "".join(f"{line}\n" for line in lines))
            await until(lambda: len(bob.of(ChatMessage)) >= 500, timeout=30, what="500 lines")
            assert [m.content for m in bob.of(ChatMessage)] == lines
            assert all(m.author == "alice" for m in bob.of(ChatMessage))
            assert app.query_one("#input", Input).value == ""
            assert app.client is not None
            await until(lambda: app.client is not None and app.client.pending == 0)
            assert not any("✗" in t for t in app.transcript)
            # The log keeps the latest 500 entries.
            log = app.query_one("#log", LogView)
            await until(lambda: any("rapid 499" in t for t in app.transcript), what="echoes")
            await until(lambda: len(log.children) == 500, what="the oldest entries gone")
        await server.close()

    run(main(), timeout=60)


def test_a_500_line_paste_is_sent_line_by_line(tmp_path: Path) -> None:
    async def main() -> None:
        server = await start_server()
        app = make_app(server.port, "alice", tmp_path)
        async with Peer(server.port, "bob") as bob, app.run_test(size=(100, 30)) as pilot:
            await joined(app, "alice")
            lines = [f"pasted line {i}" for i in range(500)]
            lines[7] = "/quit is text here, not a command"
            await pilot.press(*"say: ")
            # A paste: its lines are sent (what was typed before joins the first one); the
            # last line, without a newline after it, waits in the input as in a shell.
            driver = app._driver
            assert driver is not None
            paste = events.Paste("\r\n".join(lines) + "\r\nunfinished")
            paste.set_sender(app)
            driver.send_message(paste)
            await until(lambda: len(bob.of(ChatMessage)) >= 500, timeout=30, what="500 lines")
            assert [m.content for m in bob.of(ChatMessage)] == ["say: " + lines[0], *lines[1:]]
            assert app.query_one("#input", Input).value == "unfinished"
            assert app.is_running
            await until(lambda: any("pasted 500 lines" in t for t in app.transcript))
        await server.close()

    run(main(), timeout=60)


def test_history_scrolling_marker_and_following(tmp_path: Path) -> None:
    async def main() -> None:
        server = await start_server()
        app = make_app(server.port, "alice", tmp_path)
        async with Peer(server.port, "bob") as bob, app.run_test(size=(80, 24)) as pilot:
            await joined(app, "alice")
            await enter(pilot, app, "first line")
            await enter(pilot, app, "/me waves")
            box = app.query_one("#input", Input)
            await pilot.press(*"draft")
            await pilot.press("up")
            assert box.value == "/me waves"
            await pilot.press("up")
            assert box.value == "first line"
            await pilot.press("down", "down")
            assert box.value == "draft"  # back to what was being typed
            await until(lambda: any("* alice waves" in t for t in app.transcript))
            # Enough to scroll; the log follows the end.
            for i in range(40):
                await bob.client.say(f"filler {i}")
            await until(lambda: any("filler 39" in t for t in app.transcript))
            await pilot.pause()
            log = app.query_one("#log", LogView)
            await until(lambda: log.scroll_y == log.max_scroll_y > 0, what="at the end")
            # PgUp from the input scrolls back; new messages are counted below.
            await pilot.press("pageup")
            await pilot.pause()
            assert not log.following and log.scroll_y < log.max_scroll_y
            await bob.client.say("while you read")
            await bob.client.say("and another")
            below = app.query_one("#below", Static)
            await until(lambda: below.has_class("-shown"), what="marker")
            await until(lambda: "2 new messages below" in str(below.render()))
            # PgDn back to the end: the marker goes, the log follows again.
            for _ in range(5):
                await pilot.press("pagedown")
            await pilot.pause()
            await until(lambda: log.following and not below.has_class("-shown"), what="back")
            # A resize keeps the end in view.
            await pilot.resize_terminal(80, 14)
            await pilot.pause()
            await bob.client.say("after the resize")
            await until(lambda: any("after the resize" in t for t in app.transcript))
            await pilot.pause()
            await until(lambda: log.scroll_y == log.max_scroll_y, what="following")
            # @mention: highlighted, with a bell and a notification.
            await bob.client.say("ping @alice")
            await until(lambda: app._notifications, what="a notification")
            # /msg: only Bob gets it.
            await enter(pilot, app, "/msg bob just you")
            await until(lambda: bob.of(PrivateMessage), what="private")
            assert bob.of(PrivateMessage)[0].content == "just you"
            await until(lambda: any("alice → bob (private): just you" in t for t in app.transcript))
        await server.close()

    run(main(), timeout=60)
