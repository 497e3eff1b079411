"""TLS: a server with a certificate and a client that verifies it. The certificate here comes
from trustme (a test CA); in production load yours with ssl.SSLContext.load_cert_chain.

    python examples/tls.py
"""

import ssl

import trustme

from sockety.client import Draft, FastReply, Message, Router, connect, run
from sockety.server import serve

router = Router()


@router.action("ping")
def ping(message: Message) -> int:
    return FastReply.ACCEPT


async def main() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()  # verifies certificates and host names
    ca.configure_trust(client_context)

    async with (
        serve(router, "127.0.0.1", 0, ssl=server_context) as server,
        connect("127.0.0.1", server.port, ssl=client_context) as client,
    ):
        print("encrypted:", client.tls)
        print("ping:", (await client.request(Draft("ping")())).name)


if __name__ == "__main__":
    run(main())
