"""The Node.js reference's client bytes, replayed over a real socket to our server: what our
server sends back decodes to the replies the reference server sent (the matching .s2c vectors)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sockety.core import Connection, FastReplyReceived, ResponseReceived
from sockety.server import Message, ResponseDraft, Router

from .conftest import HOST, Net

VECTORS = Path(__file__).parents[2] / "core" / "tests" / "vectors" / "sockety-js-wire.json"
CASES = {case["name"]: case for case in json.loads(VECTORS.read_text())}
PAIRS = sorted(
    name.removesuffix(".c2s")
    for name in CASES
    if name.endswith(".c2s") and name.replace(".c2s", ".s2c") in CASES
)


def reference_router(code_answer: int) -> Router:
    """Answers as the reference's server did when the vectors were recorded."""
    router = Router()
    pong = ResponseDraft(data="msgpack")

    @router.action("ping")
    def on_ping(message: Message) -> None:
        # The reference's responses carry the "expects response" bit; so do ours here.
        message.respond(pong("pong"), expects_response=True)

    @router.action("question")
    def on_question(message: Message) -> int:
        return 1  # Reject

    @router.action("code")
    def on_code(message: Message) -> int:
        return code_answer

    async def accept_after_stream(message: Message) -> int:
        assert message.stream is not None
        await message.stream.read()
        return 0  # Accept, once the stream ended

    for action in ("stream", "c", "w"):
        router.add(action, accept_after_stream)
    return router


def replies(raw: bytes) -> list[tuple[str, Any]]:
    events = Connection().receive_data(raw)
    out: list[tuple[str, Any]] = []
    for event in events:
        if isinstance(event, FastReplyReceived):
            out.append(("fast_reply", (event.id.hex(), event.code)))
        elif isinstance(event, ResponseReceived):
            out.append(
                (
                    "response",
                    (
                        event.parent_id.hex(),
                        event.expects_response,
                        event.has_stream,
                        bytes(event.data).hex(),
                        [tuple(f) for f in event.files],
                    ),
                )
            )
    return out


@pytest.mark.parametrize("name", PAIRS)
def test_reference_client_bytes_get_reference_replies(name: str, net: Net) -> None:
    sent = bytes.fromhex(CASES[name + ".c2s"]["hex"])
    reference = bytes.fromhex(CASES[name + ".s2c"]["hex"])
    expected = replies(reference)
    code = next((c[1][1] for c in expected if c[0] == "fast_reply"), 0)
    # The reference server announced its channel count; ours announces the same.
    server_header = Connection().receive_data(reference[:3])[0].peer_channels

    async def main() -> bytes:
        async with net.serve(reference_router(code), channels=server_header) as server:
            reader, writer = await asyncio.open_connection(
                HOST, server.port, ssl=net.client_ssl, server_hostname=HOST if net.tls else None
            )
            writer.write(sent)
            await writer.drain()
            received = b""
            while len(replies(received)) < len(expected) or not received:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                assert chunk, "the server closed the connection"
                received += chunk
            writer.close()
            return received

    got = net.run(main())
    assert replies(got) == expected
    header = Connection().receive_data(got)[0]
    assert header.peer_channels == server_header
