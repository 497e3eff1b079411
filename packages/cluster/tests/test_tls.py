"""The cluster link over TLS: nats-server with a trustme certificate, clients that trust it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
from pathlib import Path

import pytest
import trustme

from sockety.cluster import Cluster, ClusterUnavailableError, NatsServer

from .test_chat import HOST, people


def test_cluster_link_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)

    async def main() -> None:
        async with NatsServer(
            store_dir=tmp_path / "js",
            extra_args=("--tls", "--tlscert", str(cert_file), "--tlskey", str(key_file)),
        ) as nats:
            url = f"tls://127.0.0.1:{nats.port}"
            async with (
                Cluster(url, name="a", tls=trusted) as a,
                Cluster(url, name="b", tls=trusted) as b,
            ):
                got = asyncio.Event()
                await b.subscribe("t", lambda data, origin: got.set() if data == b"x" else None)
                assert a.publish("t", b"x")
                await got.wait()
            # a client that does not trust the certificate is refused, with a clear error
            with pytest.raises(ClusterUnavailableError, match="cannot connect to NATS"):
                await Cluster(url, name="c", connect_timeout=2).start()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_chat_servers_reach_nats_over_tls_with_the_ca_in_ssl_cert_file(tmp_path: Path) -> None:
    """As the README says for several machines: ``sockety-chat serve --cluster tls://...``
    with ``SSL_CERT_FILE=ca.pem`` (a private CA); two such processes are one room."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    ca.cert_pem.write_to_path(ca_file)

    async def chat_process(url: str) -> tuple[int, asyncio.subprocess.Process]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from sockety.chat._cli import main; sys.exit(main())",
            *("serve", "--port", "0", "--cluster", url),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "SSL_CERT_FILE": str(ca_file)},
        )
        assert process.stdout is not None
        line = (await process.stdout.readline()).decode()
        match = re.search(r"chat server on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        return int(match.group(1)), process

    async def main() -> None:
        async with NatsServer(
            store_dir=tmp_path / "js",
            extra_args=("--tls", "--tlscert", str(cert_file), "--tlskey", str(key_file)),
        ) as nats:
            url = f"tls://127.0.0.1:{nats.port}"
            processes = []
            try:
                for _ in range(2):
                    processes.append(await chat_process(url))
                (one, _), (two, _) = processes
                async with people(([(HOST, one)], "alice"), ([(HOST, two)], "bob")) as (a, b):
                    await b.until(lambda: set(b.client.users) == {"alice", "bob"})
                    await a.client.say("over TLS")
                    await b.until(lambda: b.said() == ["alice: over TLS"])
            finally:
                for _, process in processes:
                    process.send_signal(signal.SIGTERM)
                    await process.wait()

    asyncio.run(asyncio.wait_for(main(), 60))
