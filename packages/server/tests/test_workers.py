"""``--workers 2``: both processes take connections, metrics of both are served together, a
crashed worker is replaced, and SIGTERM drains both without losing an in-flight request."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from sockety.client import Connection, FastReply, Response, connect

from .conftest import HOST
from .test_cli import app_dir, pid, run, slow, start
from .test_metrics import scrape, value

__all__ = ["app_dir", "start"]  # fixtures


def test_two_workers_share_the_port_and_drain_on_sigterm(start: Any, tmp_path: Path) -> None:
    metrics_tmp = tmp_path / "tmp"
    metrics_tmp.mkdir()
    server = start(
        "cliapp:router",
        *("--port", "0", "--workers", "2", "--metrics-port", "0", "--grace", "20"),
        env={"TMPDIR": str(metrics_tmp)},  # where the supervisor's multiprocess dir goes
    )
    port = int(server.wait_for(r"ready: serving .* on [\d.]+:(\d+) with 2 workers").group(1))
    url = server.metrics_url()
    worker_pids = {int(p) for p in server.wait_for(r"\(pids (\d+) (\d+)\)").groups()}
    assert len(worker_pids) == 2
    assert len(list(metrics_tmp.iterdir())) == 1

    async def main() -> None:
        clients: list[Connection] = []
        try:
            for _ in range(40):  # SO_REUSEPORT hashes connections over both workers
                clients.append(await connect(HOST, port))
            seen: list[int] = []
            for client in clients:
                reply = await client.request(pid())
                assert isinstance(reply, Response)
                seen.append(reply.msgpack())
            assert set(seen) == worker_pids  # both take connections
            figure_split = {p: seen.count(p) for p in worker_pids}

            # All workers' metrics, served together by the supervisor (synced every second).
            deadline = time.monotonic() + 10
            while True:
                samples = await asyncio.to_thread(scrape, url)
                got = value(samples, "sockety_server_messages_received_total", action="pid")
                if got == 40 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert got == 40
            assert value(samples, "sockety_server_open_connections") == 40
            assert value(samples, "sockety_server_connections_opened_total") == 40

            # In flight on every connection (so on both workers), then SIGTERM.
            in_flight = [client.request(slow(0.5)) for client in clients]
            # A connection's messages are handled in order: the answer to a later one says
            # that its slow request reached its worker and is being handled.
            await asyncio.gather(*(client.request(pid()) for client in clients))
            server.signal(signal.SIGTERM)
            replies = await asyncio.gather(*in_flight)
            assert replies == [FastReply.ACCEPT] * 40  # none lost
            for client in clients:
                await asyncio.wait_for(client.wait_closed(), 20)
            print(
                f"\n[figure] --workers 2: 40 connections split {figure_split}; SIGTERM drained "
                "40 in-flight 0.5 s requests, all answered"
            )
        finally:
            for client in clients:
                await client.close(1)

    try:
        run(main())
    except BaseException:
        print(server.log)
        raise
    assert server.wait(30) == 0
    assert server.log.count("SIGTERM: shutting down gracefully") == 2  # forwarded to both
    assert "stopped (exit 0)" in server.log
    assert list(metrics_tmp.iterdir()) == []  # the multiprocess dir was removed


def test_a_crashed_worker_is_replaced(start: Any) -> None:
    server = start("cliapp:router", "--port", "0", "--workers", "2")
    port = int(
        server.wait_for(r"ready: serving .* with 2 workers").group(0).split(":")[-1].split()[0]
    )
    first, second = (int(p) for p in server.wait_for(r"\(pids (\d+) (\d+)\)").groups())
    os.kill(first, signal.SIGKILL)
    server.wait_for(rf"worker 0 \(pid {first}\) exited with -9 .*: restarting")
    replacement = int(server.wait_for(r"\[worker 0 pid (\d+)\] .*ready: serving", count=2).group(1))
    assert replacement not in (first, second)

    async def main() -> set[int]:
        pids = set()
        for _ in range(30):
            async with connect(HOST, port) as client:
                reply = await client.request(pid())
                assert isinstance(reply, Response)
                pids.add(reply.msgpack())
        return pids

    assert run(main()) == {replacement, second}
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
