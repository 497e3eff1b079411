"""sockety-chat on the cluster: several chat servers (in this process, and separate
``sockety-chat serve --cluster`` processes) form one room through a real nats-server."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import pytest

from sockety.chat import ChatClient, ChatEvent, ChatServer
from sockety.chat._client import (
    ChatMessage,
    Disconnected,
    FileUpdated,
    LoggedIn,
    TypingChanged,
    UsersChanged,
)
from sockety.chat._cluster import ClusterRoom
from sockety.cluster import NatsServer

from .conftest import HOST

T = TypeVar("T")


class Person:
    """A ChatClient in the background; its events, and a way to wait for them."""

    def __init__(self, addresses: list[tuple[str, int]], name: str) -> None:
        self.events: list[ChatEvent] = []
        self.progress: list[tuple[int, int]] = []  # (file, received) as each update came
        self.changed = asyncio.Condition()
        (host, port), *others = addresses
        self.client = ChatClient(
            host, port, name=name, on_event=self._record, backoff=(0.05, 0.2), others=others
        )
        self._task: asyncio.Task[None] | None = None

    def _record(self, event: ChatEvent) -> None:
        self.events.append(event)
        if isinstance(event, FileUpdated):
            self.progress.append((event.file.index, event.file.received))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def of(self, kind: type[T]) -> list[T]:
        return [event for event in self.events if isinstance(event, kind)]

    def said(self) -> list[str]:
        return [f"{m.author}: {m.content}" for m in self.of(ChatMessage)]

    async def until(self, condition: Callable[[], bool]) -> None:
        async with self.changed:
            await self.changed.wait_for(condition)

    async def start(self) -> Person:
        self._task = asyncio.get_running_loop().create_task(self.client.run())
        name = self.client.wanted_name
        await self.until(lambda: self.client.name == name and self.client.connected)
        return self

    async def stop(self) -> None:
        await self.client.stop()
        if self._task is not None:
            await self._task


@asynccontextmanager
async def people(*who: tuple[list[tuple[str, int]], str]) -> AsyncIterator[list[Person]]:
    started: list[Person] = []
    try:
        for addresses, name in who:
            started.append(await Person(addresses, name).start())
        yield started
    finally:
        for person in started:
            await person.stop()


@asynccontextmanager
async def chats(nats: NatsServer, count: int, **room: Any) -> AsyncIterator[list[ChatServer]]:
    """``count`` clustered chat servers in this process (``chat0``, ``chat1``, ...)."""
    async with AsyncExitStack() as stack:
        servers = []
        for index in range(count):
            name = room.pop("name", f"chat{index}")
            chat = ChatServer(room=ClusterRoom(nats.url, name=name, **room))
            await chat.start(HOST, 0)
            stack.push_async_callback(chat.close)
            servers.append(chat)
        yield servers


@asynccontextmanager
async def chat_servers(nats: NatsServer, count: int, **room: Any) -> AsyncIterator[list[int]]:
    async with chats(nats, count, **room) as servers:
        yield [chat.port for chat in servers]


def one_each(ports: list[int], *names: str) -> list[tuple[list[tuple[str, int]], str]]:
    """One person per server."""
    return [([(HOST, port)], name) for port, name in zip(ports, names, strict=True)]


def test_three_servers_one_room(nats: NatsServer, run: Any) -> None:
    async def main() -> None:
        async with (
            chat_servers(nats, 3) as ports,
            people(*one_each(ports, "alice", "bob", "carol")) as (alice, bob, carol),
        ):
            for person in (alice, bob, carol):  # one users list, everywhere
                await person.until(
                    lambda p=person: set(p.client.users) == {"alice", "bob", "carol"}
                )
            await alice.client.say("hello from 1")
            await carol.client.say("hello from 3")
            await bob.client.say("hello from 2")
            expected = ["alice: hello from 1", "carol: hello from 3", "bob: hello from 2"]
            for person in (alice, bob, carol):  # the same order on every server
                await person.until(lambda p=person: len(p.said()) >= 3)
                assert person.said() == expected
            ids = [m for m in alice.events if isinstance(m, ChatMessage)]
            assert len(ids) == 3
            assert alice.client.last_seq == bob.client.last_seq == carol.client.last_seq == 3
            assert [m.id for m in ids] == [1, 2, 3]  # the stream sequence, the same everywhere

            # live typing, relayed across servers
            carol.client.typing("half a thou")
            await alice.until(lambda: any(t.text == "half a thou" for t in alice.of(TypingChanged)))
            await bob.until(lambda: any(t.author == "carol" for t in bob.of(TypingChanged)))
            carol.client.typing("")
            await alice.until(lambda: alice.of(TypingChanged)[-1].text is None)

            # names are unique in the whole room
            from sockety.chat import ChatError

            try:
                await bob.client.set_name("ALICE")
            except ChatError:
                pass
            else:
                raise AssertionError("a name held on another server was given twice")
            await bob.client.set_name("bobby")
            await carol.until(lambda: set(carol.client.users) == {"alice", "bobby", "carol"})

    run(main)


def test_late_joiner_gets_the_last_n_in_order(nats: NatsServer, run: Any) -> None:
    async def main() -> None:
        async with (
            chat_servers(nats, 2, history=5) as ports,
            people(([(HOST, ports[0])], "alice")) as (alice,),
        ):
            for i in range(8):
                await alice.client.say(f"m{i}")
            async with people(([(HOST, ports[1])], "late")) as (late,):
                await late.until(lambda: len(late.said()) >= 5)
                await alice.client.say("live")
                await late.until(lambda: len(late.said()) >= 6)
                assert late.said() == [f"alice: m{i}" for i in range(3, 8)] + ["alice: live"]

    run(main)


def test_nats_restarted_the_room_goes_on(nats: NatsServer, run: Any) -> None:
    """NATS restarts mid-conversation: what was acknowledged stays in the history, the
    servers reconnect, and the room goes on (messages, users list)."""

    async def main() -> None:
        async with (
            chat_servers(nats, 2) as ports,
            people(([(HOST, ports[0])], "alice"), ([(HOST, ports[1])], "bob")) as (alice, bob),
        ):
            await bob.until(lambda: set(bob.client.users) == {"alice", "bob"})
            await alice.client.say("before")
            await bob.until(lambda: bob.said() == ["alice: before"])
            await nats.restart()
            await alice.client.say("after")  # accepted: acknowledged by the restarted NATS
            await bob.client.say("me too")
            for person in (alice, bob):
                await person.until(lambda p=person: len(p.said()) >= 3)
                assert person.said() == ["alice: before", "alice: after", "bob: me too"]
            async with people(([(HOST, ports[1])], "carol")) as (carol,):
                await carol.until(lambda: len(carol.said()) >= 3)  # the history survived
                assert carol.said() == alice.said()
                await alice.until(lambda: set(alice.client.users) == {"alice", "bob", "carol"})

    run(main)


_LISTENING = re.compile(r"chat server on 127\.0\.0\.1:(\d+)")


@asynccontextmanager
async def chat_process(
    nats: NatsServer, *extra: str
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from sockety.chat._cli import main; sys.exit(main())",
        "serve",
        "--port",
        "0",
        "--cluster",
        nats.url,
        *extra,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = (await process.stdout.readline()).decode()
        match = _LISTENING.search(line)
        assert match, line
        yield int(match.group(1)), process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()


def test_a_killed_chat_server_its_users_reconnect_and_miss_nothing(
    nats: NatsServer, run: Any
) -> None:
    async def main() -> None:
        async with (
            chat_process(nats) as (one, first),
            chat_process(nats) as (two, _),
            people(([(HOST, one), (HOST, two)], "alice"), ([(HOST, two)], "bob")) as (alice, bob),
        ):
            await alice.until(lambda: set(alice.client.users) == {"alice", "bob"})
            await bob.client.say("before")
            await alice.until(lambda: alice.said() == ["bob: before"])

            first.send_signal(signal.SIGKILL)  # no Go Away, no goodbye to NATS
            await first.wait()
            await alice.until(lambda: bool(alice.of(Disconnected)))
            for i in range(5):  # while alice is away
                await bob.client.say(f"while away {i}")
            # alice is back, on the other server, under her name (the dead server's claim on
            # it is taken over), and has everything once, in order
            await alice.until(lambda: len(alice.of(LoggedIn)) >= 2 and alice.client.connected)
            await alice.until(lambda: alice.client.name == "alice")
            await alice.until(lambda: len(alice.said()) >= 6)
            await bob.client.say("after")
            await alice.until(lambda: len(alice.said()) >= 7)
            assert alice.said() == [
                "bob: before",
                *(f"bob: while away {i}" for i in range(5)),
                "bob: after",
            ]
            assert alice.client.port == two
            await bob.until(lambda: set(bob.client.users) == {"alice", "bob"})
            assert bob.of(UsersChanged)

    run(main, timeout=90)


def test_workers_share_a_port_and_are_one_room(nats: NatsServer, run: Any) -> None:
    """``serve --workers 2 --cluster``: two processes on one port (SO_REUSEPORT), one room
    whichever worker the kernel gives each person."""
    names = [f"user{i}" for i in range(6)]

    async def main() -> None:
        async with (
            chat_process(nats, "--workers", "2") as (port, _),
            people(*(([(HOST, port)], name) for name in names)) as everyone,
        ):
            for person in everyone:
                await person.until(lambda p=person: set(p.client.users) == set(names))
            await everyone[0].client.say("to all workers")
            for person in everyone:
                await person.until(lambda p=person: p.said() == ["user0: to all workers"])

    run(main)


def test_nobody_can_connect_before_the_room_is_ready(nats: NatsServer, run: Any) -> None:
    """A clustered chat server listens only once its link to NATS and its room are up: with
    ``--workers`` the kernel then gives connections only to workers that are ready. (The cause
    of a flaky ``test_workers_share_a_port_and_are_one_room``: the server listened before its
    link was up, so a person who came to a worker still joining NATS could not take a name,
    or missed changes to the users list.)"""

    async def main() -> None:
        # The port held as --workers holds it (bound, not listening): nobody listens until
        # the chat server does.
        holder = socket.socket(socket.AF_INET)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((HOST, 0))
        port = holder.getsockname()[1]
        async with (
            chat_servers(nats, 1) as (one,),
            people(([(HOST, one)], "alice")) as (alice,),
        ):
            room = ClusterRoom(nats.url, name="starting")
            link = room.cluster
            starting, release = asyncio.Event(), asyncio.Event()
            start = link.start

            async def held_start(server: Any = None) -> None:
                starting.set()
                await release.wait()
                await start(server)

            link.start = held_start  # type: ignore[method-assign]
            chat = ChatServer(room=room)
            started = asyncio.ensure_future(chat.start(HOST, port, reuse_port=True))
            try:
                await starting.wait()  # the link is on its way up
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection(HOST, port)
                release.set()
                await started
                async with people(([(HOST, port)], "bob")) as (bob,):
                    for person in (alice, bob):
                        await person.until(lambda p=person: set(p.client.users) == {"alice", "bob"})
                    await alice.client.say("hello bob")
                    await bob.until(lambda: bob.said() == ["alice: hello bob"])
            finally:
                release.set()
                await asyncio.gather(started, return_exceptions=True)
                await chat.close()
                holder.close()

    run(main)
