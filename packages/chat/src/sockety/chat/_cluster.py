"""One chat room across several ``sockety-chat serve --cluster`` processes, through NATS: a
:class:`~sockety.chat._server.Room` whose state is shared with the other servers.

- Room-wide messages go into a JetStream history (``sockety.cluster.History``): the author's
  ``broadcast`` is accepted once NATS acknowledged it (the client's message id is the JetStream
  message id, so a resend, even to another server, is stored once), and every server (the
  author's too) delivers what the history feeds it, so all see the same order. The stream
  sequence is the message's ``seq`` (and its ``id``). A joiner's client says the last ``seq`` it
  saw (``since``, 0 when new) and gets what followed, or the last ``history`` messages: nothing
  JetStream holds is missed, nothing repeats.
- Names are presence keys (``Cluster.bind``): one users list; the name of someone whose server
  died is released within the TTL, or at once when they come back (the ping take-over).
- System notices and live typing cross as NATS topics (ephemeral, as on one server).
- A private message to someone on another server is a cluster request to their name, handled
  there (``private``): it is confirmed to its sender once it was delivered, and a name nobody
  holds is refused as on one server.
- File offers go into a second JetStream stream (``offers``): its sequence is the offer's
  ``#N``, the same on every server, and every server tells its members of the others' offers
  as it follows the stream. An offer belongs to the server its owner is on (not to the owner's
  name, so a rename keeps it): ``/get #N`` of another server's offer first asks that server
  whether it is still offered and by whom (``Cluster.ask(server, "offer")``: a name that is
  gone, a server that is gone, are "no longer offered"), then pulls the file from it
  ``pieces_ahead`` pieces at a time (``Cluster.ask(server, "piece")``, answered there by
  asking the owner's connection, as on one server): one round trip per window, not per piece.

Imported only with ``--cluster``: sockety-chat does not depend on sockety-cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgpack

from sockety.cluster import Cluster, ClusterError, History, KeyTakenError, NotConnectedError
from sockety.core import SocketyError
from sockety.server import Connection, FastReply

from . import _protocol as p
from ._server import Member, Offer, OfferError, PieceError, RelayStats, Room, _TypingRelay

__all__ = ["ClusterRoom"]

logger = logging.getLogger("sockety.chat.cluster")

#: A ``since`` gets at most this many messages (the history's retention bounds it anyway).
MAX_CATCH_UP = 10_000
#: Pieces a relay of another server's file asks ahead (each a NATS round trip): 2 MiB.
REMOTE_PIECES_AHEAD = 8
#: Pieces of our members' files read for other servers at once (8 MiB, half the link's
#: outgoing queue, which their replies go through); more asks wait their turn.
MAX_SERVED_PIECES = 32


class _Typist:
    """Someone typing on another server: all a typing relay needs of its source."""

    def __init__(self, name: str) -> None:
        self.name = name


@dataclass(eq=False)
class _RemoteOffer(Offer):
    """Another server's offer, found still offered there (``owner``: its current name)."""

    server: str = ""


@dataclass(frozen=True)
class _Remote:
    """Another server's offer, as its record in the offers stream says."""

    server: str
    owner: str  # the name it was offered under (the owning server knows the current one)
    name: str
    size: int
    date: str


class ClusterRoom(Room):
    """``ChatServer(room=ClusterRoom("nats://127.0.0.1:4222"))``."""

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        history: int = 100,
        retention: int = 10_000,
        prefix: str = "sockety_chat",
        # How long a joiner's history waits for its client's `since` (then: the last N, for
        # clients that never send one, like the reference's).
        since_wait: float = 1.0,
        name: str | None = None,
        # JetStream copies of the history, the offers and the presence (3 in a NATS cluster
        # of three survives one node's loss).
        replicas: int = 1,
        **room_options: Any,
    ) -> None:
        super().__init__(**room_options)
        self.cluster = Cluster(servers, prefix=prefix, name=name, replicas=replicas)
        self.cluster_link = self.cluster
        self.history_size = history
        self.since_wait = since_wait
        self.history = History(self.cluster, "messages", max_records=max(retention, history))
        # Members still being sent their history: live messages wait here, in order.
        self._catching: dict[Member, list[tuple[int, bytes]]] = {}
        self._last_sent: dict[Member, int] = {}
        self._waiting: dict[Member, asyncio.TimerHandle] = {}
        self._remote_typing: dict[tuple[str, str], _TypingRelay] = {}
        self._jobs: set[asyncio.Task[Any]] = set()
        self.offer_log = History(self.cluster, "offers", max_records=retention)
        self._retention = retention
        self._remote_offers: OrderedDict[int, _Remote] = OrderedDict()  # #N -> its server's
        self.pieces_ahead = REMOTE_PIECES_AHEAD
        #: Pieces of our members' offers asked by other servers' relays (``relays``: by ours).
        self.served = RelayStats()
        self._serving = asyncio.Semaphore(MAX_SERVED_PIECES)

    # -- lifecycle ------------------------------------------------------------------------------

    async def starting(self) -> None:
        """The link is up and everything the room listens to is set up before the chat server
        listens: nobody can join a room that would miss what it is told."""
        await self.cluster.start()
        self.cluster.on_presence = self._on_presence
        self.cluster.handle("private")(self._on_whisper)
        self.cluster.answer("offer")(self._on_offer_asked)
        self.cluster.answer("piece")(self._on_piece_asked)
        await self.history.start()
        await self.offer_log.start()
        await self.history.follow(self._on_record, after=await self.history.last_sequence())
        await self.offer_log.follow(self._on_offer, after=await self.offer_log.last_sequence())
        await self.cluster.subscribe("system", self._on_system)
        await self.cluster.subscribe("typing", self._on_typing)
        await self.cluster.subscribe("withdrawn", self._on_withdrawn)

    async def stopped(self) -> None:
        for relay in list(self._remote_typing.values()):
            relay.ended = True
            self._typing_changed(relay)
        self._remote_typing.clear()
        for timer in self._waiting.values():
            timer.cancel()
        for task in list(self._jobs):
            task.cancel()
        await self.history.close()
        await self.offer_log.close()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    # -- people ---------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Everyone in the room: the cluster's presence, and local names not in it yet."""
        everyone = list(self.cluster.presence)
        return everyone + [m.name for m in self.members.values() if m.name not in everyone]

    def join(self, connection: Connection) -> Member:
        member = super().join(connection)
        for relay in self._remote_typing.values():
            member.typing_changed(relay)
        self._catching[member] = []
        self._spawn(self._claim(member, member.name, previous=None))
        self._waiting[member] = asyncio.get_running_loop().call_later(
            self.since_wait, self._start_replay, member, 0
        )
        return member

    def taken(self, name: str, by: Member | None = None) -> bool:
        """Here, or the same name in another case on another server (the same name exactly is
        for the presence bucket to decide: it may be held by a server that died)."""
        if super().taken(name, by):
            return True
        folded = name.casefold()
        return any(
            key != name and key.casefold() == folded and server != self.cluster.id
            for key, server in self.cluster.presence.items()
        )

    def rename_to(self, member: Member, name: str) -> Any:
        if member.name == name:
            return super().rename_to(member, name)
        return self._rename(member, name)

    async def _rename(self, member: Member, name: str) -> int:
        previous = member.name
        try:
            await self.cluster.bind(member.connection, name)
        except KeyTakenError:
            return FastReply.BAD_REQUEST
        except (ClusterError, SocketyError) as error:
            logger.warning("could not publish %s's presence: %s", name, error)
            return FastReply.INTERNAL_ERROR
        if not member.left and member.name == previous:
            self.rename(member, name)
        return FastReply.ACCEPT

    async def _claim(self, member: Member, name: str, *, previous: str | None) -> None:
        try:
            await self.cluster.bind(member.connection, name)
        except (ClusterError, SocketyError) as error:
            logger.warning("could not publish %s's presence: %s", name, error)

    def leave(self, member: Member, reason: str = "") -> None:
        withdrawn = [o.id for o in self.offers.values() if o.owner is member]
        super().leave(member, reason)
        if withdrawn:  # the others forget them now (a get would find them gone anyway)
            self._publish("withdrawn", withdrawn)
        timer = self._waiting.pop(member, None)
        if timer is not None:
            timer.cancel()
        self._catching.pop(member, None)
        self._last_sent.pop(member, None)

    def _on_presence(self, key: str, server: str | None) -> None:
        if server is None:  # gone (left, or its server died): so is its typing line
            for (origin, author), relay in list(self._remote_typing.items()):
                if author == key:
                    relay.ended = True
                    self._typing_changed(relay)
                    del self._remote_typing[origin, author]
        self._users()

    # -- messages -------------------------------------------------------------------------------

    def say(self, payload: dict[str, Any], *, key: str | None) -> Any:
        return self._store(payload, key)

    async def _store(self, payload: dict[str, Any], key: str | None) -> int:
        try:
            await self.history.append(msgpack.packb(payload), msg_id=key)
        except ClusterError as error:
            logger.warning("a message from %s was not stored: %s", payload.get("author"), error)
            return FastReply.INTERNAL_ERROR
        return FastReply.ACCEPT

    def since(self, member: Member, after: int) -> None:
        """Only the first ``since`` counts; later ones are answered by the live feed already."""
        if member in self._waiting:
            self._start_replay(member, after)

    def _start_replay(self, member: Member, after: int) -> None:
        timer = self._waiting.pop(member, None)
        if timer is None:
            return
        timer.cancel()
        count = MAX_CATCH_UP if after > 0 else self.history_size
        self._spawn(self._replay(member, after, count))

    async def _replay(self, member: Member, after: int, count: int) -> None:
        try:
            records = await self.history.read(count, after=after)
        except Exception as error:  # NATS away, or nats-py's own errors: live goes on
            logger.warning("could not read the history: %s", error)
            records = []
        for sequence, data in records:
            self._send_record(member, sequence, data)
        # What arrived live meanwhile (no await from here: nothing more is buffered).
        for sequence, data in self._catching.pop(member, ()):
            self._send_record(member, sequence, data)

    def _on_record(self, sequence: int, data: bytes) -> None:
        for member in list(self.members.values()):
            waiting = self._catching.get(member)
            if waiting is not None:
                waiting.append((sequence, data))
            else:
                self._send_record(member, sequence, data)

    def _send_record(self, member: Member, sequence: int, data: bytes) -> None:
        if sequence <= self._last_sent.get(member, 0) or member.left:
            return  # sent already (a replay and the live feed overlap): never twice
        record = _unpack(data)
        if not isinstance(record, dict):
            return
        self._last_sent[member] = sequence
        self.deliver(member, p.CHAT({**record, "id": sequence, "seq": sequence}))

    # -- system notices -------------------------------------------------------------------------

    def system(self, content: str, *, but: Member | None = None) -> None:
        super().system(content, but=but)
        self._publish("system", {"date": self.now(), "content": content})

    def _on_system(self, data: bytes, origin: str) -> None:
        notice = _unpack(data)
        if isinstance(notice, dict):
            self.publish(p.SYSTEM, notice)

    def _publish(self, topic: str, value: Any) -> None:
        try:
            self.cluster.publish(topic, msgpack.packb(value))
        except ClusterError as error:
            logger.debug("not published on %s: %s", topic, error)

    # -- typing ---------------------------------------------------------------------------------

    def typed(self, relay: _TypingRelay, text: str) -> None:
        super().typed(relay, text)
        if not relay.ended:
            self._publish("typing", [relay.author, text, False])

    def end_typing(self, member: Member, relay: _TypingRelay | None = None) -> None:
        current = self._typing.get(member)
        super().end_typing(member, relay)
        if current is not None and current.ended:
            self._publish("typing", [current.author, "", True])

    def _on_typing(self, data: bytes, origin: str) -> None:
        value = _unpack(data)
        if not (isinstance(value, list) and len(value) == 3):
            return
        author, text, ended = value
        if not isinstance(author, str) or not isinstance(text, str):
            return
        relay = self._remote_typing.get((origin, author))
        if ended:
            if relay is not None:
                relay.ended = True
                self._typing_changed(relay)
                del self._remote_typing[origin, author]
            return
        if relay is None:
            relay = _TypingRelay(cast(Member, _Typist(author)))
            self._remote_typing[origin, author] = relay
        relay.text = p.clean_text(text)
        self._typing_changed(relay)

    # -- private messages -----------------------------------------------------------------------

    def whisper(self, member: Member, to: str, content: str, *, key: str | None) -> Any:
        if self.find(to) is not None:
            return super().whisper(member, to, content, key=key)
        folded = to.casefold()
        name = next((k for k in self.cluster.presence if k.casefold() == folded), None)
        if name is None:
            return FastReply.BAD_REQUEST
        return self._whisper(member, name, content, key)

    async def _whisper(self, member: Member, name: str, content: str, key: str | None) -> int:
        payload = {"date": self.now(), "author": member.name, "to": name, "content": content}
        try:
            reply = await self.cluster.request(name, p.PRIVATE_UP([payload, key]))
        except NotConnectedError:  # gone since the presence said otherwise: unknown, as here
            return FastReply.BAD_REQUEST
        except ClusterError as error:
            logger.warning("a private message to %s was not sent: %s", name, error)
            return FastReply.INTERNAL_ERROR
        if reply.data != b"ok":
            return FastReply.BAD_REQUEST
        if not member.left:
            self.publish(p.PRIVATE_DOWN, payload, to=[member], key=key)
        return FastReply.ACCEPT

    async def _on_whisper(self, connection: Connection, data: bytes) -> bytes:
        """Another server's member writes to one of ours (``connection``, bound to the name)."""
        value = _unpack(data)
        target = self.member(connection)
        if target is None or not (isinstance(value, list) and len(value) == 2):
            return b""
        payload, key = value
        if not (isinstance(payload, dict) and isinstance(key, str | None)):
            return b""
        author, content = payload.get("author"), payload.get("content")
        if not (isinstance(author, str) and p.is_valid_message(content)):
            return b""
        clean = {"date": payload.get("date"), "author": author, "to": target.name}
        self.publish(p.PRIVATE_DOWN, {**clean, "content": content}, to=[target], key=key)
        return b"ok"

    # -- files ----------------------------------------------------------------------------------

    async def offer(self, member: Member, name: str, size: int) -> Offer:
        """Numbered by the offers stream (``#N`` is the same on every server)."""
        date = self.now()
        record = {"server": self.cluster.id, "owner": member.name, "name": name, "size": size}
        try:
            number = await self.offer_log.append(msgpack.packb({**record, "date": date}))
        except ClusterError as error:
            raise OfferError(f"the offers stream did not take it: {error}") from None
        offer = Offer(number, member, name, size, date)
        if member.left:  # gone while NATS numbered it: it is not offered after all
            self._publish("withdrawn", [number])
            raise OfferError(f"{member.name} left")
        self.offers[number] = offer
        return offer

    def _on_offer(self, sequence: int, data: bytes) -> None:
        """The offers stream: another server's offer is announced to our members."""
        remote = _remote_of(_unpack(data))
        if remote is None or remote.server == self.cluster.id:
            return  # ours: announced by the chat server already
        self._remember(sequence, remote)
        meta = {"file": sequence, "date": remote.date, "author": remote.owner}
        self.publish(p.OFFER_DOWN, {**meta, "name": remote.name, "size": remote.size})

    def _remember(self, number: int, remote: _Remote) -> None:
        self._remote_offers[number] = remote
        while len(self._remote_offers) > self._retention:  # bounded like the stream
            self._remote_offers.popitem(last=False)

    def _on_withdrawn(self, data: bytes, origin: str) -> None:
        numbers = _unpack(data)
        if isinstance(numbers, list):
            for number in numbers:
                remote = self._remote_offers.get(number) if isinstance(number, int) else None
                if remote is not None and remote.server == origin:
                    del self._remote_offers[number]

    async def find_offer(self, number: int) -> Offer | None:
        """Ours, or another server's if that server says it is still offered (and by whom:
        the owner may have been renamed since)."""
        if number in self.offers:
            return self.offers[number]
        remote = self._remote_offers.get(number)
        if remote is None:  # offered before we followed the stream, or forgotten since
            try:
                remote = _remote_of(_unpack(await self.offer_log.get(number) or b""))
            except ClusterError as error:
                logger.warning("could not look #%d up: %s", number, error)
                return None
            if remote is None or remote.server == self.cluster.id:
                return None  # not an offer, or ours and gone
        try:
            reply = await self.cluster.ask(
                remote.server, "offer", msgpack.packb(number), timeout=self.cluster.request_timeout
            )
        except ClusterError:  # its server is gone, or NATS is: not offered any more
            reply = b""
        owner = _unpack(reply) if reply else None
        if not isinstance(owner, str):
            self._remote_offers.pop(number, None)
            return None
        self._remember(number, remote)
        owner_now = cast(Member, _Typist(owner))
        return _RemoteOffer(number, owner_now, remote.name, remote.size, remote.date, remote.server)

    async def _on_offer_asked(self, data: bytes, origin: str) -> bytes:
        """Another server asks whether our offer ``#N`` is still offered: its owner's name."""
        number = _unpack(data)
        offer = self.offers.get(number) if isinstance(number, int) else None
        if offer is None or offer.owner.left:
            return b""
        return bytes(msgpack.packb(offer.owner.name))

    def ask_piece(
        self, offer: Offer, offset: int, size: int, *, timeout: float
    ) -> Coroutine[Any, Any, bytes]:
        if not isinstance(offer, _RemoteOffer):
            return super().ask_piece(offer, offset, size, timeout=timeout)
        return self._remote_piece(offer.server, offer.id, offset, size, timeout)

    async def _remote_piece(
        self, server: str, number: int, offset: int, size: int, timeout: float
    ) -> bytes:
        asked = msgpack.packb({"file": number, "offset": offset, "size": size})
        try:
            piece = await self.cluster.ask(server, "piece", asked, timeout=timeout)
        except ClusterError:
            raise PieceError("its owner left or stopped answering") from None
        if len(piece) != size:
            raise PieceError("its owner could not read it")
        return piece

    async def _on_piece_asked(self, data: bytes, origin: str) -> bytes:
        """Another server relays one of our offers: a piece of it, read from its owner as for
        a member here (nothing, which the asker takes as a failure, if it cannot be had)."""
        value = _unpack(data)
        if not isinstance(value, dict):
            return b""
        number, offset, size = value.get("file"), value.get("offset"), value.get("size")
        offer = self.offers.get(number) if isinstance(number, int) else None
        if (
            offer is None
            or not isinstance(offset, int)
            or not isinstance(size, int)
            or not (offset >= 0 and 0 < size <= p.PIECE_SIZE and offset + size <= offer.size)
        ):
            return b""
        served = self.served
        async with self._serving:
            served.in_flight += 1
            served.peak_in_flight = max(served.peak_in_flight, served.in_flight)
            try:
                piece = await super().ask_piece(
                    offer, offset, size, timeout=self.cluster.request_timeout
                )
            except PieceError:
                return b""
            finally:
                served.in_flight -= 1
        served.pieces += 1
        served.bytes += len(piece)
        return piece


def _remote_of(record: Any) -> _Remote | None:
    """An offers stream record, checked."""
    if not isinstance(record, dict):
        return None
    server, owner = record.get("server"), record.get("owner")
    size, date = record.get("size"), record.get("date")
    if not (
        isinstance(server, str)
        and isinstance(owner, str)
        and isinstance(size, int)
        and size >= 0
        and isinstance(date, str)
    ):
        return None
    return _Remote(server, owner, p.clean_file_name(record.get("name")), size, date)


def _unpack(data: bytes) -> Any:
    with contextlib.suppress(ValueError, TypeError, msgpack.UnpackException):
        return msgpack.unpackb(data)
    return None
