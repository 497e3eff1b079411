"""Bounds: the outgoing queue when NATS is away, and a load test across three servers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from sockety.chat import ChatClient, ChatEvent
from sockety.chat._client import ChatMessage, UsersChanged
from sockety.cluster import Cluster, NatsServer
from sockety.cluster._demo import SAY, TELL

from .conftest import HOST, cluster_of, clustered, peer
from .test_chat import chats


def test_outgoing_queue_is_bounded_while_nats_is_down(nats: NatsServer, run: Any) -> None:
    """NATS stops: nats-py buffers up to its reconnect buffer, our queue up to its bound, the
    rest is dropped and counted; memory stays bounded. NATS back: what was kept is sent."""

    async def main() -> None:
        async with (
            Cluster(
                nats.url, name="sender", max_queued=100, reconnect_buffer_size=64 * 1024
            ) as sender,
            Cluster(nats.url, name="receiver") as receiver,
        ):
            got: list[bytes] = []
            await receiver.subscribe("t", lambda data, origin: got.append(data))
            await nats.stop()
            payload = b"x" * 1024
            accepted = 0
            for _ in range(1000):
                accepted += sender.publish("t", payload)
                assert sender.queued <= 100
                await asyncio.sleep(0)  # let the pump hand what it can to nats-py
            dropped = sender.metrics.dropped.labels("queue_full")._value.get()
            assert accepted + dropped == 1000
            assert dropped > 0 and accepted < 300  # ~64 KiB in nats-py + 100 in the queue
            assert sender.queued_bytes <= 100 * (len(payload) + 64)
            await nats.start()
            await sender.wait_reconnected(1)
            await sender.flush()
            await receiver.wait_reconnected(1)
            # What nats-py buffered may have reached NATS before the receiver was back (core
            # NATS is at most once); what arrives, arrives once. Both links are up now (nats-py
            # restores subscriptions before it reports the reconnect): a marker gets through.
            ended = asyncio.Event()
            await receiver.subscribe("end", lambda data, origin: ended.set())
            assert sender.publish("end", b"end")
            await sender.flush()
            await ended.wait()
            assert len(got) <= accepted
            assert all(item == payload for item in got)
            assert sender.queued == 0 and sender.queued_bytes == 0

    run(main)


def test_load_50_clients_10000_messages_3_servers(nats: NatsServer, run: Any) -> None:
    """50 clients on 3 servers; each tells its successor (always on another server) 200
    things, and says 2 things to everyone: 0 lost, 0 duplicated, each sender's order kept."""
    clients, per_client, broadcasts = 50, 200, 2

    async def main() -> None:
        async with clustered(nats, 3) as servers, AsyncExitStack() as stack:
            peers = [
                await stack.enter_async_context(peer(servers[i % 3], f"u{i}"))
                for i in range(clients)
            ]

            async def talk(i: int) -> None:
                connection = peers[i].connection
                assert connection is not None
                target = f"u{(i + 1) % clients}"
                told = [
                    connection.request(TELL([target, f"t{i}:{n}".encode()]))
                    for n in range(per_client)
                ]
                said = [connection.request(SAY(f"b{i}:{n}".encode())) for n in range(broadcasts)]
                assert set(await asyncio.gather(*told, *said)) == {0}

            await asyncio.gather(*(talk(i) for i in range(clients)))
            expected = per_client + clients * broadcasts
            for i, who in enumerate(peers):
                heard = await who.wait_heard(expected)
                source = (i - 1) % clients
                told = [h for h in heard if h.startswith(b"t")]
                assert told == [f"t{source}:{n}".encode() for n in range(per_client)]
                said = [h for h in heard if h.startswith(b"b")]
                assert len(said) == len(set(said)) == clients * broadcasts
                for sender in range(clients):
                    mine = [h for h in said if h.startswith(f"b{sender}:".encode())]
                    assert mine == [f"b{sender}:{n}".encode() for n in range(broadcasts)]
            for server in servers:
                assert await asyncio.wait_for(cluster_of(server).flush(), 10) is None
            # nothing more arrives: a last broadcast is everyone's next message
            assert peers[0].connection is not None
            await peers[0].connection.request(SAY(b"last"))
            for who in peers:
                heard = await who.wait_heard(expected + 1)
                assert len(heard) == expected + 1 and heard[-1] == b"last"
            drops = sum(
                cluster_of(s).metrics.dropped.labels(r)._value.get()
                for s in servers
                for r in ("queue_full", "slow_consumer", "undeliverable")
            )
            assert drops == 0

    run(main, timeout=100)


def test_a_slow_subscriber_is_bounded_and_its_drops_counted(nats: NatsServer, run: Any) -> None:
    """A receiver whose subscription may hold 5 messages gets a burst of 2,000: NATS (nats-py)
    drops what does not fit instead of buffering it, and every drop is counted."""

    async def main() -> None:
        async with (
            Cluster(nats.url, name="sender") as sender,
            Cluster(nats.url, name="receiver", pending_msgs_limit=5) as receiver,
        ):
            got: list[bytes] = []
            changed = asyncio.Condition()
            ended = asyncio.Event()

            async def notify() -> None:
                async with changed:
                    changed.notify_all()

            def on_message(data: bytes, origin: str) -> None:
                got.append(data)
                asyncio.get_running_loop().create_task(notify())

            await receiver.subscribe("burst", on_message)
            await receiver.subscribe("end", lambda data, origin: ended.set())
            for i in range(2000):
                assert sender.publish("burst", b"%d" % i)
            assert sender.publish("end", b"")
            await sender.flush()
            # NATS delivers in order on one connection: at "end", every burst message was
            # queued for the callback or dropped
            await ended.wait()
            dropped = receiver.metrics.dropped.labels("slow_consumer")
            async with changed:
                await changed.wait_for(lambda: len(got) + dropped._value.get() >= 2000)
            assert dropped._value.get() > 0
            assert len(got) + dropped._value.get() == 2000
            assert len(got) == len(set(got))  # what arrived, arrived once
            assert got == sorted(got, key=int)  # and in order

    run(main)


def test_chat_load_50_users_10000_messages_3_servers(nats: NatsServer, run: Any) -> None:
    """The chat under load: 50 people on 3 clustered chat servers say 200 things each, all at
    once (10,000 messages, 500,000 deliveries): everyone gets every message once, each
    person's in the order they said them, and all in the same order (the history's)."""
    users, each = 50, 200

    async def main() -> None:
        async with chats(nats, 3) as servers:
            done = [asyncio.Event() for _ in range(users)]
            heard: list[list[tuple[int, str, str]]] = [[] for _ in range(users)]
            ready = [asyncio.Event() for _ in range(users)]
            everyone = {f"user{i:02}" for i in range(users)}

            def recorder(i: int) -> Callable[[ChatEvent], None]:
                def record(event: ChatEvent) -> None:
                    if isinstance(event, ChatMessage):
                        heard[i].append((event.id, event.author, event.content))
                        if len(heard[i]) >= users * each:
                            done[i].set()
                    elif isinstance(event, UsersChanged) and set(event.names) == everyone:
                        ready[i].set()  # everyone is in

                return record

            clients = [
                ChatClient(HOST, servers[i % 3].port, name=f"user{i:02}", on_event=recorder(i))
                for i in range(users)
            ]
            tasks = [asyncio.ensure_future(client.run()) for client in clients]
            try:
                for event in ready:
                    await event.wait()
                verdicts = [client.send_message(f"{n}") for n in range(each) for client in clients]
                await asyncio.gather(*verdicts)
                for event in done:
                    await event.wait()
                first = heard[0]
                assert len(first) == users * each
                assert [m[0] for m in first] == list(range(1, users * each + 1))
                for i, got in enumerate(heard):
                    assert got == first, f"user{i:02} saw another order"
                for name in (c.wanted_name for c in clients):
                    mine = [content for _, author, content in first if author == name]
                    assert mine == [f"{n}" for n in range(each)]
            finally:
                for client in clients:
                    await client.stop()
                await asyncio.gather(*tasks, return_exceptions=True)

    run(main, timeout=100)
