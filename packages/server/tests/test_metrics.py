"""Metrics: the real /metrics endpoint of ``sockety-server`` scraped over HTTP and parsed with
prometheus-client's parser; label cardinality, handlers in progress, every close reason and
refusals in process, through the server's public observer interface."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sockety.client import ConnectError, ConnectionClosedError, Draft, FastReply, connect
from sockety.core import Connection as CoreConnection
from sockety.core import new_id
from sockety.server import Connection, Message, Router, ServerMetrics, serve, serve_metrics

from .conftest import HOST, Net
from .test_cli import app_dir, echo, ping, run, start

__all__ = ["app_dir", "start"]  # fixtures


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        # Ours, and prometheus-client's process, platform and GC collectors.
        assert family.name.startswith(("sockety_server_", "process_", "python_")), family.name
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def test_scrape_the_real_endpoint(start: Any) -> None:
    server = start("cliapp:router", "--port", "0", "--metrics-port", "0", "--log-level", "debug")
    port = server.ready()
    url = server.metrics_url()

    async def main() -> None:
        async with connect(HOST, port) as client:
            for _ in range(5):
                assert await client.request(ping()) == FastReply.ACCEPT
            for n in range(2):
                await client.request(echo(n))
            for n in range(3):  # random actions: counted, but under one label
                name = f"junk-{os.urandom(4).hex()}-{n}"
                assert await client.request(Draft(name)()) == FastReply.NOT_IMPLEMENTED
            assert await client.request(Draft("fail")()) == FastReply.INTERNAL_ERROR
            # A peer that breaks the protocol: its connection closes, with the kind counted.
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"\xe3\xf5")  # 0xF_ is no packet type
            assert await asyncio.wait_for(reader.read(), 10) == b"\xe3"  # header, then closed
            writer.close()
            await asyncio.to_thread(server.wait_for, r"closed \(protocol_error\)")

            samples = await asyncio.to_thread(scrape, url)
            assert value(samples, "sockety_server_messages_received_total", action="ping") == 5
            assert value(samples, "sockety_server_messages_received_total", action="echo") == 2
            assert value(samples, "sockety_server_messages_received_total", action="fail") == 1
            unknown = value(samples, "sockety_server_messages_received_total", action="_unknown")
            assert unknown == 3
            actions = {
                dict(labels).get("action") for name, labels in samples if "action" in dict(labels)
            }
            assert actions == {"ping", "echo", "fail", "_unknown"}
            assert value(samples, "sockety_server_fast_replies_sent_total", outcome="accept") == 5
            not_impl = value(
                samples, "sockety_server_fast_replies_sent_total", outcome="not_implemented"
            )
            assert not_impl == 3
            error = value(
                samples, "sockety_server_fast_replies_sent_total", outcome="internal_error"
            )
            assert error == 1
            assert value(samples, "sockety_server_responses_sent_total") == 2
            # Per action, how each message was answered.
            handled = "sockety_server_messages_handled_total"
            assert value(samples, handled, action="ping", outcome="accept") == 5
            assert value(samples, handled, action="echo", outcome="answered") == 2
            assert value(samples, handled, action="fail", outcome="internal_error") == 1
            assert value(samples, handled, action="_unknown", outcome="not_implemented") == 3
            # The standard collectors, on the server's own registry.
            assert value(samples, "process_resident_memory_bytes") > 0
            assert value(samples, "python_gc_collections_total", generation="0") >= 1
            assert ("python_info", ()) not in samples  # (it has labels: implementation...)
            assert any(name == "python_info" for name, _ in samples)
            assert (
                value(samples, "sockety_server_protocol_errors_total", kind="unknown_packet") == 1
            )
            closed = "sockety_server_connections_closed_total"
            assert value(samples, closed, reason="protocol_error") == 1
            assert value(samples, "sockety_server_connections_opened_total") == 2
            assert value(samples, "sockety_server_open_connections") == 1
            # Bytes are read from the connections' counters at scrape time: exact.
            assert value(samples, "sockety_server_received_bytes_total") == (
                client.bytes_sent + 2  # + the bad peer's two bytes
            )
            assert value(samples, "sockety_server_sent_bytes_total") == client.bytes_received + 1
            # Handling time: sub-millisecond buckets, one observation per message.
            hist = "sockety_server_handling_seconds"
            assert value(samples, f"{hist}_count", action="ping") == 5
            assert value(samples, f"{hist}_bucket", action="ping", le="0.0001") <= 5
            assert value(samples, f"{hist}_bucket", action="ping", le="+Inf") == 5
            info = [labels for name, labels in samples if name == "sockety_server_build_info"]
            assert len(info) == 1 and dict(info[0])["version"] == "0.1.0"

        # After the client left: closed by the peer, nothing open, no handler running.
        await asyncio.to_thread(server.wait_for, r"connection from .* closed \(closed")
        samples = await asyncio.to_thread(scrape, url)
        assert value(samples, "sockety_server_open_connections") == 0
        closed = "sockety_server_connections_closed_total"
        assert value(samples, closed, reason="closed_by_peer") == 1
        assert value(samples, closed, reason="closed") == 0
        assert value(samples, "sockety_server_handlers_in_progress") == 0

    run(main())
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0


def test_unknown_actions_cannot_grow_the_labels(tcp: Net) -> None:
    router = Router()

    @router.action("known")
    def known(message: Message) -> int:
        return FastReply.ACCEPT

    metrics = ServerMetrics()

    async def main() -> None:
        server = await serve(router, HOST, 0, observer=metrics)

        @router.action("added-later")  # routes added after start are labelled too
        def later(message: Message) -> int:
            return FastReply.ACCEPT

        async with connect(HOST, server.port) as client:
            drafts = [Draft(f"a{n}") for n in range(1000)]
            replies = await asyncio.gather(*(client.request(d()) for d in drafts))
            assert set(replies) == {FastReply.NOT_IMPLEMENTED}
            assert await client.request(Draft("known")()) == FastReply.ACCEPT
            assert await client.request(Draft("added-later")()) == FastReply.ACCEPT
        await server.close()

    tcp.run(main())
    registry: CollectorRegistry = metrics.registry
    get = registry.get_sample_value
    assert get("sockety_server_messages_received_total", {"action": "_unknown"}) == 1000
    assert get("sockety_server_messages_received_total", {"action": "known"}) == 1
    assert get("sockety_server_messages_received_total", {"action": "added-later"}) == 1
    labels = {
        sample.labels["action"]
        for family in registry.collect()
        if family.name == "sockety_server_messages_received"
        for sample in family.samples
    }
    assert labels == {"_unknown", "known", "added-later"}


def test_handlers_in_progress_async_timing_and_refusals(tcp: Net) -> None:
    router = Router()
    state: dict[str, Any] = {}

    @router.action("hold")
    async def hold(message: Message) -> int:
        state["started"] += 1
        if state["started"] == 7:
            state["all_started"].set()
        await state["release"].wait()
        return FastReply.ACCEPT

    metrics = ServerMetrics()

    async def main() -> None:
        state.update(started=0, all_started=asyncio.Event(), release=asyncio.Event())
        server = await serve(router, HOST, 0, observer=metrics, max_connections=1)
        http = await serve_metrics(metrics.registry, HOST, 0)
        url = f"http://{HOST}:{http.sockets[0].getsockname()[1]}/metrics"
        async with connect(HOST, server.port) as client:
            started = asyncio.get_running_loop().time()
            requests = [client.request(Draft("hold")()) for _ in range(7)]
            await state["all_started"].wait()
            samples = await asyncio.to_thread(scrape, url)
            assert value(samples, "sockety_server_handlers_in_progress") == 7
            held = asyncio.get_running_loop().time() - started
            state["release"].set()
            assert await asyncio.gather(*requests) == [FastReply.ACCEPT] * 7
            # max_connections=1: refused (at once or right after the headers), and counted.
            with pytest.raises((ConnectError, ConnectionClosedError)):
                async with connect(HOST, server.port, connect_timeout=5) as extra:
                    await extra.request(ping()).response(timeout=5)
            samples = await asyncio.to_thread(scrape, url)
            assert value(samples, "sockety_server_handlers_in_progress") == 0
        await server.close()
        http.close()
        await http.wait_closed()
        hist = "sockety_server_handling_seconds"
        # Async handlers are timed until their task ends, not until they first yield: each
        # took at least as long as the scrape that ran while they were held.
        assert value(samples, f"{hist}_count", action="hold") == 7
        assert value(samples, f"{hist}_sum", action="hold") >= 7 * min(held, 0.001)
        assert value(samples, "sockety_server_connections_closed_total", reason="refused") == 1
        handled = "sockety_server_messages_handled_total"
        assert value(samples, handled, action="hold", outcome="accept") == 7

    tcp.run(main())


def test_metrics_endpoint_answers_404_and_survives_garbage(tcp: Net) -> None:
    metrics = ServerMetrics()

    async def main() -> None:
        http = await serve_metrics(metrics.registry, HOST, 0)
        port = http.sockets[0].getsockname()[1]
        with socket.create_connection((HOST, port), timeout=5) as raw:
            raw.sendall(b"\x00\xff garbage\r\n\r\n")
            assert (await asyncio.to_thread(raw.recv, 100)).startswith(b"HTTP/1.1 405")
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 404")
        writer.close()
        for path in ("/", "/metrics/", "/healthz/x"):  # /metrics only
            status = await asyncio.to_thread(http_status, f"http://{HOST}:{port}{path}")
            assert status == 404, path
        assert await asyncio.to_thread(http_status, f"http://{HOST}:{port}/healthz") == 200
        samples = await asyncio.to_thread(scrape, f"http://{HOST}:{port}/metrics")
        assert value(samples, "sockety_server_open_connections") == 0
        http.close()
        await http.wait_closed()

    tcp.run(main())


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_healthz_follows_the_server(tcp: Net) -> None:
    async def main() -> None:
        server = await serve(Router(), HOST, 0)
        http = await serve_metrics(
            ServerMetrics().registry, HOST, 0, healthy=lambda: server.is_serving
        )
        url = f"http://{HOST}:{http.sockets[0].getsockname()[1]}/healthz"
        assert await asyncio.to_thread(http_status, url) == 200
        await server.close()
        assert await asyncio.to_thread(http_status, url) == 503
        http.close()
        await http.wait_closed()

    tcp.run(main())


class Recorder(ServerMetrics):
    """Metrics that also queue each close reason, to sync on (never sleep)."""

    def __init__(self) -> None:
        super().__init__()
        self.closes: asyncio.Queue[str] = asyncio.Queue()
        self.connected: asyncio.Queue[Connection] = asyncio.Queue()

    def on_connect(self, connection: Connection) -> None:
        super().on_connect(connection)
        self.connected.put_nowait(connection)

    def on_close(self, connection: Connection, reason: ConnectionClosedError) -> None:
        super().on_close(connection, reason)
        self.closes.put_nowait(reason.kind)


def test_every_close_reason_is_counted(tcp: Net) -> None:
    """Each way a connection ends, counted under its own reason, through the observer."""
    router = Router()

    @router.action("ping")
    def pong(message: Message) -> int:
        return FastReply.ACCEPT

    @router.action("upload")
    async def upload(message: Message) -> None:
        assert message.stream is not None
        reading.set()
        with pytest.raises(ConnectionClosedError):
            await message.stream.read()

    counted: dict[str, float] = {}
    reading = asyncio.Event()

    async def main() -> None:
        metrics = Recorder()
        server = await serve(router, HOST, 0, observer=metrics, open_timeout=0.2)

        async def closed() -> str:
            return await asyncio.wait_for(metrics.closes.get(), 10)

        async with connect(HOST, server.port) as client:  # the client closes: by the peer
            assert await client.request(ping()) == FastReply.ACCEPT
        await metrics.connected.get()
        assert await closed() == "closed_by_peer"

        client = await connect(HOST, server.port)  # the server closes: by this side
        connection = await metrics.connected.get()
        await connection.close()
        assert await closed() == "closed"
        await client.wait_closed()

        _, writer = await asyncio.open_connection(HOST, server.port)  # no Sockety header
        assert await closed() == "open_timeout"
        writer.close()

        _, writer = await asyncio.open_connection(HOST, server.port)  # a bad packet
        writer.write(HEADER + b"\xf5")
        assert await closed() == "protocol_error"
        writer.close()

        # The peer goes in the middle of an exchange (a message whose stream never ends).
        reader, writer = await asyncio.open_connection(HOST, server.port)
        peer = CoreConnection()
        writer.write(peer.bytes_to_send())
        peer.receive_data(await reader.readexactly(len(HEADER)))  # the server's header
        peer.send_message(new_id(), "upload", b"", stream=True)
        writer.write(peer.bytes_to_send())
        await reading.wait()
        writer.close()
        assert await closed() == "lost"
        await server.close()
        for family in metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "sockety_server_connections_closed_total":
                    counted[sample.labels["reason"]] = sample.value
                if sample.name == "sockety_server_connections_opened_total":
                    counted["opened"] = sample.value

    tcp.run(main())
    assert counted == {
        "opened": 5,
        "closed_by_peer": 1,
        "closed": 1,
        "open_timeout": 1,
        "protocol_error": 1,
        "lost": 1,
        **dict.fromkeys(
            ["grace_timeout", "tls_error", "idle_timeout", "refused", "write_timeout", "other"], 0
        ),
    }


HEADER = CoreConnection().bytes_to_send()


def test_tls_handshake_failures_are_counted(ca: Any) -> None:
    """A client that fails the TLS handshake (it does not trust the server's certificate)."""
    import ssl

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    untrusting = ssl.create_default_context()  # the system CAs: not trustme's
    metrics = ServerMetrics()

    async def main() -> None:
        failed = asyncio.Event()
        server = await serve(
            Router(),
            HOST,
            0,
            ssl=server_context,
            observer=metrics,
            on_handshake_failed=lambda connection: failed.set(),
        )
        with pytest.raises(ConnectError):
            await connect(HOST, server.port, ssl=untrusting, connect_timeout=5)
        await failed.wait()
        await server.close()
        failures = "sockety_server_tls_handshake_failures_total"
        assert metrics.registry.get_sample_value(failures) == 1
        closed = "sockety_server_connections_closed_total"
        assert metrics.registry.get_sample_value(closed, {"reason": "tls_error"}) == 1
        assert metrics.registry.get_sample_value("sockety_server_open_connections") == 0

    Net("asyncio", True, server_context, None).run(main())
