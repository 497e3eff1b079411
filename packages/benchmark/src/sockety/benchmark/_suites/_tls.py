"""TLS certificates for the suites that run over TLS: one test CA made by trustme per run."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import ClassVar

__all__ = ["OverTls", "TestCertificates"]


class TestCertificates:
    """Makes a CA and a certificate for 127.0.0.1 in the parent process (``prepare``), and the
    contexts each side loads from them in its own process. Only paths are kept: suites are
    pickled to their processes."""

    __test__ = False  # not a pytest class, whatever its name says

    def __init__(self, name: str) -> None:
        self.name = name
        self.directory = ""

    def prepare(self, workdir: Path) -> None:
        import trustme  # noqa: PLC0415 - only the TLS suites need it

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        target = workdir / self.name
        target.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(target / "ca.pem"))
        cert.private_key_and_cert_chain_pem.write_to_path(str(target / "server.pem"))
        self.directory = str(target)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(Path(self.directory) / "server.pem"))
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(Path(self.directory) / "ca.pem"))


class OverTls:
    """Mixed in before a TCP suite whose ``server_ssl``/``client_ssl`` return None: the same
    suite over TLS, with certificates made for it (the suite's name names their folder)."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.certificates = TestCertificates(self.name)

    def prepare(self, workdir: Path) -> None:
        self.certificates.prepare(workdir)

    def server_ssl(self) -> ssl.SSLContext | None:
        return self.certificates.server_context()

    def client_ssl(self) -> ssl.SSLContext | None:
        return self.certificates.client_context()
