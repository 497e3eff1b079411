"""A message router: handlers per action, middleware, error handlers (the reference's
MessageHandler, done the Python way). Sync and async callables both work; a synchronous chain
runs inline, without a task."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mypy_extensions import mypyc_attr

from .._constants import FastReply
from ._exchanges import Message

__all__ = ["Router"]

logger = logging.getLogger("sockety")

Result = int | None
ActionHandler = Callable[[Message], Result | Awaitable[Result]]
ErrorHandler = Callable[[Message, Exception], Result | Awaitable[Result]]
H = TypeVar("H", bound=Callable[..., Any])


@mypyc_attr(allow_interpreted_subclasses=True)  # users may extend it (compiled build)
class Router:
    """Dispatches messages by action.

    ::

        router = Router()

        @router.action("ping")
        def ping(message: Message) -> int:
            return FastReply.ACCEPT

        @router.use
        def log(message: Message) -> None:
            logger.info("got %s", message.action)

    Middleware runs for every message, in order, before the action's handler; one that returns
    an int answers with that code and stops the chain. A handler's int return value is sent as a
    fast reply when the message expects a response and nothing was sent yet. An unknown action
    answers ``unknown`` (NotImplemented); an exception answers ``error`` (InternalError) unless an
    error handler returns another code. Pass None to answer nothing.
    """

    def __init__(
        self,
        *,
        unknown: int | None = FastReply.NOT_IMPLEMENTED,
        error: int | None = FastReply.INTERNAL_ERROR,
    ) -> None:
        self._actions: dict[str, ActionHandler] = {}
        self._middleware: list[ActionHandler] = []
        self._error_handlers: list[ErrorHandler] = []
        self.unknown = unknown
        self.error_code = error

    @property
    def actions(self) -> frozenset[str]:
        """The actions this router has handlers for."""
        return frozenset(self._actions)

    def action(self, name: str) -> Callable[[H], H]:
        """Decorator: handle messages of action ``name``."""

        def register(handler: H) -> H:
            self.add(name, handler)
            return handler

        return register

    def add(self, name: str, handler: ActionHandler) -> None:
        if name in self._actions:
            raise ValueError(f"action {name!r} already has a handler")
        self._actions[name] = handler

    def use(self, middleware: H) -> H:
        """Decorator: run ``middleware(message)`` for every message, before its handler."""
        self._middleware.append(middleware)
        return middleware

    def error(self, handler: H) -> H:
        """Decorator: ``handler(message, exception)`` for exceptions of handlers/middleware; the
        first one that returns a code decides the answer."""
        self._error_handlers.append(handler)
        return handler

    def __call__(self, message: Message) -> Result | Awaitable[Result]:
        try:
            for index, middleware in enumerate(self._middleware) if self._middleware else ():
                result = middleware(message)
                if result is not None:
                    if isinstance(result, int):
                        return result
                    return self._resume(message, result, index + 1)
            handler = self._actions.get(message.action)
            if handler is None:
                return self.unknown
            result = handler(message)
            if result is None or isinstance(result, int):
                return result
            return self._finish(message, result)
        except Exception as error:
            return self._failed(message, error)

    async def _resume(self, message: Message, pending: Awaitable[Result], index: int) -> Result:
        """Continues the chain once an async middleware is involved."""
        try:
            result = await pending
            if result is not None:
                return result
            for middleware in self._middleware[index:]:
                result = await _settle(middleware(message))
                if result is not None:
                    return result
            handler = self._actions.get(message.action)
            if handler is None:
                return self.unknown
            return await _settle(handler(message))
        except Exception as error:
            return await _settle(self._failed(message, error))

    async def _finish(self, message: Message, pending: Awaitable[Result]) -> Result:
        try:
            return await pending
        except Exception as error:
            return await _settle(self._failed(message, error))

    def _failed(self, message: Message, error: Exception) -> Result | Awaitable[Result]:
        if not self._error_handlers:
            logger.error("handler for %r failed", message.action, exc_info=error)
            return self.error_code
        handlers = self._error_handlers
        for index, handler in enumerate(handlers):
            result = handler(message, error)
            if result is not None:
                if isinstance(result, int):
                    return result
                return self._error_chain(message, error, result, index + 1)
        return self.error_code

    async def _error_chain(
        self, message: Message, error: Exception, pending: Awaitable[Result], index: int
    ) -> Result:
        """Continues the error handlers once an async one is involved: as in the synchronous
        loop, the first that answers a code decides, None passes on to the next."""
        result = await pending
        if result is not None:
            return result
        for handler in self._error_handlers[index:]:
            result = await _settle(handler(message, error))
            if result is not None:
                return result
        return self.error_code


async def _settle(result: Result | Awaitable[Result]) -> Result:
    if result is None or isinstance(result, int):
        return result
    return await result
