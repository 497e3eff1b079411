"""A small clustered service, for ``sockety-server sockety.cluster._demo:router --cluster URL``,
the tests and the benchmark: people log in under a key, say things to everyone, tell one person
something, or ask one person a question answered by that person's client."""

from __future__ import annotations

import logging
from typing import Any

from sockety.core import SocketyError
from sockety.core.aio import Draft, FastReply, Message, ResponseDraft, Router

from ._cluster import Cluster
from ._errors import ClusterError, KeyTakenError, PayloadTooLargeError

__all__ = ["ANSWER", "ASK", "HEARD", "LOGIN", "QUESTION", "SAY", "TELL", "router"]

# client -> server
LOGIN = Draft("login", data="msgpack")  # the key to log in under
SAY = Draft("say", data="bytes")  # to everyone
TELL = Draft("tell", data="msgpack")  # [key, bytes]
ASK = Draft("ask", data="msgpack")  # [key, bytes] -> ANSWER
# server -> client
HEARD = Draft("heard", data="bytes")
QUESTION = Draft("question", data="bytes")  # a request: the client answers with ANSWER
ANSWER = ResponseDraft(data="bytes")

logger = logging.getLogger("sockety.cluster")

#: The server could not queue it (the cluster's outgoing queue is full): try later.
BUSY = 503

router = Router()


@router.action("login")
async def login(message: Message) -> int:
    key = message.msgpack()
    if not isinstance(key, str):
        return FastReply.BAD_REQUEST
    try:
        await Cluster.of(message.connection).bind(message.connection, key)
    except (KeyTakenError, ValueError):
        return FastReply.BAD_REQUEST
    return FastReply.ACCEPT


@router.action("say")
def say(message: Message) -> int:
    try:
        queued = Cluster.of(message.connection).broadcast(HEARD(bytes(message.data)))
    except PayloadTooLargeError:
        return FastReply.BAD_REQUEST
    return FastReply.ACCEPT if queued else BUSY


def _pair(message: Message) -> tuple[str, bytes] | None:
    value: Any = message.msgpack()
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], bytes)
    ):
        return value[0], value[1]
    return None


@router.action("tell")
def tell(message: Message) -> int:
    pair = _pair(message)
    if pair is None:
        return FastReply.BAD_REQUEST
    try:
        queued = Cluster.of(message.connection).send(pair[0], HEARD(pair[1]))
    except (PayloadTooLargeError, ValueError):
        return FastReply.BAD_REQUEST
    return FastReply.ACCEPT if queued else BUSY


@router.action("ask")
async def ask(message: Message) -> int | None:
    pair = _pair(message)
    if pair is None:
        return FastReply.BAD_REQUEST
    try:
        reply = await Cluster.of(message.connection).request(pair[0], QUESTION(pair[1]))
    except ClusterError as error:
        logger.info("ask %r: %s", pair[0], error)
        return FastReply.NOT_IMPLEMENTED  # nobody holds that key (or its server is away)
    except (SocketyError, ValueError):
        return FastReply.BAD_REQUEST
    if reply.fast_reply is not None:
        return reply.fast_reply
    message.respond(ANSWER(reply.data))
    return None
