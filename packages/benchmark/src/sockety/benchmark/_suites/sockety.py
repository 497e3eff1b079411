"""Suites ``sockety-tcp`` and ``sockety-tls``: sockety-server and sockety-client, as a user
would write them (a Router with one handler per action, drafts prepared once).

``ping`` is n/a: Sockety's Heartbeat is one-way by design (it only keeps a quiet connection
alive), so there is no protocol-level round trip to time.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, cast

from sockety.client import Connection as SocketyConnection
from sockety.client import Draft, FastReply, FileTransfer, Message, Response, ResponseDraft, Router
from sockety.client import connect as sockety_connect
from sockety.core import Connection as Core
from sockety.core import ConnectionOpened, FastReplyReceived, new_id
from sockety.server import serve as sockety_serve

from .._cases import ALL_CASE_NAMES, REGULAR_RESPONSE
from .._net import bind_socket, forever
from .._paced import nagle_on, write_paced
from .._suite import Connection, Suite
from ._tls import OverTls

__all__ = ["PacedClient", "SocketyBenchConnection", "SocketyTcpSuite", "SocketyTlsSuite"]

SHORT = Draft("short")
REGULAR = Draft("regular", data="msgpack")
NOREPLY = Draft("noreply", data="msgpack")
COUNT = Draft("count")
UPLOAD = Draft("upload", data="bytes")
FILE = Draft("file", files=True)
DOWNLOAD = Draft("download", data="msgpack")
REGULAR_REPLY = ResponseDraft(data="msgpack")
COUNT_REPLY = ResponseDraft(data="msgpack")
STREAM_REPLY = ResponseDraft(stream=True)
# Bounded kernel receive buffers: with Linux's autotuning (tcp_rmem up to 32 MiB here) a bulk
# transfer can queue tens of MiB ahead of a small request. The send side stays autotuned, its
# unsent bytes bounded by the library's default notsent_lowat (64 KiB). 64 KiB against 128 KiB
# (4 interleaved runs each): small-request p99 during the fairness upload 2.0-2.7x vs 2.6-3.6x
# the unloaded one over TCP, 3.4-3.8x vs 4.9-5.8x over TLS; 1 MiB data 0.51-0.59x vs 0.43-0.78x
# the ceiling (uvloop), 0.48-0.59x vs 0.46-0.63x (asyncio). Earlier, against bounding both
# buffers: 1 MiB data 0.48-0.72x vs 0.46-0.56x, fairness about the same.
LIMITS: dict[str, Any] = {"receive_buffer_size": 64 * 1024}


def make_router() -> Router:
    router = Router()
    received = 0

    @router.action("short")
    def short(message: Message) -> int:
        return FastReply.ACCEPT

    @router.action("regular")
    def regular(message: Message) -> None:
        message.msgpack()
        message.respond(REGULAR_REPLY(REGULAR_RESPONSE))

    @router.action("noreply")
    def noreply(message: Message) -> None:
        nonlocal received
        message.msgpack()
        received += 1

    @router.action("count")
    def count(message: Message) -> None:
        message.respond(COUNT_REPLY(received))

    @router.action("upload")
    def upload(message: Message) -> int:
        return FastReply.ACCEPT  # the data arrived whole before the handler runs

    @router.action("file")
    async def file(message: Message) -> int:
        for received_file in message.files:
            async for _ in received_file:
                pass
        return FastReply.ACCEPT

    @router.action("download")
    async def download(message: Message) -> None:
        total, size = message.msgpack()
        reply = message.respond(STREAM_REPLY())
        assert reply.stream is not None
        chunk = bytes(size)
        for _ in range(total // size):
            await reply.stream.send(chunk)
        reply.stream.end()

    return router


class PacedClient(asyncio.Protocol):
    """The ``nagle-1m`` case's client: Sockety's own sans-IO core over a socket with Nagle on,
    writing each request as :func:`sockety.benchmark._paced.write_paced` does (the way a
    Node.js client may), where sockety-client would write it whole with Nagle off."""

    def __init__(self) -> None:
        self.core = Core()
        self.transport: asyncio.Transport | None = None
        self.opened = asyncio.get_running_loop().create_future()
        self.replies: dict[bytes, asyncio.Future[int]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        nagle_on(transport)
        self.transport.write(self.core.bytes_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.core.receive_data(data):
            if isinstance(event, FastReplyReceived):
                reply = self.replies.pop(event.id, None)
                if reply is not None and not reply.done():
                    reply.set_result(event.code)
            elif isinstance(event, ConnectionOpened) and not self.opened.done():
                self.opened.set_result(None)
        if self.core.has_queued and self.transport is not None:  # e.g. heartbeats
            self.transport.write(self.core.bytes_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionResetError("connection lost")
        for reply in (self.opened, *self.replies.values()):
            if not reply.done():
                reply.set_exception(error)
        self.replies.clear()

    async def upload(self, body: bytes) -> int:
        assert self.transport is not None
        id = new_id()
        reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.replies[id] = reply
        self.core.send_message(id, "upload", body, expects_response=True)
        await write_paced(self.transport, [self.core.bytes_to_send()])
        return await reply


class SocketyBenchConnection(Connection):
    def __init__(
        self, client: SocketyConnection, paced: Callable[[], Awaitable[PacedClient]]
    ) -> None:
        self.client = client
        self.open_paced = paced
        self.paced: PacedClient | None = None

    def short(self) -> Any:
        return self.client.request(SHORT())

    async def regular(self, obj: dict[str, Any]) -> Any:
        reply = await self.client.request(REGULAR(obj))
        assert isinstance(reply, Response)
        return reply.msgpack()

    def send(self, obj: dict[str, Any]) -> Any:
        self.client.send_nowait(NOREPLY(obj))
        return self.client.drain()

    async def received(self) -> int:
        reply = await self.client.request(COUNT())
        assert isinstance(reply, Response)
        count: int = reply.msgpack()
        return count

    async def upload(self, body: bytes) -> Any:
        await self.client.drain()
        return await self.client.request(UPLOAD(body))

    def bulk_upload(self, body: bytes) -> Any:
        # 64 MiB is what files are for: message data is held whole in memory (max_data_size).
        return self.upload_memory_file(body)

    async def upload_paced(self, body: bytes) -> Any:
        if self.paced is None:
            self.paced = await self.open_paced()
        return await self.paced.upload(body)

    async def upload_file(self, path: Path) -> Any:
        await self.client.drain()
        return await self.client.request(FILE(files=[FileTransfer.from_path(path)]))

    async def upload_memory_file(self, body: bytes) -> Any:
        await self.client.drain()
        return await self.client.request(FILE(files=[FileTransfer.from_bytes(body, "f.bin")]))

    async def download(self, total: int, chunk: int, on_data: Callable[[int], None]) -> Any:
        reply = await self.client.request(DOWNLOAD([total, chunk]))
        assert isinstance(reply, Response) and reply.stream is not None
        async for piece in reply.stream:
            on_data(len(piece))

    async def aclose(self) -> None:
        if self.paced is not None and self.paced.transport is not None:
            self.paced.transport.close()
        await self.client.close(timeout=1)


class SocketyTcpSuite(Suite):
    name = "sockety-tcp"
    description = "Sockety over TCP (sockety-server Router + sockety-client)"
    cases = ALL_CASE_NAMES - {"ping"}
    order = 10
    unsupported: ClassVar[dict[str, str]] = {
        "ping": "its heartbeat is one-way, with no reply to time (short is its round trip)"
    }

    def server_ssl(self) -> ssl.SSLContext | None:
        return None

    def client_ssl(self) -> ssl.SSLContext | None:
        return None

    async def serve(self, host: str, port: int, ready: Callable[[int], None]) -> None:
        sock = bind_socket(host, port)
        async with sockety_serve(make_router(), sock=sock, ssl=self.server_ssl(), **LIMITS):
            ready(sock.getsockname()[1])
            await forever()

    async def connect(self, host: str, port: int) -> Connection:
        client = await sockety_connect(host, port, ssl=self.client_ssl(), **LIMITS)

        async def open_paced() -> PacedClient:
            _, paced = await asyncio.get_running_loop().create_connection(
                PacedClient, host, port, ssl=self.client_ssl()
            )
            await paced.opened
            return paced

        return SocketyBenchConnection(client, open_paced)


class SocketyTlsSuite(OverTls, SocketyTcpSuite):
    name = "sockety-tls"
    description = "Sockety over TLS (certificates from a test CA made by trustme)"
    order = 11


SUITES = [SocketyTcpSuite(), SocketyTlsSuite()]
