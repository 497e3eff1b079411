"""The chat server: a name registry (the reference's rules), broadcasts, and relays for the live
typing streams and shared files. No UI: ``sockety-chat serve`` and the embedded server of the
app both run this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sockety.core import SocketyError
from sockety.server import (
    Connection,
    FastReply,
    FileTransfer,
    Message,
    Router,
    Server,
    StreamWriter,
    Transfer,
    serve,
)

from . import _protocol as p

if TYPE_CHECKING:
    from ._cluster import ClusterRoom

__all__ = ["ChatServer"]

logger = logging.getLogger("sockety.chat.server")

#: Stream chunks a file relay holds per receiver before it waits for that receiver.
_SINK_CHUNKS = 16
#: A receiver that takes nothing for this long is dropped from a file relay.
_SINK_STALL = 30.0


class ChatServer:
    """A chat server. ``await start()`` (or ``async with``), ``close()`` to stop::

    async with ChatServer() as chat:
        await chat.start("127.0.0.1", 9000)
        await chat.serve_forever()
    """

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = p.iso_now,
        max_file_size: int = 1024**3,
        close_timeout: float = 3.0,
        anon_name: Callable[[], str] | None = None,
        # One room across servers (``sockety-chat serve --cluster``); None: this process only.
        backend: ClusterRoom | None = None,
        **options: Any,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self.max_file_size = max_file_size
        self._anon_name = anon_name or (lambda: f"anon_{secrets.token_hex(4)}")
        self._options = {"close_timeout": close_timeout, **options}
        self._names: dict[Connection, str] = {}  # in the order people joined
        self._typing: dict[Connection, _TypingRelay] = {}
        self._server: Server | None = None
        self._router = Router()
        self._router.action("name")(self._on_name)
        self._router.action("broadcast")(self._on_broadcast)
        self._router.action("typing")(self._on_typing)
        self._router.action("file")(self._on_file)
        self._router.action("since")(self._on_since)
        self._drains: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(
        self,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        ssl: ssl_module.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._server = await serve(
            self._router,
            host,
            port,
            ssl=ssl,
            reuse_port=reuse_port,
            on_connect=self._connected,
            on_disconnect=self._disconnected,
            cluster=self._backend.cluster if self._backend is not None else None,
            **self._options,
        )
        if self._backend is not None:
            await self._backend.start(self)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the chat server is not started")
        return self._server.port

    @property
    def names(self) -> list[str]:
        """Everyone's name, in the order they joined (with a backend: on every server)."""
        if self._backend is not None:
            return self._backend.names(list(self._names.values()))
        return list(self._names.values())

    @property
    def members(self) -> list[Connection]:
        """This server's members (connections with a name), in the order they joined."""
        return list(self._names)

    # -- what a backend calls --------------------------------------------------------------------

    def users_changed(self) -> None:
        self._users()

    def local_notice(self, notice: dict[str, Any]) -> None:
        """A system notice from another server, for this one's members."""
        with contextlib.suppress(SocketyError):  # a member going away
            self._broadcast(p.SYSTEM(notice))

    def remote_typing(self, author: str) -> _TypingRelay:
        """A typing relay for someone on another server, to this server's members."""
        relay = _TypingRelay(None, author)
        for member in self._names:
            relay.add(member)
        return relay

    @property
    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving

    async def serve_forever(self) -> None:
        if self._server is None:
            raise RuntimeError("the chat server is not started")
        await self._server.serve_forever()

    async def close(self) -> None:
        """Ends the typing relays at once, then closes gracefully (Go Away)."""
        for relay in list(self._typing.values()):
            relay.end()
        if self._backend is not None:
            await self._backend.close()
        if self._server is not None:
            await self._server.close()
        for task in list(self._drains):
            task.cancel()

    async def __aenter__(self) -> ChatServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- helpers ---------------------------------------------------------------------------------

    def _now(self) -> str:
        return p.iso(self._clock())

    def _broadcast(self, message: Any, where: Callable[[Connection], bool] | None = None) -> None:
        if self._server is not None:
            self._server.broadcast(
                message, where=lambda c: c in self._names and (not where or where(c))
            )

    def _system(self, content: str, *, but: Connection | None = None) -> None:
        logger.info("%s", content)
        if self._backend is not None:
            self._backend.system(content, self._now())
        self._broadcast(p.SYSTEM({"date": self._now(), "content": content}), lambda c: c is not but)

    def _users(self) -> None:
        self._broadcast(p.USERS(self.names))

    def _taken(self, name: str, by: Connection | None = None) -> bool:
        folded = name.casefold()
        return any(n.casefold() == folded for c, n in self._names.items() if c is not by)

    def _reject(self, message: Message) -> int:
        """BadRequest; content nobody will read is drained so the connection does not stall
        (a receiver cannot abort what it is sent)."""
        if message.stream is not None or message.files:
            task = asyncio.get_running_loop().create_task(_drain(message))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        return FastReply.BAD_REQUEST

    # -- connections -----------------------------------------------------------------------------

    def _connected(self, connection: Connection) -> None:
        name = self._anon_name()
        while self._taken(name):
            name = self._anon_name()
        self._names[connection] = name
        connection.send_nowait(p.LOGIN(name))
        if self._backend is not None:
            self._backend.joined(connection, name)
            self._backend.member_joined(connection)
        self._users()
        self._system(f"{name} connected", but=connection)
        for relay in self._typing.values():
            relay.add(connection)

    def _disconnected(self, connection: Connection) -> None:
        if self._backend is not None:
            self._backend.left(connection)
        name = self._names.pop(connection, None)
        relay = self._typing.pop(connection, None)
        if relay is not None:
            relay.end()
        if name is not None:
            self._system(f"{name} disconnected")
            self._users()

    # -- actions ---------------------------------------------------------------------------------

    def _on_name(self, message: Message) -> Any:
        connection = message.connection
        if message.stream is not None or message.files:
            return self._reject(message)
        try:
            name = message.msgpack()
        except ValueError:
            return FastReply.BAD_REQUEST
        if not p.is_valid_name(name) or self._taken(name, connection):
            return FastReply.BAD_REQUEST
        previous = self._names.get(connection)
        if previous is None or previous == name:
            return FastReply.ACCEPT
        if self._backend is not None:
            return self._rename_in_cluster(connection, previous, name)
        self._renamed(connection, previous, name)
        return FastReply.ACCEPT

    async def _rename_in_cluster(self, connection: Connection, previous: str, name: str) -> int:
        assert self._backend is not None
        if not await self._backend.rename(connection, name):
            return FastReply.BAD_REQUEST
        if self._names.get(connection) == previous:
            self._renamed(connection, previous, name)
        return FastReply.ACCEPT

    def _renamed(self, connection: Connection, previous: str, name: str) -> None:
        self._names[connection] = name
        self._system(f"{previous} is now known as {name}")
        self._users()
        relay = self._typing.get(connection)
        if relay is not None:
            relay.rename(name)

    def _on_broadcast(self, message: Message) -> Any:
        if message.stream is not None or message.files:
            return self._reject(message)
        try:
            content = message.msgpack()
        except ValueError:
            return FastReply.BAD_REQUEST
        author = self._names.get(message.connection)
        if author is None or not p.is_valid_message(content):
            return FastReply.BAD_REQUEST
        if self._backend is not None:  # every server (this one too) delivers it from history
            return self._backend.say(author, content, self._now())
        self._broadcast(p.CHAT({"date": self._now(), "author": author, "content": content}))
        return FastReply.ACCEPT

    async def _on_typing(self, message: Message) -> int:
        connection = message.connection
        author = self._names.get(connection)
        if message.stream is None or message.files or author is None:
            return self._reject(message)
        previous = self._typing.pop(connection, None)
        if previous is not None:
            previous.end()
        relay = _TypingRelay(connection, author)
        self._typing[connection] = relay
        for other in self._names:
            relay.add(other)
        decoder = p.TypingDecoder()
        try:
            async for chunk in message.stream:
                for text in decoder.feed(chunk):
                    relay.update(text)
                    if self._backend is not None:
                        self._backend.typed(relay.author, text)
        except (SocketyError, ValueError):
            pass  # the typist went away, or sent garbage: their line disappears
        finally:
            relay.end()
            if self._backend is not None:
                self._backend.typing_ended(relay.author)
            if self._typing.get(connection) is relay:
                del self._typing[connection]
        return FastReply.ACCEPT

    def _on_since(self, message: Message) -> int:
        """A client that comes back says the last message id it saw (0: none)."""
        try:
            after = message.msgpack()
        except ValueError:
            return FastReply.BAD_REQUEST
        if not isinstance(after, int) or after < 0 or message.connection not in self._names:
            return FastReply.BAD_REQUEST
        if self._backend is not None:
            self._backend.since(message.connection, after)
        return FastReply.ACCEPT

    async def _on_file(self, message: Message) -> int:
        connection = message.connection
        author = self._names.get(connection)
        if (
            author is None
            or message.stream is not None
            or len(message.files) != 1
            or message.files[0].size > self.max_file_size
        ):
            return self._reject(message)
        source = message.files[0]
        name = p.clean_file_name(source.name)
        meta = {"date": self._now(), "author": author, "name": name, "size": source.size}
        logger.info("%s shares %s (%d bytes)", author, name, source.size)
        sinks = self.file_sinks(meta, but=connection)
        remote = self._backend.share(meta) if self._backend is not None else None
        try:
            if remote is not None:  # to the other servers' members, through NATS
                await remote.start()
            async for chunk in source:
                for sink in sinks:
                    await sink.put(chunk)
                if remote is not None:
                    await remote.put(chunk)
        except SocketyError:
            for sink in sinks:
                sink.abort()
            if remote is not None:
                await remote.abort()
            return FastReply.INTERNAL_ERROR  # the sender is gone or aborted: nobody will read it
        for sink in sinks:
            sink.finish()
        if remote is not None:
            await remote.finish()
        return FastReply.ACCEPT

    def file_sinks(self, meta: dict[str, Any], *, but: Connection | None) -> list[_Sink]:
        """Offers a file (``meta``: its FILE_DOWN data) to this server's members but one; the
        returned sinks take its chunks (each bounded, waiting for its receiver)."""
        sinks: list[_Sink] = []
        for other in list(self._names):
            if other is but or other.closed:
                continue
            sink = _Sink(other)
            try:
                sink.transfer = other.send_nowait(
                    p.FILE_DOWN(
                        meta,
                        files=[
                            FileTransfer.from_iterator(sink.chunks(), meta["name"], meta["size"])
                        ],
                    )
                )
            except SocketyError:
                continue
            sinks.append(sink)
        return sinks


async def _drain(message: Message) -> None:
    try:
        if message.stream is not None:
            async for _ in message.stream:
                pass
        for file in message.files:
            async for _ in file:
                pass
    except SocketyError:
        pass


class _TypingRelay:
    """One person's typing stream, relayed to everyone else as a ``typing`` message each."""

    def __init__(self, source: Connection | None, author: str) -> None:
        self.source = source  # None: the typist is on another server
        self.author = author
        self.text = ""
        self._writers: dict[Connection, StreamWriter] = {}
        self._ended = False

    def add(self, connection: Connection) -> None:
        if self._ended or connection is self.source or connection in self._writers:
            return
        try:
            transfer = connection.send_nowait(p.TYPING_DOWN({"author": self.author}))
            assert transfer.stream is not None
            self._writers[connection] = transfer.stream
            if self.text:
                transfer.stream.write(p.encode_typing(self.text))
        except SocketyError:
            pass

    def update(self, text: str) -> None:
        self.text = text
        chunk = p.encode_typing(text)
        for connection, writer in list(self._writers.items()):
            try:
                writer.write(chunk)
            except SocketyError:
                del self._writers[connection]

    def rename(self, author: str) -> None:
        """Receivers know the typist by the message's author: start over under the new name."""
        connections = list(self._writers)
        self._end_writers()
        self.author = author
        for connection in connections:
            self.add(connection)

    def end(self) -> None:
        self._ended = True
        self._end_writers()

    def _end_writers(self) -> None:
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            with contextlib.suppress(SocketyError):
                writer.end()


class _Sink:
    """One receiver of a relayed file: a bounded queue its file pump reads from."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.transfer: Transfer | None = None
        self._queue: deque[bytes] = deque()
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        self._done = False
        self._dead = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            while not self._queue:
                if self._done:
                    return
                self._more.clear()
                await self._more.wait()
            chunk = self._queue.popleft()
            self._room.set()
            yield chunk

    async def put(self, chunk: bytes) -> None:
        waited = 0.0
        while not self._dead and len(self._queue) >= _SINK_CHUNKS:
            if self.connection.closed or waited >= _SINK_STALL:
                self.abort()
                return
            self._room.clear()
            try:
                async with asyncio.timeout(0.5):
                    await self._room.wait()
            except TimeoutError:
                waited += 0.5
        if not self._dead:
            self._queue.append(chunk)
            self._more.set()

    def finish(self) -> None:
        self._done = True
        self._more.set()

    def abort(self) -> None:
        self._dead = True
        self._queue.clear()
        self._done = True
        self._more.set()
        if self.transfer is not None and not self.connection.closed:
            self.transfer.abort()
