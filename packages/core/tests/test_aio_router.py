"""The router over a real connection: its error-handler chain behaves the same whether the
handlers are sync or async (the first one that returns a code decides, None passes on)."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import pytest

from sockety.core.aio import Draft, FastReply, Message, Router

from ._peers import connected, run

fail = Draft("fail")
ErrorHandler = Callable[[Message, Exception], int | Awaitable[int | None] | None]


def error_handler(is_async: bool, code: int | None, seen: list[str], name: str) -> ErrorHandler:
    if is_async:

        async def async_handler(message: Message, error: Exception) -> int | None:
            seen.append(f"{name}: {error}")
            return code

        return async_handler

    def sync_handler(message: Message, error: Exception) -> int | None:
        seen.append(f"{name}: {error}")
        return code

    return sync_handler


def failing_router(action_is_async: bool) -> Router:
    router = Router()
    if action_is_async:

        @router.action("fail")
        async def async_fail(message: Message) -> int:
            raise RuntimeError("boom")

    else:

        @router.action("fail")
        def sync_fail(message: Message) -> int:
            raise RuntimeError("boom")

    return router


KINDS = list(itertools.product([False, True], repeat=3))
IDS = ["-".join("async" if k else "sync" for k in kinds) for kinds in KINDS]


@pytest.mark.parametrize(("action_async", "first_async", "second_async"), KINDS, ids=IDS)
def test_a_first_error_handler_returning_none_passes_on_to_the_next(
    action_async: bool, first_async: bool, second_async: bool
) -> None:
    # An async first handler returning None once answered InternalError at once, while a sync
    # one fell through to the next handler.
    seen: list[str] = []
    router = failing_router(action_async)
    router.error(error_handler(first_async, None, seen, "first"))
    router.error(error_handler(second_async, 42, seen, "second"))
    router.error(error_handler(False, 43, seen, "third"))

    async def main() -> None:
        async with connected(router) as (_, client):
            assert await client.request(fail()) == 42

    run(main())
    assert seen == ["first: boom", "second: boom"]


@pytest.mark.parametrize(("action_async", "first_async", "second_async"), KINDS, ids=IDS)
def test_when_no_error_handler_answers_the_router_answers_its_error_code(
    action_async: bool, first_async: bool, second_async: bool
) -> None:
    seen: list[str] = []
    router = failing_router(action_async)
    router.error(error_handler(first_async, None, seen, "first"))
    router.error(error_handler(second_async, None, seen, "second"))

    async def main() -> None:
        async with connected(router) as (_, client):
            assert await client.request(fail()) is FastReply.INTERNAL_ERROR

    run(main())
    assert seen == ["first: boom", "second: boom"]


@pytest.mark.parametrize("first_async", [False, True], ids=["sync", "async"])
def test_the_first_error_handler_that_answers_decides(first_async: bool) -> None:
    seen: list[str] = []
    router = failing_router(True)
    router.error(error_handler(first_async, 7, seen, "first"))
    router.error(error_handler(False, 8, seen, "second"))

    async def main() -> None:
        async with connected(router) as (_, client):
            assert await client.request(fail()) == 7

    run(main())
    assert seen == ["first: boom"]
