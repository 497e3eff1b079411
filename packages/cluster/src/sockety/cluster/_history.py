"""A durable, bounded, ordered log on JetStream (one stream per history): appends acknowledged
by NATS, the last N records read back in order, and a live feed from any sequence.

Each record's stream sequence is its id: increasing, never reused, the same on every server, so
a reader that remembers the last sequence it saw resumes without gaps or duplicates (as long as
the stream still holds what came after: it keeps the last ``max_records``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)

from ._cluster import Cluster
from ._errors import ClusterUnavailableError, PayloadTooLargeError

__all__ = ["History", "Record"]

logger = logging.getLogger("sockety.cluster")

#: (sequence, data)
Record = tuple[int, bytes]


class History:
    """``history = History(cluster, "chat", max_records=1000)``; ``await history.start()``."""

    def __init__(
        self,
        cluster: Cluster,
        name: str,
        *,
        # The stream keeps this many records (the oldest go first) and at most this many bytes.
        max_records: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        # An append NATS did not acknowledge in this long failed (it may still be stored).
        ack_timeout: float = 5.0,
        # Copies in a NATS cluster (default: the cluster link's ``replicas``).
        replicas: int | None = None,
        # Appends waiting for their acknowledgement at once; more wait here, in order, before
        # they are sent (a burst queues in this process instead of overloading JetStream,
        # and each one's ack_timeout runs from when it was really sent).
        max_in_flight: int = 64,
    ) -> None:
        self.cluster = cluster
        self.stream = f"{cluster.subjects.prefix}_{name}"
        self.subject = f"{cluster.subjects.prefix}.hist.{name}"
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.ack_timeout = ack_timeout
        self.replicas = cluster.replicas if replicas is None else replicas
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._follows: list[Any] = []

    async def start(self) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            max_msgs=self.max_records,
            max_bytes=self.max_bytes,
            max_msg_size=self.cluster.max_payload + 1024,  # and the headers js.publish adds
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
        )
        js = self.cluster.jetstream
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:  # it exists with other limits: these win
            await js.update_stream(config)

    async def append(self, data: bytes, *, msg_id: str | None = None) -> int:
        """Stores ``data``; returns its sequence once NATS acknowledged it (then it survives a
        NATS restart). Raises :class:`ClusterUnavailableError` when it was not acknowledged.
        ``msg_id``: the same id appended again within JetStream's duplicate window (2 min) is
        stored once (a client's resend, even through another server)."""
        if len(data) > self.cluster.max_payload:
            raise PayloadTooLargeError(len(data), self.cluster.max_payload)
        try:
            async with self._in_flight:
                ack = await self.cluster.jetstream.publish(
                    self.subject,
                    data,
                    timeout=self.ack_timeout,
                    stream=self.stream,
                    headers={"Nats-Msg-Id": msg_id} if msg_id else None,
                )
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as error:
            raise ClusterUnavailableError(
                f"the history {self.stream!r} did not acknowledge: {error or type(error).__name__}"
            ) from error
        self.cluster.metrics.published.labels("history").inc()
        return int(ack.seq)

    async def last_sequence(self) -> int:
        info = await self.cluster.jetstream.stream_info(self.stream)
        return int(info.state.last_seq)

    async def get(self, sequence: int) -> bytes | None:
        """The record at ``sequence``, or None when the stream does not hold it (not yet, or
        no longer). Raises :class:`ClusterUnavailableError` when NATS did not answer."""
        try:
            msg = await self.cluster.jetstream.get_msg(self.stream, sequence)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as error:
            raise ClusterUnavailableError(
                f"the history {self.stream!r} did not answer: {error or type(error).__name__}"
            ) from error
        return msg.data if msg.data is not None else b""

    async def read(self, count: int, *, after: int = 0) -> list[Record]:
        """Up to the last ``count`` records after sequence ``after``, oldest first."""
        js = self.cluster.jetstream
        state = (await js.stream_info(self.stream)).state
        last = int(state.last_seq)
        start = max(after + 1, last - count + 1, int(state.first_seq), 1)
        if count <= 0 or start > last:
            return []
        sub = await js.subscribe(
            self.subject,
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=ConsumerConfig(opt_start_seq=start),
        )
        records: list[Record] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=self.ack_timeout)
                sequence = int(msg.metadata.sequence.stream)
                records.append((sequence, msg.data))
                if sequence >= last:
                    break
        except nats.errors.TimeoutError:
            logger.warning("history %s: read stopped early (%d records)", self.stream, len(records))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return records

    async def follow(self, callback: Callable[[int, bytes], Any], *, after: int) -> None:
        """Calls ``callback(sequence, data)`` for every record after ``after``, in order, live;
        an ordered consumer, so it resumes by itself after NATS restarts."""

        async def on_record(msg: Msg) -> None:
            self.cluster.metrics.received.labels("history").inc()
            try:
                callback(int(msg.metadata.sequence.stream), msg.data)
            except Exception:
                logger.exception("history %s: the follower failed", self.stream)

        sub = await self.cluster.jetstream.subscribe(
            self.subject,
            stream=self.stream,
            cb=on_record,
            ordered_consumer=True,
            idle_heartbeat=2.0,  # notices a consumer lost with a NATS restart, and recreates it
            flow_control=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=ConsumerConfig(opt_start_seq=after + 1),
        )
        self._follows.append(sub)

    async def close(self) -> None:
        follows, self._follows = self._follows, []
        for sub in follows:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
