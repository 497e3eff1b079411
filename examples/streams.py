"""Streams both ways: the client streams text up, the server echoes it back upper-cased through
its response's stream. Self-contained: starts its own server on a free port.

    python examples/streams.py
"""

from sockety.client import Draft, Message, Response, ResponseDraft, Router, connect, run
from sockety.server import serve

router = Router()
shout = ResponseDraft(stream=True)


@router.action("shout")
async def on_shout(message: Message) -> None:
    reply = message.respond(shout())
    async for chunk in message.stream:  # chunks as they arrive
        await reply.stream.send(chunk.upper())  # send() waits when the peer is slow
    reply.stream.end()


async def main() -> None:
    async with serve(router) as server, connect("127.0.0.1", server.port) as client:
        request = client.request(Draft("shout", stream=True)())
        for word in (b"hello, ", b"streaming ", b"world"):
            await request.stream.send(word)
        request.stream.end()

        reply = await request
        assert isinstance(reply, Response)
        async for chunk in reply.stream:
            print(chunk.decode(), end="", flush=True)
        print()


if __name__ == "__main__":
    run(main())
