"""One chat room across several ``sockety-chat serve --cluster`` processes, through NATS.

- Messages go into a JetStream history (``sockety.cluster.History``): the author's ``broadcast``
  is accepted once NATS acknowledged it, and every server (the author's too) delivers what the
  history feeds it, so all see the same order. A message's stream sequence is its ``id``; a
  joiner gets the last ``history`` messages first, a client that comes back says which id it saw
  last (``since``) and gets what came after: nothing JetStream holds is missed, nothing repeats.
- Names are presence keys (``Cluster.bind``): one users list, and a name held on a server that
  died is released within the TTL (or at once by the ping take-over).
- System notices and live typing cross as NATS topics (ephemeral, like on one server).

Imported only with ``--cluster``: sockety-chat does not depend on sockety-cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgpack
import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig

from sockety.cluster import Cluster, ClusterError, History, KeyTakenError
from sockety.core import SocketyError
from sockety.server import Connection, FastReply

from . import _protocol as p

if TYPE_CHECKING:
    from ._server import ChatServer, _TypingRelay

__all__ = ["ClusterRoom"]

logger = logging.getLogger("sockety.chat.cluster")

#: A ``since`` gets at most this many messages (the history's retention bounds it anyway).
MAX_CATCH_UP = 10_000
#: Files cross in records of at most this many bytes (NATS messages stay small).
FILE_PIECE = 32 * 1024
#: Records a receiving server fetches at once (then waits for its slowest member's sink).
FILE_BATCH = 8


class ClusterRoom:
    """The chat server's backend when it is clustered (``ChatServer(room=ClusterRoom(...))``)."""

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        history: int = 100,
        retention: int = 10_000,
        prefix: str = "sockety_chat",
        # The files stream holds at most this much (uploads fail beyond it) for this long.
        max_file_bytes: int = 1024**3,
        file_retention: float = 600.0,
        # How long a joiner's history waits for its client's `since` (then: the last N).
        since_wait: float = 1.0,
        **cluster_options: Any,
    ) -> None:
        self.since_wait = since_wait
        self.cluster = Cluster(servers, prefix=prefix, **cluster_options)
        self.history_size = history
        self.history = History(self.cluster, "messages", max_records=max(retention, history))
        self._chat: ChatServer | None = None
        # Members still being sent their history: live messages wait here (in order).
        self._catching: dict[Connection, list[tuple[int, bytes]]] = {}
        self._last_sent: dict[Connection, int] = {}
        self._waiting: dict[Connection, asyncio.TimerHandle] = {}
        self._remote_typing: dict[tuple[str, str], _TypingRelay] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.files_stream = f"{prefix}_files"
        self.files_subject = f"{prefix}.file"
        self._max_file_bytes = max_file_bytes
        self._file_retention = file_retention
        self._files_ready = False
        self._files_made = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, chat: ChatServer) -> None:
        """After the chat's server (and so the cluster link) started."""
        self._chat = chat
        await self.history.start()
        await self.history.follow(self._on_record, after=await self.history.last_sequence())
        await self.cluster.subscribe("system", self._on_system)
        await self.cluster.subscribe("typing", self._on_typing)
        await self.cluster.subscribe("file", self._on_file)
        self.cluster.on_presence = self._on_presence

    async def close(self) -> None:
        for relay in list(self._remote_typing.values()):
            relay.end()
        for task in list(self._tasks):
            task.cancel()
        await self.history.close()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- names ----------------------------------------------------------------------------------

    def names(self, local: list[str]) -> list[str]:
        """Everyone in the room: the cluster's presence, and local names not in it yet."""
        everyone = list(self.cluster.presence)
        return everyone + [name for name in local if name not in self.cluster.presence]

    def joined(self, connection: Connection, name: str) -> None:
        """A connection joined under ``name`` (sent LOGIN already): bind the name. Its history
        follows its ``since`` (this package's client sends one at once: the last id it saw, 0
        if none), or after ``since_wait`` seconds the last ``history`` messages (for clients
        that never send one, like the reference's)."""
        self._catching[connection] = []
        self._spawn(self._bind(connection, name))
        self._waiting[connection] = asyncio.get_running_loop().call_later(
            self.since_wait, self._start_replay, connection, 0
        )

    async def _bind(self, connection: Connection, name: str) -> None:
        try:
            await self.cluster.bind(connection, name)
        except (ClusterError, SocketyError) as error:
            logger.warning("could not publish %s's presence: %s", name, error)

    def since(self, connection: Connection, after: int) -> None:
        """The client saw messages up to ``after`` (0: none): send it what followed (with 0,
        the last ``history``). Only the first one counts: later ones are answered by the live
        feed already."""
        if connection in self._waiting:
            self._start_replay(connection, after)

    def _start_replay(self, connection: Connection, after: int) -> None:
        timer = self._waiting.pop(connection, None)
        if timer is None:
            return
        timer.cancel()
        if after > 0:
            self._spawn(self._replay(connection, after=after, count=MAX_CATCH_UP))
        else:
            self._spawn(self._replay(connection, after=0, count=self.history_size))

    async def rename(self, connection: Connection, name: str) -> bool:
        """Takes ``name`` in the whole cluster for ``connection``: False if someone has it (in
        any case: the presence says who; a name held on a server that died is taken over)."""
        folded = name.casefold()
        for key, server in self.cluster.presence.items():
            if key != name and key.casefold() == folded and server != self.cluster.id:
                return False
        try:
            await self.cluster.bind(connection, name)
        except KeyTakenError:
            return False
        except (ClusterError, SocketyError) as error:
            logger.warning("could not rename to %s: %s", name, error)
            return False
        return True

    def left(self, connection: Connection) -> None:
        timer = self._waiting.pop(connection, None)
        if timer is not None:
            timer.cancel()
        self._catching.pop(connection, None)
        self._last_sent.pop(connection, None)

    def _on_presence(self, key: str, server: str | None) -> None:
        chat = self._chat
        if chat is None:
            return
        if server is None:  # gone (left, or its server died): so is its typing line
            for (origin, author), relay in list(self._remote_typing.items()):
                if author == key:
                    relay.end()
                    del self._remote_typing[origin, author]
        chat.users_changed()

    # -- messages -------------------------------------------------------------------------------

    async def say(self, author: str, content: str, date: str) -> int:
        """Appends a message to the history; ACCEPT once NATS acknowledged it."""
        record = msgpack.packb({"date": date, "author": author, "content": content})
        try:
            await self.history.append(record)
        except ClusterError as error:
            logger.warning("a message from %s was not stored: %s", author, error)
            return FastReply.INTERNAL_ERROR
        return FastReply.ACCEPT

    async def _replay(self, connection: Connection, *, after: int, count: int) -> None:
        try:
            records = await self.history.read(count, after=after)
        except (ClusterError, SocketyError, OSError) as error:
            logger.warning("could not read the history: %s", error)
            records = []
        except Exception:  # nats-py's own errors
            logger.exception("could not read the history")
            records = []
        for sequence, data in records:
            self._send_record(connection, sequence, data)
        # What arrived live meanwhile (no await from here: nothing more is buffered).
        for sequence, data in self._catching.pop(connection, ()):
            self._send_record(connection, sequence, data)

    def _on_record(self, sequence: int, data: bytes) -> None:
        chat = self._chat
        if chat is None:
            return
        for connection in chat.members:
            waiting = self._catching.get(connection)
            if waiting is not None:
                waiting.append((sequence, data))
            else:
                self._send_record(connection, sequence, data)

    def _send_record(self, connection: Connection, sequence: int, data: bytes) -> None:
        if sequence <= self._last_sent.get(connection, 0) or connection.closed:
            return  # sent already (a replay and the live feed overlap): never twice
        try:
            record = msgpack.unpackb(data)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        self._last_sent[connection] = sequence
        with contextlib.suppress(SocketyError):
            connection.send_nowait(p.CHAT({**record, "id": sequence}))

    # -- system notices -------------------------------------------------------------------------

    def system(self, content: str, date: str) -> None:
        """A notice from this server, for the others' members too."""
        self._publish("system", {"date": date, "content": content})

    def _on_system(self, data: bytes, origin: str) -> None:
        notice = _unpack(data)
        if self._chat is not None and isinstance(notice, dict):
            self._chat.local_notice(notice)

    def _publish(self, topic: str, value: Any) -> None:
        try:
            self.cluster.publish(topic, msgpack.packb(value))
        except ClusterError as error:
            logger.debug("not published on %s: %s", topic, error)

    # -- typing ---------------------------------------------------------------------------------

    def typed(self, author: str, text: str) -> None:
        self._publish("typing", [author, text, False])

    def typing_ended(self, author: str) -> None:
        self._publish("typing", [author, "", True])

    def _on_typing(self, data: bytes, origin: str) -> None:
        value = _unpack(data)
        chat = self._chat
        if chat is None or not (isinstance(value, list) and len(value) == 3):
            return
        author, text, ended = value
        if not isinstance(author, str) or not isinstance(text, str):
            return
        relay = self._remote_typing.get((origin, author))
        if ended:
            if relay is not None:
                relay.end()
                del self._remote_typing[origin, author]
            return
        if relay is None:
            relay = self._remote_typing[origin, author] = chat.remote_typing(author)
        relay.update(p.clean_text(text))

    # -- files ----------------------------------------------------------------------------------

    def share(self, meta: dict[str, Any]) -> FileShare:
        return FileShare(self, meta)

    async def ensure_files(self) -> None:
        if self._files_ready:
            return
        config = StreamConfig(
            name=self.files_stream,
            subjects=[f"{self.files_subject}.>"],
            max_bytes=self._max_file_bytes,
            max_age=self._file_retention,
            max_msg_size=FILE_PIECE + 1024,  # a record, and the headers js.publish adds
            discard=DiscardPolicy.NEW,  # full: new uploads fail, files on their way stay whole
            storage=StorageType.FILE,
        )
        js = self.cluster.jetstream
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)
        self._files_ready = True

    def _on_file(self, data: bytes, origin: str) -> None:
        offer = _unpack(data)
        chat = self._chat
        if chat is None or not isinstance(offer, dict):
            return
        file_id, meta = offer.get("id"), offer.get("meta")
        if not isinstance(file_id, str) or not isinstance(meta, dict):
            return
        if not (isinstance(meta.get("name"), str) and isinstance(meta.get("size"), int)):
            return
        sinks = chat.file_sinks(meta, but=None)
        if sinks:
            self._spawn(self._receive_file(file_id, sinks))

    async def _receive_file(self, file_id: str, sinks: list[Any]) -> None:
        """Fetches a file's records a few at a time and feeds this server's sinks: memory per
        file is one batch plus the sinks' own bounds, whatever the file's size."""
        await self.ensure_files()
        subject = f"{self.files_subject}.{file_id}"
        ended = False
        try:
            sub = await self.cluster.jetstream.pull_subscribe(
                subject,
                stream=self.files_stream,
                config=ConsumerConfig(
                    filter_subject=subject,
                    deliver_policy=DeliverPolicy.ALL,
                    inactive_threshold=60.0,
                ),
            )
            try:
                while not ended:
                    try:
                        records = await sub.fetch(FILE_BATCH, timeout=30)
                    except nats.errors.TimeoutError:
                        break  # the sender stalled for 30 s: give up
                    for record in records:
                        await record.ack()
                        kind, piece = record.data[:1], record.data[1:]
                        if kind == b"d":
                            for sink in sinks:
                                await sink.put(piece)
                        else:
                            ended = kind == b"e"
                            break
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        except Exception as error:
            logger.warning("file %s could not be received: %s", file_id, error)
        for sink in sinks:
            sink.finish() if ended else sink.abort()

    def member_joined(self, connection: Connection) -> None:
        """A new local member sees the other servers' typists too."""
        for relay in self._remote_typing.values():
            relay.add(connection)


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data)
    except ValueError:
        return None


class FileShare:
    """One file leaving this server for the others: chunks appended to the files stream (each
    acknowledged, so a slow NATS slows the upload instead of filling memory), then an end or
    abort record. The offer goes first, on the ``file`` topic."""

    def __init__(self, room: ClusterRoom, meta: dict[str, Any]) -> None:
        self.room = room
        self.meta = meta
        room._files_made += 1
        self.id = f"{room.cluster.id}-{room._files_made}"
        self.subject = f"{room.files_subject}.{self.id}"

    async def start(self) -> None:
        await self.room.ensure_files()
        self.room._publish("file", {"id": self.id, "meta": self.meta})

    async def _append(self, record: bytes) -> None:
        try:
            await self.room.cluster.jetstream.publish(
                self.subject, record, stream=self.room.files_stream, timeout=10
            )
        except Exception as error:  # nats-py's errors: the stream is full, NATS is away, ...
            logger.warning("file %s: a record was not stored: %r", self.id, error)
            raise ClusterError(f"the file could not be relayed: {error}") from error

    async def put(self, chunk: bytes) -> None:
        for start in range(0, len(chunk), FILE_PIECE):
            await self._append(b"d" + chunk[start : start + FILE_PIECE])

    async def finish(self) -> None:
        with contextlib.suppress(ClusterError):
            await self._append(b"e")

    async def abort(self) -> None:
        with contextlib.suppress(ClusterError):
            await self._append(b"a")
