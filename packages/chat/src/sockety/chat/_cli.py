"""``sockety-chat``: with no command, an embedded server on 127.0.0.1 and the app joined to it;
``serve`` runs a standalone chat server; ``join HOST:PORT`` joins one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl as ssl_module
import sys
from collections.abc import Sequence
from pathlib import Path

from sockety.core import SocketyError
from sockety.core.cli import add_version, existing_file
from sockety.core.cli import port as _port
from sockety.server import run

from ._app import ChatApp
from ._protocol import is_valid_name
from ._server import ChatServer

__all__ = ["main"]

DEFAULT_PORT = 9000


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9000`` for IPv6); a bare ``HOST`` means port 9000."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(number)
    if not host:
        raise argparse.ArgumentTypeError(f"no host in {text!r}")
    return host, port


def _name(text: str) -> str:
    if not is_valid_name(text):
        raise argparse.ArgumentTypeError(f"invalid name {text!r}: 3 to 50 letters, digits, _ or -")
    return text


def _pem(text: str) -> Path:
    return Path(existing_file(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockety-chat",
        description="A terminal chat on Sockety. With no command: a chat server on 127.0.0.1 "
        "and this terminal joined to it (others join with `sockety-chat join`).",
    )
    add_version(parser, "sockety-chat")
    parser.add_argument("--port", type=_port, default=0, help="embedded server port (0: free)")
    parser.add_argument("--name", type=_name, help="your name (else anon_<random>)")
    parser.add_argument("--downloads", type=Path, help="where /get puts files")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run a standalone chat server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT)
    serve.add_argument("--tls-cert", type=_pem, help="certificate chain (PEM): serve TLS")
    serve.add_argument("--tls-key", type=_pem, help="private key (PEM), if not in --tls-cert")
    serve.add_argument("--max-file-size", type=int, default=1024**3, help="bytes (1 GiB)")
    serve.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="seconds a receiver may take nothing before it is dropped (30)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    serve.add_argument(
        "--cluster",
        action="append",
        default=[],
        metavar="NATS_URL",
        help="one room with every server using this NATS (repeatable); needs sockety-cluster",
    )
    serve.add_argument(
        "--history", type=int, default=100, help="with --cluster: messages a joiner gets (100)"
    )
    serve.add_argument(
        "--workers", type=int, default=1, help="with --cluster: processes sharing the port"
    )
    serve.add_argument(
        "--replicas",
        type=int,
        choices=range(1, 6),
        default=1,
        metavar="N",
        help="with --cluster: JetStream copies of the history in a NATS cluster (1; 3 for three "
        "NATS nodes)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    join = commands.add_parser("join", help="join a chat server")
    join.add_argument(
        "address",
        type=parse_address,
        metavar="HOST:PORT",
        nargs="+",
        help="a server; more: where to reconnect when one is lost (clustered servers)",
    )
    join.add_argument("--name", type=_name, help="your name (else anon_<random>)")
    join.add_argument("--tls", action="store_true", help="connect with TLS (verified)")
    join.add_argument("--tls-ca", type=_pem, help="trust this CA file (implies --tls)")
    join.add_argument("--downloads", type=Path, help="where /get puts files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    logging.basicConfig(handlers=[logging.NullHandler()], force=True)  # the screen is the UI
    if args.command == "join":
        (host, port), *others = args.address
        client_ssl: ssl_module.SSLContext | None = None
        if args.tls or args.tls_ca:
            client_ssl = ssl_module.create_default_context(
                cafile=str(args.tls_ca) if args.tls_ca else None
            )
        app = ChatApp(
            host, port, name=args.name, ssl=client_ssl, downloads=args.downloads, others=others
        )
    else:
        app = ChatApp(
            "127.0.0.1", args.port, name=args.name, server=ChatServer(), downloads=args.downloads
        )
    app.run()
    return 0


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    logging.getLogger("sockety.chat").setLevel(logging.INFO)
    context: ssl_module.SSLContext | None = None
    if args.tls_cert:
        context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl_module.SSLError) as error:
            print(f"sockety-chat: cannot load the certificate: {error}", file=sys.stderr)
            return 2

    if args.workers > 1:
        from ._workers import serve_workers  # noqa: PLC0415

        return serve_workers(args)
    if args.cluster:
        try:
            from ._cluster import ClusterRoom  # noqa: PLC0415 - sockety-cluster only when asked
        except ImportError as error:
            print(f"sockety-chat: --cluster needs sockety-cluster: {error}", file=sys.stderr)
            return 2

    async def serve() -> int:
        room = (
            ClusterRoom(
                args.cluster, history=args.history, stall=args.stall, replicas=args.replicas
            )
            if args.cluster
            else None
        )
        chat = ChatServer(max_file_size=args.max_file_size, stall=args.stall, room=room)
        try:
            await chat.start(args.host, args.port, ssl=context, reuse_port=args.reuse_port)
        except OSError as error:
            print(
                f"sockety-chat: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr
            )
            return 1
        except SocketyError as error:  # --cluster: NATS unreachable
            print(f"sockety-chat: {error}", file=sys.stderr)
            return 1
        scheme = "TLS" if context else "TCP"
        joined = f", one room through {', '.join(args.cluster)}" if args.cluster else ""
        print(
            f"chat server on {args.host}:{chat.port} ({scheme}{joined}); Ctrl+C stops", flush=True
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("stopping…", flush=True)
        await chat.close()
        return 0

    return run(serve())
