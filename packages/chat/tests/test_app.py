"""The real Textual app, driven by Pilot, against a real chat server on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from textual.widgets import Input, ProgressBar, Static

from sockety.chat import ChatMessage, ChatServer, TypingChanged
from sockety.chat._app import ChatApp

from ._helpers import HOST, Peer, digest, run, start_server, until


def make_app(port: int, name: str | None, tmp_path: Path, **options: Any) -> ChatApp:
    return ChatApp(
        HOST, port, name=name, downloads=tmp_path / "downloads", backoff=(0.05, 0.2), **options
    )


async def joined(app: ChatApp, name: str) -> None:
    await until(lambda: app.client is not None and app.client.name == name, what=f"{name}")


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


def test_files_both_ways_with_progress_and_save(tmp_path: Path) -> None:
    source = tmp_path / "report.bin"
    source.write_bytes(os.urandom(2 * 1024 * 1024 + 3))

    async def main() -> None:
        server = await start_server()
        app = make_app(server.port, "alice", tmp_path / "a")
        async with (
            Peer(server.port, "bob", downloads=tmp_path / "bob") as bob,
            app.run_test(size=(100, 30)) as pilot,
        ):
            await joined(app, "alice")
            # Alice shares from the app; Bob receives it intact.
            app.query_one("#input", Input).value = f"/send {source}"
            await pilot.press("enter")
            await until(lambda: bob.client.files and bob.client.files[0].state == "received")
            assert digest(bob.client.save().saved_to or Path()) == digest(source)
            assert app.client is not None
            await until(lambda: app.client.uploads[0].state == "sent", what="sent")
            await until(lambda: "shared" in str(app.query("FileCard Static").first().render()))
            # Bob shares; Alice's card fills its progress bar and /save keeps the file.
            await bob.client.send_file(source)
            await until(lambda: app.client.files and app.client.files[0].state == "received")
            await pilot.pause()
            card = app.query("FileCard").last()
            assert card.query_one(ProgressBar).progress == source.stat().st_size
            assert "/save 1 to keep it" in str(card.query_one(Static).render())
            app.query_one("#input", Input).value = "/save"
            await pilot.press("enter")
            saved = app.client.files[0].saved_to
            assert saved == tmp_path / "a" / "downloads" / "report.bin"
            assert digest(saved) == digest(source)
            await until(lambda: "saved to" in str(card.query_one(Static).render()), what="label")
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
            assert sum("Connected to" in t for t in app.transcript) == 2
        await restarted.close()

    run(main(), timeout=40)


def test_embedded_server(tmp_path: Path) -> None:
    """``sockety-chat`` without a command: the app starts its own server and joins it."""

    async def main() -> None:
        app = make_app(0, "alice", tmp_path, server=ChatServer(close_timeout=1.0))
        async with app.run_test(size=(100, 30)):
            await joined(app, "alice")
            assert app.port != 0
            assert "others join with `sockety-chat join" in app.transcript[0]
            async with Peer(app.port, "bob") as bob:
                bob.client.typing("hi")
                await until(lambda: "bob is typing: hi" in typing_text(app), what="typing")
                assert not bob.of(TypingChanged)

    run(main(), timeout=40)
