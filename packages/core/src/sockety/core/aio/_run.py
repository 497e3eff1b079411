"""Running an event loop: uvloop when it is installed, plain asyncio otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


def loop_factory(use_uvloop: bool | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """A loop factory for ``asyncio.Runner``: uvloop if ``use_uvloop`` (default: if installed)."""
    if use_uvloop is not False:
        try:
            import uvloop  # noqa: PLC0415 - optional dependency
        except ImportError:
            if use_uvloop:
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None) -> T:
    """``asyncio.run(main)`` on uvloop when it is installed (or as ``use_uvloop`` says)."""
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(main)
