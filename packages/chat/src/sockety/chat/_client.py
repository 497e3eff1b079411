"""The chat client without a UI: connects, reconnects with backoff, and reports what happens as
typed events; the Textual app (or a test, or a bot) reacts to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import ssl as ssl_module
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sockety.client import (
    Connection,
    FastReply,
    FileTransfer,
    Message,
    Request,
    Transfer,
    connect,
)
from sockety.core import SocketyError

from . import _protocol as p

__all__ = [
    "ChatClient",
    "ChatError",
    "ChatEvent",
    "ChatMessage",
    "Connected",
    "Disconnected",
    "FileUpdated",
    "IncomingFile",
    "LoggedIn",
    "NameChanged",
    "OutgoingFile",
    "SystemNotice",
    "TypingChanged",
    "UploadUpdated",
    "UsersChanged",
]

logger = logging.getLogger("sockety.chat.client")


class ChatError(Exception):
    """Input the chat rejected, with a message for the user."""


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    address: str


@dataclass(frozen=True)
class Disconnected:
    reason: str
    retry_in: float


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


@dataclass(frozen=True)
class TypingChanged:
    """Someone's live line: ``text`` None when they stopped (sent it or cleared it)."""

    key: str
    author: str
    text: str | None


@dataclass
class IncomingFile:
    """A file someone shared: received into a spool file, saved on request."""

    index: int
    author: str
    name: str
    size: int
    date: datetime | None
    received: int = 0
    state: Literal["receiving", "received", "saved", "failed"] = "receiving"
    spool: Path | None = None
    saved_to: Path | None = None
    error: str = ""
    save_when_done: Path | None = None


@dataclass
class OutgoingFile:
    """A file we share."""

    name: str
    size: int
    sent: int = 0
    state: Literal["sending", "sent", "failed"] = "sending"
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
    | LoggedIn
    | NameChanged
    | UsersChanged
    | SystemNotice
    | ChatMessage
    | TypingChanged
    | FileUpdated
    | UploadUpdated
)

_FILE_CHUNK = 64 * 1024


class ChatClient:
    """Joins a chat server and stays joined: ``await run()`` connects, and reconnects with
    exponential backoff (``backoff`` = first and longest delay, in seconds) whenever the
    connection is lost, until :meth:`stop`. Everything that happens is passed to ``on_event``.
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
        connect_timeout: float = 5.0,
        downloads: Path | None = None,
        others: Sequence[tuple[str, int]] = (),
        **options: Any,
    ) -> None:
        if name is not None and not p.is_valid_name(name):
            raise ChatError(invalid_name(name))
        self.host = host
        self.port = port
        #: Every server to try, in turn, when the connection is lost (clustered servers).
        self.addresses = [(host, port), *others]
        self._next = 0
        #: The id of the last chat message seen (clustered servers number them): later copies
        #: of it and of older ones are dropped, and a reconnect asks for what came after.
        self.last_id = 0
        self._ssl = ssl
        self._on_event = on_event
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._options = options
        self.downloads = downloads or Path.home() / "Downloads" / "sockety-chat"
        #: The name we want (restored after a reconnect) and the one we have.
        self.wanted_name = name
        self.name: str | None = None
        self.users: tuple[str, ...] = ()
        self.files: list[IncomingFile] = []
        self.uploads: list[OutgoingFile] = []
        self._connection: Connection | None = None
        self._typing: Transfer | None = None
        self._typed = ""
        self._stopped = asyncio.Event()
        self._spool: Path | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- state -----------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.closed and self.name is not None

    def _emit(self, event: ChatEvent) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("event handler failed for %r", event)

    # -- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connects and stays connected until :meth:`stop`."""
        first, longest = self._backoff
        delay = first
        while not self._stopped.is_set():
            self.host, self.port = self.addresses[self._next % len(self.addresses)]
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
                reason = str(error)
                self._next += 1
            else:
                delay = first
                self._connection = connection
                going_away = asyncio.ensure_future(self._on_going_away(connection))
                try:
                    await connection.wait_closed()
                finally:
                    going_away.cancel()
                    self._connection = None
                    self._lost()
                closed = connection.close_reason
                if closed is not None and closed.kind == "lost":
                    reason = f"connection lost: {closed}"
                else:
                    reason = "the server closed the connection"
                self._next += 1  # another server next (if there are several)
            if self._stopped.is_set():
                break
            wait = delay * random.uniform(0.8, 1.2)
            self._emit(Disconnected(reason, wait))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._stopped.wait()
            delay = min(delay * 2, longest)

    async def stop(self) -> None:
        """Leaves the chat (closes the connection) and ends :meth:`run`."""
        self._stopped.set()
        self._end_typing()
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(SocketyError):
                await connection.close(timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        if self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = None

    async def _on_going_away(self, connection: Connection) -> None:
        await connection.wait_going_away()
        self._end_typing()  # an open stream would hold the server's shutdown back

    def _lost(self) -> None:
        self.name = None
        self._typing = None
        self._typed = ""
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
        try:
            data = message.msgpack() if message.data else None
        except ValueError:
            return None
        action = message.action
        if action == "login" and isinstance(data, str):
            # It arrives before connect() returns: the connection is ours from here.
            self._connection = message.connection
            self.name = data
            self._emit(Connected(self.address))
            self._emit(LoggedIn(data))
            with contextlib.suppress(SocketyError):  # clustered servers send what we missed
                message.connection.send_nowait(p.SINCE(self.last_id))
            if self.wanted_name is not None and self.wanted_name != data:
                self._spawn(self._restore_name(self.wanted_name))
        elif action == "users" and isinstance(data, list):
            self.users = tuple(p.clean_text(str(name), 50) for name in data)
            self._emit(UsersChanged(self.users))
        elif action == "system" and isinstance(data, dict):
            content = p.clean_text(str(data.get("content", "")))
            self._emit(SystemNotice(p.parse_iso(data.get("date")), content))
        elif action == "chat" and isinstance(data, dict):
            number = data.get("id")
            if isinstance(number, int):
                if number <= self.last_id:
                    return None  # seen already (a history replay overlapping what we had)
                self.last_id = number
            self._emit(
                ChatMessage(
                    p.parse_iso(data.get("date")),
                    p.clean_text(str(data.get("author", "?")), 50),
                    p.clean_text(str(data.get("content", ""))),
                )
            )
        elif action == "typing" and message.stream is not None:
            author = data.get("author") if isinstance(data, dict) else None
            return self._receive_typing(message, p.clean_text(str(author or "?"), 50))
        elif action == "file" and len(message.files) == 1 and isinstance(data, dict):
            return self._receive_file(message, data)
        return None

    async def _restore_name(self, name: str) -> None:
        try:
            await self.set_name(name)
        except ChatError as error:
            self._emit(SystemNotice(None, f"could not take the name {name}: {error}"))

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

    async def _receive_file(self, message: Message, data: dict[Any, Any]) -> None:
        source = message.files[0]
        file = IncomingFile(
            index=len(self.files) + 1,
            author=p.clean_text(str(data.get("author", "?")), 50),
            name=p.clean_file_name(data.get("name", source.name)),
            size=source.size,
            date=p.parse_iso(data.get("date")),
        )
        self.files.append(file)
        if self._spool is None:
            self._spool = Path(tempfile.mkdtemp(prefix="sockety-chat-"))
        file.spool = self._spool / f"{file.index}-{file.name}"
        self._emit(FileUpdated(file))
        loop = asyncio.get_running_loop()
        last = 0.0
        try:
            with file.spool.open("wb") as out:
                async for chunk in source:
                    out.write(chunk)
                    file.received += len(chunk)
                    if loop.time() - last >= 0.05:  # progress at most 20 times a second
                        last = loop.time()
                        self._emit(FileUpdated(file))
            file.state = "received"
        except (SocketyError, OSError) as error:
            file.state, file.error = "failed", str(error) or type(error).__name__
        except asyncio.CancelledError:
            file.state, file.error = "failed", "connection lost"
            raise
        finally:
            if file.state == "failed" and file.spool is not None:
                file.spool.unlink(missing_ok=True)
            if file.state == "received" and file.save_when_done is not None:
                self._copy(file, file.save_when_done)
            self._emit(FileUpdated(file))

    # -- what we send ----------------------------------------------------------------------------

    async def set_name(self, name: str) -> None:
        """Renames us; raises :class:`ChatError` when the name is invalid or taken."""
        if not p.is_valid_name(name):
            raise ChatError(invalid_name(name))
        connection = self._require()
        try:
            reply = await connection.request(p.NAME(name)).response(timeout=10)
        except SocketyError as error:
            raise ChatError(f"rename failed: {error}") from None
        if reply == FastReply.BAD_REQUEST:
            raise ChatError(f"the name {name} is taken")
        if reply != FastReply.ACCEPT:
            raise ChatError(f"rename failed: the server answered {reply}")
        self.wanted_name = self.name = name
        self._emit(NameChanged(name))

    async def say(self, text: str) -> None:
        """Sends a chat message; raises :class:`ChatError` when it is rejected."""
        await self.send_message(text)

    def send_message(self, text: str) -> Coroutine[Any, Any, None]:
        """Sends a chat message now (and ends our typing stream after it); the returned
        coroutine waits for the server's verdict. Raises :class:`ChatError` for input that is
        not sent at all."""
        if not text.strip():
            raise ChatError("empty message: nothing sent")
        if "\n" in text or "\r" in text:
            raise ChatError("a message is a single line: nothing sent")
        if len(text) > p.MAX_MESSAGE_LENGTH:
            raise ChatError(f"a message is at most {p.MAX_MESSAGE_LENGTH} characters")
        if p.has_control(text):
            raise ChatError("control characters are not allowed: nothing sent")
        connection = self._require()
        request = connection.request(p.BROADCAST(text))
        self._end_typing()  # after the message: others see it arrive, then the live line go
        return self._verdict(request)

    async def _verdict(self, request: Request) -> None:
        try:
            reply = await request.response(timeout=10)
        except SocketyError as error:
            raise ChatError(f"not sent: {error}") from None
        if reply != FastReply.ACCEPT:
            raise ChatError("the server rejected the message")

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
        if connection is None or connection.closed or connection.going_away or self.name is None:
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

    async def send_file(self, path: str | Path) -> OutgoingFile:
        """Shares a file; returns once everyone got it (progress as :class:`UploadUpdated`)."""
        source = Path(path).expanduser()  # noqa: ASYNC240 - a stat, no waiting
        if not source.is_file():
            raise ChatError(f"no such file: {source}")
        connection = self._require()
        upload = OutgoingFile(p.clean_file_name(source.name), source.stat().st_size)
        self.uploads.append(upload)
        transfer = FileTransfer.from_iterator(self._read(source, upload), upload.name, upload.size)
        self._emit(UploadUpdated(upload))
        try:
            reply = await connection.request(p.FILE_UP(files=[transfer]))
        except (SocketyError, OSError) as error:
            upload.state, upload.error = "failed", str(error)
        else:
            if reply == FastReply.ACCEPT:
                upload.state, upload.sent = "sent", upload.size
            else:
                upload.state = "failed"
                upload.error = (
                    "too large or rejected"
                    if reply == FastReply.BAD_REQUEST
                    else (f"the server answered {reply}")
                )
        self._emit(UploadUpdated(upload))
        if upload.state == "failed":
            raise ChatError(f"{upload.name} not shared: {upload.error}")
        return upload

    async def _read(self, path: Path, upload: OutgoingFile) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        last = 0.0
        with path.open("rb") as source:
            while chunk := source.read(_FILE_CHUNK):
                upload.sent += len(chunk)
                if loop.time() - last >= 0.05:
                    last = loop.time()
                    self._emit(UploadUpdated(upload))
                yield chunk

    def save(self, index: int | None = None, directory: Path | None = None) -> IncomingFile:
        """Saves a received file (the latest by default) into ``directory`` (the downloads
        directory by default); one still arriving is saved once it is complete."""
        if not self.files:
            raise ChatError("no file was shared yet")
        if index is None:
            file = self.files[-1]
        elif 1 <= index <= len(self.files):
            file = self.files[index - 1]
        else:
            raise ChatError(f"no file #{index} (there are {len(self.files)})")
        target = directory or self.downloads
        if file.state == "failed":
            raise ChatError(f"#{file.index} {file.name} did not arrive: {file.error}")
        if file.state == "receiving":
            file.save_when_done = target
        else:
            self._copy(file, target)
            self._emit(FileUpdated(file))
        return file

    def _copy(self, file: IncomingFile, directory: Path) -> None:
        assert file.spool is not None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            target = unique_path(directory / file.name)
            shutil.copyfile(file.spool, target)
        except OSError as error:
            file.error = f"could not save: {error}"
            self._emit(SystemNotice(None, f"could not save {file.name}: {error}"))
            return
        file.state, file.saved_to = "saved", target


def invalid_name(name: str) -> str:
    return f"invalid name {name!r}: 3 to 50 letters, digits, _ or -"


def unique_path(path: Path) -> Path:
    """``path``, or ``name (2).ext``, ``name (3).ext``, ... when it exists."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem} ({number}){path.suffix}")
    return candidate
