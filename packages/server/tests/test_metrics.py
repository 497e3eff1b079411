"""Metrics: the real /metrics endpoint of ``sockety-server`` scraped over HTTP and parsed with
prometheus-client's parser; label cardinality, channels in use and refusals in process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sockety.client import ConnectError, ConnectionClosedError, Draft, FastReply, connect
from sockety.server import Message, Router, ServerMetrics, serve_metrics

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
        assert family.name.startswith("sockety_server_"), family.name
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
            assert value(samples, f"{hist}_bucket", action="ping", le="0.0001") >= 0
            assert value(samples, f"{hist}_bucket", action="ping", le="+Inf") == 5
            info = [labels for name, labels in samples if name == "sockety_server_build_info"]
            assert len(info) == 1 and dict(info[0])["version"] == "0.1.0"

        # After the client left: closed as ordinary, nothing open, no channel in use.
        await asyncio.to_thread(server.wait_for, r"closed \(closed\)")
        samples = await asyncio.to_thread(scrape, url)
        assert value(samples, "sockety_server_open_connections") == 0
        assert value(samples, "sockety_server_connections_closed_total", reason="closed") == 1
        assert value(samples, "sockety_server_channels_in_use", direction="receive") == 0

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
        server = metrics.server(router)
        await server.start(HOST, 0)

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


def test_channels_in_use_async_timing_and_refusals(tcp: Net) -> None:
    router = Router()
    release = asyncio.Event  # made inside the loop below
    state: dict[str, Any] = {}

    @router.action("hold")
    async def hold(message: Message) -> int:
        assert message.stream is not None
        await message.stream.read()  # the channel stays busy until the stream ends
        await state["release"].wait()
        return FastReply.ACCEPT

    metrics = ServerMetrics()

    async def main() -> None:
        state["release"] = release()
        server = metrics.server(router, max_connections=1)
        await server.start(HOST, 0)
        http = await serve_metrics(metrics.registry, HOST, 0)
        url = f"http://{HOST}:{http.sockets[0].getsockname()[1]}/metrics"
        async with connect(HOST, server.port) as client:
            requests = [client.request(Draft("hold", stream=True)()) for _ in range(7)]
            await asyncio.sleep(0.1)
            samples = await asyncio.to_thread(scrape, url)
            receiving = value(samples, "sockety_server_channels_in_use", direction="receive")
            assert receiving == 7
            for request in requests:
                assert request.stream is not None
                request.stream.end()
            await asyncio.sleep(0.05)
            state["release"].set()
            assert await asyncio.gather(*requests) == [FastReply.ACCEPT] * 7
            # max_connections=1: refused (at once or right after the headers), and counted.
            with pytest.raises((ConnectError, ConnectionClosedError)):
                async with connect(HOST, server.port, connect_timeout=5) as extra:
                    await extra.request(ping()).response(timeout=5)
            samples = await asyncio.to_thread(scrape, url)
            assert value(samples, "sockety_server_channels_in_use", direction="receive") == 0
        await server.close()
        http.close()
        await http.wait_closed()
        hist = "sockety_server_handling_seconds"
        # Async handlers are timed until they finish: all seven took at least 0.1 s.
        assert value(samples, f"{hist}_bucket", action="hold", le="0.05") == 0
        assert value(samples, f"{hist}_count", action="hold") == 7
        assert value(samples, "sockety_server_connections_closed_total", reason="refused") == 1

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
        samples = await asyncio.to_thread(scrape, f"http://{HOST}:{port}/metrics")
        assert value(samples, "sockety_server_open_connections") == 0
        http.close()
        await http.wait_closed()

    tcp.run(main())
