"""Suite ``http2``: Hypercorn (ASGI, HTTP/2 with prior knowledge over cleartext) and a
multiplexing client built on the ``h2`` state machine, every request a stream on ONE
connection per ``-cn``. ``ping`` is the HTTP/2 PING frame; there is no fire-and-forget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast
from urllib.parse import parse_qs

import msgpack
from hypercorn.asyncio import serve
from hypercorn.config import Config

from .._cases import REGULAR_RESPONSE
from .._h2client import H2ClientProtocol
from .._net import bind_socket
from .._suite import Connection, Suite

__all__ = ["Http2Connection", "Http2Suite"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
_REGULAR_BODY = b""


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI application: /short, /regular, /data and /stream."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if path == "/regular":
                parts.append(chunk)
        if not message.get("more_body"):
            break
    status, headers, body = 200, [(b"content-type", b"application/octet-stream")], b""
    if path == "/short":
        status, headers = 204, []
    elif path == "/regular":
        msgpack.unpackb(b"".join(parts))
        body = msgpack.packb(REGULAR_RESPONSE)
        headers = [(b"content-type", b"application/msgpack")]
    elif path == "/data":
        body = str(size).encode()
    elif path == "/stream":
        query = parse_qs(scope["query_string"].decode())
        total, chunk = int(query["total"][0]), int(query["chunk"][0])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        piece = bytes(chunk)
        sent = 0
        while sent < total:
            n = min(chunk, total - sent)
            sent += n
            await send(
                {
                    "type": "http.response.body",
                    "body": piece if n == chunk else piece[:n],
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    else:
        status = 404
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Http2Connection(Connection):
    def __init__(self, protocol: H2ClientProtocol) -> None:
        self.protocol = protocol

    def ping(self) -> Awaitable[Any]:
        return self.protocol.ping()

    async def short(self) -> Any:
        response = await self.protocol.request("GET", "/short")
        if response.status != 204:
            raise RuntimeError(f"HTTP {response.status}")

    async def regular(self, obj: dict[str, Any]) -> Any:
        response = await self.protocol.request(
            "POST", "/regular", msgpack.packb(obj), content_type=b"application/msgpack"
        )
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return msgpack.unpackb(b"".join(response.body))

    async def upload(self, body: bytes) -> Any:
        response = await self.protocol.request("POST", "/data", body)
        if response.status != 200 or int(b"".join(response.body)) != len(body):
            raise RuntimeError(f"HTTP {response.status} or wrong size")

    async def download(self, total: int, chunk: int, on_data: Callable[[int], None]) -> Any:
        response = await self.protocol.request(
            "GET", f"/stream?total={total}&chunk={chunk}", on_data=on_data
        )
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")

    async def aclose(self) -> None:
        self.protocol.close()


class Http2Suite(Suite):
    name = "http2"
    description = (
        "HTTP/2: Hypercorn ASGI server (h2c prior knowledge), h2-based client, 1 connection"
    )
    cases = frozenset(
        {
            "ping",
            "short",
            "regular",
            "data-1m",
            "data-4m",
            "file-mem",
            "file-disk",
            "stream",
            "fairness",
        }
    )
    order = 25
    unsupported: ClassVar[dict[str, str]] = {
        "noreply": "HTTP/2 answers every request (no fire-and-forget)"
    }

    async def serve(self, host: str, port: int, ready: Callable[[int], None]) -> None:
        sock = bind_socket(host, port)
        config = Config()
        config.bind = [f"fd://{sock.fileno()}"]
        config.accesslog = None
        config.errorlog = None
        config.loglevel = "ERROR"
        config.keep_alive_max_requests = 2**62  # default 1000 ends the connection (GOAWAY)
        config.keep_alive_timeout = 3600
        config.h2_max_concurrent_streams = 1000
        stop = asyncio.Event()
        task = asyncio.create_task(
            serve(cast(Any, app), config, shutdown_trigger=stop.wait, mode="asgi")
        )
        # Hypercorn has no "started" hook: the socket is already listening, so connections
        # queue in the backlog until it accepts them.
        ready(sock.getsockname()[1])
        try:
            await task
        finally:
            stop.set()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def connect(self, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: H2ClientProtocol(f"{host}:{port}"), host, port
        )
        await asyncio.wait_for(protocol.ready, 10)
        return Http2Connection(protocol)


SUITES = [Http2Suite()]
