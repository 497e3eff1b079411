"""``sockety``: call a Sockety server from the shell, like curl or grpcurl.

::

    sockety call 127.0.0.1:9000 ping
    sockety call 127.0.0.1:9000 echo --json '{"text": "hi"}'
    sockety call host:9000 upload --file report.pdf --data @meta.bin --tls --ca ca.pem
    tail -f log.txt | sockety call 127.0.0.1:9000 ingest --stream -
    sockety send 127.0.0.1:9000 log --json '"fire and forget"'

A response's data is shown as JSON when it is msgpack (``--output auto``, the default), else
written raw to stdout; its stream goes to stdout too; its files are listed on stderr (saved with
``--save-files DIR``). A fast reply is printed as its code and name.

Exit status: 0 success; 1 error (cannot connect, timeout, connection lost: one line on stderr);
2 usage; 3 a fast reply other than Accept (unless ``--no-fail``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from sockety.core import ConnectError, ConnectionClosedError, FastReply, SocketyError
from sockety.core.aio import Connection, Draft, FileTransfer, Incoming, Response, loop_factory
from sockety.core.cli import add_version, existing_file, positive_float

from ._connect import connect

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REPLY = 3
_CHUNK = 64 * 1024


class Failure(Exception):
    """One line for stderr and an exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockety",
        description="Talk to a Sockety server from the shell.",
        epilog="Exit status: 0 ok, 1 error, 2 usage, 3 fast reply other than Accept.",
    )
    add_version(parser, "sockety-client")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    call = commands.add_parser("call", help="send a message and print the reply")
    send = commands.add_parser("send", help="send a message that expects no reply")
    for sub in (call, send):
        sub.add_argument("address", metavar="HOST:PORT")
        sub.add_argument("action", metavar="ACTION")
        content = sub.add_mutually_exclusive_group()
        content.add_argument(
            "--json", metavar="JSON", help="data: this JSON value, sent as msgpack"
        )
        content.add_argument(
            "--data",
            metavar="DATA",
            help="data: raw bytes: @FILE reads a file, - reads stdin, else the text itself",
        )
        sub.add_argument(
            "--file",
            action="append",
            default=[],
            metavar="PATH",
            help="attach a file (repeatable; NAME=PATH to send it under another name)",
        )
        sub.add_argument(
            "--stream", metavar="SOURCE", help="attach a stream: - for stdin, or a file path"
        )
        sub.add_argument(
            "--timeout",
            type=positive_float,
            default=30.0,
            metavar="SECONDS",
            help="bound connecting and waiting for the reply (default: 30)",
        )
        tls = sub.add_argument_group("TLS")
        tls.add_argument("--tls", action="store_true", help="connect over TLS (verified)")
        tls.add_argument(
            "--ca", type=existing_file, metavar="PEM", help="trust these CAs (implies --tls)"
        )
        tls.add_argument(
            "--cert", type=existing_file, metavar="PEM", help="client certificate (implies --tls)"
        )
        tls.add_argument(
            "--key", type=existing_file, metavar="PEM", help="its private key (with --cert)"
        )
        tls.add_argument("--server-name", metavar="NAME", help="name to verify (default: HOST)")
        tls.add_argument(
            "--insecure", action="store_true", help="do not verify the server's certificate"
        )
    call.add_argument(
        "--output",
        choices=["auto", "json", "raw"],
        default="auto",
        help="response data: auto (JSON when it is msgpack, else raw), json, raw",
    )
    call.add_argument(
        "--save-files", metavar="DIR", help="save the response's files into this directory"
    )
    call.add_argument(
        "--no-fail",
        action="store_true",
        help="exit 0 on any fast reply, not only Accept",
    )
    return parser


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Failure(f"address {text!r} must be HOST:PORT", EXIT_USAGE)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.key and not args.cert:
        raise Failure("--key needs --cert (the certificate it belongs to)", EXIT_USAGE)
    if not (args.tls or args.ca or args.cert or args.insecure):
        return None
    try:
        context = ssl.create_default_context(cafile=args.ca)
    except (OSError, ssl.SSLError) as error:
        raise Failure(f"cannot load the CA file {args.ca}: {error}") from None
    try:
        if args.cert:
            context.load_cert_chain(args.cert, args.key)
    except (OSError, ssl.SSLError) as error:
        files = f"{args.cert} and {args.key}" if args.key else args.cert
        raise Failure(f"cannot load the certificate {files}: {error}") from None
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def read_data(args: argparse.Namespace) -> tuple[str | None, Any]:
    """The draft's data kind and the data."""
    if args.json is not None:
        try:
            return "msgpack", json.loads(args.json)
        except json.JSONDecodeError as error:
            raise Failure(f"--json is not valid JSON: {error}", EXIT_USAGE) from None
    if args.data is None:
        return None, None
    if args.data == "-":
        return "bytes", sys.stdin.buffer.read()
    if args.data.startswith("@"):
        try:
            return "bytes", Path(args.data[1:]).read_bytes()
        except OSError as error:
            raise Failure(f"cannot read --data {args.data}: {error.strerror}") from None
    return "bytes", args.data.encode()


def read_files(args: argparse.Namespace) -> list[FileTransfer]:
    files = []
    for item in args.file:
        name, sep, path = item.partition("=")
        if not sep or not path:
            name, path = "", item
        try:
            files.append(FileTransfer.from_path(path, name or None))
        except OSError as error:
            raise Failure(f"cannot read --file {path}: {error.strerror}") from None
    return files


def open_stream(args: argparse.Namespace) -> BinaryIO | None:
    if args.stream is None:
        return None
    if args.stream == "-":
        if args.data == "-":
            raise Failure("--data - and --stream - cannot both read stdin", EXIT_USAGE)
        return sys.stdin.buffer
    try:
        return Path(args.stream).open("rb")
    except OSError as error:
        raise Failure(f"cannot read --stream {args.stream}: {error.strerror}") from None


async def pump_stream(source: BinaryIO, transfer: Any) -> None:
    reader = getattr(source, "read1", source.read)
    while chunk := await asyncio.to_thread(reader, _CHUNK):
        await transfer.stream.send(chunk)
    transfer.stream.end()


async def run(args: argparse.Namespace) -> int:
    host, port = parse_address(args.address)
    context = tls_context(args)
    kind, data = read_data(args)
    files = read_files(args)
    stream = open_stream(args)
    try:
        draft = Draft(args.action, data=kind, files=bool(files), stream=stream is not None)  # type: ignore[arg-type]
    except ValueError as error:
        raise Failure(str(error), EXIT_USAGE) from None
    message = draft(data, files=files) if (kind or files) else draft()
    expects = args.command == "call"
    try:
        async with asyncio.timeout(args.timeout):
            client = await connect(
                host,
                port,
                ssl=context,
                server_hostname=args.server_name or host,
                connect_timeout=args.timeout,
            )
    except TimeoutError:
        raise Failure(f"could not connect to {host}:{port}: timed out") from None
    try:
        if expects:
            request = client.request(message)
            transfer: Any = request
        else:
            transfer = client.send_nowait(message)
        if stream is not None:
            pumping = asyncio.ensure_future(pump_stream(stream, transfer))
        if not expects:
            if stream is not None:
                await pumping
            await asyncio.wait_for(transfer.sent(), args.timeout)
            return 0
        try:
            reply = await request.response(timeout=args.timeout)
        except TimeoutError:
            raise Failure(f"no reply to {args.action!r} within {args.timeout:g} s") from None
        if isinstance(reply, int):
            if stream is not None:
                pumping.cancel()  # answered: the rest of the stream is not wanted
            return print_fast_reply(reply, args.no_fail)
        if stream is None:
            await print_response(reply, args)
        else:  # the reply may stream back while we are still streaming up
            await asyncio.gather(print_response(reply, args), pumping)
        return 0
    finally:
        await close_quietly(client, args.timeout)


async def close_quietly(client: Connection, timeout: float) -> None:
    with contextlib.suppress(SocketyError):
        await client.close(min(timeout, 5.0))


def fast_reply_name(code: int) -> str:
    if code < len(FastReply):
        return "".join(part.capitalize() for part in FastReply(code).name.split("_"))
    return "application code"


def print_fast_reply(code: int, no_fail: bool) -> int:
    print(f"{int(code)} {fast_reply_name(code)}", flush=True)
    return 0 if code == FastReply.ACCEPT or no_fail else EXIT_REPLY


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, msgpack.ExtType):
        return {"ext": value.code, "base64": base64.b64encode(value.data).decode()}
    return repr(value)


def format_data(data: bytes, output: str) -> bytes:
    if output != "raw":
        try:
            decoded = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException):
            if output == "json":
                raise Failure("the response's data is not msgpack (try --output raw)") from None
        else:
            return (json.dumps(decoded, default=_json_default, ensure_ascii=False) + "\n").encode()
    return data


async def print_response(reply: Response, args: argparse.Namespace) -> None:
    out = sys.stdout.buffer
    if reply.data:
        out.write(format_data(bytes(reply.data), args.output))
        out.flush()
    await drain_files(reply, args.save_files)
    if reply.stream is not None:
        async for chunk in reply.stream:
            out.write(chunk)
            out.flush()


async def drain_files(reply: Incoming, directory: str | None) -> None:
    for file in reply.files:
        if directory is not None:
            target = Path(directory) / Path(file.name).name  # never outside DIR
            await file.save(target)
            print(f"saved {file.name} ({file.size} bytes) to {target}", file=sys.stderr)
        else:
            async for _ in file:
                pass
            print(
                f"file {file.name} ({file.size} bytes) not saved (--save-files DIR)",
                file=sys.stderr,
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(run(args))
    except Failure as failure:
        print(f"sockety: error: {failure}", file=sys.stderr)
        return failure.status
    except ConnectError as error:
        text = str(error)
        if text.endswith(": ") and error.__cause__ is not None:  # an OSError without text
            text += type(error.__cause__).__name__
        print(f"sockety: error: {text}", file=sys.stderr)
        return EXIT_ERROR
    except ConnectionClosedError as error:
        print(f"sockety: error: connection closed: {error.reason}", file=sys.stderr)
        return EXIT_ERROR
    except SocketyError as error:
        print(f"sockety: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        print(f"sockety: error: {error.strerror or error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
