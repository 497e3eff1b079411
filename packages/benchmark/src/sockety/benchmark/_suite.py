"""The suite interface, and the generic client driver that turns a suite into measurements.

A *suite* is one protocol stack under test. It has a server side (:meth:`Suite.serve`, run in
its own process) and a client side (:meth:`Suite.connect`, returning a :class:`Connection`, run
in the client processes). The harness owns everything else: processes, CPU pinning, warmup,
the measured window, latency sampling, percentiles, CPU accounting and output.

Connection methods return an ``Awaitable`` rather than being ``async def`` so that the fastest
implementations can hand back an ``asyncio.Future`` directly and skip one coroutine frame per
request; ``async def`` implementations are fine too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from abc import ABC, abstractmethod
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import Any, ClassVar, Protocol

from ._cases import (
    DATA_1M,
    DATA_4M,
    FAIRNESS,
    FILE_DISK,
    FILE_MEM,
    NAGLE_1M,
    NOREPLY,
    PING,
    REGULAR,
    REGULAR_REQUEST,
    SHORT,
    STREAM,
    Case,
)

__all__ = ["CaseSamples", "Connection", "Coordinator", "Suite", "run_case_default"]


class Connection:
    """One client connection of a suite. Implement the methods for the cases the suite lists.

    Every method may be called by many tasks at once (``-cc`` requests in flight share the
    ``-cn`` connections), so implementations must multiplex or queue internally.
    """

    def ping(self) -> Awaitable[Any]:
        """``ping``: a protocol-level heartbeat round trip."""
        raise NotImplementedError

    def send(self, obj: dict[str, Any]) -> Awaitable[Any]:
        """``noreply``: fire-and-forget ``obj`` (msgpack-able); the server must count it."""
        raise NotImplementedError

    def received(self) -> Awaitable[int]:
        """``noreply``: how many ``send`` messages the server has counted on this connection.

        Called once after the last ``send`` has returned; it must account for every message
        sent before it (e.g. a final request that is answered after all earlier messages).
        """
        raise NotImplementedError

    def short(self) -> Awaitable[Any]:
        """``short``: a request answered with a status only."""
        raise NotImplementedError

    def regular(self, obj: dict[str, Any]) -> Awaitable[Any]:
        """``regular``: msgpack ``obj`` to the server, which answers a ~50 B msgpack object."""
        raise NotImplementedError

    def upload(self, body: bytes) -> Awaitable[Any]:
        """``data-*``, ``file-mem`` and the fairness bulk: send ``body``; short reply."""
        raise NotImplementedError

    def bulk_upload(self, body: bytes) -> Awaitable[Any]:
        """``fairness``: the 64 MiB transfer, the way this protocol would carry it (default:
        ``upload``)."""
        return self.upload(body)

    def upload_paced(self, body: bytes) -> Awaitable[Any]:
        """``nagle-1m``: ``upload``, from a connection with Nagle on, its last small packets
        written after a pause (see ``sockety.benchmark._paced``)."""
        raise NotImplementedError

    def upload_memory_file(self, body: bytes) -> Awaitable[Any]:
        """``file-mem``: send ``body`` as a file, if the protocol has files. Default: upload."""
        return self.upload(body)

    async def upload_file(self, path: Path) -> Any:
        """``file-disk``: send the file at ``path``, short reply. Default: read it, then upload."""
        with path.open("rb") as f:
            body = f.read()
        return await self.upload(body)

    def download(self, total: int, chunk: int, on_data: Callable[[int], None]) -> Awaitable[Any]:
        """``stream``: ask for ``total`` bytes sent by the server in ``chunk``-sized pieces.

        Call ``on_data(nbytes)`` as pieces arrive, so throughput is counted as it happens.
        """
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the connection."""


@dataclass(slots=True)
class CaseSamples:
    """What one client process measured for one case (sent to the parent process)."""

    #: Latency of every request completed inside the measured window, nanoseconds.
    latencies: array[int] = field(default_factory=lambda: array("q"))
    #: fairness: latencies of the same small requests before the bulk transfer started.
    baseline: array[int] = field(default_factory=lambda: array("q"))
    ok: int = 0
    errors: int = 0
    #: Payload bytes moved inside the window (throughput cases).
    nbytes: int = 0
    #: Length of the measured window in seconds.
    window: float = 0.0
    #: noreply: messages sent over the whole run (warmup included) and counted by the server.
    sent: int = 0
    received: int = 0
    #: Why the case could not be measured, if it could not.
    error: str | None = None
    first_error: str | None = None


class Coordinator(Protocol):
    """The client process's link to the parent, handed to :meth:`Suite.run_case`."""

    async def warmed_up(self) -> None:
        """Report that warmup is over and wait until every client process may start measuring.

        Load keeps running while waiting, so the server sees steady load across the window.
        """

    def window_closed(self) -> None:
        """Report that the measured window is over (the parent takes its CPU snapshot)."""


class Suite(ABC):
    """A protocol stack under test. Subclass it in a module of ``sockety.benchmark._suites``.

    The instance is created in the parent process and pickled to the server and client
    processes, so keep its attributes small and picklable (paths, numbers, strings).
    """

    #: Short unique name, used in the tables and the ``-f``/``-e`` filters.
    name: ClassVar[str]
    #: One line saying what the server and client are.
    description: ClassVar[str]
    #: Names of the cases (see ``_cases.CASES``) this suite implements; others show "n/a".
    cases: ClassVar[frozenset[str]]
    #: Why it cannot run the other cases, by case name (shown once, as a table footnote).
    unsupported: ClassVar[dict[str, str]] = {}
    #: Sorting key for the tables: the raw ceiling first, then Sockety, then the others.
    order: ClassVar[int] = 50

    def prepare(self, workdir: Path) -> None:  # noqa: B027 - optional hook
        """Parent process, before any process starts (e.g. make TLS certificates in workdir)."""

    @abstractmethod
    async def serve(self, host: str, port: int, ready: Callable[[int], None]) -> None:
        """Server process: listen on ``host:port`` and serve until cancelled.

        ``port`` may be 0 (pick one). Bind with SO_REUSEPORT so several server worker
        processes can share the port, then call ``ready(actual_port)`` once accepting.
        """

    @abstractmethod
    async def connect(self, host: str, port: int) -> Connection:
        """Client process: open one connection to the server."""

    async def run_case(
        self,
        case: Case,
        host: str,
        port: int,
        *,
        concurrency: int,
        connections: int,
        warmup: float,
        duration: float,
        coordinator: Coordinator,
        workdir: Path,
    ) -> CaseSamples:
        """Client process: run one case and return what was measured.

        The default drives :meth:`connect` and the :class:`Connection` methods; override it
        only if a suite needs a different load pattern.
        """
        return await run_case_default(
            self,
            case,
            host,
            port,
            concurrency=concurrency,
            connections=connections,
            warmup=warmup,
            duration=duration,
            coordinator=coordinator,
            workdir=workdir,
        )


class _State:
    __slots__ = ("baseline", "errors", "first_error", "latencies", "nbytes", "ok", "recording")

    def __init__(self) -> None:
        self.recording = False
        self.latencies: array[int] = array("q")
        self.baseline: array[int] = array("q")
        self.ok = 0
        self.errors = 0
        self.nbytes = 0
        self.first_error: str | None = None

    def start(self) -> None:
        self.latencies = array("q")
        self.ok = self.errors = self.nbytes = 0
        self.recording = True

    def failed(self, exc: BaseException) -> None:
        if self.recording:
            self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"[:200]


def _payload(size: int) -> bytes:
    block = os.urandom(64 * 1024)
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


async def run_case_default(
    suite: Suite,
    case: Case,
    host: str,
    port: int,
    *,
    concurrency: int,
    connections: int,
    warmup: float,
    duration: float,
    coordinator: Coordinator,
    workdir: Path,
) -> CaseSamples:
    """Open ``connections`` connections, keep ``concurrency`` requests in flight, measure."""
    inflight = max(1, min(concurrency, case.max_inflight or concurrency))
    conns: list[Connection] = []
    try:
        for _ in range(max(1, connections)):
            conns.append(await asyncio.wait_for(suite.connect(host, port), 10))
    except BaseException:
        await _close_all(conns)
        raise
    state = _State()
    running = True
    sent = 0

    def make_op(conn: Connection) -> Callable[[], Awaitable[Any]]:
        if case is PING:
            return conn.ping
        if case is SHORT:
            return conn.short
        if case is REGULAR or case is FAIRNESS:
            return lambda: conn.regular(REGULAR_REQUEST)
        if case in (DATA_1M, DATA_4M):
            body = bodies[case.body]
            return lambda: conn.upload(body)
        if case is NAGLE_1M:
            paced_body = bodies[case.body]
            return lambda: conn.upload_paced(paced_body)
        if case is FILE_MEM:
            file_body = bodies[case.body]
            return lambda: conn.upload_memory_file(file_body)
        if case is FILE_DISK:
            return lambda: conn.upload_file(file_path)
        if case is STREAM:
            return lambda: conn.download(case.stream_total, case.stream_chunk, on_data)
        raise ValueError(f"no generic driver for case {case.name}")

    def on_data(n: int) -> None:
        if state.recording:
            state.nbytes += n

    async def worker(conn: Connection) -> None:
        op = make_op(conn)
        per_request = case.body
        lat = state
        while running:
            t0 = perf_counter_ns()
            try:
                await op()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.failed(exc)
                await asyncio.sleep(0.001)
                continue
            if lat.recording:
                lat.latencies.append(perf_counter_ns() - t0)
                lat.ok += 1
                lat.nbytes += per_request

    async def sender(conn: Connection) -> None:
        nonlocal sent
        while running:
            t0 = perf_counter_ns()
            try:
                await conn.send(REGULAR_REQUEST)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.failed(exc)
                await asyncio.sleep(0.001)
                continue
            sent += 1
            # A send that never suspends would starve the loop: yield once per message.
            await asyncio.sleep(0)
            if state.recording:
                state.latencies.append(perf_counter_ns() - t0)
                state.ok += 1

    async def bulk(conn: Connection) -> None:
        body = bodies[case.bulk]
        while running:
            try:
                await conn.bulk_upload(body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.failed(exc)
                await asyncio.sleep(0.001)

    bodies: dict[int, bytes] = {}
    file_path = workdir / f"body-{os.getpid()}.bin"
    if case.body:
        bodies[case.body] = _payload(case.body)
        if case is FILE_DISK:
            file_path.write_bytes(bodies[case.body])
    if case.bulk:  # made before the window: 64 MiB take tens of ms to build, a stall to time
        bodies[case.bulk] = _payload(case.bulk)

    tasks: list[asyncio.Task[None]] = []
    samples = CaseSamples()
    try:
        body_of = sender if case is NOREPLY else worker
        tasks = [asyncio.create_task(body_of(conns[i % len(conns)])) for i in range(inflight)]
        await asyncio.sleep(warmup)
        await coordinator.warmed_up()
        state.start()
        t0 = perf_counter()
        if case is FAIRNESS:
            await asyncio.sleep(duration / 2)
            state.baseline, state.latencies = state.latencies, array("q")
            state.ok = 0
            tasks.extend(asyncio.create_task(bulk(conn)) for conn in conns)
            await asyncio.sleep(duration / 2)
        else:
            await asyncio.sleep(duration)
        state.recording = False
        samples.window = perf_counter() - t0
        coordinator.window_closed()
        running = False
        # Let every request in flight finish (so fire-and-forget counts are exact); cancel
        # whatever is still stuck after a grace period.
        grace = 5.0 if case is NOREPLY else 0.2
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if case is NOREPLY:
            counts = await asyncio.wait_for(
                asyncio.gather(*(conn.received() for conn in conns)), 10
            )
            samples.sent = sent
            samples.received = sum(counts)
    finally:
        running = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close_all(conns)
        with contextlib.suppress(OSError):
            file_path.unlink(missing_ok=True)
    samples.latencies = state.latencies
    samples.baseline = state.baseline
    samples.ok = state.ok
    samples.errors = state.errors
    samples.nbytes = state.nbytes
    samples.first_error = state.first_error
    return samples


async def _close_all(conns: list[Connection]) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.aclose(), 2)
