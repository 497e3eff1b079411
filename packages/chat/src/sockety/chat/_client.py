"""The chat client without a UI: connects, reconnects with backoff, and reports what happens as
typed events; the Textual app (or a test, or a bot) reacts to them.

Messages we send are never lost nor doubled: each gets an id of ours and waits in an ordered
outbox until the server accepts it. They are written at once, in order (one connection keeps
that order); when the connection is lost before an answer, the rest of the outbox is sent again
after the reconnect, ids unchanged, and the server publishes an id it already saw only once.
There is no response timeout on them: a dead connection is noticed by its idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import secrets
import shutil
import socket
import ssl as ssl_module
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sockety.client import (
    ConnectionClosedError,
    FastReply,
    Message,
    Request,
    Response,
    connect,
)
from sockety.core import SocketyError
from sockety.core.aio import Connection

from . import _protocol as p

__all__ = [
    "ChatClient",
    "ChatError",
    "ChatEvent",
    "ChatMessage",
    "Connected",
    "Disconnected",
    "FileUpdated",
    "GaveUp",
    "IncomingFile",
    "LoggedIn",
    "NameChanged",
    "OutgoingFile",
    "PrivateMessage",
    "SystemNotice",
    "TypingChanged",
    "UploadUpdated",
    "UsersChanged",
    "clean_leftovers",
]

logger = logging.getLogger("sockety.chat.client")


class ChatError(Exception):
    """Input the chat rejected, with a message for the user."""


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    address: str
    #: True when this is a reconnect (we were connected before).
    again: bool = False


@dataclass(frozen=True)
class Disconnected:
    """The connection was lost or could not be made; ``reason`` is this attempt's, ``first``
    the reason of the first failure in this row (what went wrong in the first place)."""

    reason: str
    retry_in: float
    attempt: int = 1
    first: str = ""


@dataclass(frozen=True)
class GaveUp:
    """No more retries (the server is not a chat server, or it stayed unreachable)."""

    reason: str


@dataclass(frozen=True)
class LoggedIn:
    name: str


@dataclass(frozen=True)
class NameChanged:
    name: str


@dataclass(frozen=True)
class UsersChanged:
    names: tuple[str, ...]


@dataclass(frozen=True)
class SystemNotice:
    date: datetime | None
    content: str


@dataclass(frozen=True)
class ChatMessage:
    date: datetime | None
    author: str
    content: str
    #: A ``/me`` action ("* alice waves").
    me: bool = False
    #: The room's id for it (None from a server that gives none).
    id: int | None = None


@dataclass(frozen=True)
class PrivateMessage:
    date: datetime | None
    author: str
    to: str
    content: str


@dataclass(frozen=True)
class TypingChanged:
    """Someone's live line: ``text`` None when they stopped (sent it or cleared it)."""

    key: str
    author: str
    text: str | None


@dataclass
class IncomingFile:
    """A file someone offers: ``/get`` it to receive it, straight into the directory chosen."""

    index: int  # the room's number for it (#N)
    author: str
    name: str
    size: int
    date: datetime | None
    received: int = 0
    state: Literal["offered", "receiving", "saved", "failed"] = "offered"
    saved_to: Path | None = None
    error: str = ""


@dataclass
class OutgoingFile:
    """A file we offer: read piece by piece when someone gets it."""

    name: str
    size: int
    path: Path | None = None
    index: int = 0  # the room's number, once offered
    #: Bytes read for receivers (all copies together) and how many copies were asked.
    sent: int = 0
    copies: int = 0
    state: Literal["offering", "offered", "failed"] = "offering"
    error: str = ""


@dataclass(frozen=True)
class FileUpdated:
    file: IncomingFile


@dataclass(frozen=True)
class UploadUpdated:
    file: OutgoingFile


ChatEvent = (
    Connected
    | Disconnected
    | GaveUp
    | LoggedIn
    | NameChanged
    | UsersChanged
    | SystemNotice
    | ChatMessage
    | PrivateMessage
    | TypingChanged
    | FileUpdated
    | UploadUpdated
)


@dataclass(eq=False)
class _Pending:
    """A message of ours not yet accepted."""

    draft: Any
    payload: dict[str, Any]
    done: asyncio.Future[None]
    connection: Connection | None = None  # where it was last sent
    request: Request | None = field(default=None, repr=False)


class ChatClient:
    """Joins a chat server and stays joined: ``await run()`` connects, and reconnects with
    exponential backoff (``backoff`` = first and longest delay, in seconds) whenever the
    connection is lost, until :meth:`stop`; after ``max_attempts`` failed attempts in a row
    (or at once for a server that is not a chat server) it gives up (:class:`GaveUp`).
    Everything that happens is passed to ``on_event``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        on_event: Callable[[ChatEvent], Any] | None = None,
        backoff: tuple[float, float] = (0.5, 10.0),
        # Attempts in a row before giving up: with the default backoff, about two minutes once
        # we were connected; a first connection that keeps failing (a wrong address?) stops
        # after ``first_attempts`` (about 4 s: 3 waits).
        max_attempts: int = 15,
        first_attempts: int = 4,
        connect_timeout: float = 5.0,
        # A chat server says who we are (login) at once; a Sockety server that does not is
        # some other service.
        login_timeout: float = 5.0,
        downloads: Path | None = None,
        # Messages waiting to be accepted (sent or not): a paste of a few thousand lines fits.
        max_pending: int = 10_000,
        # More servers of the same (clustered) room: each lost connection moves to the next.
        others: Sequence[tuple[str, int]] = (),
        **options: Any,
    ) -> None:
        if name is not None and not p.is_valid_name(name):
            raise ChatError(invalid_name(name))
        self.host = host
        self.port = port
        self.addresses = [(host, port), *others]
        self._next = 0
        #: The last room-wide sequence seen (clustered servers number messages in JetStream):
        #: copies of it and older ones are dropped; a reconnect asks for what came after.
        self.last_seq = 0
        self._ssl = ssl
        self._on_event = on_event
        self._backoff = backoff
        self._max_attempts = max_attempts
        self._first_attempts = first_attempts
        self._connect_timeout = connect_timeout
        self._login_timeout = login_timeout
        self._max_pending = max_pending
        self._options = options
        self.downloads = downloads or Path.home() / "Downloads" / "sockety-chat"
        #: The name we want (restored after a reconnect) and the one we have.
        self.wanted_name = name
        self.name: str | None = None
        self.users: tuple[str, ...] = ()
        self.files: dict[int, IncomingFile] = {}
        self.uploads: dict[int, OutgoingFile] = {}
        self._connection: Connection | None = None
        self._ready = False  # logged in and our name restored: the outbox may flow
        self._was_connected = False
        self._typing: Any = None
        self._typed = ""
        self._stopped = asyncio.Event()
        self._logged_in = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._downloads: set[asyncio.Task[Any]] = set()  # handlers writing a file we asked for
        self._session = secrets.token_hex(6)
        self._sequence = 0
        self._outbox: deque[_Pending] = deque()
        self._targets: dict[int, Path] = {}  # where each file we asked for goes

    # -- state -----------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.closed and self.name is not None

    @property
    def pending(self) -> int:
        """Messages of ours not accepted yet."""
        return len(self._outbox)

    def _emit(self, event: ChatEvent) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("event handler failed for %r", event)

    # -- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connects and stays connected until :meth:`stop` (or it gives up)."""
        first_delay, longest = self._backoff
        delay, attempt, first = first_delay, 0, ""
        self._stopped.clear()
        while not self._stopped.is_set():
            fatal = False
            self.host, self.port = self.addresses[self._next % len(self.addresses)]
            self._next += 1  # after a failure or a loss: the next server, if there are several
            try:
                connection = await connect(
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    handler=self._on_message,
                    connect_timeout=self._connect_timeout,
                    **self._options,
                )
            except (SocketyError, OSError) as error:
                reason, fatal = describe_failure(error, self.address)
            else:
                reason, fatal = await self._stay(connection)
                if not fatal:  # we were in the chat: a new row of attempts
                    delay, attempt, first = first_delay, 0, ""
            if self._stopped.is_set():
                break
            attempt += 1
            first = first or reason
            limit = self._max_attempts if self._was_connected else self._first_attempts
            if fatal or attempt >= limit:
                gave_up = reason if fatal else f"{first} (gave up after {attempt} attempts)"
                self._emit(GaveUp(gave_up))
                break
            wait = delay * random.uniform(0.8, 1.2)
            self._emit(Disconnected(reason, wait, attempt, first))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._stopped.wait()
            delay = min(delay * 2, longest)
        self._fail_outbox("not sent: the chat was left" if self._stopped.is_set() else "not sent")

    async def _stay(self, connection: Connection) -> tuple[str, bool]:
        """Stays on ``connection`` until it closes; returns why, and whether retrying is
        pointless."""
        self._connection = connection
        going_away = asyncio.ensure_future(self._on_going_away(connection))
        try:
            try:
                async with asyncio.timeout(self._login_timeout):
                    await self._wait_login(connection)
            except TimeoutError:
                with contextlib.suppress(SocketyError):
                    await connection.close(timeout=0.5)
                return (f"{self.address} is a Sockety server but not a chat server", True)
            await connection.wait_closed()
        finally:
            going_away.cancel()
            self._connection = None
            self._lost()
        closed = connection.close_reason
        if closed is not None and closed.kind == "lost":
            return "the connection was lost", False
        return "the server closed the connection", False

    async def _wait_login(self, connection: Connection) -> None:
        login = asyncio.ensure_future(self._logged_in.wait())
        closed = asyncio.ensure_future(connection.wait_closed())
        try:
            await asyncio.wait({login, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            login.cancel()
            closed.cancel()

    async def stop(self) -> None:
        """Leaves the chat (closes the connection) and ends :meth:`run`."""
        self._stopped.set()
        self._end_typing()
        # Downloads under way stop now (their partial files are removed), rather than run on
        # through the close's grace period: leaving means leaving.
        for download in list(self._downloads):
            download.cancel()
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(SocketyError):
                await connection.close(timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        self._fail_outbox("not sent: the chat was left")

    async def _on_going_away(self, connection: Connection) -> None:
        await connection.wait_going_away()
        self._end_typing()  # an open stream would hold the server's shutdown back

    def _lost(self) -> None:
        self.name = None
        self._ready = False
        self._logged_in.clear()
        self._typing = None
        self._typed = ""
        for upload in self.uploads.values():
            if upload.state == "offered":  # offers die with the connection they were made on
                upload.state, upload.error = "failed", "no longer offered: the connection was lost"
                self._emit(UploadUpdated(upload))
        if self.users:
            self.users = ()
            self._emit(UsersChanged(()))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _require(self) -> Connection:
        connection = self._connection
        if connection is None or connection.closed or connection.going_away or self.name is None:
            raise ChatError("not connected: wait for the reconnect")
        return connection

    # -- what the server sends ------------------------------------------------------------------

    def _on_message(self, message: Message) -> Any:
        if message.action == "piece":
            return self._serve_piece(message)
        try:
            data = message.msgpack() if message.data else None
        except ValueError:
            return None
        action = message.action
        if action == "login" and isinstance(data, str):
            # It arrives before connect() returns: the connection is ours from here.
            self._connection = message.connection
            self.name = data
            self._logged_in.set()
            self._emit(Connected(self.address, again=self._was_connected))
            self._was_connected = True
            self._emit(LoggedIn(data))
            with contextlib.suppress(SocketyError):  # clustered servers send what we missed
                message.connection.send_nowait(p.SINCE(self.last_seq))
            if self.wanted_name is not None and self.wanted_name != data:
                self._spawn(self._restore_name(self.wanted_name))
            else:
                self._set_ready()
        elif action == "users" and isinstance(data, list):
            self.users = tuple(p.clean_text(str(name), 50) for name in data)
            self._emit(UsersChanged(self.users))
        elif action == "system" and isinstance(data, dict):
            content = p.clean_text(str(data.get("content", "")))
            self._emit(SystemNotice(p.parse_iso(data.get("date")), content))
        elif action == "chat" and isinstance(data, dict):
            seq = data.get("seq")
            if isinstance(seq, int):
                if seq <= self.last_seq:
                    return None  # had it already (a replay overlapping what we saw)
                self.last_seq = seq
            room_id = data.get("id")
            self._emit(
                ChatMessage(
                    p.parse_iso(data.get("date")),
                    p.clean_text(str(data.get("author", "?")), 50),
                    p.clean_text(str(data.get("content", ""))),
                    me=data.get("me") is True,
                    id=room_id if isinstance(room_id, int) else None,
                )
            )
        elif action == "private" and isinstance(data, dict):
            self._emit(
                PrivateMessage(
                    p.parse_iso(data.get("date")),
                    p.clean_text(str(data.get("author", "?")), 50),
                    p.clean_text(str(data.get("to", "?")), 50),
                    p.clean_text(str(data.get("content", ""))),
                )
            )
        elif action == "typing" and message.stream is not None:
            author = data.get("author") if isinstance(data, dict) else None
            return self._receive_typing(message, p.clean_text(str(author or "?"), 50))
        elif action == "offer" and isinstance(data, dict):
            self._offered(data)
        elif action == "file" and len(message.files) == 1 and isinstance(data, dict):
            return self._receive_file(message, data)
        return None

    async def _restore_name(self, name: str) -> None:
        try:
            await self.set_name(name)
        except ChatError as error:
            self._emit(SystemNotice(None, f"could not take the name {name}: {error}"))
        self._set_ready()

    async def _receive_typing(self, message: Message, author: str) -> None:
        key = str(message.id)
        decoder = p.TypingDecoder()
        assert message.stream is not None
        try:
            async for chunk in message.stream:
                for text in decoder.feed(chunk):
                    self._emit(TypingChanged(key, author, text))
        except (SocketyError, ValueError):
            pass
        finally:
            self._emit(TypingChanged(key, author, None))

    # -- the outbox ------------------------------------------------------------------------------

    def _set_ready(self) -> None:
        connection = self._connection
        if connection is None or connection.closed:
            return
        self._ready = True
        for pending in self._outbox:  # what the last connection left unanswered, in order
            if pending.connection is not connection:
                self._transmit(pending, connection)

    def _queue(self, draft: Any, payload: dict[str, Any]) -> asyncio.Future[None]:
        if len(self._outbox) >= self._max_pending:
            raise ChatError(f"{len(self._outbox)} messages are waiting to be sent: nothing sent")
        self._sequence += 1
        payload = {**payload, "id": f"{self._session}-{self._sequence}"}
        pending = _Pending(draft, payload, asyncio.get_running_loop().create_future())
        self._outbox.append(pending)
        connection = self._connection
        if self._ready and connection is not None and not connection.closed:
            self._transmit(pending, connection)
        return pending.done

    def _transmit(self, pending: _Pending, connection: Connection) -> None:
        try:
            request = connection.request(pending.draft(pending.payload))
        except SocketyError:
            return  # the connection is going: sent again after the reconnect
        pending.connection, pending.request = connection, request
        self._spawn(self._answered(pending, request))

    async def _answered(self, pending: _Pending, request: Request) -> None:
        try:
            reply = await request
        except SocketyError:
            return  # lost with the connection: sent again on the next one
        if pending.request is not request:
            return
        with contextlib.suppress(ValueError):
            self._outbox.remove(pending)
        if pending.done.done():
            return
        if reply == FastReply.ACCEPT:
            pending.done.set_result(None)
        else:
            what = "the server rejected the message"
            if pending.draft is p.PRIVATE_UP:
                what = f"{pending.payload.get('to')} is not here: message not sent"
            pending.done.set_exception(ChatError(what))
            pending.done.exception()  # retrieved: a caller may not wait for it

    def _fail_outbox(self, reason: str) -> None:
        outbox, self._outbox = self._outbox, deque()
        for pending in outbox:
            if not pending.done.done():
                pending.done.set_exception(ChatError(reason))
                pending.done.exception()

    # -- what we send ----------------------------------------------------------------------------

    async def set_name(self, name: str) -> None:
        """Renames us; raises :class:`ChatError` when the name is invalid or taken."""
        if not p.is_valid_name(name):
            raise ChatError(invalid_name(name))
        connection = self._require()
        try:
            reply = await connection.request(p.NAME(name)).response(timeout=30)
        except SocketyError as error:
            raise ChatError(f"rename failed: {describe_error(error)}") from None
        if reply == FastReply.BAD_REQUEST:
            raise ChatError(f"the name {name} is taken")
        if reply != FastReply.ACCEPT:
            raise ChatError(f"rename failed: the server answered {reply}")
        self.wanted_name = self.name = name
        self._emit(NameChanged(name))

    async def say(self, text: str, *, me: bool = False) -> None:
        """Sends a chat message; waits until the server accepted it. Raises
        :class:`ChatError` when it is rejected."""
        await self.send_message(text, me=me)

    def send_message(self, text: str, *, me: bool = False) -> asyncio.Future[None]:
        """Queues a chat message now (sent at once when connected, else after the reconnect)
        and ends our typing stream after it; the returned future is the server's verdict.
        Raises :class:`ChatError` for input that is not sent at all."""
        check_message(text)
        payload: dict[str, Any] = {"content": text}
        if me:
            payload["me"] = True
        verdict = self._queue(p.BROADCAST, payload)
        self._end_typing()  # after the message: others see it arrive, then the live line go
        return verdict

    def send_private(self, to: str, text: str) -> asyncio.Future[None]:
        """Queues a private message to ``to`` (only they and we see it)."""
        check_message(text)
        if not p.is_valid_name(to):
            raise ChatError(invalid_name(to))
        return self._queue(p.PRIVATE_UP, {"to": to, "content": text})

    def typing(self, text: str) -> None:
        """Streams our current input line to the others (empty: we stopped typing)."""
        text = p.clean_text(text)
        if text == self._typed:
            return
        self._typed = text
        if not text:
            self._end_typing()
            return
        connection = self._connection
        if connection is None or connection.closed or connection.going_away or not self._ready:
            return
        try:
            if self._typing is None:
                self._typing = connection.send_nowait(p.TYPING_UP())
            assert self._typing.stream is not None
            self._typing.stream.write(p.encode_typing(text))
        except SocketyError:
            self._typing = None

    def _end_typing(self) -> None:
        self._typed = ""
        transfer, self._typing = self._typing, None
        if transfer is not None and transfer.stream is not None:
            with contextlib.suppress(SocketyError):
                transfer.stream.end()

    # -- files we offer --------------------------------------------------------------------------

    async def offer_file(self, path: str | Path) -> OutgoingFile:
        """Offers a file to the room (each receiver asks for it with ``/get``); returns once
        the server numbered it."""
        source = Path(path).expanduser()  # noqa: ASYNC240 - a stat, no waiting
        if not source.is_file():
            raise ChatError(f"no such file: {source}")
        connection = self._require()
        upload = OutgoingFile(p.clean_file_name(source.name), source.stat().st_size, source)
        try:
            reply = await connection.request(
                p.OFFER_UP({"name": upload.name, "size": upload.size})
            ).response(timeout=30)
            number = reply.msgpack().get("id") if isinstance(reply, Response) else None
        except (SocketyError, ValueError, AttributeError) as error:
            raise ChatError(f"{upload.name} not offered: {describe_error(error)}") from None
        if not isinstance(number, int):
            raise ChatError(f"{upload.name} not offered: too large or rejected")
        upload.index, upload.state = number, "offered"
        self.uploads[number] = upload
        self._emit(UploadUpdated(upload))
        return upload

    send_file = offer_file

    async def _serve_piece(self, message: Message) -> int | None:
        """The server asks for a piece of a file we offer, for one receiver."""
        try:
            data = message.msgpack()
            upload = self.uploads[data["file"]]
            offset, size = int(data["offset"]), int(data["size"])
        except (ValueError, KeyError, TypeError):
            return FastReply.BAD_REQUEST
        if upload.path is None or upload.state != "offered" or not 0 < size <= p.PIECE_SIZE:
            return FastReply.BAD_REQUEST
        if offset == 0:
            upload.copies += 1
        try:
            chunk = await asyncio.to_thread(_read_piece, upload.path, offset, size)
        except OSError as error:
            upload.error = f"cannot read it: {describe_error(error)}"
            self._emit(UploadUpdated(upload))
            return FastReply.INTERNAL_ERROR
        if len(chunk) != size:
            return FastReply.INTERNAL_ERROR  # the file shrank since it was offered
        with contextlib.suppress(SocketyError):
            message.respond(p.PIECE_REPLY(chunk))
        upload.sent += size
        self._emit(UploadUpdated(upload))
        return None

    # -- files offered to us ---------------------------------------------------------------------

    def _offered(self, data: dict[Any, Any]) -> None:
        number, size = data.get("file"), data.get("size")
        if not isinstance(number, int) or not isinstance(size, int) or size < 0:
            return
        file = IncomingFile(
            index=number,
            author=p.clean_text(str(data.get("author", "?")), 50),
            name=p.clean_file_name(data.get("name")),
            size=size,
            date=p.parse_iso(data.get("date")),
        )
        self.files[number] = file
        self._emit(FileUpdated(file))

    def get(self, index: int | None = None, directory: Path | None = None) -> IncomingFile:
        """Asks for an offered file (the latest by default), to be saved into ``directory``
        (the downloads directory by default) as it arrives; progress as :class:`FileUpdated`."""
        if not self.files:
            raise ChatError("no file was offered yet")
        file = self.files.get(index if index is not None else max(self.files))
        if file is None:
            raise ChatError(f"no file #{index} was offered")
        if file.state == "receiving":
            raise ChatError(f"#{file.index} {file.name} is already arriving")
        connection = self._require()
        target = (directory or self.downloads).expanduser()
        file.state, file.received, file.error, file.saved_to = "receiving", 0, "", None
        try:
            request = connection.request(p.GET({"file": file.index}))
        except SocketyError as error:
            file.state, file.error = "failed", describe_error(error)
            raise ChatError(f"#{file.index} {file.name}: {file.error}") from None
        self._spawn(self._await_get(file, request, target))
        self._emit(FileUpdated(file))
        return file

    save = get

    async def _await_get(self, file: IncomingFile, request: Request, target: Path) -> None:
        self._targets[file.index] = target
        try:
            reply = await request
        except SocketyError as error:
            reply = -1
            reason = describe_error(error)
        else:
            reason = (
                "it is no longer offered (its owner left?)"
                if reply == FastReply.BAD_REQUEST
                else "the transfer stopped"
            )
        self._targets.pop(file.index, None)
        if reply != FastReply.ACCEPT and file.state == "receiving":
            file.state, file.error = "failed", file.error or reason
            self._emit(FileUpdated(file))

    async def _receive_file(self, message: Message, data: dict[Any, Any]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._downloads.add(task)
            task.add_done_callback(self._downloads.discard)
        source = message.files[0]
        number = data.get("file")
        file = self.files.get(number) if isinstance(number, int) else None
        target = self._targets.get(number) if isinstance(number, int) else None
        if file is None or target is None:
            message.discard()  # not asked for: never written anywhere
            return
        loop = asyncio.get_running_loop()
        last = 0.0
        part: Path | None = None
        out: BinaryIO | None = None
        try:
            opened, writer = await asyncio.to_thread(_open_part, target, file.name)
            part, out = opened, writer
            async for chunk in source:
                await asyncio.to_thread(writer.write, chunk)
                file.received += len(chunk)
                if loop.time() - last >= 0.05:  # progress at most 20 times a second
                    last = loop.time()
                    self._emit(FileUpdated(file))
            await asyncio.to_thread(writer.close)
            file.saved_to = await asyncio.to_thread(_finish_part, opened, target / file.name)
            file.state = "saved"
        except (SocketyError, OSError) as error:
            file.state, file.error = "failed", describe_error(error)
        except asyncio.CancelledError:
            file.state, file.error = "failed", "the connection was lost"
            raise
        finally:
            if out is not None and not out.closed:
                out.close()
            if part is not None and file.state != "saved":
                part.unlink(missing_ok=True)
            if part is not None:
                _forget_part(part)
            self._emit(FileUpdated(file))


def _read_piece(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as source:
        source.seek(offset)
        return source.read(size)


# -- partial downloads -----------------------------------------------------------------------------
# A file arrives as a hidden ``.NAME.<pid>.sockety-part`` next to where it goes, renamed when
# complete (no copy, no temp folder). Each one in progress is recorded under the user's cache
# directory; at start, a record whose process is gone (a killed terminal) has its file removed.

_PART_SUFFIX = ".sockety-part"


def _records() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sockety-chat" / "partial"


def _open_part(directory: Path, name: str) -> tuple[Path, BinaryIO]:
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f".{name}.{os.getpid()}-{secrets.token_hex(3)}{_PART_SUFFIX}"
    records = _records()
    records.mkdir(parents=True, exist_ok=True)
    (records / f"{os.getpid()}-{part.name}").write_text(str(part.resolve()))
    return part, part.open("xb")


def _finish_part(part: Path, wanted: Path) -> Path:
    target = unique_path(wanted)
    part.rename(target)
    return target


def _forget_part(part: Path) -> None:
    with contextlib.suppress(OSError):
        (_records() / f"{os.getpid()}-{part.name}").unlink()


def clean_leftovers() -> int:
    """Removes partial downloads of processes that are gone (and the spool folders of older
    versions); returns how many it removed. Run at start."""
    removed = 0
    records = _records()
    with contextlib.suppress(OSError):
        for record in records.iterdir():
            pid_text = record.name.partition("-")[0]
            if pid_text.isdigit() and _alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                path = Path(record.read_text())
                if path.name.endswith(_PART_SUFFIX):
                    path.unlink(missing_ok=True)
                    removed += 1
            with contextlib.suppress(OSError):
                record.unlink()
    # Versions before offers spooled every file into <tmp>/sockety-chat-*, without saying
    # which process: one untouched for a day is no running session's.
    stale = time.time() - 86400
    with contextlib.suppress(OSError):
        for spool in Path(tempfile.gettempdir()).glob("sockety-chat-*"):
            info = spool.stat()
            if spool.is_dir() and info.st_uid == os.getuid() and info.st_mtime < stale:
                shutil.rmtree(spool, ignore_errors=True)
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- words for the user ----------------------------------------------------------------------------


def check_message(text: str) -> None:
    """Raises :class:`ChatError` for text that would not be sent."""
    if not text.strip():
        raise ChatError("empty message: nothing sent")
    if "\n" in text or "\r" in text:
        raise ChatError("a message is a single line: nothing sent")
    if len(text) > p.MAX_MESSAGE_LENGTH:
        raise ChatError(f"a message is at most {p.MAX_MESSAGE_LENGTH} characters")
    if p.has_control(text):
        raise ChatError("control characters are not allowed: nothing sent")


def invalid_name(name: str) -> str:
    return f"invalid name {name!r}: 3 to 50 letters, digits, _ or -"


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "nothing is listening there (connection refused)",
    errno.EHOSTUNREACH: "the host is unreachable",
    errno.ENETUNREACH: "the network is unreachable",
    errno.ECONNRESET: "the connection was reset",
    errno.ETIMEDOUT: "no answer (timed out)",
    errno.EADDRNOTAVAIL: "that address is not available",
}


def describe_error(error: BaseException) -> str:
    """An error in words: no errno tuples, no ids."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return "unknown host (the name does not resolve)"
        if isinstance(cause, ssl_module.SSLCertVerificationError):
            return f"TLS: the server's certificate is not trusted ({cause.verify_message})"
        if isinstance(cause, ssl_module.SSLError):
            return f"TLS handshake failed ({cause.reason or 'not a TLS server?'})"
        if isinstance(cause, OSError) and cause.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[cause.errno]
        if isinstance(cause, TimeoutError):
            return "no answer (timed out)"
        cause = cause.__cause__
    if isinstance(error, ConnectionClosedError):
        return "the connection was lost" if error.kind == "lost" else "the connection closed"
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    text = str(error)
    # "no response to <uuid> within 10 s" and friends: the id means nothing to a person.
    return " ".join(w for w in text.split() if len(w) != 36 or w.count("-") != 4) or "failed"


def describe_failure(error: BaseException, address: str) -> tuple[str, bool]:
    """Why connecting to ``address`` failed, and whether retrying is pointless."""
    closed = error.__cause__
    if isinstance(closed, ConnectionClosedError) and closed.kind == "protocol_error":
        return (
            f"{address} is not a chat server: it does not speak Sockety (or it needs --tls)",
            True,
        )
    words = describe_error(error)
    return f"cannot connect to {address}: {words}", "certificate is not trusted" in words


def unique_path(path: Path) -> Path:
    """``path``, or ``name (2).ext``, ``name (3).ext``, ... when it exists."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem} ({number}){path.suffix}")
    return candidate
