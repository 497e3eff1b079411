"""Failure semantics: whatever ends a connection, pending calls fail promptly and say why; a bad
peer only loses its own connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from sockety.client import (
    ConnectError,
    Connection,
    ConnectionClosedError,
    ConnectionLostError,
    Draft,
    FastReply,
    GoingAwayError,
    Message,
    RemoteProtocolError,
    ResponseDraft,
    Router,
    connect,
)
from sockety.core._encoding import message_header_packet
from sockety.server import serve

from .conftest import HOST, Gate, Net, until

ping = Draft("ping")
held = Draft("held")
hang = Draft("hang")


def router(gate: Gate | None = None) -> Router:
    router = Router()

    @router.action("ping")
    def on_ping(message: Message) -> int:
        return FastReply.ACCEPT

    @router.action("held")
    async def on_held(message: Message) -> int:
        assert gate is not None
        await gate.hold()
        return FastReply.ACCEPT

    @router.action("hang")
    async def on_hang(message: Message) -> None:
        await asyncio.Event().wait()

    return router


def test_graceful_server_close_during_100_in_flight_requests(net: Net) -> None:
    gate = Gate(100)

    async def main() -> None:
        server = await net.serve(router(gate))
        client = await net.connect(server)
        requests = [client.request(held()) for _ in range(100)]
        await gate.arrived.wait()  # all 100 are being handled
        closing = server.close(timeout=5)
        # Go Away reaches the client: new requests are refused at once, clearly.
        await client.wait_going_away()
        with pytest.raises(GoingAwayError, match="going away"):
            client.request(ping())
        # ... and new connections are refused too.
        with pytest.raises(ConnectError):
            await connect(HOST, server.port, ssl=net.client_ssl, connect_timeout=2)
        assert client.pending_requests == 100  # none answered or failed meanwhile
        gate.released.set()
        assert await asyncio.gather(*requests) == [FastReply.ACCEPT] * 100
        await closing
        await client.wait_closed()
        assert type(client.close_reason) is ConnectionClosedError

    net.run(main())


def test_1000_concurrent_requests_through_16_channels(net: Net) -> None:
    seen: list[bytes] = []
    echo_router = Router()

    @echo_router.action("n")
    async def on_n(message: Message) -> int:
        seen.append(bytes(message.data))
        await asyncio.sleep(0)
        return int.from_bytes(message.data, "little") % 4096

    numbered = Draft("n", data="bytes")

    async def main() -> None:
        async with net.pair(echo_router, channels=16) as (server, client):
            assert client.channels == 16
            replies = await asyncio.gather(
                *(client.request(numbered(i.to_bytes(2, "little"))) for i in range(1000))
            )
            assert replies == [i % 4096 for i in range(1000)]
            assert sorted(seen) == sorted(i.to_bytes(2, "little") for i in range(1000))

    net.run(main())


def test_peer_closes_socket_mid_request(tcp: Net) -> None:
    async def main() -> None:
        # A raw peer: it sends its header, reads our request, then its socket just goes away
        # (a reset: SO_LINGER 0).
        got_request = asyncio.Event()

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"\xe3")
            request = message_header_packet(bytes(16), b"hang", 0, (), False, True)
            await reader.readexactly(1 + len(request))  # the client's header and request
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            got_request.set()
            writer.transport.abort()

        listener = await asyncio.start_server(peer, HOST, 0)
        async with listener, connect(HOST, listener.sockets[0].getsockname()[1]) as client:
            request = client.request(hang())
            await got_request.wait()
            started = time.monotonic()
            with pytest.raises(ConnectionLostError) as error:
                await request
            assert time.monotonic() - started < 1
            assert error.value.kind == "lost"

    tcp.run(main())


SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from sockety.server import serve, Router

    router = Router()

    @router.action("hang")
    async def hang(message):
        await asyncio.Event().wait()

    async def main():
        async with serve(router, "127.0.0.1", 0) as server:
            print(server.port, flush=True)
            await server.serve_forever()

    asyncio.run(main())
    """
)


def test_server_process_killed_mid_request(tcp: Net) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())

        async def main() -> None:
            async with connect(HOST, port) as client:
                request = client.request(hang())
                assert await client.request(Draft("unknown")()) == FastReply.NOT_IMPLEMENTED
                process.kill()
                started = time.monotonic()
                with pytest.raises(ConnectionLostError):
                    await request
                assert time.monotonic() - started < 1
                with pytest.raises(ConnectionClosedError):
                    client.request(ping())

        tcp.run(main())
    finally:
        process.kill()
        process.wait(5)


def test_malformed_bytes_close_only_that_connection(net: Net) -> None:
    gone: asyncio.Queue[ConnectionClosedError | None] = asyncio.Queue()

    async def main() -> None:
        on_disconnect = lambda c: gone.put_nowait(c.close_reason)  # noqa: E731
        async with net.pair(router(), on_disconnect=on_disconnect) as (server, healthy):
            reader, writer = await asyncio.open_connection(
                HOST, server.port, ssl=net.client_ssl, server_hostname=HOST if net.tls else None
            )
            writer.write(b"\xe3\xf7garbage")
            await writer.drain()
            assert await reader.read(1) == b"\xe3"  # the server's header, then it hangs up
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            reason = await gone.get()
            assert isinstance(reason, ConnectionLostError)
            assert isinstance(reason.cause, RemoteProtocolError)
            assert reason.cause.kind == "unknown_packet"
            assert len(server.connections) == 1  # the bad one left the registry
            assert await healthy.request(ping()) == FastReply.ACCEPT

    net.run(main())


def test_protocol_error_reason_is_typed(tcp: Net) -> None:
    async def scenario() -> None:
        closed: asyncio.Queue[ConnectionClosedError | None] = asyncio.Queue()
        server = await tcp.serve(
            router(), on_disconnect=lambda c: closed.put_nowait(c.close_reason)
        )
        sock = socket.create_connection((HOST, server.port))
        sock.sendall(b"\xe3\x20\x05\x01\x00\x00\x00\x00")  # flags: reserved bit 0 set
        reason = await closed.get()
        sock.close()
        assert isinstance(reason, ConnectionLostError)
        assert isinstance(reason.cause, RemoteProtocolError)
        assert reason.cause.kind == "bad_header"
        await server.close()

    tcp.run(scenario())


def test_idle_peer_is_closed_and_heartbeats_keep_a_quiet_one_alive(tcp: Net) -> None:
    async def main() -> None:
        async with tcp.serve(router(), idle_timeout=0.3, heartbeat_interval=None) as server:
            # A quiet client that heartbeats ...
            client = await tcp.connect(server, heartbeat_interval=0.05, idle_timeout=None)
            # ... outlives two raw peers, opened after it one after the other, that send their
            # header and then nothing: each is closed by the timeout.
            for _ in range(2):
                reader, writer = await asyncio.open_connection(HOST, server.port)
                writer.write(b"\xe3")
                started = time.monotonic()
                assert await reader.read(1) == b"\xe3"
                assert await asyncio.wait_for(reader.read(), 3) == b""
                assert 0.25 < time.monotonic() - started < 1.5
                writer.close()
            assert not client.closed
            assert await client.request(ping()) == FastReply.ACCEPT
            await client.close()

    tcp.run(main())


def test_slow_loris_without_header_is_closed_by_open_timeout(tcp: Net) -> None:
    async def main() -> None:
        async with tcp.serve(router(), open_timeout=0.3) as server:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            started = time.monotonic()
            assert await reader.read(1) == b"\xe3"
            assert await asyncio.wait_for(reader.read(), 3) == b""
            assert time.monotonic() - started < 1.5
            writer.close()

    tcp.run(main())


def test_connect_errors_are_typed(tcp: Net) -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
        sock.close()  # nothing listens there now
        with pytest.raises(ConnectError, match="could not connect"):
            await connect(HOST, port, connect_timeout=2)

    tcp.run(main())


def test_a_peer_that_never_reads_answers_cannot_grow_our_memory() -> None:
    """20,000 requests for 64 KiB answers from a peer that reads none of them: the server stops
    handling (and reading) once its write limit is full, instead of queueing 1.3 GB."""
    import tracemalloc

    from sockety.core import Connection as Core
    from sockety.core import new_id

    router = Router()
    big = ResponseDraft(data="bytes")
    answer = bytes(64 * 1024)

    @router.action("get")
    def get(message: Message) -> None:
        message.respond(big(answer))

    async def main() -> float:
        tracemalloc.start()
        try:
            accepted: asyncio.Queue[Connection] = asyncio.Queue()
            async with serve(router, HOST, 0, on_connect=accepted.put_nowait) as server:
                sock = socket.create_connection((HOST, server.port))
                sock.setblocking(False)
                peer = Core()
                peer.receive_data(b"\xe3")
                for _ in range(20_000):
                    peer.send_message(new_id(), "get", expects_response=True)
                wire = peer.bytes_to_send()
                loop = asyncio.get_running_loop()
                with contextlib.suppress(TimeoutError):  # it may block: we stopped reading
                    await asyncio.wait_for(loop.sock_sendall(sock, wire), 2)
                connection = await accepted.get()
                await until(lambda: connection.backlog_paused)  # no event says so
                assert connection.bytes_sent < 64 * 1024 * 1024  # far from 20,000 answers
                peak = tracemalloc.get_traced_memory()[1]
                sock.close()
                return peak
        finally:
            tracemalloc.stop()

    peak = Net("asyncio", False, None, None).run(main())
    assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
