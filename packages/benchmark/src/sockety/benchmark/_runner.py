"""The parent process: starts server and client processes, runs cases, collects results.

Every case is bounded: warmup + duration + a fixed grace period, after which the case is
reported as ``timeout`` and the suite's processes are killed and started afresh. Processes are
always reaped in ``finally`` blocks and in an ``atexit`` hook, so Ctrl-C, a crashed server or a
hung client never leaves a child behind.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil

from ._cases import Case
from ._child import client_main, server_main
from ._stats import CpuWindow, merge
from ._suite import CaseSamples, Suite

__all__ = [
    "BenchmarkError",
    "Options",
    "Progress",
    "SuiteProcesses",
    "plan_cores",
    "run_benchmark",
]

#: Seconds allowed on top of warmup + duration before a case is declared hung.
GRACE = 30.0
#: Seconds allowed for a server process to import its suite and start listening.
START_TIMEOUT = 60.0


class BenchmarkError(Exception):
    """A case or a process could not run; the message goes into the table."""


@dataclass(slots=True)
class Options:
    duration: float = 3.0
    warmup: float = 1.0
    server_workers: int = 1
    clients: int = 1
    concurrency: int = 64
    connections: int = 1
    loop: str = "uvloop"
    host: str = "127.0.0.1"
    remote: str | None = None
    port: int = 0
    pin: bool = True
    rounds: int = 1  # the CLI's: run_benchmark runs one round


class Progress:
    """Callbacks the runner uses to report progress (the CLI draws a rich progress bar)."""

    def case_started(self, suite: str, case: str, seconds: float) -> None:
        pass

    def tick(self, elapsed: float) -> None:
        pass

    def case_done(self) -> None:
        pass


def plan_cores(
    servers: int, clients: int, pin: bool = True
) -> tuple[list[list[int] | None], list[list[int] | None], str]:
    """CPU cores for each server worker and client process, and a sentence saying so.

    Servers and clients get disjoint cores when at least two are available, so the two sides
    never compete for one core; several processes on one side share that side's cores.
    """
    nothing: tuple[list[list[int] | None], list[list[int] | None]] = (
        [None] * servers,
        [None] * clients,
    )
    if not pin:
        return *nothing, "not pinned (--no-pin)"
    if not hasattr(os, "sched_getaffinity"):
        return *nothing, "not pinned (no sched_setaffinity on this platform)"
    cores = sorted(os.sched_getaffinity(0))
    if servers and len(cores) < 2:
        return *nothing, "not pinned (fewer than 2 cores available)"
    if not servers:
        cli: list[list[int] | None] = [[cores[i % len(cores)]] for i in range(clients)]
        return [], cli, f"clients pinned to CPU {_fmt(set(cores[:clients]))}"
    n_srv = max(1, min(len(cores) - 1, round(len(cores) * servers / (servers + clients))))
    srv_cores, cli_cores = cores[:n_srv], cores[n_srv:]
    srv = [[srv_cores[i % len(srv_cores)]] for i in range(servers)]
    cli = [[cli_cores[i % len(cli_cores)]] for i in range(clients)]
    return (
        list(srv),
        list(cli),
        f"server workers pinned to CPU {_fmt(set(srv_cores[:servers]))}, "
        f"client processes to CPU {_fmt(set(cli_cores[:clients]))}",
    )


def _fmt(cores: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


# -- child process bookkeeping ----------------------------------------------------------------


class _Child:
    def __init__(self, role: str, process: BaseProcess, pipe: Pipe, log: str | None) -> None:
        self.role = role
        self.log = log
        self.process = process
        self.pipe = pipe
        self.pid = process.pid or 0
        self.ps: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):
            self.ps = psutil.Process(self.pid)

    def cpu(self) -> tuple[float, float]:
        if self.ps is None:
            return 0.0, 0.0
        try:
            times = self.ps.cpu_times()
        except psutil.Error:
            return 0.0, 0.0
        return times.user, times.system

    def alive(self) -> bool:
        return self.process.is_alive()

    def died(self) -> str:
        """Why the process is gone: exit code and the last line it logged."""
        text = f"{self.role} process exited (code {self.process.exitcode})"
        if self.log:
            with contextlib.suppress(OSError):
                lines = Path(self.log).read_text(errors="replace").strip().splitlines()
                if lines:
                    text += f": {lines[-1][:200]}"
        return text


_LIVE: set[_Child] = set()


def _kill_all() -> None:
    """Last resort (atexit): SIGKILL every child process group still alive."""
    for child in list(_LIVE):
        _kill(child)
    _LIVE.clear()


def _kill(child: _Child) -> None:
    if child.process.exitcode is None:
        with contextlib.suppress(OSError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(child.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        child.process.join(1)
    with contextlib.suppress(Exception):
        child.pipe.close()
    _LIVE.discard(child)


atexit.register(_kill_all)


def stop_children(children: list[_Child], grace: float = 2.0) -> None:
    """Ask children to exit, wait ``grace`` seconds, then SIGKILL their process groups."""
    for child in children:
        with contextlib.suppress(Exception):
            child.pipe.send(("exit",))
    deadline = time.monotonic() + grace
    for child in children:
        child.process.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        _kill(child)


class SuiteProcesses:
    """The server workers and client processes of one suite."""

    def __init__(self, suite: Suite, opts: Options, workdir: Path) -> None:
        self.suite = suite
        self.opts = opts
        self.workdir = workdir
        self.servers: list[_Child] = []
        self.clients: list[_Child] = []
        self.port = opts.port
        self.host = opts.remote or opts.host
        n_servers = 0 if opts.remote else opts.server_workers
        self.server_cores, self.client_cores, self.pinning = plan_cores(
            n_servers, opts.clients, opts.pin
        )
        self.ctx = multiprocessing.get_context("spawn")
        #: --server-only keeps the server's output on the terminal.
        self.log_to_terminal = False

    # -- lifecycle ----------------------------------------------------------------------------

    def _spawn(self, role: str, target: Callable[..., None], **kwargs: Any) -> _Child:
        parent_end, child_end = self.ctx.Pipe()
        log = self._log(role)
        process = self.ctx.Process(
            target=target,
            args=(child_end,),
            kwargs={**kwargs, "suite": self.suite, "loop": self.opts.loop, "log": log},
            name=f"sockety-bench-{role}",
            daemon=True,
        )
        process.start()
        child_end.close()
        child = _Child(role, process, parent_end, log)
        _LIVE.add(child)
        return child

    def _log(self, role: str) -> str | None:
        """Log file of a child: the suite's server or client log in the work directory."""
        if self.log_to_terminal:
            return None
        return str(self.workdir / f"{self.suite.name}-{role}.log")

    def start_servers(self) -> int:
        """Start the server workers one after another; the first one picks the port."""
        for i, cores in enumerate(self.server_cores):
            child = self._spawn(
                "server",
                server_main,
                host=self.opts.host,
                port=self.port,
                cores=cores,
            )
            self.servers.append(child)
            msg = self._recv(child, START_TIMEOUT, f"server worker {i} to start")
            if msg[0] != "ready":
                raise BenchmarkError(f"server worker {i} failed: {_last_line(msg)}")
            self.port = msg[1]
        return self.port

    def start(self) -> None:
        if not self.opts.remote:
            self.start_servers()
        for cores in self.client_cores:
            self.clients.append(
                self._spawn(
                    "client",
                    client_main,
                    host=self.host,
                    port=self.port,
                    cores=cores,
                    workdir=str(self.workdir),
                )
            )

    def close(self) -> None:
        stop_children(self.clients + self.servers)
        self.clients.clear()
        self.servers.clear()

    def healthy(self) -> bool:
        return all(c.alive() for c in self.servers + self.clients)

    def __enter__(self) -> SuiteProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- messaging ----------------------------------------------------------------------------

    def _recv(self, child: _Child, timeout: float, what: str) -> Any:
        ready = wait([child.pipe, child.process.sentinel], timeout)
        if child.pipe in ready:
            with contextlib.suppress(EOFError, OSError):
                return child.pipe.recv()
        if not ready:
            raise BenchmarkError(f"timed out after {timeout:.0f}s waiting for {what}")
        child.process.join(1)
        raise BenchmarkError(child.died())

    def _cpu(self, children: list[_Child]) -> tuple[float, float]:
        usr = sys_ = 0.0
        for child in children:
            u, s = child.cpu()
            usr += u
            sys_ += s
        return usr, sys_

    def run_case(self, case: Case, progress: Progress) -> dict[str, Any]:
        opts = self.opts
        params = {
            "concurrency": opts.concurrency,
            "connections": opts.connections,
            "warmup": opts.warmup,
            "duration": opts.duration,
            "timeout": GRACE,
        }
        started = time.monotonic()
        for client in self.clients:
            client.pipe.send(("case", case.name, params))
        results: dict[_Child, CaseSamples] = {}
        warm: set[_Child] = set()
        done: dict[_Child, tuple[float, tuple[float, float], tuple[float, float]]] = {}
        notes: list[str] = []
        deadline = started + opts.warmup + GRACE
        self._collect(
            results=results,
            warm=warm,
            done=done,
            deadline=deadline,
            progress=progress,
            started=started,
            notes=notes,
            phase="warm",
        )
        cli0, srv0, t0 = self._cpu(self.clients), self._cpu(self.servers), time.monotonic()
        for client in warm:
            if client not in results:
                client.pipe.send(("go",))
        deadline = time.monotonic() + opts.duration + GRACE
        self._collect(
            results=results,
            warm=warm,
            done=done,
            deadline=deadline,
            progress=progress,
            started=started,
            notes=notes,
            phase="result",
        )
        # CPU is sampled when the last client reported the end of its window ("done").
        if done:
            t1, cli1, srv1 = max(done.values())
        else:
            cli1, srv1, t1 = self._cpu(self.clients), self._cpu(self.servers), time.monotonic()
        wall = t1 - t0
        client_cpu = CpuWindow(cli1[0] - cli0[0], cli1[1] - cli0[1], wall)
        server_cpu = CpuWindow(srv1[0] - srv0[0], srv1[1] - srv0[1], wall) if self.servers else None
        row = merge(self.suite.name, case, list(results.values()), client_cpu, server_cpu)
        if notes:
            row["note"] = "; ".join(x for x in (*notes, row["note"]) if x)
            row["status"] = (
                "error" if row["status"] == "ok" and not row["requests"] else row["status"]
            )
        return row

    def _collect(
        self,
        *,
        results: dict[_Child, CaseSamples],
        warm: set[_Child],
        done: dict[_Child, tuple[float, tuple[float, float], tuple[float, float]]],
        deadline: float,
        progress: Progress,
        started: float,
        notes: list[str],
        phase: str,
    ) -> None:
        """Read client messages until every client is warm (or done) / has sent its result."""

        def waiting() -> list[_Child]:
            if phase == "warm":
                return [c for c in self.clients if c not in warm and c not in results]
            return [c for c in self.clients if c not in results]

        dead_servers = {s for s in self.servers if not s.alive()}
        while pending := waiting():
            now = time.monotonic()
            if now > deadline:
                raise BenchmarkError(
                    f"timeout: {len(pending)} client(s) did not {phase} in time (hard limit)"
                )
            objects: list[Any] = [c.pipe for c in pending] + [c.process.sentinel for c in pending]
            objects += [s.process.sentinel for s in self.servers if s not in dead_servers]
            ready = wait(objects, min(0.1, max(0.0, deadline - now)))
            progress.tick(time.monotonic() - started)
            for client in pending:
                if client.pipe in ready:
                    try:
                        msg = client.pipe.recv()
                    except (EOFError, OSError):
                        client.process.join(1)
                        raise BenchmarkError(client.died()) from None
                    if msg[0] == "warm":
                        warm.add(client)
                    elif msg[0] == "done":
                        done[client] = (
                            time.monotonic(),
                            self._cpu(self.clients),
                            self._cpu(self.servers),
                        )
                    elif msg[0] == "result":
                        results[client] = msg[1]
                    elif msg[0] == "error":
                        raise BenchmarkError(f"client process failed: {_last_line(msg)}")
                elif client.process.sentinel in ready:
                    client.process.join(1)
                    raise BenchmarkError(client.died())
            for server in self.servers:
                if server not in dead_servers and server.process.sentinel in ready:
                    dead_servers.add(server)
                    server.process.join(1)
                    notes.append(f"server crashed: {server.died()}")


def _last_line(msg: Any) -> str:
    text = str(msg[1]) if len(msg) > 1 else str(msg)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def na_row(suite: Suite, case: Case) -> dict[str, Any]:
    return {
        "suite": suite.name,
        "case": case.name,
        "title": case.title,
        "unit": case.unit,
        "status": "n/a",
        "note": f"{suite.name} has no {case.name} case"
        + (f": {suite.unsupported[case.name]}" if case.name in suite.unsupported else ""),
    }


def error_row(suite: Suite, case: Case, message: str) -> dict[str, Any]:
    status = "timeout" if message.startswith("timeout") else "error"
    return {
        "suite": suite.name,
        "case": case.name,
        "title": case.title,
        "unit": case.unit,
        "status": status,
        "note": message,
    }


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sockety-bench-") as path:
        yield Path(path)


def run_benchmark(
    opts: Options,
    plan: list[tuple[Suite, list[Case]]],
    progress: Progress,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every (suite, cases) of ``plan``; returns one result row per case."""
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    with _workdir() as workdir:
        for suite, cases in plan:
            procs: SuiteProcesses | None = None
            start_error: str | None = None
            try:
                suite.prepare(workdir)
                for case in cases:
                    if case.name not in suite.cases:
                        add(na_row(suite, case))
                        progress.case_started(suite.name, case.name, 0)
                        progress.case_done()
                        continue
                    progress.case_started(suite.name, case.name, opts.warmup + opts.duration)
                    if start_error is not None:
                        add(error_row(suite, case, start_error))
                        progress.case_done()
                        continue
                    try:
                        if procs is None:
                            procs = SuiteProcesses(suite, opts, workdir)
                            try:
                                procs.start()
                            except BenchmarkError as exc:
                                start_error = str(exc)
                                raise
                        row = procs.run_case(case, progress)
                        row["pinning"] = procs.pinning
                    except BenchmarkError as exc:
                        row = error_row(suite, case, str(exc))
                        if procs is not None:
                            procs.close()
                            procs = None
                    add(row)
                    progress.case_done()
                    if procs is not None and not procs.healthy():
                        procs.close()
                        procs = None
            finally:
                if procs is not None:
                    procs.close()
    return rows
