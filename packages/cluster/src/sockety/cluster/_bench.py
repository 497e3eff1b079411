"""``sockety-cluster-bench``: cross-server broadcast fan-out.

Starts a nats-server (JetStream off: broadcasts are core NATS), then for each server count
``sockety-server sockety.cluster._demo:router --cluster URL`` processes, clients spread evenly
over them, and one sender on the first server that broadcasts ``--messages`` messages (at most
``--window`` unanswered). Every client receives every message: it reports deliveries per second
and the latency from send to delivery (one clock: all clients are in this process)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sockety.client import Connection, Message, connect
from sockety.core.cli import add_version, positive_int

from ._demo import SAY
from ._nats import NatsServer

__all__ = ["main"]

_READY = re.compile(rb"ready: serving \S+ on 127\.0\.0\.1:(\d+)")
_STAMP = struct.Struct("!Qq")  # sequence, perf_counter_ns at send


@dataclass
class Result:
    servers: int
    clients: int
    messages: int
    delivered: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@asynccontextmanager
async def _server_process(url: str) -> AsyncIterator[int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sockety.server",
        "sockety.cluster._demo:router",
        "--port",
        "0",
        "--log-level",
        "info",
        "--cluster",
        url,
        "--grace",
        "1",
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        port = 0
        async with asyncio.timeout(30):
            while not port:
                line = await process.stderr.readline()
                if not line:
                    raise RuntimeError("sockety-server exited before it was ready")
                if match := _READY.search(line):
                    port = int(match.group(1))
        drain = asyncio.get_running_loop().create_task(_discard(process.stderr))
        yield port
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        with contextlib.suppress(NameError):
            drain.cancel()


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def run_case(
    url: str, servers: int, clients: int, messages: int, size: int, window: int, progress: Progress
) -> Result:
    latencies: list[float] = []
    done = asyncio.Event()
    expected = messages * clients
    delivered = 0
    task = progress.add_task(f"{servers} server(s)", total=expected)

    def on_message(message: Message) -> None:
        nonlocal delivered
        if message.action != "heard":
            return
        now = time.perf_counter_ns()
        _, sent = _STAMP.unpack_from(message.data)
        latencies.append((now - sent) / 1e6)
        delivered += 1
        if delivered % 500 == 0 or delivered == expected:
            progress.update(task, completed=delivered)
        if delivered >= expected:
            done.set()

    async with AsyncExitStack() as stack:
        ports = [await stack.enter_async_context(_server_process(url)) for _ in range(servers)]
        receivers: list[Connection] = []
        for index in range(clients):
            receivers.append(
                await stack.enter_async_context(
                    connect("127.0.0.1", ports[index % servers], handler=on_message)
                )
            )
        # The sender hears its own broadcasts too: it must read them (a client that does not
        # take its messages stops reading, and its answers stall behind them).
        sender = await stack.enter_async_context(
            connect("127.0.0.1", ports[0], handler=lambda message: None)
        )
        # One broadcast first, reaching everyone (connections and links warm): then measure.
        expected = clients
        async with asyncio.timeout(30):
            assert await sender.request(SAY(_STAMP.pack(0, time.perf_counter_ns()))) == 0
            await done.wait()
        done.clear()
        delivered = 0
        latencies.clear()
        expected = messages * clients
        padding = b"x" * max(0, size - _STAMP.size)
        slots = asyncio.Semaphore(window)
        start = time.perf_counter()

        async def one(sequence: int) -> None:
            try:
                reply = await sender.request(
                    SAY(_STAMP.pack(sequence, time.perf_counter_ns()) + padding)
                )
                if reply != 0:
                    raise RuntimeError(f"the server refused a broadcast: {reply}")
            finally:
                slots.release()

        pending = set()
        for sequence in range(messages):
            await slots.acquire()
            pending.add(asyncio.ensure_future(one(sequence)))
        await asyncio.gather(*pending)
        try:
            async with asyncio.timeout(60):
                await done.wait()
        except TimeoutError:
            pass
        seconds = time.perf_counter() - start
        progress.update(task, completed=delivered)
    return Result(servers, clients, messages, delivered, seconds, latencies)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockety-cluster-bench",
        description="Cross-server broadcast fan-out through NATS: deliveries/s and latency, "
        "for each number of sockety-server processes.",
    )
    add_version(parser, "sockety-cluster")
    parser.add_argument("--servers", default="1,3", help="server counts to run (default: 1,3)")
    parser.add_argument(
        "--clients", type=positive_int, default=30, help="receiving clients (default: 30)"
    )
    parser.add_argument(
        "--messages", type=positive_int, default=2000, help="broadcasts (default: 2000)"
    )
    parser.add_argument(
        "--size", type=positive_int, default=64, help="bytes per message (default: 64)"
    )
    parser.add_argument(
        "--window", type=positive_int, default=64, help="unanswered broadcasts at most"
    )
    parser.add_argument("--nats", metavar="URL", help="use this NATS instead of starting one")
    return parser


async def _main(args: argparse.Namespace, console: Console) -> list[Result]:
    counts = [int(part) for part in args.servers.split(",") if part.strip()]
    results: list[Result] = []
    async with AsyncExitStack() as stack:
        url = args.nats
        if url is None:
            nats = await stack.enter_async_context(NatsServer(jetstream=True))
            url = nats.url
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            for count in counts:
                results.append(
                    await run_case(
                        url,
                        count,
                        args.clients,
                        args.messages,
                        args.size,
                        args.window,
                        progress,
                    )
                )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    results = asyncio.run(_main(args, console))
    table = Table(title="cross-server broadcast fan-out (one sender on server 1)")
    for column in ("servers", "clients", "sent", "delivered", "delivered/s", "p50 ms"):
        table.add_column(column, justify="right")
    table.add_column("p99 ms", justify="right")
    failed = False
    for result in results:
        expected = result.messages * result.clients
        failed |= result.delivered != expected
        table.add_row(
            str(result.servers),
            str(result.clients),
            str(result.messages),
            f"{result.delivered}/{expected}",
            f"{result.rate:,.0f}",
            f"{result.percentile(50):.2f}",
            f"{result.percentile(99):.2f}",
        )
    console.print(table)
    return 1 if failed else 0
