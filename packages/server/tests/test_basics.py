"""The user API end to end, both directions, on every loop and transport."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from sockety.client import (
    Connection,
    ConnectionClosedError,
    ConnectionLostError,
    Draft,
    FastReply,
    Message,
    Response,
    ResponseDraft,
    ResponseTimeoutError,
    Router,
)

from .conftest import Net

ping = Draft("ping")
echo = Draft("echo", data="msgpack")
raw = Draft("raw", data="bytes")
pong = ResponseDraft(data="msgpack")


def make_router() -> Router:
    router = Router()

    @router.action("ping")
    def on_ping(message: Message) -> int:
        return FastReply.ACCEPT

    @router.action("echo")
    def on_echo(message: Message) -> None:
        message.respond(pong(message.msgpack()))

    @router.action("raw")
    async def on_raw(message: Message) -> None:
        await asyncio.sleep(0)
        message.respond(ResponseDraft(data="bytes")(bytes(message.data[::-1])))

    @router.action("code")
    def on_code(message: Message) -> int:
        return int(message.msgpack())

    @router.action("boom")
    def on_boom(message: Message) -> int:
        raise RuntimeError("boom")

    @router.action("silent")
    async def on_silent(message: Message) -> None:
        await asyncio.Event().wait()  # never answers

    return router


def test_fast_reply_response_and_raw_data(net: Net) -> None:
    async def main() -> None:
        async with net.pair(make_router()) as (server, client):
            assert client.tls == net.tls
            assert await client.request(ping()) == FastReply.ACCEPT
            reply = await client.request(echo({"hello": "wörld", "n": [1, 2, 3]}))
            assert isinstance(reply, Response)
            assert reply.msgpack() == {"hello": "wörld", "n": [1, 2, 3]}
            assert isinstance(reply.id, uuid.UUID) and reply.id.version == 4
            back = await client.request(raw(b"abc\x00def"))
            assert isinstance(back, Response) and back.data == b"fed\x00cba"

    net.run(main())


def test_any_fast_reply_code_and_known_ones_as_enum(tcp: Net) -> None:
    code = Draft("code", data="msgpack")

    async def main() -> None:
        async with tcp.pair(make_router()) as (server, client):
            for value in (0, 1, 5, 15, 16, 1000, 4095):
                got = await client.request(code(value))
                assert got == value
                assert isinstance(got, FastReply) == (value <= 5)

    tcp.run(main())


def test_unknown_action_and_handler_error_answer_with_codes(tcp: Net) -> None:
    async def main() -> None:
        async with tcp.pair(make_router()) as (server, client):
            assert await client.request(Draft("nope")()) == FastReply.NOT_IMPLEMENTED
            assert await client.request(Draft("boom")()) == FastReply.INTERNAL_ERROR
            # the connection is still fine afterwards
            assert await client.request(ping()) == FastReply.ACCEPT

    tcp.run(main())


def test_response_timeout(tcp: Net) -> None:
    async def main() -> None:
        async with tcp.pair(make_router(), close_timeout=0.2) as (server, client):
            request = client.request(Draft("silent")())
            with pytest.raises(ResponseTimeoutError):
                await request.response(timeout=0.05)
            assert isinstance(ResponseTimeoutError("x"), TimeoutError)
        # Closing the client sent Go Away; the server's grace period (0.2 s) ended the handler
        # that never answered and closed: the pending request failed and says so.
        with pytest.raises(ConnectionLostError, match="during an exchange"):
            await request

    tcp.run(main())


def test_fire_and_forget_reaches_the_handler(net: Net) -> None:
    got: list[Any] = []
    arrived = asyncio.Event()

    def on_log(message: Message) -> None:
        got.append(message.msgpack())
        assert not message.expects_response
        if len(got) == 100:
            arrived.set()

    router = Router()
    router.add("log", on_log)
    log = Draft("log", data="msgpack")

    async def main() -> None:
        async with net.pair(router) as (server, client):
            for i in range(99):
                client.send_nowait(log(i))
            await client.send(log(99))
            await asyncio.wait_for(arrived.wait(), 10)
            assert got == list(range(100))

    net.run(main())


def test_server_pushes_to_client_and_client_answers(net: Net) -> None:
    client_router = Router()

    @client_router.action("notify")
    def on_notify(message: Message) -> None:
        message.respond(pong({"seen": message.msgpack()}))

    @client_router.action("ask")
    def on_ask(message: Message) -> int:
        return 7

    async def main() -> None:
        accepted: asyncio.Queue[Connection] = asyncio.Queue()
        async with net.pair(
            make_router(), {"handler": client_router}, on_connect=accepted.put_nowait
        ) as (server, client):
            connection = await accepted.get()
            assert server.connections == {connection}
            reply = await connection.request(Draft("notify", data="msgpack")("hi"))
            assert isinstance(reply, Response) and reply.msgpack() == {"seen": "hi"}
            assert await connection.request(Draft("ask")()) == 7
            # and the client still talks to the server
            assert await client.request(ping()) == FastReply.ACCEPT

    net.run(main())


def test_iterate_messages_without_handler(tcp: Net) -> None:
    async def main() -> None:
        accepted: asyncio.Queue[Connection] = asyncio.Queue()
        async with tcp.pair(make_router(), on_connect=accepted.put_nowait) as (server, client):
            connection = await accepted.get()
            connection.send_nowait(Draft("a")())
            connection.send_nowait(Draft("b", data="bytes")(b"x"))
            names = []
            async for message in client:
                names.append((message.action, bytes(message.data)))
                if len(names) == 2:
                    break
            assert names == [("a", b""), ("b", b"x")]

    tcp.run(main())


def test_broadcast_to_all_and_filtered(tcp: Net) -> None:
    async def main() -> None:
        async with tcp.serve(make_router()) as server:
            clients = [await tcp.connect(server) for _ in range(3)]
            for client in clients:
                assert await client.request(ping()) == FastReply.ACCEPT
            assert len(server.connections) == 3
            chosen = {c.local_address for c in clients[:2]}
            assert server.broadcast(Draft("all")()) == 3
            assert (
                server.broadcast(Draft("some")(), where=lambda c: c.remote_address in chosen) == 2
            )
            for index, client in enumerate(clients):
                got = [(await anext(aiter(client))).action]
                if index < 2:
                    got.append((await anext(aiter(client))).action)
                assert got == (["all", "some"] if index < 2 else ["all"])
            for client in clients:
                await client.close()

    tcp.run(main())


def test_close_is_graceful_and_idempotent(net: Net) -> None:
    async def main() -> None:
        async with net.pair(make_router()) as (server, client):
            assert await client.request(ping()) == FastReply.ACCEPT
            await client.close()
            await client.close()
            assert client.closed
            assert type(client.close_reason) is ConnectionClosedError
            with pytest.raises(ConnectionClosedError):
                client.request(ping())

    net.run(main())


def test_tls_connections_write_smaller_packets(net: Net) -> None:
    # Over TLS bulk moves about a third as fast, so packets default to 64 KiB instead of the
    # core's 128 KiB (less for a small message to wait behind); a given size always wins.
    body = bytes(range(256)) * 4096  # 1 MiB: several packets either way
    router = make_router()

    @router.action("bounce")
    def bounce(message: Message) -> None:
        message.respond(ResponseDraft(data="bytes")(message.data))

    async def main() -> None:
        expected = 64 * 1024 if net.tls else 128 * 1024
        async with net.pair(router) as (server, client):
            reply = await client.request(Draft("bounce", data="bytes")(body))
            assert isinstance(reply, Response) and reply.data == body
            (accepted,) = server.connections
            assert client._core.max_packet_size == expected
            assert accepted._core.max_packet_size == expected
        async with net.pair(router, {"max_packet_size": 96 * 1024}) as (_server, client):
            reply = await client.request(Draft("bounce", data="bytes")(body))
            assert isinstance(reply, Response) and reply.data == body
            assert client._core.max_packet_size == 96 * 1024

    net.run(main())


def test_socket_options_reach_the_kernel(net: Net) -> None:
    import socket

    async def main() -> None:
        client_options = {"receive_buffer_size": 64 * 1024, "notsent_lowat": 96 * 1024}
        async with net.pair(make_router(), client_options) as (_server, client):
            assert await client.request(ping()) == FastReply.ACCEPT
            sock = client._transport.get_extra_info("socket")  # type: ignore[union-attr]
            # Linux doubles SO_RCVBUF for bookkeeping; the send side stays autotuned.
            assert 64 * 1024 <= sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < 256 * 1024
            if hasattr(socket, "TCP_NOTSENT_LOWAT"):
                lowat = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
                assert lowat == 96 * 1024

    net.run(main())
