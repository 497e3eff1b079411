"""The Textual app: a message log, a user list, live typing lines and file cards, over a
:class:`ChatClient` (and, for ``sockety-chat`` without arguments, an embedded
:class:`ChatServer`)."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl as ssl_module
import zlib
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Header, Input, ProgressBar, Static

from . import _protocol as p
from ._client import (
    ChatClient,
    ChatError,
    ChatEvent,
    ChatMessage,
    Connected,
    Disconnected,
    FileUpdated,
    IncomingFile,
    LoggedIn,
    NameChanged,
    OutgoingFile,
    SystemNotice,
    TypingChanged,
    UploadUpdated,
    UsersChanged,
)
from ._server import ChatServer

__all__ = ["ChatApp"]

logger = logging.getLogger("sockety.chat.app")

_COLORS = (
    "cyan",
    "magenta",
    "green",
    "yellow",
    "dodger_blue1",
    "orange1",
    "orchid",
    "spring_green2",
)
_MENTION = re.compile(r"@([a-zA-Z0-9_-]{3,50})")
_MAX_ENTRIES = 500

HELP = [
    "Commands:",
    "  /name NEW    change your name (3-50 letters, digits, _ or -)",
    "  /users       list who is here",
    "  /send PATH   share a file (everyone sees its progress)",
    "  /save [N]    save file #N (the latest by default) into the downloads directory",
    "  /files       list the files shared with you",
    "  /help        this help;  /quit (or Ctrl+Q) leaves",
    "Anything else is sent as a message: Tab completes @names, // sends a leading /.",
]


def color_of(name: str) -> str:
    """A stable color per name (crc32: the same in every process, unlike hash())."""
    return _COLORS[zlib.crc32(name.encode()) % len(_COLORS)]


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


class ChatInput(Input):
    """The message input: Tab completes @mentions (cycling through the matches)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "complete", "Complete @name", priority=True),
    ]

    def __init__(self, names: Callable[[], list[str]], **options: Any) -> None:
        super().__init__(**options)
        self._names = names
        self._cycle: tuple[str, str, list[str], int] | None = None  # before, after, matches, i

    def action_complete(self) -> None:
        value, cursor = self.value, self.cursor_position
        if self._cycle is not None and value == self._cycle_value():
            before, after, matches, index = self._cycle
            self._cycle = (before, after, matches, (index + 1) % len(matches))
        else:
            start = value.rfind("@", 0, cursor)
            word = value[start + 1 : cursor] if start >= 0 else ""
            if start < 0 or (start > 0 and not value[start - 1].isspace()) or " " in word:
                self._cycle = None
                return
            folded = word.casefold()
            matches = [n for n in self._names() if n.casefold().startswith(folded)]
            if not matches:
                self._cycle = None
                self.app.bell()
                return
            self._cycle = (value[:start], value[cursor:].lstrip(" "), matches, 0)
        self.value = self._cycle_value()
        assert self._cycle is not None
        before, _, matches, index = self._cycle
        self.cursor_position = len(before) + len(matches[index]) + 2

    def _cycle_value(self) -> str:
        assert self._cycle is not None
        before, after, matches, index = self._cycle
        return f"{before}@{matches[index]} {after}"


class FileCard(Vertical):
    """A shared file in the log: who, what, and a progress bar."""

    DEFAULT_CSS = """
    FileCard { height: auto; }
    FileCard > Static { height: auto; }
    FileCard > ProgressBar { height: 1; padding: 0 0 0 6; }
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.label = Static()
        self.bar = ProgressBar(total=max(size, 1), show_eta=False)

    def compose(self) -> ComposeResult:
        yield self.label
        yield self.bar


class ChatApp(App[None]):
    """The chat. Joins ``host:port``; with ``server`` it first starts that (embedded) server
    there (port 0: a free one)."""

    TITLE = "Sockety chat"
    CSS = """
    #main { height: 1fr; }
    #log { width: 1fr; border: round $primary; padding: 0 1; }
    #log > Static { height: auto; }
    #side { width: 28; border: round $secondary; padding: 0 1; }
    #typing { height: auto; max-height: 5; padding: 0 2; color: $text-muted; }
    #typing.-empty { display: none; }
    #input { margin: 0 0; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+s", "save", "Save latest file"),
    ]

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        server: ChatServer | None = None,
        server_ssl: ssl_module.SSLContext | None = None,
        downloads: Path | None = None,
        backoff: tuple[float, float] = (0.5, 10.0),
        clock: Callable[[], datetime] = p.iso_now,
        timezone: tzinfo | None = None,
        others: Sequence[tuple[str, int]] = (),
    ) -> None:
        super().__init__()
        self.host, self.port = host, port
        self._others = tuple(others)  # where to reconnect too (clustered servers)
        self._name, self._ssl, self._server, self._server_ssl = name, ssl, server, server_ssl
        self._downloads, self._backoff = downloads, backoff
        self._clock, self._tz = clock, timezone
        self.client: ChatClient | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._typers: dict[str, tuple[str, str]] = {}
        self._file_cards: dict[int, FileCard] = {}
        self._upload_cards: dict[int, FileCard] = {}
        self._stopping: asyncio.Task[None] | None = None
        self._retrying: Static | None = None
        self._quitting: asyncio.Task[None] | None = None
        #: Every log line as plain text (what tests and screen readers look at).
        self.transcript: list[str] = []

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield VerticalScroll(id="log")
            with Vertical(id="side"):
                yield Static(id="users")
        yield Static(id="typing", classes="-empty")
        yield ChatInput(
            self._completion_names, id="input", placeholder="Message, or /help for commands"
        )
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#log").border_title = "Messages"
        self.query_one("#side").border_title = "Users"
        self.sub_title = "connecting…"
        self.query_one("#input", Input).focus()
        if self._server is not None:
            try:
                await self._server.start(self.host, self.port, ssl=self._server_ssl)
            except OSError as error:
                self.notice(f"could not start the server on {self.host}:{self.port}: {error}")
                return
            self.port = self._server.port
            self.notice(
                f"Chat server running on {self.shown_address()}: others join with "
                f"`sockety-chat join {self.shown_address()}`",
                style="bold green",
            )
        self.client = ChatClient(
            self.host,
            self.port,
            name=self._name,
            ssl=self._ssl,
            on_event=self.on_chat_event,
            backoff=self._backoff,
            downloads=self._downloads,
            others=self._others,
        )
        self.notice("Type /help for commands.", style="dim")
        self._runner = asyncio.get_running_loop().create_task(self.client.run())

    async def action_quit(self) -> None:
        await self.shutdown_chat()
        self.exit()

    async def on_unmount(self) -> None:
        await self.shutdown_chat()

    def shutdown_chat(self) -> asyncio.Task[None]:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop_chat())
        return self._stopping

    async def _stop_chat(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        try:
            if self.client is not None:
                await self.client.stop()
            if self._runner is not None:
                await asyncio.wait({self._runner}, timeout=2)
            if self._server is not None:
                await asyncio.wait_for(self._server.close(), 5)
        except Exception:  # leaving must never end in a traceback
            logger.exception("shutdown failed")

    def shown_address(self) -> str:
        """The server's address as shown on screen."""
        return f"{self.host}:{self.port}"

    # -- the log ---------------------------------------------------------------------------------

    def _time(self, moment: datetime | None) -> str:
        moment = moment or self._clock()
        return moment.astimezone(self._tz).strftime("%H:%M")

    def _append(self, widget: Static | FileCard, plain: str) -> None:
        log = self.query_one("#log", VerticalScroll)
        at_end = log.scroll_y >= log.max_scroll_y - 1
        self.transcript.append(plain)
        log.mount(widget)
        children = log.children
        if len(children) > _MAX_ENTRIES:
            children[0].remove()
        if at_end:
            log.scroll_end(animate=False)

    def notice(self, content: str, *, date: datetime | None = None, style: str = "italic") -> None:
        """A system notice in the log."""
        line = Text.assemble((f"{self._time(date)} ", "dim"), ("— ", "dim"), (content, style))
        self._append(Static(line), f"{self._time(date)} — {content}")

    def error(self, content: str) -> Static:
        """A rejected input or a failure, in the log."""
        line = Text.assemble((f"{self._time(None)} ", "dim"), (f"✗ {content}", "bold red"))
        widget = Static(line)
        self._append(widget, f"{self._time(None)} ✗ {content}")
        return widget

    def _chat_line(self, message: ChatMessage) -> None:
        me = self.client.name if self.client else None
        mine = me is not None and message.author == me
        mentioned = False
        body = Text()
        position = 0
        for match in _MENTION.finditer(message.content):
            body.append(message.content[position : match.start()])
            who = match.group(1)
            if me is not None and who.casefold() == me.casefold():
                mentioned = True
                body.append(match.group(0), "bold black on yellow")
            else:
                body.append(match.group(0), f"bold {color_of(who)}")
            position = match.end()
        body.append(message.content[position:])
        stamp = self._time(message.date)
        line = Text.assemble(
            (f"{stamp} ", "dim"),
            (message.author, f"bold {color_of(message.author)}" + (" underline" if mine else "")),
            ": ",
            body,
        )
        widget = Static(line)
        if mentioned:
            widget.styles.background = "#3b3000"
        self._append(widget, f"{stamp} {message.author}: {message.content}")

    # -- events from the client ------------------------------------------------------------------

    def on_chat_event(self, event: ChatEvent) -> None:
        if isinstance(event, ChatMessage):
            self._chat_line(event)
        elif isinstance(event, SystemNotice):
            self.notice(event.content, date=event.date)
        elif isinstance(event, TypingChanged):
            if event.text:
                self._typers[event.key] = (event.author, event.text)
            else:
                self._typers.pop(event.key, None)
            self._render_typing()
        elif isinstance(event, UsersChanged):
            self._render_users()
        elif isinstance(event, Connected):
            self._retrying = None
            self.notice(f"Connected to {self.shown_address()}", style="green")
        elif isinstance(event, LoggedIn):
            self._update_title()
        elif isinstance(event, NameChanged):
            self._update_title()
            self._render_users()
        elif isinstance(event, Disconnected):
            self._typers.clear()
            self._render_typing()
            self.sub_title = "reconnecting…"
            text = f"{event.reason}; reconnecting in {event.retry_in:.1f} s"
            if self._retrying is None:  # the first failure gets a line, retries update it
                self._retrying = self.error(text)
            else:
                self._retrying.update(Text(f"{self._time(None)} ✗ {text}", "bold red"))
                self.transcript.append(f"{self._time(None)} ✗ {text}")
        elif isinstance(event, FileUpdated):
            self._file_card(event.file)
        elif isinstance(event, UploadUpdated):
            self._upload_card(event.file)

    def _update_title(self) -> None:
        client = self.client
        if client is not None and client.name:
            self.sub_title = f"{client.name} @ {self.shown_address()}"

    def _render_users(self) -> None:
        client = self.client
        names = client.users if client else ()
        me = client.name if client else None
        text = Text()
        for name in names:
            if text:
                text.append("\n")
            text.append(name, f"bold {color_of(name)}")
            if name == me:
                text.append(" (you)", "dim")
        self.query_one("#users", Static).update(text)
        self.query_one("#side").border_title = f"Users ({len(names)})"

    def _render_typing(self) -> None:
        widget = self.query_one("#typing", Static)
        text = Text()
        for author, typed in self._typers.values():
            if text:
                text.append("\n")
            shown = typed if len(typed) <= 80 else "…" + typed[-79:]
            text.append(author, f"bold {color_of(author)}")
            text.append(" is typing: ", "italic")
            text.append(shown + "…")
        widget.update(text)
        widget.set_class(not self._typers, "-empty")

    def _file_card(self, file: IncomingFile) -> None:
        card = self._file_cards.get(file.index)
        if card is None:
            card = self._file_cards[file.index] = FileCard(file.size)
            self._append(card, f"{self._time(file.date)} {file.author} shares {file.name}")
        what = f"#{file.index} {file.name} ({human_size(file.size)}) from {file.author}"
        if file.state == "receiving":
            status = f"receiving {human_size(file.received)}"
            if file.save_when_done:
                status += ", saved when complete"
        elif file.state == "received":
            status = f"received — /save {file.index} to keep it"
        elif file.state == "saved":
            status = f"saved to {file.saved_to}"
        else:
            status = f"failed: {file.error}"
        style = "bold red" if file.state == "failed" else "bold"
        card.label.update(
            Text.assemble(
                (f"{self._time(file.date)} ", "dim"),
                ("◆ ", "bold"),
                (what, style),
                (f"  {status}", "italic"),
            )
        )
        card.bar.update(progress=file.received)

    def _upload_card(self, file: OutgoingFile) -> None:
        card = self._upload_cards.get(id(file))
        if card is None:
            card = self._upload_cards[id(file)] = FileCard(file.size)
            self._append(card, f"{self._time(None)} you share {file.name}")
        status = {"sending": "sending", "sent": "shared", "failed": f"failed: {file.error}"}
        card.label.update(
            Text.assemble(
                (f"{self._time(None)} ", "dim"),
                ("◆ ", "bold"),
                (f"you share {file.name} ({human_size(file.size)})", "bold"),
                (f"  {status[file.state]}", "bold red" if file.state == "failed" else "italic"),
            )
        )
        card.bar.update(progress=file.sent)

    # -- input -----------------------------------------------------------------------------------

    def _completion_names(self) -> list[str]:
        client = self.client
        if client is None:
            return []
        return [name for name in client.users if name != client.name]

    def on_input_changed(self, event: Input.Changed) -> None:
        if self.client is not None:
            value = event.value
            self.client.typing("" if value.startswith("/") else value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value
        event.input.value = ""
        if not text:
            return
        if text.startswith("/") and not text.startswith("//"):
            self._command(text)
            return
        if text.startswith("//"):
            text = text[1:]
        client = self.client
        if client is None:
            self.error("not connected yet")
            return
        try:
            verdict = client.send_message(text)
        except ChatError as error:
            self.error(str(error))
            if text.strip() and not event.input.value:
                event.input.value = text  # not lost: fix it or retry
            return
        self._background(verdict)

    def on_paste(self, event: events.Paste) -> None:
        if "\n" in event.text.strip("\r\n"):
            self.error("a message is a single line: paste one line at a time")

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        async def guarded() -> None:
            try:
                await work
            except ChatError as error:
                self.error(str(error))
            except Exception as error:  # never a traceback
                logger.exception("command failed")
                self.error(f"failed: {error}")

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _command(self, text: str) -> None:
        command, _, argument = text.partition(" ")
        argument = argument.strip()
        client = self.client
        if command == "/help":
            for line in HELP:
                self.notice(line, style="")
        elif command == "/quit":
            # Not one of the cancellable background tasks: quitting cancels those.
            self._quitting = asyncio.get_running_loop().create_task(self.action_quit())
        elif client is None:
            self.error("not connected yet")
        elif command == "/name":
            if not argument:
                self.error("usage: /name NEW")
            else:
                self._background(client.set_name(argument))
        elif command == "/users":
            names = ", ".join(client.users) or "nobody (not connected)"
            self.notice(f"{len(client.users)} here: {names}", style="")
        elif command == "/send":
            if not argument:
                self.error("usage: /send PATH")
            else:
                self._background(client.send_file(argument))
        elif command == "/save":
            self._save(argument)
        elif command == "/files":
            if not client.files:
                self.notice("no file was shared with you yet", style="")
            for file in client.files:
                self.notice(f"#{file.index} {file.name} from {file.author}: {file.state}", style="")
        else:
            self.error(f"unknown command {command}: try /help")

    def _save(self, argument: str) -> None:
        assert self.client is not None
        try:
            index = int(argument.lstrip("#")) if argument else None
        except ValueError:
            self.error("usage: /save [N]")
            return
        try:
            self.client.save(index)
        except ChatError as error:
            self.error(str(error))

    def action_save(self) -> None:
        if self.client is not None:
            self._save("")
