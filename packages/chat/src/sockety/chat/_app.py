"""The Textual app: a message log, a user list, live typing lines and file cards, over a
:class:`ChatClient` (and, for ``sockety-chat`` without arguments, an embedded
:class:`ChatServer`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import ssl as ssl_module
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
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
    GaveUp,
    IncomingFile,
    LoggedIn,
    NameChanged,
    OutgoingFile,
    PrivateMessage,
    SystemNotice,
    TypingChanged,
    UploadUpdated,
    UsersChanged,
    clean_leftovers,
    describe_error,
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
    "  /name NEW         change your name (3-50 letters, digits, _ or -)",
    "  /me ACTION        say what you do (* alice waves)",
    "  /msg NAME TEXT    a private message: only NAME sees it",
    "  /users            list who is here",
    "  /send PATH        offer a file: others take it with /get",
    "  /get [N] [DIR]    receive file #N (the latest by default) into DIR (or downloads)",
    "  /files            list the files offered to you",
    "  /reconnect        try again after the chat gave up;  /help this help",
    "  /quit (Ctrl+Q)    leave",
    "Up/Down: lines you entered; PgUp/PgDn: scroll; Tab completes @names; // sends a leading /.",
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
    """The message input: Enter takes the line at once (see ``action_submit``), Up/Down walk
    the lines entered before, Tab completes @mentions (cycling through the matches), PgUp/PgDn
    scroll the log, and a multi-line paste is sent line by line."""

    BINDINGS: ClassVar[list[BindingType]] = [
        # (Shown in the footer; the keys are handled in _on_key, see there.)
        Binding("tab", "complete", "Complete @name"),
        Binding("pageup", "scroll_log(-1)", "Scroll up", show=False),
        Binding("pagedown", "scroll_log(1)", "Scroll down", show=False),
    ]

    class Pasted(Message):
        """Complete lines of a multi-line paste, to be sent as they are (never commands)."""

        def __init__(self, lines: list[str]) -> None:
            super().__init__()
            self.lines = lines

    def __init__(
        self, names: Callable[[], list[str]], *, history: int = 200, **options: Any
    ) -> None:
        super().__init__(**options)
        self._names = names
        self._cycle: tuple[str, str, list[str], int] | None = None  # before, after, matches, i
        self.history: deque[str] = deque(maxlen=history)
        self._browsing: int | None = None  # index into history while walking it
        self._draft = ""  # what was typed before walking the history

    async def _on_key(self, event: events.Key) -> None:
        """Enter, Tab and Up/Down act here, in the order keys arrive.

        Why: a key binding runs once the key has bubbled up to the app, later than this widget
        handles the keys that follow it (``Input`` inserts printable keys in its own
        ``_on_key``). In a burst (a fast typist, a paste through a terminal without bracketed
        paste) the next line's characters landed before Enter took the line: lines ran
        together (``rapid 3rapid 4``), and clearing the input afterwards lost some."""
        key = event.key
        if key == "enter":
            await self.action_submit()
        elif key == "tab":
            self.action_complete()
        elif key in ("up", "down"):
            self.action_history(-1 if key == "up" else 1)
        else:
            return  # Input._on_key inserts it
        event.stop()
        event.prevent_default()

    async def action_submit(self) -> None:
        """Takes the line and clears the input *here*, before the next key is handled:
        ``Input.Submitted`` is handled later, by the app, and clearing the input from there (as
        before) erased what had been typed since."""
        value = self.value
        self.value = ""
        self._browsing = None
        self._cycle = None
        if value.strip() and (not self.history or self.history[-1] != value):
            self.history.append(value)
        self.post_message(self.Submitted(self, value))

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        if self._browsing is None:
            if step > 0:
                return
            self._draft = self.value
            index = len(self.history) - 1
        else:
            index = self._browsing + step
        if index < 0:
            self.app.bell()
            return
        if index >= len(self.history):
            self._browsing = None
            self.value = self._draft
        else:
            self._browsing = index
            self.value = self.history[index]
        self.cursor_position = len(self.value)

    def action_scroll_log(self, direction: int) -> None:
        log = self.app.query_one("#log", LogView)
        if direction < 0:
            log.scroll_page_up(animate=False)
        else:
            log.scroll_page_down(animate=False)

    def _on_paste(self, event: events.Paste) -> None:
        text = event.text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            super()._on_paste(event)
            return
        event.stop()
        event.prevent_default()
        cursor = self.cursor_position
        after = self.value[cursor:]
        *lines, rest = (self.value[:cursor] + text + after).split("\n")
        self.value = rest
        self.cursor_position = len(rest) - len(after)  # where the paste ended
        self.post_message(self.Pasted(lines))

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


class LogView(VerticalScroll):
    """The message log: anchored to its end (it follows new entries, growing entries and
    resizes) until the user scrolls up; then new entries are counted for the marker below."""

    following: reactive[bool] = reactive(True)

    def on_mount(self) -> None:
        self.anchor()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new >= self.max_scroll_y - 1:
            self.following = True
        elif new < old:
            self.following = False

    def on_resize(self) -> None:
        if self.following:
            self.call_after_refresh(self.scroll_end, animate=False, immediate=True)


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
    #left { width: 1fr; }
    #log { height: 1fr; border: round $primary; padding: 0 1; }
    #log > Static { height: auto; }
    #below { height: 1; display: none; background: $accent; color: $text; padding: 0 2; }
    #below.-shown { display: block; }
    #side { width: 28; border: round $secondary; padding: 0 1; }
    #typing { height: auto; max-height: 5; padding: 0 2; color: $text-muted; }
    #typing.-empty { display: none; }
    #input { margin: 0 0; }
    /* Notifications (mentions, private messages) at the top: never over what one types. */
    ToastRack { dock: top; align: right top; margin-top: 1; margin-bottom: 0; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+g", "get", "Get the latest file"),
        Binding("ctrl+end", "follow", "Latest messages", show=False),
    ]
    #: Seconds a mention's or private message's notification stays.
    ALERT_TIMEOUT = 4.0

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
        **client_options: Any,
    ) -> None:
        super().__init__()
        self.host, self.port = host, port
        self._name, self._ssl, self._server, self._server_ssl = name, ssl, server, server_ssl
        self._downloads, self._backoff = downloads, backoff
        self._clock, self._tz = clock, timezone
        self._client_options = client_options
        self.client: ChatClient | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._typers: dict[str, tuple[str, str]] = {}
        self._file_cards: dict[int, FileCard] = {}
        self._upload_cards: dict[int, Static] = {}
        self._stopping: asyncio.Task[None] | None = None
        self._retrying: Static | None = None
        self._quitting: asyncio.Task[None] | None = None
        self._last_day: str | None = None
        self._unseen = 0
        self._entries: deque[Static | FileCard] = deque()
        #: The log's lines as plain text, the latest 5000 (what tests and screen readers read).
        self.transcript: deque[str] = deque(maxlen=5000)

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield LogView(id="log")
                yield Static(id="below")
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
        self.watch(self.query_one("#log", LogView), "following", self._following_changed)
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            # The terminal closed: leave as with Ctrl+Q, so unfinished downloads are removed.
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.exit)
        removed = await asyncio.to_thread(clean_leftovers)
        if removed:
            self.notice(f"removed {removed} unfinished download(s) of an earlier session")
        if self._server is not None:
            try:
                await self._server.start(self.host, self.port, ssl=self._server_ssl)
            except OSError as error:
                self.error(
                    f"could not start the server on {self.host}:{self.port}: "
                    f"{describe_error(error)}"
                )
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
            **self._client_options,
        )
        self.notice("Type /help for commands.", style="dim")
        self._start_client()

    def _start_client(self) -> None:
        assert self.client is not None
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
        """The server's address as shown on screen: the one the client is on (with several
        addresses, it moves to the next when a server goes away)."""
        if self.client is not None:
            return self.client.address
        return f"{self.host}:{self.port}"

    # -- the log ---------------------------------------------------------------------------------

    def _local(self, moment: datetime | None) -> datetime:
        return (moment or self._clock()).astimezone(self._tz)

    def _time(self, moment: datetime | None) -> str:
        return self._local(moment).strftime("%H:%M")

    def _append(self, widget: Static | FileCard, plain: str, moment: datetime | None) -> None:
        log = self.query_one("#log", LogView)
        day = self._local(moment).strftime("%A %d %B %Y")
        if day != self._last_day:  # a day separator, as chat clients do
            self._last_day = day
            separator = Static(Text(f"── {day} ──", "dim"))
            self.transcript.append(f"── {day} ──")
            self._mount_entry(log, separator)
        self.transcript.append(plain)
        self._mount_entry(log, widget)
        if not log.following:
            self._unseen += 1
            self._show_below()

    def _mount_entry(self, log: LogView, widget: Static | FileCard) -> None:
        """Mounts an entry; the oldest goes past ``_MAX_ENTRIES`` (the log stays cheap)."""
        self._entries.append(widget)
        log.mount(widget)
        if len(self._entries) > _MAX_ENTRIES:
            self._entries.popleft().remove()

    def _following_changed(self, following: bool) -> None:
        if following:
            self._unseen = 0
        self._show_below()

    def _show_below(self) -> None:
        below = self.query_one("#below", Static)
        shown = self._unseen > 0 and not self.query_one("#log", LogView).following
        if shown:
            plural = "s" if self._unseen != 1 else ""
            below.update(f"↓ {self._unseen} new message{plural} below — PgDn or Ctrl+End")
        below.set_class(shown, "-shown")

    def action_follow(self) -> None:
        self.query_one("#log", LogView).scroll_end(animate=False)

    def notice(self, content: str, *, date: datetime | None = None, style: str = "italic") -> None:
        """A system notice in the log."""
        line = Text.assemble((f"{self._time(date)} ", "dim"), ("— ", "dim"), (content, style))
        self._append(Static(line), f"{self._time(date)} — {content}", date)

    def error(self, content: str) -> Static:
        """A rejected input or a failure, in the log."""
        line = Text.assemble((f"{self._time(None)} ", "dim"), (f"✗ {content}", "bold red"))
        widget = Static(line)
        self._append(widget, f"{self._time(None)} ✗ {content}", None)
        return widget

    def _body(self, content: str, me: str | None) -> tuple[Text, bool]:
        """The text with @mentions colored; whether it mentions ``me``."""
        mentioned = False
        body = Text()
        position = 0
        for match in _MENTION.finditer(content):
            body.append(content[position : match.start()])
            who = match.group(1)
            if me is not None and who.casefold() == me.casefold():
                mentioned = True
                body.append(match.group(0), "bold black on yellow")
            else:
                body.append(match.group(0), f"bold {color_of(who)}")
            position = match.end()
        body.append(content[position:])
        return body, mentioned

    def _chat_line(self, message: ChatMessage) -> None:
        me = self.client.name if self.client else None
        mine = me is not None and message.author == me
        body, mentioned = self._body(message.content, me)
        stamp = self._time(message.date)
        author_style = f"bold {color_of(message.author)}" + (" underline" if mine else "")
        if message.me:
            line = Text.assemble(
                (f"{stamp} ", "dim"), ("* ", "italic"), (message.author, author_style), " ", body
            )
            line.stylize("italic", len(stamp) + 1)
            plain = f"{stamp} * {message.author} {message.content}"
        else:
            line = Text.assemble((f"{stamp} ", "dim"), (message.author, author_style), ": ", body)
            plain = f"{stamp} {message.author}: {message.content}"
        widget = Static(line)
        if mentioned and not mine:
            widget.styles.background = "#3b3000"
            self._alert(f"{message.author} mentioned you", message.content)
        self._append(widget, plain, message.date)

    def _private_line(self, message: PrivateMessage) -> None:
        me = self.client.name if self.client else None
        body, _ = self._body(message.content, me)
        stamp = self._time(message.date)
        line = Text.assemble(
            (f"{stamp} ", "dim"),
            (message.author, f"bold {color_of(message.author)}"),
            (" → ", "bold magenta"),
            (message.to, f"bold {color_of(message.to)}"),
            (" (private): ", "magenta"),
            body,
        )
        widget = Static(line)
        widget.styles.background = "#2a0030"
        if message.author != me:
            self._alert(f"{message.author} (private)", message.content)
        self._append(
            widget, f"{stamp} {message.author} → {message.to} (private): {message.content}", None
        )

    def _alert(self, title: str, content: str) -> None:
        """A bell, and a notification that stays a few seconds."""
        self.bell()
        self.notify(content[:120], title=title, timeout=self.ALERT_TIMEOUT)

    # -- events from the client ------------------------------------------------------------------

    def on_chat_event(self, event: ChatEvent) -> None:
        if self._stopping is not None or not self.is_running:
            return  # leaving: the screen is going away
        if isinstance(event, ChatMessage):
            self._chat_line(event)
        elif isinstance(event, PrivateMessage):
            self._private_line(event)
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
            if event.again:
                self.notice(f"Reconnected to {self.shown_address()}", style="bold green")
            else:
                self.notice(f"Connected to {self.shown_address()}", style="green")
        elif isinstance(event, LoggedIn):
            self._update_title()
        elif isinstance(event, NameChanged):
            self._update_title()
            self._render_users()
        elif isinstance(event, Disconnected):
            self._disconnected(event)
        elif isinstance(event, GaveUp):
            self._typers.clear()
            self._render_typing()
            self.sub_title = "not connected"
            text = f"{event.reason}. /reconnect to try again, Ctrl+Q to quit"
            if self._retrying is None:
                self.error(text)
            else:
                self._retrying.update(Text(f"{self._time(None)} ✗ {text}", "bold red"))
                self.transcript.append(f"{self._time(None)} ✗ {text}")
            self._retrying = None
        elif isinstance(event, FileUpdated):
            self._file_card(event.file)
        elif isinstance(event, UploadUpdated):
            self._upload_card(event.file)

    def _disconnected(self, event: Disconnected) -> None:
        self._typers.clear()
        self._render_typing()
        self.sub_title = "reconnecting…"
        # The first failure says what went wrong; the line is kept and only its retry count
        # and this attempt's reason change.
        first = event.first or event.reason
        text = f"{first}; reconnecting in {event.retry_in:.1f} s"
        if event.attempt > 1:
            again = "" if event.reason == first else f": {event.reason}"
            text = f"{first}; attempt {event.attempt} failed{again}; next in {event.retry_in:.1f} s"
        if self._retrying is None:
            self._retrying = self.error(text)
        else:
            self._retrying.update(Text(f"{self._time(None)} ✗ {text}", "bold red"))
            self.transcript.append(f"{self._time(None)} ✗ {text}")

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
            self._append(
                card, f"{self._time(file.date)} {file.author} offers {file.name}", file.date
            )
        what = f"#{file.index} {file.name} ({human_size(file.size)}) from {file.author}"
        if file.state == "offered":
            status = f"/get {file.index} to receive it"
        elif file.state == "receiving":
            status = f"receiving {human_size(file.received)}"
        elif file.state == "saved":
            status = f"saved to {file.saved_to}"
        else:
            status = f"failed: {file.error} (/get {file.index} to try again)"
        style = "bold red" if file.state == "failed" else "bold"
        card.label.update(
            Text.assemble(
                (f"{self._time(file.date)} ", "dim"),
                ("◆ ", "bold"),
                (what, style),
                (f"  {status}", "italic"),
            )
        )
        card.bar.display = file.state != "offered"
        card.bar.update(progress=file.received)
        self.transcript.append(f"#{file.index} {file.name}: {file.state}")

    def _upload_card(self, file: OutgoingFile) -> None:
        card = self._upload_cards.get(id(file))
        if card is None:
            card = self._upload_cards[id(file)] = Static()
            self._append(card, f"{self._time(None)} you offer {file.name}", None)
        if file.state == "failed":
            status = f"failed: {file.error}"
        elif file.copies:
            copies = "copy" if file.copies == 1 else "copies"
            status = f"{file.copies} {copies} asked, {human_size(file.sent)} sent"
        else:
            status = "offered: nobody asked for it yet"
        card.update(
            Text.assemble(
                (f"{self._time(None)} ", "dim"),
                ("◆ ", "bold"),
                (f"you offer #{file.index} {file.name} ({human_size(file.size)})", "bold"),
                (f"  {status}", "bold red" if file.state == "failed" else "italic"),
            )
        )

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
        text = event.value  # the input was cleared already (see ChatInput.action_submit)
        if not text:
            return
        if text.startswith("/") and not text.startswith("//"):
            self._command(text)
            return
        if text.startswith("//"):
            text = text[1:]
        self._say(text, event.input)

    def on_chat_input_pasted(self, event: ChatInput.Pasted) -> None:
        lines = [line for line in event.lines if line.strip()]
        for line in lines:
            self._say(line, None)
        if len(lines) > 1:
            self.notice(f"pasted {len(lines)} lines: sent as {len(lines)} messages", style="dim")

    def _say(self, text: str, source: Input | None, *, me: bool = False) -> None:
        client = self.client
        if client is None:
            self.error("not connected yet")
            return
        try:
            verdict = client.send_message(text, me=me)
        except ChatError as error:
            self.error(str(error))
            if source is not None and text.strip() and not source.value:
                source.value = text  # not lost: fix it or retry
            return
        if not client.connected:
            self.notice("not connected: sent once reconnected", style="dim")
        self._background(verdict)

    def _background(self, work: Awaitable[Any]) -> None:
        async def guarded() -> None:
            try:
                await work
            except ChatError as error:
                self.error(str(error))
            except Exception as error:  # never a traceback
                logger.exception("command failed")
                self.error(f"failed: {describe_error(error)}")

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
        elif command == "/reconnect":
            if self._runner is not None and not self._runner.done():
                self.notice("already connected or reconnecting", style="dim")
            else:
                self._start_client()
        elif command == "/name":
            if not argument:
                self.error("usage: /name NEW")
            else:
                self._background(client.set_name(argument))
        elif command == "/me":
            if not argument:
                self.error("usage: /me does something")
            else:
                self._say(argument, None, me=True)
        elif command == "/msg":
            to, _, words = argument.partition(" ")
            if not to or not words.strip():
                self.error("usage: /msg NAME message")
            else:
                try:
                    self._background(client.send_private(to.lstrip("@"), words.strip()))
                except ChatError as error:
                    self.error(str(error))
        elif command == "/users":
            names = ", ".join(client.users) or "nobody (not connected)"
            self.notice(f"{len(client.users)} here: {names}", style="")
        elif command in ("/send", "/offer"):
            if not argument:
                self.error("usage: /send PATH")
            else:
                self._background(client.offer_file(argument))
        elif command in ("/get", "/save"):
            self._get(argument)
        elif command == "/files":
            if not client.files:
                self.notice("no file was offered to you yet", style="")
            for file in client.files.values():
                self.notice(f"#{file.index} {file.name} from {file.author}: {file.state}", style="")
        else:
            self.error(f"unknown command {command}: try /help")

    def _get(self, argument: str) -> None:
        assert self.client is not None
        number, _, directory = argument.partition(" ")
        try:
            index = int(number.lstrip("#")) if number else None
        except ValueError:
            self.error("usage: /get [N] [DIRECTORY]")
            return
        try:
            self.client.get(index, Path(directory.strip()) if directory.strip() else None)
        except ChatError as error:
            self.error(str(error))

    def action_get(self) -> None:
        if self.client is not None:
            self._get("")
