"""The cluster link over TLS: nats-server with a trustme certificate, clients that trust it."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from sockety.cluster import Cluster, ClusterUnavailableError, NatsServer


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
