"""The cluster link over a real nats-server: broadcast, sends and requests by key, presence."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import pytest

from sockety.client import FastReply, Response
from sockety.cluster import Cluster, KeyTakenError, NatsServer, NotConnectedError
from sockety.cluster._demo import ASK, HEARD, SAY, TELL

from .conftest import cluster_of, clustered, peer


def test_broadcast_reaches_every_connection_of_every_server(nats: NatsServer, run: Any) -> None:
    async def main() -> None:
        async with clustered(nats, 3) as servers, AsyncExitStack() as stack:
            peers = [
                await stack.enter_async_context(peer(servers[i % 3], f"p{i}")) for i in range(6)
            ]
            assert peers[0].connection is not None
            assert await peers[0].connection.request(SAY(b"hello all")) == FastReply.ACCEPT
            for who in peers:
                assert await who.wait_heard(1) == [b"hello all"]
            published = cluster_of(servers[0]).metrics.published.labels("broadcast")
            received = cluster_of(servers[1]).metrics.received.labels("broadcast")
            assert published._value.get() == 1
            assert received._value.get() == 1

    run(main)


def test_send_to_a_key_reaches_it_on_whichever_server(nats: NatsServer, run: Any) -> None:
    async def main() -> None:
        async with (
            clustered(nats, 3) as servers,
            peer(servers[0], "alice") as alice,
            peer(servers[1], "bob") as bob,
            peer(servers[2], "carol") as carol,
        ):
            assert alice.connection is not None
            assert await alice.connection.request(TELL(["carol", b"psst"])) == 0
            assert await alice.connection.request(TELL(["alice", b"note to self"])) == 0
            assert await carol.wait_heard(1) == [b"psst"]
            assert await alice.wait_heard(1) == [b"note to self"]
            # bob got nothing: a marker broadcast arrives, and it is bob's first message
            await alice.connection.request(SAY(b"marker"))
            assert await bob.wait_heard(1) == [b"marker"]

    run(main)


def test_request_is_answered_where_the_connection_lives(nats: NatsServer, run: Any) -> None:
    async def main() -> None:
        async with (
            clustered(nats, 2) as servers,
            peer(servers[0], "alice") as alice,
            peer(servers[1], "bob") as bob,
        ):
            assert alice.connection is not None and bob.connection is not None
            reply = await alice.connection.request(ASK(["bob", b"ready?"]))
            assert isinstance(reply, Response) and reply.data == b"bob says ready?"
            # nobody holds "dave": no responders, an answer at once (not a timeout)
            assert await alice.connection.request(ASK(["dave", b"?"])) == 2
            # a handler registered on the server where bob lives answers instead
            cluster = cluster_of(servers[1])

            @cluster.handle("question")
            async def _(connection: Any, data: bytes) -> bytes:
                assert connection is cluster.local("bob")
                return b"server " + cluster.id.encode() + b": " + data

            reply = await alice.connection.request(ASK(["bob", b"who?"]))
            assert isinstance(reply, Response) and reply.data == b"server s1: who?"

    run(main)


def test_presence_shows_who_is_where_and_keys_are_unique(nats: NatsServer, run: Any) -> None:
    async def main() -> None:
        async with clustered(nats, 2) as servers:
            a, b = cluster_of(servers[0]), cluster_of(servers[1])
            async with peer(servers[0], "alice") as alice, peer(servers[1], "bob"):
                assert await a.where("bob") == "s1"
                assert await b.where("alice") == "s0"
                assert await a.members() == {"alice": "s0", "bob": "s1"}
                async with asyncio.timeout(10):
                    await b.wait_presence(lambda p: p == {"alice": "s0", "bob": "s1"})
                # alice's key is hers while she is connected, on any server
                async with peer(servers[1], "other", login=False):
                    other = next(c for c in servers[1].connections if b.key_of(c) is None)
                    with pytest.raises(KeyTakenError, match="'alice' is already bound on server"):
                        await b.bind(other, "alice")
                assert alice.connection is not None and b.key_of(other) is None
            # both left: their keys are gone everywhere
            async with asyncio.timeout(10):
                await a.wait_presence(lambda p: p == {})
            assert await b.where("alice") is None

    run(main)


def test_presence_expires_when_a_server_dies(nats: NatsServer, run: Any) -> None:
    """A server whose link dies without saying goodbye (its process killed) leaves its keys;
    they expire within the TTL, and another server may take a key over at once."""

    async def main() -> None:
        async with clustered(nats, 2, presence_ttl=1.5) as servers:
            a, b = cluster_of(servers[0]), cluster_of(servers[1])
            async with peer(servers[0], "alice"), peer(servers[0], "erin"):
                async with asyncio.timeout(10):
                    await b.wait_presence(lambda p: len(p) == 2)
                # s0 "dies": its NATS connection goes, nobody unbinds, nothing refreshes
                assert a._refresher is not None
                a._refresher.cancel()
                await a.nats.close()
                # the key can be taken over at once: s0 does not answer its ping
                async with peer(servers[1], "erin2", login=False):
                    connection = next(iter(servers[1].connections))
                    await b.bind(connection, "erin")
                    assert await b.where("erin") == "s1"
                    # alice's key expires by itself (the TTL), and watchers see it go
                    async with asyncio.timeout(10):
                        await b.wait_presence(lambda p: p == {"erin": "s1"})
                    assert await b.where("alice") is None

    run(main)


def test_not_connected_raises_typed_errors(nats: NatsServer, run: Any) -> None:
    async def main() -> None:
        async with clustered(nats, 1) as servers:
            cluster = cluster_of(servers[0])
            with pytest.raises(NotConnectedError, match="no connection holds it"):
                await cluster.request("nobody", HEARD(b"x"))
            with pytest.raises(ValueError, match=r"1\.\.200 bytes"):
                cluster.send("x" * 201, HEARD(b""))

    run(main)


def test_cluster_link_without_nats_fails_clearly() -> None:
    from sockety.cluster import ClusterUnavailableError

    async def main() -> None:
        cluster = Cluster("nats://127.0.0.1:1", connect_timeout=1)
        with pytest.raises(ClusterUnavailableError, match="cannot connect to NATS"):
            await cluster.start()

    asyncio.run(main())


def test_nats_without_jetstream_fails_clearly(tmp_path: Any) -> None:
    from sockety.cluster import ClusterUnavailableError

    async def main() -> None:
        async with NatsServer(jetstream=False) as nats:
            with pytest.raises(ClusterUnavailableError, match="is JetStream on"):
                await Cluster(nats.url).start()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_ask_is_answered_by_the_server_asked(nats: NatsServer, run: Any) -> None:
    """``ask(server, topic)``: that server's ``answer(topic)`` handler replies (also when it is
    this server); a server that is not there, a topic it does not answer, a handler that
    fails: NotConnectedError, saying why."""

    async def main() -> None:
        async with (
            Cluster(nats.url, name="one") as one,
            Cluster(nats.url, name="two") as two,
        ):

            @two.answer("echo")
            async def echo(data: bytes, origin: str) -> bytes:
                return origin.encode() + b" asked " + data

            @two.answer("broken")
            async def broken(data: bytes, origin: str) -> bytes:
                raise RuntimeError("a bug")

            assert await one.ask("two", "echo", b"hi") == b"one asked hi"
            assert await two.ask("two", "echo", b"me") == b"two asked me"  # no round trip
            with pytest.raises(NotConnectedError, match="no such server"):
                await one.ask("three", "echo", b"hi")
            with pytest.raises(NotConnectedError, match="no answer to 'nothing'"):
                await one.ask("two", "nothing", b"")
            with pytest.raises(NotConnectedError, match="a bug"):
                await one.ask("two", "broken", b"")
            with pytest.raises(ValueError):
                one.answer("not a token.")

    run(main)
