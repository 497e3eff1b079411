"""One Sockety server's link to the cluster: NATS subjects for broadcasts, sends to a key and
requests to where a key lives; a JetStream key-value bucket with a TTL for presence.

Everything fire-and-forget goes through one bounded outgoing queue drained by one task, so a
slow or absent NATS costs at most ``max_queued`` messages / ``max_queued_bytes`` of memory, and
what does not fit is dropped and counted (``sockety_cluster_dropped_total{reason="queue_full"}``)
instead of growing. One task publishing in order also keeps each server's messages in order: NATS
keeps the order of one publisher on one subject. Incoming subscriptions are bounded by nats-py's
pending limits; what NATS had to drop for us is counted as ``slow_consumer``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import secrets
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgpack
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from sockety.core import SocketyError
from sockety.core.aio import Connection, Outgoing, Response

from ._errors import (
    ClusterError,
    ClusterUnavailableError,
    KeyTakenError,
    NotConnectedError,
    PayloadTooLargeError,
)
from ._metrics import ClusterMetrics

if TYPE_CHECKING:
    from sockety.server import Server

__all__ = ["Cluster", "Reply", "Subjects"]

logger = logging.getLogger("sockety.cluster")

_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
#: Keys are UTF-8 text up to this many bytes (they become subject tokens and KV keys).
MAX_KEY_BYTES = 200


def key_token(key: str) -> str:
    """A key as a subject token and KV key: base64url, no padding (``[A-Za-z0-9_-]``)."""
    raw = key.encode()
    if not raw or len(raw) > MAX_KEY_BYTES:
        raise ValueError(f"a cluster key is 1..{MAX_KEY_BYTES} bytes of UTF-8, not {len(raw)}")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class Subjects:
    """The NATS subjects and bucket of one cluster (all under ``prefix``)."""

    prefix: str = "sockety"

    @property
    def broadcast(self) -> str:
        return f"{self.prefix}.bcast"

    def send(self, key: str) -> str:
        return f"{self.prefix}.to.{key_token(key)}"

    def request(self, key: str) -> str:
        return f"{self.prefix}.req.{key_token(key)}"

    def topic(self, name: str) -> str:
        return f"{self.prefix}.topic.{name}"

    def ping(self, server: str) -> str:
        return f"{self.prefix}.srv.{server}.ping"

    def ask(self, server: str, topic: str) -> str:
        return f"{self.prefix}.srv.{server}.ask.{topic}"

    @property
    def presence_bucket(self) -> str:
        return f"{self.prefix}_presence"


@dataclass(frozen=True, slots=True)
class Reply:
    """What the connection answered to :meth:`Cluster.request`: response data, or a fast-reply
    code (``data`` empty)."""

    data: bytes
    fast_reply: int | None = None


RequestHandler = Callable[[Connection, bytes], Awaitable[bytes]]
TopicCallback = Callable[[bytes, str], Any]
#: ``async def answer(data, origin_server) -> bytes``: a server's own answer to :meth:`Cluster.ask`.
AskHandler = Callable[[bytes, str], Awaitable[bytes]]

_packb = msgpack.Packer(autoreset=True, use_bin_type=True).pack


class Cluster:
    """Joins a Sockety server to others through NATS. Give it to ``serve(..., cluster=...)``::

        cluster = Cluster("nats://127.0.0.1:4222")
        async with serve(router, "127.0.0.1", 9000, cluster=cluster) as server:
            cluster.broadcast(notice({"text": "hi"}))       # every connection of every server
            await cluster.bind(connection, "user:alice")      # presence: reachable by key
            cluster.send("user:alice", notice(...))          # wherever alice is connected
            reply = await cluster.request("user:alice", ask(...))  # answered where alice is

    Messages that cross servers carry an action and data (no stream, no files).
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        name: str | None = None,
        prefix: str = "sockety",
        registry: CollectorRegistry | None = None,
        tls: ssl_module.SSLContext | None = None,
        # Largest action + data that crosses the link; NATS' own limit (1 MiB by default) is
        # applied too. Big content belongs in files relayed in chunks, not in one NATS message.
        max_payload: int = 64 * 1024,
        # The outgoing queue: what may wait for NATS (slow, or down and reconnecting) before
        # new messages are dropped and counted.
        max_queued: int = 10_000,
        max_queued_bytes: int = 16 * 1024 * 1024,
        # Per incoming subscription: what may wait for delivery before NATS drops (counted).
        pending_msgs_limit: int = 65_536,
        pending_bytes_limit: int = 64 * 1024 * 1024,
        # A server that died leaves its keys for at most this long; live ones refresh at 1/3.
        presence_ttl: float = 15.0,
        # Copies JetStream keeps of the presence bucket (and, by default, of each History) in a
        # NATS cluster: 3 survives the loss of one NATS node. 1 for a single nats-server.
        replicas: int = 1,
        request_timeout: float = 5.0,
        # Requests handled here at once for other servers; more are refused (busy).
        max_concurrent_requests: int = 256,
        reconnect_time_wait: float = 1.0,
        connect_timeout: float = 5.0,
        # What nats-py itself buffers while the link is down (then the queue above holds).
        reconnect_buffer_size: int = 2 * 1024 * 1024,
    ) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"prefix {prefix!r}: 1..32 letters, digits, _ or -")
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.id = name or secrets.token_hex(6)
        if not _PREFIX.match(self.id):
            raise ValueError(f"name {self.id!r}: 1..32 letters, digits, _ or -")
        self.subjects = Subjects(prefix)
        self.metrics = ClusterMetrics(registry)
        self._tls = tls
        self.max_payload = max_payload
        self._max_queued = max_queued
        self._max_queued_bytes = max_queued_bytes
        self._pending_msgs = pending_msgs_limit
        self._pending_bytes = pending_bytes_limit
        self.presence_ttl = presence_ttl
        if not 1 <= replicas <= 5:
            raise ValueError(f"replicas: 1..5 (JetStream's range), not {replicas}")
        self.replicas = replicas
        self.request_timeout = request_timeout
        self._requests = asyncio.Semaphore(max_concurrent_requests)
        self._reconnect_wait = reconnect_time_wait
        self._connect_timeout = connect_timeout
        self._reconnect_buffer = reconnect_buffer_size

        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._server: Server | None = None
        self._queue: deque[tuple[str, bytes, str]] = deque()
        self._queued_bytes = 0
        self._more = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._up = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._started = False
        # Presence: key -> (connection, KV revision, its two subscriptions); and back.
        self._local: dict[str, tuple[Connection, int, list[Subscription]]] = {}
        self._keys: dict[Connection, str] = {}
        self._binding: dict[Connection, asyncio.Lock] = {}
        self._handlers: dict[str, RequestHandler] = {}
        self._answers: dict[str, AskHandler] = {}
        self._topics: dict[str, list[TopicCallback]] = {}
        self._topic_subs: dict[str, Subscription] = {}
        #: Called with (connection, key) when another server took the key over (this one was
        #: presumed dead: NATS was unreachable for longer than the TTL).
        self.on_key_lost: Callable[[Connection, str], Any] | None = None
        self.reconnected = 0  # times the link came back (tests and logs)
        self._reconnected = asyncio.Condition()
        #: Every key bound in the cluster -> its server, as watched on the presence bucket
        #: (eventually consistent; :meth:`where` asks NATS).
        self.presence: dict[str, str] = {}
        #: Called with (key, server) when a key is bound anywhere, (key, None) when it goes.
        self.on_presence: Callable[[str, str | None], Any] | None = None
        self._presence_changed = asyncio.Condition()
        self._watcher: Any = None
        self._watching: asyncio.Task[None] | None = None

    @staticmethod
    def of(connection: Connection) -> Cluster:
        """The cluster of the server that accepted ``connection`` (in a handler:
        ``Cluster.of(message.connection)``)."""
        from sockety.server import server_of  # noqa: PLC0415 - the server imports nothing of ours

        server = server_of(connection)
        cluster = server.cluster if server is not None else None
        if not isinstance(cluster, Cluster):
            raise ClusterUnavailableError("this connection's server has no cluster")
        return cluster

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def nats(self) -> NATS:
        """The NATS client (for what this class does not wrap)."""
        if self._nc is None:
            raise ClusterUnavailableError("the cluster link is not started")
        return self._nc

    @property
    def jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise ClusterUnavailableError("the cluster link is not started")
        return self._js

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def start(self, server: Server | None = None) -> None:
        """Connects to NATS and subscribes; ``serve(cluster=...)`` calls it with its server
        (without one, only topics, requests handled by :meth:`handle` and history work).

        Started already (to be up before the server listens, so that nobody connects to a
        server whose link is not): this only gives it the server."""
        if self._started:
            if self._closing:
                raise ClusterUnavailableError("the cluster link is closed")
            if server is not None:
                self._server = server
            return
        self._started = True
        self._server = server
        nc = self._nc = NATS()
        try:
            # nats-py retries the first connect as often as a reconnect (forever here): bound it.
            async with asyncio.timeout(self._connect_timeout):
                await nc.connect(
                    self.servers,
                    name=f"sockety-{self.id}",
                    tls=self._tls,
                    no_echo=True,  # our own broadcasts are delivered locally, not looped back
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self._reconnect_wait,  # type: ignore[arg-type]
                    connect_timeout=max(1, int(self._connect_timeout)),
                    pending_size=self._reconnect_buffer,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
        except (OSError, TimeoutError, nats.errors.Error) as error:
            raise await self._give_up(nc, "cannot connect to NATS at", error) from error
        try:
            await self._join(nc)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as error:
            why = "refused the presence bucket (is JetStream on? nats-server -js) at"
            raise await self._give_up(nc, why, error) from error
        await self._interest_registered()
        self._up.set()
        self.metrics.connected.set(1)
        loop = asyncio.get_running_loop()
        self._pump = loop.create_task(self._drain())
        self._refresher = loop.create_task(self._refresh_every(self.presence_ttl / 3))
        logger.info("cluster: server %s joined NATS at %s", self.id, _url(nc))

    async def _give_up(self, nc: NATS, why: str, error: BaseException) -> ClusterError:
        """Closes a half-made link; the error to raise."""
        self._closing = True
        if self._watching is not None:
            self._watching.cancel()
        with contextlib.suppress(Exception):
            await nc.close()
        return ClusterUnavailableError(
            f"{why} {', '.join(self.servers)}: {error or type(error).__name__}"
        )

    async def _join(self, nc: NATS) -> None:
        self.max_payload = min(self.max_payload, nc.max_payload)
        self._js = nc.jetstream()
        try:
            self._kv = await self._js.create_key_value(
                KeyValueConfig(
                    bucket=self.subjects.presence_bucket,
                    ttl=self.presence_ttl,
                    # nats-server places a marker when a key expires, so watchers see it go.
                    limit_marker_ttl=self.presence_ttl,
                    history=1,
                    storage=StorageType.FILE,
                    replicas=self.replicas,
                )
            )
        except nats.js.errors.BadRequestError:
            # The bucket exists with another TTL (the first server made it): use that one,
            # or this server would refresh too seldom (or too often).
            self._kv = await self._js.key_value(self.subjects.presence_bucket)
            ttl = (await self._kv.status()).ttl
            if ttl and ttl != self.presence_ttl:
                logger.info("cluster: the presence bucket's TTL is %g s: using it", ttl)
                self.presence_ttl = ttl
        await self._watch_presence()
        await self._subscribe(self.subjects.broadcast, self._on_broadcast)
        await self._subscribe(self.subjects.ping(self.id), self._on_ping)
        await self._subscribe(self.subjects.ask(self.id, "*"), self._on_ask)

    async def _subscribe(self, subject: str, callback: Callable[[Msg], Awaitable[None]]) -> Any:
        return await self.nats.subscribe(
            subject,
            cb=callback,
            pending_msgs_limit=self._pending_msgs,
            pending_bytes_limit=self._pending_bytes,
        )

    async def close(self) -> None:
        """Unbinds this server's keys, sends what is queued (for a moment), closes the link."""
        if self._closing:
            return
        self._closing = True
        for task in (self._refresher, self._watching):
            if task is not None:
                task.cancel()
        nc = self._nc
        if nc is None:
            return
        if nc.is_connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await asyncio.gather(*(self._forget(k) for k in list(self._local)))
                    await self.flush()
        # Cancel everything at once, looked up now: a watch restarted by a reconnect may have
        # replaced the one cancelled above.
        tasks = [
            t for t in (self._pump, self._refresher, self._watching, *self._tasks) if t is not None
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await nc.close()
        self.metrics.connected.set(0)
        self.metrics.queued.set(0)
        self._queue.clear()
        logger.info("cluster: server %s left", self.id)

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- NATS callbacks -------------------------------------------------------------------------

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, nats.errors.SlowConsumerError):
            self.metrics.dropped.labels("slow_consumer").inc()
            return
        if not self._up.is_set() or self._closing:  # down (the disconnect said so), or leaving
            logger.debug("cluster: NATS error: %s", error or type(error).__name__)
            return
        logger.warning("cluster: NATS error: %s", error or type(error).__name__)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        self._up.clear()
        self.metrics.connected.set(0)
        self.metrics.disconnects.inc()
        logger.warning("cluster: lost the link to NATS; reconnecting (queue bounded)")

    async def _on_reconnected(self) -> None:
        self._up.set()
        self.metrics.connected.set(1)
        self.metrics.reconnects.inc()
        self.reconnected += 1
        logger.warning("cluster: reconnected to NATS at %s", _url(self.nats))
        self._spawn(self._refresh())  # keys may have expired while we were away
        self._spawn(self._watch_presence())  # and the watch starts over
        async with self._reconnected:
            self._reconnected.notify_all()

    async def wait_reconnected(self, count: int) -> None:
        """Waits until the link came back ``count`` times in all (tests, operators' scripts)."""
        async with self._reconnected:
            await self._reconnected.wait_for(lambda: self.reconnected >= count)

    # -- the outgoing queue ---------------------------------------------------------------------

    def _enqueue(self, subject: str, payload: bytes, kind: str, reply: str = "") -> bool:
        if self._closing or self._nc is None:
            raise ClusterUnavailableError("the cluster link is not started or is closed")
        if (
            len(self._queue) >= self._max_queued
            or self._queued_bytes + len(payload) > self._max_queued_bytes
        ):
            self.metrics.dropped.labels("queue_full").inc()
            return False
        self._queue.append((subject, payload, reply))
        self._empty.clear()
        self._queued_bytes += len(payload)
        self.metrics.queued.set(len(self._queue))
        self.metrics.published.labels(kind).inc()
        self._more.set()
        return True

    async def _drain(self) -> None:
        nc = self.nats
        queue = self._queue
        while True:
            if not queue:
                self._empty.set()
                self._more.clear()
                await self._more.wait()
                continue
            subject, payload, reply = queue[0]
            try:
                await nc.publish(subject, payload, reply=reply)
            except nats.errors.OutboundBufferLimitError:
                # Down, and nats-py's own reconnect buffer is full: keep it, wait for the link.
                await self._up.wait()
                continue
            except nats.errors.ConnectionClosedError:
                return
            except Exception:  # one bad message must not stop the queue
                logger.exception("cluster: publishing to %s failed", subject)
            queue.popleft()
            self._queued_bytes -= len(payload)
            self.metrics.queued.set(len(queue))

    async def flush(self) -> None:
        """Waits until the outgoing queue is empty and NATS has everything (bound it with
        ``asyncio.timeout``: while NATS is down this waits for it)."""
        await self._empty.wait()
        await self._interest_registered()

    async def _interest_registered(self) -> None:
        """A round trip after everything written so far (subscriptions included) reached NATS.

        nats-py's ``flush()`` writes its PING straight to the socket, ahead of commands still
        in its pending buffer (a SUB just made): its PONG can come back before NATS saw the SUB,
        and a message published to the new subscription by another server right after is lost.
        So the flusher task empties that buffer first (it runs at the next loop turns)."""
        nc = self.nats
        for _ in range(10_000):  # a few loop turns in practice; bounded all the same
            if nc.pending_data_size == 0 or not nc.is_connected:
                break
            await asyncio.sleep(0)
        await nc.flush()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def queued(self) -> int:
        """Messages waiting in the outgoing queue."""
        return len(self._queue)

    def _envelope(self, message: Outgoing) -> bytes:
        if message.files or message.stream:
            raise ValueError("a cluster message carries an action and data: no stream, no files")
        size = len(message.action) + len(message.data)
        if size > self.max_payload:
            raise PayloadTooLargeError(size, self.max_payload)
        return _packb((self.id, time.time(), message.action, bytes(message.data)))

    # -- broadcast and sends --------------------------------------------------------------------

    def broadcast(self, message: Outgoing, *, local: bool = True) -> bool:
        """Sends ``message`` to every connection of every server (this one's at once, unless
        ``local=False``). Returns False when the outgoing queue was full (dropped, counted).
        Raises :class:`PayloadTooLargeError` before anything is sent."""
        payload = self._envelope(message)
        if local and self._server is not None:
            self._server.broadcast(message)
        return self._enqueue(self.subjects.broadcast, payload, "broadcast")

    def send(self, key: str, message: Outgoing) -> bool:
        """Sends ``message`` to the connection bound to ``key``, on whichever server it is.
        Fire-and-forget: a key nobody holds swallows it. False: dropped (queue full)."""
        payload = self._envelope(message)
        held = self._local.get(key)
        if held is not None:
            return self._deliver(held[0], message)
        return self._enqueue(self.subjects.send(key), payload, "send")

    async def request(self, key: str, message: Outgoing, *, timeout: float | None = None) -> Reply:
        """Has the server where ``key`` lives handle ``message``: a handler registered there
        with :meth:`handle`, else a Sockety request to the connection itself, whose answer comes
        back. Raises :class:`NotConnectedError` when nobody holds the key or its server does
        not answer within ``timeout`` (default ``request_timeout``)."""
        payload = self._envelope(message)
        wait = self.request_timeout if timeout is None else timeout
        held = self._local.get(key)
        if held is not None:  # it lives here: no round trip through NATS
            try:
                async with asyncio.timeout(wait):
                    return await self._handle(held[0], message.action.decode(), bytes(message.data))
            except TimeoutError:
                raise NotConnectedError(key, f"it did not answer in {wait:g} s") from None
        self.metrics.published.labels("request").inc()
        try:
            answer = await self.nats.request(self.subjects.request(key), payload, timeout=wait)
        except nats.errors.NoRespondersError:
            raise NotConnectedError(key) from None
        except nats.errors.TimeoutError:
            raise NotConnectedError(key, f"its server did not answer in {wait:g} s") from None
        except nats.errors.OutboundBufferLimitError:
            raise ClusterUnavailableError("NATS is unreachable and its buffer is full") from None
        self.metrics.received.labels("reply").inc()
        status, data = msgpack.unpackb(answer.data)
        if status == "error":
            raise NotConnectedError(key, data)
        return Reply(data, status if isinstance(status, int) and status >= 0 else None)

    def handle(self, action: str) -> Callable[[RequestHandler], RequestHandler]:
        """Registers how this server answers cluster requests for ``action`` to one of its
        connections: ``async def handler(connection, data) -> bytes``."""

        def register(handler: RequestHandler) -> RequestHandler:
            self._handlers[action] = handler
            return handler

        return register

    async def _handle(self, connection: Connection, action: str, data: bytes) -> Reply:
        handler = self._handlers.get(action)
        if handler is not None:
            return Reply(await handler(connection, data))
        answer = await connection.request(Outgoing(action.encode(), data, (), False))
        if isinstance(answer, Response):
            if answer.stream is not None or answer.files:
                answer.discard()
            return Reply(bytes(answer.data))
        return Reply(b"", answer)

    def _deliver(self, connection: Connection, message: Outgoing) -> bool:
        try:
            connection.send_nowait(message)
        except SocketyError:
            self.metrics.dropped.labels("undeliverable").inc()
            return False
        return True

    # -- incoming -------------------------------------------------------------------------------

    def _open(self, msg: Msg, kind: str) -> tuple[str, Outgoing] | None:
        try:
            origin, sent, action, data = msgpack.unpackb(msg.data)
            outgoing = Outgoing(action, data, (), False)
        except (ValueError, TypeError, msgpack.UnpackException):
            self.metrics.dropped.labels("malformed").inc()
            return None
        self.metrics.received.labels(kind).inc()
        self.metrics.lag.observe(max(0.0, time.time() - sent))
        return origin, outgoing

    async def _on_broadcast(self, msg: Msg) -> None:
        opened = self._open(msg, "broadcast")
        if opened is not None and self._server is not None:
            self._server.broadcast(opened[1])

    async def _on_send(self, msg: Msg) -> None:
        opened = self._open(msg, "send")
        if opened is None:
            return
        key = self._key_of_subject(msg.subject)
        held = self._local.get(key) if key is not None else None
        if held is None:
            self.metrics.dropped.labels("undeliverable").inc()
            return
        self._deliver(held[0], opened[1])

    async def _on_request(self, msg: Msg) -> None:
        opened = self._open(msg, "request")
        if opened is None or not msg.reply:
            return
        key = self._key_of_subject(msg.subject)
        held = self._local.get(key) if key is not None else None
        if held is None:
            self._enqueue(msg.reply, _packb(("error", "not connected here")), "reply")
            return
        if self._requests.locked():
            self._enqueue(msg.reply, _packb(("error", "its server is busy")), "reply")
            return
        self._spawn(self._answer(msg.reply, held[0], opened[1]))

    async def _answer(self, reply: str, connection: Connection, message: Outgoing) -> None:
        async with self._requests:
            try:
                async with asyncio.timeout(self.request_timeout):
                    result = await self._handle(
                        connection, message.action.decode(), bytes(message.data)
                    )
            except (SocketyError, TimeoutError) as error:
                self._enqueue(reply, _packb(("error", f"the connection failed: {error}")), "reply")
                return
        status = -1 if result.fast_reply is None else result.fast_reply
        self._enqueue(reply, _packb((status, result.data)), "reply")

    async def _on_ping(self, msg: Msg) -> None:
        if msg.reply:
            self._enqueue(msg.reply, b"pong", "reply")

    # -- server to server -----------------------------------------------------------------------

    def answer(self, topic: str) -> Callable[[AskHandler], AskHandler]:
        """Registers how this server answers :meth:`ask` on ``topic`` (a subject token):
        ``async def handler(data, origin_server) -> bytes``."""
        if not _PREFIX.match(topic):
            raise ValueError(f"topic {topic!r}: 1..32 letters, digits, _ or -")

        def register(handler: AskHandler) -> AskHandler:
            self._answers[topic] = handler
            return handler

        return register

    async def ask(
        self, server: str, topic: str, data: bytes, *, timeout: float | None = None
    ) -> bytes:
        """Has the server ``server`` (its ``id``) answer ``data`` on ``topic`` with what its
        :meth:`answer` handler returns: for what belongs to a server rather than to one of its
        connections. Raises :class:`NotConnectedError` when that server is not there, has no
        such handler or does not answer within ``timeout`` (default ``request_timeout``)."""
        if len(data) > self.max_payload:
            raise PayloadTooLargeError(len(data), self.max_payload)
        wait = self.request_timeout if timeout is None else timeout
        if server == self.id:
            handler = self._answers.get(topic)
            if handler is None:
                raise NotConnectedError(server, f"it does not answer {topic!r}")
            try:
                async with asyncio.timeout(wait):
                    return await handler(data, self.id)
            except TimeoutError:
                raise NotConnectedError(server, f"it did not answer in {wait:g} s") from None
        self.metrics.published.labels("request").inc()
        payload = _packb((self.id, time.time(), data))
        try:
            answer = await self.nats.request(
                self.subjects.ask(server, topic), payload, timeout=wait
            )
        except nats.errors.NoRespondersError:
            raise NotConnectedError(server, "no such server") from None
        except nats.errors.TimeoutError:
            raise NotConnectedError(server, f"it did not answer in {wait:g} s") from None
        except nats.errors.OutboundBufferLimitError:
            raise ClusterUnavailableError("NATS is unreachable and its buffer is full") from None
        self.metrics.received.labels("reply").inc()
        status, result = msgpack.unpackb(answer.data)
        if status == "error":
            raise NotConnectedError(server, result)
        return bytes(result)

    async def _on_ask(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            origin, sent, data = msgpack.unpackb(msg.data)
        except (ValueError, TypeError, msgpack.UnpackException):
            self.metrics.dropped.labels("malformed").inc()
            return
        self.metrics.received.labels("request").inc()
        self.metrics.lag.observe(max(0.0, time.time() - sent))
        topic = msg.subject.rsplit(".", 1)[-1]
        handler = self._answers.get(topic)
        if handler is None:
            self._enqueue(msg.reply, _packb(("error", f"no answer to {topic!r} here")), "reply")
            return
        if self._requests.locked():
            self._enqueue(msg.reply, _packb(("error", "its server is busy")), "reply")
            return
        self._spawn(self._answer_ask(msg.reply, topic, handler, data, origin))

    async def _answer_ask(
        self, reply: str, topic: str, handler: AskHandler, data: bytes, origin: str
    ) -> None:
        async with self._requests:
            try:
                async with asyncio.timeout(self.request_timeout):
                    result = await handler(data, origin)
            except TimeoutError:
                self._enqueue(reply, _packb(("error", "it did not answer in time")), "reply")
                return
            except Exception as error:  # the handler's bug: said to the asker, logged here
                logger.exception("cluster: the answer to %r failed", topic)
                self._enqueue(reply, _packb(("error", f"it failed: {error}")), "reply")
                return
        self._enqueue(reply, _packb((-1, result)), "reply")

    def _key_of_subject(self, subject: str) -> str | None:
        token = subject.rsplit(".", 1)[-1]
        try:
            return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None

    # -- application topics ---------------------------------------------------------------------

    def publish(self, topic: str, data: bytes) -> bool:
        """Publishes ``data`` on an application topic (to the other servers' subscribers).
        False: dropped (queue full). Raises :class:`PayloadTooLargeError` first if too big."""
        if len(data) > self.max_payload:
            raise PayloadTooLargeError(len(data), self.max_payload)
        return self._enqueue(
            self.subjects.topic(topic), _packb((self.id, time.time(), data)), "topic"
        )

    async def subscribe(self, topic: str, callback: TopicCallback) -> None:
        """Calls ``callback(data, origin_server)`` for what other servers publish on ``topic``."""
        self._topics.setdefault(topic, []).append(callback)
        if topic in self._topic_subs:
            return

        async def on_topic(msg: Msg) -> None:
            try:
                origin, sent, data = msgpack.unpackb(msg.data)
            except (ValueError, TypeError, msgpack.UnpackException):
                self.metrics.dropped.labels("malformed").inc()
                return
            self.metrics.received.labels("topic").inc()
            self.metrics.lag.observe(max(0.0, time.time() - sent))
            for each in self._topics.get(topic, ()):
                try:
                    each(data, origin)
                except Exception:
                    logger.exception("cluster: a %r topic callback failed", topic)

        self._topic_subs[topic] = await self._subscribe(self.subjects.topic(topic), on_topic)
        await self._interest_registered()

    # -- presence -------------------------------------------------------------------------------

    async def bind(self, connection: Connection, key: str) -> None:
        """Makes ``connection`` reachable by ``key`` from every server, and visible in
        :meth:`members`, until it closes (or :meth:`unbind`). One connection per key in the
        whole cluster: :class:`KeyTakenError` if a live one holds it. A key left by a server
        that died is taken over at once (its server does not answer a ping)."""
        token = key_token(key)
        # One bind at a time per connection: a rename must not race the first name's bind.
        lock = self._binding.setdefault(connection, asyncio.Lock())
        async with lock:
            await self._bind(connection, key, token)
            if connection.closed:  # it closed while we bound: its hook may have run already
                await self.unbind(connection)
        if connection.closed:
            self._binding.pop(connection, None)

    async def _bind(self, connection: Connection, key: str, token: str) -> None:
        if key in self._local:
            holder = self._local[key][0]
            if holder is connection:
                return
            if not holder.closed:
                raise KeyTakenError(key, self.id)
        previous = self._keys.get(connection)
        kv = self._kv_ready()
        value = _packb((self.id, time.time()))
        try:
            revision = await kv.create(token, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            revision = await self._take_over(kv, key, token, value)
        if connection.closed:  # it went away while we asked
            with contextlib.suppress(Exception):
                await kv.delete(token, last=revision)
            return
        subs = [
            await self._subscribe(self.subjects.send(key), self._on_send),
            await self._subscribe(self.subjects.request(key), self._on_request),
        ]
        await self._interest_registered()
        if previous is not None:
            await self.unbind(connection)
        self._local[key] = (connection, revision, subs)
        self._keys[connection] = key
        self.metrics.bound_keys.set(len(self._local))

    async def _take_over(self, kv: KeyValue, key: str, token: str, value: bytes) -> int:
        try:
            entry = await kv.get(token)
        except nats.js.errors.KeyNotFoundError:  # expired or deleted meanwhile
            return await kv.create(token, value)
        holder = msgpack.unpackb(entry.value)[0] if entry.value else ""
        if holder != self.id and await self._alive(holder):
            raise KeyTakenError(key, holder)
        logger.info("cluster: taking over key %r from server %s (not answering)", key, holder)
        try:
            return await kv.update(token, value, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise KeyTakenError(key, "another server (it was taken meanwhile)") from None

    async def _alive(self, server: str) -> bool:
        try:
            await self.nats.request(self.subjects.ping(server), b"", timeout=1.0)
        except nats.errors.NoRespondersError:
            return False
        except nats.errors.TimeoutError:
            return True  # slow is not dead: keep its keys
        return True

    async def unbind(self, connection: Connection) -> None:
        """Forgets ``connection``'s key (it closes: done for you)."""
        key = self._keys.pop(connection, None)
        if key is not None:
            await self._forget(key)

    async def _forget(self, key: str) -> None:
        held = self._local.pop(key, None)
        self.metrics.bound_keys.set(len(self._local))
        if held is None:
            return
        connection, revision, subs = held
        self._keys.pop(connection, None)
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._kv is not None and self.is_connected:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await self._kv.delete(key_token(key), last=revision)

    def key_of(self, connection: Connection) -> str | None:
        """The key ``connection`` is bound to here, if any."""
        return self._keys.get(connection)

    def local(self, key: str) -> Connection | None:
        """The connection of this server bound to ``key``, if any."""
        held = self._local.get(key)
        return held[0] if held is not None else None

    async def where(self, key: str) -> str | None:
        """The id of the server where ``key`` is connected, or None (expired entries of dead
        servers are gone after ``presence_ttl``)."""
        if key in self._local:
            return self.id
        try:
            entry = await self._kv_ready().get(key_token(key))
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        server: str = msgpack.unpackb(entry.value)[0]
        return server

    async def members(self) -> dict[str, str]:
        """Every key bound in the cluster and the server it is on."""
        kv = self._kv_ready()
        found: dict[str, str] = {}
        try:
            tokens = await kv.keys()
        except nats.js.errors.NoKeysError:
            return found
        for token in tokens:
            key = self._key_of_subject(token)
            if key is None:
                continue
            try:
                entry = await kv.get(token)
            except nats.js.errors.KeyNotFoundError:
                continue
            if entry.value:
                found[key] = msgpack.unpackb(entry.value)[0]
        return found

    async def _watch_presence(self) -> None:
        if self._closing:
            return
        old, old_task = self._watcher, self._watching
        if old_task is not None:
            old_task.cancel()
        if old is not None:
            with contextlib.suppress(Exception):
                await old.stop()
        watcher = self._watcher = await self._kv_ready().watchall()
        if self.closing:  # close() began while we waited
            await watcher.stop()  # type: ignore[no-untyped-call]
            return
        ready = asyncio.get_running_loop().create_future()
        self._watching = asyncio.get_running_loop().create_task(self._follow(watcher, ready))
        await ready

    async def _follow(self, watcher: Any, ready: asyncio.Future[None]) -> None:
        seen: dict[str, str] = {}
        first = True
        async for entry in watcher:
            if entry is None:  # the initial values are all in
                if first:
                    first = False
                    await self._set_presence(seen, replace=True)
                    if not ready.done():
                        ready.set_result(None)
                continue
            key = self._key_of_subject(entry.key)
            if key is None:
                continue
            server: str | None = None
            if entry.operation is None and entry.value:
                with contextlib.suppress(ValueError, TypeError, msgpack.UnpackException):
                    server = msgpack.unpackb(entry.value)[0]
            if first:
                if server is None:
                    seen.pop(key, None)
                else:
                    seen[key] = server
            else:
                await self._set_presence({key: server})

    async def _set_presence(self, changes: dict[str, Any], *, replace: bool = False) -> None:
        before = dict(self.presence)
        if replace:
            self.presence = dict(changes)
        else:
            for key, server in changes.items():
                if server is None:
                    self.presence.pop(key, None)
                else:
                    self.presence[key] = server
        if self.on_presence is not None:
            for key in set(before) | set(self.presence):
                if before.get(key) != self.presence.get(key):
                    try:
                        self.on_presence(key, self.presence.get(key))
                    except Exception:
                        logger.exception("cluster: the on_presence callback failed")
        async with self._presence_changed:
            self._presence_changed.notify_all()

    async def wait_presence(self, predicate: Callable[[dict[str, str]], bool]) -> None:
        """Waits until ``predicate(presence)`` is true (bound it with ``asyncio.timeout``)."""
        async with self._presence_changed:
            await self._presence_changed.wait_for(lambda: predicate(self.presence))

    def _kv_ready(self) -> KeyValue:
        if self._kv is None:
            raise ClusterUnavailableError("the cluster link is not started")
        return self._kv

    async def _refresh_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.is_connected:
                await self._refresh()

    async def _refresh(self) -> None:
        """Rewrites this server's keys (their TTL starts again). A key another server took
        over (we were presumed dead) is lost here: ``on_key_lost`` is told."""
        kv = self._kv
        if kv is None:
            return
        value = _packb((self.id, time.time()))
        for key, (connection, revision, subs) in list(self._local.items()):
            token = key_token(key)
            try:
                new = await kv.update(token, value, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    entry = await kv.get(token)
                    holder = msgpack.unpackb(entry.value)[0] if entry.value else ""
                except nats.js.errors.KeyNotFoundError:
                    holder = ""
                if holder in ("", self.id):  # expired while we were away: ours again
                    with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                        new = await kv.create(token, value)
                        self._local[key] = (connection, new, subs)
                        continue
                logger.warning("cluster: key %r was taken over by server %s", key, holder)
                self._local.pop(key, None)
                self._keys.pop(connection, None)
                for sub in subs:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                if self.on_key_lost is not None:
                    self.on_key_lost(connection, key)
                continue
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as error:
                logger.debug("cluster: refreshing presence failed: %s", error)
                return
            if key in self._local:
                self._local[key] = (connection, new, subs)
        self.metrics.bound_keys.set(len(self._local))

    # -- the server's hooks ---------------------------------------------------------------------

    def connected(self, connection: Connection) -> None:
        """A connection opened on this server (nothing to do until it is bound)."""

    def disconnected(self, connection: Connection) -> None:
        """A connection closed: its key is unbound in the background."""
        if (connection in self._keys or connection in self._binding) and not self._closing:
            self._spawn(self._unbind_closed(connection))

    async def _unbind_closed(self, connection: Connection) -> None:
        async with self._binding.setdefault(connection, asyncio.Lock()):
            await self.unbind(connection)
        self._binding.pop(connection, None)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _url(nc: NATS) -> str:
    url = nc.connected_url
    return f"{url.scheme}://{url.hostname}:{url.port}" if url is not None else "?"
