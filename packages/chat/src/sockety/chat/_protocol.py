"""The chat's actions, drafts and validation rules, shared by the server and the client.

Compatible with the Node.js reference chat (``name``, ``broadcast``, ``login``, ``users``,
``system``, ``chat``); ``typing``, ``private``, ``offer``, ``get``, ``piece`` and ``file`` are
this package's own additions (the README's table says who sends what).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

import msgpack

from sockety.core.aio import Draft, ResponseDraft

__all__ = [
    "MAX_MESSAGE_LENGTH",
    "NAME_PATTERN",
    "TypingDecoder",
    "clean_file_name",
    "encode_typing",
    "is_valid_message",
    "is_valid_name",
    "iso_now",
]

#: The reference's rule for names.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{3,50}$")
#: Longest chat text accepted (characters); the reference has no limit, a terminal needs one.
MAX_MESSAGE_LENGTH = 2000

#: Bytes of a file asked of its owner at a time (one ``piece`` request).
PIECE_SIZE = 256 * 1024

# client -> server
NAME = Draft("name", data="msgpack")
BROADCAST = Draft("broadcast", data="msgpack")
PRIVATE_UP = Draft("private", data="msgpack")
TYPING_UP = Draft("typing", stream=True)
OFFER_UP = Draft("offer", data="msgpack")
GET = Draft("get", data="msgpack")
SINCE = Draft("since", data="msgpack")  # the last room sequence seen (clustered servers)
# server -> client
LOGIN = Draft("login", data="msgpack")
USERS = Draft("users", data="msgpack")
SYSTEM = Draft("system", data="msgpack")
CHAT = Draft("chat", data="msgpack")
PRIVATE_DOWN = Draft("private", data="msgpack")
TYPING_DOWN = Draft("typing", data="msgpack", stream=True)
OFFER_DOWN = Draft("offer", data="msgpack")
PIECE = Draft("piece", data="msgpack")
FILE_DOWN = Draft("file", data="msgpack", files=True)
PIECE_REPLY = ResponseDraft(data="bytes")
OFFERED = ResponseDraft(data="msgpack")


def iso_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z``, as JavaScript's ``toISOString()``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_valid_name(name: Any) -> bool:
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def has_control(text: str) -> bool:
    """Control characters (CR, LF, ESC, ...) would break a terminal: never displayed."""
    return any(unicodedata.category(char) == "Cc" for char in text)


def is_valid_message(content: Any) -> bool:
    """Not blank, single line, no escape sequences (the reference's rule), not too long."""
    return (
        isinstance(content, str)
        and bool(content.strip())
        and len(content) <= MAX_MESSAGE_LENGTH
        and not has_control(content)
    )


def clean_text(text: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """Text safe to display: control characters dropped, at most ``limit`` characters."""
    return "".join(c for c in text[:limit] if unicodedata.category(c) != "Cc")


def clean_file_name(name: Any) -> str:
    """A received file's name, safe to use in a directory: no path, no control characters."""
    text = clean_text(name if isinstance(name, str) else "", 200)
    base = PurePath(text.replace("\\", "/")).name.strip().lstrip(".")
    return base or "file"


# -- the live typing stream -----------------------------------------------------------------------
# The stream carries a sequence of msgpack strings, each the whole current line: a reader may
# start anywhere, chunks may be split or joined in transit (msgpack values delimit themselves).


def encode_typing(text: str) -> bytes:
    packed: bytes = msgpack.packb(text[:MAX_MESSAGE_LENGTH])
    return packed


class TypingDecoder:
    """Feeds stream chunks, yields the complete lines they hold (clean ones only)."""

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(max_buffer_size=64 * 1024)

    def feed(self, chunk: bytes) -> Iterator[str]:
        self._unpacker.feed(chunk)
        for value in self._unpacker:
            if isinstance(value, str):
                yield clean_text(value)
