"""Small networking helpers shared by the suites."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    uvloop = None  # type: ignore[assignment]

__all__ = ["HAVE_UVLOOP", "bind_socket", "forever", "run_loop"]

T = TypeVar("T")
HAVE_UVLOOP = uvloop is not None


def bind_socket(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on host:port with SO_REUSEPORT.

    SO_REUSEPORT lets several server worker processes bind the same port; the kernel spreads
    incoming connections over them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def forever() -> None:
    """Sleep until cancelled."""
    await asyncio.get_running_loop().create_future()


def run_loop(main: Callable[[], Awaitable[T]], loop: str) -> T:
    """Run ``main()`` on a fresh event loop of the requested kind ("uvloop" or "asyncio")."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop" and uvloop is not None:
        factory = uvloop.new_event_loop

    async def wrapper() -> T:
        return await main()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(wrapper())
