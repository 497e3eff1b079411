"""``sockety-server --cluster``: separate processes joined through a real nats-server — one
killed (its keys expire), NATS restarted (they reconnect and say so, in logs and metrics)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sockety.cluster import Cluster, NatsServer
from sockety.cluster._demo import SAY, TELL

from .conftest import HOST, peer

_READY = re.compile(r"ready: serving \S+ on 127\.0\.0\.1:(\d+)")
_METRICS = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


class Process:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.port = 0
        self.metrics_port = 0
        self.lines: list[str] = []
        self._seen = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.lines.append(text)
            if match := _READY.search(text):
                self.port = int(match.group(1))
            if match := _METRICS.search(text):
                self.metrics_port = int(match.group(1))
            async with self._seen:
                self._seen.notify_all()

    async def wait_log(self, pattern: str) -> None:
        async with self._seen:
            await self._seen.wait_for(lambda: any(re.search(pattern, t) for t in self.lines))

    async def scrape(self) -> str:
        reader, writer = await asyncio.open_connection(HOST, self.metrics_port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = await reader.read()
        writer.close()
        return body.decode()


@asynccontextmanager
async def sockety_server(nats: NatsServer) -> AsyncIterator[Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sockety.server",
        "sockety.cluster._demo:router",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--grace",
        "2",
        "--cluster",
        nats.url,
        stderr=asyncio.subprocess.PIPE,
    )
    running = Process(process)
    reader = asyncio.get_running_loop().create_task(running.read())
    try:
        await running.wait_log("ready: serving")
        await running.wait_log("metrics on")
        yield running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()
        await reader


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in the scrape"
    return float(match.group(1))


def test_processes_form_one_cluster_and_a_killed_one_expires(nats: NatsServer, run: Any) -> None:
    async def main() -> None:
        # The watcher makes the presence bucket first, with a short TTL the servers adopt.
        async with (
            Cluster(nats.url, name="watcher", presence_ttl=1.5) as watcher,
            sockety_server(nats) as one,
            sockety_server(nats) as two,
            peer(one.port, "alice") as alice,
            peer(two.port, "bob") as bob,
        ):
            a, b = alice.connection, bob.connection
            assert a is not None and b is not None
            assert await a.request(SAY(b"hi from one")) == 0
            assert await bob.wait_heard(1) == [b"hi from one"]
            assert await b.request(TELL(["alice", b"hi alice"])) == 0
            assert await alice.wait_heard(2) == [b"hi from one", b"hi alice"]
            await watcher.wait_presence(lambda p: set(p) == {"alice", "bob"})
            scrape = await one.scrape()
            assert metric(scrape, 'sockety_cluster_published_total{kind="broadcast"}') == 1
            assert metric(scrape, "sockety_cluster_connected") == 1
            scrape = await two.scrape()
            assert metric(scrape, 'sockety_cluster_received_total{kind="broadcast"}') == 1
            assert metric(scrape, 'sockety_cluster_published_total{kind="send"}') == 1

            two.process.kill()  # no goodbye: bob's key stays until the TTL
            await two.process.wait()
            assert watcher.presence.get("bob") is not None
            await watcher.wait_presence(lambda p: set(p) == {"alice"})
            assert await watcher.where("bob") is None

    run(main)


def test_nats_restarted_servers_reconnect_and_say_so(nats: NatsServer, run: Any) -> None:
    async def main() -> None:
        async with (
            sockety_server(nats) as one,
            sockety_server(nats) as two,
            peer(one.port, "alice") as alice,
            peer(two.port, "bob") as bob,
        ):
            a, b = alice.connection, bob.connection
            assert a is not None and b is not None
            await nats.restart()
            for process in (one, two):
                await process.wait_log("lost the link to NATS")
                await process.wait_log("reconnected to NATS at")
                scrape = await process.scrape()
                assert metric(scrape, "sockety_cluster_reconnects_total") == 1
                assert metric(scrape, "sockety_cluster_disconnects_total") == 1
                assert metric(scrape, "sockety_cluster_connected") == 1
            # the cluster works again: broadcasts and sends by key (subscriptions restored)
            assert await a.request(SAY(b"after the restart")) == 0
            assert await bob.wait_heard(1) == [b"after the restart"]
            assert await b.request(TELL(["alice", b"still here"])) == 0
            assert await alice.wait_heard(2) == [b"after the restart", b"still here"]

    run(main)
