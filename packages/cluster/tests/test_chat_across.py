"""The chat's private messages and files across servers: three chat servers in this process, one
room through a real nats-server, one person on each."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sockety.chat._client import ChatError, PrivateMessage
from sockety.chat._cluster import REMOTE_PIECES_AHEAD, ClusterRoom
from sockety.chat._protocol import PIECE_SIZE
from sockety.cluster import NatsServer

from .conftest import HOST
from .test_chat import Person, chat_servers, chats, one_each, people


@asynccontextmanager
async def three_servers(nats: NatsServer) -> AsyncIterator[list[Person]]:
    """Alice, Bob and Carol, each on a server of their own, once all see the three names."""
    async with (
        chat_servers(nats, 3) as ports,
        people(*one_each(ports, "alice", "bob", "carol")) as everyone,
    ):
        for person in everyone:
            await person.until(lambda p=person: set(p.client.users) == {"alice", "bob", "carol"})
        yield everyone


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_private_messages_reach_their_recipient_on_another_server(
    nats: NatsServer, run: Any
) -> None:
    async def main() -> None:
        async with three_servers(nats) as (alice, bob, carol):
            await alice.client.send_private("BOB", "psst")  # another server, any case
            with pytest.raises(ChatError, match="zed is not here"):  # as on one server
                await alice.client.send_private("zed", "anyone?")
            await carol.client.send_private("carol", "note to self")
            for person in (alice, bob):  # the recipient, and the sender's own copy
                await person.until(lambda p=person: bool(p.of(PrivateMessage)))
                private = person.of(PrivateMessage)
                assert [(m.author, m.to, m.content) for m in private] == [("alice", "bob", "psst")]
            await carol.until(lambda: bool(carol.of(PrivateMessage)))
            assert [(m.author, m.to) for m in carol.of(PrivateMessage)] == [("carol", "carol")]
            await bob.client.send_private("alice", "back at you")
            await alice.until(lambda: len(alice.of(PrivateMessage)) == 2)
            assert alice.of(PrivateMessage)[1].content == "back at you"
            assert [m.content for m in carol.of(PrivateMessage)] == ["note to self"]

    run(main)


def test_a_file_offered_on_one_server_is_got_on_the_others(
    nats: NatsServer, run: Any, tmp_path: Path
) -> None:
    source = tmp_path / "photo.bin"
    source.write_bytes(os.urandom(3 * PIECE_SIZE + 17))  # four pieces, the last one short
    size = source.stat().st_size

    async def main() -> None:
        async with three_servers(nats) as (alice, bob, carol):
            upload = await alice.client.offer_file(source)
            assert upload.state == "offered"
            numbers = {}
            for person in (bob, carol):  # the offer notice crossed to the other servers
                await person.until(lambda p=person: bool(p.client.files))
                (number, offered), *more = person.client.files.items()
                assert not more
                assert (offered.author, offered.name, offered.size, offered.state) == (
                    "alice",
                    "photo.bin",
                    size,
                    "offered",
                )
                numbers[person] = number
            for person in (bob, carol):
                person.client.get(numbers[person], tmp_path / person.client.name)
            for person in (bob, carol):
                number = numbers[person]
                await person.until(
                    lambda p=person, n=number: p.client.files[n].state != "receiving"
                )
                file = person.client.files[number]
                assert (file.state, file.error) == ("saved", "")
                where = tmp_path / person.client.name
                assert file.saved_to == where / "photo.bin"
                assert digest(where / "photo.bin") == digest(source)
                assert sorted(x.name for x in where.iterdir()) == ["photo.bin"]  # no .part
                progress = [received for file, received in person.progress if file == number]
                assert 0 in progress and progress[-1] == size
            # Read from the owner piece by piece, one copy per receiver.
            await alice.until(lambda: upload.copies == 2 and upload.sent == 2 * size)
            # The owner leaves: the offer goes with her, everywhere.
            await alice.stop()
            await bob.until(lambda: "alice" not in bob.client.users)
            file = bob.client.get(numbers[bob], tmp_path / "again")
            await bob.until(lambda: file.state == "failed")
            assert "no longer offered" in file.error
            assert not (tmp_path / "again").exists() or not any((tmp_path / "again").iterdir())

    run(main)


def test_a_remote_get_the_owner_cannot_read_fails_plainly(
    nats: NatsServer, run: Any, tmp_path: Path
) -> None:
    """The owner's file vanished after the offer: the receiver on the other server is told,
    and nothing is written."""
    source = tmp_path / "doc.txt"
    source.write_bytes(b"x" * 1000)

    async def main() -> None:
        async with (
            chat_servers(nats, 2) as ports,
            people(*one_each(ports, "alice", "bob")) as (alice, bob),
        ):
            await bob.until(lambda: set(bob.client.users) == {"alice", "bob"})
            await alice.client.offer_file(source)
            await bob.until(lambda: bool(bob.client.files))
            (number,) = bob.client.files
            source.unlink()  # the owner can no longer read it
            file = bob.client.get(number, tmp_path / "bob")
            await bob.until(lambda: file.state == "failed")
            assert file.error
            assert not (tmp_path / "bob" / "doc.txt").exists()

    run(main)


def test_an_offer_has_one_number_on_every_server(
    nats: NatsServer, run: Any, tmp_path: Path
) -> None:
    """Offers from servers that did not see the same offers before (one started later): all
    see each offer under the same ``#N`` (its owner too), and ``/get #N`` works with that
    number from any server."""
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(os.urandom(1000))
    second.write_bytes(os.urandom(PIECE_SIZE + 5))

    async def main() -> None:
        async with (
            chat_servers(nats, 2) as ports,
            people(*one_each(ports, "alice", "bob")) as (alice, bob),
        ):
            await bob.until(lambda: set(bob.client.users) == {"alice", "bob"})
            one = await alice.client.offer_file(first)
            await bob.until(lambda: one.index in bob.client.files)
            async with (
                chats(nats, 1, name="later") as (later,),
                people(([(HOST, later.port)], "dave")) as (dave,),
            ):
                for person in (alice, bob):
                    await person.until(lambda p=person: "dave" in p.client.users)
                two = await dave.client.offer_file(second)
                assert one.index != two.index
                for person in (alice, bob):
                    await person.until(lambda p=person: two.index in p.client.files)
                assert {n: f.name for n, f in bob.client.files.items()} == {
                    one.index: "first.bin",
                    two.index: "second.bin",
                }
                assert {n: f.author for n, f in alice.client.files.items()} == {two.index: "dave"}
                for person, number, source in ((bob, two.index, second), (bob, one.index, first)):
                    file = person.client.get(number, tmp_path / f"got{number}")
                    await person.until(lambda f=file: f.state != "receiving")
                    assert (file.state, file.error) == ("saved", "")
                    assert digest(tmp_path / f"got{number}" / source.name) == digest(source)

    run(main)


def test_a_renamed_owner_keeps_their_offers_on_every_server(
    nats: NatsServer, run: Any, tmp_path: Path
) -> None:
    """An offer belongs to its owner, not to the name they had: after a rename it is still
    offered everywhere, and whoever gets it gets it from the new name."""
    source = tmp_path / "notes.txt"
    source.write_bytes(os.urandom(2 * PIECE_SIZE))

    async def main() -> None:
        async with three_servers(nats) as (alice, bob, carol):
            upload = await alice.client.offer_file(source)
            await bob.until(lambda: upload.index in bob.client.files)
            await alice.client.set_name("alicia")
            for person in (bob, carol):  # the old name left the presence everywhere
                await person.until(
                    lambda p=person: set(p.client.users) == {"alicia", "bob", "carol"}
                )
            file = bob.client.get(upload.index, tmp_path / "bob")
            await bob.until(lambda: file.state != "receiving")
            assert (file.state, file.error) == ("saved", "")
            assert digest(tmp_path / "bob" / "notes.txt") == digest(source)
            await alice.until(lambda: upload.sent == source.stat().st_size)

    run(main)


def test_a_remote_get_keeps_a_window_of_pieces_in_flight(
    nats: NatsServer, run: Any, tmp_path: Path
) -> None:
    """A file from another server is pulled ``pieces_ahead`` pieces at a time (not one round
    trip per piece), never more, with progress all the way; what is in flight is counted."""
    source = tmp_path / "big.bin"
    pieces = 3 * REMOTE_PIECES_AHEAD
    source.write_bytes(os.urandom(pieces * PIECE_SIZE - 1))
    size = source.stat().st_size

    async def main() -> None:
        async with (
            chats(nats, 2) as servers,
            people(*one_each([c.port for c in servers], "alice", "bob")) as (alice, bob),
        ):
            owner_room, relay_room = (chat.room for chat in servers)
            assert isinstance(relay_room, ClusterRoom)
            await bob.until(lambda: set(bob.client.users) == {"alice", "bob"})
            upload = await alice.client.offer_file(source)
            await bob.until(lambda: upload.index in bob.client.files)
            file = bob.client.get(upload.index, tmp_path / "bob")
            await bob.until(lambda: file.state != "receiving")
            assert (file.state, file.error) == ("saved", "")
            assert digest(tmp_path / "bob" / "big.bin") == digest(source)
            relayed = relay_room.relays
            assert (relayed.pieces, relayed.bytes, relayed.in_flight) == (pieces, size, 0)
            assert relayed.peak_in_flight == relay_room.pieces_ahead == REMOTE_PIECES_AHEAD
            # The owner's server really had several asked at once (one NATS round trip each),
            # never more than the window.
            assert isinstance(owner_room, ClusterRoom)
            served = owner_room.served
            assert 1 < served.peak_in_flight <= REMOTE_PIECES_AHEAD
            assert (served.pieces, served.in_flight) == (pieces, 0)
            progress = [received for number, received in bob.progress if number == upload.index]
            assert progress == sorted(progress) and progress[-1] == size
            assert len(set(progress)) > 2  # it moved on the way, not only at the end

    run(main)
