"""``sockety-server`` as an operator runs it: a real subprocess, talked to over 127.0.0.1.

Each test waits for the "ready" log line (never a sleep), and every process is ended by pid."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from sockety.client import (
    ConnectError,
    ConnectionClosedError,
    Draft,
    FastReply,
    GoingAwayError,
    Response,
    connect,
)
from sockety.core.aio import loop_factory

HOST = "127.0.0.1"

APP = """
import asyncio, os
from sockety.server import FastReply, Message, ResponseDraft, Router

router = Router()
reply = ResponseDraft(data="msgpack")
raw = ResponseDraft(data="bytes")


@router.action("ping")
def ping(message: Message) -> int:
    return FastReply.ACCEPT


@router.action("echo")
def echo(message: Message) -> None:
    message.respond(reply(message.msgpack()))


@router.action("pid")
def pid(message: Message) -> None:
    message.respond(reply(os.getpid()))


@router.action("slow")
async def slow(message: Message) -> int:
    await asyncio.sleep(float(message.msgpack()))
    return FastReply.ACCEPT


@router.action("big")
def big(message: Message) -> None:
    message.respond(raw(b"x" * int(message.msgpack())))


@router.action("fail")
def fail(message: Message) -> int:
    raise RuntimeError("boom")


def make():
    return router
"""

ping = Draft("ping")
slow = Draft("slow", data="msgpack")
echo = Draft("echo", data="msgpack")
pid = Draft("pid")


def write_app(directory: Path) -> Path:
    (directory / "cliapp.py").write_text(APP)
    return directory


class ServerProcess:
    """``python -m sockety.server ARGS`` with its stderr collected line by line."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sockety.server", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30, count: int = 1) -> re.Match[str]:
        """The ``count``-th log line matching ``pattern``; fails if the process ends first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(regex.search, self.lines) if m]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {pattern!r} in the log:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.5))

    def ready(self, timeout: float = 30) -> int:
        """Waits until it serves; returns the port."""
        return int(self.wait_for(r"ready: serving .* on [\d.]+:(\d+)", timeout).group(1))

    def metrics_url(self) -> str:
        return self.wait_for(r"metrics on (http://\S+/metrics)").group(1)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(5)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_app(tmp_path)


@pytest.fixture
def start(app_dir: Path) -> Any:
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(*args, cwd=app_dir, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def run(main: Any, timeout: float = 60) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await main

    with asyncio.Runner(loop_factory=loop_factory(False)) as runner:
        return runner.run(bounded())


def test_serves_the_app_and_drains_in_flight_work_on_sigterm(start: Any) -> None:
    server = start("cliapp:router", "--port", "0", "--grace", "10")
    port = server.ready()
    assert "listening on 127.0.0.1:" in server.log

    async def main() -> None:
        async with connect(HOST, port) as client:
            assert await client.request(ping()) == FastReply.ACCEPT
            reply = await client.request(echo({"a": [1, "b"]}))
            assert isinstance(reply, Response) and reply.msgpack() == {"a": [1, "b"]}
            assert await client.request(Draft("missing")()) == FastReply.NOT_IMPLEMENTED
            assert await client.request(Draft("fail")()) == FastReply.INTERNAL_ERROR
            in_flight = [client.request(slow(0.5)) for _ in range(20)]
            await asyncio.sleep(0.1)  # they reached the handler
            server.signal(signal.SIGTERM)
            await client.wait_going_away()  # Go Away arrived
            with pytest.raises(GoingAwayError):
                client.request(ping())
            assert await asyncio.gather(*in_flight) == [FastReply.ACCEPT] * 20
            await client.wait_closed()

    run(main())
    assert server.wait(15) == 0, server.log
    assert "SIGTERM: shutting down gracefully" in server.log
    assert "draining 1 connection(s)" in server.log
    assert server.log.rstrip().endswith("stopped")


def test_a_second_signal_exits_at_once(start: Any) -> None:
    server = start("cliapp:router", "--port", "0", "--grace", "60")
    port = server.ready()

    async def main() -> None:
        client = await connect(HOST, port)
        request = client.request(slow(60))
        await asyncio.sleep(0.1)
        server.signal(signal.SIGINT)
        await asyncio.to_thread(server.wait_for, "SIGINT: shutting down")
        began = time.monotonic()
        server.signal(signal.SIGINT)
        code = await asyncio.to_thread(server.wait, 10)
        assert time.monotonic() - began < 5
        assert code == 1
        with pytest.raises(ConnectionClosedError):
            await request.response(timeout=5)

    run(main())
    assert "SIGINT again: exiting now" in server.log


def test_tls_with_required_client_certificates(start: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    pem = str(tmp_path / "server.pem")
    server = start(
        "cliapp:router",
        *("--port", "0", "--tls-cert", pem, "--tls-key", pem),
        *("--tls-ca", str(tmp_path / "ca.pem")),
    )
    port = server.ready()
    assert "TLS)" in server.log
    client_cert = ca.issue_cert("client@example.org")

    async def main() -> None:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with_cert = ssl.create_default_context()
        ca.configure_trust(with_cert)
        client_cert.configure_cert(with_cert)
        async with connect(HOST, port, ssl=with_cert) as client:
            assert client.tls
            assert await client.request(ping()) == FastReply.ACCEPT
        with pytest.raises((ConnectError, ConnectionClosedError)):  # no client certificate
            async with connect(HOST, port, ssl=context, connect_timeout=5) as client:
                await client.request(ping()).response(timeout=5)

    run(main())


def test_usage_errors_are_one_line_without_traceback(start: Any, app_dir: Path) -> None:
    cases = [
        (["nosuchmodule:router"], 2, "could not import module 'nosuchmodule'"),
        (["cliapp:nothing"], 2, "has no attribute 'nothing'"),
        (["cliapp"], 2, "must be MODULE:ATTR"),
        (["cliapp:router", "--limit", "bogus=1"], 2, "--limit 'bogus=1'"),
        (["cliapp:router", "--tls-cert", "x.pem"], 2, "--tls-cert: no such file: x.pem"),
        (["cliapp:router", "--tls-cert", "cliapp.py"], 2, "--tls-cert and --tls-key go together"),
    ]
    for args, status, text in cases:
        server = start(*args, "--port", "0")
        assert server.wait(20) == status, server.log
        assert text in server.log
        assert "Traceback" not in server.log
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        server = start("cliapp:router", "--port", str(busy.getsockname()[1]))
        assert server.wait(20) == 1
        assert "could not listen on 127.0.0.1" in server.log
        assert "Traceback" not in server.log


def test_factory_limits_and_max_connections(start: Any) -> None:
    server = start(
        "cliapp:make",
        *("--factory", "--port", "0", "--max-connections", "2"),
        *("--limit", "max_action_size=8", "--log-level", "debug"),
    )
    port = server.ready()

    async def main() -> None:
        async with connect(HOST, port) as one, connect(HOST, port) as two:
            assert await one.request(ping()) == FastReply.ACCEPT
            assert await two.request(ping()) == FastReply.ACCEPT
            # The third is refused (at once, or right after the headers crossed).
            with pytest.raises((ConnectError, ConnectionClosedError)):
                async with connect(HOST, port, connect_timeout=5) as three:
                    await three.request(ping()).response(timeout=5)
            # An action over the limit is a protocol error for that connection only.
            with pytest.raises(ConnectionClosedError):
                await one.request(Draft("x" * 9)()).response(timeout=5)
            assert await two.request(ping()) == FastReply.ACCEPT

    run(main())
    server.wait_for(r"refusing connection from .*127\.0\.0\.1.*: server full")
    server.wait_for(r"closed \(protocol_error\): .*max_action_size=8")
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0
