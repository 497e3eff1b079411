"""The chat server: a name registry (the reference's rules), broadcasts, private messages, and
relays for the live typing streams and offered files. No UI: ``sockety-chat serve`` and the
embedded server of the app both run this.

The seam (where a cluster layer plugs in): all the room's state and every fan-out is in
:class:`Room`; :class:`ChatServer` only decodes actions and asks the room.

- ``Room.join(connection)`` / ``Room.leave(member, reason)`` / ``Room.rename(member, name)``:
  the users list, and the one join line, leave line or rename line each is worth.
- ``Room.publish(draft, payload, to=..., but=..., key=...)``: the only place message ids are
  assigned (``payload["id"]``, one sequence for the room); ``key`` (the sender's own id for the
  message) makes a resend idempotent: a key seen before publishes nothing and returns the id it
  got the first time.
- ``Room.deliver(member, outgoing)``: sends a message to a member, at once while its socket
  takes what it is given, else onto its **bounded** outbox. A member's pump waits for the
  socket, then writes the outbox and the typing lines (coalesced: only the newest line of each
  typist is written); a member whose outbox fills up, or whose socket takes nothing for
  ``stall`` seconds while messages wait, is disconnected with that reason. Nobody else ever
  waits for it.
- A room across servers (``sockety.chat._cluster.ClusterRoom``) also uses ``cluster_link``,
  ``starting``/``started``/``stopped``, ``say`` (room-wide messages), ``rename_to`` and
  ``since``: in one process they publish, rename and do nothing.
- ``Room.whisper(member, to, content, key=...)``: a private message to the member named ``to``
  (and its echo to the sender); BadRequest when nobody has that name.
- ``await Room.offer(member, name, size)``: registers a file its owner offers (``#N``, numbered
  for the room; :class:`OfferError` when it cannot be); ``await Room.find_offer(number)``: the
  offer a ``get`` asks for, if still offered; ``Room.ask_piece(offer, offset, size,
  timeout=...)`` asks its owner for one piece at once (the coroutine gives it). ``ChatServer``
  relays a file to each member who asks (``get``) by asking the owner for it piece by piece,
  ``Room.pieces_ahead`` pieces in flight at most (``Room.relays`` counts them), only as fast as
  that receiver takes it (so one slow receiver holds nothing but its own copy, at most
  ``pieces_ahead`` pieces, and a receiver stalled for ``stall`` seconds loses only its own
  transfer).

Chat messages never wait behind file data: they are separate exchanges, and the connection
writes small messages between the packets of large content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl as ssl_module
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from sockety.core import SocketyError
from sockety.core.aio import Draft, Outgoing
from sockety.server import (
    Connection,
    FastReply,
    FileTransfer,
    Message,
    OutgoingStream,
    Request,
    Response,
    Router,
    Server,
    Transfer,
    serve,
)

from . import _protocol as p

__all__ = ["ChatServer", "Member", "Offer", "OfferError", "PieceError", "RelayStats", "Room"]

logger = logging.getLogger("sockety.chat.server")

#: Pieces of a file asked of its owner ahead of what its receiver took: at most this many
#: times ``PIECE_SIZE`` (1 MiB) is held per receiver, enough to keep a fast one busy.
PIECES_AHEAD = 4


@dataclass
class RelayStats:
    """What the room's file relays hold and did: pieces asked and not yet handed to their
    receiver (``in_flight``, and the most at once: ``peak_in_flight``), pieces and bytes
    relayed in all."""

    in_flight: int = 0
    peak_in_flight: int = 0
    pieces: int = 0
    bytes: int = 0


@dataclass(eq=False)
class Offer:
    """A file a member offers: the room numbers it, the owner serves it piece by piece."""

    id: int
    owner: Member
    name: str
    size: int
    date: str


class _TypingRelay:
    """One person's live line, shown to everyone else (each member's pump writes it)."""

    def __init__(self, source: Member) -> None:
        self.source = source
        self.author = source.name
        self.text = ""
        self.ended = False


class Member:
    """One connection in the room: its name and its bounded outbox."""

    def __init__(
        self, room: Room, connection: Connection, name: str, *, max_queued: int, stall: float
    ) -> None:
        self.room = room
        self.connection = connection
        self.name = name
        self.announced = False  # the room was told it joined (see Room.join)
        self.left = False
        self._max_queued = max_queued
        self._stall = stall
        self._outbox: deque[Outgoing] = deque()
        self._dirty: dict[_TypingRelay, None] = {}  # typing lines to write, in order
        self._writers: dict[_TypingRelay, tuple[OutgoingStream, str]] = {}  # (stream, author)
        self._wake = asyncio.Event()
        self._draining = False  # the pump waits for the socket: deliveries queue meanwhile
        self._pump = asyncio.get_running_loop().create_task(self._run())

    def __repr__(self) -> str:
        return f"<Member {self.name}>"

    @property
    def queued(self) -> int:
        return len(self._outbox)

    def deliver(self, outgoing: Outgoing) -> bool:
        """Sends a message to this member: at once while its socket takes what it is given,
        else onto its outbox. False (and the member is dropped) when the outbox is full: it
        stopped reading."""
        if self.left:
            return False
        if self._draining or self._outbox:
            if len(self._outbox) >= self._max_queued:
                self.room.kick(self, f"not reading ({len(self._outbox)} messages waiting)")
                return False
            self._outbox.append(outgoing)
        else:
            try:
                self.connection.send_nowait(outgoing)
            except SocketyError:
                return False  # closing: on_disconnect takes the member out
        self._wake.set()  # the pump checks that the socket keeps up
        return True

    def typing_changed(self, relay: _TypingRelay) -> None:
        if not self.left and relay.source is not self:
            self._dirty[relay] = None
            self._wake.set()

    def stop(self) -> None:
        """The pump ends by itself (cancelling it in drain() would hurt the connection's other
        waiters, see _drain_within): at once if idle, else when the connection closes."""
        self.left = True
        self._outbox.clear()
        self._dirty.clear()
        self._wake.set()

    async def _run(self) -> None:
        connection = self.connection
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self.left:
                    return
                while self._outbox:
                    connection.send_nowait(self._outbox.popleft())
                dirty, self._dirty = self._dirty, {}
                for relay in dirty:
                    self._write_typing(relay)
                self._draining = True  # (only while drain() actually waits)
                try:
                    if not await _drain_within(connection, self._stall):
                        self.room.kick(self, f"not reading for {self._stall:g} s")
                        return
                finally:
                    self._draining = False
        except SocketyError:
            pass  # the connection closed: on_disconnect takes the member out

    def _write_typing(self, relay: _TypingRelay) -> None:
        current = self._writers.get(relay)
        if current is not None and (relay.ended or current[1] != relay.author):
            # Ended, or renamed: receivers know a typist by the stream's author, start over.
            del self._writers[relay]
            with contextlib.suppress(SocketyError):
                current[0].end()
            current = None
        if relay.ended or (current is None and not relay.text):
            return
        if current is None:
            transfer = self.connection.send_nowait(p.TYPING_DOWN({"author": relay.author}))
            assert transfer.stream is not None
            current = self._writers[relay] = (transfer.stream, relay.author)
        current[0].write(p.encode_typing(relay.text))


class Room:
    """Who is here, what they say, and who gets what (see the module's docstring)."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = p.iso_now,
        anon_name: Callable[[], str] | None = None,
        # Messages waiting for one member before it is dropped as not reading: a burst of a
        # few hundred lines fits, a member stopped for good costs at most this much memory.
        max_queued: int = 5000,
        # A member whose socket takes nothing for this long, while messages wait, is dropped.
        stall: float = 30.0,
        # A newcomer's join line waits this long for its first rename, so that the room sees
        # one line ("alice joined") instead of "anon_… joined" followed by a rename.
        join_grace: float = 2.0,
        # Client message ids remembered for idempotent resends.
        remembered_keys: int = 10_000,
    ) -> None:
        self._clock = clock
        self._anon_name = anon_name or (lambda: f"anon_{secrets.token_hex(4)}")
        self._max_queued = max_queued
        self._stall = stall
        self._join_grace = join_grace
        self._remembered = remembered_keys
        self.members: dict[Connection, Member] = {}  # in the order people joined
        self.offers: dict[int, Offer] = {}
        self._typing: dict[Member, _TypingRelay] = {}
        self._keys: OrderedDict[str, int] = OrderedDict()
        self._next_id = 0
        self._next_offer = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Pieces one relay (one receiver's copy of a file) asks ahead: its memory bound.
        self.pieces_ahead = PIECES_AHEAD
        self.relays = RelayStats()

    # -- people ----------------------------------------------------------------------------------

    def now(self) -> str:
        return p.iso(self._clock())

    @property
    def names(self) -> list[str]:
        return [member.name for member in self.members.values()]

    def member(self, connection: Connection) -> Member | None:
        return self.members.get(connection)

    def find(self, name: str) -> Member | None:
        folded = name.casefold()
        return next((m for m in self.members.values() if m.name.casefold() == folded), None)

    def taken(self, name: str, by: Member | None = None) -> bool:
        found = self.find(name)
        return found is not None and found is not by

    def join(self, connection: Connection) -> Member:
        name = self._anon_name()
        while self.taken(name):
            name = self._anon_name()
        member = Member(self, connection, name, max_queued=self._max_queued, stall=self._stall)
        self.members[connection] = member
        member.deliver(p.LOGIN(name))
        self._users()
        for relay in self._typing.values():
            member.typing_changed(relay)
        loop = asyncio.get_running_loop()
        loop.call_later(self._join_grace, self._announce, member)
        return member

    def _announce(self, member: Member) -> None:
        if not member.announced and not member.left:
            member.announced = True
            self.system(f"{member.name} joined", but=member)

    def rename(self, member: Member, name: str) -> None:
        previous, member.name = member.name, name
        if not member.announced:
            self._announce(member)
        elif previous != name:
            self.system(f"{previous} is now known as {name}")
        self._users()
        relay = self._typing.get(member)
        if relay is not None:
            relay.author = name
            self._typing_changed(relay)

    def leave(self, member: Member, reason: str = "") -> None:
        if member.left:
            return
        self.members.pop(member.connection, None)
        self.end_typing(member)
        member.stop()
        for offer in [o for o in self.offers.values() if o.owner is member]:
            del self.offers[offer.id]
        if member.announced:
            self.system(f"{member.name} left" + (f" ({reason})" if reason else ""))
        self._users()

    def kick(self, member: Member, reason: str) -> None:
        """Drops a member that cannot keep up, saying why (to the log and to the room)."""
        if member.left:
            return
        logger.warning("dropping %s: %s", member.name, reason)
        self.leave(member, f"disconnected: {reason}")
        task = asyncio.get_running_loop().create_task(_close(member.connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for relay in list(self._typing.values()):
            self.end_typing(relay.source)
        for member in list(self.members.values()):
            member.stop()
        for task in list(self._tasks):
            task.cancel()

    # -- fan-out ---------------------------------------------------------------------------------

    def publish(
        self,
        draft: Draft,
        payload: dict[str, Any],
        *,
        to: list[Member] | None = None,
        but: Member | None = None,
        key: str | None = None,
    ) -> int:
        """Gives ``payload`` the room's next message id and delivers it to ``to`` (everyone by
        default) except ``but``. Returns the id; a ``key`` published before returns its id and
        delivers nothing (a resend)."""
        if key is not None:
            known = self._keys.get(key)
            if known is not None:
                return known
        self._next_id += 1
        if key is not None:
            self._keys[key] = self._next_id
            if len(self._keys) > self._remembered:
                self._keys.popitem(last=False)
        outgoing = draft({**payload, "id": self._next_id})
        for member in list(self.members.values()) if to is None else to:
            if member is not but:
                self.deliver(member, outgoing)
        return self._next_id

    def deliver(self, member: Member, outgoing: Outgoing) -> bool:
        return member.deliver(outgoing)

    def system(self, content: str, *, but: Member | None = None) -> None:
        logger.info("%s", content)
        self.publish(p.SYSTEM, {"date": self.now(), "content": content}, but=but)

    def _users(self) -> None:
        outgoing = p.USERS(self.names)
        for member in list(self.members.values()):
            self.deliver(member, outgoing)

    # -- typing ----------------------------------------------------------------------------------

    def start_typing(self, member: Member) -> _TypingRelay:
        self.end_typing(member)
        relay = self._typing[member] = _TypingRelay(member)
        return relay

    def typed(self, relay: _TypingRelay, text: str) -> None:
        if not relay.ended:
            relay.text = text
            self._typing_changed(relay)

    def end_typing(self, member: Member, relay: _TypingRelay | None = None) -> None:
        """Ends ``member``'s live line (only if it is still ``relay``, when given)."""
        current = self._typing.get(member)
        if current is None or (relay is not None and current is not relay):
            return
        del self._typing[member]
        current.ended = True
        self._typing_changed(current)

    def _typing_changed(self, relay: _TypingRelay) -> None:
        for member in list(self.members.values()):
            member.typing_changed(relay)

    # -- a cluster layer's hooks (see sockety.chat._cluster) -----------------------------------

    #: What ``serve(cluster=...)`` gets: None for a room in one process.
    cluster_link: Any = None

    async def starting(self) -> None:
        """The chat server is about to listen: what the room needs before anyone joins (a
        room across servers starts its cluster link here, ``serve`` only gives it the server)."""

    async def started(self) -> None:
        """The chat's server listens (and its cluster link, if any, is up)."""

    async def stopped(self) -> None:
        """The chat server is closing."""

    def rename_to(self, member: Member, name: str) -> Any:
        """A member asks for a name: ACCEPT (or an awaitable of the answer)."""
        self.rename(member, name)
        return FastReply.ACCEPT

    def say(self, payload: dict[str, Any], *, key: str | None) -> Any:
        """A room-wide chat message: ACCEPT (or an awaitable of the answer)."""
        self.publish(p.CHAT, payload, key=key)
        return FastReply.ACCEPT

    def since(self, member: Member, after: int) -> None:
        """The client saw the room's messages up to sequence ``after`` (clustered rooms)."""

    def whisper(self, member: Member, to: str, content: str, *, key: str | None) -> Any:
        """A private message: ACCEPT (or an awaitable of the answer), BAD_REQUEST when nobody
        is called ``to``."""
        target = self.find(to)
        if target is None:
            return FastReply.BAD_REQUEST
        payload = {"date": self.now(), "author": member.name, "to": target.name}
        payload["content"] = content
        recipients = [target] if target is member else [target, member]
        self.publish(p.PRIVATE_DOWN, payload, to=recipients, key=key)
        return FastReply.ACCEPT

    # -- files -----------------------------------------------------------------------------------

    async def offer(self, member: Member, name: str, size: int) -> Offer:
        """Numbers and registers ``member``'s offer (raises :class:`OfferError` if it cannot)."""
        self._next_offer += 1
        offer = Offer(self._next_offer, member, name, size, self.now())
        self.offers[offer.id] = offer
        return offer

    async def find_offer(self, number: int) -> Offer | None:
        """The offer ``#number``, if it is still offered."""
        return self.offers.get(number)

    def ask_piece(
        self, offer: Offer, offset: int, size: int, *, timeout: float
    ) -> Coroutine[Any, Any, bytes]:
        """Asks ``offer``'s owner for ``size`` bytes at ``offset`` now (several may be asked
        ahead); the coroutine gives them, or raises :class:`PieceError` saying why not."""
        try:
            request = offer.owner.connection.request(
                p.PIECE({"file": offer.id, "offset": offset, "size": size})
            )
        except SocketyError:
            raise PieceError("its owner left") from None
        return _piece_of(request, size, timeout)


class PieceError(Exception):
    """A piece of an offered file could not be had from its owner (the message says why)."""


class OfferError(Exception):
    """A file could not be offered (the message says why)."""


async def _piece_of(request: Request, size: int, timeout: float) -> bytes:
    try:
        reply = await request.response(timeout=timeout)
    except SocketyError:
        raise PieceError("its owner left or stopped answering") from None
    if not isinstance(reply, Response) or len(reply.data) != size:
        raise PieceError("its owner could not read it")
    return bytes(reply.data)


async def _drain_within(connection: Connection, limit: float) -> bool:
    """``connection.drain()`` within ``limit`` seconds; False when it timed out.

    Waiters of a connection share one progress future, so when another waiter on it is
    cancelled (a file transfer aborted) this one sees a CancelledError that nobody asked for:
    waiting goes on then, until the same deadline."""
    task = asyncio.current_task()
    assert task is not None
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                await connection.drain()
            return True
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            if task.cancelling() or connection.closed:
                raise
            await asyncio.sleep(0.01)  # the future stays cancelled until the next write


async def _close(connection: Connection) -> None:
    with contextlib.suppress(SocketyError):
        await connection.close(timeout=1.0)


class ChatServer:
    """A chat server. ``await start()`` (or ``async with``), ``close()`` to stop::

    async with ChatServer() as chat:
        await chat.start("127.0.0.1", 9000)
        await chat.serve_forever()

    ``max_queued``, ``stall`` and ``join_grace`` are the :class:`Room`'s limits.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = p.iso_now,
        max_file_size: int = 1024**3,
        close_timeout: float = 3.0,
        anon_name: Callable[[], str] | None = None,
        max_queued: int = 5000,
        stall: float = 30.0,
        join_grace: float = 2.0,
        # Another room (one across servers: sockety.chat._cluster.ClusterRoom); its own
        # limits then, not the three above.
        room: Room | None = None,
        **options: Any,
    ) -> None:
        self.max_file_size = max_file_size
        self._stall = stall
        self.room = room or Room(
            clock=clock,
            anon_name=anon_name,
            max_queued=max_queued,
            stall=stall,
            join_grace=join_grace,
        )
        self._options = {"close_timeout": close_timeout, **options}
        self._server: Server | None = None
        self._router = Router()
        self._router.action("name")(self._on_name)
        self._router.action("broadcast")(self._on_broadcast)
        self._router.action("private")(self._on_private)
        self._router.action("typing")(self._on_typing)
        self._router.action("offer")(self._on_offer)
        self._router.action("get")(self._on_get)
        self._router.action("since")(self._on_since)
        self._router.action("file")(self._reject)  # the old forced share: files are offered now
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
        # The room is ready before anyone can connect (a room across servers that is not yet
        # would lose what it is told meanwhile; with --workers, the kernel gives connections
        # only to servers that listen).
        try:
            await self.room.starting()
            self._server = await serve(
                self._router,
                host,
                port,
                ssl=ssl,
                reuse_port=reuse_port,
                on_connect=self.room.join,
                on_disconnect=self._disconnected,
                cluster=self.room.cluster_link,
                **self._options,
            )
        except BaseException:
            await self.room.stopped()
            if self.room.cluster_link is not None:
                await self.room.cluster_link.close()
            raise
        await self.room.started()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the chat server is not started")
        return self._server.port

    @property
    def names(self) -> list[str]:
        """Everyone's name, in the order they joined."""
        return self.room.names

    @property
    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving

    async def serve_forever(self) -> None:
        if self._server is None:
            raise RuntimeError("the chat server is not started")
        await self._server.serve_forever()

    async def close(self) -> None:
        """Ends the typing relays at once, then closes gracefully (Go Away)."""
        for member in list(self.room.members.values()):
            self.room.end_typing(member)
        await self.room.stopped()
        if self._server is not None:
            await self._server.close()
        self.room.close()
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

    def _disconnected(self, connection: Connection) -> None:
        member = self.room.member(connection)
        if member is not None:
            self.room.leave(member)

    def _reject(self, message: Message) -> int:
        """BadRequest; content nobody will read is dropped as it arrives."""
        if message.stream is not None or message.files:
            message.discard()
        return FastReply.BAD_REQUEST

    def _plain(self, message: Message) -> tuple[Member, Any] | None:
        """The sender and the decoded data of a message that must carry only data."""
        member = self.room.member(message.connection)
        if member is None or message.stream is not None or message.files:
            return None
        try:
            return member, message.msgpack()
        except ValueError:
            return None

    # -- actions ---------------------------------------------------------------------------------

    def _on_name(self, message: Message) -> Any:
        plain = self._plain(message)
        if plain is None:
            return self._reject(message)
        member, name = plain
        if not p.is_valid_name(name) or self.room.taken(name, member):
            return FastReply.BAD_REQUEST
        if member.name != name or not member.announced:
            return self.room.rename_to(member, name)
        return FastReply.ACCEPT

    def _on_broadcast(self, message: Message) -> Any:
        """The reference's string, or ``{id, content, me}`` (this package's client: ``id`` makes
        a resend idempotent, ``me`` marks a ``/me`` action)."""
        plain = self._plain(message)
        if plain is None:
            return self._reject(message)
        member, data = plain
        key, me = None, False
        if isinstance(data, dict):
            key, me, data = data.get("id"), data.get("me") is True, data.get("content")
            if key is not None and not (isinstance(key, str) and 0 < len(key) <= 100):
                return FastReply.BAD_REQUEST
        if not p.is_valid_message(data):
            return FastReply.BAD_REQUEST
        payload = {"date": self.room.now(), "author": member.name, "content": data}
        if me:
            payload["me"] = True
        return self.room.say(payload, key=f"{member.name}/{key}" if key else None)

    def _on_since(self, message: Message) -> int:
        plain = self._plain(message)
        if plain is None or not isinstance(plain[1], int) or plain[1] < 0:
            return self._reject(message)
        self.room.since(*plain)
        return FastReply.ACCEPT

    def _on_private(self, message: Message) -> Any:
        plain = self._plain(message)
        if plain is None or not isinstance(plain[1], dict):
            return self._reject(message)
        member, data = plain
        key, to, content = data.get("id"), data.get("to"), data.get("content")
        if not isinstance(to, str) or not p.is_valid_message(content):
            return FastReply.BAD_REQUEST
        key = f"{member.name}/{key}" if isinstance(key, str) and key else None
        return self.room.whisper(member, to, content, key=key)

    async def _on_typing(self, message: Message) -> int:
        member = self.room.member(message.connection)
        if message.stream is None or message.files or member is None:
            return self._reject(message)
        relay = self.room.start_typing(member)
        decoder = p.TypingDecoder()
        try:
            async for chunk in message.stream:
                for text in decoder.feed(chunk):
                    self.room.typed(relay, text)
        except (SocketyError, ValueError):
            pass  # the typist went away, or sent garbage: their line disappears
        finally:
            self.room.end_typing(member, relay)
        return FastReply.ACCEPT

    async def _on_offer(self, message: Message) -> int | None:
        """``{name, size}``: answered with ``{id}``, and everyone else is told of it."""
        plain = self._plain(message)
        if plain is None or not isinstance(plain[1], dict):
            return self._reject(message)
        member, data = plain
        size = data.get("size")
        if not isinstance(size, int) or not 0 <= size <= self.max_file_size:
            return FastReply.BAD_REQUEST
        name = p.clean_file_name(data.get("name"))
        try:
            offer = await self.room.offer(member, name, size)
        except OfferError as error:
            logger.warning("%s could not offer %s: %s", member.name, name, error)
            return FastReply.INTERNAL_ERROR
        logger.info("%s offers #%d %s (%d bytes)", member.name, offer.id, name, size)
        message.respond(p.OFFERED({"id": offer.id}))
        meta = {"file": offer.id, "date": offer.date, "author": member.name}
        self.room.publish(p.OFFER_DOWN, {**meta, "name": name, "size": size}, but=member)
        return None

    async def _on_get(self, message: Message) -> int:
        """``{file}``: the offered file is sent as a ``file`` message with that one file;
        answered once it was all handed to the receiver's connection."""
        plain = self._plain(message)
        if plain is None or not isinstance(plain[1], dict):
            return self._reject(message)
        member, data = plain
        number = data.get("file")
        offer = await self.room.find_offer(number) if isinstance(number, int) else None
        if offer is None or offer.owner is member or member.left:
            return FastReply.BAD_REQUEST
        relay = _FileRelay(offer, self.room, stall=self._stall)
        meta = {"file": offer.id, "date": offer.date, "author": offer.owner.name}
        try:
            transfer = member.connection.send_nowait(
                p.FILE_DOWN(
                    {**meta, "name": offer.name, "size": offer.size},
                    files=[FileTransfer.from_iterator(relay.pieces(), offer.name, offer.size)],
                )
            )
        except SocketyError:
            return FastReply.INTERNAL_ERROR
        failure = await relay.watch(transfer)
        if failure is _STALLED:
            # Not transfer.abort(): while the transfer waits for the socket, that cancels the
            # connection's shared progress future (see _drain_within). The receiver is gone
            # for all purposes: it is dropped, which ends the transfer too.
            self.room.kick(
                member, f"took nothing of #{offer.id} {offer.name} for {self._stall:g} s"
            )
            return FastReply.INTERNAL_ERROR
        if failure:
            logger.warning("#%d %s to %s stopped: %s", offer.id, offer.name, member.name, failure)
            self.room.publish(
                p.SYSTEM,
                {"date": self.room.now(), "content": f"#{offer.id} {offer.name}: {failure}"},
                to=[member],
            )
            return FastReply.INTERNAL_ERROR
        return FastReply.ACCEPT


_STALLED = "the receiver took nothing"


@dataclass(eq=False)
class _FileRelay:
    """One receiver's copy of an offered file, asked of the owner piece by piece as the
    receiver's connection takes it (the core pulls ``pieces()`` only when it can write)."""

    offer: Offer
    room: Room  # its ask_piece, pieces_ahead and relays
    stall: float
    failure: str = ""
    last: float = field(default_factory=lambda: asyncio.get_running_loop().time())

    async def pieces(self) -> AsyncIterator[bytes]:
        """The file's pieces in order, ``room.pieces_ahead`` asked at once (each one in flight
        as soon as it is asked: over a cluster, one round trip per window, not per piece)."""
        offer, room, stats = self.offer, self.room, self.room.relays
        window = max(1, room.pieces_ahead)
        asked: deque[asyncio.Future[bytes]] = deque()
        offset = 0
        loop = asyncio.get_running_loop()
        try:
            while offset < offer.size or asked:
                while len(asked) < window and offset < offer.size:
                    size = min(p.PIECE_SIZE, offer.size - offset)
                    asked.append(
                        asyncio.ensure_future(
                            room.ask_piece(offer, offset, size, timeout=self.stall)
                        )
                    )
                    offset += size
                    stats.in_flight += 1
                    stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
                piece = await asked[0]
                asked.popleft()
                stats.in_flight -= 1
                stats.pieces += 1
                stats.bytes += len(piece)
                self.last = loop.time()
                yield piece
        except PieceError as error:
            self.failure = str(error)
            raise
        finally:
            for waiting in asked:  # an aborted transfer: what was asked ahead is dropped
                waiting.cancel()
                if waiting.done() and not waiting.cancelled():
                    waiting.exception()  # retrieved: nobody waits for it any more
            stats.in_flight -= len(asked)

    async def watch(self, transfer: Transfer) -> str:
        """Waits for the end of the transfer, or until the receiver took nothing for ``stall``
        seconds. Returns why it failed ('' when it did not)."""
        loop = asyncio.get_running_loop()
        sent = asyncio.ensure_future(transfer.sent())
        # Never cancelled: it would cancel the connection's shared progress future under the
        # connection's other waiters (see _drain_within); it ends with the transfer.
        sent.add_done_callback(lambda done: done.cancelled() or done.exception())
        while True:
            left = self.last + self.stall - loop.time()
            done, _ = await asyncio.wait({sent}, timeout=max(left, 0.05))
            if done:
                if sent.cancelled() or sent.exception() is not None:
                    return self.failure or "the transfer failed"
                return ""
            if loop.time() - self.last >= self.stall:
                return _STALLED
