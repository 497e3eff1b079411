"""What a server tells the code watching it (metrics, logs, tracing): :class:`ServerObserver`.

The server calls these methods on the event loop, inline, at the moments they name; each one
does nothing unless overridden. The per-message methods cost something only when overridden:
the server then wraps its handler with :func:`observed` (two calls and a ``perf_counter`` pair
per message), otherwise the handler runs as given.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from time import perf_counter
from typing import Any

from sockety.core import ConnectionClosedError
from sockety.core.aio import Connection, Handler, Message

__all__ = ["ServerObserver", "observed"]


class ServerObserver:
    """Receives a server's events. Subclass it, override what you need, and pass an instance
    as ``serve(..., observer=...)``; :class:`ServerMetrics` is one.

    Methods must return quickly and not raise: they run inline on the server's event loop.
    """

    def on_serve(self, handler: Handler | None) -> None:
        """A server was made with ``handler`` (before it listens)."""

    def on_connect(self, connection: Connection) -> None:
        """A connection was admitted (and, over TLS, its handshake succeeded)."""

    def on_refused(self, peer: Any) -> None:
        """A connection from ``peer`` (its address) was refused at once: server full or
        closing. No :meth:`on_connect` or :meth:`on_close` follows."""

    def on_handshake_failed(self, peer: Any, error: BaseException) -> None:
        """A TLS handshake with ``peer`` failed or timed out: no connection was made."""

    def on_close(self, connection: Connection, reason: ConnectionClosedError) -> None:
        """A connection that :meth:`on_connect` saw has closed; ``reason.kind`` says why and
        who closed it (``closed``: this side, ``closed_by_peer``: the peer)."""

    def on_message(self, message: Message) -> None:
        """A message arrived; its handler runs next."""

    def on_handled(self, message: Message, result: int | None, seconds: float) -> None:
        """Its handler finished after ``seconds`` (an async one when its task ended) and
        returned ``result``: a fast-reply code, sent if the message expects a response and the
        handler did not answer it itself (``message.answered``), or None. A handler that raised
        is reported with ``result=FastReply.INTERNAL_ERROR``, which is what the server sends."""

    @property
    def observes_messages(self) -> bool:
        """Whether :meth:`on_message` or :meth:`on_handled` is overridden (the server wraps its
        handler only then)."""
        cls = type(self)
        return (
            cls.on_message is not ServerObserver.on_message
            or cls.on_handled is not ServerObserver.on_handled
        )


def observed(handler: Handler, observer: ServerObserver) -> Handler:
    """``handler``, reporting each message and its outcome to ``observer``."""
    on_message = observer.on_message
    on_handled = observer.on_handled

    def run(message: Message) -> Any:
        on_message(message)
        start = perf_counter()
        try:
            result = handler(message)
        except Exception:
            on_handled(message, _INTERNAL_ERROR, perf_counter() - start)
            raise
        if result is None or type(result) is int or not inspect.isawaitable(result):
            on_handled(message, result, perf_counter() - start)
            return result
        return _finish(message, result, on_handled, start)

    return run


async def _finish(message: Message, pending: Awaitable[Any], on_handled: Any, start: float) -> Any:
    try:
        result = await pending
    except Exception:
        on_handled(message, _INTERNAL_ERROR, perf_counter() - start)
        raise
    on_handled(message, result, perf_counter() - start)
    return result


_INTERNAL_ERROR = 5  # FastReply.INTERNAL_ERROR, as an int (what the connection answers)
