"""Prometheus metrics for a Sockety server, on a registry the server owns: a
:class:`ServerObserver`, so the server reports to it through that public interface.

Per message: a dict lookup and a counter increment when it arrives, a ``perf_counter`` pair, a
histogram observation and a counter increment when its handler finishes. The traffic counters
every connection keeps anyway (bytes, responses, fast replies) are folded into the Prometheus
counters when a connection closes and at scrape time (or every ``sync_interval`` seconds in
multiprocess mode, where a scrape happens in another process), never per message.

Actions are labelled only when the router knows them; anything else is ``_unknown``, so a client
cannot grow the label set. Other labels take values from small closed sets. The registry also
holds prometheus-client's process, platform and GC collectors (``process_*``, ``python_*``).

With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` before prometheus-client is
imported: the values go to files there and :func:`multiprocess_registry` serves all of them
(prometheus-client cannot merge per-process collectors there: no ``process_*`` metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import threading
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from sockety.core import ConnectionClosedError, FastReply, ProtocolErrorKind, RemoteProtocolError
from sockety.core.aio import Connection, Handler, Message, Router

from ._observer import ServerObserver

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
#: Why connections close: ConnectionClosedError.kind (anything new maps to "other"). "closed"
#: is a clean close this side began (shutdown, close()), "closed_by_peer" one the peer began.
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
    "other",
)
#: Fast-reply outcomes: the six conventional codes by name, application codes as "other".
OUTCOMES: dict[int, str] = {code.value: code.name.lower() for code in FastReply}
#: How a handler's message was answered, besides a fast-reply code it returned (OUTCOMES):
#: "answered" (the handler sent a response or fast reply itself), "none" (nothing sent: no
#: response expected, or the handler returned None).
HANDLED_OUTCOMES = (*OUTCOMES.values(), "other", "answered", "none")


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


class ServerMetrics(ServerObserver):
    """The metrics of one server (or one worker process): pass it as the server's observer.

    ::

        metrics = ServerMetrics()
        server = await serve(router, "127.0.0.1", 9000, observer=metrics)
        metrics_http = await serve_metrics(metrics.registry, "127.0.0.1", 9100)
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        buckets: tuple[float, ...] = BUCKETS,
        loop_name: str | None = None,
        process_collectors: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._live: dict[Connection, list[Any]] = {}  # -> [rx, tx, responses, {code: count}]
        r = self.registry
        r.register(_SyncFirst(self.sync))
        if process_collectors:  # as prometheus-client's default registry has them
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
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
            "Connections closed, by reason (ConnectionClosedError.kind; closed: by this side, "
            "closed_by_peer: by the peer).",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out (no connection was made).",
            namespace=ns,
            registry=r,
        )
        self.handlers_in_progress = Gauge(
            "handlers_in_progress",
            "Handlers running now (async ones until their task ends).",
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
        self.messages_handled = Counter(
            "messages_handled",
            "Messages whose handler finished, by action and outcome: the fast-reply code it "
            "returned by name (other: an application code), answered (it answered itself), "
            "none (nothing sent).",
            ["action", "outcome"],
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
        self._unknown = _Action(self, UNKNOWN_ACTION)
        self._actions: dict[str, _Action] = {}  # known actions only: the label set is closed
        self._known: Callable[[], frozenset[str]] | None = None

    # -- per message ----------------------------------------------------------------------------

    def label_actions(self, actions: Iterable[str] | Callable[[], frozenset[str]]) -> None:
        """The actions labelled by name: fixed, or looked up again when a new one appears
        (``lambda: router.actions``); everything else is ``_unknown``. By default, the actions
        of the server's router (see :meth:`on_serve`), routes added later included."""
        if callable(actions):
            self._known = actions
        else:
            fixed = frozenset(actions)
            self._known = lambda: fixed

    def on_serve(self, handler: Handler | None) -> None:
        if self._known is None and isinstance(handler, Router):
            self._known = lambda: handler.actions

    def _action(self, name: str) -> _Action:
        action = self._actions.get(name)
        if action is None:
            if self._known is None or name not in self._known():
                return self._unknown
            action = self._actions[name] = _Action(self, name)
        return action

    def on_message(self, message: Message) -> None:
        self._action(message.action).received()
        self.handlers_in_progress.inc()

    def on_handled(self, message: Message, result: int | None, seconds: float) -> None:
        self.handlers_in_progress.dec()
        action = self._action(message.action)
        action.observe(seconds)
        # The connection sends a returned code if the message expects a response and the
        # handler did not answer it itself; this runs just before that.
        if message.answered:
            outcome = "answered"
        elif isinstance(result, int) and message.expects_response:
            outcome = OUTCOMES.get(result, "other")
        else:
            outcome = "none"
        action.handled(outcome)

    # -- per connection -------------------------------------------------------------------------

    def on_connect(self, connection: Connection) -> None:
        self.connections_opened.inc()
        self.open_connections.inc()
        with self._lock:
            self._live[connection] = [0, 0, 0, {}]

    def on_close(self, connection: Connection, reason: ConnectionClosedError) -> None:
        self.open_connections.dec()
        with self._lock:
            last = self._live.pop(connection, None)
            if last is not None:
                self._fold(connection, last)
        kind = reason.kind if reason.kind in CLOSE_REASONS else "other"
        self.connections_closed.labels(kind).inc()
        if isinstance(reason.cause, RemoteProtocolError):
            self.protocol_errors.labels(reason.cause.kind.value).inc()

    def on_refused(self, peer: Any = None) -> None:
        """A connection accepted then refused at once (server full or closing)."""
        self.connections_opened.inc()
        self.connections_closed.labels("refused").inc()

    def on_handshake_failed(self, peer: Any, error: BaseException | None) -> None:
        """An accepted connection whose TLS handshake failed or timed out (never opened for
        Sockety, so it is counted as opened and closed with reason ``tls_error``)."""
        self.tls_handshake_failures.inc()
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
        """Folds the open connections' counters in. Runs before every scrape of
        :attr:`registry` (and periodically in multiprocess mode)."""
        with self._lock:
            for connection, last in list(self._live.items()):
                self._fold(connection, last)

    async def sync_every(self, interval: float) -> None:
        """Calls :meth:`sync` every ``interval`` seconds (multiprocess mode: the supervisor
        scrapes files, not this process). Cancel to stop; a last sync runs then."""
        try:
            while True:
                await asyncio.sleep(interval)
                self.sync()
        finally:
            self.sync()


class _Action:
    """The metric children of one action label, made once."""

    __slots__ = ("_handled", "_metrics", "label", "observe", "received")

    def __init__(self, metrics: ServerMetrics, label: str) -> None:
        self.label = label
        self.received = metrics.messages_received.labels(label).inc
        self.observe = metrics.handling_seconds.labels(label).observe
        self._metrics = metrics
        self._handled: dict[str, Callable[[], None]] = {}

    def handled(self, outcome: str) -> None:
        inc = self._handled.get(outcome)
        if inc is None:
            inc = self._handled[outcome] = self._metrics.messages_handled.labels(
                self.label, outcome
            ).inc
        inc()


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
    registry: CollectorRegistry,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    healthy: Callable[[], bool] | None = None,
) -> asyncio.Server:
    """Serves ``registry`` over HTTP on this event loop (no thread, so the counters are read
    where they are written): ``GET /metrics``, and ``GET /healthz`` answering 200 ``ok`` while
    ``healthy()`` is true (default: always), else 503. Other paths: 404. Returns the asyncio
    server (``close()`` it)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            await _answer(registry, healthy, head, writer)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        except Exception:  # a scrape must never take the server down
            logger.exception("serving metrics failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=16 * 1024)


async def _answer(
    registry: CollectorRegistry,
    healthy: Callable[[], bool] | None,
    head: bytes,
    writer: asyncio.StreamWriter,
) -> None:
    lines = head.decode("latin-1").split("\r\n")
    method, target, *_ = [*lines[0].split(" "), "", ""]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    path = urlsplit(target).path
    if method not in ("GET", "HEAD"):
        status, content_type, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
    elif path == "/healthz":
        ok = healthy is None or healthy()
        status = "200 OK" if ok else "503 Service Unavailable"
        content_type, body = "text/plain", b"ok\n" if ok else b"unavailable\n"
    elif path != "/metrics":
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
