"""sockety.core.aio: Sockety over asyncio — the connection both peers use and the user API they
share (drafts, messages, responses, streams, files, the router).

Servers and clients are made by ``sockety.server.serve`` and ``sockety.client.connect``, which
re-export everything here.
"""

from .._constants import FastReply
from ._connection import OPTIONS, Connection, Handler, check_options
from ._drafts import Draft, FileTransfer, Outgoing, ResponseDraft
from ._exchanges import Incoming, Message, Request, Response, Transfer
from ._router import Router
from ._run import loop_factory, run
from ._streams import IncomingStream, OutgoingStream, ReceivedFile

__all__ = [
    "OPTIONS",
    "Connection",
    "Draft",
    "FastReply",
    "FileTransfer",
    "Handler",
    "Incoming",
    "IncomingStream",
    "Message",
    "Outgoing",
    "OutgoingStream",
    "ReceivedFile",
    "Request",
    "Response",
    "ResponseDraft",
    "Router",
    "Transfer",
    "check_options",
    "loop_factory",
    "run",
]
