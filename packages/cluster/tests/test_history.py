"""History on JetStream: acknowledged appends, the last N in order, a live feed that survives
a NATS restart without losing or repeating what was acknowledged."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sockety.cluster import Cluster, History, NatsServer, PayloadTooLargeError


def test_history_keeps_order_survives_a_nats_restart(nats: NatsServer, run: Any) -> None:
    async def main() -> None:
        async with Cluster(nats.url, name="a") as a, Cluster(nats.url, name="b") as b:
            writer, reader = History(a, "chat", max_records=50), History(b, "chat", max_records=50)
            await writer.start()
            await reader.start()
            sequences = [await writer.append(f"m{i}".encode()) for i in range(60)]
            assert sequences == list(range(1, 61))
            # the stream keeps the last 50; the last 5, oldest first
            assert await reader.read(5) == [(s, f"m{s - 1}".encode()) for s in range(56, 61)]
            assert [s for s, _ in await reader.read(100)] == list(range(11, 61))
            assert await reader.read(5, after=58) == [(59, b"m58"), (60, b"m59")]
            assert await reader.read(5, after=60) == []

            seen: list[int] = []
            changed = asyncio.Condition()

            def on_record(sequence: int, data: bytes) -> None:
                assert data == f"m{sequence - 1}".encode()
                seen.append(sequence)
                asyncio.get_running_loop().create_task(notify())

            async def notify() -> None:
                async with changed:
                    changed.notify_all()

            async def wait_seen(count: int) -> None:
                async with changed:
                    await changed.wait_for(lambda: len(seen) >= count)

            await reader.follow(on_record, after=58)
            await wait_seen(2)
            await nats.restart()
            await a.wait_reconnected(1)
            for i in range(60, 70):  # acknowledged after the restart
                assert await writer.append(f"m{i}".encode()) == i + 1
            await wait_seen(12)
            assert seen == list(range(59, 71))  # none lost, none twice, in order
            assert await reader.last_sequence() == 70
            with pytest.raises(PayloadTooLargeError):
                await writer.append(b"x" * (a.max_payload + 1))
            await reader.close()

    run(main)
