"""Several machines, on one: a NATS cluster of three nodes (routes between them, JetStream
replicated 3 times), chat servers each given every node's URL. One NATS node stops: the
servers on it move to another node, the room goes on and its history is whole."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from sockety.chat import ChatServer
from sockety.chat._cluster import ClusterRoom
from sockety.cluster import NatsServer

from .conftest import HOST
from .test_chat import people


def free_ports(count: int) -> list[int]:
    """Ports for the routes (nats-server has no -1 for them): picked by the kernel, let go."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind((HOST, 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


@asynccontextmanager
async def nats_cluster(tmp_path: Path, size: int = 3) -> AsyncIterator[list[NatsServer]]:
    routes = free_ports(size)
    everyone = ",".join(f"nats://{HOST}:{port}" for port in routes)
    nodes = [
        NatsServer(
            store_dir=tmp_path / f"node{i}",
            extra_args=(
                *("--server_name", f"node{i}", "--cluster_name", "sockety-test"),
                *("--cluster", f"nats://{HOST}:{routes[i]}", "--routes", everyone),
            ),
        )
        for i in range(size)
    ]
    async with AsyncExitStack() as stack:
        for node in nodes:
            await node.start()
            stack.push_async_callback(node.close)
        # JetStream answers once the nodes elected a leader for its metadata.
        await asyncio.gather(
            *(
                node.wait_log(r"JetStream cluster (new )?metadata leader|is new JetStream")
                for node in nodes
            )
        )
        yield nodes


def test_a_chat_across_a_nats_cluster_survives_a_node_stopping(tmp_path: Path) -> None:
    async def main() -> None:
        async with nats_cluster(tmp_path) as nodes, AsyncExitStack() as stack:
            urls = [node.url for node in nodes]
            ports = []
            for i in range(2):
                room = ClusterRoom(urls, name=f"c{i}", replicas=3)
                chat = ChatServer(room=room)
                await chat.start(HOST, 0)
                stack.push_async_callback(chat.close)
                ports.append((chat, chat.port))
            (first, one), (second, two) = ports
            assert isinstance(first.room, ClusterRoom)
            info = await first.room.cluster.jetstream.stream_info("sockety_chat_messages")
            assert info.config.num_replicas == 3
            async with people(([(HOST, one)], "alice"), ([(HOST, two)], "bob")) as (alice, bob):
                await bob.until(lambda: set(bob.client.users) == {"alice", "bob"})
                await alice.client.say("before")
                await bob.until(lambda: bob.said() == ["alice: before"])
                on = first.room.cluster.nats.connected_url
                assert on is not None
                (node,) = [n for n in nodes if n.port == on.port]
                await node.stop()  # the node the first server is on: it moves to another
                await first.room.cluster.wait_reconnected(1)
                await alice.client.say("after")
                await bob.client.say("me too")
                for person in (alice, bob):
                    await person.until(lambda p=person: len(p.said()) >= 3)
                    assert person.said() == ["alice: before", "alice: after", "bob: me too"]
                async with people(([(HOST, one)], "carol")) as (carol,):
                    await carol.until(lambda: len(carol.said()) >= 3)  # replicated history
                    assert carol.said() == alice.said()

    asyncio.run(asyncio.wait_for(main(), 90))
