"""Prometheus metrics for a Sockety server, on a registry the server owns.

Nothing here runs per message unless the handler is wrapped with :meth:`ServerMetrics.wrap`;
then each message costs a dict lookup, a counter increment and a ``perf_counter`` pair. The
traffic counters every connection keeps anyway (bytes, responses, fast replies) are folded into
the Prometheus counters when a connection closes and at scrape time (or every ``sync_interval``
seconds in multiprocess mode, where a scrape happens in another process), never per message.

Actions are labelled only when the router knows them; anything else is ``_unknown``, so a client
cannot grow the label set. Other labels take values from small closed sets.

With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` before prometheus-client is
imported: the values go to files there and :func:`multiprocess_registry` serves all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import platform
import threading
from collections.abc import Awaitable, Callable, Iterable
from importlib import metadata
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from sockety.core import FastReply, ProtocolErrorKind, RemoteProtocolError
from sockety.core.aio import Connection, Handler, Message

from ._server import OperatedServer

__all__ = ["ServerMetrics", "multiprocess_registry", "serve_metrics"]

logger = logging.getLogger("sockety.server")

NAMESPACE = "sockety_server"
UNKNOWN_ACTION = "_unknown"
#: Handling-time buckets: sub-millisecond resolution (sync handlers take microseconds), up to
#: the seconds a slow async handler may take.
BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Why connections close: ConnectionClosedError.kind (anything new maps to "other").
CLOSE_REASONS = (
    "closed",
    "closed_by_peer",
    "grace_timeout",
    "lost",
    "tls_error",
    "protocol_error",
    "idle_timeout",
    "open_timeout",
    "refused",
    "write_timeout",
    "header_timeout",
)
#: Fast-reply outcomes: the six conventional codes by name, application codes as "other".
OUTCOMES: dict[int, str] = {code.value: code.name.lower() for code in FastReply}


def _version() -> str:
    try:
        return metadata.version("sockety-server")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class _SyncFirst:
    """A collector that yields nothing but folds connection counters in before a scrape (it is
    registered first, and the registry collects in registration order)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        self._sync()
        return ()


class ServerMetrics:
    """The metrics of one server (or one worker process).

    ::

        metrics = ServerMetrics()
        server = metrics.server(router, max_connections=1000)    # a Server wired to metrics
        await server.start("127.0.0.1", 9000)
        metrics_http = await serve_metrics(metrics.registry, "127.0.0.1", 9100)

    Or wire a server made by ``serve()`` by hand: ``serve(metrics.wrap(router),
    on_connect=metrics.on_connect, on_disconnect=metrics.on_disconnect)``.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        buckets: tuple[float, ...] = BUCKETS,
        loop_name: str | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._live: dict[Connection, list[Any]] = {}  # -> [rx, tx, responses, {code: count}]
        self.registry.register(_SyncFirst(self.sync))
        r = self.registry
        ns = NAMESPACE
        self.open_connections = Gauge(
            "open_connections",
            "Connections open now.",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_opened = Counter(
            "connections_opened",
            "Connections accepted (including those refused right after, see closed).",
            namespace=ns,
            registry=r,
        )
        self.connections_closed = Counter(
            "connections_closed",
            "Connections closed, by reason (ConnectionClosedError.kind).",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.channels_in_use = Gauge(
            "channels_in_use",
            "Channels carrying an unfinished message or response, by direction.",
            ["direction"],
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.messages_received = Counter(
            "messages_received",
            "Messages received, by action (actions the router does not know: _unknown).",
            ["action"],
            namespace=ns,
            registry=r,
        )
        self.handling_seconds = Histogram(
            "handling_seconds",
            "Time the handler took (until an async handler finished), by action.",
            ["action"],
            namespace=ns,
            registry=r,
            buckets=buckets,
        )
        self.responses_sent = Counter(
            "responses_sent", "Full responses sent.", namespace=ns, registry=r
        )
        self.fast_replies_sent = Counter(
            "fast_replies_sent",
            "Fast replies sent, by outcome (the conventional codes by name; others: other).",
            ["outcome"],
            namespace=ns,
            registry=r,
        )
        self.received_bytes = Counter(
            "received_bytes", "Bytes received from peers.", namespace=ns, registry=r
        )
        self.sent_bytes = Counter("sent_bytes", "Bytes sent to peers.", namespace=ns, registry=r)
        self.protocol_errors = Counter(
            "protocol_errors",
            "Connections closed because the peer broke the protocol, by kind.",
            ["kind"],
            namespace=ns,
            registry=r,
        )
        self.build_info = Gauge(
            "build_info",
            "Build information (always 1).",
            ["version", "python_version", "loop"],
            namespace=ns,
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(
            _version(),
            platform.python_version(),
            loop_name or "unknown",
        ).set(1)
        # Children made up front: label values are known, and scrapes show zeros.
        for reason in CLOSE_REASONS:
            self.connections_closed.labels(reason)
        for kind in ProtocolErrorKind:
            self.protocol_errors.labels(kind.value)
        self._outcomes = {
            code: self.fast_replies_sent.labels(name) for code, name in OUTCOMES.items()
        }
        self._other_outcome = self.fast_replies_sent.labels("other")
        self._receive_channels = self.channels_in_use.labels("receive")
        self._send_channels = self.channels_in_use.labels("send")

    # -- per message ----------------------------------------------------------------------------

    def wrap(self, handler: Handler, actions: Iterable[str] | None = None) -> Handler:
        """The handler, counting messages and timing their handling by action. ``actions`` are
        the labels allowed (default: the router's ``actions``, looked up again when a new action
        appears, so routes added later are labelled too); everything else is ``_unknown``."""
        fixed = frozenset(actions) if actions is not None else None
        counter = self.messages_received
        histogram = self.handling_seconds
        children: dict[str, tuple[Callable[[], None], Callable[[float], None]]] = {}
        unknown = (counter.labels(UNKNOWN_ACTION).inc, histogram.labels(UNKNOWN_ACTION).observe)

        def lookup(action: str) -> tuple[Callable[[], None], Callable[[float], None]]:
            known = fixed if fixed is not None else getattr(handler, "actions", frozenset())
            if action not in known:
                return unknown
            pair = (counter.labels(action).inc, histogram.labels(action).observe)
            children[action] = pair
            return pair

        def metered(message: Message) -> Any:
            pair = children.get(message.action) or lookup(message.action)
            pair[0]()
            start = perf_counter()
            try:
                result = handler(message)
            except BaseException:
                pair[1](perf_counter() - start)
                raise
            if result is None or type(result) is int or not inspect.isawaitable(result):
                pair[1](perf_counter() - start)
                return result
            return _timed(result, pair[1], start)

        return metered

    # -- per connection -------------------------------------------------------------------------

    def on_connect(self, connection: Connection) -> None:
        self.connections_opened.inc()
        self.open_connections.inc()
        with self._lock:
            self._live[connection] = [0, 0, 0, {}]

    def on_disconnect(self, connection: Connection) -> None:
        self.open_connections.dec()
        with self._lock:
            last = self._live.pop(connection, None)
            if last is not None:
                self._fold(connection, last)
        reason = connection.close_reason
        kind = reason.kind if reason is not None else "closed"
        self.connections_closed.labels(kind if kind in CLOSE_REASONS else "other").inc()
        if reason is not None and isinstance(reason.cause, RemoteProtocolError):
            self.protocol_errors.labels(reason.cause.kind.value).inc()

    def on_refused(self) -> None:
        """A connection accepted then refused at once (server full or closing)."""
        self.connections_opened.inc()
        self.connections_closed.labels("refused").inc()

    def on_handshake_failed(self, connection: Connection) -> None:
        """A connection accepted whose TLS handshake failed or timed out."""
        self.connections_opened.inc()
        self.connections_closed.labels("tls_error").inc()

    def _fold(self, connection: Connection, last: list[Any]) -> None:
        """Adds what a connection's counters gained since ``last`` (updated in place)."""
        rx, tx, responses = (
            connection.bytes_received,
            connection.bytes_sent,
            connection.responses_sent,
        )
        if rx != last[0]:
            self.received_bytes.inc(rx - last[0])
            last[0] = rx
        if tx != last[1]:
            self.sent_bytes.inc(tx - last[1])
            last[1] = tx
        if responses != last[2]:
            self.responses_sent.inc(responses - last[2])
            last[2] = responses
        seen: dict[int, int] = last[3]
        for code, count in list(connection.fast_replies_sent.items()):
            before = seen.get(code, 0)
            if count != before:
                self._outcomes.get(code, self._other_outcome).inc(count - before)
                seen[code] = count

    def sync(self) -> None:
        """Folds the open connections' counters in and updates the channel gauges. Runs before
        every scrape of :attr:`registry` (and periodically in multiprocess mode)."""
        receiving = sending = 0
        with self._lock:
            for connection, last in list(self._live.items()):
                self._fold(connection, last)
                receiving, sending = _add_channels(connection, receiving, sending)
        self._receive_channels.set(receiving)
        self._send_channels.set(sending)

    async def sync_every(self, interval: float) -> None:
        """Calls :meth:`sync` every ``interval`` seconds (multiprocess mode: the supervisor
        scrapes files, not this process). Cancel to stop; a last sync runs then."""
        try:
            while True:
                await asyncio.sleep(interval)
                self.sync()
        finally:
            self.sync()

    def server(self, handler: Handler | None, **kwargs: Any) -> OperatedServer:
        """A server (not started) whose handler and connections are metered: an
        ``OperatedServer``. Takes the arguments of ``Server``; ``on_connect``/``on_disconnect``
        given here run too."""
        user_connect = kwargs.pop("on_connect", None)
        user_disconnect = kwargs.pop("on_disconnect", None)

        def connected(connection: Connection) -> None:
            self.on_connect(connection)
            if user_connect is not None:
                user_connect(connection)

        def disconnected(connection: Connection) -> None:
            self.on_disconnect(connection)
            if user_disconnect is not None:
                user_disconnect(connection)

        return OperatedServer(
            self.wrap(handler) if handler is not None else None,
            metrics=self,
            on_connect=connected,
            on_disconnect=disconnected,
            **kwargs,
        )


def _add_channels(connection: Connection, receiving: int, sending: int) -> tuple[int, int]:
    core = connection._core
    return receiving + core.receiving, sending + core.sending


async def _timed(result: Awaitable[Any], observe: Callable[[float], None], start: float) -> Any:
    try:
        return await result
    finally:
        observe(perf_counter() - start)


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A registry serving the metrics every process wrote to ``path`` (default:
    ``PROMETHEUS_MULTIPROC_DIR``)."""
    registry = CollectorRegistry()
    MultiProcessCollector(  # type: ignore[no-untyped-call]
        registry, path=path or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    )
    return registry


# -- the /metrics endpoint ----------------------------------------------------------------------


async def serve_metrics(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
) -> asyncio.Server:
    """Serves ``registry`` over HTTP (``GET /metrics``) on this event loop: no thread, so the
    counters are read where they are written. Returns the asyncio server (``close()`` it)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            await _answer(registry, head, writer)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        except Exception:  # a scrape must never take the server down
            logger.exception("serving metrics failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=16 * 1024)


async def _answer(registry: CollectorRegistry, head: bytes, writer: asyncio.StreamWriter) -> None:
    lines = head.decode("latin-1").split("\r\n")
    method, target, *_ = [*lines[0].split(" "), "", ""]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    path = urlsplit(target).path
    if method not in ("GET", "HEAD"):
        status, content_type, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
    elif path not in ("/metrics", "/"):
        status, content_type, body = "404 Not Found", "text/plain", b"see /metrics\n"
    else:
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        status, body = "200 OK", encoder(registry)
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + (body if method == "GET" else b"")
    )
    await writer.drain()
