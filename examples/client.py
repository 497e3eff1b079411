"""A Sockety client: fire-and-forget, a fast-reply request and a full response.

python examples/client.py --port 9000
"""

import argparse

from sockety.client import Draft, FastReply, Response, connect, run

log = Draft("log", data="msgpack")
ping = Draft("ping")


async def main(port: int) -> None:
    async with connect("127.0.0.1", port) as client:
        # No response expected: returns once written.
        await client.send(log("some text"))

        # A fast reply: an int code (a FastReply when it is a known one).
        code = await client.request(log("more text")).response(timeout=5)
        if code != FastReply.ACCEPT:
            raise RuntimeError(f"unexpected reply {code}")

        # A full response with msgpack data.
        reply = await client.request(ping())
        assert isinstance(reply, Response)
        print(reply.msgpack())  # "pong"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9000)
    run(main(parser.parse_args().port))
