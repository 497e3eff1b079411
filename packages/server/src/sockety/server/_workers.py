"""``--workers N``: a supervisor process and N worker processes sharing one port.

Each worker is ``python -m sockety.server`` with the same arguments, binding its own listening
socket with SO_REUSEPORT (the kernel spreads new connections over them). With ``--port 0`` the
supervisor picks the port first and holds it until the workers listen.

- Readiness: a worker writes one byte to a pipe once it listens; the supervisor reports ready
  when all did. A worker that exits before it is ready fails the whole start (exit 1): an import
  error or a busy port would only repeat.
- Restarts: a worker that dies after it was ready is restarted (as gunicorn does), with the
  same readiness check.
- Signals: SIGTERM or SIGINT to the supervisor is forwarded as SIGTERM; each worker sends Go
  Away and drains within ``--grace``; the supervisor exits 0 when every worker exited 0. A second
  signal is forwarded again, which makes the workers exit at once. Workers run in their own
  process group, so a terminal's Ctrl-C reaches only the supervisor; if the supervisor dies, its
  workers see their parent pipe close and drain.
- Metrics: workers write to a ``PROMETHEUS_MULTIPROC_DIR`` the supervisor creates (and removes
  at exit); the supervisor serves all workers' metrics together on ``--metrics-port``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence

__all__ = ["supervise"]

logger = logging.getLogger("sockety.server")

READY_TIMEOUT = 60.0


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.parent_w: int | None = None  # closing it tells the worker we are gone
        self.started = 0.0
        self.exited: asyncio.Task[int] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def release(self) -> None:
        if self.parent_w is not None:
            with contextlib.suppress(OSError):
                os.close(self.parent_w)
            self.parent_w = None


def supervise(args: argparse.Namespace, argv: Sequence[str]) -> int:
    return asyncio.run(_Supervisor(args, argv).run())


class _Supervisor:
    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        self.args = args
        self.argv = list(argv)
        self.port: int = args.port
        self.metrics_dir: str | None = None
        self.workers = [_Worker(index) for index in range(args.workers)]
        self.stop = asyncio.Event()
        self.signals = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        reserved = None
        try:
            if self.port == 0:
                reserved = _reserve_port(self.args.host)
                self.port = reserved.getsockname()[1]
            if self.args.metrics_port is not None:
                self.metrics_dir = tempfile.mkdtemp(prefix="sockety-server-metrics-")
            return await self._run(reserved)
        finally:
            if reserved is not None:
                reserved.close()
            for worker in self.workers:
                worker.release()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    async def _run(self, reserved: socket.socket | None) -> int:
        logger.info(
            "supervisor pid %d starting %d workers on %s:%d",
            os.getpid(),
            len(self.workers),
            self.args.host,
            self.port,
        )
        started = await asyncio.gather(
            *(self._start(worker) for worker in self.workers), return_exceptions=True
        )
        if not all(result is True for result in started) or self.stop.is_set():
            if not self.stop.is_set():
                logger.error("a worker failed to start: stopping")
            return await self._shutdown(failed=not self.stop.is_set())
        if reserved is not None:
            reserved.close()
        metrics_http = None
        if self.metrics_dir is not None:
            from ._metrics import multiprocess_registry, serve_metrics  # noqa: PLC0415

            host = self.args.metrics_host or self.args.host
            try:
                metrics_http = await serve_metrics(
                    multiprocess_registry(self.metrics_dir), host, self.args.metrics_port
                )
            except OSError as error:
                logger.error(
                    "could not serve metrics on %s:%s: %s", host, self.args.metrics_port, error
                )
                return await self._shutdown(failed=True)
            metrics_port = metrics_http.sockets[0].getsockname()[1]
            logger.info("metrics on http://%s:%d/metrics (all workers)", host, metrics_port)
        logger.info(
            "ready: serving %s on %s:%d with %d workers (pids %s)",
            self.args.app,
            self.args.host,
            self.port,
            len(self.workers),
            " ".join(str(worker.pid) for worker in self.workers),
        )
        try:
            failed = await self._watch()
        finally:
            if metrics_http is not None:
                metrics_http.close()
        return await self._shutdown(failed=failed)

    def _on_signal(self, signum: signal.Signals) -> None:
        self.signals += 1
        if self.signals == 1:
            logger.info("%s: draining %d workers", signum.name, len(self.workers))
        else:
            logger.warning("%s again: workers exit now", signum.name)
        self.stop.set()
        self._signal_workers()

    def _signal_workers(self) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)

    async def _start(self, worker: _Worker) -> bool:
        ready_r, ready_w = os.pipe()
        parent_r, parent_w = os.pipe()
        env = dict(os.environ)
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        command = [
            sys.executable,
            "-m",
            "sockety.server",
            *self.argv,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--worker-id",
            str(worker.index),
            "--ready-fd",
            str(ready_w),
            "--parent-fd",
            str(parent_r),
        ]
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *command, pass_fds=(ready_w, parent_r), env=env, process_group=0
            )
        finally:
            os.close(ready_w)
            os.close(parent_r)
        worker.parent_w = parent_w
        worker.started = time.monotonic()
        if self.stop.is_set():  # a signal came while it was being spawned
            worker.process.send_signal(signal.SIGTERM)
        worker.exited = asyncio.get_running_loop().create_task(worker.process.wait())
        ready = await _wait_ready(ready_r, worker.exited)
        if not ready:
            code = worker.process.returncode
            if code is None:
                logger.error("worker %d (pid %d) not ready in time", worker.index, worker.pid)
            elif not self.stop.is_set():
                logger.error(
                    "worker %d (pid %d) exited with %s before listening",
                    worker.index,
                    worker.pid,
                    code,
                )
        return ready

    async def _watch(self) -> bool:
        """Until a signal; restarts workers that die. True if a restart failed."""
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            while not self.stop.is_set():
                exits = {worker.exited: worker for worker in self.workers if worker.exited}
                done, _ = await asyncio.wait(
                    {stopping, *exits}, return_when=asyncio.FIRST_COMPLETED
                )
                if self.stop.is_set():
                    return False
                for task in done:
                    worker = exits[task]
                    logger.warning(
                        "worker %d (pid %d) exited with %s after %.1f s: restarting",
                        worker.index,
                        worker.pid,
                        task.result(),
                        time.monotonic() - worker.started,
                    )
                    self._forget(worker)
                    if not await self._start(worker):
                        return True
            return False
        finally:
            stopping.cancel()

    def _forget(self, worker: _Worker) -> None:
        worker.release()
        if self.metrics_dir is not None and worker.pid:
            from prometheus_client import multiprocess  # noqa: PLC0415

            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                worker.pid, self.metrics_dir
            )

    async def _shutdown(self, *, failed: bool) -> int:
        if not self.signals:  # a signal was forwarded already: a second one would cut them off
            self._signal_workers()
        codes: list[int] = []
        for worker in self.workers:
            if worker.exited is None:
                continue
            try:
                # The workers bound their own drain by --grace; this only guards against a hang.
                code = await asyncio.wait_for(asyncio.shield(worker.exited), self.args.grace + 30)
            except TimeoutError:
                logger.error(
                    "worker %d (pid %d) did not exit: killing it", worker.index, worker.pid
                )
                if worker.process is not None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
                code = await worker.exited
            codes.append(code)
            if code != 0:
                logger.warning("worker %d (pid %d) exited with %s", worker.index, worker.pid, code)
            self._forget(worker)
        status = 1 if failed or self.signals > 1 or any(codes) else 0
        logger.info("stopped (exit %d)", status)
        return status


async def _wait_ready(fd: int, exited: asyncio.Task[int]) -> bool:
    """Whether the worker wrote its ready byte (False if it exited or timed out first)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
    )
    try:
        reading = asyncio.ensure_future(reader.read(1))
        done, _ = await asyncio.wait(
            {reading, exited}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if reading in done:
            return reading.result() == b"r"
        reading.cancel()
        return False
    finally:
        transport.close()


def _reserve_port(host: str) -> socket.socket:
    """A socket bound (not listening) to a free port, with SO_REUSEPORT so workers can bind it
    too; held until they listen, so nobody else takes the port meanwhile."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock
