"""The chat without a UI: ChatServer and ChatClient over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from pathlib import Path

import pytest
import trustme

from sockety.chat import (
    ChatClient,
    ChatError,
    ChatMessage,
    ChatServer,
    Connected,
    Disconnected,
    SystemNotice,
    TypingChanged,
    UploadUpdated,
)
from sockety.chat._cli import parse_address
from sockety.client import Draft, FastReply, Message, connect

from ._helpers import FIXED, HOST, Peer, digest, run, start_server, until


def test_two_clients_chat_and_see_each_other() -> None:
    async def main() -> None:
        server = await start_server(clock=lambda: FIXED)
        async with Peer(server.port, "alice") as alice, Peer(server.port, "bob") as bob:
            await until(lambda: alice.client.users == ("alice", "bob"), what="users")
            await alice.client.say("hello @bob")
            await bob.client.say("hi alice")
            for peer in (alice, bob):
                await until(lambda p=peer: len(p.of(ChatMessage)) == 2, what="messages")
                assert [(m.author, m.content) for m in peer.of(ChatMessage)] == [
                    ("alice", "hello @bob"),
                    ("bob", "hi alice"),
                ]
                assert peer.of(ChatMessage)[0].date == FIXED
            notices = [n.content for n in alice.of(SystemNotice)]
            assert any(re.fullmatch(r"anon_[0-9a-f]{8} is now known as bob", n) for n in notices)
        await until(lambda: server.names == [], what="everyone gone")
        await server.close()

    run(main())


def test_three_clients_broadcast_and_leave() -> None:
    async def main() -> None:
        server = await start_server()
        async with Peer(server.port, "alice") as alice, Peer(server.port, "bob") as bob:
            async with Peer(server.port, "carol") as carol:
                await carol.client.say("three of us")
                for peer in (alice, bob, carol):
                    await until(lambda p=peer: p.of(ChatMessage), what="carol's message")
                    assert peer.of(ChatMessage)[-1].content == "three of us"
                    assert peer.client.users == ("alice", "bob", "carol")
            await until(lambda: alice.client.users == ("alice", "bob"), what="carol left")
            assert "carol disconnected" in [n.content for n in bob.of(SystemNotice)]
        await server.close()

    run(main())


def test_typing_stream_is_relayed_live_and_resolves_on_send() -> None:
    async def main() -> None:
        server = await start_server()
        async with (
            Peer(server.port, "alice") as alice,
            Peer(server.port, "bob") as bob,
            Peer(server.port, "carol") as carol,
        ):
            alice.client.typing("hel")
            for peer in (bob, carol):
                await until(lambda p=peer: p.of(TypingChanged), what="typing starts")
            alice.client.typing("hello wor")
            await until(lambda: bob.of(TypingChanged)[-1].text == "hello wor", what="update")
            assert all(t.author == "alice" for t in bob.of(TypingChanged))
            assert not alice.of(TypingChanged)  # never echoed to the typist
            await alice.client.say("hello world")
            await until(lambda: bob.of(TypingChanged)[-1].text is None, what="typing ends")
            # The message arrived before the live line went away: no flicker, no gap.
            kinds = [type(e) for e in bob.events if isinstance(e, ChatMessage | TypingChanged)]
            assert kinds[-2:] == [ChatMessage, TypingChanged]
            # Clearing the input ends the line too; typing again starts a new stream.
            alice.client.typing("oops")
            await until(lambda: carol.of(TypingChanged)[-1].text == "oops", what="oops")
            alice.client.typing("")
            await until(lambda: carol.of(TypingChanged)[-1].text is None, what="cleared")
            keys = {t.key for t in carol.of(TypingChanged)}
            assert len(keys) == 2
        await server.close()

    run(main())


def test_rename_rules() -> None:
    async def main() -> None:
        server = await start_server()
        async with Peer(server.port, "alice") as alice, Peer(server.port, None) as anon:
            assert re.fullmatch(r"anon_[0-9a-f]{8}", anon.client.name or "")
            for bad in ("ab", "x" * 51, "has space", "émile", ""):
                with pytest.raises(ChatError, match="invalid name"):
                    await anon.client.set_name(bad)
            with pytest.raises(ChatError, match="taken"):
                await anon.client.set_name("alice")
            with pytest.raises(ChatError, match="taken"):
                await anon.client.set_name("ALICE")  # unique without regard to case
            await anon.client.set_name("bob")
            await until(lambda: alice.client.users == ("alice", "bob"), what="rename seen")
            await alice.client.set_name("Alice")  # a new case of one's own name is fine
            assert server.names == ["Alice", "bob"]
            with pytest.raises(ChatError, match="empty"):
                await alice.client.say("   ")
            with pytest.raises(ChatError, match="single line"):
                await alice.client.say("two\nlines")
            with pytest.raises(ChatError, match="control"):
                await alice.client.say("\x1b[31mred")
        await server.close()

    run(main())


def test_a_reference_client_speaks_the_same_actions() -> None:
    """A bare Sockety client, as the Node.js example's client: its actions and payloads."""

    async def main() -> None:
        server = await start_server(clock=lambda: FIXED)
        inbox: list[Message] = []
        async with connect(HOST, server.port, handler=inbox.append) as raw:
            await until(lambda: len(inbox) >= 2, what="login and users")
            assert inbox[0].action == "login"
            name = inbox[0].msgpack()
            assert re.fullmatch(r"anon_[0-9a-f]{8}", name)
            assert (inbox[1].action, inbox[1].msgpack()) == ("users", [name])
            ask = Draft("name", data="msgpack")
            say = Draft("broadcast", data="msgpack")
            assert await raw.request(ask("no")) == FastReply.BAD_REQUEST
            assert await raw.request(ask(42)) == FastReply.BAD_REQUEST
            assert await raw.request(ask("ref_client")) == FastReply.ACCEPT
            for bad in ("", "  ", "a\nb", "a\rb", "\x1b[2J", 7):
                assert await raw.request(say(bad)) == FastReply.BAD_REQUEST
            assert await raw.request(say("hi")) == FastReply.ACCEPT
            assert await raw.request(Draft("nope")()) == FastReply.NOT_IMPLEMENTED
            await until(lambda: inbox[-1].action == "chat", what="chat")
            by_action = {m.action: m.msgpack() for m in inbox}
            assert by_action["chat"] == {
                "date": "2024-05-17T09:30:00.000Z",
                "author": "ref_client",
                "content": "hi",
            }
            assert by_action["system"] == {
                "date": "2024-05-17T09:30:00.000Z",
                "content": f"{name} is now known as ref_client",
            }
            assert by_action["users"] == ["ref_client"]
        await server.close()

    run(main())


def test_file_is_shared_with_everyone_and_saved_intact(tmp_path: Path) -> None:
    source = tmp_path / "photo.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))

    async def main() -> None:
        server = await start_server()
        async with (
            Peer(server.port, "alice") as alice,
            Peer(server.port, "bob", downloads=tmp_path / "bob") as bob,
            Peer(server.port, "carol", downloads=tmp_path / "carol") as carol,
        ):
            upload = await alice.client.send_file(source)
            assert upload.state == "sent"
            assert len(alice.of(UploadUpdated)) >= 2  # progress, then done
            for peer in (bob, carol):
                await until(lambda p=peer: p.client.files and p.client.files[0].state == "received")
                file = peer.client.files[0]
                assert (file.author, file.name, file.size) == ("alice", "photo.bin", file.received)
                progress = [received for _, received in peer.progress]
                assert progress[0] == 0 and progress[-1] == source.stat().st_size
                saved = peer.client.save()
                assert saved.saved_to is not None
                assert digest(saved.saved_to) == digest(source)
            # A second copy does not overwrite the first.
            again = bob.client.save(1)
            assert again.saved_to == tmp_path / "bob" / "photo (2).bin"
            with pytest.raises(ChatError, match="no file #5"):
                bob.client.save(5)
            with pytest.raises(ChatError, match="no such file"):
                await alice.client.send_file(tmp_path / "missing")
        await server.close()

    run(main())


def test_file_names_from_the_wire_cannot_escape_the_downloads_directory(tmp_path: Path) -> None:
    async def main() -> None:
        server = await start_server()
        async with Peer(server.port, "bob", downloads=tmp_path / "dl") as bob:
            upload = Draft("file", files=True)
            async with connect(HOST, server.port) as raw:
                from sockety.client import FileTransfer

                transfer = FileTransfer.from_bytes(b"evil", "../../etc/passwd")
                assert await raw.request(upload(files=[transfer])) == FastReply.ACCEPT
                await until(lambda: bob.client.files and bob.client.files[0].state == "received")
                saved = bob.client.save()
                assert saved.saved_to == tmp_path / "dl" / "passwd"
                two = [FileTransfer.from_bytes(b"a", "a"), FileTransfer.from_bytes(b"b", "b")]
                assert await raw.request(upload(files=two)) == FastReply.BAD_REQUEST
        await server.close()

    run(main())


def test_reconnects_with_backoff_after_the_server_restarts() -> None:
    async def main() -> None:
        server = await start_server()
        port = server.port
        async with Peer(port, "alice") as alice, Peer(port, "bob") as bob:
            alice.client.typing("unfinished")  # an open stream must not hold the shutdown
            await until(lambda: bob.of(TypingChanged), what="typing")
            started = asyncio.get_running_loop().time()
            await server.close()
            assert asyncio.get_running_loop().time() - started < 1.0
            await until(lambda: alice.of(Disconnected), what="disconnect noticed")
            assert not alice.client.connected
            with pytest.raises(ChatError, match="not connected"):
                await alice.client.say("into the void")
            await until(lambda: len(alice.of(Disconnected)) >= 2, what="a failed retry")
            restarted = ChatServer(close_timeout=1.0)
            await restarted.start(HOST, port)
            for peer in (alice, bob):
                await until(lambda p=peer: p.client.connected, what="reconnected")
                await until(lambda p=peer: p.client.name == p.client.wanted_name, what="name")
                assert len(peer.of(Connected)) == 2
            await until(lambda: sorted(restarted.names) == ["alice", "bob"], what="names back")
            await alice.client.say("back")
            await until(lambda: bob.of(ChatMessage), what="message after restart")
        await restarted.close()

    run(main())


def test_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def main() -> None:
        server = ChatServer()
        await server.start(HOST, 0, ssl=server_context)
        async with Peer(server.port, "alice", ssl=client_context) as alice:
            await alice.client.say("encrypted")
            await until(lambda: alice.of(ChatMessage), what="message over TLS")
        # Without trusting the CA the client keeps retrying and says why.
        untrusting = ChatClient(HOST, server.port, backoff=(0.05, 0.1), ssl=True)
        failures: list[object] = []
        untrusting._on_event = failures.append
        task = asyncio.get_running_loop().create_task(untrusting.run())
        await until(lambda: failures, what="TLS failure")
        assert isinstance(failures[0], Disconnected) and "TLS" in failures[0].reason
        await untrusting.stop()
        await task
        await server.close()

    run(main())


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9001") == ("127.0.0.1", 9001)
    assert parse_address("example.org") == ("example.org", 9000)
    assert parse_address("[::1]:7000") == ("::1", 7000)
