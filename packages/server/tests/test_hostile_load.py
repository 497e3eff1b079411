"""Hostile input and load against the server an operator runs, on 127.0.0.1 only, bounded in
count and time. The figures each test measures are printed (``pytest -s``) for the notes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import signal
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockety.client import (
    AbortedError,
    Draft,
    FastReply,
    Message,
    Response,
    ResponseDraft,
    Router,
    connect,
)
from sockety.core import Connection as SansIO
from sockety.core import ProtocolErrorKind, RemoteProtocolError
from sockety.core._encoding import message_header_packet, sized_prefix, switch_packet
from sockety.core.aio import loop_factory
from sockety.server import Connection, Server, ServerMetrics, serve
from sockety.server._runner import log_closed

from .conftest import HOST, Net, until
from .test_cli import app_dir, echo, ping, run, start
from .test_metrics import scrape, value

__all__ = ["app_dir", "start"]  # fixtures

ASYNCIO = Net("asyncio", False, None, None)
raw_reply = ResponseDraft(data="bytes")
number = ResponseDraft(data="msgpack")


def figure(text: str) -> None:
    print(f"\n[figure] {text}")


def app() -> Router:
    router = Router()

    @router.action("ping")
    def on_ping(message: Message) -> int:
        return FastReply.ACCEPT

    @router.action("echo")
    def on_echo(message: Message) -> None:
        message.respond(number(message.msgpack()))

    return router


# -- a server on its own thread, for tests that drive raw blocking sockets ---------------------


class Closes(logging.Handler):
    """Collects the close log lines of ``log_closed``, by the peer's port."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_port: dict[int, str] = {}
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "connection from %s closed (%s): %s":  # log_closed's line
            port = int(str(record.args[0]).rsplit(":", 1)[1])  # type: ignore[index]
            with self.changed:
                self.by_port[port] = record.getMessage()
                self.changed.notify_all()

    def wait(self, port: int, timeout: float = 10) -> str:
        with self.changed:
            assert self.changed.wait_for(lambda: port in self.by_port, timeout), port
            return self.by_port[port]


class ThreadedServer:
    def __init__(self, **options: Any) -> None:
        self.options = options
        self.loop_errors: list[dict[str, Any]] = []
        self.closes = Closes()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.server: Server
        self.loop: asyncio.AbstractEventLoop

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=loop_factory(False)) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(lambda loop, context: self.loop_errors.append(context))
        self.metrics = ServerMetrics()
        self.server = await serve(
            app(), HOST, 0, observer=self.metrics, on_disconnect=log_closed, **self.options
        )
        self.stop = asyncio.Event()
        self.started.set()
        await self.stop.wait()
        await self.server.close(2)

    def __enter__(self) -> ThreadedServer:
        logger = logging.getLogger("sockety.server")
        logger.addHandler(self.closes)
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        self.thread.start()
        assert self.started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        logger = logging.getLogger("sockety.server")
        logger.removeHandler(self.closes)
        logger.setLevel(self._level)

    @property
    def port(self) -> int:
        return self.server.port

    def connections(self) -> int:
        return len(self.server.connections)


@pytest.fixture(scope="module")
def threaded() -> Iterator[ThreadedServer]:
    with ThreadedServer(idle_timeout=5, open_timeout=5, max_data_size=1 << 20) as server:
        yield server


def hostile_exchange(port: int, chunks: list[bytes]) -> int:
    """Sends the chunks on a fresh socket, half-closes, reads until the server closes; returns
    our port (the server's view of the peer)."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        me = sock.getsockname()[1]
        with contextlib.suppress(OSError):  # the server may reset us mid-way: that is fine
            for chunk in chunks:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    return me


@st.composite
def protocol_streams(draw: st.DrawFn) -> list[bytes]:
    """A real client's bytes for a few messages, then truncated, mutated or spliced with noise;
    or plain random bytes after a header."""
    kind = draw(st.sampled_from(["valid", "truncated", "mutated", "random"]))
    header = draw(st.sampled_from([b"\xe3", b"\xe0", b"\xe1\x05", b"\xe2\x00\x01", b""]))
    if kind == "random":
        blob = header + draw(st.binary(max_size=400))
    else:
        peer = SansIO()
        sender = SansIO(max_packet_size=draw(st.sampled_from([7, 64, 4096])))
        sender.receive_data(peer.bytes_to_send())
        out = [sender.bytes_to_send()]
        for n in range(draw(st.integers(1, 5))):
            action = draw(st.sampled_from(["ping", "echo", "nope", "x" * 300]))
            payload = draw(st.binary(max_size=200)) if action != "echo" else b"\x01"
            sizes = draw(st.lists(st.integers(0, 30), max_size=2))
            files = [(f"f{i}", size) for i, size in enumerate(sizes)]
            raw_id = bytes([n + 1]) * 16
            sender.send_message(
                raw_id, action, payload, files=files, expects_response=draw(st.booleans())
            )
            for index, size in enumerate(sizes):
                sender.send_file(raw_id, index, b"z" * size)
                sender.end_file(raw_id, index)
            out.append(sender.bytes_to_send())
        blob = b"".join(out)
        if kind == "truncated":
            blob = blob[: draw(st.integers(0, len(blob)))]
        elif kind == "mutated":
            data = bytearray(blob)
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            blob = bytes(data)
    cuts = sorted(draw(st.lists(st.integers(0, len(blob)), max_size=4)))
    return [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True) if b > a]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chunks=protocol_streams())
def test_fuzzed_streams_close_only_their_connection_with_a_logged_reason(
    threaded: ThreadedServer, chunks: list[bytes]
) -> None:
    port = hostile_exchange(threaded.port, chunks)
    line = threaded.closes.wait(port)  # closed, with its reason in the log
    assert "closed (" in line
    assert not threaded.loop_errors


def test_after_the_fuzzer_nothing_leaked_and_a_healthy_client_is_served(
    threaded: ThreadedServer,
) -> None:
    # Runs after the fuzzer on the same module-scoped server.
    async def main() -> int:
        async with connect(HOST, threaded.port) as client:
            assert await client.request(ping()) == FastReply.ACCEPT
            reply = await client.request(echo([1, 2]))
            assert isinstance(reply, Response) and reply.msgpack() == [1, 2]
            port: int = client.local_address[1]
            return port

    # The healthy client's close is logged too: counted once logged (hypothesis may run a
    # duplicate example fewer than 300, and this close makes up for it).
    threaded.closes.wait(run(main()))
    deadline = time.monotonic() + 10
    while threaded.connections() and time.monotonic() < deadline:
        time.sleep(0.01)
    kinds: dict[str, int] = {}
    for line in threaded.closes.by_port.values():
        kind = line.split("closed (", 1)[1].split(")", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    assert threaded.connections() == 0  # no leaked connection
    assert not threaded.loop_errors  # no crash: nothing reached the loop's exception handler
    registry = threaded.metrics.registry
    errors = {
        kind.value: registry.get_sample_value(
            "sockety_server_protocol_errors_total", {"kind": kind.value}
        )
        for kind in ProtocolErrorKind
    }
    figure(
        f"fuzzer: {len(threaded.closes.by_port)} connections, all closed with a logged reason: "
        f"{kinds}; protocol errors by kind: { {k: int(v or 0) for k, v in errors.items() if v} }"
        "; 0 loop errors, 0 connections left"
    )
    assert sum(kinds.values()) >= 300


# -- declared sizes far over the limits ---------------------------------------------------------

ID = bytes(range(16))


def file_count_header(count: int) -> bytes:
    body = bytes((0x30,)) + ID + b"\x01a" + count.to_bytes(3, "little") + b"\x00\x00"
    return sized_prefix(0x20, len(body)) + body


def many_open_channels(channels: int) -> bytes:
    """A message on every channel declaring 1 MiB of data, each sent one byte of it."""
    return b"".join(
        switch_packet(ch)
        + message_header_packet(ch.to_bytes(2, "little") * 8, b"a", 1 << 20, (), False, True)
        + sized_prefix(0xE0, 1)
        + b"x"
        for ch in range(channels)
    )


ATTACKS = {
    "data size 2^48-1": message_header_packet(ID, b"a", (1 << 48) - 1, (), False, True),
    "file count 2^24-1": file_count_header((1 << 24) - 1),
    "action of 65,535 bytes": message_header_packet(ID, b"a" * 65535, 0, (), False, True),
}


def test_giant_declarations_are_rejected_before_allocation() -> None:
    tcp = ASYNCIO  # tracemalloc sees asyncio's buffers, not uvloop's
    limits = {
        "max_data_size": 1 << 20,
        "max_buffered_bytes": 8 << 20,
        "max_action_size": 1024,  # (the default is the protocol's 65,535)
        "idle_timeout": 1.0,
    }

    async def attack(port: int, payload: bytes) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"\xe3" + payload)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 10)  # until the server closes
        writer.close()

    async def main() -> None:
        closed: asyncio.Queue[Connection] = asyncio.Queue()
        server = Server(app(), on_disconnect=closed.put_nowait, **limits)
        await server.start(HOST, 0)
        for name, payload in ATTACKS.items():
            tracemalloc.start()
            await attack(server.port, payload)
            gone = await closed.get()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            reason = gone.close_reason
            assert reason is not None and reason.kind == "protocol_error"
            assert isinstance(reason.cause, RemoteProtocolError)
            assert reason.cause.kind is ProtocolErrorKind.LIMIT_EXCEEDED
            assert peak < 2 << 20, (name, peak)
            figure(f"{name}: rejected ({reason.cause.detail}); traced peak {peak / 1024:.0f} KiB")

        # 4,096 channels opened and never finished: data is allocated as it arrives, so what
        # is held stays within twice what was sent plus the fixed allowances; idle timeout.
        tracemalloc.start()
        began = time.monotonic()
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"\xe3" + many_open_channels(4096))
        async with connect(HOST, server.port) as healthy:  # others are still served
            assert await healthy.request(ping()) == FastReply.ACCEPT
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 10)
        writer.close()
        reason = (await closed.get()).close_reason
        if reason is not None and reason.kind == "closed_by_peer":  # the healthy client, gone first
            reason = (await closed.get()).close_reason
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert reason is not None and reason.kind == "idle_timeout"
        assert peak < 6 << 20  # 2 x ~100 KiB sent, 64 KiB ahead, 4,096 x 512 B bookkeeping
        figure(
            f"4096 channels x 1 MiB declared, 1 byte each: closed after "
            f"{time.monotonic() - began:.2f} s ({reason.reason}); traced peak "
            f"{peak / 2**20:.1f} MiB (it was max_buffered_bytes before data was allocated as "
            "it arrives)"
        )
        await server.close()

    tcp.run(main())


def test_4096_channels_left_unfinished_are_held_then_closed_by_idle_timeout(tcp: Net) -> None:
    """Headers only (no data byte): nothing is reserved; the connection idles out."""

    async def main() -> None:
        closed: asyncio.Queue[Connection] = asyncio.Queue()
        metrics = ServerMetrics()
        server = await serve(
            app(), HOST, 0, observer=metrics, on_disconnect=closed.put_nowait, idle_timeout=1.0
        )
        reader, writer = await asyncio.open_connection(HOST, server.port)
        flood = b"\xe3" + b"".join(
            switch_packet(ch)
            + message_header_packet(ch.to_bytes(2, "little") * 8, b"a", 1 << 20, (), False, True)
            for ch in range(4096)
        )
        writer.write(flood)
        await writer.drain()
        received = "sockety_server_received_bytes_total"  # read, so every header was parsed
        await until(lambda: metrics.registry.get_sample_value(received) == len(flood))
        began = time.monotonic()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 10)
        writer.close()
        reason = (await closed.get()).close_reason
        assert reason is not None and reason.kind == "idle_timeout"
        assert metrics.registry.get_sample_value("sockety_server_open_connections") == 0
        figure(
            f"4096 unfinished channels: closed by idle timeout {time.monotonic() - began:.2f} s"
            " after all were open"
        )
        await server.close()

    tcp.run(main())


# -- a peer that never reads ---------------------------------------------------------------------


def test_a_peer_that_never_reads_is_bounded_then_closed() -> None:
    tcp = ASYNCIO  # tracemalloc sees asyncio's buffers, not uvloop's
    payload = b"x" * 65536
    router = Router()

    @router.action("big")
    def big(message: Message) -> None:
        message.respond(raw_reply(payload))

    write_limit = 1 << 20

    async def main() -> None:
        closed: asyncio.Queue[Connection] = asyncio.Queue()
        server = Server(
            router,
            on_disconnect=closed.put_nowait,
            write_buffer_limit=write_limit,
            write_timeout=1.0,
            idle_timeout=30,
        )
        await server.start(HOST, 0)
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, server.port))
        await loop.sock_sendall(sock, b"\xe3")
        tracemalloc.start()
        began = time.monotonic()
        sent = 0
        requests = [
            message_header_packet(n.to_bytes(16, "little"), b"big", 0, (), False, True)
            for n in range(20000)
        ]
        for first in range(0, len(requests), 500):
            try:
                await asyncio.wait_for(
                    loop.sock_sendall(sock, b"".join(requests[first : first + 500])), 0.5
                )
            except TimeoutError:
                break  # the server stopped reading us: backpressure reached the peer
            sent += 500
        gone = await closed.get()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        sock.close()
        reason = gone.close_reason
        assert reason is not None and reason.kind == "write_timeout"
        answered = gone.responses_sent
        # What may be queued: the write buffer limit plus the answers to one 4 KiB slice of
        # requests (the guard's bound), twice over for the buffer's reallocation, plus this
        # test's own 20,000 request packets (~2 MiB). Unguarded, the same run grew RSS by 1.3 GB.
        slice_answers = (4096 // len(requests[0]) + 1) * len(payload)
        bound = 2 * (write_limit + slice_answers) + (16 << 20)
        assert peak < bound
        figure(
            f"never-reading peer: {sent} requests written for 64 KiB answers, {answered} "
            f"answered; traced peak {peak / 2**20:.1f} MiB (write_buffer_limit 1 MiB, "
            f"asserted < {bound >> 20} MiB); closed ({reason.kind}) after "
            f"{time.monotonic() - began:.2f} s"
        )
        await server.close()

    tcp.run(main())


# -- slow-loris and idle peers against the real command ------------------------------------------


def test_slow_loris_and_idle_peers_are_closed_by_the_timeout(start: Any) -> None:
    server = start(
        "cliapp:router",
        *("--port", "0", "--timeout", "1", "--idle-timeout", "1", "--log-level", "debug"),
    )
    port = server.ready()
    header = message_header_packet(ID, b"ping", 0, (), False, True)

    def peer(kind: str) -> tuple[str, float]:
        with socket.create_connection((HOST, port), timeout=10) as sock:
            silent = time.monotonic()
            if kind == "slow-loris":
                sock.sendall(b"\xe3")
                silent = time.monotonic()  # the header's first byte: its deadline starts
                with contextlib.suppress(OSError):  # closed mid-way, as it should be
                    for byte in header[:-1]:  # byte by byte, each well within the timeout
                        sock.sendall(bytes([byte]))
                        time.sleep(0.1)
            elif kind == "header then silence":
                sock.sendall(b"\xe3")
                silent = time.monotonic()
            data = b""
            with contextlib.suppress(ConnectionError):
                while chunk := sock.recv(4096):
                    data += chunk
            return kind, time.monotonic() - silent

    async def main() -> list[tuple[str, float]]:
        kinds = ["slow-loris", "header then silence", "connect and say nothing"]
        return await asyncio.gather(*(asyncio.to_thread(peer, kind) for kind in kinds))

    results = run(main())
    for kind, waited in results:
        assert 0.9 < waited < 3.5, (kind, waited)
    server.wait_for(r"closed \(header_timeout\)")
    server.wait_for(r"closed \(idle_timeout\)")
    server.wait_for(r"closed \(open_timeout\)")
    figure(
        "--timeout 1 --idle-timeout 1: "
        + ", ".join(
            f"{kind} closed {waited:.2f} s after its deadline started" for kind, waited in results
        )
    )
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0


# -- load ---------------------------------------------------------------------------------------


def raise_open_files(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= need


def test_1000_simultaneous_connections_all_served(start: Any) -> None:
    raise_open_files(4096)
    server = start("cliapp:router", "--port", "0", "--metrics-port", "0")
    port = server.ready()
    url = server.metrics_url()
    per_connection = 5

    async def one(index: int, opened: asyncio.Barrier) -> list[Any]:
        async with connect(HOST, port, connect_timeout=30) as client:
            await opened.wait()  # all 1,000 are open at once before any request
            return [
                (await client.request(echo([index, n]))).msgpack()  # type: ignore[union-attr]
                for n in range(per_connection)
            ]

    async def main() -> tuple[float, float]:
        opened = asyncio.Barrier(1001)
        began = time.monotonic()
        tasks = [asyncio.ensure_future(one(i, opened)) for i in range(1000)]
        await opened.wait()
        all_open = time.monotonic() - began
        samples = await asyncio.to_thread(scrape, url)
        assert value(samples, "sockety_server_open_connections") == 1000
        results = await asyncio.gather(*tasks)
        for index, replies in enumerate(results):
            assert replies == [[index, n] for n in range(per_connection)]
        return all_open, time.monotonic() - began

    with asyncio.Runner(loop_factory=loop_factory(True)) as runner:
        all_open, total = runner.run(asyncio.wait_for(main(), 90))
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    opened = len([line for line in server.lines if "closed (" in line])
    figure(
        f"1000 simultaneous connections: all open after {all_open:.2f} s, "
        f"{1000 * per_connection} requests answered correctly, total {total:.2f} s; "
        f"{opened} abnormal closes logged"
    )
    assert opened == 0  # ordinary closes are DEBUG: none were abnormal


def test_10000_requests_churned_over_4096_channels_with_random_aborts(tcp: Net) -> None:
    rng = random.Random(5)
    answered: dict[int, int] = {}
    active = [0, 0]  # messages in progress on the server now, at most
    router = Router()

    @router.action("work")
    async def work(message: Message) -> None:
        n = message.msgpack()
        assert message.stream is not None
        active[0] += 1
        active[1] = max(active)
        try:
            body = await message.stream.read()
        except AbortedError:
            return
        finally:
            active[0] -= 1
        await asyncio.sleep(rng.random() * 0.002)
        answered[n] = answered.get(n, 0) + 1
        message.respond(number([n, len(body)]))

    @router.action("ping")
    def on_ping(message: Message) -> int:
        return FastReply.ACCEPT

    draft = Draft("work", data="msgpack", stream=True)
    total, aborted_share = 10_000, 0.15

    async def main() -> tuple[int, int, float]:
        async with tcp.serve(router) as server, tcp.connect(server) as client:
            assert client.channels == 4096
            slots = asyncio.Semaphore(4096)
            outcome: dict[int, Any] = {}

            async def one(n: int) -> None:
                async with slots:
                    request = client.request(draft(n), multiple=True)
                    assert request.stream is not None
                    request.stream.write(b"y" * (n % 100))
                    await asyncio.sleep(0)
                    if rng.random() < aborted_share:
                        await asyncio.sleep(rng.random() * 0.002)
                        request.abort()
                        outcome[n] = "aborted"
                        with contextlib.suppress(AbortedError):
                            await request
                        return
                    request.stream.end()
                    reply = await request.response(timeout=30)
                    assert isinstance(reply, Response)
                    outcome[n] = (reply.msgpack(), request)

            began = time.monotonic()
            await asyncio.gather(*(one(n) for n in range(total)))
            elapsed = time.monotonic() - began
            # Anything still in flight (a duplicate answer) arrives before this ping's reply.
            assert await client.request(ping()) == FastReply.ACCEPT
            done = 0
            for n, result in outcome.items():
                if result == "aborted":
                    continue
                reply, request = result
                assert reply == [n, n % 100]  # the right answer to the right request
                assert not request._queue  # and only one
                assert answered[n] == 1
                request.close()
                done += 1
            aborted = sum(1 for r in outcome.values() if r == "aborted")
            assert len(outcome) == total and done + aborted == total
            assert sum(answered.values()) == done  # aborted ones were not answered twice either
            return done, aborted, elapsed

    done, aborted, elapsed = tcp.run(main(), timeout=90)
    figure(
        f"{total} requests over 4096 channels ({tcp.loop}): {done} answered exactly once and "
        f"correctly, {aborted} aborted, in {elapsed:.2f} s; at most {active[1]} in progress "
        "on the server at once"
    )
