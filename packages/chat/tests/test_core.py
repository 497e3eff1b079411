"""The chat without a UI: ChatServer and ChatClient over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
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
    GaveUp,
    PrivateMessage,
    SystemNotice,
    TypingChanged,
)
from sockety.chat._cli import parse_address
from sockety.chat._client import clean_leftovers
from sockety.client import (
    Draft,
    FastReply,
    FileTransfer,
    Message,
    Response,
    ResponseDraft,
    Router,
    connect,
)
from sockety.server import serve

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
            # One line for Bob's arrival, under the name he chose (no anon_… then a rename).
            await until(lambda: alice.of(SystemNotice), what="join line")
            assert [n.content for n in alice.of(SystemNotice)] == ["bob joined"]
            assert not bob.of(SystemNotice)
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
            await until(lambda: "carol left" in [n.content for n in bob.of(SystemNotice)])
            assert [n.content for n in bob.of(SystemNotice)] == ["carol joined", "carol left"]
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
            # The reference's fields, plus the room's message id (extra keys are ignored).
            assert by_action["chat"] == {
                "date": "2024-05-17T09:30:00.000Z",
                "author": "ref_client",
                "content": "hi",
                "id": by_action["chat"]["id"],
            }
            assert isinstance(by_action["chat"]["id"], int)
            assert by_action["users"] == ["ref_client"]
            # A rename once the room knows us is announced as the reference does.
            assert await raw.request(ask("ref_two")) == FastReply.ACCEPT
            await until(lambda: inbox[-1].action == "users", what="users after the rename")
            systems = [m.msgpack()["content"] for m in inbox if m.action == "system"]
            assert systems == ["ref_client is now known as ref_two"]
        await server.close()

    run(main())


def test_files_are_offered_and_each_receiver_chooses(tmp_path: Path) -> None:
    source = tmp_path / "photo.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))

    async def main() -> None:
        server = await start_server()
        async with (
            Peer(server.port, "alice") as alice,
            Peer(server.port, "bob", downloads=tmp_path / "bob") as bob,
            Peer(server.port, "carol", downloads=tmp_path / "carol") as carol,
        ):
            upload = await alice.client.offer_file(source)
            assert upload.state == "offered" and upload.index == 1
            for peer in (bob, carol):
                await until(lambda p=peer: 1 in p.client.files, what="the offer")
                offered = peer.client.files[1]
                assert (offered.author, offered.name, offered.size, offered.state) == (
                    "alice",
                    "photo.bin",
                    source.stat().st_size,
                    "offered",
                )
            # Offered, not forced: nothing arrives until asked for, and nowhere but the target.
            assert not (tmp_path / "bob").exists()
            bob.client.get(1)
            carol.client.get(1, tmp_path / "chosen")
            for peer, where in ((bob, tmp_path / "bob"), (carol, tmp_path / "chosen")):
                await until(lambda p=peer: p.client.files[1].state == "saved", what="saved")
                file = peer.client.files[1]
                assert file.saved_to == where / "photo.bin"
                assert digest(where / "photo.bin") == digest(source)
                assert sorted(x.name for x in where.iterdir()) == ["photo.bin"]  # no .part
                progress = [received for _, received in peer.progress]
                assert progress[-1] == source.stat().st_size and 0 in progress
            await until(lambda: upload.copies == 2 and upload.sent == 2 * upload.size)
            # A second copy does not overwrite the first.
            bob.client.get(1)
            await until(lambda: bob.client.files[1].state == "saved", what="again")
            assert bob.client.files[1].saved_to == tmp_path / "bob" / "photo (2).bin"
            with pytest.raises(ChatError, match="no file #5"):
                bob.client.get(5)
            with pytest.raises(ChatError, match="no such file"):
                await alice.client.offer_file(tmp_path / "missing")
        # Alice left: her offer went with her.
        async with connect(HOST, server.port) as raw:
            get = Draft("get", data="msgpack")
            assert await raw.request(get({"file": 1})) == FastReply.BAD_REQUEST
        await server.close()

    run(main())


def test_file_names_from_the_wire_cannot_escape_the_downloads_directory(tmp_path: Path) -> None:
    content = b"evil"

    def owner(message: Message) -> None:
        if message.action == "piece":
            piece = message.msgpack()
            part = content[piece["offset"] : piece["offset"] + piece["size"]]
            message.respond(ResponseDraft(data="bytes")(part))

    async def main() -> None:
        server = await start_server()
        async with Peer(server.port, "bob", downloads=tmp_path / "dl") as bob:
            offer = Draft("offer", data="msgpack")
            async with connect(HOST, server.port, handler=owner) as raw:
                reply = await raw.request(offer({"name": "../../etc/passwd", "size": 4}))
                assert isinstance(reply, Response)
                number = reply.msgpack()["id"]
                await until(lambda: number in bob.client.files, what="offer")
                assert bob.client.files[number].name == "passwd"
                bob.client.get(number)
                await until(lambda: bob.client.files[number].state == "saved", what="saved")
                assert bob.client.files[number].saved_to == tmp_path / "dl" / "passwd"
                assert (tmp_path / "dl" / "passwd").read_bytes() == content
                # The old forced share is refused, and what it carries is dropped.
                forced = Draft("file", files=True)
                transfer = FileTransfer.from_bytes(b"x" * 100_000, "forced")
                assert await raw.request(forced(files=[transfer])) == FastReply.BAD_REQUEST
                assert await raw.request(offer({"name": "big", "size": -1})) == (
                    FastReply.BAD_REQUEST
                )
        await server.close()

    run(main())


def test_partial_downloads_of_a_killed_process_are_removed_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    records = tmp_path / "cache" / "sockety-chat" / "partial"
    records.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)  # a process that has ended: its pid is free
    left = tmp_path / "somewhere" / f".big.iso.{pid}-abc{'.sockety-part'}"
    left.parent.mkdir()
    left.write_bytes(b"x" * 1000)
    (records / f"{pid}-{left.name}").write_text(str(left))
    mine = tmp_path / "somewhere" / ".mine.sockety-part"
    mine.write_bytes(b"y")
    (records / f"{os.getpid()}-{mine.name}").write_text(str(mine))
    # An old version's spool folder: removed once nobody touched it for a day.
    old_spool = Path(tempfile.gettempdir()) / "sockety-chat-abc123"
    old_spool.mkdir()
    (old_spool / "1-big.iso").write_bytes(b"z" * 1000)
    recent_spool = Path(tempfile.gettempdir()) / "sockety-chat-def456"
    recent_spool.mkdir()
    os.utime(old_spool, (0, 0))
    assert clean_leftovers() == 2
    assert not left.exists() and not old_spool.exists()
    assert recent_spool.exists()
    assert mine.exists()  # a live process's download is left alone
    assert sorted(r.name for r in records.iterdir()) == [f"{os.getpid()}-{mine.name}"]


def test_a_burst_arrives_exactly_once_in_order() -> None:
    async def main() -> None:
        server = await start_server()
        async with Peer(server.port, "alice") as alice, Peer(server.port, "bob") as bob:
            verdicts = [alice.client.send_message(f"burst {i}") for i in range(1000)]
            await asyncio.gather(*verdicts)
            await until(lambda: len(bob.of(ChatMessage)) >= 1000, what="all of it")
            assert [m.content for m in bob.of(ChatMessage)] == [f"burst {i}" for i in range(1000)]
            ids = [m.id for m in bob.of(ChatMessage)]
            assert ids == sorted(ids) and len(set(ids)) == 1000
            assert alice.client.pending == 0
        await server.close()

    run(main())


def test_a_resend_with_the_same_id_is_published_once() -> None:
    async def main() -> None:
        server = await start_server()
        async with Peer(server.port, "bob") as bob, connect(HOST, server.port) as raw:
            say = Draft("broadcast", data="msgpack")
            for _ in range(3):  # an answer lost, the message sent again (twice)
                message = say({"id": "s1-7", "content": "once"})
                assert await raw.request(message) == FastReply.ACCEPT
            assert await raw.request(say({"id": "s1-8", "content": "twice"})) == FastReply.ACCEPT
            await until(lambda: len(bob.of(ChatMessage)) == 2, what="two messages")
            assert [m.content for m in bob.of(ChatMessage)] == ["once", "twice"]
            assert await raw.request(say({"id": 5, "content": "bad id"})) == FastReply.BAD_REQUEST
        await server.close()

    run(main())


def test_me_and_private_messages() -> None:
    async def main() -> None:
        server = await start_server()
        async with (
            Peer(server.port, "alice") as alice,
            Peer(server.port, "bob") as bob,
            Peer(server.port, "carol") as carol,
        ):
            await alice.client.say("waves", me=True)
            await alice.client.send_private("BOB", "psst")
            with pytest.raises(ChatError, match="zed is not here"):
                await alice.client.send_private("zed", "anyone?")
            await alice.client.say("public")
            for peer in (alice, bob, carol):
                await until(lambda p=peer: len(p.of(ChatMessage)) == 2, what="public")
                first = peer.of(ChatMessage)[0]
                assert (first.author, first.content, first.me) == ("alice", "waves", True)
            for peer in (alice, bob):  # the recipient, and the sender's own copy
                await until(lambda p=peer: p.of(PrivateMessage), what="private")
                private = peer.of(PrivateMessage)[0]
                assert (private.author, private.to, private.content) == ("alice", "bob", "psst")
            assert not carol.of(PrivateMessage)
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
            # Typed while disconnected: kept, and sent once reconnected.
            late = alice.client.send_message("into the void")
            await until(lambda: len(alice.of(Disconnected)) >= 2, what="a failed retry")
            failures = alice.of(Disconnected)
            assert failures[0].reason == "the server closed the connection"
            assert "nothing is listening there" in failures[1].reason
            assert failures[1].first == failures[0].reason  # the first reason is kept
            assert "Errno" not in failures[1].reason
            restarted = ChatServer(close_timeout=1.0)
            await restarted.start(HOST, port)
            for peer in (alice, bob):
                await until(lambda p=peer: p.client.connected, what="reconnected")
                await until(lambda p=peer: p.client.name == p.client.wanted_name, what="name")
                assert [c.again for c in peer.of(Connected)] == [False, True]
            await until(lambda: sorted(restarted.names) == ["alice", "bob"], what="names back")
            await late  # (Bob may not be back yet when it goes out: the room keeps no history)
            await until(lambda: alice.of(ChatMessage), what="message after restart")
            assert [(m.author, m.content) for m in alice.of(ChatMessage)] == [
                ("alice", "into the void")
            ]
            await alice.client.say("back")
            await until(lambda: bob.of(ChatMessage), what="message after restart")
            assert bob.of(ChatMessage)[-1].content == "back"
        await restarted.close()

    run(main())


def test_a_wrong_address_or_a_non_chat_server_gives_up_clearly() -> None:
    async def main() -> None:
        events: list[object] = []

        async def attempt(port: int) -> GaveUp:
            events.clear()
            client = ChatClient(HOST, port, backoff=(0.01, 0.02), on_event=events.append)
            await asyncio.wait_for(client.run(), 10)  # bounded: it ends by itself
            assert isinstance(events[-1], GaveUp)
            return events[-1]

        # Nothing listening: a few quick retries, then a clear reason (the first one).
        closed = socket.socket()
        closed.bind((HOST, 0))
        free_port = closed.getsockname()[1]
        closed.close()
        gave_up = await attempt(free_port)
        assert gave_up.reason == (
            f"cannot connect to {HOST}:{free_port}: nothing is listening there "
            "(connection refused) (gave up after 4 attempts)"
        )
        assert [type(e) for e in events] == [Disconnected] * 3 + [GaveUp]

        # A Sockety server that is not a chat server: no login, no retry.
        other = await serve(Router(), HOST, 0)
        gave_up = await attempt(other.port)
        assert gave_up.reason == f"{HOST}:{other.port} is a Sockety server but not a chat server"
        assert len(events) == 1
        await other.close()

        # Not Sockety at all (an HTTP server, say).
        async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            writer.close()

        web = await asyncio.start_server(http, HOST, 0)
        port = web.sockets[0].getsockname()[1]
        gave_up = await attempt(port)
        assert "is not a chat server: it does not speak Sockety" in gave_up.reason
        web.close()

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
        # Without trusting the CA the client says why, and does not retry in vain.
        failures: list[object] = []
        untrusting = ChatClient(
            HOST, server.port, backoff=(0.05, 0.1), ssl=True, on_event=failures.append
        )
        await asyncio.wait_for(untrusting.run(), 10)
        assert len(failures) == 1 and isinstance(failures[0], GaveUp)
        assert "TLS: the server's certificate is not trusted" in failures[0].reason
        await server.close()

    run(main())


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9001") == ("127.0.0.1", 9001)
    assert parse_address("example.org") == ("example.org", 9000)
    assert parse_address("[::1]:7000") == ("::1", 7000)


def test_leaving_mid_download_leaves_nothing_behind(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(32 * 1024 * 1024))

    async def main() -> None:
        server = await start_server()
        async with Peer(server.port, "alice") as alice:
            bob = Peer(server.port, "bob", downloads=tmp_path / "bob")
            async with bob:
                await alice.client.offer_file(source)
                await until(lambda: 1 in bob.client.files, what="offer")
                bob.client.get(1)
                await until(lambda: bob.client.files[1].received > 0, what="arriving")
                assert any(p.name.endswith(".sockety-part") for p in (tmp_path / "bob").iterdir())
            # Bob quit mid-way: his partial file and its record are gone.
            await until(lambda: bob.client.files[1].state == "failed", what="failed")
            assert list((tmp_path / "bob").iterdir()) == []
            records = tmp_path / "cache" / "sockety-chat" / "partial"
            assert not records.exists() or list(records.iterdir()) == []
        await server.close()

    run(main())
