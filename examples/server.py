"""A Sockety server with a router: run it, then run client.py against it.

python examples/server.py --port 9000
"""

import argparse
import asyncio
import logging

from sockety.server import FastReply, Message, ResponseDraft, Router, run, serve

router = Router()
pong = ResponseDraft(data="msgpack")


@router.use
def log_every_message(message: Message) -> None:
    logging.info("%s %s", message.action, message.id)


@router.action("log")
def log(message: Message) -> int:
    print(f"[log] {message.msgpack()}", flush=True)
    return FastReply.ACCEPT  # sent only if the client expects a response


@router.action("ping")
def ping(message: Message) -> None:
    message.respond(pong("pong"))


@router.action("slow")
async def slow(message: Message) -> int:
    await asyncio.sleep(0.01)  # async handlers run as tasks; sync ones run inline
    return FastReply.ACCEPT


async def main(port: int) -> None:
    async with serve(router, "127.0.0.1", port) as server:
        print(f"listening on {server.port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9000)
    run(main(parser.parse_args().port))  # uvloop when installed
