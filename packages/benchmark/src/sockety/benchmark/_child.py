"""Entry points of the server and client processes (started with the ``spawn`` method).

Each child puts itself in its own process group (so a terminal Ctrl-C reaches only the
parent, which then stops the children in order), ignores SIGINT, asks Linux to kill it when
the parent dies (PR_SET_PDEATHSIG) and also exits when its pipe to the parent closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from ._cases import CASES_BY_NAME
from ._net import run_loop
from ._suite import CaseSamples, Suite

__all__ = ["client_main", "detach", "server_main"]

_PR_SET_PDEATHSIG = 1


def detach(cores: list[int] | None, log: str | None = None) -> None:
    """Common child setup: own process group, die with the parent, optional CPU pinning.

    With ``log``, the child's stdout and stderr go to that file (library tracebacks about
    connections cut at the end of a case would otherwise litter the terminal).
    """
    parent = os.getppid()
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    with contextlib.suppress(OSError):
        os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    if cores and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cores)
    # Everything imported so far lives forever: keep it out of the cyclic GC's full passes,
    # which would otherwise show up as multi-millisecond latency spikes.
    gc.collect()
    gc.freeze()


class _PipeReader:
    """Delivers messages from the parent's pipe inside the event loop."""

    def __init__(self, pipe: Pipe, on_eof: Any) -> None:
        self.pipe = pipe
        self.on_eof = on_eof
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.go: asyncio.Future[None] | None = None
        asyncio.get_running_loop().add_reader(pipe.fileno(), self._readable)
        # uvloop makes the fd non-blocking; multiprocessing's send/recv need it blocking.
        os.set_blocking(pipe.fileno(), True)

    def _readable(self) -> None:
        try:
            while self.pipe.poll():
                msg = self.pipe.recv()
                if msg == ("go",) and self.go is not None and not self.go.done():
                    self.go.set_result(None)
                elif msg == ("exit",):
                    self._eof()
                    return
                else:
                    self.queue.put_nowait(msg)
        except (EOFError, OSError):
            self._eof()

    def _eof(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
        self.on_eof()

    async def warmed_up(self) -> None:
        self.go = asyncio.get_running_loop().create_future()
        self.pipe.send(("warm",))
        await self.go

    def window_closed(self) -> None:
        self.pipe.send(("done",))


def server_main(
    pipe: Pipe,
    *,
    suite: Suite,
    host: str,
    port: int,
    loop: str,
    cores: list[int] | None,
    log: str | None,
) -> None:
    """Server worker process: serve ``suite`` until the parent says stop or goes away."""
    detach(cores, log)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        _PipeReader(pipe, task.cancel)

        def ready(actual_port: int) -> None:
            pipe.send(("ready", actual_port, os.getpid()))

        with contextlib.suppress(asyncio.CancelledError):
            await suite.serve(host, port, ready)

    try:
        run_loop(main, loop)
    except BaseException:
        text = traceback.format_exc()
        sys.stderr.write(text)
        with contextlib.suppress(Exception):
            pipe.send(("error", text))
        os._exit(1)
    os._exit(0)


def client_main(
    pipe: Pipe,
    *,
    suite: Suite,
    host: str,
    port: int,
    loop: str,
    cores: list[int] | None,
    workdir: str,
    log: str | None,
) -> None:
    """Client process: run the cases the parent sends, one at a time, report samples."""
    detach(cores, log)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        reader = _PipeReader(pipe, task.cancel)
        while True:
            msg = await reader.queue.get()
            _, case_name, params = msg
            case = CASES_BY_NAME[case_name]
            limit = params["warmup"] + params["duration"] + params["timeout"]
            try:
                samples = await asyncio.wait_for(
                    suite.run_case(
                        case,
                        host,
                        port,
                        concurrency=params["concurrency"],
                        connections=params["connections"],
                        warmup=params["warmup"],
                        duration=params["duration"],
                        coordinator=reader,
                        workdir=Path(workdir),
                    ),
                    limit,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                samples = CaseSamples(error=f"{type(exc).__name__}: {exc}"[:300])
            pipe.send(("result", samples))

    try:
        with contextlib.suppress(asyncio.CancelledError):
            run_loop(main, loop)
    except BaseException:
        text = traceback.format_exc()
        sys.stderr.write(text)
        with contextlib.suppress(Exception):
            pipe.send(("error", text))
        os._exit(1)
    os._exit(0)
