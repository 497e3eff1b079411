"""The ``sockety`` shell client, run as a real command against a server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from sockety.client import FastReply, Message, ResponseDraft, Router
from sockety.core.aio import loop_factory
from sockety.server import Server, serve

HOST = "127.0.0.1"
packed = ResponseDraft(data="msgpack")
raw = ResponseDraft(data="bytes")
streamed = ResponseDraft(stream=True)
with_files = ResponseDraft(data="msgpack", files=True)


def router(received: list[Any]) -> Router:
    router = Router()

    @router.action("ping")
    def ping(message: Message) -> int:
        received.append(("ping", bytes(message.data)))
        return FastReply.ACCEPT

    @router.action("echo")
    def echo(message: Message) -> None:
        message.respond(packed(message.msgpack()))

    @router.action("reverse")
    def reverse(message: Message) -> None:
        message.respond(raw(bytes(message.data)[::-1]))

    @router.action("files")
    async def files(message: Message) -> None:
        out = []
        for file in message.files:
            content = await file.read()
            out.append([file.name, file.size, hashlib.sha256(content).hexdigest()])
        message.respond(packed(out))

    @router.action("upper")
    async def upper(message: Message) -> None:
        assert message.stream is not None
        reply = message.respond(streamed())
        assert reply.stream is not None
        async for chunk in message.stream:
            await reply.stream.send(chunk.upper())
        reply.stream.end()

    @router.action("give")
    def give(message: Message) -> None:
        from sockety.client import FileTransfer

        message.respond(with_files("here", files=[FileTransfer.from_bytes(b"abc" * 10, "a.txt")]))

    @router.action("slow")
    async def slow(message: Message) -> int:
        await asyncio.sleep(10)
        return FastReply.ACCEPT

    @router.action("teapot")
    def teapot(message: Message) -> int:
        return 418

    return router


class Background:
    """A server on its own event loop thread."""

    def __init__(self, **options: Any) -> None:
        self.received: list[Any] = []
        self.options = options
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.server: Server

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=loop_factory(False)) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        async with serve(router(self.received), HOST, 0, **self.options) as server:
            self.server = server
            self.ready.set()
            await self.stop.wait()

    def __enter__(self) -> Background:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.server.port}"


@pytest.fixture(scope="module")
def server() -> Iterator[Background]:
    with Background() as background:
        yield background


def sockety(
    *args: str, stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sockety.client", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockety: error: "), err
    return lines[0]


def test_fast_replies_print_code_and_name(server: Background) -> None:
    result = sockety("call", server.address, "ping")
    assert (result.returncode, result.stdout) == (0, b"0 Accept\n")
    result = sockety("call", server.address, "missing")
    assert (result.returncode, result.stdout) == (3, b"2 NotImplemented\n")
    result = sockety("call", server.address, "missing", "--no-fail")
    assert result.returncode == 0
    result = sockety("call", server.address, "teapot")
    assert (result.returncode, result.stdout) == (3, b"418 application code\n")


def test_json_in_msgpack_out_as_json(server: Background) -> None:
    value = {"text": "héllo", "list": [1, 2.5, None, True]}
    result = sockety("call", server.address, "echo", "--json", json.dumps(value))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == value


def test_raw_data_from_a_file_from_stdin_and_as_text(server: Background, tmp_path: Path) -> None:
    blob = bytes(range(256)) * 4
    (tmp_path / "blob.bin").write_bytes(blob)
    result = sockety(
        "call", server.address, "reverse", "--data", "@blob.bin", "--output", "raw", cwd=tmp_path
    )
    assert (result.returncode, result.stdout) == (0, blob[::-1])
    result = sockety(
        "call", server.address, "reverse", "--data", "-", "--output", "raw", stdin=b"abc"
    )
    assert result.stdout == b"cba"
    result = sockety("call", server.address, "reverse", "--data", "olleh")
    assert result.stdout == b"hello"  # not msgpack: written raw


def test_files_and_a_stream_from_stdin(server: Background, tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_bytes(b"1" * 1000)
    (tmp_path / "two.bin").write_bytes(b"")
    result = sockety(
        "call", server.address, "files",
        "--file", str(tmp_path / "one.txt"), "--file", f"renamed={tmp_path / 'two.bin'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        ["one.txt", 1000, hashlib.sha256(b"1" * 1000).hexdigest()],
        ["renamed", 0, hashlib.sha256(b"").hexdigest()],
    ]
    text = b"streamed line\n" * 10_000
    result = sockety("call", server.address, "upper", "--stream", "-", stdin=text)
    assert (result.returncode, result.stdout) == (0, text.upper())


def test_response_files_are_listed_or_saved(server: Background, tmp_path: Path) -> None:
    result = sockety("call", server.address, "give")
    assert result.stdout == b'"here"\n'
    assert b"a.txt (30 bytes) not saved" in result.stderr
    result = sockety("call", server.address, "give", "--save-files", str(tmp_path))
    assert result.returncode == 0
    assert (tmp_path / "a.txt").read_bytes() == b"abc" * 10


def test_send_expects_no_reply(server: Background) -> None:
    result = sockety("send", server.address, "ping", "--data", "fire and forget")
    assert (result.returncode, result.stdout) == (0, b"")
    assert ("ping", b"fire and forget") in server.received


def test_errors_are_one_line(server: Background) -> None:
    with_free_port = Background()
    with with_free_port:
        dead = with_free_port.address  # nothing listens there once it is closed
    result = sockety("call", dead, "ping", "--timeout", "5")
    assert result.returncode == 1
    assert "could not connect" in one_line_error(result)
    result = sockety("call", server.address, "slow", "--timeout", "0.3")
    assert result.returncode == 1
    assert "no reply to 'slow' within 0.3 s" in one_line_error(result)
    result = sockety("call", "nohost", "ping")
    assert result.returncode == 2
    assert "must be HOST:PORT" in one_line_error(result)
    result = sockety("call", server.address, "echo", "--json", "{bad")
    assert result.returncode == 2
    assert "--json is not valid JSON" in one_line_error(result)
    result = sockety("call", server.address, "files", "--file", "/nonexistent/x")
    assert result.returncode == 1
    assert "cannot read --file" in one_line_error(result)
    result = sockety("call", server.address, "ping", "--tls", "--timeout", "5")  # not TLS
    assert result.returncode == 1
    one_line_error(result)


def test_tls_verified_with_a_ca_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with Background(ssl=context) as tls_server:
        result = sockety("call", tls_server.address, "ping", "--ca", str(tmp_path / "ca.pem"))
        assert (result.returncode, result.stdout) == (0, b"0 Accept\n")
        result = sockety("call", tls_server.address, "ping", "--tls", "--timeout", "5")
        assert result.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in one_line_error(result)
        result = sockety("call", tls_server.address, "ping", "--insecure")
        assert result.returncode == 0
