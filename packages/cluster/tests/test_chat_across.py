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
from sockety.chat._protocol import PIECE_SIZE
from sockety.cluster import NatsServer

from .test_chat import Person, chat_servers, one_each, people


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
