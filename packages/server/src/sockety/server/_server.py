"""The Sockety server: listens on TCP or TLS, keeps a registry of its connections, broadcasts,
and shuts down gracefully (Go Away to every peer, in-flight exchanges finish within a grace
period, then the sockets close).

Admission comes first: a connection over ``max_connections`` is refused as soon as it is
accepted, before any TLS handshake. The server runs the handshake itself (``loop.start_tls``)
within the connection's ``open_timeout``, counted from the accept, and reports a failure
(``on_handshake_failed``, logged). Every other limit and deadline is the connection's (see
``sockety.core.aio.Connection``); ``max_memory`` bounds what all connections hold for their peers
together.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Protocol, cast

from sockety.core import ConnectionClosedError, ConnectionLostError, MemoryPool
from sockety.core.aio import Connection, Handler, Outgoing, check_options

from ._observer import ServerObserver, observed

__all__ = ["ClusterLink", "Server", "serve", "server_of"]

logger = logging.getLogger("sockety.server")


class ClusterLink(Protocol):
    """What joins a server to others (``sockety.cluster.Cluster`` is one): started once the
    server listens, told of every connection that opens and closes, closed after the server's
    connections drained. The server depends on nothing more."""

    async def start(self, server: Server) -> None: ...

    async def close(self) -> None: ...

    def connected(self, connection: Connection) -> None: ...

    def disconnected(self, connection: Connection) -> None: ...


class _Registry:
    """The server as its connections see it: admission, and what it is told as each one opens,
    fails its TLS handshake or closes. Its one seam with them (they never see the server's
    other parts); the server reads ``connections`` and sets ``closing``."""

    def __init__(
        self,
        *,
        ssl: ssl_module.SSLContext | None,
        on_connect: Callable[[Connection], Any] | None,
        on_disconnect: Callable[[Connection], Any] | None,
        on_refused: Callable[[Connection], Any] | None,
        on_handshake_failed: Callable[[Connection], Any] | None,
        max_connections: int | None,
        observer: ServerObserver | None,
        cluster: ClusterLink | None,
    ) -> None:
        #: The TLS context each connection runs its handshake with (None: plain TCP).
        self.ssl = ssl
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_refused = on_refused
        self._on_handshake_failed = on_handshake_failed
        self._max_connections = max_connections
        self._observer = observer
        self._cluster = cluster
        #: The admitted connections (not yet closed).
        self.connections: set[Connection] = set()
        #: Set once the server closes: no connection is admitted any more.
        self.closing = False

    def admit(self, connection: Connection) -> bool:
        """Admits (registers) a new connection, or refuses it when full or closing."""
        if self.closing or (
            self._max_connections is not None and len(self.connections) >= self._max_connections
        ):
            if self._observer is not None:
                self._observer.on_refused(connection.remote_address)
            if self._on_refused is not None:
                self._on_refused(connection)
            return False
        self.connections.add(connection)
        return True

    def opened(self, connection: _ServerConnection) -> None:
        connection.announced = True
        if self._observer is not None:
            self._observer.on_connect(connection)
        if self._cluster is not None:
            self._cluster.connected(connection)
        if self._on_connect is not None:
            self._on_connect(connection)

    def handshake_failed(self, connection: _ServerConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            logger.info(
                "TLS handshake with %s failed: %s",
                _format(connection.remote_address),
                connection.close_reason,
            )
            reason = connection.close_reason
            if self._observer is not None and reason is not None:
                self._observer.on_handshake_failed(connection.remote_address, reason)
            if self._on_handshake_failed is not None:
                self._on_handshake_failed(connection)

    def disconnected(self, connection: _ServerConnection, reason: ConnectionClosedError) -> None:
        if connection.announced and connection in self.connections:
            self.connections.discard(connection)
            if self._observer is not None:
                self._observer.on_close(connection, reason)
            if self._cluster is not None:
                self._cluster.disconnected(connection)
            if self._on_disconnect is not None:
                self._on_disconnect(connection)


class Server:
    """A listening Sockety server. Make one with :func:`serve`."""

    def __init__(
        self,
        handler: Handler | None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        on_connect: Callable[[Connection], Any] | None = None,
        on_disconnect: Callable[[Connection], Any] | None = None,
        # Told about a connection refused at once (server full or closing), and about one whose
        # TLS handshake failed or timed out (its close_reason says why); neither was connected.
        on_refused: Callable[[Connection], Any] | None = None,
        on_handshake_failed: Callable[[Connection], Any] | None = None,
        # Connections beyond this are refused at once, before a TLS handshake: each costs
        # memory and a file descriptor (1,024 is the usual default limit of open files).
        max_connections: int | None = 1024,
        # What all connections together may hold for their peers (each one's own budget is
        # max_buffered_bytes): past it, the connection asking for more is closed. None: no
        # shared limit.
        max_memory: int | None = None,
        observer: ServerObserver | None = None,
        cluster: ClusterLink | None = None,
        **options: Any,
    ) -> None:
        check_options(options, "serve")
        # A peer that reads none of the answers its requests make: past this much output
        # waiting for it, its requests wait in its own socket (see Connection).
        options.setdefault("max_send_backlog", 4 * 1024 * 1024)
        if observer is not None:
            observer.on_serve(handler)
            if handler is not None and observer.observes_messages:
                handler = observed(handler, observer)
        self._handler = handler
        self._cluster = cluster
        self._registry = _Registry(
            ssl=ssl,
            on_connect=on_connect,
            on_disconnect=on_disconnect,
            on_refused=on_refused,
            on_handshake_failed=on_handshake_failed,
            max_connections=max_connections,
            observer=observer,
            cluster=cluster,
        )
        #: The memory all connections share (None without ``max_memory``).
        self.memory: MemoryPool | None = None
        if max_memory is not None:
            self.memory = options["pool"] = MemoryPool(max_memory)
        self._options = options
        self._server: asyncio.Server | None = None
        self._addresses: list[Any] = []
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    # -- listening ----------------------------------------------------------------------------

    async def start(
        self,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> None:
        loop = asyncio.get_running_loop()
        # Plain TCP: each connection runs its TLS handshake itself, after admission. The
        # sockets are bound at once but accept only once the cluster link (if any) is up: a
        # peer that reached a server still joining its cluster would see a server that is
        # not one of them yet (and, with reuse_port workers, the kernel sends peers only to
        # workers that accept).
        if sock is not None:
            self._server = await loop.create_server(
                self._make_connection, sock=sock, backlog=backlog, start_serving=False
            )
        else:
            self._server = await loop.create_server(
                self._make_connection,
                host,
                port,
                reuse_port=reuse_port or None,
                backlog=backlog,
                start_serving=False,
            )
        self._addresses = [sock.getsockname() for sock in self._server.sockets]
        if self._cluster is not None:
            try:
                await self._cluster.start(self)
            except BaseException:
                self._server.close()  # no cluster, no server: the caller asked for both
                raise
        await self._server.start_serving()
        logger.info("listening on %s", ", ".join(map(_format, self._addresses)))

    def _make_connection(self) -> Connection:
        connection = _ServerConnection(self, self._registry, self._handler, **self._options)
        return connection

    @property
    def addresses(self) -> list[Any]:
        """The addresses the server listens (or listened) on."""
        return list(self._addresses)

    @property
    def port(self) -> int:
        """The port it listens on (the one picked when started with port 0)."""
        addresses = self.addresses
        if not addresses:
            raise RuntimeError("the server is not listening")
        port: int = addresses[0][1]
        return port

    @property
    def connections(self) -> frozenset[Connection]:
        """The open connections."""
        return frozenset(self._registry.connections)

    @property
    def cluster(self) -> ClusterLink | None:
        """The cluster link given to ``serve(cluster=...)``, if any."""
        return self._cluster

    @property
    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    # -- broadcast ----------------------------------------------------------------------------

    def broadcast(
        self, message: Outgoing, *, where: Callable[[Connection], bool] | None = None
    ) -> int:
        """Sends ``message`` (no response expected) to every connection, or those for which
        ``where(connection)`` is true. Returns how many it was sent to; closing connections are
        skipped."""
        sent = 0
        for connection in list(self._registry.connections):
            if where is not None and not where(connection):
                continue
            if connection.closed or connection.closing:
                continue
            connection.send_nowait(message)
            sent += 1
        return sent

    # -- lifecycle ----------------------------------------------------------------------------

    async def serve_forever(self) -> None:
        """Serves until :meth:`close` is called (or this task is cancelled, which closes)."""
        try:
            await self._closed.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self.close())
            raise

    def close(self, timeout: float | None = None) -> asyncio.Task[None]:
        """Stops listening, sends Go Away to every peer and lets their in-flight exchanges finish
        within ``timeout`` seconds (default: the connections' ``close_timeout``), then closes.
        Idempotent; await the result (or :meth:`wait_closed`) to wait for the end."""
        if self._closing is None:
            self._registry.closing = True
            self._closing = asyncio.get_running_loop().create_task(self._close(timeout))
        return self._closing

    async def _close(self, timeout: float | None) -> None:
        if self._server is not None:
            self._server.close()
        connections = list(self._registry.connections)
        logger.info("closing: %d connection(s) to drain", len(connections))
        await asyncio.gather(*(c.close(timeout) for c in connections), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._cluster is not None:
            await self._cluster.close()
        self._closed.set()
        logger.info("closed")

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class _ServerConnection(Connection):
    """A connection that registers itself with its server (and runs its TLS handshake)."""

    def __init__(
        self, server: Server, registry: _Registry, handler: Handler | None, **options: Any
    ) -> None:
        super().__init__(handler, **options)
        self._server = server
        self._registry = registry
        self._handshake_timeout: float | None = options.get("open_timeout", 10.0)
        #: Whether on_connect was told (only such connections are told about their close).
        self.announced = False
        self._tls_started = False

    @property
    def server(self) -> Server:
        """The server that accepted it."""
        return self._server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Admission first: a refused peer gets no Sockety header (nor a TLS handshake), so its
        # connect() fails instead of succeeding and then losing the connection.
        if self._tls_started:  # the handshake is over: the TLS transport
            super().connection_made(transport)
            self._registry.opened(self)
            return
        tcp = cast(asyncio.Transport, transport)
        peer = tcp.get_extra_info("peername")
        self.set_remote_address(peer)  # for the logs and the observer, before connection_made
        if not self._registry.admit(self):
            logger.warning("refusing connection from %s: server full or closing", _format(peer))
            self.fail(ConnectionClosedError("server full or closing", kind="refused"))
            tcp.abort()
            return
        context = self._registry.ssl
        if context is None:
            super().connection_made(transport)
            self._registry.opened(self)
            return
        # The handshake, run here rather than by create_server(ssl=...): after admission, and
        # within open_timeout. The TLS protocol goes in at once, before the first read
        # (loop.start_tls() takes a loop turn, in which uvloop already reads the hello to the
        # old protocol); it calls connection_made again with the TLS transport when done.
        self._tls_started = True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiter.add_done_callback(self._handshake_done)
        timeout = self._handshake_timeout
        tls = _tls_protocol(loop)(
            loop,
            self,
            context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=timeout if timeout else None,
        )
        tcp.set_protocol(tls)
        tls.connection_made(tcp)

    def _handshake_done(self, waiter: asyncio.Future[None]) -> None:
        error = None if waiter.cancelled() else waiter.exception()
        if error is not None or waiter.cancelled():
            self._tls_failed(error)

    def _tls_failed(self, error: BaseException | None) -> None:
        # (never connected: nothing pending but its futures)
        self.fail(
            ConnectionLostError(
                f"TLS handshake failed: {error or 'the peer closed the connection'}",
                error,
                kind="tls_error",
            )
        )
        self._registry.handshake_failed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        reason = self.close_reason
        assert reason is not None  # set by the connection before it calls back
        logger.debug("connection from %s closed: %s", _format(self.remote_address), reason)
        self._registry.disconnected(self, reason)


def _tls_protocol(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's own TLS protocol class: what its ``start_tls`` would use."""
    if type(loop).__module__.startswith("uvloop"):
        import uvloop.loop  # noqa: PLC0415 - only on uvloop

        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    return asyncio.sslproto.SSLProtocol


def server_of(connection: Connection) -> Server | None:
    """The server a connection was accepted by (None for a client's connection): how a
    handler reaches its server, e.g. ``server_of(message.connection).cluster``."""
    return connection.server if isinstance(connection, _ServerConnection) else None


def _format(address: Any) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


class serve:  # used like a function, as websockets.serve is
    """Starts a Sockety server; await it, or use it with ``async with``::

        async with serve(router, "127.0.0.1", 9000) as server:
            await server.serve_forever()

    ``ssl`` is an ``ssl.SSLContext`` for TLS. Port 0 picks a free port (``server.port``).
    ``observer`` (a :class:`ServerObserver`, e.g. :class:`ServerMetrics`) hears connections,
    refusals, failed handshakes, closes and messages. The server's own keywords
    (``max_connections``, ``max_memory``, callbacks) are those of :class:`Server`; the others
    are the connections' options and limits (see ``Connection``), checked now: an unknown
    keyword raises TypeError.
    """

    def __init__(
        self,
        handler: Handler | None,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        ssl: ssl_module.SSLContext | None = None,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        **options: Any,
    ) -> None:
        self._server = Server(handler, ssl=ssl, **options)
        self._where = (host, port, sock, reuse_port)

    async def _start(self) -> Server:
        host, port, sock, reuse_port = self._where
        await self._server.start(host, port, sock=sock, reuse_port=reuse_port)
        return self._server

    def __await__(self) -> Generator[Any, None, Server]:
        return self._start().__await__()

    async def __aenter__(self) -> Server:
        return await self._start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._server.close()
