"""Rules of the asyncio connection that hold for plain ``serve()`` and the CLI alike (issue #18):
orphan replies, our own pauses and the idle timeout, half-close, duplex transfers, ping, state,
options checked at once. Each failed before its fix."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from typing import Any

import pytest

from sockety.client import Draft, connect
from sockety.core._encoding import message_header_packet
from sockety.server import (
    FastReply,
    Message,
    Response,
    ResponseDraft,
    Router,
    serve,
)

from .conftest import HOST, Net
from .test_cli import app_dir, run, start

__all__ = ["app_dir", "start"]  # fixtures

raw = ResponseDraft(data="bytes", stream=True)


def test_a_streamed_reply_nobody_waits_for_does_not_stall_the_connection(tcp: Net) -> None:
    """A second, streamed reply to a single-reply request: dropped as it arrives (counted),
    never buffered until reading pauses; a later request is still answered."""
    router = Router()
    streamed = asyncio.Event()

    @router.action("twice")
    async def twice(message: Message) -> None:
        message.respond(ResponseDraft(data="bytes")(b"first"))
        extra = message.respond(raw(b"second"))
        assert extra.stream is not None
        for _ in range(64):  # 16 MiB: four times the client's max_receive_buffer
            await extra.stream.send(b"z" * (256 * 1024))
        extra.stream.end()
        await extra.sent()  # the client took all of it (it could not, had it buffered it)
        streamed.set()

    @router.action("ping")
    def ping(message: Message) -> int:
        return FastReply.ACCEPT

    async def main() -> None:
        async with tcp.pair(router) as (_, client):
            reply = await client.request(Draft("twice")())
            assert isinstance(reply, Response) and reply.data == b"first"
            await asyncio.wait_for(streamed.wait(), 20)
            assert await client.request(Draft("ping")()).response(timeout=10) == FastReply.ACCEPT
            assert client.orphan_replies == 1

    tcp.run(main(), timeout=60)


def test_the_idle_timeout_never_fires_while_we_paused_reading(tcp: Net) -> None:
    """A handler reads its stream late: reading pauses (max_receive_buffer), the client's bytes
    and heartbeats wait in the kernel, and that silence is ours, not the peer's."""
    router = Router()
    go = asyncio.Event()

    @router.action("late")
    async def late(message: Message) -> None:
        assert message.stream is not None
        await go.wait()
        body = await message.stream.read()
        message.respond(ResponseDraft(data="bytes")(hashlib.sha256(body).digest()))

    body = b"q" * (4 << 20)

    async def main() -> None:
        async with tcp.pair(
            router,
            {"heartbeat_interval": 0.1},
            idle_timeout=0.5,
            max_receive_buffer=64 * 1024,
            receive_buffer_size=64 * 1024,
        ) as (server, client):
            request = client.request(Draft("late", stream=True)())
            assert request.stream is not None
            request.stream.write(body)
            request.stream.end()
            began = time.monotonic()
            while time.monotonic() - began < 1.5:  # three idle timeouts of ours, paused
                await asyncio.sleep(0.1)
                assert not client.closed
            go.set()
            reply = await request.response(timeout=20)
            assert isinstance(reply, Response)
            assert reply.data == hashlib.sha256(body).digest()

    tcp.run(main(), timeout=60)


def test_a_half_closed_peer_still_gets_every_answer_then_a_clean_close(tcp: Net) -> None:
    router = Router()

    @router.action("slow")
    async def slow(message: Message) -> int:
        await asyncio.sleep(0.05)
        return FastReply.ACCEPT

    count = 50
    closed: list[Any] = []

    def peer(port: int) -> bytes:
        with socket.create_connection((HOST, port), timeout=10) as sock:
            sock.sendall(
                b"\xe3"
                + b"".join(
                    message_header_packet(n.to_bytes(16, "little"), b"slow", 0, (), False, True)
                    for n in range(count)
                )
            )
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received

    async def main() -> bytes:
        async with serve(router, HOST, 0, on_disconnect=closed.append) as server:
            received = await asyncio.to_thread(peer, server.port)
            for _ in range(500):
                if closed:
                    break
                await asyncio.sleep(0.01)
            return received

    received = tcp.run(main(), timeout=30)
    replies = [n for n in range(count) if b"\x30" + n.to_bytes(16, "little") in received]
    assert len(replies) == count  # every answer (fast reply 0: 0x30 + id)
    reason = closed[0].close_reason
    assert reason is not None and reason.kind == "closed"


def test_ping_measures_the_round_trip_and_state_is_the_applications(net: Net) -> None:
    async def main() -> None:
        async with net.pair(Router()) as (server, client):
            rtt = await client.ping(timeout=5)
            assert 0 < rtt < 5
            (connection,) = server.connections
            connection.state.user = "alice"
            assert connection.state.user == "alice"
            assert await connection.ping(timeout=5) > 0  # the server pings the client too

    net.run(main(), timeout=30)


def test_unknown_options_fail_at_once() -> None:
    with pytest.raises(TypeError, match="idle_timout"):
        serve(Router(), HOST, 0, idle_timout=3)
    with pytest.raises(TypeError, match="max_buffer_bytes"):
        connect(HOST, 1, max_buffer_bytes=3)


def test_long_action_names_of_the_reference_are_received_by_default(tcp: Net) -> None:
    name = "a" * 65535
    router = Router()

    @router.action(name)
    def long(message: Message) -> int:
        return FastReply.ACCEPT

    async def main() -> None:
        async with tcp.pair(router) as (_, client):
            assert await client.request(Draft(name)()) == FastReply.ACCEPT

    tcp.run(main(), timeout=30)


def test_defaults_keep_a_peer_heartbeating_every_45_s_connected() -> None:
    """The reference heartbeats every 45 s; the idle deadline must leave room for a missed one."""
    from sockety.core.aio import Connection

    async def main() -> float | None:
        return Connection()._idle_timeout  # the default, read where it is kept

    idle = run(main())
    assert idle is not None and idle >= 2 * 45


@pytest.mark.parametrize(
    ("loop", "tls"),
    [("asyncio", False), ("asyncio", True), ("uvloop", False), ("uvloop", True)],
    ids=["asyncio-tcp", "asyncio-tls", "uvloop-tcp", "uvloop-tls"],
)
def test_duplex_streams_complete_under_the_cli(
    start: Any, tmp_path: Any, ca: Any, loop: str, tls: bool
) -> None:
    """A request stream up and a response stream down at once (64 MiB each) under
    ``sockety-server``: each side keeps reading while its own writes wait."""
    size = 64 << 20
    args = ["duplexapp:router", "--port", "0", "--loop", loop]
    client_ssl = None
    if tls:
        cert = ca.issue_cert(HOST)
        cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
        args += ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
        import ssl

        client_ssl = ssl.create_default_context()
        ca.configure_trust(client_ssl)
    (tmp_path / "duplexapp.py").write_text(DUPLEX_APP)
    server = start(*args, "--app-dir", str(tmp_path))
    port = server.ready()

    async def main() -> None:
        async with connect(HOST, port, ssl=client_ssl) as client:
            request = client.request(Draft("duplex", data="msgpack", stream=True)(size))
            assert request.stream is not None

            async def upload() -> None:
                assert request.stream is not None
                chunk = b"u" * (256 * 1024)
                for _ in range(size // len(chunk)):
                    await request.stream.send(chunk)
                request.stream.end()

            async def download() -> int:
                reply = await request
                assert isinstance(reply, Response) and reply.stream is not None
                total = 0
                async for part in reply.stream:
                    total += len(part)
                return total

            _, down = await asyncio.gather(upload(), download())
            assert down == size

    run(main(), timeout=120)


DUPLEX_APP = """
import asyncio
from sockety.server import Message, ResponseDraft, Router

router = Router()
down = ResponseDraft(stream=True)


@router.action("duplex")
async def duplex(message: Message) -> None:
    size = message.msgpack()
    reply = message.respond(down())
    chunk = b"d" * (256 * 1024)

    async def send() -> None:
        for _ in range(size // len(chunk)):
            await reply.stream.send(chunk)
        reply.stream.end()

    async def receive() -> int:
        total = 0
        async for part in message.stream:
            total += len(part)
        return total

    _, got = await asyncio.gather(send(), receive())
    assert got == size
"""
