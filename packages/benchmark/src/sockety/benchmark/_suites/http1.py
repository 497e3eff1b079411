"""Suite ``http1``: aiohttp server and aiohttp client over HTTP/1.1 keep-alive.

HTTP/1.1 has no multiplexing: one connection carries one request at a time (aiohttp does not
pipeline), so the requests in flight queue for the ``-cn`` connections. It has no protocol
ping and no fire-and-forget, so ``ping`` and ``noreply`` are n/a.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import aiohttp
import msgpack
from aiohttp import web

from .._cases import REGULAR_RESPONSE
from .._net import bind_socket, forever
from .._suite import Connection, Suite

__all__ = ["Http1Connection", "Http1Suite"]

_MAX_BODY = 128 * 1024 * 1024
_MSGPACK = "application/msgpack"


async def _short(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def _regular(request: web.Request) -> web.Response:
    msgpack.unpackb(await request.read())
    return web.Response(body=msgpack.packb(REGULAR_RESPONSE), content_type=_MSGPACK)


async def _data(request: web.Request) -> web.Response:
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    return web.Response(text=str(size))


async def _stream(request: web.Request) -> web.StreamResponse:
    total = int(request.query["total"])
    chunk = int(request.query["chunk"])
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    piece = bytes(chunk)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        await response.write(piece if n == chunk else piece[:n])
        sent += n
    await response.write_eof()
    return response


class Http1Connection(Connection):
    """One aiohttp session limited to one TCP connection."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent",),
        )

    async def short(self) -> Any:
        async with self.session.get(self.base + "/short") as response:
            if response.status != 204:
                raise RuntimeError(f"HTTP {response.status}")
            await response.read()

    async def regular(self, obj: dict[str, Any]) -> Any:
        async with self.session.post(
            self.base + "/regular", data=msgpack.packb(obj), headers={"Content-Type": _MSGPACK}
        ) as response:
            response.raise_for_status()
            return msgpack.unpackb(await response.read())

    async def upload(self, body: bytes) -> Any:
        async with self.session.post(self.base + "/data", data=body) as response:
            response.raise_for_status()
            if int(await response.text()) != len(body):
                raise RuntimeError("server saw a different body size")

    async def download(self, total: int, chunk: int, on_data: Callable[[int], None]) -> Any:
        url = f"{self.base}/stream?total={total}&chunk={chunk}"
        async with self.session.get(url) as response:
            response.raise_for_status()
            async for piece in response.content.iter_any():
                on_data(len(piece))

    async def aclose(self) -> None:
        await self.session.close()


class Http1Suite(Suite):
    name = "http1"
    description = "HTTP/1.1: aiohttp server, aiohttp client (keep-alive, 1 request per connection)"
    cases = frozenset(
        {"short", "regular", "data-1m", "data-4m", "file-mem", "file-disk", "stream", "fairness"}
    )
    order = 20
    unsupported: ClassVar[dict[str, str]] = {
        "ping": "HTTP/1.1 has no protocol-level ping",
        "noreply": "HTTP/1.1 answers every request (no fire-and-forget)",
    }

    async def serve(self, host: str, port: int, ready: Callable[[int], None]) -> None:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_get("/short", _short)
        app.router.add_post("/regular", _regular)
        app.router.add_post("/data", _data)
        app.router.add_get("/stream", _stream)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        sock = bind_socket(host, port)
        site = web.SockSite(runner, sock)
        await site.start()
        ready(sock.getsockname()[1])
        try:
            await forever()
        finally:
            await runner.cleanup()

    async def connect(self, host: str, port: int) -> Connection:
        conn = Http1Connection(f"http://{host}:{port}")
        try:
            await conn.short()  # open the connection now, not inside the measured window
        except BaseException:
            await conn.aclose()
            raise
        return conn


SUITES = [Http1Suite()]
